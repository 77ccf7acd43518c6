"""V-Reason ("Video Reasoning without Training", arXiv 2510.17045): the method, the generate loop and the CLI.

    python vreason.py --video clip.mp4 --q "What happens after the ball is thrown?"

Data flows one way: video.py (file -> patches, prompt ids) -> the family's model file (vision features, positions,
prefill, decode steps) -> here. The method reaches a model only through the contract named in model.VideoLM, so
Qwen2.5-VL and Qwen3-VL (and a port of yours, PORTING.md) run it unchanged.
"""
import argparse
import errno
import io
import json
import math
import os
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F

import model as M
import video as V


# ----------------------------------------------------------------------------- settings and prepared input

@dataclass
class Settings:
    mode: str = "baseline"  # baseline | vreason | lite
    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0 = greedy (plain argmax)
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # HF semantics when != 1: over every id so far, prompt included
    seed: int = 0
    # V-Reason (spec ../shared/spec/vreason.md; [ours] choices are flags, defaults as the spec states)
    beta: float = 0.9  # EMA of the entropy
    update_every: int = 2  # k: optimize on every k-th token (paper: k = 2 best)
    steps: int = 1  # Adam steps per update
    lr: float = 1e-2
    objective: str = "switch"  # switch | minimize | maximize (paper ablations)
    kl: str = "pu"  # pu: KL(p||U) = log|V| - H;  up: KL(U||p)
    redecode: bool = True  # after an update, recompute the current logits before choosing the token
    controller: str = "per-token"  # per-token | shared (one row per kv head)
    prune_ratio: float = None  # fraction of video tokens dropped from the KV cache; None: 0.5 in lite, else 0
    prune_policy: str = "per-layer"  # per-layer | last-layer

    def __post_init__(self):
        if self.prune_ratio is None:
            self.prune_ratio = 0.5 if self.mode == "lite" else 0.0

    @classmethod
    def from_args(cls, a, **override):  # from parsed CLI flags (vreason.py or eval.py), then the overrides
        return cls(**{**{f.name: getattr(a, f.name) for f in fields(cls) if hasattr(a, f.name)}, **override})


@dataclass
class Prepared:
    """One sample after vision encoding: everything decoding needs, shareable between modes."""
    ids: torch.Tensor  # [S] prompt ids
    pos: torch.Tensor  # [3, S] M-RoPE positions
    visual: M.Visual  # vision features (None for a text-only prompt)
    video: V.Video
    vision_s: float


@dataclass
class Step:
    token: int
    entropy: float  # nats, full vocabulary, T = 1, of the logits that chose the token
    ema: float
    peak: float
    alpha: float  # what the switching rule gives at this token, whether or not an update ran
    updated: bool = False
    loss: float = None  # of the first optimization step of this update
    entropy_before: float = None  # before the update (the EMA uses this one)
    opt_s: float = 0.0  # time spent optimizing + redecoding at this token


def prepare(model, tok, video, question, system=None, prompt=None):
    """The family's prompt ids and explicit positions (or `prompt`, those already built), and the video through its
    vision encoder."""
    ids, pos = prompt or model.prompt(tok, question, video, system)
    dev = model.layer_devices()[0]  # where the embedding and the first layer are
    t0 = time.perf_counter()
    with torch.no_grad():
        visual = model.encode_video(video)
    sync(model)
    return Prepared(torch.tensor(ids, device=dev), pos.to(dev), visual, video, time.perf_counter() - t0)


def entropy(logits):  # [V] fp32 (or fp64) logits from model.logits -> nats, full vocabulary, temperature 1
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum()


