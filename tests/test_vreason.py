"""The V-Reason method: controller, switching rule, online optimization, Lite pruning, and its CLI outputs. The
method's property tests run on both families (Qwen2.5-VL: one video span; Qwen3-VL: one span per frame group with
timestamp text between them, and DeepStack in prefill) through the model contract alone."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ENDOFTEXT, IM_END, ROOT
from test_cli import SMALL, clip, model_dir  # noqa: F401  (fixtures)
from test_model import prompt

import cli as C
import model as M
import video as V
import vreason as R

STOP = {IM_END, ENDOFTEXT}
FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5"]


@pytest.fixture(scope="session")
def checkpoints(ckpt, qwen3, qwen35):  # each family's tiny checkpoint, written by its own oracle
    return {"qwen2_5_vl": ckpt, "qwen3_vl": qwen3["dir"]["untied"], "qwen3_5": qwen35["dir"]["untied"]}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, checkpoints):
    return M.load_model(checkpoints[request.param])


def prepared(model, grid, spg, seed=0):
    """A chat-shaped prompt around one video, laid out as the model's family lays it out (its cases module), with
    the family's own positions for it: (Prepared, ids, pixels)."""
    import qwen35_cases
    import qwen3_cases
    import test_model

    cases = {"qwen2_5_vl": (lambda g, s: test_model.prompt(g[0] * g[1] * g[2] // 4, seed=s), test_model.pixels),
             "qwen3_vl": (qwen3_cases.prompt, qwen3_cases.pixels), "qwen3_5": (qwen35_cases.prompt, qwen35_cases.pixels)}
    prompt, pixels = cases[model.c.model_type]
    ids, px = prompt(grid, seed), pixels(grid, seed)
    video = V.Video(px, grid, spg, {}, family=model.family)
    with torch.no_grad():
        visual = model.encode_video(video)
    return R.Prepared(torch.tensor(ids), model.positions(ids, video), visual, video, 0.0), ids, px


def tokens(model, prep, **kw):
    return [(st.token, st.entropy) for st in R.generate(model, prep, R.Settings(max_new_tokens=24, **kw), STOP)]


def prefilled(model, prep, decode=2):
    """Cache after prefill and `decode` greedy steps. Returns the cache, the current row's input to the last layer,
    its position and the tokens fed."""
    cache = model.new_cache(len(prep.ids) + decode + 1)
    fed = []
    with torch.no_grad():
        logits, h_in = model.prefill(prep.ids, prep.pos, prep.visual, cache)
        pos = prep.pos[:, -1:]
        for t in range(decode):
            pos = model.text_position(int(prep.pos.max()) + 1 + t, "cpu")
            fed.append(int(logits.argmax()))
            logits, h_in = model.decode(torch.tensor(fed[-1:]), pos, cache)
    return cache, h_in, pos, fed


def full_forward(model, prep, fed, masks=None, last_values=None):
    """Logits [S, vocab] of a forward over the whole sequence (the prompt, then the tokens fed), no cache: each
    attention layer under its own boolean mask [S, S] (masks: {layer: mask}; else causal) and, with last_values, the
    last layer's values v [Hkv, S, d] replaced by last_values(v); a linear-attention layer over every row, from an
    empty state; DeepStack on the prompt's video rows, as in prefill."""
    ids = torch.cat([prep.ids, torch.tensor(fed, dtype=torch.long)])
    nxt = int(prep.pos.max()) + 1
    pos = torch.cat([prep.pos] + [model.text_position(nxt + t, "cpu") for t in range(len(fed))], 1)
    S, last = len(ids), model.c.n_layers - 1
    h = model.embed(ids, prep.visual)
    cos, sin = model.rope(pos, h.dtype)
    for i, layer in enumerate(model.llm.layers):
        if not layer.holds_kv:
            h = layer(h, layer.new_state(h.dtype), prefill=True)
        else:
            q, k, v = layer.project(h, cos[None], sin[None])
            if i == last and last_values is not None:
                v = last_values(v)
            mask = (masks or {}).get(i, torch.ones(S, S).tril().bool())
            h = layer.finish(h, q, k, v, mask)
        if prep.visual is not None and i < len(prep.visual.deepstack):
            rows = ids == model.c.video_token_id
            h = h.index_put((rows,), h[rows] + prep.visual.deepstack[i].to(h.dtype))
    return model.logits(h)


# ----------------------------------------------------------------------------- reductions to the baseline

def test_lr0_and_steps0_reproduce_baseline(tiny):
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    base = tokens(tiny, prep)
    assert [t for t, _ in tokens(tiny, prep, mode="vreason", lr=0.0)] == [t for t, _ in base]
    assert tokens(tiny, prep, mode="vreason", steps=0) == base
    assert tokens(tiny, prep, mode="lite", prune_ratio=0.0, steps=0) == base
    assert [t for t, _ in tokens(tiny, prep, mode="lite", prune_ratio=0.0, lr=0.0)] == [t for t, _ in base]


def test_lite_ratio0_is_vreason(tiny):
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    assert tokens(tiny, prep, mode="lite", prune_ratio=0.0) == tokens(tiny, prep, mode="vreason")


def test_text_only_prompt_runs_as_baseline(tiny):
    """No video rows: nothing to steer or prune, so every mode decodes like the baseline."""
    ids = prompt(0)
    prep = R.Prepared(torch.tensor(ids), torch.arange(len(ids)).expand(3, -1), None, None, 0.0)
    base = tokens(tiny, prep)
    assert tokens(tiny, prep, mode="vreason") == tokens(tiny, prep, mode="lite") == base


def test_vreason_changes_the_run(tiny):
    """A real update must move something: with a large lr the entropies (and here the tokens) differ from baseline."""
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    base, vr = tokens(tiny, prep), tokens(tiny, prep, mode="vreason", lr=0.5, objective="minimize", update_every=1)
    assert max(abs(a[1] - b[1]) for a, b in zip(base, vr)) > 1e-3


# ----------------------------------------------------------------------------- the gradient shortcut

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kl", ["pu", "up"])
def test_shortcut_gradient_equals_full_model_and_finite_differences(checkpoints, kl, family):
    """The controller's gradient through the last layer alone, at one position, from its detached input, equals the
    gradient through the whole model recomputed over the whole sequence (every layer, no cache; the last layer's video
    value rows = the controller's rows) and a float64 finite difference."""
    model = M.load_model(checkpoints[family], dtype=torch.float64)
    prep = prepared(model, (2, 8, 12), 1.0)[0]
    prep.visual = M.Visual(prep.visual.embeds.double(), [x.double() for x in prep.visual.deepstack])
    cache, h_in, pos, fed = prefilled(model, prep, decode=2)
    s = R.Settings(mode="vreason", kl=kl)
    ctrl = R.Controller(cache, R.video_rows(model, prep.ids), s)
    with torch.no_grad():
        ctrl.dv.copy_(0.3 * torch.randn_like(ctrl.dv, generator=torch.Generator().manual_seed(0)))
    loss_fn = lambda logits: -1.0 * R.kl_to_uniform(logits, kl)  # alpha = -1
    loss_fn(ctrl.logits(model, cache, h_in, pos)).backward()
    g_short = ctrl.dv.grad.clone()
    ctrl.dv.grad = None
    rows = lambda v: v.index_copy(1, ctrl.idx, ctrl.rows().to(v.dtype))
    loss_fn(full_forward(model, prep, fed, last_values=rows)[-1]).backward()
    g_full = ctrl.dv.grad.clone()
    assert g_short.abs().max() > 0
    assert torch.allclose(g_short, g_full, rtol=1e-9, atol=1e-12 * float(g_full.abs().max()))
    # float64 central differences on a few coordinates, including the largest. The loss sees dv relative to the row
    # norms (renorm), so the step scales with them: 1e-5 of the mean norm (smaller, the fp64 rounding of a 152k-way
    # log-softmax shows; Qwen2.5's tiny rows have norm ~1, Qwen3's ~9)
    eps = 1e-5 * float(ctrl.v0_norm.mean())
    flat = g_short.flatten()
    for i in [int(flat.abs().argmax()), 0, flat.numel() // 2, flat.numel() - 1]:
        with torch.no_grad():
            d = ctrl.dv.view(-1)
            d[i] += eps
            up = float(loss_fn(ctrl.logits(model, cache, h_in, pos)))
            d[i] -= 2 * eps
            down = float(loss_fn(ctrl.logits(model, cache, h_in, pos)))
            d[i] += eps
        fd = (up - down) / (2 * eps)
        assert abs(fd - float(flat[i])) <= 1e-5 * float(flat.abs().max()), (i, fd, float(flat[i]))


def test_no_graph_or_weight_grad_survives(tiny):
    prep = prepared(tiny, (2, 8, 8), 1.0)[0]
    list(R.generate(tiny, prep, R.Settings(mode="vreason", max_new_tokens=6), STOP))
    assert all(p.grad is None and not p.requires_grad for p in tiny.parameters())


# ----------------------------------------------------------------------------- the controller update

@pytest.mark.parametrize("controller", ["per-token", "shared"])
def test_updated_rows_keep_their_norm(tiny, controller):
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    cache, h_in, pos, _ = prefilled(tiny, prep)
    rows = R.video_rows(tiny, prep.ids)
    v0 = cache.v[-1][:, rows].clone()
    ctrl = R.Controller(cache, rows, R.Settings(mode="vreason", lr=0.2, steps=3, controller=controller))
    ctrl.update(tiny, cache, h_in, pos, alpha=-1.0)
    v1 = cache.v[-1][:, rows]
    assert (v1 - v0).abs().amax(-1).min() > 0  # every video row turned (each span, each head)
    assert torch.allclose(v1.norm(dim=-1), v0.norm(dim=-1), rtol=1e-5, atol=0)
    assert ctrl.dv.shape == ((v0.shape[0], 1, v0.shape[2]) if controller == "shared" else v0.shape)
    # nothing else changed: other rows of the last layer (text, timestamps), all other layers, all keys
    fresh, n = prefilled(tiny, prep)[0], cache.length
    text = torch.ones(n, dtype=torch.bool)
    text[rows] = False
    assert torch.equal(cache.v[-1][:, :n][:, text], fresh.v[-1][:, :n][:, text])
    assert all(torch.equal(a[:, :n], b[:, :n]) for a, b in zip(cache.v[:-1] + cache.k, fresh.v[:-1] + fresh.k) if a is not None)
    assert all(torch.equal(a, b) for s, t in zip(cache.state, fresh.state) if s for a, b in zip(s, t))  # (linear layers)


@pytest.mark.parametrize("objective,alpha,sign", [("minimize", -1.0, -1), ("maximize", 1.0, 1)])
def test_one_step_moves_entropy_the_right_way(tiny, objective, alpha, sign):
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    cache, h_in, pos, _ = prefilled(tiny, prep)
    ctrl = R.Controller(cache, R.video_rows(tiny, prep.ids), R.Settings(mode="vreason", objective=objective, lr=0.05))
    with torch.no_grad():
        before = float(R.entropy(ctrl.logits(tiny, cache, h_in, pos)))
    ctrl.update(tiny, cache, h_in, pos, alpha)
    with torch.no_grad():
        after = float(R.entropy(ctrl.logits(tiny, cache, h_in, pos)))
    assert sign * (after - before) > 1e-6, (before, after)


def test_adam_is_torch_adam(tiny):
    """vreason.adam writes out torch.optim.Adam (default betas, eps): the same numbers, bit for bit, for one controller
    and for several stepped at once (batch.py), each at its own step count, learning rate and shape (per-token and
    shared), each equal to a torch.optim.Adam of its own."""
    prep = prepared(tiny, (2, 8, 8), 1.0)[0]
    cache, rows = prefilled(tiny, prep)[0], R.video_rows(tiny, prep.ids)
    ctrls = [R.Controller(cache, rows, R.Settings(mode="vreason", lr=lr, controller=kind))
             for lr, kind in ((0.03, "per-token"), (0.01, "shared"), (0.05, "per-token"))]
    refs = [c.dv.detach().clone().requires_grad_() for c in ctrls]
    opts = [torch.optim.Adam([r], lr=c.s.lr) for r, c in zip(refs, ctrls)]
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        now = [j for j in range(3) if i >= 2 * j]  # the second joins at step 2, the third at 4
        for j in now:
            g = torch.randn(refs[j].shape, generator=gen) * 10.0 ** (i - 4)  # gradients over eight orders of magnitude
            ctrls[j].dv.grad, refs[j].grad = g.clone(), g.clone()
            opts[j].step()
        R.adam([ctrls[j] for j in now])
        for j in now:
            assert torch.equal(ctrls[j].dv.detach(), refs[j].detach()), (i, j)
    assert [c.n for c in ctrls] == [8, 6, 4] and all(c.dv.grad is None for c in ctrls)
    assert all(float(c.dv.detach().abs().max()) > 0 for c in ctrls)


@pytest.mark.parametrize("kw", [dict(mode="vreason"), dict(mode="vreason", update_every=1, steps=2),
                                dict(mode="vreason", update_every=3, redecode=False), dict(mode="lite", update_every=1),
                                dict(mode="vreason", objective="minimize", kl="up", controller="shared"),
                                dict(mode="lite", prune_policy="last-layer", temperature=0.8, top_p=0.9, seed=3)])
def test_generate_equals_generate_reference(tiny, kw):
    """generate() shares the decode step's last-layer forward with the update, steps Adam by hand, runs the switching
    rule on the device and reads each token a step late; generate_reference (METHOD.md §4 literally) does none of
    that. Same tokens, updates and alphas; the same entropies, EMAs and losses to 1e-5."""
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    s = R.Settings(max_new_tokens=24, lr=0.3, **kw)
    ours, ref = list(R.generate(tiny, prep, s, STOP)), list(R.generate_reference(tiny, prep, s, STOP))
    assert [(st.token, st.alpha, st.updated) for st in ours] == [(st.token, st.alpha, st.updated) for st in ref]
    close = lambda a, b: a is b is None or abs(a - b) <= 1e-5 * max(1.0, abs(b))
    for name in ("entropy", "ema", "peak", "loss", "entropy_before"):
        assert all(close(getattr(a, name), getattr(b, name)) for a, b in zip(ours, ref)), name
    assert max(abs(a.entropy - b[1]) for a, b in zip(ours, tokens(tiny, prep))) > 1e-3  # and the updates did act


def test_switching_rule_on_constructed_entropies():
    beta = 0.5
    sw = R.Switch(beta, "switch")
    rising, falling, bump = [1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0], [3.9, 3.0, 0.5, 0.2]
    alphas = [sw(h) for h in rising]
    assert alphas == [1.0] * 4 and sw.ema == sw.peak  # EMA climbing: at its running max, explore
    ema_peak = sw.peak
    alphas = [sw(h) for h in falling]
    assert alphas == [-1.0] * 3 and sw.ema < sw.peak == ema_peak  # below the peak: exploit
    alphas = [sw(h) for h in bump]  # a bump that does not beat the global peak keeps alpha at -1
    assert alphas == [-1.0] * 4
    # an EMA that recovers to a new running max flips back to +1 (micro-exploration), then -1 when it dips
    sw2 = R.Switch(beta, "switch")
    assert [sw2(h) for h in [1.0, 2.0, 1.0, 5.0, 6.0, 1.0]] == [1.0, 1.0, -1.0, 1.0, 1.0, -1.0]
    assert [R.Switch(beta, "minimize")(h) for h in [1.0, 2.0]] == [-1.0, -1.0]
    assert R.Switch(beta, "maximize")(0.3) == 1.0


def test_generate_records_alpha_ema_and_updates(tiny):
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    steps = list(R.generate(tiny, prep, R.Settings(mode="vreason", max_new_tokens=9, update_every=3), STOP))
    assert [st.updated for st in steps] == [t % 3 == 0 for t in range(9)]
    sw = R.Switch(0.9, "switch")
    for st in steps:  # the EMA runs on the pre-update entropy; alpha is recorded for every token
        alpha = sw(st.entropy_before if st.updated else st.entropy)
        assert (st.alpha, st.ema, st.peak) == (alpha, sw.ema, sw.peak)
        assert st.updated == (st.loss is not None)

    assert all(st.opt_s > 0 for st in steps if st.updated)  # the update's time, read after it ran


def test_next_step_is_queued_before_this_one_is_read(tiny, monkeypatch):
    """The device never waits for the host: a token's numbers are read only once the next step has been launched
    (on a GPU the read waits for its own copy alone), the last token's without a step after it. A stop token still
    ends the run at once (the step launched after it is dropped)."""
    calls, decode, read = [], tiny.decode, R.to_host_later
    monkeypatch.setattr(tiny, "decode", lambda *a, **kw: calls.append("decode") or decode(*a, **kw))
    monkeypatch.setattr(R, "to_host_later", lambda x: (lambda f: lambda: calls.append("read") or f())(read(x)))
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    steps = list(R.generate(tiny, prep, R.Settings(mode="vreason", max_new_tokens=5), STOP))
    assert calls == ["decode", "read"] * 4 + ["read"] and len(steps) == 5
    calls.clear()
    stop = {steps[1].token}
    assert [st.token for st in R.generate(tiny, prep, R.Settings(mode="vreason", max_new_tokens=5), stop)] == \
        [st.token for st in steps[: [st.token for st in steps].index(steps[1].token) + 1]]
    assert calls == ["decode", "read"] * (len(calls) // 2)


# ----------------------------------------------------------------------------- Lite

@pytest.mark.parametrize("policy", ["per-layer", "last-layer"])
def test_prune_keeps_largest_value_norms(tiny, policy):
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    cache = prefilled(tiny, prep, decode=1)[0]
    clone = lambda xs: [x if x is None else x.clone() for x in xs]
    before = M.Cache(clone(cache.k), clone(cache.v), [s and clone(s) for s in cache.state], cache.length)
    rows = R.video_rows(tiny, prep.ids)
    n, T0, layers = len(rows), cache.length, cache.kv_layers  # (a hybrid's linear layers keep no rows to prune)
    new_rows, kept = R.prune(cache, rows, 0.5, policy)
    assert len(new_rows) == n - n // 2 and cache.length == T0 - n // 2 and kept.shape == (len(layers), n)
    for j, i in enumerate(layers):
        score = before.v[-1 if policy == "last-layer" else i][:, rows].norm(dim=-1).mean(0)
        assert int(kept[j].sum()) == n - n // 2 and score[kept[j]].min() >= score[~kept[j]].max()
        alive = torch.ones(T0, dtype=torch.bool)  # the compacted cache: every old row but the dropped ones, in order
        alive[rows[~kept[j]]] = False
        for new, old in ((cache.k[i], before.k[i]), (cache.v[i], before.v[i])):
            assert torch.equal(new[:, : cache.length], old[:, :T0][:, alive])
    assert torch.equal(cache.v[-1][:, new_rows], before.v[-1][:, rows[kept[-1]]])  # where the controller's rows went
    assert torch.equal(kept[0], kept[-1]) == (policy == "last-layer")
    assert all(torch.equal(a, b) for s, t in zip(cache.state, before.state) if s for a, b in zip(s, t))  # fixed states kept


def test_pruned_decoding_equals_masked_full_forward(tiny):
    """Decoding on the pruned cache == a full forward in which the generated tokens cannot see that layer's pruned
    video keys (the prompt was prefilled on the whole video, exactly as Lite does it). A hybrid's linear-attention
    layers are not pruned: in the full forward they see every row, as their state has."""
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    steps = 5
    cache = tiny.new_cache(len(prep.ids) + steps)
    rows = R.video_rows(tiny, prep.ids)
    with torch.no_grad():
        logits, _ = tiny.prefill(prep.ids, prep.pos, prep.visual, cache)
        _, kept = R.prune(cache, rows, 0.5, "per-layer")
        toks, stepped, nxt = [], [logits], int(prep.pos.max()) + 1
        for t in range(steps):
            toks.append(int(stepped[-1].argmax()))
            logits, _ = tiny.decode(torch.tensor(toks[-1:]), tiny.text_position(nxt + t, "cpu"), cache)
            stepped.append(logits)
        S, P = len(prep.ids) + steps, len(prep.ids)
        masks = {}
        for j, i in enumerate(cache.kv_layers):
            masks[i] = torch.ones(S, S).tril().bool()
            masks[i][P:, rows[~kept[j]]] = False
        ref = full_forward(tiny, prep, toks, masks)
    assert not torch.equal(kept[0], kept[-1])  # per-layer keep sets really differ, so the test is not trivial
    # (a hybrid's decode runs the delta rule token by token, the full forward chunked: they round apart by ~1e-5, as the
    # reference's own cached and full forwards do)
    tol = 1e-5 if all(layer.holds_kv for layer in tiny.llm.layers) else 1e-4
    for t in range(steps + 1):
        assert torch.allclose(stepped[t], ref[P - 1 + t], rtol=0, atol=tol * float(ref.abs().max())), t
    # generate() itself (pruning alone: baseline + --prune-ratio) follows the same path, positions included
    info = {}
    run = list(R.generate(tiny, prep, R.Settings(prune_ratio=0.5, max_new_tokens=steps + 1), set(), info))
    assert [st.token for st in run] == ref[P - 1 :].argmax(-1).tolist() == toks + [int(stepped[-1].argmax())]
    assert all(abs(st.entropy - float(R.entropy(ref[P - 1 + t]))) < 1e-4 for t, st in enumerate(run))
    assert info["video_tokens_kept"] == len(rows) - len(rows) // 2 and info["kv_bytes_after"] < info["kv_bytes_before"]


# ----------------------------------------------------------------------------- no state leaks between samples

SCRIPT = """
import sys, json, torch
sys.path[:0] = [{root!r}, {tests!r}]
import model as M, vreason as R
from test_vreason import prepared
torch.set_num_threads(1)  # one thread: a BLAS that drops threads under load (MKL_DYNAMIC) would round differently
m = M.load_model({ckpt!r})
out = []
for seed in {seeds}:
    prep = prepared(m, (2, 12, 20), 1.0, seed=seed)[0]
    out.append([(st.token, st.entropy, st.alpha) for st in R.generate(m, prep, R.Settings(mode="lite", max_new_tokens=12, update_every=1, lr=0.05), set())])
print(json.dumps(out))
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_two_samples_in_one_process_equal_fresh_processes(checkpoints, family):
    def run(seeds):
        code = SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), ckpt=checkpoints[family], seeds=seeds)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])
    both = run([1, 2])
    assert both == run([1]) + run([2])
    assert both[0] != both[1]


# ----------------------------------------------------------------------------- CLI outputs

def test_cli_outputs(model_dir, clip, tmp_path, capsys):  # noqa: F811
    j, tr, pl = tmp_path / "r.json", tmp_path / "t.jsonl", tmp_path / "p.png"
    argv = ["--video", clip, "--q", "What happens?", "--model", model_dir, "--mode", "lite", "--compare",
            "--json", str(j), "--trace", str(tr), "--plot", str(pl), *SMALL[:-2], "--max-new-tokens", "10"]
    assert C.main(argv) == 0
    out = capsys.readouterr().out
    assert "== baseline" in out and "== lite" in out and "lite/baseline" in out and "video tokens kept" in out
    rec = json.loads(j.read_text())
    n = len(rec["token_ids"])
    assert len(rec["alphas"]) == len(rec["ema"]) == len(rec["entropies"]) == n
    assert [u["token_index"] for u in rec["updates"]] == list(range(0, n, 2))
    assert all(u["entropy_after"] == rec["entropies"][u["token_index"]] != u["entropy_before"] for u in rec["updates"])
    assert rec["settings"]["prune_ratio"] == 0.5 and rec["settings"]["beta"] == 0.9 and rec["settings"]["kl"] == "pu"
    assert rec["vreason"]["video_tokens_kept"] < rec["vreason"]["video_tokens"]
    assert rec["baseline"]["vreason"]["video_tokens_kept"] == rec["baseline"]["vreason"]["video_tokens"]
    lines = [json.loads(x) for x in tr.read_text().splitlines()]
    assert [x["token"] for x in lines] == rec["token_ids"]
    assert {"token", "text", "entropy", "ema", "peak", "alpha", "updated", "loss"} <= set(lines[0])
    assert pl.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "r.json", "t.jsonl"]  # no temp files left
    # what the method did to each video token, compactly: Lite's keep sets and the controller's turn
    v, grid = rec["vreason"], rec["video"]["grid_thw"]
    N = grid[0] * grid[1] * grid[2] // 4
    assert len(v["kept_last_layer"]) == len(v["layers_kept"]) == len(v["angle_deg"]) == N == rec["video_tokens"]
    assert v["kept_last_layer"].count("1") == v["video_tokens_kept"] and set(v["layers_kept"]) <= set(range(v["n_layers"] + 1))
    assert [a is None for a in v["angle_deg"]] == [c == "0" for c in v["kept_last_layer"]]  # pruned rows have no turn
    assert max(a for a in v["angle_deg"] if a is not None) > 0
    assert "angle_deg" not in rec["baseline"]["vreason"] and "kept_last_layer" not in rec["baseline"]["vreason"]


def test_video_maps_follow_the_tokens(tiny):
    """The maps put token i of the prompt at (t, row, col) of the merged grid, and the angles equal the controller's."""
    prep = prepared(tiny, (2, 12, 20), 1.0)[0]
    prep.video = V.Video(None, (2, 12, 20), 1.0, {}, (0.0, 1.0), tiny.family)
    info = {}
    list(R.generate(tiny, prep, R.Settings(mode="lite", max_new_tokens=4, lr=0.1), set(), info))
    (_, kept, *_), (_, layers, *_), (_, angle, *_) = C.video_maps(info, prep.video)
    assert kept.shape == layers.shape == angle.shape == (2, 6, 10)
    assert [bool(x) for x in torch.tensor(kept).isnan().flatten()] == [c == "1" for c in info["kept_last_layer"]]
    flat = [None if x != x else x for x in angle.flatten().tolist()]
    assert flat == info["angle_deg"] and layers.flatten().tolist() == info["layers_kept"]


def test_plot_without_matplotlib(model_dir, clip, tmp_path, capsys, monkeypatch):  # noqa: F811
    """matplotlib is optional: --plot without it is refused before the run (not found out after it)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    argv = ["--video", clip, "--q", "x", "--model", model_dir, "--mode", "vreason", "--plot", str(tmp_path / "p.png"),
            "--json", str(tmp_path / "r.json"), *SMALL]
    assert C.main(argv) == 2
    out, err = capsys.readouterr()
    assert err == "vreason: error: --plot needs matplotlib (pip install matplotlib)\n" and out == "", (out, err)
    assert not os.listdir(tmp_path)


def test_ctrl_c_leaves_no_file(model_dir, clip, tmp_path):  # noqa: F811
    outs = [tmp_path / "r.json", tmp_path / "t.jsonl", tmp_path / "p.png"]
    p = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "vreason.py"), "--video", clip, "--q", "x", "--model", model_dir,
                          "--mode", "vreason", "--max-new-tokens", "30000", "--min-pixels", "3136", "--max-pixels", "12544",
                          "--json", str(outs[0]), "--trace", str(outs[1]), "--plot", str(outs[2])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         # a shell's background job inherits SIGINT ignored, and so would the CLI: be a terminal's Ctrl-C
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    p.stdout.readline()  # the stats header: generation starts now
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_without_a_redecode_no_entropy_after_an_update_is_recorded():
    steps = [R.Step(5, 2.0, 2.0, 2.0, 1.0, updated=True, loss=0.1, entropy_before=2.0)]
    run = C.Run("vreason", steps, [], "", {}, {}, 0)
    assert C.run_record(run)["updates"][0]["entropy_after"] == 2.0
    assert C.run_record(run, redecode=False)["updates"][0]["entropy_after"] is None  # 2.0 is the entropy before
