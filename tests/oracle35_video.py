"""The Qwen3.5 video and prompt reference, run in the Qwen3.5 oracle venv (.venv-oracle35: transformers 5.23.0 layered
on .venv-oracle3's torch 2.14.1 / torchvision 0.29.1 / av / qwen-vl-utils 0.0.14). Usage: oracle35_video.py CASES.pt OUT.pt

Qwen3.5 has no qwen-vl-utils recipe of its own: Qwen's README for it (github.com/QwenLM/Qwen3.5) serves the model
through transformers / vLLM / SGLang, which all hand the video to the checkpoint's own processor (processor_class
Qwen3VLProcessor, video_processor_type Qwen3VLVideoProcessor in video_preprocessor_config.json). So the reference here
is transformers 5.23's pipeline ("hf"): transformers.video_utils.load_video with the PyAV backend (5.23's
fetch_videos would pick torchcodec, else the torchvision reader torchvision 0.29 no longer has: neither is installed,
so the backend is named) sampling with Qwen3VLVideoProcessor.sample_frames (fps 2 by default), then the processor
resizes (smart_resize, the released size limits), patchifies and expands the prompt from the video metadata.
cap_pixels_per_frame is passed as False, 5.23's default (None warns, then uncapped).

For comparison ("qvu") the Qwen3-VL recipe is run too: qwen-vl-utils 0.0.14 process_vision_info(image_patch_size=16)
with torchvision's PyAV reader stood in for (read_video below, the same stand-in as tests/oracle3_video.py), then the
same processor with do_resize=False, do_sample_frames=False. Every case of a session is answered in this one process.
"""
import os
import sys
from functools import partial

os.environ["FORCE_QWENVL_VIDEO_READER"] = "torchvision"   # read at import time; pins the backend we stand in for

import torch  # noqa: E402
import torchvision.io  # noqa: E402

import pyav_reader  # noqa: E402
from qwen_vl_utils import vision_process as qvu  # noqa: E402
from transformers import Qwen2VLImageProcessor, Qwen3_5Tokenizer, Qwen3VLProcessor, Qwen3VLVideoProcessor  # noqa: E402
from transformers.video_utils import load_video  # noqa: E402

# The released checkpoints' video_preprocessor_config.json (Qwen3.5 uses Qwen3-VL's): the class defaults differ in
# size ({"shortest_edge": 131072, "longest_edge": 786432}); mean/std are the class's IMAGENET_STANDARD (0.5) anyway.
VIDEO_CONFIG = dict(size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16, temporal_patch_size=2,
                    merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3, fps=2, min_frames=4, max_frames=768,
                    do_sample_frames=True)


torchvision.io.read_video = pyav_reader.read_video   # qwen-vl-utils calls it as io.read_video (`from torchvision import io`)


def processors(tokenizer_json, templates):
    tok = Qwen3_5Tokenizer(tokenizer_file=tokenizer_json)
    image = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,   # required, unused for videos
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video = Qwen3VLVideoProcessor(**VIDEO_CONFIG)
    return {name: Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video, chat_template=text)
            for name, text in templates.items()}


def messages(ele, question, system):
    user = {"role": "user", "content": [ele, {"type": "text", "text": question}]}
    return ([{"role": "system", "content": system}] if system is not None else []) + [user]


def render(proc, ele, p):
    kw = {} if p.get("enable_thinking") is None else {"enable_thinking": p["enable_thinking"]}
    return proc.apply_chat_template(messages(ele, p["question"], p["system"]), tokenize=False,
                                    add_generation_prompt=True, **kw)


def expand(proc, text, frames, meta, **kw):
    kw = dict(dict(do_sample_frames=False, cap_pixels_per_frame=False), **kw)
    res = proc(text=[text], videos=[frames], video_metadata=[meta], return_tensors="pt", **kw)
    return res, dict(text=text, ids=res["input_ids"][0].tolist(), mm_token_type_ids=res["mm_token_type_ids"][0].tolist())