def choose(logits, s, seen, gen):
    """Greedy argmax, or temperature / top-p sampling -> the token, [1] int64 on the logits' device (greedy decoding
    never brings it to the host here). `seen` holds every id so far (for the repetition penalty)."""
    if s.repetition_penalty != 1.0:
        logits = logits.clone()
        seen = seen.to(logits.device)
        prev = logits[seen]
        logits[seen] = torch.where(prev > 0, prev / s.repetition_penalty, prev * s.repetition_penalty)
    if s.temperature == 0:
        return logits.argmax()[None]
    probs = torch.softmax(logits / s.temperature, -1)
    if s.top_p < 1.0:
        p, idx = probs.sort(descending=True)
        drop = p.cumsum(0) - p > s.top_p  # keep the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, idx, p.masked_fill(drop, 0))
    return torch.multinomial(probs.cpu(), 1, generator=gen).to(logits.device)  # a CPU generator: the same draw anywhere


# ----------------------------------------------------------------------------- the method (paper §3, spec §2-§5)

class Controller:
    """ΔV (paper Fig. 2a): a float32 offset on the last decoder layer's value rows at video positions, nothing else.
    It only turns each value vector, never rescales it: v = (v0 + dv) / ||v0 + dv|| * ||v0||. Zero init, so the
    model is untouched until the first update. Why the last layer: its values feed nothing else that is cached, so
    the gradient for the current token needs just that layer recomputed at one position (input detached)."""

    def __init__(self, cache, rows, s):  # rows [Nv] int64: the cache rows of the video tokens in the last layer
        self.idx, self.s = rows.to(cache.v[-1].device), s
        V = cache.v[-1][:, self.idx]
        self.v0 = V.to(torch.promote_types(V.dtype, torch.float32)).clone()  # [Hkv, Nv, d], fp32 at least
        self.v0_norm = self.v0.norm(dim=-1, keepdim=True)  # [Hkv, Nv, 1]
        shape = self.v0.shape if s.controller == "per-token" else (self.v0.shape[0], 1, self.v0.shape[2])
        self.dv = torch.zeros(shape, device=self.v0.device, dtype=self.v0.dtype, requires_grad=True)
        self.m, self.m2, self.n = torch.zeros_like(self.dv), torch.zeros_like(self.dv), 0  # Adam's moments and step count

    def rows(self):  # [Hkv, Nv, d] fp32, differentiable in dv
        x = self.v0 + self.dv
        return x / (x.norm(dim=-1, keepdim=True) + 1e-6) * self.v0_norm

    def logits(self, model, cache, h_in, pos):
        """Last layer at the current position, its video value rows = rows(); then final norm + LM head."""
        K, Vc = cache.k[-1][:, : cache.length], cache.v[-1][:, : cache.length]
        return model.last_layer(h_in, pos, K, Vc.index_copy(1, self.idx, self.rows().to(Vc.dtype)))

    def adam(self, b1=0.9, b2=0.999, eps=1e-8):
        """One step of torch.optim.Adam (default betas and eps), its arithmetic written out for our single tensor: the
        same numbers (a test compares), without importing torch.optim, which pulls in torch._dynamo (~70 MB, ~1.4 s)."""
        g, self.n = self.dv.grad, self.n + 1
        self.m.lerp_(g, 1 - b1)
        self.m2.mul_(b2).addcmul_(g, g, value=1 - b2)
        with torch.no_grad():
            self.dv.addcdiv_(self.m, (self.m2.sqrt() / (1 - b2**self.n) ** 0.5).add_(eps), value=-self.s.lr / (1 - b1**self.n))
        self.dv.grad = None

    def update(self, model, cache, h_in, pos, alpha, logits=None):
        """`steps` Adam steps on the switching loss, then write the new rows into the cache. Returns the first loss (on
        the device: nothing here waits for it). `logits`, if given, is this step's own forward through self.logits
        (graph attached): the first step reuses it."""
        for i in range(self.s.steps):
            z = logits if i == 0 and logits is not None else self.logits(model, cache, h_in, pos)
            loss = alpha * kl_to_uniform(z, self.s.kl)
            loss.backward()  # into dv only: weights are frozen, h_in and the cache carry no graph
            self.adam()
            if i == 0:
                first = loss.detach()
        with torch.no_grad():
            cache.v[-1][:, self.idx] = self.rows().to(cache.v[-1].dtype)
        return first

    def ratio(self):  # ||V - V0|| / ||V0|| over the controlled rows
        with torch.no_grad():
            return float((self.rows() - self.v0).norm() / self.v0.norm().clamp_min(1e-12))

    def angles(self):  # degrees each value row has turned from v0, mean over kv heads -> [Nv]
        with torch.no_grad():
            return torch.rad2deg(torch.acos(F.cosine_similarity(self.rows(), self.v0, dim=-1).clamp(-1, 1))).mean(0)


