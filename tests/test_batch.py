"""batch.generate_batch: many samples decoded together, each equal to its own vreason.generate run (tokens, and
entropies / EMA / alpha to 1e-5), whatever its prompt length, mode, stop and slot; one failing sample leaves the
others bitwise unchanged; the order of the samples changes no result. On all three families."""
import pytest
import torch
from test_vreason import FAMILIES, checkpoints, prepared  # noqa: F401  (fixture)

import batch as B
import model as M
import vreason as R

STOP = set()  # (random checkpoints: stops come from each sample's max_new_tokens, all different)
GRIDS = [(2, 8, 12), (2, 12, 20), (2, 8, 8), (2, 12, 12), (2, 8, 16), (2, 8, 12)]  # prompts of different lengths
MODES = [dict(mode="baseline"), dict(mode="vreason", lr=0.3), dict(mode="vreason", lr=0.3, update_every=1, steps=2),
         dict(mode="lite", lr=0.3, update_every=3), dict(mode="vreason", lr=0.3, kl="up", controller="shared"),
         dict(mode="vreason", lr=0.3, temperature=0.8, top_p=0.9, repetition_penalty=1.3, seed=5)]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, checkpoints):
    return M.load_model(checkpoints[request.param])


def samples(model):  # six samples: each its own grid, mode and length (stops at different steps)
    return [(i, prepared(model, GRIDS[i], 1.0, seed=i)[0], R.Settings(max_new_tokens=6 + 3 * i, **MODES[i]))
            for i in range(len(GRIDS))]


def alone(model, prep, s):
    info = {}
    return list(R.generate(model, prep, s, STOP, info)), info


def run(model, todo, n_slots=2):
    max_len = max(len(p.ids) + s.max_new_tokens for _, p, s in todo if not isinstance(p, str))
    return {key: (steps, info, err) for key, steps, info, err in B.generate_batch(model, todo, n_slots, max_len, STOP)}


def numbers(steps):
    return [(st.token, st.entropy, st.ema, st.alpha, st.updated) for st in steps]


def test_each_sample_equals_its_own_run(tiny):
    """Six samples through two slots, and through four: refills, different prompt lengths, modes (per-token and shared
    controllers, both KL directions, updating together), sampling and stops."""
    todo = samples(tiny)
    refs = {i: alone(tiny, prep, s) for i, prep, s in todo}
    for n_slots in (2, 4):
        out = run(tiny, todo, n_slots)
        assert set(out) == set(refs)
        same_as_alone(todo, out, refs)
    assert any(st.updated for st in out[1][0]) and out[3][1]["video_tokens_kept"] < out[3][1]["video_tokens"]


def same_as_alone(todo, out, refs):
    for i, prep, s in todo:
        steps, info, err = out[i]
        ref, ref_info = refs[i]
        assert err is None and len(steps) == len(ref) == s.max_new_tokens
        assert [st.token for st in steps] == [st.token for st in ref], i
        assert [(st.alpha, st.updated) for st in steps] == [(st.alpha, st.updated) for st in ref], i
        for name in ("entropy", "ema", "peak"):
            assert all(abs(getattr(a, name) - getattr(b, name)) <= 1e-5 * max(1.0, abs(getattr(b, name)))
                       for a, b in zip(steps, ref)), (i, name)
        assert info["updates"] == ref_info["updates"] and info["video_tokens_kept"] == ref_info["video_tokens_kept"]


def test_a_failing_sample_leaves_the_others_unchanged(tiny):
    """Sample 2's vision features are NaN: it ends with its error at its first token; sample 4's video could not be
    read; every other sample's numbers are bitwise what they are without them in the batch; and the order of the
    samples changes no result."""
    todo = samples(tiny)
    clean = run(tiny, [x for x in todo if x[0] not in (2, 4)])
    bad = prepared(tiny, GRIDS[2], 1.0, seed=2)[0]
    bad.visual = M.Visual(torch.full_like(bad.visual.embeds, float("nan")), bad.visual.deepstack)
    poisoned = run(tiny, [(2, bad, s) if i == 2 else (4, "video not found", s) if i == 4 else (i, p, s) for i, p, s in todo])
    assert poisoned[2][2].startswith("non-finite logits at generated token 0") and poisoned[2][0] == []
    assert poisoned[4] == ([], {}, "video not found")
    for i in clean:
        assert poisoned[i][2] is None and numbers(poisoned[i][0]) == numbers(clean[i][0]), i
    backwards = run(tiny, list(reversed([x for x in todo if x[0] not in (2, 4)])))
    assert all(numbers(backwards[i][0]) == numbers(clean[i][0]) for i in clean)


def test_compiled_batch_equals_eager_and_compiles_once(checkpoints):
    """--compile covers the batched step (VideoLM.step_slots: static shapes, the slots' whole rows under a mask) and
    the batched update's last layer: compiled = eager (tokens; entropies to the compiled tolerance of test_compile),
    and the graphs are all made by the first run: a second run, the samples in another order (other slots, other
    update patterns), adds none. On the hybrid, which steps both kinds of state."""
    from torch._dynamo.utils import counters

    eager, comp = (M.load_model(checkpoints["qwen3_5"]) for _ in range(2))
    torch._dynamo.reset()
    comp.compile_decode()
    todo = samples(eager)[:4]
    max_len = max(len(p.ids) + s.max_new_tokens for _, p, s in todo)
    go = lambda m, xs: {k: st for k, st, _, _ in B.generate_batch(m, xs, 2, max_len, STOP)}
    g0 = counters["stats"]["unique_graphs"]
    ref, mine = go(eager, todo), go(comp, todo)
    made = counters["stats"]["unique_graphs"]
    again = go(comp, list(reversed(todo)))
    # four graphs: the step, whole and stopping before the last layer's attention (an update next), and the last
    # layer with grad (the update) and without (the redecode); then none
    assert made - g0 == 4 and counters["stats"]["unique_graphs"] == made
    for i, _, _ in todo:
        assert [st.token for st in mine[i]] == [st.token for st in ref[i]] == [st.token for st in again[i]], i
        assert max(abs(a.entropy - b.entropy) for a, b in zip(mine[i], ref[i])) <= 1e-4 * max(1.0, abs(ref[i][0].entropy))
