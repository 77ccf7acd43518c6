"""V-Reason ("Video Reasoning without Training", arXiv 2510.17045) on Qwen2.5-VL: the generate loop and the CLI.

    python vreason.py --video clip.mp4 --q "What happens after the ball is thrown?"

Data flows one way: video.py (file -> patches, prompt ids) -> model.py (vision features, prefill, decode steps)
-> here (decoding).
"""
import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

import model as M
import video as V


# ----------------------------------------------------------------------------- settings and prepared input

@dataclass
class Settings:
    mode: str = "baseline"
    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0 = greedy (plain argmax)
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # HF semantics when != 1: over every id so far, prompt included
    seed: int = 0


@dataclass
class Prepared:
    """One sample after vision encoding: everything decoding needs, shareable between modes."""
    ids: torch.Tensor  # [S] prompt ids
    pos: torch.Tensor  # [3, S] M-RoPE positions
    video_embeds: torch.Tensor  # [M, D]
    video: V.Video
    vision_s: float


@dataclass
class Step:
    token: int
    entropy: float  # nats, full vocabulary, T = 1, of the logits that chose the token


def prepare(model, tok, video, question, system=None):
    """Encode the video and build the prompt ids and positions (reference M-RoPE, positions owned by us)."""
    ids = V.build_prompt(tok, question, video.n_tokens, system)
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    with torch.no_grad():
        emb = model.visual(video.pixel_values.to(dev), [video.grid_thw])
    sync(dev)
    pos = M.rope_index(ids, [video.grid_thw], [video.second_per_grid], model.c).to(dev)
    return Prepared(torch.tensor(ids, device=dev), pos, emb, video, time.perf_counter() - t0)


def entropy(logits):  # [V] -> nats, float32, full vocabulary, temperature 1
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum()


def choose(logits, s, seen, gen):
    """Greedy argmax, or temperature / top-p sampling. `seen` holds every id so far (for the repetition penalty)."""
    if s.repetition_penalty != 1.0:
        logits = logits.clone()
        prev = logits[seen]
        logits[seen] = torch.where(prev > 0, prev / s.repetition_penalty, prev * s.repetition_penalty)
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, -1)
    if s.top_p < 1.0:
        p, idx = probs.sort(descending=True)
        drop = p.cumsum(0) - p > s.top_p  # keep the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, idx, p.masked_fill(drop, 0))
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def generate(model, prep, s, stop_ids):
    """Decode one sample, yielding a Step per generated token (the stop token included when produced)."""
    dev = prep.ids.device
    gen = torch.Generator().manual_seed(s.seed)
    cache = M.KVCache.empty(model.c, len(prep.ids) + s.max_new_tokens, dev, model.lm_head.weight.dtype)
    with torch.no_grad():
        logits, _ = model(model.embed(prep.ids, prep.video_embeds), prep.pos, cache)
    nxt = int(prep.pos.max()) + 1  # positions are carried explicitly: never derived from the cache length
    seen = prep.ids.clone()
    for t in range(s.max_new_tokens):
        token = choose(logits, s, seen, gen)
        yield Step(token, float(entropy(logits)))
        if token in stop_ids or t == s.max_new_tokens - 1:
            return
        seen = torch.cat([seen, seen.new_tensor([token])])
        with torch.no_grad():
            logits, _ = model(model.embed(seen[-1:]), torch.full((3, 1), nxt + t, device=dev), cache)


# ----------------------------------------------------------------------------- CLI

class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (argparse prints the usage block too)
        raise UsageError(message)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory_bytes(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux reports KiB)


