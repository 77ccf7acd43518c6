"""The command line: flags and their checks, the model directory, the run, and its outputs (--json, --trace, --plot).

    python cli.py --video clip.mp4 --q "What happens after the ball is thrown?"    (or python vreason.py ...)

Everything here is around the method, never in it: vreason.py holds the method and its decode loops, and this file
calls them the way a library user would (vreason.prepare, then vreason.generate). eval.py shares the flags, their
checks, the model resolution and the writers. docs/cli.md is the reference for every flag and output.
"""
import argparse
import errno
import io
import json
import math
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, replace


import model as M
import video as V
import vreason as R
from videor1 import extract_answer



class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (argparse prints the usage block too)
        raise UsageError(message)

    def parse_args(self, args=None, namespace=None):
        """Arguments whose bytes are not UTF-8 are refused first. Python hands them over with each such byte as a lone
        surrogate, which no tokenizer takes (a question) and no UTF-8 record can hold (a file name, found out only when
        the finished run's record is written)."""
        args = sys.argv[1:] if args is None else args
        for i, x in enumerate(args):
            bad = next((ord(ch) for ch in x if 0xD800 <= ord(ch) <= 0xDFFF), None)
            if bad is not None:
                flag = next((y.split("=")[0] for y in reversed(args[: i + 1]) if y.startswith("--")), "an argument")
                what = f"byte 0x{bad - 0xDC00:02x} is not UTF-8" if 0xDC80 <= bad <= 0xDCFF else "not valid Unicode"
                raise UsageError(f"argument {flag}: {what}; pass UTF-8 text (a file: by a UTF-8 name; a symlink will do)")
        return super().parse_args(args, namespace)