def kl_to_uniform(logits, direction):
    """Entropy Switching Loss without its sign (paper eq. for L_switch). KL(p||U) = log|V| - H(p) (default);
    KL(U||p) = -log|V| - mean(log p) (note: F.kl_div(log_p, U) computes this second one)."""
    logp = torch.log_softmax(logits, -1)
    if direction == "pu":
        return math.log(logp.numel()) + (logp.exp() * logp).sum()
    return -math.log(logp.numel()) - logp.mean()


class Switch:
    """The switching rule (paper §3.2): an EMA of the entropy and its running peak. alpha = +1 (raise entropy:
    explore) while the EMA sits at its running peak, -1 (lower it: exploit) as soon as it dips below; after the
    global peak it stays -1. `minimize` / `maximize` are the paper's fixed-sign ablations."""

    def __init__(self, beta, objective):
        self.beta, self.objective, self.ema, self.peak, self.alpha = beta, objective, None, None, None

    def __call__(self, H):
        """Entropy of the current token -> alpha. All float64 tensors where H is (the host's arithmetic, on the device:
        the decode loop reads them a step later, so the device never waits for the rule)."""
        H = torch.as_tensor(H, dtype=torch.float64)
        self.ema = H if self.ema is None else self.beta * self.ema + (1 - self.beta) * H
        self.peak = self.ema if self.peak is None else torch.maximum(self.peak, self.ema)
        explore = (self.ema >= self.peak).double()  # 1 at the running peak, 0 below it
        self.alpha = {"switch": 2 * explore - 1, "minimize": -torch.ones_like(H), "maximize": torch.ones_like(H)}[self.objective]
        return self.alpha


def prune(cache, rows, ratio, policy):
    """V-Reason Lite (spec §5): per layer, drop the floor(ratio * N) video rows whose value vectors have the smallest
    norm (mean over kv heads of the L2 norm), K and V alike, and close the gaps, keeping every other row in order;
    text rows (Qwen3-VL's timestamps between frame groups included) are never dropped. Keys carry their rotary phase,
    so the compacted cache stays valid. rows [N]: the video rows (ascending, the same in every layer after prefill).
    Returns the last layer's new video rows [N - dropped] and which video tokens each layer kept [n_layers, N] bool."""
    n, T, lo = len(rows), cache.length, int(rows[0])
    keep = n - math.floor(ratio * n)
    score = lambda Vl: Vl[:, rows.to(Vl.device)].float().norm(dim=-1).mean(0)  # [N]
    last = score(cache.v[-1]) if policy == "last-layer" else None
    kept = []
    for K, Vl in zip(cache.k, cache.v):
        sc = last.to(Vl.device) if last is not None else score(Vl)
        is_kept = torch.zeros(n, dtype=torch.bool, device=Vl.device).index_fill_(0, sc.topk(keep).indices, True)
        alive = torch.ones(T, dtype=torch.bool, device=Vl.device)
        alive[rows.to(Vl.device)] = is_kept
        src = alive[lo:].nonzero().flatten() + lo  # rows before the first video row stay where they are
        for X in (K, Vl):
            X[:, lo : lo + len(src)] = X[:, src]
        kept.append(is_kept.cpu())
        new_rows = (alive.cumsum(0) - 1)[rows.to(Vl.device)][is_kept]  # where this layer's kept video rows went: the
    # last layer's are returned (the controller's rows)
    cache.length = T - (n - keep)
    return new_rows, torch.stack(kept)


