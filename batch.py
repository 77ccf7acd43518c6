"""Many samples decoded together, each exactly as vreason.generate decodes it alone: its own prompt length, its own
Lite-pruned cache rows, its own controller ΔV with its own Adam state, its own switching rule, its own stop. A
decode step reads every weight once for all of them (what makes a batch cheap: decoding is bound by the weights'
bytes), while everything V-Reason does stays per sample.

How: the samples sit in the slots of one model.Slots (every cache tensor with a leading slot dimension). A sample's
slot, as a Cache of its own (Slots.view), is prefilled, pruned and given its controller by vreason.start, unchanged.
A step then runs METHOD.md §4 for every slot at once: the entropies, one switching rule over all of them, the
update of the samples that are due (one recompute of the last layer for all slots, each due sample's video value
rows through its own controller; the losses summed, so one backward gives each ΔV its own gradient: nothing in that
layer mixes samples; losses, Adam steps and controlled rows each one op for all due samples, not one per sample),
the tokens, and one decode step for every slot (VideoLM.decode_slots, each at its own row).
As in vreason.generate, a step before an update stops short of the last layer's attention, whose forward with grad
then gives every slot's logits and the update's first Adam step at once, and a step's numbers travel to the host
while the next step is already queued. A finished sample's slot is refilled from the queue, so the batch stays full,
at a step that keeps the batch's updates together: a sample updating every k-th token is admitted at a step
divisible by k, so every update falls on the same steps (one update pass every k steps, not one every step). An
error in one sample (its video, its logits) ends that sample alone.
"""
import math
import time
from dataclasses import dataclass, field

import torch

import model as M
import vreason as R


@dataclass
class Sample:
    """One sample in a slot: what vreason.generate keeps in its locals, kept here across steps."""
    key: object  # the caller's name for it
    s: R.Settings
    cache: M.Cache  # its slot, as a Cache of its own (views of the Slots' tensors)
    ctrl: R.Controller  # None: nothing to steer
    kept: torch.Tensor  # which video tokens each K/V layer kept (vreason.start)
    info: dict
    gen: torch.Generator  # its own sampling draws
    seen: torch.Tensor  # every id so far, for the repetition penalty
    t0: float  # when it was admitted
    first: torch.Tensor  # its first token's logits [vocab], the prefill's (over the cache before Lite), until used
    steps: list = field(default_factory=list)

    def due(self, ahead=0):  # an update at its current token (or `ahead` of it): every k-th of its own tokens
        return R.update_due(self.s, self.ctrl, len(self.steps) + ahead)


@dataclass
class Batch:
    """The slots, the sample in each (None: free), and what a step reads of every slot."""
    slots: M.Slots
    live: list
    logits: torch.Tensor  # [B, vocab] fp32: each slot's current token's logits (None: the step's forward gives them)
    h_in: torch.Tensor  # [B, D]: their input to the last layer
    pos: torch.Tensor  # [3, B]: their positions
    nxt: torch.Tensor  # [B] int64: each slot's next text index (where its next token goes)
    switch: R.Switch = None  # one switching rule, elementwise over the slots
    steps: int = 0  # steps taken
    waiting: tuple = None  # the next sample, taken from the queue, waiting for its step (refill)
    side_by_side: tuple = None  # the due samples' v0 and norms side by side (controlled_rows), and whose they are

    @classmethod
    def empty(cls, model, n, max_len):
        c, dev, last = model.c, model.layer_devices()[0], model.layer_devices()[-1]
        return cls(model.new_slots(n, max_len), [None] * n, torch.zeros(n, c.vocab_size, device=model.lm_head.device),
                   torch.zeros(n, c.hidden_size, device=last, dtype=model.dtype), torch.zeros(3, n, dtype=torch.long, device=dev),
                   torch.zeros(n, dtype=torch.long, device=dev))


