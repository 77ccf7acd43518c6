"""vreason.generate in baseline mode against transformers 4.51.3 `generate`."""
import pytest
import torch
from conftest import ENDOFTEXT, IM_END, hf_model
from test_model import pixels, prompt

import model as M
import qwen25vl as Q25
import video as V
import vreason as R


def prepared(model, grid, spg, seed=0):
    ids = prompt(grid[0] * grid[1] * grid[2] // 4, seed=seed)
    px = pixels(grid, seed)
    vid = V.Video(px, grid, spg, {})
    with torch.no_grad():
        emb = model.visual(px, [grid])
    return R.Prepared(torch.tensor(ids), Q25.rope_index(ids, [grid], [spg], model.c), M.Visual(emb), vid, 0.0), ids, px


@pytest.mark.parametrize("grid,spg", [((2, 12, 20), 1.0), ((3, 8, 8), 0.5)])
def test_greedy_matches_hf_generate(ckpt, grid, spg):
    ours, hf = M.load_model(ckpt), hf_model(ckpt)
    prep, ids, px = prepared(ours, grid, spg)
    n = 40
    mine = [st.token for st in R.generate(ours, prep, R.Settings(max_new_tokens=n), {IM_END, ENDOFTEXT})]
    ref = hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      pixel_values_videos=px, video_grid_thw=torch.tensor([grid]), second_per_grid_ts=torch.tensor([spg]),
                      max_new_tokens=n, do_sample=False, repetition_penalty=1.0, eos_token_id=[IM_END, ENDOFTEXT],
                      pad_token_id=ENDOFTEXT)[0, len(ids):].tolist()
    assert len(mine) == len(ref) >= 32
    assert mine == ref


def test_repetition_penalty_matches_hf(ckpt):
    """With --repetition-penalty the scores follow HF's processor (over every id so far, prompt included)."""
    ours, hf = M.load_model(ckpt), hf_model(ckpt)
    prep, ids, px = prepared(ours, (2, 8, 8), 1.0, seed=3)
    n = 32
    mine = [st.token for st in R.generate(ours, prep, R.Settings(max_new_tokens=n, repetition_penalty=1.3), {IM_END, ENDOFTEXT})]
    ref = hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      pixel_values_videos=px, video_grid_thw=torch.tensor([(2, 8, 8)]), second_per_grid_ts=torch.tensor([1.0]),
                      max_new_tokens=n, do_sample=False, repetition_penalty=1.3, eos_token_id=[IM_END, ENDOFTEXT], pad_token_id=ENDOFTEXT)
    assert mine == ref[0, len(ids):].tolist()


def test_entropy_is_of_the_choosing_logits(ckpt):
    ours = M.load_model(ckpt)
    prep, ids, px = prepared(ours, (2, 8, 8), 1.0)
    steps = list(R.generate(ours, prep, R.Settings(max_new_tokens=3), set()))
    cache = ours.new_cache(len(ids) + 1)
    with torch.no_grad():
        logits, _ = ours(ours.embed(prep.ids, prep.visual), prep.pos, cache)
    p = torch.softmax(logits.double(), -1)
    assert abs(steps[0].entropy - float(-(p * p.log()).sum())) < 1e-4
    assert steps[0].token == int(logits.argmax())


def test_sampling_is_seeded(ckpt):
    ours = M.load_model(ckpt)
    prep, _, _ = prepared(ours, (2, 8, 8), 1.0)
    run = lambda seed: [st.token for st in R.generate(ours, prep, R.Settings(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=seed), set())]
    assert run(1) == run(1)
    assert run(1) != run(2)