def video_rows(model, ids):  # the contract's spans -> one index tensor of cache rows (empty for a text-only prompt)
    spans = model.video_spans(ids)
    return torch.cat([torch.arange(lo, hi) for lo, hi in spans]) if spans else torch.zeros(0, dtype=torch.long)


def to_host_later(x):
    """Start copying x to the host; returns a function that waits for that copy alone (not for work queued after
    it) and gives x as a list. Elsewhere than CUDA, the plain read."""
    if x.device.type != "cuda":
        return x.tolist
    host, done = torch.empty(x.shape, dtype=x.dtype, pin_memory=True), torch.cuda.Event()
    host.copy_(x, non_blocking=True)
    done.record(torch.cuda.current_stream(x.device))
    return lambda: (done.synchronize(), host.tolist())[1]


class Stopwatch:
    """Device time of the work queued between creation and stop(), read with seconds() once that work is done:
    CUDA events (no host sync), or the wall clock elsewhere (there ops run as they are called)."""

    def __init__(self, dev):
        self.cuda = dev.type == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.stream = torch.cuda.current_stream(dev)
            self.start.record(self.stream)
        else:
            self.t = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.end.record(self.stream)
        else:
            self.t = time.perf_counter() - self.t

    def seconds(self):
        return self.start.elapsed_time(self.end) / 1e3 if self.cuda else self.t


def generate(model, prep, s, stop_ids, info=None):
    """Decode one sample (batch 1), yielding a Step per token (the stop token included when produced). Each step
    follows spec §4 in order: logits -> entropy, EMA, peak -> every k-th token an update of ΔV and a redecode ->
    choose the token. `info` (a dict, optional) receives the run's figures (KV bytes, video tokens kept, ΔV/V)."""
    info = {} if info is None else info
    dev = prep.ids.device
    gen = torch.Generator().manual_seed(s.seed)
    t0 = time.perf_counter()
    cache = model.new_cache(len(prep.ids) + s.max_new_tokens)
    with torch.no_grad():
        logits, h_in = model.prefill(prep.ids, prep.pos, prep.visual, cache)
    rows = video_rows(model, prep.ids)
    info.update(kv_bytes_before=cache.nbytes(), video_tokens=len(rows))
    kept = torch.ones(1, len(rows), dtype=torch.bool)  # per layer, which video tokens (prompt order) stay in the cache
    if s.prune_ratio > 0 and len(rows):
        rows, kept = prune(cache, rows, s.prune_ratio, s.prune_policy)
        # compact, for --json / --plot: the last layer's choice as a 0/1 string, and how many layers kept each token
        info.update(kept_last_layer="".join("01"[k] for k in kept[-1].int().tolist()), layers_kept=kept.sum(0).tolist(),
                    n_layers=len(kept))
    sync(model)
    info.update(prefill_s=time.perf_counter() - t0, kv_bytes_after=cache.nbytes(), video_tokens_kept=len(rows), updates=0)
    ctrl = Controller(cache, rows, s) if s.mode in ("vreason", "lite") and len(rows) else None  # nothing to steer without video
    pos = prep.pos[:, -1:].clone()  # position of the row whose logits we hold; explicit, never the cache length
    nxt = int(prep.pos.max()) + 1
    seen, switch = prep.ids.clone(), Switch(s.beta, s.objective)
    due = lambda t: ctrl is not None and s.steps > 0 and t % s.update_every == 0  # an update at step t
    try:
        for t in range(s.max_new_tokens):
            H = entropy(logits.detach())
            if due(t):  # spec §4 step 3: the switching rule on this entropy, an update of ΔV, a redecode
                H_before, alpha, clock = H, switch(H), Stopwatch(logits.device)
                graph = logits if logits.requires_grad else None
                loss = ctrl.update(model, cache, h_in, pos, alpha, graph)
                logits = logits.detach()
                if s.redecode:
                    with torch.no_grad():
                        logits = ctrl.logits(model, cache, h_in, pos)
                    H = entropy(logits)
                clock.stop()  # (the update's first forward, when shared with the decode step, is not counted)
                info["updates"] += 1
            else:
                switch(H)
            token = choose(logits, s, seen, gen)
            # this step's numbers are all on the device: start their copy to the host, launch the next step, and only
            # then wait for the copy, so that the device always has the next step queued while the host streams this
            # one (no host sync inside a step; a stop token costs one step computed and dropped)
            nums = [token[0], H, switch.ema, switch.peak, switch.alpha] + ([H_before, loss] if due(t) else [])
            read = to_host_later(torch.stack([x.double() for x in nums]))  # (ids < 2**53 are exact in float64)
            last = t == s.max_new_tokens - 1
            if not last:
                seen = torch.cat([seen, token.to(seen.device)])
                pos = torch.full((3, 1), nxt + t, device=dev)
                with torch.no_grad():
                    next_logits, h_in = model.decode(seen[-1:], pos, cache, finish=not due(t + 1))
                if next_logits is None:  # an update is due: its first forward (the last layer through the controller's
                    next_logits = ctrl.logits(model, cache, h_in, pos)  # rows, with grad) gives that step's logits too
            token_f, *floats = read()
            step = Step(int(token_f), *floats[:4])
            if due(t):
                step.updated, step.entropy_before, step.loss, step.opt_s = True, *floats[4:], clock.seconds()
            if not math.isfinite(step.entropy):  # stop rather than emit garbage and write NaN
                raise M.ModelError(f"non-finite logits at generated token {t} (NaN/inf weights, float16 overflow, too large a --lr)")
            yield step
            if step.token in stop_ids or last:
                return
            logits = next_logits
    finally:  # once, however the run ends (stop token, length, or the caller dropping the iterator)
        if ctrl is not None:
            info["dv_ratio"] = ctrl.ratio()
            turned = iter(ctrl.angles().tolist())  # the controller's rows are the last layer's kept video tokens
            info["angle_deg"] = [round(next(turned), 3) if k else None for k in kept[-1].tolist()]