def generate_batch(model, samples, n_slots, max_len, stop_ids):
    """Decode samples, an iterable of (key, Prepared, Settings), n_slots at a time; max_len: the cache rows a slot
    has (at least the longest prompt + its max_new_tokens). A Prepared may instead be a string: why that sample could
    not be prepared (its video), recorded as its error. Yields (key, steps, info, error) as each sample ends, in the
    order they end: its vreason.Steps, its figures (as generate's `info`, plus latency_s from its admission to its
    end) and None, or the one-line reason it failed (the others go on)."""
    queue, batch = iter(samples), Batch.empty(model, n_slots, max_len)
    dev, slots = model.layer_devices()[0], batch.slots
    while True:
        yield from refill(model, batch, queue, max_len)
        live = [b for b, x in enumerate(batch.live) if x is not None]
        if not live:
            return
        # METHOD.md §4 steps 2-5 for every slot: entropy, the switching rule, the updates that are due, the tokens
        due, z = [b for b in live if batch.live[b].due()], None
        if due or batch.logits is None:  # the last layer with grad into the due ΔVs: every slot's logits, and the
            clock = R.Stopwatch(slots.k[-1].device)  # update's first forward
            z = last_forward(model, batch, due)
            batch.logits = z.detach().clone()
        for b in live:  # a sample's first token: the prefill's logits
            if batch.live[b].first is not None:
                batch.logits[b], batch.live[b].first = batch.live[b].first, None
        H = R.entropy(batch.logits)  # [B]
        alpha, H_before = batch.switch(H), H  # (the rule takes the entropy before any update)
        loss = torch.full_like(H, math.nan)
        if due:
            loss = update(model, batch, due, alpha, z)
            H = R.entropy(batch.logits)  # (the redecoded rows changed; the others give the same numbers again)
            clock.stop()
        tokens = choose_tokens(batch)
        read = R.to_host_later(torch.stack([tokens.double(), H, batch.switch.ema, batch.switch.peak, alpha, H_before, loss]))
        # step 6, the next decode step for every slot, queued before this step's numbers reach the host (a sample that
        # stops here costs one row computed and dropped; a free slot's row goes to its row 0)
        for b, x in enumerate(batch.live):
            if x is None:
                slots.lengths[b] = 0
            elif x.s.repetition_penalty != 1.0:
                x.seen = torch.cat([x.seen, tokens[b : b + 1].to(x.seen.device)])
        batch.pos, batch.nxt, batch.steps = model.text_position(batch.nxt, dev), batch.nxt + 1, batch.steps + 1
        finish = not any(x is not None and x.due(ahead=1) for x in batch.live)  # (an update next: its forward finishes)
        with torch.no_grad():
            logits, h_in = model.decode_slots(tokens.to(dev), batch.pos, slots, finish)
        numbers = read()  # 7 lists of B
        for b in live:
            x = batch.live[b]
            step = R.Step(int(numbers[0][b]), *(row[b] for row in numbers[1:5]))
            if b in due:
                step.updated, step.entropy_before, step.loss, step.opt_s = True, numbers[5][b], numbers[6][b], clock.seconds()
                x.info["updates"] += 1
            error = None if math.isfinite(step.entropy) else str(R.non_finite(len(x.steps)))
            if error is None:
                x.steps.append(step)
            if error or step.token in stop_ids or len(x.steps) == x.s.max_new_tokens:
                yield end(batch, b, error)
        batch.logits, batch.h_in = logits, h_in


def refill(model, batch, queue, max_len):
    """Admit samples from the queue, in order, into every free slot; a sample that updates every k-th token waits
    for a step divisible by k (at most k - 1 steps). Yields those that end before their first token."""
    for b in range(len(batch.live)):
        while batch.live[b] is None:
            batch.waiting = batch.waiting or next(queue, None)
            if batch.waiting is None:
                return
            key, prep, s = batch.waiting
            if not any(batch.live):
                batch.steps = 0  # an empty batch: this sample sets the phase
            if not isinstance(prep, str) and s.mode != "baseline" and s.steps > 0 and batch.steps % s.update_every:
                return  # its first token is due: it waits for the batch's update steps
            batch.waiting = None
            if isinstance(prep, str):  # it could not be prepared: its error
                yield key, [], {}, prep
            elif len(prep.ids) + s.max_new_tokens > max_len:
                yield key, [], {}, f"its prompt ({len(prep.ids)} tokens) and max_new_tokens exceed the {max_len} rows a slot has"
            elif batch.switch is not None and (s.beta, s.objective) != (batch.switch.beta, batch.switch.objective):
                yield key, [], {}, "the samples of a batch share beta and objective (one switching rule): run it in a batch of its own"
            else:
                try:
                    admit(model, batch, b, key, prep, s)
                except (M.ModelError, torch.cuda.OutOfMemoryError) as e:
                    batch.slots.lengths[b] = 0
                    yield key, [], {}, str(e).splitlines()[0]


def admit(model, batch, b, key, prep, s):
    """Sample `key` into slot b: vreason.start on the slot (prefill, Lite, the controller), then its slot's logits,
    last-layer input, position and switching rule."""
    t0, info = time.perf_counter(), {}
    batch.slots.lengths[b] = 0
    logits, h_in, cache, ctrl, kept = R.start(model, prep, s, info, cache=batch.slots.view(b))
    batch.slots.lengths[b] = cache.length
    batch.h_in[b], batch.pos[:, b] = h_in[0], prep.pos[:, -1]
    batch.nxt[b] = int(prep.pos.max()) + 1
    if batch.switch is None:
        batch.switch = R.Switch(s.beta, s.objective)
        batch.switch.restart((len(batch.live),), logits.device)
    batch.switch.restart(at=b)
    R.sync(model)
    info["prefill_s"] = time.perf_counter() - t0
    batch.live[b] = Sample(key, s, cache, ctrl, kept, info, torch.Generator().manual_seed(s.seed), prep.ids.clone(), t0,
                           logits)