def run_hf(case, procs):
    """transformers 5.23 end to end: decode + sample (load_video, PyAV), resize + patchify + prompt (the processor)."""
    proc = next(iter(procs.values()))
    sample = {k: case["ele"][k] for k in ("fps", "num_frames") if k in case["ele"]}
    frames, meta = load_video(case["path"], backend="pyav",
                              sample_indices_fn=partial(proc.video_processor.sample_frames, **sample))
    out = dict(frame_indices=[int(i) for i in meta.frames_indices], video_fps=meta.fps, total=meta.total_num_frames,
               frames=torch.as_tensor(frames), timestamps=proc._calculate_timestamps(list(meta.frames_indices),
                                                                                     meta.fps, 2), prompts=[])
    ele = {"type": "video", "video": case["path"]}
    for p in case["prompts"]:
        res, rec = expand(procs[p["template"]], render(procs[p["template"]], ele, p), frames, meta)
        out["prompts"].append(rec)
        out["pixel_values"], out["grid_thw"] = res["pixel_values_videos"], res["video_grid_thw"][0].tolist()
    capped = proc.video_processor(videos=[frames], video_metadata=[meta], do_sample_frames=False,
                                  cap_pixels_per_frame=True, return_tensors="pt")
    out["grid_thw_capped"] = capped["video_grid_thw"][0].tolist()   # for information: the per-frame cap on
    return out


def run_qvu(case, procs):
    """qwen-vl-utils 0.0.14 (the Qwen3-VL README recipe) + the same processor with do_resize=False."""
    ele = {"type": "video", "video": case["path"], **case["ele"]}
    _, videos, video_kwargs = qvu.process_vision_info(messages(ele, "?", None), image_patch_size=16,
                                                      return_video_kwargs=True, return_video_metadata=True)
    (frames, meta), = videos
    proc = next(iter(procs.values()))
    out = dict(frame_indices=meta["frames_indices"].tolist(), video_fps=meta["fps"], total=meta["total_num_frames"],
               video_kwargs=dict(video_kwargs), frames=frames.to(torch.uint8),
               timestamps=proc._calculate_timestamps(meta["frames_indices"], meta["fps"], 2), prompts=[])
    for p in case["prompts"]:
        res, rec = expand(procs[p["template"]], render(procs[p["template"]], ele, p), frames, meta, do_resize=False,
                          **video_kwargs)
        out["prompts"].append(rec)
        out["pixel_values"], out["grid_thw"] = res["pixel_values_videos"], res["video_grid_thw"][0].tolist()
    return out


def main(cases_path, out_path):
    cases = torch.load(cases_path)
    procs = processors(cases["tokenizer_json"], cases["templates"])
    any_proc = next(iter(procs.values()))
    vp = any_proc.video_processor
    out = {"videos": {name: dict(hf=run_hf(c, procs), qvu=run_qvu(c, procs)) for name, c in cases["videos"].items()}}
    out["constants"] = dict(patch=vp.patch_size, merge=vp.merge_size, temporal_patch=vp.temporal_patch_size,
                            mean=list(vp.image_mean), std=list(vp.image_std), size=dict(vp.size), fps=vp.fps,
                            min_frames=vp.min_frames, max_frames=vp.max_frames, max_video_tokens=vp.max_video_tokens,
                            class_size=dict(Qwen3VLVideoProcessor.size))
    out["timestamps"] = [any_proc._calculate_timestamps(list(idx), fps, vp.merge_size) for idx, fps in cases["timestamps"]]
    out["patches"] = []
    for frames in cases["patches"]:                   # pre-resized frames straight into the video processor
        res = vp(videos=[frames.float()], do_resize=False, do_sample_frames=False, cap_pixels_per_frame=False,
                 return_tensors="pt")
        out["patches"].append((res["pixel_values_videos"], res["video_grid_thw"][0].tolist()))
    torch.save(out, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