def resolve_model(name, weights=True):
    """A local directory, else the local Hugging Face cache, else a download through huggingface_hub if installed (its
    own progress bars on stderr). weights=False: the small files only (config, index, tokenizer), enough to check the
    request and the memory before a download of many GB."""
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise M.ModelError(f"--model {name} is a file: pass the checkpoint's directory (config.json, *.safetensors)")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise M.ModelError(f"model directory not found: {name}")
    try:
        import huggingface_hub
    except ImportError:
        local = cached_snapshot(name)
        if local is not None:
            return local
        raise M.ModelError(f"{name} is not a local directory nor in the Hugging Face cache; pip install huggingface_hub "
                           f"to download it, or pass --model /path/to/a/downloaded/checkpoint") from None
    patterns = ["*.json", "*.jinja", "*.txt"] + (["*.safetensors"] if weights else [])  # (*.jinja: a chat template)
    try:  # (a cached snapshot is returned whole or not: the small files alone may be all there is of it)
        local = huggingface_hub.snapshot_download(name, allow_patterns=patterns, local_files_only=True)
        if not weights or has_weights(local):
            return local
    except Exception:
        pass
    try:
        print(f"downloading {name}{' (weights)' if weights else ''} from the Hugging Face Hub ...", file=sys.stderr)
        return huggingface_hub.snapshot_download(name, allow_patterns=patterns)
    except Exception as e:
        raise M.ModelError(f"cannot get {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                           f"pass --model /path/to/a/downloaded/checkpoint") from None


def cached_snapshot(name):
    """Without huggingface_hub: the snapshot of `name` in the local Hugging Face cache that refs/main names (the
    revision huggingface_hub itself would take), or None."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    repo = os.path.join(hub, "models--" + name.replace("/", "--"))
    try:
        with open(os.path.join(repo, "refs", "main")) as f:
            revision = f.read().strip()
    except OSError:
        return None
    snapshot = os.path.join(repo, "snapshots", revision)
    return snapshot if revision and os.path.isdir(snapshot) else None


def has_weights(model_dir):
    try:
        return bool(M.weight_files(model_dir))
    except M.ModelError:
        return False


def add_args(p):
    """The flags vreason.py and eval.py share: model, decoding, V-Reason, video, runtime."""
    p.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct",
                   help="checkpoint directory or Hugging Face id (Qwen2.5-VL, Qwen3-VL Instruct or Thinking)")
    p.add_argument("--system", default=None, help="system prompt (default: the family's: Qwen2.5-VL 'You are a helpful "
                                                  "assistant.', Qwen3-VL none)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("V-Reason")
    g.add_argument("--beta", type=float, default=0.9, help="EMA factor of the entropy")
    g.add_argument("--update-every", type=int, default=2, help="k: update the controller on every k-th token")
    g.add_argument("--steps", type=int, default=1, help="Adam steps per update")
    g.add_argument("--lr", type=float, default=1e-2)
    g.add_argument("--objective", default="switch", choices=["switch", "minimize", "maximize"])
    g.add_argument("--kl", default="pu", choices=["pu", "up"], help="pu: KL(p||U) (default); up: KL(U||p)")
    g.add_argument("--no-redecode", dest="redecode", action="store_false", help="keep the pre-update logits for the token")
    g.add_argument("--controller", default="per-token", choices=["per-token", "shared"])
    g.add_argument("--prune-ratio", type=float, default=None,
                   help="Lite's share of video tokens dropped from the KV cache (default 0.5; --mode lite only)")
    g.add_argument("--prune-policy", default="per-layer", choices=["per-layer", "last-layer"])
    g = p.add_argument_group("video")
    g.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    g.add_argument("--nframes", type=int, default=None, help="sample exactly this many frames (overrides --fps)")
    g.add_argument("--max-frames", type=int, default=768)
    g.add_argument("--min-pixels", type=int, default=None, help="per frame (default 128 tokens: 128*28*28 for "
                                                                "Qwen2.5-VL, 128*32*32 for Qwen3-VL)")
    g.add_argument("--max-pixels", type=int, default=None, help="per frame (default 768 tokens: 768*28*28 / 768*32*32)")
    g.add_argument("--total-pixels", type=int, default=None, help="all frames together (default 128000*28*28*0.9 / "
                                                                  "128000*32*32*0.9)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (CUDA graphs on a GPU); the first tokens wait for the compile")
    g.add_argument("--device-map", default="none", choices=["none", "auto"],
                   help="auto: split the decoder layers over all visible GPUs (32B / 72B)")


# Adam moves each entry of ΔV by about lr a step (the first by 10x, in float32) and the rows are renormalized: far
# below float32's limit the rows only turn to the gradient's signs.
MAX_LR = 1e6
# Qwen-VL checkpoints are trained for 128000 (Qwen2.5-VL) or 262144 (Qwen3-VL) positions: no answer can be longer.
MAX_NEW_TOKENS = 262144
# --temperature and --repetition-penalty divide logits: below this, sampling is argmax in all but name, and the
# quotient can overflow float32 (inf, then NaN probabilities).
MIN_DIVISOR = 1e-6


def check_args(a):
    """Every decoding / V-Reason / video flag, before anything is read or loaded. Each rule states what is allowed:
    comparisons with NaN are false, so NaN fails every rule, and `< inf` keeps out the infinities that argparse's
    float() accepts ("inf", 1e999)."""
    inf, tiny = math.inf, MIN_DIVISOR
    rules = [("--max-new-tokens", 1 <= a.max_new_tokens <= MAX_NEW_TOKENS, f"an integer from 1 to {MAX_NEW_TOKENS}"),
             ("--temperature", a.temperature == 0 or tiny <= a.temperature < inf, f"0 (greedy) or a finite number >= {tiny}"),
             ("--top-p", 0 < a.top_p <= 1, "a number in (0, 1]"),
             ("--repetition-penalty", tiny <= a.repetition_penalty < inf, f"a finite number >= {tiny}"),
             ("--seed", 0 <= a.seed < 2**64, "an integer from 0 to 2**64-1"),
             ("--beta", 0 <= a.beta < 1, "a number in [0, 1)"),
             ("--update-every", a.update_every >= 1, "an integer >= 1"),
             ("--steps", a.steps >= 0, "an integer >= 0"),
             ("--lr", 0 <= a.lr <= MAX_LR, f"a number from 0 to {MAX_LR:g}"),
             ("--prune-ratio", a.prune_ratio is None or 0 <= a.prune_ratio < 1, "a number in [0, 1)"),
             ("--fps", 0 < a.fps < inf, "a finite number > 0"),
             ("--nframes", a.nframes is None or a.nframes >= 2, "an integer >= 2"),
             ("--max-frames", a.max_frames >= 2, "an integer >= 2")]
    for flag, ok, want in rules:
        if not ok:
            raise UsageError(f"argument {flag}: invalid value {getattr(a, flag[2:].replace('-', '_'))} (must be {want})")
    check_typed_text(a, "--system")
    check_runtime(a)


def check_typed_text(a, *flags):
    """Text flags (--q, --system) hold no vision token of any family (before the checkpoint is read: model.vision_tokens):
    only the prompt itself places those."""
    for flag in flags:
        text = getattr(a, flag[2:])
        if text is not None and (token := V.vision_token_in(text, M.vision_tokens())):
            raise UsageError(f"argument {flag}: holds {token}, a vision token, which only the prompt itself places")


def check_pixels(a, fam):
    """The pixel flags against the checkpoint's own patch block (its side: patch x spatial merge; fam: the model's
    video.Family), once the family is known (check_args cannot: the checkpoint is not read yet): below one block, no
    frame can be resized."""
    block = fam.factor**2
    for k, v in (("min", a.min_pixels), ("max", a.max_pixels), ("total", a.total_pixels)):
        if v is not None and v < block:
            raise UsageError(f"argument --{k}-pixels: invalid value {v} (must be an integer >= {block}, one "
                             f"{fam.factor}x{fam.factor} block)")
    if a.min_pixels is not None and a.max_pixels is not None and a.min_pixels > a.max_pixels:
        raise UsageError(f"--min-pixels {a.min_pixels} is above --max-pixels {a.max_pixels}")


def check_runtime(a):
    """Device, dtype and placement flags that cannot work together."""
    if a.dtype == "float16":  # refused rather than run to a wrong answer
        raise UsageError("--dtype float16 is not supported: Qwen2/2.5 activations overflow in float16 (NaN or '!!!!' "
                         "output) and V-Reason's gradients underflow; use bfloat16 (the CUDA default) or float32")
    if a.device_map != "none" and a.device not in ("auto", "cuda"):
        raise UsageError(f"--device-map {a.device_map} splits the model over CUDA GPUs; it cannot run on --device {a.device}")


def parse_args(argv):
    p = Parser(description="V-Reason (arXiv 2510.17045): inference-time entropy steering of video reasoning in "
                           "Qwen2.5-VL, Qwen3-VL and Qwen3.5")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--q", required=True, help="question about the video")
    p.add_argument("--mode", default="baseline", choices=R.MODES,
                   help="lite = value-norm pruning of the video KV cache + the controller")
    p.add_argument("--compare", action="store_true", help="also run the baseline on the same prepared input, side by side")
    add_args(p)
    g = p.add_argument_group("output ('-' = stdout; the streamed text then goes to stderr)")
    g.add_argument("--json", default=None, metavar="PATH", help="write the run record as JSON")
    g.add_argument("--trace", default=None, metavar="PATH.jsonl", help="one JSON line per generated token")
    g.add_argument("--plot", default=None, metavar="PATH.png", help="entropy and its EMA per token, alpha shaded")
    g.add_argument("--quiet", action="store_true", help="no streaming text and stats")
    a = p.parse_args(argv)
    check_args(a)
    check_typed_text(a, "--q")
    if a.compare and a.mode == "baseline":
        raise UsageError("--compare runs the baseline next to --mode vreason or lite; pick one of those")
    if a.prune_ratio is not None and a.mode != "lite":  # one meaning, as in eval.py: Lite's ratio
        raise UsageError(f"--prune-ratio is Lite's: use --mode lite (with --steps 0 to prune without the controller), "
                         f"not --mode {a.mode}")
    check_outputs(a)
    return a


OUTPUTS = ("json", "trace", "plot")


def std_stream(path):
    """"stdout" or "stderr" if `path` names one of ours: '-', /dev/stdout, /proc/self/fd/2, or the very file stdout is
    redirected to (written as a file of its own, that file would be replaced under the stream); else None."""
    if path == "-":
        return "stdout"
    for name in ("stdout", "stderr"):
        try:
            if path and os.path.samestat(os.stat(path), os.fstat(getattr(sys, name).fileno())):
                return name
        except (OSError, ValueError):  # no such path yet, or a stream without a file descriptor
            pass
    return None


def in_place(path):  # exists and is not a regular file (a FIFO, /dev/null, a terminal): written into, never replaced
    return os.path.exists(path) and not os.path.isfile(path)


def check_outputs(a):
    """Before the run, each output path can be written and no two of them (nor an output and --video) are the same
    file, nor one of the checkpoint's files: found out after an hour of decoding, either would cost the result."""
    seen = {os.path.realpath(a.video): "--video"}
    if os.path.isdir(a.model):  # (a Hub id resolves later, into the Hub's cache)
        seen.update({os.path.realpath(os.path.join(a.model, f)): f"--model's {f}" for f in os.listdir(a.model)})
    for k in OUTPUTS:
        flag, path = f"--{k}", getattr(a, k)
        if path is None:
            continue
        if not path:
            raise UsageError(f"argument {flag}: empty path")
        if k == "plot":  # matplotlib is optional: missing, say so now, not after the run
            try:
                __import__("matplotlib")
            except ImportError:
                raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
        key = std_stream(path) or os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{flag} and {seen[key]} name the same file ({key})")
        seen[key] = flag
        if std_stream(path):
            continue
        if os.path.isdir(path) or path.endswith(os.sep):
            raise UsageError(f"{flag} {path} is a directory")
        if in_place(path):
            if not os.access(path, os.W_OK):
                raise UsageError(f"cannot write {flag} {path}: Permission denied")
            continue
        real = os.path.realpath(path)  # (through a symlink: its target is what gets replaced)
        if not os.path.isdir(os.path.dirname(real)):
            raise UsageError(f"output directory does not exist: {os.path.dirname(real)}")
        try:  # the temp file write_atomic will use, with a byte: a read-only, forbidden or full place fails now
            via_temp(real, b"\0", lambda tmp: None)
        except OSError as e:
            raise UsageError(f"cannot write {flag} {path}: {e.strerror}") from None