def last_forward(model, batch, due):
    """The last layer for every slot at its current position over its own cache, the due samples' (slot indices)
    video value rows through their controllers (ΔV -> rows, differentiable: with grad when any is due), then the head
    -> logits [B, vocab]. A slot not due reads its cache's rows: its logits are its decode step's."""
    slots = batch.slots
    K, V = slots.k[-1], slots.v[-1]  # [B, Hkv, T, d]: the last layer keeps K/V (the contract: PORTING.md)
    edited = V
    if due:
        slot, row, rows = controlled_rows(batch, due)
        edited = V.clone()
        edited[slot, :, row] = rows.to(V.dtype)
    with torch.set_grad_enabled(bool(due)):
        return model.last_layer(batch.h_in, batch.pos, K, edited, model.slot_mask(slots, K.device))


def controlled_rows(batch, due):
    """The due samples' (slot indices) controller rows at once, each sample's Controller.rows() side by side along the
    rows (the map is row by row: every row stays its own controller's) -> the slot and the cache row of each [R], and
    the rows [R, Hkv, d] fp32, differentiable in each ΔV. Their v0 and norms are put side by side once per due set."""
    ctrls = [batch.live[b].ctrl for b in due]
    key = (tuple(due), tuple(ctrls))  # (the objects themselves: == is identity, and they stay alive while cached)
    if batch.side_by_side is None or batch.side_by_side[0] != key:
        n = torch.tensor([len(c.idx) for c in ctrls])
        slot = torch.repeat_interleave(torch.tensor(due), n).to(ctrls[0].idx.device)
        batch.side_by_side = (key, slot, torch.cat([c.idx for c in ctrls]), torch.cat([c.v0 for c in ctrls], 1),
                              torch.cat([c.v0_norm for c in ctrls], 1))
    _, slot, row, v0, v0_norm = batch.side_by_side  # [R], [R], [Hkv, R, d], [Hkv, R, 1]
    dv = torch.cat([c.dv.expand_as(c.v0) for c in ctrls], 1)  # (a shared controller's one row a head, to its rows)
    return slot, row, R.turned(v0, dv, v0_norm).transpose(0, 1)


def update(model, batch, due, alpha, z):
    """METHOD.md §4 steps 3-4 for the due samples (slot indices) at once, z: the step's last_forward (graph attached)
    for the first Adam step, a fresh one for each further step. The due samples' losses, summed, give each ΔV its own
    gradient in one backward (nothing in the last layer mixes slots); each takes its own Adam step, all in one
    multi-tensor step (vreason.adam; a sample that is not due is in no loss and is not stepped). Then the new rows
    into the cache and, where the settings say so, the redecode into batch.logits. Returns each slot's first loss [B] (NaN for a slot not due)."""
    live = batch.live
    first = torch.full(alpha.shape, math.nan, dtype=torch.float64, device=alpha.device)
    for i in range(max(live[b].s.steps for b in due)):
        now = [b for b in due if live[b].s.steps > i]
        z = z if i == 0 else last_forward(model, batch, now)
        losses = switching_losses(batch, now, alpha, z)
        losses.sum().backward()  # into each due ΔV, from its own loss only
        R.adam([live[b].ctrl for b in now])
        if i == 0:
            first[now] = losses.detach()[now]
    with torch.no_grad():  # the new rows into the cache (Controller.write, for all of them at once)
        slot, row, rows = controlled_rows(batch, due)
        batch.slots.v[-1][slot, :, row] = rows.to(batch.slots.v[-1].dtype)
    redo = [b for b in due if live[b].s.redecode]
    if redo:
        with torch.no_grad():
            batch.logits[redo] = last_forward(model, batch, [])[redo]
    return first


def switching_losses(batch, now, alpha, z):
    """Every slot's alpha * KL (METHOD.md §3) over z [B, vocab] at once, kept for the slots in `now` (indices) and
    exactly 0 elsewhere, with no gradient there (torch.where, not a product: a slot's NaN logits stay its own).
    One pass per KL direction the due samples use (nearly always one), not one per sample: a loss of z[b] alone
    would give each sample's backward a [B, vocab] zero gradient of its own. Returns [B] float64."""
    losses = torch.zeros_like(alpha)
    for kl in sorted({batch.live[b].s.kl for b in now}):
        mine = torch.zeros(alpha.shape, dtype=torch.bool)
        mine[[b for b in now if batch.live[b].s.kl == kl]] = True
        losses = torch.where(mine.to(alpha.device), alpha * R.kl_to_uniform(z, kl), losses)
    return losses


def choose_tokens(batch):
    """Every slot's token [B]: the argmax of all slots at once (greedy), and for a sample that samples or penalizes
    repeats, vreason.choose on its own row with its own generator."""
    tokens = batch.logits.argmax(-1)
    for b, x in enumerate(batch.live):
        if x is not None and (x.s.temperature != 0 or x.s.repetition_penalty != 1.0):
            tokens[b] = R.choose(batch.logits[b], x.s, x.seen, x.gen)[0]
    return tokens


def end(batch, b, error):
    x, batch.live[b] = batch.live[b], None
    batch.side_by_side = None  # (it may hold this sample's controller: let its memory go now, not at the next update)
    R.finish(x.info, x.ctrl, x.kept)
    x.info["latency_s"] = time.perf_counter() - x.t0
    return x.key, x.steps, x.info, error
