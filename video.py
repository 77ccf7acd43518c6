"""Video file -> a model family's vision inputs (frames, patches, grid, timestamps), and the chat prompt mechanics.

Reproduces, by value, the reference pipeline a family names (Family.sampler):
  "qwen-vl-utils": qwen-vl-utils fetch_video (0.0.10 for Qwen2.5-VL, 0.0.14 with image_patch_size=16 for Qwen3-VL)
      then the HF processor with do_resize=False: an even frame count, per-frame pixel limits shared out of a total;
  "processor": transformers 5.x Qwen3VLVideoProcessor on its own (Qwen3.5): its frame count, pixel limits over the
      whole clip.
Both: decode every frame (PyAV), pick n of them evenly, smart-resize, bicubic+antialias resize, rescale and
normalize, pad to an even frame count, patchify into merge-block-major rows. Unlike torchvision we never hold every
decoded frame: pass 1 only counts, pass 2 keeps the n picks. What a family does differently is data, its Family,
which its own model file defines (qwen25vl.FAMILY, ...); nothing here names a family.
"""
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

MAX_RATIO = 200                                   # qwen-vl-utils and the processor refuse a longer aspect ratio
THINK_OPEN = "<think>\n"                          # what a thinking template's generation prompt adds


@dataclass(frozen=True)
class Family:
    """What one family's reference does to a video and its prompt tokens, as data: its model file makes one."""
    model_type: str           # config.json "model_type"
    name: str                 # for messages
    patch: int                # ViT patch side in pixels
    mean: tuple               # per-channel normalization
    std: tuple
    fused_normalize: bool     # how the reference computes it, see frames_to_patches
    sampler: str              # "qwen-vl-utils" or "processor" (module docstring)
    min_pixels: int           # the pixel flags' defaults: qwen-vl-utils, per frame; processor, for the whole clip
    max_pixels: int | None    # per frame (processor: none)
    total_pixels: float       # the whole video (qwen-vl-utils VIDEO_TOTAL_PIXELS; processor: size["longest_edge"])
    strict_pixel_limits: bool  # qwen-vl-utils >= 0.0.14 asserts max_pixels >= min_pixels
    special_tokens: tuple     # what the tokenizer must know (load_tokenizer)
    vision_tokens: tuple      # what only the prompt itself places: refused in text a user typed (vision_token_in)
    config_tokens: tuple      # (config.json key, the token its id must name) pairs, checked by load_tokenizer
    stop_tokens: tuple        # generation ends at any of these
    group_text_tokens: int    # at most this many text tokens beside its pads per frame group (the prompt-length bound)
    video_pad: str = "<|video_pad|>"
    merge: int = 2            # spatial merge: 2x2 patches -> 1 LLM token
    temporal_patch: int = 2   # frames per temporal group
    fps: float = 2.0          # default sampling rate, frames per second of video
    min_frames: int = 4
    max_frames: int = 768

    @property
    def factor(self) -> int:      # resized sides are multiples of this
        return self.patch * self.merge


class VideoError(ValueError):
    """Bad user input (file, request or tokenizer). str(e) is a one-line message."""


@dataclass
class Video:
    pixel_values: torch.Tensor      # [N, 3*2*p*p] fp32, N = t*h*w, rows in merge-block-major order (frames_to_patches)
    grid_thw: tuple[int, int, int]  # (t, h, w): t 2-frame groups, h x w patches of p px
    second_per_grid: float          # seconds covered by one temporal group = 2 / sample_fps
    meta: dict                      # JSON-serializable record of every decision made
    timestamps: tuple = ()          # seconds, one per temporal group (Qwen3-VL and Qwen3.5 write them into the prompt)
    family: Family = None           # whose preprocessing made it

    @property
    def n_tokens(self) -> int:      # LLM tokens after the 2x2 merge = number of <|video_pad|>
        t, h, w = self.grid_thw
        return t * h * w // self.family.merge ** 2


# ----------------------------------------------------------------------------- how many frames, and how large

