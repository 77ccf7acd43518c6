"""qwen35.py against its oracle, transformers 5.23.0 (a venv of its own, see conftest.oracle35), on tiny random
hybrid checkpoints it wrote with save_pretrained (8 layers, 3 Gated DeltaNet : 1 gated full attention, the last one
full), in float32: config, weights, vision features, positions, prefill and decode logits (chunked prefill and
recurrent decode), the per-layer state after prefill, greedy tokens; then the CLI and eval.py with no new flag."""
import json
import os
import re
import shutil

import pytest
import torch
from conftest import rekeyed, rel_diff, tiny_eval
from qwen35_cases import GENERATE, GRIDS, LOGITS, POSITIONS, STOP, as_list, continuation, pixels, prompt

import cli as C
import model as M
import qwen35 as Q35
import qwen3vl as Q3
import video as V
import vreason as R

TOL = 1e-4  # relative max diff


@pytest.fixture(scope="module")
def models(qwen35):
    return {name: M.load_model(d) for name, d in qwen35["dir"].items()}


def video_of(grids, seed=0):  # one Video for the first grid (the prompts hold one video unless grids lists two)
    return None if grids is None else V.Video(pixels(as_list(grids)[0], seed), as_list(grids)[0], None, {}, (), Q35.FAMILY)


def test_config_from_the_file(qwen35):
    c = Q35.Config.from_json(os.path.join(qwen35["dir"]["untied"], "config.json"))
    assert c.layer_types == ("linear_attention",) * 3 + ("full_attention",) + ("linear_attention",) * 3 + ("full_attention",)
    assert (c.head_dim, c.rotary_dim, c.hidden_size, c.n_heads, c.n_kv_heads) == (64, 16, 64, 4, 2)  # partial rotary
    assert (c.lin_k_heads, c.lin_v_heads, c.lin_k_dim, c.lin_v_dim, c.conv_kernel) == (2, 4, 16, 24, 4)
    assert c.mrope_section == (3, 3, 2) and c.rope_theta == 1e7 and c.deepstack == () and c.n_pos_embed == 64
    assert c.attn_gate and c.zero_centred_norms and c.qk_norm and not c.attn_bias and not c.tie_word_embeddings
    assert c.rope_axis == (0, 1, 2, 0, 1, 2, 0, 1)  # interleaved, as the reference hard-wires it
    assert Q35.Config.from_json(os.path.join(qwen35["dir"]["tied"], "config.json")).tie_word_embeddings


def test_the_model_is_a_hybrid(models):
    m = models["untied"]
    kinds = [type(layer).__name__ for layer in m.llm.layers]
    assert kinds == ["GatedDeltaNet"] * 3 + ["DecoderLayer"] + ["GatedDeltaNet"] * 3 + ["DecoderLayer"]
    cache = m.new_cache(10)
    assert cache.kv_layers == [3, 7] and all(cache.state[i] is not None for i in (0, 1, 2, 4, 5, 6))
    assert models["tied"].llm.embed_tokens is None and m.llm.embed_tokens is not None


@pytest.mark.parametrize("grids", GRIDS, ids=str)
def test_vision_features_match(models, qwen35, grids):
    ref, _ = qwen35["ref"]["untied"]["vision"][str(grids)]
    px = torch.cat([pixels(g, i) for i, g in enumerate(grids)])
    with torch.no_grad():
        emb, deep = models["untied"].visual(px, grids)
    assert emb.shape == ref.shape and deep == []  # no DeepStack
    assert rel_diff(emb, ref) <= TOL


@pytest.mark.parametrize("grids,q_len", POSITIONS, ids=str)
def test_positions_match_get_rope_index(models, qwen35, grids, q_len):
    """Our 3 rows equal get_rope_index's, which are rows 1-3 of the 4 that 5.x's generate feeds the text model (row
    0, the plain index, only builds the mask)."""
    ref3, delta, ref4 = qwen35["ref"]["untied"]["positions"][(str(grids), q_len)]
    ids = prompt(grids, q_len=q_len)
    ours = Q3.rope_index(ids, as_list(grids), models["untied"].c)
    assert torch.equal(ours, ref3) and torch.equal(ours, ref4[1:])
    assert int(ours.max()) + 1 - len(ids) == delta


