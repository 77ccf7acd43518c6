"""model.py against the oracle, transformers 4.51.3, on tiny random checkpoints in float32."""
import json
import math
import os
import shutil

import pytest
import torch
from conftest import IM_END, IM_START, VIDEO_PAD, VISION_END, VISION_START, hf_model, rel_diff

import model as M
import qwen25vl as Q25

TOL = 1e-4  # relative max diff (issue 2)


def prompt(n_video, q_len=7, seed=0):
    """Chat-shaped ids: system + user header, one video block (if n_video), a question, the assistant header."""
    g = torch.Generator().manual_seed(seed)
    head = [IM_START, 8948, 198, 2610, 525, 264, 10950, 17847, 13, IM_END, 198, IM_START, 872, 198]
    video = [VISION_START] + [VIDEO_PAD] * n_video + [VISION_END] if n_video else []
    q = torch.randint(0, 151000, (q_len,), generator=g).tolist()
    return head + video + q + [IM_END, 198, IM_START, 77091, 198]


def pixels(grid, seed=0):
    t, h, w = grid
    return torch.randn(t * h * w, 1176, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pair(ckpt):
    return M.load_model(ckpt), hf_model(ckpt)


GRIDS = [  # (t, h, w) patches: windows that don't tile evenly, one and several temporal groups, tall and wide
    [(1, 12, 20)], [(2, 36, 10)], [(3, 16, 16)], [(5, 10, 6)], [(1, 8, 8), (2, 12, 20)],
]


@pytest.mark.parametrize("grids", GRIDS, ids=str)
def test_vision_features_match(pair, grids):
    ours, hf = pair
    px = torch.cat([pixels(g, i) for i, g in enumerate(grids)])
    with torch.no_grad():
        a = ours.visual(px, grids)
        b = hf.visual(px, grid_thw=torch.tensor(grids))
    assert a.shape == b.shape == (sum(t * h * w for t, h, w in grids) // 4, 64)
    assert rel_diff(a, b) <= TOL


def test_window_index_worked_example():
    # get_window_index: grid (1, 12, 20) -> llm 6 x 10, windows of 4 x 4 merged tokens
    win, cu = Q25.window_index([(1, 12, 20)], 4)
    assert cu == [0, 64, 128, 160, 192, 224, 240]
    assert win[:12].tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]
    assert sorted(win.tolist()) == list(range(60))


SPGS = [1.0, 0.5, 4 / 3, 0.995, 3.75, 2 / 1.993]  # fps 2, fps 4, fps 1.5, fractional sample fps, long clips


@pytest.mark.parametrize("spg", SPGS)
@pytest.mark.parametrize("grid", [(2, 12, 20), (16, 8, 8), (3, 6, 10)])
def test_positions_match_get_rope_index(pair, grid, spg):
    ours, hf = pair
    ids = prompt(grid[0] * grid[1] * grid[2] // 4)
    a = Q25.rope_index(ids, [grid], [spg], ours.c)
    b, delta = hf.get_rope_index(torch.tensor([ids]), None, torch.tensor([grid]), torch.tensor([spg]), torch.ones(1, len(ids)))
    assert torch.equal(a, b[:, 0])
    assert int(a.max()) + 1 - len(ids) == int(delta)


def test_positions_text_only_and_two_videos(pair):
    ours, hf = pair
    ids = prompt(0)
    assert torch.equal(Q25.rope_index(ids, [], [], ours.c), torch.arange(len(ids)).expand(3, -1))
    g1, g2 = (2, 4, 6), (3, 6, 4)
    ids = prompt(12)[:-5] + [VISION_START] + [VIDEO_PAD] * 18 + [VISION_END] + prompt(0)[-5:]
    a = Q25.rope_index(ids, [g1, g2], [0.5, 4 / 3], ours.c)
    b, _ = hf.get_rope_index(torch.tensor([ids]), None, torch.tensor([g1, g2]), torch.tensor([0.5, 4 / 3]), torch.ones(1, len(ids)))
    assert torch.equal(a, b[:, 0])


def run_ours(model, ids, grid, spg, px, steps):
    """Prefill + `steps` decode steps feeding a fixed continuation; returns the logits of every step."""
    c = model.c
    grids = [grid] if grid else []
    pos = Q25.rope_index(ids, grids, [spg] if grid else [], c)
    cache = model.new_cache(len(ids) + steps)
    with torch.no_grad():
        emb = model.visual(px, grids) if grid else None
        logits, _ = model(model.embed(torch.tensor(ids), M.Visual(emb) if grid else None), pos, cache)
        out, nxt = [logits], int(pos.max()) + 1
        for s in range(steps):
            tok = torch.tensor([1000 + 37 * s])
            logits, _ = model.decode(tok, torch.full((3, 1), nxt + s), cache)
            out.append(logits)
    return out


def run_hf(hf, ids, grid, spg, px, steps):
    out = []
    for s in range(steps + 1):
        full = ids + [1000 + 37 * j for j in range(s)]
        kw = dict(pixel_values_videos=px, video_grid_thw=torch.tensor([grid]), second_per_grid_ts=torch.tensor([spg])) if grid else {}
        with torch.no_grad():
            out.append(hf(input_ids=torch.tensor([full]), attention_mask=torch.ones(1, len(full), dtype=torch.long), **kw).logits[0, -1])
    return out


CASES = [((2, 12, 20), 1.0), ((3, 16, 16), 0.5), ((1, 8, 8), 4 / 3), ((4, 6, 10), 1.0), (None, None)]


@pytest.mark.parametrize("grid,spg", CASES, ids=str)
def test_prefill_and_decode_logits_match(pair, grid, spg):
    ours, hf = pair
    ids = prompt(grid[0] * grid[1] * grid[2] // 4 if grid else 0)
    px = pixels(grid) if grid else None
    a, b = run_ours(ours, ids, grid, spg, px, 3), run_hf(hf, ids, grid, spg, px, 3)
    for step, (x, y) in enumerate(zip(a, b)):
        assert rel_diff(x, y) <= TOL, f"step {step}"


def test_cached_decode_equals_full_forward(pair):
    """Every decode step through our KV cache equals our own full forward over the whole sequence."""
    ours, _ = pair
    grid, spg, steps = (2, 12, 20), 1.0, 4
    ids, px = prompt(120), pixels((2, 12, 20))
    stepped = run_ours(ours, ids, grid, spg, px, steps)
    c = ours.c
    with torch.no_grad():
        emb = ours.visual(px, [grid])
        for s in range(steps + 1):
            full = ids + [1000 + 37 * j for j in range(s)]
            pos = Q25.rope_index(ids, [grid], [spg], c)
            pos = torch.cat([pos, torch.arange(s).expand(3, -1) + int(pos.max()) + 1], 1)
            logits, _ = ours(ours.embed(torch.tensor(full), M.Visual(emb)), pos, ours.new_cache(len(full)))
            assert rel_diff(stepped[s], logits) <= 1e-5


def test_tied_head(ckpt_tied):
    ours, hf = M.load_model(ckpt_tied), hf_model(ckpt_tied)
    assert ours.llm.embed_tokens is None  # one table serves as embedding and head
    ids, grid = prompt(60), (2, 12, 10)
    px = pixels(grid)
    for x, y in zip(run_ours(ours, ids, grid, 1.0, px, 2), run_hf(hf, ids, grid, 1.0, px, 2)):
        assert rel_diff(x, y) <= TOL


def test_new_key_layout_and_nested_config(ckpt, ckpt_new_layout):
    a, b = M.load_model(ckpt), M.load_model(ckpt_new_layout)
    assert "text_config" in json.load(open(os.path.join(ckpt_new_layout, "config.json")))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loader_reads_every_tensor_and_dtype(ckpt):
    m = M.load_model(ckpt, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in m.parameters())
    assert not any(p.is_meta for p in m.parameters())


@pytest.mark.parametrize("break_it,msg", [
    (lambda d: os.remove(os.path.join(d, sorted(f for f in os.listdir(d) if f.startswith("model-"))[0])), "missing weight shard"),
    (lambda d: _edit_config(d, model_type="llava"), "model_type"),
    (lambda d: _edit_config(d, num_hidden_layers=3), "missing"),
    (lambda d: _edit_config(d, hidden_size=None), "hidden_size"),
    (lambda d: os.remove(os.path.join(d, "config.json")), "config.json"),
    (lambda d: _truncate_shard(d), "cannot read"),
])
def test_loader_errors(ckpt, tmp_path, break_it, msg):
    import shutil

    d = str(tmp_path / "broken")
    shutil.copytree(ckpt, d)
    break_it(d)
    with pytest.raises(M.ModelError, match=msg):
        M.load_model(d)


def test_missing_dir():
    with pytest.raises(M.ModelError, match="not found"):
        M.load_model("/nonexistent/model")


def _edit_config(d, **kw):
    p = os.path.join(d, "config.json")
    j = json.load(open(p))
    for k, v in kw.items():
        if v is None:
            j.pop(k)
        else:
            j[k] = v
    json.dump(j, open(p, "w"))


def _truncate_shard(d):
    p = os.path.join(d, sorted(f for f in os.listdir(d) if f.startswith("model-"))[-1])
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])


def test_device_map_placement(ckpt):
    c = Q25.Config.from_json(os.path.join(ckpt, "config.json"))
    devs = ["cuda:0", "cuda:1"]
    where = lambda name: M.placement(name, c, "cpu", devs)
    assert [where(f"llm.layers.{i}.gate_up") for i in range(c.n_layers)] == devs  # 2 layers over 2 GPUs
    assert where("visual.blocks.0.attn.qkv.weight") == where("llm.embed_tokens.weight") == "cuda:0"
    assert where("lm_head") == where("llm.norm.weight") == "cuda:1"
    assert M.placement("llm.layers.0.gate_up", c, "cpu", None) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(M.ModelError, match="CUDA"):
            M.load_model(ckpt, device_map="auto")


def test_split_model_runs(pair, ckpt):
    """A layer-split model (here over two CPU 'devices') gives the same logits through the per-layer cache path."""
    ours, _ = pair
    split = M.load_model(ckpt, device_map=["cpu", "cpu"])
    ids, grid = prompt(60), (2, 12, 10)
    px = pixels(grid)
    for x, y in zip(run_ours(split, ids, grid, 1.0, px, 2), run_ours(ours, ids, grid, 1.0, px, 2)):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- memory, before loading

def _stored_parameters(d):
    """Parameters a checkpoint holds, read from its safetensors headers: a tied head's stored copy (if any) is the
    embedding again, counted once."""
    from safetensors import safe_open

    cfg = json.load(open(os.path.join(d, "config.json")))
    tied = cfg.get("text_config", cfg).get("tie_word_embeddings", cfg.get("tie_word_embeddings"))
    n = 0
    for f in M.weight_files(d):
        with safe_open(f, "pt") as s:
            n += sum(math.prod(s.get_slice(k).get_shape()) for k in s.keys() if not (tied and k.endswith("lm_head.weight")))
    return n


@pytest.mark.parametrize("which", ["untied, sharded", "tied, one file", "qwen3 untied", "qwen3 tied"])
def test_memory_need_counts_the_checkpoint(which, ckpt, ckpt_tied, qwen3):
    """The weights' bytes are exact (the checkpoint's own parameter count, a tied head once, at the chosen dtype), and
    the KV cache's are what new_cache allocates for the request."""
    d = {"untied, sharded": ckpt, "tied, one file": ckpt_tied, "qwen3 untied": qwen3["dir"]["untied"],
         "qwen3 tied": qwen3["dir"]["tied"]}[which]
    skeleton, cpu = M.skeleton(d), torch.device("cpu")
    for dtype in (torch.float32, torch.bfloat16):
        need = M.memory_need(skeleton, cpu, dtype, None, prompt_tokens=300, new_tokens=50)
        assert list(need) == [cpu] and need[cpu][0] == _stored_parameters(d) * dtype.itemsize
    cache = M.load_model(d).new_cache(350)
    assert need[cpu][1] * 2 == sum(t.nbytes for t in cache.k + cache.v)  # (need is bf16's, the model fp32)


def test_memory_need_of_the_7b(tmp_path):
    """Qwen2.5-VL-7B from its config alone: 8,292,166,656 parameters (HF's published 8.292B), 33.2 GB in float32;
    with --device-map over two devices each holds its layers' weights and KV cache."""
    shutil.copy(os.path.join(os.path.dirname(__file__), "data", "qwen2.5-vl-7b-instruct.config.json"), tmp_path / "config.json")
    skeleton = M.skeleton(str(tmp_path))
    assert sum(p.numel() for p in skeleton.parameters()) == 8_292_166_656
    need = M.memory_need(skeleton, torch.device("cpu"), torch.float32, None, 1000, 1000)[torch.device("cpu")]
    assert need[0] == 4 * 8_292_166_656 and need[1] == 28 * 2 * 4 * 128 * 2000 * 4
    # a 28k-token prompt (48 frame pairs of 36x64 patches): its peak, measured on an H200 with random weights, was 27.2 GB
    # reserved by CUDA's allocator (7.35 GB allocated over the weights); weights + kv + margin say 30.6
    long = M.memory_need(skeleton, "cpu", torch.bfloat16, None, 27702, 8)[torch.device("cpu")]
    assert [round(x / 1e9, 2) for x in long] == [16.58, 1.59, 12.39]
    # batched, a loader encoding beside the decoding (eval.py): the vision encoder's 110,808 patches (4 a video token,
    # 9 x 1280 + 4 x 3420 values each) on top of the prefill's, and 6 waiting videos of 27702 x 3584 features
    ahead = M.memory_need(skeleton, "cpu", torch.bfloat16, None, 27702, 8, ahead=6)[torch.device("cpu")]
    assert ahead[2] - long[2] == 2 * 27702 * 4 * (9 * 1280 + 4 * 3420) * 2 + 6 * 27702 * 3584 * 2
    # and a controller a slot: 10 float32 copies of the last layer's 4 x 128 value rows a token
    slots = M.memory_need(skeleton, "cpu", torch.bfloat16, None, 27702, 8, slots=32, ahead=6)[torch.device("cpu")]
    assert slots[2] - ahead[2] == 31 * 10 * 4 * 128 * 27702 * 4
    split = M.memory_need(skeleton, "cpu", torch.bfloat16, [torch.device("meta"), torch.device("cpu")], 1000, 1000)
    assert sum(w for w, _, _ in split.values()) == 2 * 8_292_166_656 and [kv for _, kv, _ in split.values()] == [need[1] // 4] * 2


# ----------------------------------------------------------------------------- YaRN (rope_scaling rope_type "yarn")

# rope_scaling of a YaRN copy of the tiny checkpoint (same weights; its mrope_section added), and what each exercises.
# The tiny checkpoint has head_dim 16, rope_theta 1e6 and max_position_embeddings 32768.
YARN = {
    "model card": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096},  # 4.51.3: factor 32768/4096
    "betas and mscales": {"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0,
                          "mscale_all_dim": 0.5},  # no original: max_position_embeddings is
    "attention factor": {"rope_type": "yarn", "factor": 3.0, "attention_factor": 0.9, "original_max_position_embeddings": 256},
}


def yarn_copy(src, dst, rope):
    """A copy of checkpoint `src` (shards hard-linked) whose config's rope dict is `rope` plus its mrope_section."""
    shutil.copytree(src, dst, copy_function=lambda a, b: (os.link if a.endswith(".safetensors") else shutil.copy)(a, b))
    cfg = json.load(open(os.path.join(dst, "config.json")))
    text = cfg.get("text_config", cfg)
    text["rope_scaling"] = {**rope, "mrope_section": text["rope_scaling"]["mrope_section"]}
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    return dst


@pytest.mark.parametrize("case", YARN)
def test_yarn_matches_the_reference(pair, ckpt, tmp_path, case):
    """YaRN as transformers 4.51.3 computes it for Qwen2.5-VL (its frequencies and attention scale on cos/sin):
    prefill and decode logits equal to the reference's; they differ from the plain checkpoint's (the scaling acts),
    and the vision tower, which has a rotary of its own, is untouched."""
    plain, _ = pair
    d = yarn_copy(ckpt, str(tmp_path / "yarn"), YARN[case])
    ours, hf = M.load_model(d), hf_model(d)
    assert hf.model.rotary_emb.rope_type == "yarn" and ours.c.yarn is not None
    grid, spg = (2, 12, 20), 1.0
    ids, px = prompt(grid[0] * grid[1] * grid[2] // 4), pixels(grid)
    a, b, p = run_ours(ours, ids, grid, spg, px, 3), run_hf(hf, ids, grid, spg, px, 3), run_ours(plain, ids, grid, spg, px, 3)
    for step, (x, y, z) in enumerate(zip(a, b, p)):
        assert rel_diff(x, y) <= TOL, f"step {step}"
        assert rel_diff(z, y) > 100 * TOL, f"step {step}: YaRN changed nothing"
    with torch.no_grad():
        assert torch.equal(ours.visual(px, [grid]), plain.visual(px, [grid]))
