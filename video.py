"""Video file -> Qwen2.5-VL vision inputs, and the chat prompt around them.

Reproduces, by value, the reference pipeline of spec qwen25vl.md §4-5:
  qwen-vl-utils 0.0.10 fetch_video, torchvision (PyAV) backend: decode every frame, pick n of them
  evenly, smart-resize with the video pixel limits, bicubic+antialias resize;
  then transformers 4.51.3 Qwen2VLImageProcessor: rescale, CLIP-normalize, pad to an even frame
  count, patchify into merge-block-major rows.
Unlike torchvision we never hold every decoded frame: pass 1 only counts, pass 2 keeps the n picks.
"""
import math
import os
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

# qwen-vl-utils 0.0.10 constants (spec §4.1)
FACTOR = 28                                       # patch 14 * spatial merge 2: sides are multiples of 28
MIN_PIXELS, MAX_PIXELS, MAX_RATIO = 4 * 28 * 28, 16384 * 28 * 28, 200
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 90316800                     # int(128000*28*28*0.9); qwen-vl-utils reads env VIDEO_MAX_PIXELS, we take total_pixels=
FRAME_FACTOR = 2                                  # = temporal_patch_size: frames go to the ViT in pairs
PATCH, MERGE = 14, 2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>")
DEFAULT_SYSTEM = "You are a helpful assistant."


class VideoError(ValueError):
    """Bad user input (file, request or tokenizer). str(e) is a one-line message."""


@dataclass
class Video:
    pixel_values: torch.Tensor      # [N, 1176] fp32, N = t*h*w, rows in merge-block-major order (spec §4.6)
    grid_thw: tuple[int, int, int]  # (t, h, w): t 2-frame groups, h x w 14-px patches
    second_per_grid: float          # seconds covered by one temporal group = 2 / sample_fps
    meta: dict                      # JSON-serializable record of every decision made

    @property
    def n_tokens(self) -> int:      # LLM tokens after the 2x2 merge = number of <|video_pad|>
        t, h, w = self.grid_thw
        return t * h * w // (MERGE * MERGE)


# ----------------------------------------------------------------------------- sizes and counts