def smart_nframes(total: int, video_fps: float, fps: float = 2.0, nframes: int | None = None,
                  min_frames: int = 4, max_frames: int = 768, pair: int = 2) -> int:
    """How many frames to sample, qwen-vl-utils smart_nframes (0.0.10 = 0.0.14): always a multiple of `pair`."""
    if nframes is not None:
        n = round(nframes / pair) * pair          # Python round is half-to-even: 5 -> 4, 7 -> 8
    else:
        lo = math.ceil(min_frames / pair) * pair
        hi = math.floor(max_frames / pair) * pair
        # qwen-vl-utils defaults max_frames to min(768, total); the extra min(total) below makes that equivalent
        n = min(max(total / video_fps * fps, lo), hi, total)
        n = math.floor(n / pair) * pair
    return check_nframes(n, total, nframes, pair)


def processor_nframes(total: int, video_fps: float, fps: float = 2.0, nframes: int | None = None,
                      min_frames: int = 4, max_frames: int = 768, pair: int = 2) -> int:
    """How many frames transformers 5.x Qwen3VLVideoProcessor.sample_frames takes: int(duration * fps) within
    [min_frames, max_frames] and the video's frames, or `nframes` as given; any count (an odd one is padded later)."""
    n = nframes if nframes is not None else min(max(int(total / video_fps * fps), min_frames), max_frames, total)
    return check_nframes(n, total, nframes, pair)


def check_nframes(n, total, nframes, pair):
    if total < pair:
        raise VideoError(f"the video has {total} decoded frame{'s' * (total != 1)}: the model takes frames in pairs, "
                         f"so it needs at least {pair}")
    if not pair <= n <= total:
        want = f"nframes={nframes} (-> {n})" if nframes is not None else f"{n} frames"
        raise VideoError(f"cannot sample {want} from a video with {total} decoded frames (need {pair} <= n <= {total})")
    return n


def smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """(height, width) rounded to multiples of factor with area in [min_pixels, max_pixels] (qwen-vl-utils).
    Same in qwen-vl-utils 0.0.10 and 0.0.14 (which also asserts max >= min: load_video checks that first)."""
    check_aspect(height, width)
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


def clip_resize(n: int, height: int, width: int, factor: int, pair: int, min_pixels: float,
                max_pixels: float) -> tuple[int, int]:
    """(height, width) as transformers 5.x Qwen3VLVideoProcessor's smart_resize gives them: the limits bound the
    pixels of the whole clip (its frame count rounded to pairs, half to even, times the area); sides under one block
    are first scaled up to it; a side is never shrunk below one block."""
    check_aspect(height, width)
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    hb, wb, tb = round(height / factor) * factor, round(width / factor) * factor, round(n / pair) * pair
    if tb * hb * wb > max_pixels:
        beta = math.sqrt(n * height * width / max_pixels)
        hb = max(factor, math.floor(height / beta / factor) * factor)
        wb = max(factor, math.floor(width / beta / factor) * factor)
    elif tb * hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (n * height * width))
        hb = math.ceil(height * beta / factor) * factor
        wb = math.ceil(width * beta / factor) * factor
    return hb, wb


def check_aspect(height, width):
    if min(height, width) <= 0:
        raise VideoError(f"bad frame size {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise VideoError(f"frame {width}x{height} has aspect ratio {max(height, width) / min(height, width):.1f}, "
                         f"above the model's limit of {MAX_RATIO}")


def video_pixel_limits(n_frames: int, fam: Family, min_pixels=None, max_pixels=None, total_pixels=None) -> tuple:
    """The (min, max) pixel area the family's reference resizes to, for a video of n_frames: per frame as
    qwen-vl-utils fetch_video computes it (the total shared between frame pairs, at most the per-frame cap, never
    below ~min); for the processor, of the whole clip (max: the total, or --max-pixels a frame times the frames)."""
    min_px = fam.min_pixels if min_pixels is None else min_pixels
    total = fam.total_pixels if total_pixels is None else total_pixels
    if fam.sampler == "processor":
        return min_px, total if max_pixels is None else min(total, max_pixels * n_frames)
    max_px = max(min(fam.max_pixels, total / n_frames * fam.temporal_patch), int(min_px * 1.05))
    if max_pixels is not None:
        max_px = min(max_pixels, max_px)                          # a user max above the cap is clamped
    return min_px, max_px


