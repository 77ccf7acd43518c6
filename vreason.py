"""V-Reason ("Video Reasoning without Training", arXiv 2510.17045): the method, as METHOD.md states it.

    python vreason.py --video clip.mp4 --q "What happens after the ball is thrown?"    (the command line: cli.py)

Read in this order: Settings, the controller ΔV (Controller), the Entropy Switching Loss (kl_to_uniform) and its
switching rule (Switch), V-Reason Lite (prune), then the two decode loops: generate_reference, METHOD.md §4 written
out one step after another, and generate, the same arithmetic arranged so that the device never waits (the one the
CLI and eval.py run). Tests hold the two equal. The method reaches a model only through the contract named in
model.VideoLM, so every family (and a port of yours, PORTING.md) runs it unchanged.
"""
import math
import sys
import time
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

import model as M


MODES = ("baseline", "vreason", "lite")  # lite: V-Reason on a KV cache pruned to the video rows with the largest values


@dataclass
class Settings:
    mode: str = "baseline"  # one of MODES
    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0 = greedy (plain argmax)
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # HF semantics when != 1: over every id so far, prompt included
    seed: int = 0
    # V-Reason: what the paper leaves open is a setting, its default ours (METHOD.md §6)
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
    def from_args(cls, a, **override):  # from parsed command-line flags (cli.py, eval.py), then the overrides
        return cls(**{**{f.name: getattr(a, f.name) for f in fields(cls) if hasattr(a, f.name)}, **override})


# ----------------------------------------------------------------------------- the method (METHOD.md §2-§5)

class Controller:
    """ΔV (METHOD.md §2): a float32 offset on the last decoder layer's value rows at video positions, nothing else.
    It only turns each value vector, never rescales it: v = (v0 + dv) / ||v0 + dv|| * ||v0||. Zero init, so the
    model is untouched until the first update. Why the last layer: its values feed nothing else that is cached, so
    the gradient for the current token needs just that layer recomputed at one position (input detached)."""

    def __init__(self, cache, rows, s):  # rows [Nv] int64: the cache rows of the video tokens in the last layer
        self.idx, self.s = rows.to(cache.v[-1].device), s
        values = cache.v[-1][:, self.idx]
        self.v0 = values.to(torch.promote_types(values.dtype, torch.float32)).clone()  # [Hkv, Nv, d], fp32 at least
        self.v0_norm = self.v0.norm(dim=-1, keepdim=True)  # [Hkv, Nv, 1]
        shape = self.v0.shape if s.controller == "per-token" else (self.v0.shape[0], 1, self.v0.shape[2])
        self.dv = torch.zeros(shape, device=self.v0.device, dtype=self.v0.dtype, requires_grad=True)
        self.m, self.m2, self.n = torch.zeros_like(self.dv), torch.zeros_like(self.dv), 0  # Adam's moments and step count

    def rows(self):  # [Hkv, Nv, d] fp32, differentiable in dv
        return turned(self.v0, self.dv, self.v0_norm)

    def logits(self, model, cache, h_in, pos):
        """Last layer at the current position, its video value rows = rows(); then final norm + LM head."""
        K, V = cache.k[-1][:, : cache.length], cache.v[-1][:, : cache.length]
        return model.last_layer(h_in, pos, K, V.index_copy(1, self.idx, self.rows().to(V.dtype)))

    def update(self, model, cache, h_in, pos, alpha, logits=None):
        """`steps` Adam steps on the switching loss, then write the new rows into the cache. Returns the first loss (on
        the device: nothing here waits for it). `logits`, if given, is this step's own forward through self.logits
        (graph attached): the first step reuses it."""
        for i in range(self.s.steps):
            z = logits if i == 0 and logits is not None else self.logits(model, cache, h_in, pos)
            loss = alpha * kl_to_uniform(z, self.s.kl)
            loss.backward()  # into dv only: weights are frozen, h_in and the cache carry no graph
            adam([self])
            if i == 0:
                first = loss.detach()
        self.write(cache)
        return first

    def write(self, cache):  # the current rows into the cache's last layer, where decoding reads them
        with torch.no_grad():
            cache.v[-1][:, self.idx] = self.rows().to(cache.v[-1].dtype)

    def ratio(self):  # ||V - V0|| / ||V0|| over the controlled rows
        with torch.no_grad():
            return float((self.rows() - self.v0).norm() / self.v0.norm().clamp_min(1e-12))

    def angles(self):  # degrees each value row has turned from v0, mean over kv heads -> [Nv]
        with torch.no_grad():
            return torch.rad2deg(torch.acos(F.cosine_similarity(self.rows(), self.v0, dim=-1).clamp(-1, 1))).mean(0)


def turned(v0, dv, v0_norm):  # v0 + dv turned back to v0's norm, row by row (each row: its last dim)
    x = v0 + dv
    return x / (x.norm(dim=-1, keepdim=True) + 1e-6) * v0_norm


