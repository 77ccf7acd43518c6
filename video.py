"""Video file -> Qwen2.5-VL / Qwen3-VL vision inputs, and the chat prompt around them.

Reproduces, by value, the reference pipeline of each family:
  Qwen2.5-VL: qwen-vl-utils 0.0.10 fetch_video + transformers 4.51.3 Qwen2VLImageProcessor;
  Qwen3-VL: qwen-vl-utils 0.0.14 fetch_video(image_patch_size=16) +
  transformers 4.57 Qwen3VLVideoProcessor and Qwen3VLProcessor (timestamped prompt).
Both: decode every frame (torchvision's PyAV backend), pick n of them evenly, smart-resize within the video pixel
limits, bicubic+antialias resize, rescale and normalize, pad to an even frame count, patchify into merge-block-major
rows. What differs between the families is data, gathered in Family.
Unlike torchvision we never hold every decoded frame: pass 1 only counts, pass 2 keeps the n picks.
"""
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

# qwen-vl-utils 0.0.10 constants for Qwen2.5-VL (vision_process.py); smart_resize's defaults are its image limits
FACTOR = 28                                       # patch 14 * spatial merge 2: sides are multiples of 28
MIN_PIXELS, MAX_PIXELS, MAX_RATIO = 4 * 28 * 28, 16384 * 28 * 28, 200
FRAME_FACTOR = 2                                  # = temporal_patch_size: frames go to the ViT in pairs
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>")
# The vision tokens: only the prompt itself places them. The tokenizer reads each as its special token wherever the
# text holds it, and a stray one in a question would open, close or fill a visual block the positions do not have.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# config.json's ids of the special tokens the positions are computed from, and the token each must be
CONFIG_TOKENS = {"video_token_id": "<|video_pad|>", "image_token_id": "<|image_pad|>",
                 "vision_start_token_id": "<|vision_start|>"}
THINK_OPEN = "<think>\n"                          # what a Thinking template's generation prompt adds


@dataclass(frozen=True)
class Family:
    """What one Qwen VL generation's reference does differently, from the file to the prompt."""
    model_type: str           # config.json "model_type"
    name: str                 # for messages
    patch: int                # ViT patch side in pixels
    mean: tuple               # per-channel normalization
    std: tuple
    fused_normalize: bool     # how the reference computes it, see frames_to_patches
    total_pixels: float       # default pixel budget of a whole video (qwen-vl-utils VIDEO_TOTAL_PIXELS)
    strict_pixel_limits: bool  # qwen-vl-utils >= 0.0.14 asserts max_pixels >= min_pixels
    default_system: str | None  # system message the template inserts when none is given
    timestamps: bool          # "<t seconds>" before each temporal group in the prompt
    thinking: bool            # has a Thinking release (generation prompt opens <think>)
    merge: int = 2            # spatial merge: 2x2 patches -> 1 LLM token
    temporal_patch: int = 2   # frames per temporal group
    fps: float = 2.0          # default sampling rate, frames per second of video
    min_frames: int = 4
    max_frames: int = 768
    min_tokens: int = 128     # per-frame pixel floor and cap, in merged tokens (VIDEO_MIN/MAX_TOKEN_NUM)
    max_tokens: int = 768

    @property
    def factor(self) -> int:      # resized sides are multiples of this
        return self.patch * self.merge

    @property
    def min_pixels(self) -> int:
        return self.min_tokens * self.factor ** 2

    @property
    def max_pixels(self) -> int:
        return self.max_tokens * self.factor ** 2


# total_pixels: 0.0.10 int(128000*28*28*0.9) (it reads env VIDEO_MAX_PIXELS, we take total_pixels=); 0.0.14
# MODEL_SEQ_LEN(128000)*factor**2*0.9, a float (env MODEL_SEQ_LEN, likewise)
QWEN25_VL = Family("qwen2_5_vl", "Qwen2.5-VL", patch=14, mean=CLIP_MEAN, std=CLIP_STD, fused_normalize=False,
                   total_pixels=90316800, strict_pixel_limits=False, default_system="You are a helpful assistant.",
                   timestamps=False, thinking=False)