def smart_nframes(total: int, video_fps: float, fps: float = 2.0, nframes: int | None = None,
                  min_frames: int = 4, max_frames: int = 768) -> int:
    """How many frames to sample, qwen-vl-utils 0.0.10 semantics (spec §4.2). Always even."""
    if nframes is not None:
        n = round(nframes / FRAME_FACTOR) * FRAME_FACTOR          # Python round is half-to-even: 5 -> 4, 7 -> 8
    else:
        if not (video_fps > 0 and fps > 0):
            raise VideoError(f"cannot sample at fps={fps}: video frame rate is {video_fps}")
        lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
        # qwen-vl-utils defaults max_frames to min(768, total); the extra min(total) below makes that equivalent
        n = min(max(total / video_fps * fps, lo), hi, total)
        n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= total:
        want = f"nframes={nframes} (-> {n})" if nframes is not None else f"{n} frames"
        raise VideoError(f"cannot sample {want} from a video with {total} decoded frames (need 2 <= n <= {total})")
    return n


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) rounded to multiples of factor with area in [min_pixels, max_pixels] (spec §4.3)."""
    if min(height, width) <= 0:
        raise VideoError(f"bad frame size {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise VideoError(f"frame {width}x{height} has aspect ratio {max(height, width) / min(height, width):.1f}, "
                         f"above the model's limit of {MAX_RATIO}")
    hb = max(factor, round(height / factor) * factor)
    wb = max(factor, round(width / factor) * factor)
    if hb * wb > max_pixels:       # shrink, keeping the aspect ratio, rounding down so we stay under the cap
        beta = math.sqrt(height * width / max_pixels)
        hb = math.floor(height / beta / factor) * factor
        wb = math.floor(width / beta / factor) * factor
    elif hb * wb < min_pixels:     # grow, rounding up so we end above the floor
        beta = math.sqrt(min_pixels / (height * width))
        hb = math.ceil(height * beta / factor) * factor
        wb = math.ceil(width * beta / factor) * factor
    if not hb or not wb:  # shrinking rounds down: a cap this small, for this aspect ratio, leaves a side no pixels
        raise VideoError(f"a limit of {max_pixels:.0f} pixels per frame shrinks {width}x{height} frames to nothing "
                         f"(a side under {factor} pixels); raise --max-pixels / --total-pixels")
    return hb, wb


def video_pixel_limits(n_frames: int, min_pixels=None, max_pixels=None, total_pixels=None) -> tuple[int, int]:
    """Per-frame (min, max) pixel area for a video of n_frames, as qwen-vl-utils fetch_video computes it."""
    min_px = VIDEO_MIN_PIXELS if min_pixels is None else min_pixels
    total = VIDEO_TOTAL_PIXELS if total_pixels is None else total_pixels
    # Share the total budget between frame pairs, at most 768 tokens per pair, never below ~min_px.
    max_px = max(min(VIDEO_MAX_PIXELS, total / n_frames * FRAME_FACTOR), int(min_px * 1.05))
    if max_pixels is not None:
        max_px = min(max_pixels, max_px)                          # a user max above the cap is clamped
    return min_px, max_px


# ----------------------------------------------------------------------------- pixels

def _resize(rgb: np.ndarray, hb: int, wb: int) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, hb, wb] uint8, bit-identical to torchvision's uint8 BICUBIC antialias (spec §4.4)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    if x.shape[1:] == (hb, wb):
        return x.clone()           # torchvision returns same-size input untouched; clone drops the decoder buffer
    # Resizing the uint8 tensor directly differs by up to 25 levels; the float path rounded back matches exactly.
    y = F.interpolate(x.float()[None], (hb, wb), mode="bicubic", antialias=True, align_corners=False)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


def frames_to_patches(frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """frames [n, 3, H, W] values 0..255, H, W multiples of 28 -> (pixel_values [N, 1176] fp32, (t, h, w))."""
    n, c, H, W = frames.shape
    if c != 3 or H % FACTOR or W % FACTOR:
        raise VideoError(f"frames must be [n, 3, H, W] with H, W multiples of {FACTOR}, got {list(frames.shape)}")
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    if n % FRAME_FACTOR:
        frames = torch.cat([frames, frames[-1:]])                  # odd count: repeat the last frame
    # fp32 (v/255 - mean)/std == HF's float64 rescale then fp32 normalize. In place on one copy:
    # a long video's fp32 frames take GBs, so we keep just this copy and the permuted output.
    x = frames.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)
    t, gh, gw = x.shape[0] // FRAME_FACTOR, H // PATCH, W // PATCH
    x = x.reshape(t, FRAME_FACTOR, 3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    # (t, tp, c, bh, mh, ph, bw, mw, pw) -> (t, bh, bw, mh, mw, c, tp, ph, pw): the 4 patches of a
    # 2x2 merge block are adjacent rows, each row is (c, tp, ph, pw) = the Conv3d patch-embed layout.
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, 3 * FRAME_FACTOR * PATCH * PATCH), (t, gh, gw)   # reshape copies: contiguous


# ----------------------------------------------------------------------------- decoding

def _decode(path: str, on_frame) -> tuple[int, float]:
    """Decode every frame of the first video stream in order, calling on_frame(i, frame). -> (count, avg fps).
    Every PyAV/FFmpeg failure becomes a one-line VideoError."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"                            # frame+slice threads; output is unchanged
            fps = float(stream.average_rate) if stream.average_rate else 0.0   # torchvision's info["video_fps"]
            count = 0
            for frame in container.decode(stream):
                on_frame(count, frame)
                count += 1
            return count, fps
    except (av.FFmpegError, OSError) as e:
        why = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise VideoError(f"cannot read video {path}: {why}") from e