def adam(ctrls, b1=0.9, b2=0.999, eps=1e-8):
    """One step of torch.optim.Adam (default betas and eps) on each controller's ΔV, its arithmetic written out: the
    same numbers (a test compares), without importing torch.optim, which pulls in torch._dynamo (its start-up cost:
    docs/performance.md#adam). Each line is one multi-tensor op over all the controllers, as torch.optim's foreach
    path does it: batch.py steps the controllers of every due sample at once, each with its own step count."""
    dv, g, m, m2 = [c.dv for c in ctrls], [c.dv.grad for c in ctrls], [c.m for c in ctrls], [c.m2 for c in ctrls]
    for c in ctrls:
        c.n += 1
    torch._foreach_lerp_(m, g, 1 - b1)
    torch._foreach_mul_(m2, b2)
    torch._foreach_addcmul_(m2, g, g, value=1 - b2)
    denom = torch._foreach_sqrt(m2)
    torch._foreach_div_(denom, [(1 - b2**c.n) ** 0.5 for c in ctrls])
    torch._foreach_add_(denom, eps)
    with torch.no_grad():
        torch._foreach_addcdiv_(dv, m, denom, [-c.s.lr / (1 - b1**c.n) for c in ctrls])
    for c in ctrls:
        c.dv.grad = None


def kl_to_uniform(logits, direction):
    """The Entropy Switching Loss without its sign (METHOD.md §3). KL(p||U) = log|V| - H(p) (default);
    KL(U||p) = -log|V| - mean(log p) (note: F.kl_div(log_p, U) computes this second one)."""
    logp = torch.log_softmax(logits, -1)  # (over the last dim: [B, V] logits give B losses)
    if direction == "pu":
        return math.log(logp.shape[-1]) + (logp.exp() * logp).sum(-1)
    return -math.log(logp.shape[-1]) - logp.mean(-1)


def entropy(logits):  # [V] (or [B, V]) fp32 / fp64 logits from model.logits -> nats ([B]), full vocabulary, T = 1
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


class Switch:
    """The switching rule (METHOD.md §3): an EMA of the entropy and its running peak. alpha = +1 (raise entropy:
    explore) while the EMA sits at its running peak, -1 (lower it: exploit) as soon as it dips below; after the
    global peak it stays -1. `minimize` / `maximize` are the paper's fixed-sign ablations. Elementwise: batch.py runs
    one rule over the entropies of B samples, a NaN EMA (restart) marking a sample at its first token."""

    def __init__(self, beta, objective):
        self.beta, self.objective, self.ema, self.peak, self.alpha = beta, objective, None, None, None

    def __call__(self, H):
        """Entropy of the current token -> alpha. All float64 tensors where H is (the host's arithmetic, on the device:
        the decode loop reads them a step later, so the device never waits for the rule)."""
        H = torch.as_tensor(H, dtype=torch.float64)
        if self.ema is None:
            self.restart(H.shape, H.device)
        self.ema = torch.where(self.ema.isnan(), H, self.beta * self.ema + (1 - self.beta) * H)  # the first: H itself
        self.peak = torch.fmax(self.peak, self.ema)  # (fmax: a NaN peak, a first token's, takes the EMA)
        explore = (self.ema >= self.peak).double()  # 1 at the running peak, 0 below it
        self.alpha = {"switch": 2 * explore - 1, "minimize": -torch.ones_like(H), "maximize": torch.ones_like(H)}[self.objective]
        return self.alpha

    def restart(self, shape=(), device=None, at=None):  # a fresh rule (of this shape), or a fresh sample at index `at`
        if at is None:
            self.ema = self.peak = torch.full(shape, math.nan, dtype=torch.float64, device=device)
        else:
            self.ema[at], self.peak[at] = math.nan, math.nan


def prune(cache, rows, ratio, policy):
    """V-Reason Lite (METHOD.md §5): in each layer that keeps K/V rows (cache.kv_layers: every layer but a hybrid's
    linear-attention ones, whose fixed state has no rows to drop), drop the floor(ratio * N) video rows whose value
    vectors have the smallest norm (mean over kv heads of the L2 norm), K and V alike, and close the gaps, keeping
    every other row in order; text rows (Qwen3-VL's timestamps between frame groups included) are never dropped. Keys
    carry their rotary phase, so the compacted cache stays valid. rows [N]: the video rows (ascending, the same in
    every layer after prefill). Returns the last layer's new video rows [N - dropped] (the controller's) and which
    video tokens each of those layers kept [len(cache.kv_layers), N] bool."""
    n, T, lo = len(rows), cache.length, int(rows[0])
    keep = n - math.floor(ratio * n)
    score = lambda values: values[:, rows.to(values.device)].float().norm(dim=-1).mean(0)  # [N]
    last = score(cache.v[-1]) if policy == "last-layer" else None
    kept = []
    for i in cache.kv_layers:
        K, V = cache.k[i], cache.v[i]
        sc = last.to(V.device) if last is not None else score(V)
        is_kept = torch.zeros(n, dtype=torch.bool, device=V.device).index_fill_(0, sc.topk(keep).indices, True)
        alive = torch.ones(T, dtype=torch.bool, device=V.device)
        alive[rows.to(V.device)] = is_kept
        src = alive[lo:].nonzero().flatten() + lo  # rows before the first video row stay where they are
        for X in (K, V):
            X[:, lo : lo + len(src)] = X[:, src]
        kept.append(is_kept.cpu())
        new_rows = (alive.cumsum(0) - 1)[rows.to(V.device)][is_kept]  # where this layer's kept video rows went
    cache.length = T - (n - keep)
    return new_rows, torch.stack(kept)