QWEN3_VL = Family("qwen3_vl", "Qwen3-VL", patch=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), fused_normalize=True,
                  total_pixels=128000 * 32 * 32 * 0.9, strict_pixel_limits=True, default_system=None,
                  timestamps=True, thinking=True)
FAMILIES = {f.model_type: f for f in (QWEN25_VL, QWEN3_VL)}


def get_family(family) -> Family:
    """A Family, or its config.json model_type ("qwen2_5_vl", "qwen3_vl")."""
    if isinstance(family, Family):
        return family
    if family not in FAMILIES:
        raise VideoError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[family]


class VideoError(ValueError):
    """Bad user input (file, request or tokenizer). str(e) is a one-line message."""


@dataclass
class Video:
    pixel_values: torch.Tensor      # [N, 3*2*p*p] fp32, N = t*h*w, rows in merge-block-major order (frames_to_patches)
    grid_thw: tuple[int, int, int]  # (t, h, w): t 2-frame groups, h x w patches of p px
    second_per_grid: float          # seconds covered by one temporal group = 2 / sample_fps
    meta: dict                      # JSON-serializable record of every decision made
    timestamps: tuple = ()          # seconds, one per temporal group (Qwen3-VL writes them into the prompt)
    family: str = "qwen2_5_vl"      # model_type of the preprocessing

    @property
    def n_tokens(self) -> int:      # LLM tokens after the 2x2 merge = number of <|video_pad|>
        t, h, w = self.grid_thw
        return t * h * w // get_family(self.family).merge ** 2


# ----------------------------------------------------------------------------- sizes and counts