def via_temp(real, data, then):
    """data into a temp file beside `real`, synced to disk, then then(tmp) (the rename); the temp file never stays.
    Its name is short whatever the target's (any name the file system takes for the target must work, up to its
    255 bytes) and unique (the pid, and a random part); "x": it is never a file that was there."""
    tmp = os.path.join(os.path.dirname(real), f".vreason-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    f = open(tmp, "xb")
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        then(tmp)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def open_in_place(path, flags):  # an open() opener: O_NONBLOCK makes a FIFO nobody reads fail (ENXIO), never block
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        raise OSError(e.errno, "nobody is reading this FIFO" if e.errno == errno.ENXIO else e.strerror) from None
    os.set_blocking(fd, True)
    return fd


def write_atomic(path, data):
    """Write data (str or bytes) to an output path. Our stdout / stderr (see std_stream) are written as streams;
    anything else that is not a regular file in place, as renaming over a device node or FIFO would replace it with
    a file; a regular file, new or not, atomically: a temp file beside it, synced, then renamed over it, so an
    interrupted or failed write never leaves half a file. A symlink is kept and its target replaced."""
    data = data.encode() if isinstance(data, str) else data
    if std_stream(path):
        write_stream(std_stream(path), data)
    elif in_place(path):
        with open(path, "wb", opener=open_in_place) as f:
            f.write(data)
    else:
        real = os.path.realpath(path)
        via_temp(real, data, lambda tmp: os.replace(tmp, real))


def write_stream(name, data):  # "stdout" or "stderr": after the text already written to it, bytes and all
    stream = getattr(sys, name)
    stream.flush()
    stream.buffer.write(data.encode() if isinstance(data, str) else data)
    stream.flush()


def dumps(x, **kw):  # every JSON we write is strict: NaN or Infinity is an error here, never a bare NaN in a file
    return json.dumps(x, ensure_ascii=False, allow_nan=False, **kw)


class Streamer:
    """Turns tokens into text pieces as they arrive; holds back an incomplete UTF-8 sequence until it completes. Each
    token decodes only what is new since the last piece, after one token of context (a decoder may treat a text's
    first token apart, e.g. drop its leading space), so streaming stays linear in the answer's length."""

    def __init__(self, tok):
        self.tok, self.ids, self.done = tok, [], 0  # ids[:done] are in the pieces given out so far

    def put(self, token):
        self.ids.append(token)
        ctx = max(self.done - 1, 0)
        text = self.tok.decode(self.ids[ctx:], skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        before = self.tok.decode(self.ids[ctx : self.done], skip_special_tokens=True)
        self.done = len(self.ids)
        return text[len(before):]


@dataclass
class Run:
    mode: str
    steps: list
    pieces: list
    text: str
    info: dict
    timings: dict
    peak_memory_bytes: int


def decode(model, tok, prep, s, stop_ids, write):
    """One generate() run with streaming, timings and peak memory."""
    M.reset_peak_memory(model)
    streamer, steps, pieces, info = Streamer(tok), [], [], {}
    t0 = time.perf_counter()
    for step in R.generate(model, prep, s, stop_ids, info):
        steps.append(step)
        pieces.append(streamer.put(step.token))
        write(pieces[-1])
    R.sync(model)
    total = time.perf_counter() - t0
    decode_s, opt_s = total - info["prefill_s"], sum(st.opt_s for st in steps)
    timings = {"prefill_s": info["prefill_s"], "decode_s": decode_s, "decode_tokens_per_s": len(steps) / max(decode_s, 1e-9),
               "optimization_s": opt_s, "optimization_share": opt_s / max(decode_s, 1e-9)}
    return Run(s.mode, steps, pieces, tok.decode(streamer.ids, skip_special_tokens=True), info, timings,
               M.peak_memory_bytes(model))


def run_record(r, redecode=True):  # entropy after an update: only a redecode measures one
    return {"text": r.text, "answer": extract_answer(r.text), "token_ids": [st.token for st in r.steps],
            "entropies": [st.entropy for st in r.steps], "alphas": [st.alpha for st in r.steps],
            "ema": [st.ema for st in r.steps],
            "updates": [{"token_index": i, "loss": st.loss, "entropy_before": st.entropy_before,
                         "entropy_after": st.entropy if redecode else None}
                        for i, st in enumerate(r.steps) if st.updated],
            "vreason": r.info, "timings": r.timings, "peak_memory_bytes": r.peak_memory_bytes}


def stats_line(r):
    i, t = r.info, r.timings
    line = (f"-- {r.mode}: {len(r.steps)} tokens | prefill {t['prefill_s']:.2f}s decode {t['decode_s']:.2f}s "
            f"({t['decode_tokens_per_s']:.1f} tok/s) | peak memory {r.peak_memory_bytes / 2**30:.2f} GiB")
    if r.mode != "baseline":
        line += (f" | updates {i['updates']} (optimization {100 * t['optimization_share']:.0f}% of decode time), "
                 f"ΔV/V {i.get('dv_ratio', 0.0):.4f}")
    if i["video_tokens_kept"] != i["video_tokens"]:
        line += (f" | video tokens kept {i['video_tokens_kept']}/{i['video_tokens']}, KV cache "
                 f"{i['kv_bytes_before'] / 2**20:.2f} -> {i['kv_bytes_after'] / 2**20:.2f} MiB")
    return line


def compare_table(runs):
    """Baseline and the method side by side, with the method's figures relative to the baseline."""
    b, m = runs
    per_tok = [r.timings["decode_s"] / max(len(r.steps), 1) for r in runs]
    rows = [("tokens", len(b.steps), len(m.steps), len(m.steps) / max(len(b.steps), 1)),
            ("answer", extract_answer(b.text), extract_answer(m.text), None),
            ("decode s", f"{b.timings['decode_s']:.2f}", f"{m.timings['decode_s']:.2f}", m.timings["decode_s"] / max(b.timings["decode_s"], 1e-9)),
            ("ms / token", f"{1e3 * per_tok[0]:.1f}", f"{1e3 * per_tok[1]:.1f}", per_tok[1] / max(per_tok[0], 1e-12)),
            ("peak memory GiB", f"{b.peak_memory_bytes / 2**30:.3f}", f"{m.peak_memory_bytes / 2**30:.3f}", m.peak_memory_bytes / max(b.peak_memory_bytes, 1)),
            ("KV cache MiB", f"{b.info['kv_bytes_after'] / 2**20:.2f}", f"{m.info['kv_bytes_after'] / 2**20:.2f}", m.info["kv_bytes_after"] / max(b.info["kv_bytes_after"], 1))]
    lines = [f"\n{'':<16} {'baseline':>12} {m.mode:>12}   {m.mode}/baseline"]
    for name, x, y, ratio in rows:
        lines.append(f"{name:<16} {str(x):>12} {str(y):>12}   {'' if ratio is None else f'{ratio:.2f}x'}")
    return "\n".join(lines)


def video_maps(info, video):
    """What the method did to each video token, as [t, h, w] arrays over the merged-token grid (from a run's info, the
    same arrays --json holds): (title, values, colormap, vmin, vmax) per map that the run has."""
    import numpy as np

    t, gh, gw = video.grid_thw
    m = video.family.merge
    shape, maps = (t, gh // m, gw // m), []
    if "kept_last_layer" in info:
        kept = np.array([c == "1" for c in info["kept_last_layer"]]).reshape(shape)
        maps.append(("pruned by Lite in the last layer (dark)", np.where(kept, np.nan, 1.0), "Greys", 0, 1.2))
        maps.append(("layers that kept the token", np.array(info["layers_kept"], float).reshape(shape), "viridis", 0,
                     info["n_layers"]))
    if "angle_deg" in info:
        ang = np.array([np.nan if x is None else x for x in info["angle_deg"]]).reshape(shape)
        maps.append(("ΔV: how far the value vector turned (degrees, mean over kv heads)", ang, "magma", 0,
                     max(float(np.nanmax(ang)) if np.isfinite(ang).any() else 0, 1e-3)))
    return maps


def plot(runs, video=None):
    """PNG bytes. Top: entropy (thin) and its EMA (thick) per token, like the paper's Fig. 1-2, the last run's alpha
    shaded (red: +1, explore; blue: -1, exploit). Below, when the run pruned or steered the video: its frames (the first
    of each 2-frame group, at most 8 groups, evenly spaced) with each video token's cell shaded by what the method did
    to it (video_maps): which parts of the video Lite kept, and which ΔV turned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = video_maps(runs[-1].info, video) if video is not None else []
    frames = V.group_frames(video) if maps else None
    groups = sorted({round(i * (len(frames) - 1) / 7) for i in range(8)}) if maps else []
    fig = plt.figure(figsize=(12, 3.8 + 2.3 * len(maps)))
    grid = fig.add_gridspec(1 + len(maps), max(len(groups), 1), height_ratios=[1.6] + [1] * len(maps), hspace=0.4)
    ax = fig.add_subplot(grid[0, :])
    for row, (title, values, cmap, lo, hi) in enumerate(maps, 1):
        for col, g in enumerate(groups):
            a = fig.add_subplot(grid[row, col])
            a.imshow(frames[g])
            H, W = frames[g].shape[:2]
            im = a.imshow(values[g], cmap=cmap, vmin=lo, vmax=hi, alpha=0.6, extent=(0, W, H, 0), interpolation="nearest")
            a.set_xticks([]), a.set_yticks([])
            a.set_xlabel(f"t = {video.timestamps[g]:.1f} s" if video.timestamps else f"group {g}", fontsize=8)
            if col == 0:
                a.set_title(title, loc="left", fontsize=9)
        bar = fig.colorbar(im, ax=fig.axes[-len(groups):], fraction=0.02, pad=0.01)  # (every row: equal widths)
        if cmap == "Greys":
            bar.set_ticks([1.0], labels=["pruned"])
    for r in runs:
        color = "tab:gray" if r.mode == "baseline" else "tab:green"
        ls = "--" if r.mode == "baseline" and len(runs) > 1 else "-"  # visible where the runs coincide
        ax.plot([st.entropy for st in r.steps], lw=0.7, ls=ls, color=color, alpha=0.6, label=f"{r.mode} entropy")
        ax.plot([st.ema for st in r.steps], lw=2, ls=ls, color=color, label=f"{r.mode} EMA")
    alphas, start = [st.alpha for st in runs[-1].steps], 0
    for i in range(1, len(alphas) + 1):
        if i == len(alphas) or alphas[i] != alphas[start]:
            ax.axvspan(start - 0.5, i - 0.5, color="tab:red" if alphas[start] > 0 else "tab:blue", alpha=0.08, lw=0)
            start = i
    ax.set(xlabel="generated token", ylabel="entropy (nats)", title=f"{runs[-1].mode}: alpha +1 red, -1 blue")
    ax.legend(loc="upper right", fontsize=8)
    if not maps:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def check_positions(last, new_tokens, max_positions):
    """The answer must stay within the positions the checkpoint was trained for (max_position_embeddings): the prompt
    ends at position `last`, the n-th new token is fed at last + n, and the last one is never fed."""
    if last >= max_positions:
        raise UsageError(f"the prompt ends at position {last}, past this checkpoint's {max_positions} positions "
                         f"(max_position_embeddings): fewer or smaller frames (--max-frames, --fps, --max-pixels)")
    if last + new_tokens > max_positions:
        raise UsageError(f"argument --max-new-tokens: invalid value {new_tokens} (the prompt ends at position {last} of "
                         f"this checkpoint's {max_positions} (max_position_embeddings): at most {max_positions - last})")


# A step that ends within this many seconds shows no progress (the common case: a short clip, a cached small model);
# time, not a file's length, because what is slow differs (a 4K HEVC file decodes far slower per second than 240p).
PROGRESS_AFTER = 2.0


class Progress:
    """A long step's progress on stderr, as a callback (done, total or None): nothing before PROGRESS_AFTER seconds;
    then on a terminal one line rewritten in place, elsewhere (a log) a line at most every `every` seconds, and the
    last. A context manager: the in-place line is ended however the step ends. quiet: a callback that does nothing."""

    def __init__(self, what, unit, every=5.0, quiet=False, stream=None):
        self.what, self.unit, self.every, self.quiet = what, unit, every, quiet
        self.stream = stream or sys.stderr
        self.t0, self.last, self.tty = time.perf_counter(), None, self.stream.isatty()

    def __call__(self, done, total=None):
        now = time.perf_counter()
        if self.quiet or now - self.t0 < PROGRESS_AFTER:
            return
        if self.last is not None and now - self.last < (0.1 if self.tty else self.every) and done != total:
            return
        self.last = now
        text = f"{self.what}: {done}{'' if total is None else f'/{total}'} {self.unit}"
        self.stream.write(f"\r{text}\033[K" if self.tty else text + "\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.tty and self.last is not None:
            self.stream.write("\n")


def progress(total, unit="sample"):
    """A bar with ETA on stderr for many like steps (eval.py's samples, report.py's figures), called once a step with
    what was done: redrawn in place on a terminal, one line per step in a log file."""
    t0, done, tty = time.perf_counter(), [0], sys.stderr.isatty()

    def step(what):
        done[0] += 1
        el, n = time.perf_counter() - t0, done[0]
        eta = int(el / n * (total - n))
        print(("\r\033[K" if tty else "") + f"[{'#' * (20 * n // total):<20}] {n}/{total} {unit}s | {el / n:.1f} s/{unit} | "
              f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d} | {what}", end="" if tty and n < total else "\n",
              file=sys.stderr, flush=True)
    return step


def note(msg):  # a line of its own on stderr, also when a progress bar is being redrawn in place
    print(("\r\033[K" if sys.stderr.isatty() else "") + msg, file=sys.stderr, flush=True)


def run(a):
    to_stdout = any(std_stream(getattr(a, k)) == "stdout" for k in OUTPUTS)
    out = None if a.quiet else sys.stderr if to_stdout else sys.stdout
    say = (lambda *x: print(*x, file=out, flush=True)) if out else (lambda *x: None)
    dev, dtype = M.pick_device_dtype(a.device, a.dtype)
    device_map = None if a.device_map == "none" else a.device_map
    model_dir = resolve_model(a.model, weights=False)
    # The model's skeleton: config.json read and checked, shapes and prompt, no storage (what the request is checked
    # against below, before a weight is downloaded or read)
    skeleton = M.skeleton(model_dir)
    family = skeleton.family  # the video's preprocessing and the prompt are the family's
    tok = V.load_tokenizer(model_dir, family, skeleton.c)  # (with the config: every small file checked before the video)
    check_pixels(a, family)
    t0 = time.perf_counter()
    with Progress("reading video (2 passes)", "frames", quiet=a.quiet) as bar:
        video = V.load_video(a.video, family, fps=a.fps, nframes=a.nframes, max_frames=a.max_frames, min_pixels=a.min_pixels,
                             max_pixels=a.max_pixels, total_pixels=a.total_pixels, progress=bar)
    t_video = time.perf_counter() - t0
    # The exact prompt, from the skeleton: does the request fit the checkpoint's positions and the machine's memory?
    ids, pos = skeleton.prompt(tok, a.q, video, a.system)
    check_positions(int(pos.max()), a.max_new_tokens, skeleton.c.max_positions)
    M.check_memory(skeleton, dev, dtype, device_map, len(ids), a.max_new_tokens)
    model_dir = resolve_model(a.model)
    t0 = time.perf_counter()
    with Progress("loading weights", "shards", every=0, quiet=a.quiet) as bar:
        model = M.load_model(model_dir, dev, dtype, device_map, progress=bar)
    if a.compile:
        model.compile_decode()
    t_load = time.perf_counter() - t0
    stop_ids = model.stop_ids(tok)
    s = R.Settings.from_args(a)
    prep = R.prepare(model, tok, video, a.q, a.system, prompt=(ids, pos))  # the checks' prompt: built once
    vm = video.meta
    say(f"-- prompt {len(prep.ids)} tokens, video {video.n_tokens} tokens ({len(vm['frame_indices'])} frames "
        f"{vm['resized_width']}x{vm['resized_height']}, grid {list(video.grid_thw)}) | video read {t_video:.2f}s, "
        f"model load {t_load:.2f}s, vision {prep.vision_s:.2f}s")
    plan = [replace(s, mode="baseline", prune_ratio=0.0), s] if a.compare else [s]
    runs = []
    for sm in plan:
        say(f"\n== {sm.mode}" if a.compare else "")
        r = decode(model, tok, prep, sm, stop_ids, (lambda x: out.write(x) or out.flush()) if out else (lambda x: None))
        runs.append(r)
        say("\n")
        if extract_answer(r.text) is not None:
            say(f"answer: {extract_answer(r.text)}")
        say(stats_line(r))
    if a.compare:
        say(compare_table(runs))
    main_run = runs[-1]
    record = {**run_record(main_run, s.redecode), "mode": main_run.mode, "prompt_tokens": len(prep.ids),
              "video_tokens": video.n_tokens, "video": vm, "question": a.q, "model": a.model, "model_dir": model_dir,
              "family": skeleton.c.model_type, "thinking": model.thinking, "dtype": str(dtype).replace("torch.", ""), "device": str(dev),
              "settings": {**{k: v for k, v in vars(a).items() if k not in ("json", "quiet")}, **asdict(s)},
              "timings": {"video_s": t_video, "load_s": t_load, "vision_s": prep.vision_s, **main_run.timings}}
    if a.compare:
        record["baseline"] = run_record(runs[0])
    return save_outputs(a, record, runs, video)


def save_outputs(a, record, runs, video):
    """Write --json / --trace / --plot. A write that fails (disk full, a FIFO nobody reads) is reported, and what it
    held goes to stdout (stderr if it was stdout): the run's result is never lost. Returns the exit status."""
    r = runs[-1]
    content = {"json": lambda: dumps(record, indent=1) + "\n",
               "trace": lambda: "".join(dumps({"i": i, "token": st.token, "text": piece, "entropy": st.entropy, "ema": st.ema,
                                               "peak": st.peak, "alpha": st.alpha, "updated": st.updated, "loss": st.loss}) + "\n"
                                        for i, (st, piece) in enumerate(zip(r.steps, r.pieces))),
               "plot": lambda: plot(runs, video)}
    failed = {}
    for k in OUTPUTS:
        path = getattr(a, k)
        try:
            if path is not None:
                write_atomic(path, content[k]())
        except ImportError:  # only the plot: matplotlib is optional
            print("vreason: --plot needs matplotlib (pip install matplotlib); no plot written", file=sys.stderr)
        except OSError as e:
            failed[k] = (path, e.strerror or str(e))
    # What a failed output held goes to stdout instead (stderr, if stdout is what failed): the record, the trace, and
    # for the plot its data, the record, unless --json holds that already.
    alt = "stderr" if any(std_stream(path) == "stdout" for path, _ in failed.values()) else "stdout"
    rescue = {k for k in failed if k != "plot"} | ({"json"} if "plot" in failed and not a.json else set())
    for k, (path, why) in failed.items():
        keeps = f"its data is in --json {a.json}" if k == "plot" and "json" not in rescue else \
            f"{'the trace' if k == 'trace' else 'the record'} follows on {alt}"
        print(f"vreason: error: cannot write --{k} {path} ({why}); {keeps}", file=sys.stderr)
    for k in ("json", "trace"):
        if k in rescue:
            write_stream(alt, content[k]())
    return 2 if failed else 0


def main(argv=None):
    try:
        return run(parse_args(argv))
    except (UsageError, V.VideoError, M.ModelError) as e:
        print(f"vreason: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nvreason: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vreason.py ... | head -1`: the reader is gone. Stop quietly, as a C tool killed by
        # SIGPIPE does (exit 128 + 13); stdout goes to /dev/null so that the interpreter's last flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