def video_rows(model, ids):  # the contract's spans -> one index tensor of cache rows (empty for a text-only prompt)
    spans = model.video_spans(ids)
    return torch.cat([torch.arange(lo, hi) for lo, hi in spans]) if spans else torch.zeros(0, dtype=torch.long)


# ----------------------------------------------------------------------------- the decode loops (METHOD.md §4)

@dataclass
class Prepared:
    """One sample after vision encoding: everything decoding needs, shareable between modes."""
    ids: torch.Tensor  # [S] prompt ids
    pos: torch.Tensor  # [3, S] M-RoPE positions
    visual: M.Visual  # vision features (None for a text-only prompt)
    video: object  # the video.Video it came from
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
    probs = probs.cpu()  # (a CPU generator: the same draw anywhere)
    if not torch.isfinite(probs).all():  # non-finite logits: nothing to draw from; the loop stops on their entropy
        return logits.argmax()[None]
    return torch.multinomial(probs, 1, generator=gen).to(logits.device)


def update_due(s, ctrl, t):  # an update at generated token t (METHOD.md §4 step 3): every k-th, if anything is steered
    return ctrl is not None and s.steps > 0 and t % s.update_every == 0


def non_finite(t):  # how every loop stops a sample whose logits are NaN / inf, rather than emit garbage and write NaN
    return M.ModelError(f"non-finite logits at generated token {t} (NaN/inf weights, float16 overflow, too large a --lr)")


def start(model, prep, s, info, cache=None):
    """What the loops do before the first token: prefill a fresh cache (or `cache`, a slot of many: batch.py), prune
    it (Lite), make the controller. Returns the prefill's logits and last-layer input, the cache, the controller (None
    when nothing is steered) and which video tokens each K/V layer kept [len(cache.kv_layers), N]; `info` receives
    the cache's figures."""
    cache = model.new_cache(len(prep.ids) + s.max_new_tokens) if cache is None else cache
    with torch.no_grad():
        logits, h_in = model.prefill(prep.ids, prep.pos, prep.visual, cache)
    rows = video_rows(model, prep.ids)
    info.update(kv_bytes_before=cache.nbytes(), video_tokens=len(rows))
    kept = torch.ones(1, len(rows), dtype=torch.bool)
    if s.prune_ratio > 0 and len(rows):
        rows, kept = prune(cache, rows, s.prune_ratio, s.prune_policy)
        # compact, for --json / --plot: the last layer's choice as a 0/1 string, and how many layers kept each token
        info.update(kept_last_layer="".join("01"[k] for k in kept[-1].int().tolist()), layers_kept=kept.sum(0).tolist(),
                    n_layers=len(kept))
    info.update(kv_bytes_after=cache.nbytes(), video_tokens_kept=len(rows), updates=0)
    ctrl = Controller(cache, rows, s) if s.mode in ("vreason", "lite") and len(rows) else None  # no video: nothing to steer
    return logits, h_in, cache, ctrl, kept


def finish(info, ctrl, kept):  # the controller's figures, for --json / --plot
    if ctrl is not None:
        info["dv_ratio"] = ctrl.ratio()
        turned = iter(ctrl.angles().tolist())  # the controller's rows are the last layer's kept video tokens
        info["angle_deg"] = [round(next(turned), 3) if k else None for k in kept[-1].tolist()]


