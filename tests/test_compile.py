"""--compile: the decode step under torch.compile (default mode on CPU; CUDA graphs on a GPU are checked by
device_check.py) gives what the eager step gives, and compiles once per variant, never again."""
import pytest
import torch
from torch._dynamo.utils import counters

import model as M
import vreason as R
from test_vreason import FAMILIES, checkpoints, prepared  # noqa: F401  (fixture)

MODES = [dict(mode="vreason"), dict(mode="baseline"), dict(mode="lite", update_every=1)]  # V-Reason first: both variants


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def graphs():
    return counters["stats"]["unique_graphs"]


def run(model, prep, n=12, **kw):
    return [(st.token, st.entropy) for st in R.generate(model, prep, R.Settings(max_new_tokens=n, lr=0.1, **kw), set())]


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_decode_equals_eager_and_compiles_once(checkpoints, family):
    eager, comp = (M.load_model(checkpoints[family]) for _ in range(2))
    # inductor sums a hybrid's fp32 delta-rule step in another order: ~2e-5 apart (attention alone: within 1e-5)
    tol = 1e-5 if family != "qwen3_5" else 1e-4
    torch._dynamo.reset()  # a model compiled earlier in this process (same shapes) would lend this one its graphs
    comp.compile_decode()
    g0 = graphs()
    prep, other = prepared(eager, (2, 8, 12), 1.0)[0], prepared(eager, (2, 8, 8), 1.0, seed=1)[0]
    # one step at a time, from the same prefill: the logits agree
    caches = [m.new_cache(len(prep.ids) + 4) for m in (eager, comp)]
    with torch.no_grad():
        out = [m.prefill(prep.ids, prep.pos, prep.visual, c) for m, c in zip((eager, comp), caches)]
        tok = out[0][0].argmax()[None]
        for t in range(3):
            pos = eager.text_position(int(prep.pos.max()) + 1 + t, "cpu")
            (a, ha), (b, hb) = (m.decode(tok, pos, c) for m, c in zip((eager, comp), caches))
            assert rel(a, b) <= tol and rel(ha, hb) <= tol
            tok = a.argmax()[None]
    # whole runs: same tokens, same entropies; the count of compiled graphs stops growing after the first decode steps
    seen = []
    for kw in MODES:
        steps = R.generate(comp, prep, R.Settings(max_new_tokens=12, lr=0.1, **kw), set())
        mine = []
        for st in steps:
            mine.append((st.token, st.entropy))
            seen.append(graphs())
        ref = run(eager, prep, **kw)
        assert [t for t, _ in mine] == [t for t, _ in ref], kw
        assert max(abs(a - b) for (_, a), (_, b) in zip(mine, ref)) <= tol * max(1.0, abs(ref[0][1])), kw
    before = graphs()
    a, b = run(comp, other, mode="vreason"), run(eager, other, mode="vreason")  # another prompt, another length
    assert [t for t, _ in a] == [t for t, _ in b] and graphs() == before
    # step: a plain one and the one that stops before the last layer's attention (a V-Reason update); last_layer: with
    # grad (the update) and without (the redecode), each for any length; all compiled by the second step, then none
    assert len(set(seen[2:])) == 1 and graphs() - g0 == 4, seen


def test_a_cache_grown_for_a_longer_prompt_recompiles_once(ckpt):
    """A compiled model keeps one cache and grows it (by 512 rows) when a prompt needs more: the step compiles again,
    then for any length (dynamic), so an eval over videos of many lengths compiles twice, not once per length."""
    eager, comp = (M.load_model(ckpt) for _ in range(2))
    torch._dynamo.reset()
    comp.compile_decode()
    counts = []
    for grid in ((2, 8, 12), (2, 40, 28), (2, 60, 40)):  # 76, 588, 1228 prompt rows
        prep = prepared(eager, grid, 1.0)[0]
        assert [t for t, _ in run(comp, prep, n=6, mode="vreason")] == [t for t, _ in run(eager, prep, n=6, mode="vreason")]
        counts.append(graphs())
    assert counts[1] - counts[0] == 2 and counts[2] == counts[1], counts  # the two step variants, once more
