"""Many samples decoded together, each exactly as vreason.generate decodes it alone: its own prompt length, its own
Lite-pruned cache rows, its own controller ΔV with its own Adam state, its own switching rule, its own stop. A
decode step reads every weight once for all of them (what makes a batch cheap: decoding is bound by the weights'
bytes), while everything V-Reason does stays per sample.

How: the samples sit in slots of one model.Slots (every cache tensor with a leading slot dimension). A sample's
slot, as a Cache of its own (Slots.view), is prefilled, pruned and steered by vreason's own functions, unchanged;
a step then advances every slot by one token (VideoLM.decode_slots, each row at its own cache row) and runs the last
layer for all slots at once. A finished sample's slot is refilled from the queue, so the batch stays full. An error
in one sample (an unreadable video upstream, non-finite logits, a failing update) ends that sample alone.
"""
import math
from dataclasses import dataclass, field

import torch

import model as M
import vreason as R


@dataclass
class Sample:
    """One sample in a slot: what vreason.generate keeps in its locals, kept here across steps."""
    key: object  # the caller's name for it
    prep: R.Prepared
    s: R.Settings
    cache: M.Cache  # its slot, as a Cache of its own
    ctrl: R.Controller  # None: nothing to steer
    kept: torch.Tensor
    info: dict
    switch: R.Switch
    gen: torch.Generator
    seen: torch.Tensor
    logits: torch.Tensor  # the current token's [vocab]
    h_in: torch.Tensor  # its input to the last layer [1, D]
    pos: torch.Tensor  # its position [3, 1]
    steps: list = field(default_factory=list)


def admit(model, slots, b, key, prep, s):
    """Prefill sample `key` into slot b, prune it, make its controller: what vreason.start does, on the slot."""
    info = {}
    slots.lengths[b] = 0  # (a slot a sample has left is empty again)
    logits, h_in, cache, ctrl, kept = R.start(model, prep, s, info, cache=slots.view(b))
    slots.lengths[b] = cache.length
    return Sample(key, prep, s, cache, ctrl, kept, info, R.Switch(s.beta, s.objective),
                  torch.Generator().manual_seed(s.seed), prep.ids.clone(), logits, h_in, prep.pos[:, -1:])


def choose_token(model, x, stop_ids):
    """The current token of sample x, as vreason.generate_reference chooses it (METHOD.md §4 steps 2-5): entropy,
    the switching rule, on every k-th token the update and the redecode, then the token. -> its Step."""
    s, t = x.s, len(x.steps)
    H = R.entropy(x.logits)
    step = R.Step(0, float(H), 0.0, 0.0, 0.0)
    if x.ctrl is not None and s.steps > 0 and t % s.update_every == 0:
        alpha = x.switch(H)
        step.loss = float(x.ctrl.update(model, x.cache, x.h_in, x.pos, alpha))
        if s.redecode:
            with torch.no_grad():
                x.logits = x.ctrl.logits(model, x.cache, x.h_in, x.pos)
            step.entropy = float(R.entropy(x.logits))
        step.updated, step.entropy_before = True, float(H)
        x.info["updates"] += 1
    else:
        x.switch(H)
    step.ema, step.peak, step.alpha = float(x.switch.ema), float(x.switch.peak), float(x.switch.alpha)
    token = R.choose(x.logits, s, x.seen, x.gen)
    step.token = int(token)
    if not math.isfinite(step.entropy):
        raise M.ModelError(f"non-finite logits at generated token {t}")
    x.seen = torch.cat([x.seen, token.to(x.seen.device)])
    return step


def generate_batch(model, samples, n_slots, max_len, stop_ids):
    """Decode samples, an iterable of (key, Prepared, Settings), n_slots at a time; max_len: the cache rows a slot
    has (the longest prompt + max_new_tokens). Yields (key, steps, info, error) as each sample ends (error None, or
    the one-line reason that sample failed: the others go on), in the order they end."""
    queue = iter(samples)
    slots = M.Slots.empty(model.llm.layers, n_slots, max_len, model.dtype)
    live = [None] * n_slots
    dev = model.layer_devices()[0]
    more = True
    while True:
        for b in range(n_slots):  # refill every free slot from the queue
            while live[b] is None and more:
                key, prep, s = next(queue, (None, None, None))
                if prep is None:
                    more = False
                elif len(prep.ids) + s.max_new_tokens > max_len:
                    yield key, [], {}, f"the prompt ({len(prep.ids)} tokens) and --max-new-tokens exceed the {max_len} rows a slot has"
                else:
                    try:
                        live[b] = admit(model, slots, b, key, prep, s)
                    except (M.ModelError, RuntimeError, ValueError) as e:
                        yield key, [], {}, str(e).splitlines()[0]
        if not any(live):
            return
        tokens, pos = torch.zeros(n_slots, dtype=torch.long, device=dev), torch.zeros(3, n_slots, dtype=torch.long, device=dev)
        for b, x in enumerate(live):
            if x is None:
                continue
            try:
                step = choose_token(model, x, stop_ids)
            except (M.ModelError, RuntimeError, ValueError) as e:
                R.finish(x.info, x.ctrl, x.kept)
                yield x.key, x.steps, x.info, str(e).splitlines()[0]
                live[b] = None
                continue
            x.steps.append(step)
            if step.token in stop_ids or len(x.steps) == x.s.max_new_tokens:
                R.finish(x.info, x.ctrl, x.kept)
                yield x.key, x.steps, x.info, None
                live[b] = None
                continue
            x.pos = model.text_position(int(x.prep.pos.max()) + len(x.steps), dev)
            tokens[b], pos[:, b] = step.token, x.pos[:, 0]
        if not any(live):
            continue
        for b, x in enumerate(live):  # a free slot's row goes to its row 0, then is dropped
            if x is None:
                slots.lengths[b] = 0
        with torch.no_grad():
            h_in = model.decode_slots(tokens, pos, slots)
            last = next(i for i in reversed(range(len(slots.k))) if slots.k[i] is not None)
            logits = model.last_layer(h_in, pos, slots.k[last], slots.v[last], model.slot_mask(slots, dev))
        for b, x in enumerate(live):
            if x is not None:
                x.cache.length = slots.lengths[b]
                x.logits, x.h_in = logits[b], h_in[b : b + 1]