def generate_reference(model, prep, s, stop_ids, info=None):
    """METHOD.md §4 read literally, one step after another, for reading and for tests: at every token, the logits ->
    entropy, EMA, peak (host floats) -> on every k-th token `steps` Adam steps (torch.optim.Adam), each on a fresh
    recompute of the last layer through the controller's rows, then the rows written back and the logits redecoded ->
    choose the token -> one decode step. `generate` below must give the same tokens, entropies and alphas."""
    import torch.optim  # here: it pulls in torch._dynamo, which the fast loop never needs

    info = {} if info is None else info
    gen = torch.Generator().manual_seed(s.seed)
    logits, h_in, cache, ctrl, kept = start(model, prep, s, info)
    opt = torch.optim.Adam([ctrl.dv], lr=s.lr) if ctrl is not None else None
    pos, nxt, seen = prep.pos[:, -1:], int(prep.pos.max()) + 1, prep.ids.clone()
    ema = peak = None
    try:
        for t in range(s.max_new_tokens):
            H = float(entropy(logits))  # 2. entropy, EMA and running peak of this token's logits
            ema = H if ema is None else s.beta * ema + (1 - s.beta) * H
            peak = ema if peak is None else max(peak, ema)
            alpha = {"switch": -1.0 if ema < peak else 1.0, "minimize": -1.0, "maximize": 1.0}[s.objective]
            step = Step(0, H, ema, peak, alpha)
            if ctrl is not None and s.steps > 0 and t % s.update_every == 0:  # 3. the update
                for i in range(s.steps):
                    opt.zero_grad()
                    loss = alpha * kl_to_uniform(ctrl.logits(model, cache, h_in, pos), s.kl)
                    loss.backward()
                    opt.step()
                    if i == 0:
                        step.loss = float(loss.detach())
                ctrl.write(cache)
                if s.redecode:  # 4. the redecode
                    with torch.no_grad():
                        logits = ctrl.logits(model, cache, h_in, pos)
                step.updated, step.entropy_before, step.entropy = True, H, float(entropy(logits))
                info["updates"] += 1
            token = choose(logits, s, seen, gen)  # 5. the token
            step.token = int(token)
            if not math.isfinite(step.entropy):
                raise non_finite(t)
            yield step
            if step.token in stop_ids:  # 6. stop, or feed the token
                return
            seen = torch.cat([seen, token.to(seen.device)])
            pos = model.text_position(nxt + t, prep.ids.device)
            with torch.no_grad():
                logits, h_in = model.decode(seen[-1:], pos, cache)
    finally:
        finish(info, ctrl, kept)


def generate(model, prep, s, stop_ids, info=None):
    """Decode one sample (batch 1), yielding a Step per token (the stop token included when produced): the arithmetic
    of generate_reference, arranged for speed. (1) The decode step before an update stops short of the last layer's
    attention (decode(finish=False)): that layer is then run through the controller's rows with grad, and this one
    forward gives both the token's logits and the update's first Adam step. (2) Adam is Controller.adam. (3) The
    switching rule runs on the device, and each token's numbers are copied to the host while the next step is already
    queued, so the device never waits for the host. `info` (a dict, optional) receives the run's figures (KV bytes,
    video tokens kept, ΔV/V)."""
    info = {} if info is None else info
    dev = prep.ids.device
    gen = torch.Generator().manual_seed(s.seed)
    t0 = time.perf_counter()
    logits, h_in, cache, ctrl, kept = start(model, prep, s, info)
    sync(model)
    info["prefill_s"] = time.perf_counter() - t0
    pos = prep.pos[:, -1:].clone()  # position of the row whose logits we hold; explicit, never the cache length
    nxt = int(prep.pos.max()) + 1
    seen, switch = prep.ids.clone(), Switch(s.beta, s.objective)
    due = lambda t: update_due(s, ctrl, t)
    try:
        for t in range(s.max_new_tokens):
            H = entropy(logits.detach())
            if due(t):  # METHOD.md §4 steps 3-4: the switching rule on this entropy, an update of ΔV, a redecode
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
                pos = model.text_position(nxt + t, dev)
                with torch.no_grad():
                    next_logits, h_in = model.decode(seen[-1:], pos, cache, finish=not due(t + 1))
                if next_logits is None:  # an update is due: its first forward (the last layer through the controller's
                    next_logits = ctrl.logits(model, cache, h_in, pos)  # rows, with grad) gives that step's logits too
            token_f, *floats = read()
            step = Step(int(token_f), *floats[:4])
            if due(t):
                step.updated, step.entropy_before, step.loss, step.opt_s = True, *floats[4:], clock.seconds()
            if not math.isfinite(step.entropy):  # stop rather than emit garbage and write NaN
                raise non_finite(t)
            yield step
            if step.token in stop_ids or last:
                return
            logits = next_logits
    finally:  # once, however the run ends (stop token, length, or the caller dropping the iterator)
        finish(info, ctrl, kept)


def sync(model):
    """Before reading a timer: the work this thread queued on every GPU the model uses (it may be split across
    several), i.e. each one's current stream; not another thread's (eval.py's loader encodes on a stream of its own)."""
    for d in model.devices():
        if d.type == "cuda":
            torch.cuda.current_stream(d).synchronize()


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


if __name__ == "__main__":  # the command line lives in cli.py
    import cli

    sys.exit(cli.main())