# ----------------------------------------------------------------------------- CLI

class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (argparse prints the usage block too)
        raise UsageError(message)


def sync(model):  # before reading a timer: every GPU the model uses (it may be split across several)
    for d in model.devices():
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def reset_peak_memory(model):
    if any(d.type == "cuda" for d in model.devices()):
        for d in model.devices():
            torch.cuda.reset_peak_memory_stats(d)
    else:  # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so each run gets its own peak
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_memory_bytes(model):
    if any(d.type == "cuda" for d in model.devices()):  # summed over the GPUs a split model uses
        return sum(torch.cuda.max_memory_allocated(d) for d in model.devices())
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux reports KiB)


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
        hub = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
        snaps = os.path.join(hub, "models--" + name.replace("/", "--"), "snapshots")
        found = sorted(os.listdir(snaps)) if os.path.isdir(snaps) else []
        if found:
            return os.path.join(snaps, found[-1])
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


def has_weights(model_dir):
    try:
        return bool(M.weight_files(model_dir))
    except M.ModelError:
        return False


def add_args(p):
    """The flags vreason.py and eval.py share: model, decoding, V-Reason, video, runtime."""
    p.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct",
                   help="checkpoint directory or Hugging Face id: Qwen2.5-VL or Qwen3-VL (Instruct or Thinking)")
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
    g.add_argument("--prune-ratio", type=float, default=None, help="fraction of video tokens dropped (default 0.5 in lite, else 0)")
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
    inf, block, tiny = math.inf, V.FACTOR**2, MIN_DIVISOR
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
    rules += [(f"--{k}-pixels", v is None or v >= block, f"an integer >= {block}, one {V.FACTOR}x{V.FACTOR} block")
              for k, v in (("min", a.min_pixels), ("max", a.max_pixels), ("total", a.total_pixels))]
    for flag, ok, want in rules:
        if not ok:
            raise UsageError(f"argument {flag}: invalid value {getattr(a, flag[2:].replace('-', '_'))} (must be {want})")
    if a.min_pixels is not None and a.max_pixels is not None and a.min_pixels > a.max_pixels:
        raise UsageError(f"--min-pixels {a.min_pixels} is above --max-pixels {a.max_pixels}")
    check_runtime(a)