def smart_nframes(total: int, video_fps: float, fps: float = 2.0, nframes: int | None = None,
                  min_frames: int = 4, max_frames: int = 768) -> int:
    """How many frames to sample, qwen-vl-utils smart_nframes (0.0.10 = 0.0.14). Always even."""
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
    if total < FRAME_FACTOR:
        raise VideoError(f"the video has {total} decoded frame{'s' * (total != 1)}: the model takes frames in pairs, "
                         f"so it needs at least {FRAME_FACTOR}")
    if not FRAME_FACTOR <= n <= total:
        want = f"nframes={nframes} (-> {n})" if nframes is not None else f"{n} frames"
        raise VideoError(f"cannot sample {want} from a video with {total} decoded frames (need 2 <= n <= {total})")
    return n


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) rounded to multiples of factor with area in [min_pixels, max_pixels] (qwen-vl-utils).
    Same in qwen-vl-utils 0.0.10 and 0.0.14 (which also asserts max >= min: load_video checks that first)."""
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


def video_pixel_limits(n_frames: int, min_pixels=None, max_pixels=None, total_pixels=None,
                       family="qwen2_5_vl") -> tuple[int, int]:
    """Per-frame (min, max) pixel area for a video of n_frames, as qwen-vl-utils fetch_video computes it."""
    fam = get_family(family)
    min_px = fam.min_pixels if min_pixels is None else min_pixels
    total = fam.total_pixels if total_pixels is None else total_pixels
    # Share the total budget between frame pairs, at most 768 tokens per pair, never below ~min_px.
    max_px = max(min(fam.max_pixels, total / n_frames * FRAME_FACTOR), int(min_px * 1.05))
    if max_pixels is not None:
        max_px = min(max_pixels, max_px)                          # a user max above the cap is clamped
    return min_px, max_px


def group_timestamps(frame_indices, video_fps: float, group: int = 2) -> list[float]:
    """Seconds of each temporal group: the mean of the first and last frame's idx / video_fps, an odd count padded
    with the last index. Qwen3VLProcessor._calculate_timestamps (4.57) does this with merge_size, which is 2 like the
    temporal patch in every Qwen3-VL config."""
    idx = list(frame_indices)
    idx += idx[-1:] * (-len(idx) % group)
    t = [i / video_fps for i in idx]
    return [(t[g] + t[g + group - 1]) / 2 for g in range(0, len(t), group)]


# ----------------------------------------------------------------------------- pixels

def _resize(rgb: np.ndarray, hb: int, wb: int) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, hb, wb] uint8, bit-identical to torchvision's uint8 BICUBIC antialias."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    if x.shape[1:] == (hb, wb):
        return x.clone()           # torchvision returns same-size input untouched; clone drops the decoder buffer
    # Resizing the uint8 tensor directly differs by up to 25 levels; the float path rounded back matches exactly.
    y = F.interpolate(x.float()[None], (hb, wb), mode="bicubic", antialias=True, align_corners=False)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


def frames_to_patches(frames: torch.Tensor, family="qwen2_5_vl") -> tuple[torch.Tensor, tuple[int, int, int]]:
    """frames [n, 3, H, W] values 0..255, H, W multiples of the family's factor -> (pixel_values [N, 3*2*p*p] fp32,
    (t, h, w))."""
    fam = get_family(family)
    p, m, tp = fam.patch, fam.merge, fam.temporal_patch
    n, c, H, W = frames.shape
    if c != 3 or H % fam.factor or W % fam.factor:
        raise VideoError(f"frames must be [n, 3, H, W] with H, W multiples of {fam.factor}, got {list(frames.shape)}")
    mean = torch.tensor(fam.mean).view(1, 3, 1, 1)
    std = torch.tensor(fam.std).view(1, 3, 1, 1)
    if n % tp:
        frames = torch.cat([frames, frames[-1:]])                  # odd count: repeat the last frame
    # In place on one fp32 copy: a long video's fp32 frames take GBs, so we keep just this copy and the output.
    x = frames.to(torch.float32, copy=True)
    if fam.fused_normalize:
        # 4.57's fast video processor folds the rescale into the constants: (v - 255*mean) / (255*std), constants
        # scaled in fp32; (v/255 - mean)/std would differ from it by an ulp on some levels.
        x.sub_(mean * 255).div_(std * 255)
    else:
        # 4.51's slow processor: fp32 (v/255 - mean)/std == its float64 rescale then fp32 normalize.
        x.div_(255).sub_(mean).div_(std)
    t, gh, gw = x.shape[0] // tp, H // p, W // p
    x = x.reshape(t, tp, 3, gh // m, m, p, gw // m, m, p)
    # (t, tp, c, bh, mh, ph, bw, mw, pw) -> (t, bh, bw, mh, mw, c, tp, ph, pw): the 4 patches of a
    # 2x2 merge block are adjacent rows, each row is (c, tp, ph, pw) = the Conv3d patch-embed layout.
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, 3 * tp * p * p), (t, gh, gw)   # reshape copies: contiguous


def group_frames(video: Video) -> np.ndarray:
    """The first frame of each temporal group, [t, H, W, 3] uint8, rebuilt from the patches (for pictures: the
    normalization undone and rounded, so within one level of the resized frame)."""
    fam = get_family(video.family)
    t, gh, gw = video.grid_thw
    p, m, T = fam.patch, fam.merge, fam.temporal_patch
    x = video.pixel_values.view(t, gh // m, gw // m, m, m, 3, T, p, p)[:, :, :, :, :, :, 0]  # frames_to_patches' rows
    x = x.permute(0, 1, 3, 6, 2, 4, 7, 5).reshape(t, gh * p, gw * p, 3)  # (t, bh, mh, ph, bw, mw, pw, c)
    x = (x * torch.tensor(fam.std) + torch.tensor(fam.mean)) * 255
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------- decoding

def _decode(path: str, on_frame) -> tuple[int, float]:
    """Decode every frame of the first video stream in order, calling on_frame(i, frame). -> (count, avg fps).
    Every PyAV/FFmpeg failure becomes a one-line VideoError."""
    import av  # here, not at the top: the model and the prompt need no decoder (device_check.py runs where PyAV is absent)

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


def check_pixel_limits(family, min_pixels=None, max_pixels=None):
    """The per-frame bounds the family's reference refuses (also called by eval.py before its run)."""
    fam = get_family(family)
    min_px = fam.min_pixels if min_pixels is None else min_pixels
    if fam.strict_pixel_limits and max_pixels is not None and max_pixels < min_px:
        raise VideoError(f"max_pixels={max_pixels} is below min_pixels={min_px} (per frame), which {fam.name}'s "
                         f"reference refuses; lower min_pixels too")