def load_video(path, fps: float = 2.0, nframes: int | None = None, max_frames: int = 768,
               min_pixels=None, max_pixels=None, total_pixels=None) -> Video:
    """Decode, sample and preprocess a video file like qwen-vl-utils 0.0.10 + the HF processor.
    Samples at `fps` (frames per second of video) unless `nframes` is given, which then wins.
    Pixel limits default to qwen-vl-utils' video limits (see video_pixel_limits)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video not found: {path}")
    if os.path.isdir(path):
        raise VideoError(f"video path is a directory: {path}")
    if not os.path.isfile(path):  # a FIFO or /dev/stdin would hang or come back empty on the second pass
        raise VideoError(f"video is not a regular file: {path} (a pipe or device; it is decoded twice: save it to a file)")

    # Pass 1: count decoded frames (torchvision's `total`) and collect frame sizes, converting nothing.
    sizes = set()
    total, video_fps = _decode(path, lambda i, f: sizes.add((f.height, f.width)))
    if total == 0:
        raise VideoError(f"no decodable video frames in {path}")
    if len(sizes) > 1:                                             # torchvision could not stack these either
        raise VideoError(f"frame size changes mid-stream in {path}: {sorted(sizes)}")
    if not video_fps > 0:
        raise VideoError(f"cannot determine the frame rate of {path}")
    H, W = sizes.pop()
    n = smart_nframes(total, video_fps, fps=fps, nframes=nframes, max_frames=max_frames)
    idx = torch.linspace(0, total - 1, n).round().long().tolist()  # fp32 linspace, half-to-even, like qwen-vl-utils
    sample_fps = n / total * video_fps
    min_px, max_px = video_pixel_limits(n, min_pixels, max_pixels, total_pixels)
    hb, wb = smart_resize(H, W, FACTOR, min_px, max_px)

    # Pass 2: decode again; convert and shrink only the picked frames, so we hold n small uint8 frames.
    kept, next_pick = [], 0

    def keep(i, frame):
        nonlocal next_pick
        if next_pick < n and idx[next_pick] == i:
            small = _resize(frame.to_ndarray(format="rgb24"), hb, wb)  # [3, hb, wb] uint8
            while next_pick < n and idx[next_pick] == i:              # a repeated index reuses the frame
                kept.append(small)
                next_pick += 1

    total2, _ = _decode(path, keep)
    if total2 != total or len(kept) != n:
        raise VideoError(f"{path} decoded to {total} frames, then to {total2}: unstable or corrupt file")

    pixel_values, grid = frames_to_patches(torch.stack(kept))     # [n, 3, hb, wb] -> [N, 1176]
    second_per_grid = FRAME_FACTOR / sample_fps
    meta = dict(path=path, video_fps=video_fps, frames_decoded=total, frame_indices=idx, sample_fps=sample_fps,
                nframes=n, resized_height=hb, resized_width=wb, grid_thw=list(grid), second_per_grid=second_per_grid)
    return Video(pixel_values, grid, second_per_grid, meta)


# ----------------------------------------------------------------------------- prompt

def load_tokenizer(model_dir) -> Tokenizer:
    path = os.path.join(os.fspath(model_dir), "tokenizer.json")
    if not os.path.isfile(path):
        raise VideoError(f"tokenizer.json not found in {model_dir}")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:                                         # tokenizers raises a bare Exception
        raise VideoError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise VideoError(f"{path} is not a Qwen2.5-VL tokenizer: missing {', '.join(missing)}")
    return tok


def build_prompt(tokenizer: Tokenizer, question: str, n_video_tokens: int, system: str | None = None) -> list[int]:
    """Token ids of the Qwen2.5-VL chat template (spec §5) for one video followed by the question."""
    system = DEFAULT_SYSTEM if system is None else system
    text = (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{question}<|im_end|>\n"
            f"<|im_start|>assistant\n")
    # Special tokens are matched whole by the tokenizer; no BOS is added (spec §1.3).
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pad = tokenizer.token_to_id("<|video_pad|>")
    if ids.count(pad) != 1:
        raise VideoError("the question and system prompt must not contain <|video_pad|>")
    i = ids.index(pad)
    return ids[:i] + [pad] * n_video_tokens + ids[i + 1:]         # what the HF processor's expansion yields