def max_video_prompt(fam: Family, max_frames: int, min_pixels=None, max_pixels=None, total_pixels=None) -> int:
    """At most how many prompt tokens a video takes, whatever its length and frame size, before it is read: for every
    frame count the family's sampler can give up to max_frames (fewer frames may get more pixels each), its frame
    groups' pads at the pixel limit plus the text the family writes beside each group (Family.group_text_tokens)."""
    step = 1 if fam.sampler == "processor" else fam.temporal_patch
    most = 0
    for n in range(fam.temporal_patch, max_frames + 1, step):
        area = video_pixel_limits(n, fam, min_pixels, max_pixels, total_pixels)[1]
        if fam.sampler == "processor":  # a limit of the whole clip: per frame, its share (frames rounded to pairs)
            area /= round(n / fam.temporal_patch) * fam.temporal_patch
        most = max(most, -(-n // fam.temporal_patch) * (int(area) // fam.factor**2 + fam.group_text_tokens))
    return most


def plan_frames(fam, total, video_fps, H, W, fps, nframes, max_frames, min_pixels, max_pixels, total_pixels):
    """Which frames to keep and the size to resize them to, as the family's reference decides:
    -> (frame indices, (resized height, width), (min, max) pixel limits)."""
    count = processor_nframes if fam.sampler == "processor" else smart_nframes
    n = count(total, video_fps, fps, nframes, fam.min_frames, max_frames, fam.temporal_patch)
    limits = video_pixel_limits(n, fam, min_pixels, max_pixels, total_pixels)
    if fam.sampler == "processor":  # numpy float64 linspace, rounded half to even
        idx = np.linspace(0, total - 1, n).round().astype(int).tolist()
        size = clip_resize(n, H, W, fam.factor, fam.temporal_patch, *limits)
    else:  # torch float32 linspace, rounded half to even, like qwen-vl-utils
        idx = torch.linspace(0, total - 1, n).round().long().tolist()
        size = smart_resize(H, W, fam.factor, *limits)
    return idx, size, limits


def group_timestamps(frame_indices, video_fps: float, group: int = 2) -> list[float]:
    """Seconds of each temporal group: the mean of the first and last frame's idx / video_fps, an odd count padded
    with the last index. Qwen3VLProcessor._calculate_timestamps (4.57) does this with merge_size, which is 2 like the
    temporal patch in every Qwen3-VL config."""
    idx = list(frame_indices)
    idx += idx[-1:] * (-len(idx) % group)
    t = [i / video_fps for i in idx]
    return [(t[g] + t[g + group - 1]) / 2 for g in range(0, len(t), group)]


# ----------------------------------------------------------------------------- pixels

def _resize(rgb: np.ndarray, hb: int, wb: int, native: bool = False) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, hb, wb] uint8, bicubic with antialias, bit-identical to the reference's resize:
    qwen-vl-utils' torchvision.transforms.functional.resize goes through float32 and rounds back; the 5.x processor's
    transforms.v2 resize (native=True) interpolates the uint8 tensor itself, which differs from that by up to 25 levels."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    if x.shape[1:] == (hb, wb):
        return x.clone()           # torchvision returns same-size input untouched; clone drops the decoder buffer
    if native:
        return F.interpolate(x[None].contiguous(), (hb, wb), mode="bicubic", antialias=True, align_corners=False)[0]
    y = F.interpolate(x.float()[None], (hb, wb), mode="bicubic", antialias=True, align_corners=False)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


def frames_to_patches(frames: torch.Tensor, fam: Family) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """frames [n, 3, H, W] values 0..255, H, W multiples of the family's factor -> (pixel_values [N, 3*2*p*p] fp32,
    (t, h, w))."""
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
        # the fast video processors (4.57, 5.x) fold the rescale into the constants: (v - 255*mean) / (255*std), constants
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
    fam = video.family
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


def check_pixel_limits(fam: Family, min_pixels=None, max_pixels=None):
    """The per-frame bounds the family's reference refuses (also called by eval.py before its run)."""
    min_px = fam.min_pixels if min_pixels is None else min_pixels
    if fam.strict_pixel_limits and max_pixels is not None and max_pixels < min_px:
        raise VideoError(f"max_pixels={max_pixels} is below min_pixels={min_px} (per frame), which {fam.name}'s "
                         f"reference refuses; lower min_pixels too")


def load_video(path, fam: Family, fps: float | None = None, nframes: int | None = None,
               max_frames: int | None = None, min_pixels=None, max_pixels=None, total_pixels=None,
               progress=None) -> Video:
    """Decode, sample and preprocess a video file like the family's reference pipeline (Family.sampler).
    Samples at `fps` (frames per second of video) unless `nframes` is given, which then wins. A None flag takes the
    family's default: fps 2, max_frames 768, the pixel limits of video_pixel_limits.
    progress(done, total): frames decoded so far, of 2 x the frame count (every frame is decoded twice); total is None
    while the first pass counts them."""
    progress = progress or (lambda done, total: None)
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
    idx, (hb, wb), (min_px, max_px) = plan_frames(fam, total, video_fps, H, W, fps, nframes, max_frames, min_pixels,
                                                  max_pixels, total_pixels)
    n = len(idx)
    sample_fps = n / total * video_fps

    # Pass 2: decode again; convert and shrink only the picked frames, so we hold n small uint8 frames.
    kept, next_pick = [], 0

    def keep(i, frame):
        nonlocal next_pick
        progress(total + i + 1, 2 * total)
        if next_pick < n and idx[next_pick] == i:
            small = _resize(frame.to_ndarray(format="rgb24"), hb, wb, fam.sampler == "processor")  # [3, hb, wb] uint8
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
    return Video(pixel_values, grid, second_per_grid, meta, tuple(timestamps), fam)


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


def load_tokenizer(model_dir, fam: Family, config=None) -> Tokenizer:
    """The checkpoint's tokenizer.json, which must know the family's special tokens. Given the checkpoint's config
    (model.Config), its special-token ids are checked against the tokenizer too (fam.config_tokens): a config and a
    tokenizer of two checkpoints would otherwise fail (or mislead) only where the positions are computed."""
    path = os.path.join(os.fspath(model_dir), "tokenizer.json")
    if not os.path.lexists(path):
        raise VideoError(f"tokenizer.json not found in {model_dir}")
    text = read_text(path)
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:                                         # tokenizers raises a bare Exception
        raise VideoError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    missing = [t for t in fam.special_tokens if tok.token_to_id(t) is None]
    if missing:
        raise VideoError(f"{path} is not a {fam.name} tokenizer: missing {', '.join(missing)}")
    for key, token in fam.config_tokens if config is not None else ():
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


def vision_token_in(text, tokens):
    """The first of the vision tokens `tokens` (a Family's vision_tokens) that a text the user typed holds, or None:
    the tokenizer reads each as its special token wherever the text holds it, and a stray one in a question would
    open, close or fill a visual block the positions do not have."""
    return next((t for t in tokens if t in text), None)


def thinking_template(model_dir) -> bool:
    """Whether the checkpoint's chat template is a Thinking one: its generation prompt is literally
    '<|im_start|>assistant\\n<think>\\n' (Qwen3-VL-*-Thinking), where Instruct's stops after 'assistant\\n'.
    No template, or any other one, counts as Instruct."""
    template = chat_template(model_dir)
    return template is not None and r"<|im_start|>assistant\n<think>\n" in template


def chat_text(user: str, system: str | None = None, opening: str = "") -> str:
    """A prompt in Qwen's chat layout (ChatML, every Qwen chat template): an optional system turn, the user turn, then
    the assistant's turn opened, followed by what the template puts there first (`opening`: a thinking template's
    "<think>\\n"). No BOS (Qwen adds none)."""
    text = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    return text + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{opening}"


def expand_video(tokenizer: Tokenizer, text: str, counts: list, fam: Family) -> list[int]:
    """Token ids of `text`, in which the i-th video block holds one <|video_pad|>, with that pad repeated counts[i]
    times, as the HF processor expands it. Special tokens are matched whole by the tokenizer, so the text around them
    tokenizes the same as in the processor's fully expanded string."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pad = tokenizer.token_to_id(fam.video_pad)
    if ids.count(pad) != len(counts):
        raise VideoError(f"the question and system prompt must not contain {fam.video_pad}")
    out, k = [], 0
    for i in ids:
        if i == pad:
            out += [pad] * counts[k]
            k += 1
        else:
            out.append(i)
    return out


def check_typed(fam: Family, question: str, system: str | None):  # (the front ends check the flags up front too)
    for what, typed in (("question", question), ("system prompt", system)):
        if typed is not None and (token := vision_token_in(typed, fam.vision_tokens)):
            raise VideoError(f"the {what} must not contain {token}: vision tokens are the prompt's own")


def check_thinking(tokenizer: Tokenizer, fam: Family):
    if tokenizer.token_to_id(THINK_OPEN.strip()) is None:
        raise VideoError(f"the tokenizer has no {THINK_OPEN.strip()} token, so it is not a thinking {fam.name} "
                         f"checkpoint's")