def run_ours(model, grids, steps, q_len):
    ids = prompt(grids, q_len=q_len)
    pos = Q3.rope_index(ids, as_list(grids), model.c)
    cache = model.new_cache(len(ids) + steps)
    with torch.no_grad():
        px = torch.cat([pixels(g, i) for i, g in enumerate(as_list(grids))]) if grids else None
        visual = M.Visual(model.visual(px, as_list(grids))[0]) if grids else None
        logits, _ = model.prefill(torch.tensor(ids), pos, visual, cache)
        out, nxt, state = [logits], int(pos.max()) + 1, [
            ("full", cache.k[i][:, : cache.length].clone(), cache.v[i][:, : cache.length].clone()) if cache.k[i] is not None
            else ("linear", *(t.clone() for t in cache.state[i])) for i in range(model.c.n_layers)]
        for s, tok in enumerate(continuation(steps)):
            logits, _ = model.decode(torch.tensor([tok]), model.text_position(nxt + s, "cpu"), cache)
            out.append(logits)
    return out, state, len(ids)


@pytest.mark.parametrize("name", ["untied", "tied"])
@pytest.mark.parametrize("grids,steps,q_len", LOGITS, ids=str)
def test_prefill_and_decode_logits_match(models, qwen35, name, grids, steps, q_len):
    """Prompts of 42, 63, 83, 128 and 148 tokens: under one chunk of the reference's chunked rule, partial chunks,
    exactly two; decode steps that cross a chunk boundary. Ours against the reference's full forwards and against its
    own cached decode; and the state after prefill, layer by layer (conv inputs, delta-rule matrix, K/V)."""
    ref = qwen35["ref"][name]["logits"][(str(grids), q_len)]
    ours, state, length = run_ours(models[name], grids, steps, q_len)
    assert length % 64 or length == 128
    for step, (a, full, cached) in enumerate(zip(ours, ref["full"], ref["cached"])):
        assert rel_diff(a, full) <= TOL and rel_diff(a, cached) <= TOL, f"step {step}"
    for i, (kind, *theirs) in enumerate(ref["state"]):
        assert state[i][0] == kind
        for a, b in zip(state[i][1:], theirs):
            assert a.shape == b.shape and rel_diff(a, b) <= TOL, (i, kind)


@pytest.mark.parametrize("grids,n,q_len", GENERATE, ids=str)
def test_greedy_matches_generate(models, qwen35, grids, n, q_len):
    model = models["untied"]
    ids, video = prompt(grids, seed=1, q_len=q_len), video_of(grids, seed=1)
    prep = R.Prepared(torch.tensor(ids), model.positions(ids, video), model.encode_video(video), video, 0.0)
    mine = [st.token for st in R.generate(model, prep, R.Settings(max_new_tokens=n), set(STOP))]
    ref = qwen35["ref"]["untied"]["generate"][(str(grids), q_len)]
    assert len(mine) == len(ref) >= 32
    assert mine == ref