def resolve_model(name):
    """A local directory, else the local Hugging Face cache, else a download through huggingface_hub if installed."""
    if os.path.isdir(name):
        return name
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise M.ModelError(f"model directory not found: {name}")
    try:
        import huggingface_hub
    except ImportError:
        hub = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
        snaps = os.path.join(hub, "models--" + name.replace("/", "--"), "snapshots")
        found = sorted(os.listdir(snaps)) if os.path.isdir(snaps) else []
        if found:
            return os.path.join(snaps, found[-1])
        raise M.ModelError(f"{name} is not a local directory nor in the Hugging Face cache; pip install huggingface_hub "
                           f"to download it, or pass --model /path/to/a/downloaded/checkpoint") from None
    patterns = ["*.json", "*.safetensors", "*.txt"]
    try:
        return huggingface_hub.snapshot_download(name, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    try:
        print(f"downloading {name} from the Hugging Face Hub ...", file=sys.stderr)
        return huggingface_hub.snapshot_download(name, allow_patterns=patterns)
    except Exception as e:
        raise M.ModelError(f"cannot get {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                           f"pass --model /path/to/a/downloaded/checkpoint") from None


def parse_args(argv):
    p = Parser(description="V-Reason: inference-time entropy steering of Qwen2.5-VL video reasoning (arXiv 2510.17045)")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--q", required=True, help="question about the video")
    p.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct", help="checkpoint directory or Hugging Face id")
    p.add_argument("--mode", default="baseline", choices=["baseline"])
    p.add_argument("--system", default=None, help="system prompt (default: the Qwen2.5-VL default)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    p.add_argument("--nframes", type=int, default=None, help="sample exactly this many frames (overrides --fps)")
    p.add_argument("--max-frames", type=int, default=768)
    p.add_argument("--min-pixels", type=int, default=None, help="per frame (default 128*28*28)")
    p.add_argument("--max-pixels", type=int, default=None, help="per frame (default 768*28*28)")
    p.add_argument("--total-pixels", type=int, default=None, help="all frames together (default 128000*28*28*0.9)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--json", default=None, metavar="PATH", help="write the run record as JSON ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="no streaming text and stats")
    a = p.parse_args(argv)
    for name, ok in (("--max-new-tokens", a.max_new_tokens >= 1), ("--temperature", a.temperature >= 0),
                     ("--top-p", 0 < a.top_p <= 1), ("--fps", a.fps > 0), ("--repetition-penalty", a.repetition_penalty > 0),
                     ("--nframes", a.nframes is None or a.nframes >= 2), ("--max-frames", a.max_frames >= 2)):
        if not ok:
            raise UsageError(f"argument {name}: invalid value {getattr(a, name[2:].replace('-', '_'))}")
    return a


def write_json_atomic(path, record):
    """Write to a temp file beside the target, then rename: an interrupted run never leaves half a file."""
    text = json.dumps(record, indent=1)
    if path == "-":
        print(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Streamer:
    """Prints decoded text as tokens arrive; holds back an incomplete UTF-8 sequence until it completes."""
    def __init__(self, tok, out):
        self.tok, self.out, self.ids, self.done = tok, out, [], 0

    def put(self, token):
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.out and not text.endswith("\ufffd"):
            self.out.write(text[self.done:])
            self.out.flush()
            self.done = len(text)
        return text


def run(a):
    out = None if a.quiet else sys.stderr if a.json == "-" else sys.stdout
    say = (lambda *x: print(*x, file=out)) if out else (lambda *x: None)
    dev, dtype = M.pick_device_dtype(a.device, a.dtype)
    t0 = time.perf_counter()
    video = V.load_video(a.video, fps=a.fps, nframes=a.nframes, max_frames=a.max_frames,
                         min_pixels=a.min_pixels, max_pixels=a.max_pixels, total_pixels=a.total_pixels)
    t_video = time.perf_counter() - t0
    model_dir = resolve_model(a.model)
    tok = V.load_tokenizer(model_dir)
    t0 = time.perf_counter()
    model = M.load_model(model_dir, dev, dtype)
    t_load = time.perf_counter() - t0
    stop_ids = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")} - {None}
    s = Settings(mode=a.mode, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                 repetition_penalty=a.repetition_penalty, seed=a.seed)
    prep = prepare(model, tok, video, a.q, a.system)
    streamer, steps = Streamer(tok, out), []
    t0 = time.perf_counter()
    for i, step in enumerate(generate(model, prep, s, stop_ids)):
        if i == 0:
            sync(dev)
            t_first = time.perf_counter() - t0  # prefill + choosing the first token
        steps.append(step)
        text = streamer.put(step.token)
    sync(dev)
    t_total = time.perf_counter() - t0
    n = len(steps)
    timings = {"video_s": t_video, "load_s": t_load, "vision_s": prep.vision_s, "prefill_s": t_first,
               "decode_s": t_total - t_first, "decode_tokens_per_s": (n - 1) / max(t_total - t_first, 1e-9)}
    vm = video.meta
    say(f"\n\n-- {n} tokens | prompt {len(prep.ids)} tokens, video {video.n_tokens} tokens "
        f"({len(vm['frame_indices'])} frames {vm['resized_width']}x{vm['resized_height']}, grid {list(video.grid_thw)}) | "
        f"vision {prep.vision_s:.2f}s prefill {t_first:.2f}s decode {timings['decode_s']:.2f}s "
        f"({timings['decode_tokens_per_s']:.1f} tok/s) | peak memory {peak_memory_bytes(dev) / 2**30:.2f} GiB")
    if a.json:
        record = {"text": text, "token_ids": [st.token for st in steps], "entropies": [st.entropy for st in steps],
                  "prompt_tokens": len(prep.ids), "video_tokens": video.n_tokens, "video": vm, "question": a.q,
                  "model": a.model, "model_dir": model_dir, "dtype": str(dtype).replace("torch.", ""), "device": str(dev),
                  "mode": a.mode, "settings": {**asdict(s), **{k: v for k, v in vars(a).items() if k not in ("json", "quiet")}},
                  "timings": timings, "peak_memory_bytes": peak_memory_bytes(dev)}
        write_json_atomic(a.json, record)
    return 0


def main(argv=None):
    try:
        return run(parse_args(argv))
    except (UsageError, V.VideoError, M.ModelError) as e:
        print(f"vreason: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nvreason: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
