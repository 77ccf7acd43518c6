"""qwen3vl.py against its oracle, transformers 4.57.6 (a venv of its own, see conftest.oracle3), on tiny random
checkpoints it wrote with save_pretrained, in float32: vision + DeepStack features, positions, logits, greedy tokens."""
import json
import os
import shutil

import pytest
import torch
from conftest import rekeyed, rel_diff, tiny_eval
from qwen3_cases import GENERATE, GRIDS, LOGITS, STOP, YARN, YARN_LOGITS, pixels, prompt

import model as M
import qwen3vl as Q3
import video as V
import cli as C
import vreason as R

TOL = 1e-4  # relative max diff (issue 9)


@pytest.fixture(scope="module")
def models(qwen3):
    return {name: M.load_model(d) for name, d in qwen3["dir"].items()}


def test_config_from_the_file(qwen3):
    c = Q3.Config.from_json(os.path.join(qwen3["dir"]["untied"], "config.json"))
    assert (c.head_dim, c.hidden_size, c.n_heads, c.n_kv_heads) == (32, 64, 4, 2)  # explicit head_dim != hidden / heads
    assert c.mrope_section == (6, 5, 5) and c.rope_theta == 5e6 and c.deepstack == (0, 2) and c.n_pos_embed == 64
    assert not c.attn_bias and c.qk_norm and not c.tie_word_embeddings and c.max_positions == 32768
    # interleaved M-RoPE: T by default, H at j % 3 == 1 and W at j % 3 == 2 below 3 x their section
    assert c.rope_axis == (0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0)
    assert Q3.Config.from_json(os.path.join(qwen3["dir"]["tied"], "config.json")).tie_word_embeddings