def load_video(path, family="qwen2_5_vl", fps: float | None = None, nframes: int | None = None,
               max_frames: int | None = None, min_pixels=None, max_pixels=None, total_pixels=None,
               progress=None) -> Video:
    """Decode, sample and preprocess a video file like the family's qwen-vl-utils + HF processor.
    Samples at `fps` (frames per second of video) unless `nframes` is given, which then wins. A None flag takes the
    family's default: fps 2, max_frames 768, pixel limits per frame and per video of video_pixel_limits.
    progress(done, total): frames decoded so far, of 2 x the frame count (every frame is decoded twice); total is None
    while the first pass counts them."""
    progress = progress or (lambda done, total: None)
    fam = get_family(family)
    fps = fam.fps if fps is None else fps
    max_frames = fam.max_frames if max_frames is None else max_frames
    check_pixel_limits(fam, min_pixels, max_pixels)  # before any decoding
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video not found: {path}")
    if os.path.isdir(path):
        raise VideoError(f"video path is a directory: {path}")
    if not os.path.isfile(path):  # a FIFO or /dev/stdin would hang or come back empty on the second pass
        raise VideoError(f"video is not a regular file: {path} (a pipe or device; it is decoded twice: save it to a file)")

    # Pass 1: count decoded frames (torchvision's `total`) and collect frame sizes, converting nothing.
    sizes = set()
    total, video_fps = _decode(path, lambda i, f: (sizes.add((f.height, f.width)), progress(i + 1, None)))
    if total == 0:
        raise VideoError(f"no decodable video frames in {path}")
    if len(sizes) > 1:                                             # torchvision could not stack these either
        raise VideoError(f"frame size changes mid-stream in {path}: {sorted(sizes)}")
    if not video_fps > 0:
        raise VideoError(f"cannot determine the frame rate of {path}")
    H, W = sizes.pop()
    n = smart_nframes(total, video_fps, fps=fps, nframes=nframes, min_frames=fam.min_frames, max_frames=max_frames)
    idx = torch.linspace(0, total - 1, n).round().long().tolist()  # fp32 linspace, half-to-even, like qwen-vl-utils
    sample_fps = n / total * video_fps
    min_px, max_px = video_pixel_limits(n, min_pixels, max_pixels, total_pixels, fam)
    hb, wb = smart_resize(H, W, fam.factor, min_px, max_px)

    # Pass 2: decode again; convert and shrink only the picked frames, so we hold n small uint8 frames.
    kept, next_pick = [], 0

    def keep(i, frame):
        nonlocal next_pick
        progress(total + i + 1, 2 * total)
        if next_pick < n and idx[next_pick] == i:
            small = _resize(frame.to_ndarray(format="rgb24"), hb, wb)  # [3, hb, wb] uint8
            while next_pick < n and idx[next_pick] == i:              # a repeated index reuses the frame
                kept.append(small)
                next_pick += 1

    total2, _ = _decode(path, keep)
    if total2 != total or len(kept) != n:
        raise VideoError(f"{path} decoded to {total} frames, then to {total2}: unstable or corrupt file")

    pixel_values, grid = frames_to_patches(torch.stack(kept), fam)  # [n, 3, hb, wb] -> [N, 3*2*p*p]
    second_per_grid = fam.temporal_patch / sample_fps
    timestamps = group_timestamps(idx, video_fps, fam.temporal_patch)
    meta = dict(path=path, family=fam.model_type, video_fps=video_fps, frames_decoded=total,
                fps=None if nframes is not None else fps, nframes_requested=nframes, max_frames=max_frames,
                frame_indices=idx, sample_fps=sample_fps, nframes=n, min_pixels=min_px, max_pixels=max_px,
                total_pixels=fam.total_pixels if total_pixels is None else total_pixels,
                resized_height=hb, resized_width=wb, grid_thw=list(grid), second_per_grid=second_per_grid,
                timestamps=timestamps)
    return Video(pixel_values, grid, second_per_grid, meta, tuple(timestamps), fam.model_type)