def check_runtime(a):
    """Device, dtype and placement flags that cannot work together."""
    if a.dtype == "float16":  # refused rather than run to a wrong answer
        raise UsageError("--dtype float16 is not supported: Qwen2/2.5 activations overflow in float16 (NaN or '!!!!' "
                         "output) and V-Reason's gradients underflow; use bfloat16 (the CUDA default) or float32")
    if a.device_map != "none" and a.device not in ("auto", "cuda"):
        raise UsageError(f"--device-map {a.device_map} splits the model over CUDA GPUs; it cannot run on --device {a.device}")


def parse_args(argv):
    p = Parser(description="V-Reason: inference-time entropy steering of Qwen2.5-VL video reasoning (arXiv 2510.17045)")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--q", required=True, help="question about the video")
    p.add_argument("--mode", default="baseline", choices=["baseline", "vreason", "lite"],
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
    if a.compare and a.mode == "baseline":
        raise UsageError("--compare runs the baseline next to --mode vreason or lite; pick one of those")
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
    """data into a temp file beside `real`, synced to disk, then then(tmp) (the rename); the temp file never stays."""
    tmp = f"{real}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
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
    """Turns tokens into text pieces as they arrive; holds back an incomplete UTF-8 sequence until it completes."""
    def __init__(self, tok):
        self.tok, self.ids, self.text = tok, [], ""

    def put(self, token):
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece


def extract_answer(text):
    m = re.search(r"<answer>(.*?)</answer>", text, re.S)
    return m.group(1).strip() if m else None


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
    reset_peak_memory(model)
    streamer, steps, pieces, info = Streamer(tok), [], [], {}
    t0 = time.perf_counter()
    for step in generate(model, prep, s, stop_ids, info):
        steps.append(step)
        pieces.append(streamer.put(step.token))
        write(pieces[-1])
    sync(model)
    total = time.perf_counter() - t0
    decode_s, opt_s = total - info["prefill_s"], sum(st.opt_s for st in steps)
    timings = {"prefill_s": info["prefill_s"], "decode_s": decode_s, "decode_tokens_per_s": len(steps) / max(decode_s, 1e-9),
               "optimization_s": opt_s, "optimization_share": opt_s / max(decode_s, 1e-9)}
    return Run(s.mode, steps, pieces, streamer.tok.decode(streamer.ids, skip_special_tokens=True), info, timings,
               peak_memory_bytes(model))


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
    m = V.get_family(video.family).merge
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
    family = skeleton.c.model_type  # the video's preprocessing and the prompt are the family's
    t0 = time.perf_counter()
    with Progress("reading video (2 passes)", "frames", quiet=a.quiet) as bar:
        video = V.load_video(a.video, family, fps=a.fps, nframes=a.nframes, max_frames=a.max_frames, min_pixels=a.min_pixels,
                             max_pixels=a.max_pixels, total_pixels=a.total_pixels, progress=bar)
    t_video = time.perf_counter() - t0
    tok = V.load_tokenizer(model_dir)
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
    stop_ids = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")} - {None}
    s = Settings.from_args(a)
    prep = prepare(model, tok, video, a.q, a.system, prompt=(ids, pos))  # the checks' prompt: built once
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
              "family": family, "thinking": model.thinking, "dtype": str(dtype).replace("torch.", ""), "device": str(dev),
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
