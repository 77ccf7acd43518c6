"""The Qwen3-VL video and prompt reference, run by conftest.oracle3 in the oracle venv (.venv-oracle3: transformers
4.57.6, qwen-vl-utils 0.0.14, torchvision 0.29.1). Usage: oracle3_video.py CASES.pt OUT.pt

Everything is the reference's own code except one piece: torchvision 0.29 dropped torchvision.io.read_video, which
qwen-vl-utils' torchvision backend calls. read_video below stands in for it, decoding the way torchvision's PyAV
backend did (every frame of the first video stream, kept by pts, sorted); qwen-vl-utils then does the rest itself
(smart_nframes, frame indices, sample fps, video metadata, smart_resize with image_patch_size=16, the bicubic
antialias resize), and the real Qwen3VLProcessor / Qwen3VLVideoProcessor expand the prompt and make the pixels, called
as Qwen's README does. Every case of a test session is answered in this one process (the interpreter starts slowly).
"""
import math
import os
import sys

os.environ["FORCE_QWENVL_VIDEO_READER"] = "torchvision"   # read at import time; pins the backend we stand in for

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.io  # noqa: E402
from qwen_vl_utils import vision_process as qvu  # noqa: E402
from transformers import Qwen2TokenizerFast, Qwen3VLProcessor  # noqa: E402
from transformers.models.qwen2_vl.image_processing_qwen2_vl_fast import Qwen2VLImageProcessorFast  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402


def read_video(filename, start_pts=0, end_pts=None, pts_unit="pts", output_format="THWC"):
    """What torchvision.io.read_video(pts_unit="sec") returned with its PyAV backend (torchvision <= 0.23): seek to
    the start, decode the first video stream, keep frames by pts within [start, end], sorted by pts; decoding errors
    end the read silently; info["video_fps"] = float(average_rate). Audio is not read (qwen-vl-utils drops it)."""
    assert pts_unit == "sec" and start_pts == 0 and end_pts is None, "qwen-vl-utils calls it this way only"
    frames, info = {}, {}
    with av.open(filename, metadata_errors="ignore") as container:
        if container.streams.video:
            stream = container.streams.video[0]
            try:
                container.seek(0, any_frame=False, backward=True, stream=stream)
                for frame in container.decode(video=0):
                    frames[frame.pts] = frame.to_ndarray(format="rgb24")
            except av.FFmpegError:
                pass
            if stream.average_rate is not None:
                info["video_fps"] = float(stream.average_rate)
    kept = [frames[pts] for pts in sorted(frames) if 0 <= pts <= math.inf]
    video = torch.as_tensor(np.stack(kept)) if kept else torch.empty((0, 1, 1, 3), dtype=torch.uint8)
    if output_format == "TCHW":
        video = video.permute(0, 3, 1, 2)
    return video, torch.empty((1, 0)), info


torchvision.io.read_video = read_video   # qwen-vl-utils calls it as io.read_video (`from torchvision import io`)


def processors(tokenizer_json, templates):
    tok = Qwen2TokenizerFast(tokenizer_file=tokenizer_json)
    # The released checkpoints' values; the image processor is required by the class but unused for videos, and the
    # video processor's size limits are unused with do_resize=False (qwen-vl-utils has already resized).
    image = Qwen2VLImageProcessorFast(patch_size=16, merge_size=2, temporal_patch_size=2,
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video = Qwen3VLVideoProcessor()
    return {name: Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video, chat_template=text)
            for name, text in templates.items()}


def messages(ele, question, system):
    user = {"role": "user", "content": [ele, {"type": "text", "text": question}]}
    return ([{"role": "system", "content": system}] if system is not None else []) + [user]


def run_video(case, procs):
    """process_vision_info + the processor, as in Qwen's README, for one clip and each of its prompts."""
    ele = {"type": "video", "video": case["path"], **case["ele"]}
    fetched = []                                  # fetch_video's own return, to see the sample fps it computed
    real_fetch = qvu.fetch_video

    def spy(*a, **k):
        fetched.append(real_fetch(*a, **k))
        return fetched[-1]

    qvu.fetch_video = spy
    try:
        _, videos, video_kwargs = qvu.process_vision_info(messages(ele, "?", None), image_patch_size=16,
                                                          return_video_kwargs=True, return_video_metadata=True)
    finally:
        qvu.fetch_video = real_fetch
    (frames, meta), = videos
    (_, sample_fps), = fetched
    out = dict(frame_indices=meta["frames_indices"].tolist(), video_fps=meta["fps"],
               total=meta["total_num_frames"], sample_fps=sample_fps, video_kwargs=dict(video_kwargs),
               frames=frames.to(torch.uint8), frames_integral=bool(torch.equal(frames, frames.round())),
               timestamps=next(iter(procs.values()))._calculate_timestamps(meta["frames_indices"], meta["fps"], 2),
               prompts=[])
    for p in case["prompts"]:
        proc = procs[p["template"]]
        text = proc.apply_chat_template(messages(ele, p["question"], p["system"]), tokenize=False,
                                        add_generation_prompt=True)
        res = proc(text=[text], videos=[frames], video_metadata=[meta], do_resize=False, return_tensors="pt",
                   **video_kwargs)
        out["prompts"].append(dict(text=text, ids=res["input_ids"][0].tolist()))
        out["pixel_values"], out["grid_thw"] = res["pixel_values_videos"], res["video_grid_thw"][0].tolist()
    return out


def main(cases_path, out_path):
    cases = torch.load(cases_path)
    procs = processors(cases["tokenizer_json"], cases["templates"])
    any_proc = next(iter(procs.values()))
    out = {"videos": {name: run_video(c, procs) for name, c in cases["videos"].items()}, "errors": {}}
    vp, factor = any_proc.video_processor, 16 * qvu.SPATIAL_MERGE_SIZE   # fetch_video's image_factor for patch 16
    out["constants"] = dict(patch=vp.patch_size, merge=vp.merge_size, temporal_patch=vp.temporal_patch_size,
                            mean=list(vp.image_mean), std=list(vp.image_std), min_tokens=qvu.VIDEO_MIN_TOKEN_NUM,
                            max_tokens=qvu.VIDEO_MAX_TOKEN_NUM, total_pixels=qvu.MODEL_SEQ_LEN * factor * factor * 0.9,
                            fps=qvu.FPS, min_frames=qvu.FPS_MIN_FRAMES, max_frames=qvu.FPS_MAX_FRAMES,
                            frame_factor=qvu.FRAME_FACTOR)
    for name, ele in cases["errors"].items():          # inputs the reference itself refuses
        try:
            qvu.fetch_video(dict(type="video", **ele), image_patch_size=16, return_video_sample_fps=True,
                            return_video_metadata=True)
            out["errors"][name] = None
        except Exception as e:  # noqa: BLE001 - record what the reference raises, whatever it is
            out["errors"][name] = f"{type(e).__name__}: {e}"
    out["timestamps"] = [any_proc._calculate_timestamps(list(idx), fps, any_proc.video_processor.merge_size)
                         for idx, fps in cases["timestamps"]]
    out["patches"] = []
    for frames in cases["patches"]:                   # pre-resized frames straight into the video processor
        res = any_proc.video_processor(videos=[frames.float()], do_resize=False, do_sample_frames=False,
                                       return_tensors="pt")
        out["patches"].append((res["pixel_values_videos"], res["video_grid_thw"][0].tolist()))
    torch.save(out, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