@pytest.mark.parametrize("grids", GRIDS, ids=str)
def test_vision_and_deepstack_features_match(models, qwen3, grids):
    emb_ref, deep_ref = qwen3["ref"]["untied"]["vision"][str(grids)]
    px = torch.cat([pixels(g, i) for i, g in enumerate(grids)])
    with torch.no_grad():
        emb, deep = models["untied"].visual(px, grids)
    assert emb.shape == emb_ref.shape == (sum(t * h * w for t, h, w in grids) // 4, 64)
    assert rel_diff(emb, emb_ref) <= TOL
    assert len(deep) == len(deep_ref) == 2
    for a, b in zip(deep, deep_ref):
        assert rel_diff(a, b) <= TOL


@pytest.mark.parametrize("grid", sorted({g for g, _ in LOGITS + GENERATE if g}) + [None], ids=str)
def test_positions_match_get_rope_index(models, qwen3, grid):
    ref, delta = qwen3["ref"]["untied"]["positions"][grid]
    ids = prompt(grid)
    c = models["untied"].c
    ours = Q3.rope_index(ids, [grid] if grid else [], c)
    assert torch.equal(ours, ref)
    assert int(ours.max()) + 1 - len(ids) == delta


def run_ours(model, grid, steps, seed=0):
    ids, c = prompt(grid, seed), model.c
    pos = Q3.rope_index(ids, [grid] if grid else [], c)
    cache = model.new_cache(len(ids) + steps)
    with torch.no_grad():
        visual = model.encode_video(V.Video(pixels(grid, seed), grid, None, {})) if grid else None
        logits, _ = model.prefill(torch.tensor(ids), pos, visual, cache)
        out, nxt = [logits], int(pos.max()) + 1
        for s in range(steps):
            logits, _ = model.decode(torch.tensor([1000 + 37 * s]), torch.full((3, 1), nxt + s), cache)
            out.append(logits)
    return out


@pytest.mark.parametrize("name", ["untied", "tied"])
@pytest.mark.parametrize("grid,steps", LOGITS, ids=str)
def test_prefill_and_decode_logits_match(models, qwen3, name, grid, steps):
    ref = qwen3["ref"][name]["logits"][grid]
    for step, (a, b) in enumerate(zip(run_ours(models[name], grid, steps), ref)):
        assert rel_diff(a, b) <= TOL, f"step {step}"


@pytest.mark.parametrize("name", YARN)
@pytest.mark.parametrize("grid,steps", YARN_LOGITS, ids=str)
def test_yarn_matches_the_reference(models, qwen3, name, grid, steps):
    """YaRN as transformers 4.57.6 computes it for Qwen3-VL (factor as written, `truncate` read): prefill and decode
    logits equal to the reference's on a YaRN copy of the untied checkpoint, and unlike the plain one's; the vision
    tower (its own rotary) is untouched."""
    ref = qwen3["ref"][name]
    assert ref["rope_type"] == "yarn" and models[name].c.yarn["attention"] == ref["scale"] != 1
    ours, plain = run_ours(models[name], grid, steps), run_ours(models["untied"], grid, steps)
    for step, (a, b, p) in enumerate(zip(ours, ref["logits"][grid], plain)):
        assert rel_diff(a, b) <= TOL, f"step {step}"
        assert rel_diff(p, b) > 100 * TOL, f"step {step}: YaRN changed nothing"
    if grid:
        video = V.Video(pixels(grid), grid, None, {})
        with torch.no_grad():
            a, b = models[name].encode_video(video), models["untied"].encode_video(video)
        assert all(torch.equal(x, y) for x, y in zip([a.embeds, *a.deepstack], [b.embeds, *b.deepstack]))


@pytest.mark.parametrize("grid,n", GENERATE, ids=str)
def test_greedy_matches_generate(models, qwen3, grid, n):
    model = models["untied"]
    ids = prompt(grid, seed=1)
    visual = model.encode_video(V.Video(pixels(grid, 1), grid, None, {}))
    prep = R.Prepared(torch.tensor(ids), Q3.rope_index(ids, [grid], model.c), visual, None, 0.0)
    mine = [st.token for st in R.generate(model, prep, R.Settings(max_new_tokens=n), set(STOP))]
    ref = qwen3["ref"]["untied"]["generate"][grid]
    assert len(mine) == len(ref) >= 32
    assert mine == ref


def test_tied_head_keeps_one_table(models):
    assert models["tied"].llm.embed_tokens is None and models["untied"].llm.embed_tokens is not None


def test_other_key_prefixes_and_shards_load_the_same(qwen3, tmp_path):
    """The same weights under the other key era (visual.*, model.*) in one unsharded file load identically."""
    src = qwen3["dir"]["untied"]
    dst = rekeyed(src, tmp_path / "rekeyed")
    a, b = M.load_model(src), M.load_model(dst)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("edit,msg", [
    (dict(vision_config={"num_position_embeddings": 50}), "square"),
    (dict(text_config={"rope_scaling": {"mrope_section": [6, 5, 4]}}), "mrope_section"),
    (dict(vision_config={"deepstack_visual_indexes": [0, 7]}), "deepstack"),
    (dict(text_config={"head_dim": "32"}), "head_dim"),
])
def test_config_errors_name_the_key(qwen3, tmp_path, edit, msg):
    d = tmp_path / "m"
    shutil.copytree(qwen3["dir"]["tied"], d)
    cfg = json.loads((d / "config.json").read_text())
    for k, v in edit.items():
        cfg[k].update(v)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(M.ModelError, match=msg):
        M.load_model(str(d))


# ----------------------------------------------------------------------------- the CLI and eval.py, no new flags

@pytest.fixture(scope="module")
def q3_dirs(qwen3, qwen_tokenizer_json, tmp_path_factory):
    """The tiny Qwen3-VL checkpoint with a real Qwen tokenizer: as Instruct (no template file: no <think>) and as
    Thinking (the Thinking chat template shipped beside it)."""
    base = tmp_path_factory.mktemp("q3cli")
    out = {}
    for kind in ("instruct", "thinking"):
        d = base / kind
        shutil.copytree(qwen3["dir"]["tied"], d)
        shutil.copy(qwen_tokenizer_json, d / "tokenizer.json")
        if kind == "thinking":
            shutil.copy(os.path.join(os.path.dirname(__file__), "data", "qwen3vl_thinking.jinja"), d / "chat_template.jinja")
        out[kind] = str(d)
    return out


@pytest.fixture(scope="module")
def q3_clip(tmp_path_factory):
    from clips import write_clip

    return write_clip(str(tmp_path_factory.mktemp("q3clip") / "clip.mp4"), n_frames=20, width=96, height=64, fps=8)


@pytest.mark.parametrize("kind", ["instruct", "thinking"])
def test_cli_runs_qwen3vl_in_every_mode(q3_dirs, q3_clip, tmp_path, capsys, kind):
    out = tmp_path / "r.json"
    argv = ["--video", q3_clip, "--q", "What happens?", "--model", q3_dirs[kind], "--mode", "lite", "--compare",
            "--max-new-tokens", "6", "--json", str(out)]
    assert C.main(argv) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    assert rec["family"] == "qwen3_vl" and rec["thinking"] == (kind == "thinking")
    v = rec["video"]
    assert v["family"] == "qwen3_vl" and v["resized_width"] % 32 == 0 and v["min_pixels"] == 128 * 32 * 32
    assert len(v["timestamps"]) == v["grid_thw"][0] >= 2  # one "<t seconds>" per frame group
    tok = V.load_tokenizer(q3_dirs[kind], Q3.FAMILY)
    ids = Q3.prompt_ids(tok, "What happens?", V.Video(None, tuple(v["grid_thw"]), None, {}, tuple(v["timestamps"]), Q3.FAMILY),
                        thinking=kind == "thinking")
    assert rec["prompt_tokens"] == len(ids)
    assert not tok.decode(ids, skip_special_tokens=False).startswith("<|im_start|>system")  # no default system turn
    assert rec["vreason"]["video_tokens_kept"] == rec["video_tokens"] - rec["video_tokens"] // 2
    assert len(rec["token_ids"]) == len(rec["entropies"]) == 6 and len(rec["baseline"]["token_ids"]) == 6
    assert rec["vreason"]["updates"] == 3  # k = 2 over 6 tokens
    for mode in ("baseline", "vreason"):
        assert C.main([*argv[:6], "--mode", mode, "--max-new-tokens", "4", "--json", str(out)]) == 0
        assert json.loads(out.read_text())["mode"] == mode


def test_eval_runs_qwen3vl_with_its_defaults(q3_dirs, q3_clip, tmp_path):
    recs = tiny_eval(q3_dirs["instruct"], q3_clip, tmp_path)
    assert len(recs) == 6 and not any(r["error"] for r in recs)
    assert all(r["settings"]["max_pixels"] == 128 * 32 * 32 and r["settings"]["max_frames"] == 16 for r in recs)
    assert {r["mode"]: r["video_tokens_kept"] for r in recs if r["id"] == "0"}["lite"] < recs[0]["video_tokens"]