def test_other_key_prefixes_and_mtp_weights_load_the_same(qwen35, tmp_path):
    """The other key era in one unsharded file loads identically; the released checkpoints' multi-token-prediction
    weights (mtp.*), which transformers drops, are skipped too."""
    src = qwen35["dir"]["untied"]
    d = rekeyed(src, tmp_path / "rekeyed", {"mtp.fc.weight": torch.zeros(64, 128), "mtp.norm.weight": torch.ones(64)})
    a, b = M.load_model(src), M.load_model(d)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("edit,msg", [
    (lambda t: t.update(layer_types=["linear_attention"] * 3 + ["full_attention"] * 4 + ["linear_attention"]),
     "text_config.layer_types ends in 'linear_attention': V-Reason needs the last layer to be full_attention"),
    (lambda t: t.update(layer_types=["full_attention"] * 7), "text_config.layer_types is "),
    (lambda t: t.update(layer_types=["full_attention"] * 7 + ["sliding_attention"]),
     "text_config.layer_types names a 'sliding_attention' layer: sliding-window attention is not implemented"),
    (lambda t: t.update(layer_types=["full_attention"] * 7 + ["mamba"]), "text_config.layer_types is "),
    (lambda t: (t.pop("layer_types"), t.update(full_attention_interval=3)), "ends in 'linear_attention'"),
    (lambda t: t.update(linear_num_value_heads=3), "linear_num_value_heads 3 is not a multiple of linear_num_key_heads 2"),
    (lambda t: t.update(linear_conv_kernel_dim=0), "linear_conv_kernel_dim is 0"),
    (lambda t: t["rope_parameters"].update(mrope_section=[4, 4, 4]), "the rotary dims (head_dim x partial_rotary_factor)/2 = 8"),
    (lambda t: t.update(attn_output_gate=False), "q_proj.weight has shape [512, 64], expected [256, 64]"),  # (read)
])
def test_config_errors_name_the_key(qwen35, tmp_path, edit, msg):
    d = tmp_path / "m"
    shutil.copytree(qwen35["dir"]["tied"], d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg["text_config"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(M.ModelError, match=re.escape(msg)) as e:
        M.load_model(str(d))
    assert "\n" not in str(e.value)


def test_moe_is_refused_by_name(qwen35, tmp_path):
    d = tmp_path / "moe"
    shutil.copytree(qwen35["dir"]["tied"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen3_5_moe"}))
    with pytest.raises(M.ModelError, match="model_type is 'qwen3_5_moe'; supported: .*'qwen3_5' .*Qwen3.5"):
        M.load_model(str(d))


# ----------------------------------------------------------------------------- the CLI and eval.py, no new flags

@pytest.fixture(scope="module")
def q35_dir(qwen35, qwen35_tokenizer_json, tmp_path_factory):
    """The tiny tied checkpoint as a Hugging Face repo ships one: Qwen3.5's tokenizer.json and chat template."""
    d = tmp_path_factory.mktemp("q35cli") / "model"
    shutil.copytree(qwen35["dir"]["tied"], d)
    shutil.copy(qwen35_tokenizer_json, d / "tokenizer.json")
    shutil.copy(os.path.join(os.path.dirname(__file__), "data", "qwen35.jinja"), d / "chat_template.jinja")
    return str(d)


@pytest.fixture(scope="module")
def q35_clip(tmp_path_factory):
    from clips import write_clip

    return write_clip(str(tmp_path_factory.mktemp("q35clip") / "clip.mp4"), n_frames=20, width=96, height=64, fps=8)


def test_cli_runs_qwen35_in_every_mode(q35_dir, q35_clip, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--video", q35_clip, "--q", "What happens?", "--model", q35_dir, "--mode", "lite", "--compare",
            "--max-new-tokens", "6", "--json", str(out)]
    assert C.main(argv) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    assert rec["family"] == "qwen3_5" and rec["thinking"] is True
    v = rec["video"]
    assert v["family"] == "qwen3_5" and v["resized_width"] % 32 == 0 and len(v["timestamps"]) == v["grid_thw"][0]
    tok = V.load_tokenizer(q35_dir, Q35.FAMILY)
    ids = Q35.prompt_ids(tok, "What happens?", V.Video(None, tuple(v["grid_thw"]), None, {}, tuple(v["timestamps"]), Q35.FAMILY))
    assert rec["prompt_tokens"] == len(ids)
    # Lite on a hybrid: the two full-attention layers are pruned, the six linear ones keep their fixed state
    lite = rec["vreason"]
    assert lite["n_layers"] == 2 and set(lite["layers_kept"]) <= {0, 1, 2}
    assert lite["video_tokens_kept"] == rec["video_tokens"] - rec["video_tokens"] // 2
    assert lite["kv_bytes_after"] < lite["kv_bytes_before"] and lite["updates"] == 3
    assert len(rec["token_ids"]) == 6 and len(rec["baseline"]["token_ids"]) == 6
    for mode in ("baseline", "vreason"):
        assert C.main([*argv[:6], "--mode", mode, "--max-new-tokens", "4", "--json", str(out)]) == 0
        assert json.loads(out.read_text())["mode"] == mode


def test_eval_runs_qwen35(q35_dir, q35_clip, tmp_path):
    recs = tiny_eval(q35_dir, q35_clip, tmp_path)
    assert len(recs) == 6 and not any(r["error"] for r in recs)
    assert {r["mode"]: r["video_tokens_kept"] for r in recs if r["id"] == "0"}["lite"] < recs[0]["video_tokens"]


def test_memory_need_counts_the_fixed_states(models):
    """The memory check before loading counts each linear-attention layer's fixed state (conv inputs in the model
    dtype, the delta-rule matrix in fp32) and each attention layer's K/V rows, exactly what new_cache allocates."""
    m, cpu = models["untied"], torch.device("cpu")
    tokens = 100
    need = M.memory_need(m, cpu, torch.float32, None, tokens - 40, 40)[cpu]
    cache = m.new_cache(tokens)
    assert need[1] == sum(t.numel() * t.element_size() for t in cache.tensors()) > 0
    fixed = sum(t.numel() * t.element_size() for s in cache.state if s for t in s)
    assert fixed == 6 * (Q35.GatedDeltaNet(m.c).conv_dim * 4 * 4 + 4 * 16 * 24 * 4)


def test_cli_refuses_a_hybrid_whose_last_layer_is_linear(q35_dir, q35_clip, tmp_path, capsys):
    """Bad input as for every family: one line, exit 2, no traceback, nothing written, before a weight is read."""
    d = tmp_path / "m"
    shutil.copytree(q35_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["layer_types"] = cfg["text_config"]["layer_types"][1:] + ["linear_attention"]
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "r.json"
    assert C.main(["--video", q35_clip, "--q", "x", "--model", str(d), "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vreason: error: {d}/config.json: text_config.layer_types ends in 'linear_attention': V-Reason needs "
                   f"the last layer to be full_attention") and not out.exists()
