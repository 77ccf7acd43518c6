"""video.py's Qwen3.5 path (the transformers 5.x video processor's own sampling and whole-clip resize) and the Qwen3.5
prompt against the reference, on synthetic clips made here.

The reference (tests/oracle35_video.py, in the Qwen3.5 oracle venv): transformers 5.23's load_video (PyAV) with
Qwen3VLVideoProcessor.sample_frames, then the processor with the released video_preprocessor_config.json values
(resize, patchify, prompt expansion from the video metadata), the chat template of tests/data/qwen35.jinja rendered by
5.23 with and without enable_thinking=False, and Qwen3.5's own vocabulary (tests/make_qwen35_tokenizer.py). Compared
exactly: frame indices, timestamps, grid, pixels (torch.equal) and prompt ids.
"""
import os
from fractions import Fraction

import pytest
import torch

import qwen35 as Q35
import video
from clips import write_clip
from conftest import oracle35

F35 = Q35.FAMILY
TEMPLATE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "qwen35.jinja"), encoding="utf-8").read()
NTSC = Fraction(30000, 1001)

CLIPS = {  # name: (write_clip kwargs, sampling kwargs as the processor takes them, ours)
    "ntsc_97x61": (dict(n_frames=45, width=97, height=61, fps=NTSC), {}, {}),
    "3_frames": (dict(n_frames=3, width=64, height=48, fps=30), {}, {}),                 # an odd count: padded
    "2fps_10f": (dict(n_frames=10, width=64, height=48, fps=2), {}, {}),
    "7fps_333x201": (dict(n_frames=50, width=333, height=201, fps=7), {}, {}),           # 14 frames
    "tiny_33x17": (dict(n_frames=8, width=33, height=17, fps=4), {}, {}),                # a side under one block
    "1280x720_40f": (dict(n_frames=40, width=1280, height=720, fps=10), {"num_frames": 40}, {"nframes": 40}),  # shrunk
    "fps_1": (dict(n_frames=40, width=96, height=64, fps=8), {"fps": 1}, {"fps": 1}),
    "num_frames_7": (dict(n_frames=30, width=150, height=70, fps=10), {"num_frames": 7}, {"nframes": 7}),
}
Q = "What is happening in this video?"
PROMPTS = [(None, Q, None), ("You are V-Reason.\n", "  What now? \n", None), ("", Q, False), (None, "Why?\n\n", False)]


@pytest.fixture(scope="session")
def ref(tmp_path_factory, qwen35_tokenizer_json):
    d = tmp_path_factory.mktemp("qwen35_ref")
    paths = {name: write_clip(str(d / f"{name}.mp4"), **kw) for name, (kw, *_) in CLIPS.items()}
    videos = {name: dict(path=paths[name], ele=CLIPS[name][1],
                         prompts=[dict(template="qwen35", system=s, question=q, enable_thinking=t) for s, q, t in PROMPTS])
              for name in CLIPS}
    cases = dict(tokenizer_json=qwen35_tokenizer_json, templates={"qwen35": TEMPLATE}, videos=videos,
                 timestamps=[([0, 3, 7], 7.0), ([2, 2, 9], 1.5)], patches=[])
    torch.save(cases, d / "cases.pt")
    oracle35("oracle35_video.py", d / "cases.pt", d / "ref.pt")
    return dict(torch.load(d / "ref.pt", weights_only=False), paths=paths)


@pytest.fixture(scope="session")
def ours(ref):
    return {name: video.load_video(ref["paths"][name], F35, **CLIPS[name][2]) for name in CLIPS}


def test_family_constants_are_the_references(ref):
    c = ref["constants"]
    assert (F35.patch, F35.merge, F35.temporal_patch) == (c["patch"], c["merge"], c["temporal_patch"]) == (16, 2, 2)
    assert list(F35.mean) == c["mean"] and list(F35.std) == c["std"] == [0.5] * 3
    assert (F35.min_pixels, F35.total_pixels) == (c["size"]["shortest_edge"], c["size"]["longest_edge"])
    assert (F35.fps, F35.min_frames, F35.max_frames) == (c["fps"], c["min_frames"], c["max_frames"])


@pytest.mark.parametrize("name", list(CLIPS))
def test_load_video_matches_the_processor(name, ref, ours):
    v, r, m = ours[name], ref["videos"][name]["hf"], ours[name].meta
    assert m["family"] == "qwen3_5" and m["frames_decoded"] == r["total"]
    assert m["frame_indices"] == r["frame_indices"] and m["video_fps"] == r["video_fps"]
    assert list(v.timestamps) == r["timestamps"]
    assert v.grid_thw == tuple(r["grid_thw"])
    assert torch.equal(v.pixel_values, r["pixel_values"]), (v.pixel_values - r["pixel_values"]).abs().max()


def test_the_cases_are_not_trivial(ours, ref):
    """An odd frame count (padded), a clip shrunk by the whole-clip ceiling, one grown by its floor."""
    assert len(ours["3_frames"].meta["frame_indices"]) == 3 and ours["3_frames"].grid_thw[0] == 2
    big = ours["1280x720_40f"].meta  # the clip's ceiling shrinks its frames
    assert big["resized_height"] * big["resized_width"] * 40 <= F35.total_pixels < 1280 * 720 * 40
    assert ref["videos"]["ntsc_97x61"]["qvu"]["grid_thw"] != list(ours["ntsc_97x61"].grid_thw)  # not qwen-vl-utils'


@pytest.mark.parametrize("name", list(CLIPS))
def test_prompt_ids_match_the_processor(name, ref, ours, qwen35_tokenizer_json):
    """The nested layout (the template's vision pair around the timed blocks), the template's trimming of the user's
    and the system's text, and the thinking block opened (default) or closed (enable_thinking=False)."""
    tok = video.load_tokenizer(os.path.dirname(qwen35_tokenizer_json), F35)
    for (system, question, thinking), r in zip(PROMPTS, ref["videos"][name]["hf"]["prompts"]):
        ids = Q35.prompt_ids(tok, question, ours[name], system, thinking=thinking is None)
        assert ids == r["ids"], (system, question, thinking)
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>user\n<|vision_start|><") and "<|vision_end|><|vision_end|>Why?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