# ----------------------------------------------------------------------------- prompt

def not_regular(path):
    """Why `path` is no file to read: a directory, or another non-regular file (a FIFO, on which open would wait for a
    writer); None for a regular file (and for a missing path, which open reports)."""
    if os.path.isfile(path) or not os.path.lexists(path):
        return None
    return "Is a directory" if os.path.isdir(path) else "not a regular file"


def read_text(path, error=None) -> str:
    """A text file of the model directory; a file that cannot be read (a directory, no permission) or is not UTF-8 is
    a one-line `error` (VideoError by default) naming it, never a traceback."""
    if why := not_regular(path):
        raise (error or VideoError)(f"cannot read {path}: {why}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise (error or VideoError)(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise (error or VideoError)(f"{path}: not UTF-8 text (byte {e.start})") from None


def load_tokenizer(model_dir, config=None) -> Tokenizer:
    """The checkpoint's tokenizer.json, with the Qwen VL special tokens. Given the checkpoint's config (model.Config),
    its special-token ids are checked against the tokenizer too: a config and a tokenizer of two checkpoints would
    otherwise fail (or mislead) only where the positions are computed."""
    path = os.path.join(os.fspath(model_dir), "tokenizer.json")
    if not os.path.lexists(path):
        raise VideoError(f"tokenizer.json not found in {model_dir}")
    text = read_text(path)
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:                                         # tokenizers raises a bare Exception
        raise VideoError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise VideoError(f"{path} is not a Qwen VL tokenizer: missing {', '.join(missing)}")
    for key, token in CONFIG_TOKENS.items() if config is not None else ():
        have, want = getattr(config, key), tok.token_to_id(token)
        if have != want:
            named = tok.id_to_token(have)
            raise VideoError(f"{os.path.join(os.fspath(model_dir), 'config.json')}: {key} is {have}, which {path} "
                             f"{f'names {named}' if named else 'does not have'} ({token} is {want} there): the config "
                             f"and the tokenizer are not of one checkpoint")
    return tok


def chat_template(model_dir) -> str | None:
    """The chat template text a checkpoint ships, where transformers' processor looks for it: chat_template.jinja,
    then chat_template.json, then tokenizer_config.json's "chat_template". None if there is none. A set of named
    templates (a list of {"name", "template"}, or an object of them) gives its "default" one, as transformers does."""
    model_dir = os.fspath(model_dir)
    jinja = os.path.join(model_dir, "chat_template.jinja")
    if os.path.lexists(jinja):
        return read_text(jinja)
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = os.path.join(model_dir, name)
        if not os.path.lexists(path):
            continue
        try:
            template = json.loads(read_text(path)).get("chat_template")
        except (ValueError, AttributeError) as e:
            raise VideoError(f"cannot read {path}: {str(e).splitlines()[0]}") from e
        if isinstance(template, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in template):
            template = {t["name"]: t.get("template") for t in template}
        if isinstance(template, dict):
            if "default" not in template:
                raise VideoError(f"{path}: chat_template names no 'default' template (it has "
                                 f"{', '.join(map(repr, template))}), which transformers refuses too")
            template = template["default"]
        if template is not None:
            if not isinstance(template, str):
                raise VideoError(f"{path}: chat_template is not a template string, nor a list of named ones")
            return template
    return None


def vision_token_in(text):
    """The first vision token (VISION_TOKENS) that a text the user typed holds, or None."""
    return next((t for t in VISION_TOKENS if t in text), None)


def thinking_template(model_dir) -> bool:
    """Whether the checkpoint's chat template is a Thinking one: its generation prompt is literally
    '<|im_start|>assistant\\n<think>\\n' (Qwen3-VL-*-Thinking), where Instruct's stops after 'assistant\\n'.
    No template, or any other one, counts as Instruct."""
    template = chat_template(model_dir)
    return template is not None and r"<|im_start|>assistant\n<think>\n" in template


def build_prompt(tokenizer: Tokenizer, question: str, video, system: str | None = None, family=None,
                 thinking: bool = False) -> list[int]:
    """Token ids of the family's chat template for one video followed by the question, with the video expanded as
    the HF processor does: Qwen2.5-VL one block of n_tokens <|video_pad|>; Qwen3-VL per temporal
    group `<{t:.1f} seconds>` then its block of h*w/4 <|video_pad|>, and no default system message.
    video: a Video (for Qwen2.5-VL its <|video_pad|> count also does). family defaults to the video's.
    thinking: the Thinking template's generation prompt, which opens the reasoning with <think>\\n (see
    thinking_template)."""
    if not isinstance(video, Video):                # a <|video_pad|> count: enough for Qwen2.5-VL only
        fam = get_family(family or "qwen2_5_vl")
        if fam.timestamps:
            raise VideoError(f"a {fam.name} prompt needs the Video (its timestamps), not a token count")
        blocks = [("", int(video))]                  # (text before <|vision_start|>, number of <|video_pad|>)
    else:
        fam = get_family(family or video.family)
        if fam.model_type != video.family:
            raise VideoError(f"a {video.family} video cannot go in a {fam.model_type} prompt")
        t, h, w = video.grid_thw
        if not fam.timestamps:
            blocks = [("", video.n_tokens)]
        elif len(video.timestamps) != t:
            raise VideoError(f"the video has {len(video.timestamps)} timestamps for {t} temporal groups")
        else:
            blocks = [(f"<{s:.1f} seconds>", h * w // fam.merge ** 2) for s in video.timestamps]
    if thinking and not fam.thinking:
        raise VideoError(f"{fam.name} has no Thinking chat template")
    if thinking and tokenizer.token_to_id(THINK_OPEN.strip()) is None:
        raise VideoError(f"the tokenizer has no {THINK_OPEN.strip()} token, so it is not a Thinking checkpoint's")
    for what, typed in (("question", question), ("system prompt", system)):
        if typed is not None and (token := vision_token_in(typed)):
            raise VideoError(f"the {what} must not contain {token}: vision tokens are the prompt's own")
    system = fam.default_system if system is None else system
    text = ("" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n") + "<|im_start|>user\n"
    text += "".join(f"{label}<|vision_start|><|video_pad|><|vision_end|>" for label, _ in blocks)
    text += f"{question}<|im_end|>\n<|im_start|>assistant\n" + (THINK_OPEN if thinking else "")
    # One <|video_pad|> per block, expanded after encoding: special tokens are matched whole by the tokenizer, so the
    # text around them tokenizes the same as in the processor's fully expanded string. No BOS is added (Qwen adds none).
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pad = tokenizer.token_to_id("<|video_pad|>")
    out, k = [], 0
    for i in ids:
        if i == pad:
            out += [pad] * blocks[k][1]
            k += 1
        else:
            out.append(i)
    return out
