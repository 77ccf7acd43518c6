"""The Qwen3-VL video and prompt reference, run by conftest.oracle3 in the oracle venv (.venv-oracle3: transformers
4.57.6, qwen-vl-utils 0.0.14, torchvision 0.29.1). Usage: oracle3_video.py CASES.pt OUT.pt

Everything is the reference's own code except one piece: torchvision 0.29 dropped torchvision.io.read_video, which
qwen-vl-utils' torchvision backend calls. tests/pyav_reader.read_video stands in for it, decoding the way torchvision's PyAV
backend did (every frame of the first video stream, kept by pts, sorted); qwen-vl-utils then does the rest itself
(smart_nframes, frame indices, sample fps, video metadata, smart_resize with image_patch_size=16, the bicubic
antialias resize), and the real Qwen3VLProcessor / Qwen3VLVideoProcessor expand the prompt and make the pixels, called
as Qwen's README does. Every case of a test session is answered in this one process (the interpreter starts slowly).
"""
import os
import sys

os.environ["FORCE_QWENVL_VIDEO_READER"] = "torchvision"   # read at import time; pins the backend we stand in for

import torch  # noqa: E402
import torchvision.io  # noqa: E402

import pyav_reader  # noqa: E402
from qwen_vl_utils import vision_process as qvu  # noqa: E402
from transformers import Qwen2TokenizerFast, Qwen3VLProcessor  # noqa: E402
from transformers.models.qwen2_vl.image_processing_qwen2_vl_fast import Qwen2VLImageProcessorFast  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402


torchvision.io.read_video = pyav_reader.read_video   # qwen-vl-utils calls it as io.read_video (`from torchvision import io`)


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
