"""The Qwen3-VL model oracle, run in its own venv (requirements-oracle3.txt: transformers 4.57.6) by
tests/test_qwen3vl.py through conftest.oracle3:

    python tests/oracle3_model.py OUT_DIR

Writes tiny random Qwen3-VL checkpoints with save_pretrained (the official layout: untied + sharded, tied + one file)
and, for each case that qwen3_cases.py lists, the reference outputs (vision features and every DeepStack feature,
get_rope_index positions, prefill + decode-step logits, greedy `generate` tokens) into OUT_DIR/reference.pt; then,
for each YaRN rope_scaling of qwen3_cases.YARN, a copy of the untied checkpoint with it and its logits.
"""
import json
import os
import shutil
import sys

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from qwen3_cases import CHECKPOINTS, GENERATE, GRIDS, LOGITS, STOP, YARN, YARN_LOGITS, pixels, prompt


def config(tie, layers=3, vocab=151936):
    return Qwen3VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32,  # head_dim != hidden / heads
                         rms_norm_eps=1e-6, rope_theta=5e6, max_position_embeddings=32768, initializer_range=0.2,
                         rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
                         tie_word_embeddings=tie, hidden_act="silu", attention_bias=False),
        vision_config=dict(depth=3, hidden_size=64, num_heads=4, intermediate_size=96, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 2], hidden_act="gelu_pytorch_tanh",
                           initializer_range=0.2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=tie)


def main(out):
    ref = {}
    for name, (tie, shard, seed) in CHECKPOINTS.items():
        torch.manual_seed(seed)
        m = Qwen3VLForConditionalGeneration(config(tie)).float().eval()
        m.save_pretrained(os.path.join(out, name), max_shard_size="8MB" if shard else "10GB")
        m = Qwen3VLForConditionalGeneration.from_pretrained(os.path.join(out, name), torch_dtype=torch.float32,
                                                            attn_implementation="eager").eval()
        r = ref[name] = {"vision": {}, "positions": {}, "logits": {}, "generate": {}}
        with torch.no_grad():
            for grids in GRIDS:
                px = torch.cat([pixels(g, i) for i, g in enumerate(grids)])
                emb, deep = m.model.visual(px, grid_thw=torch.tensor(grids))
                r["vision"][str(grids)] = (emb, deep)
            for grid in {g for g, _ in LOGITS} | {g for g, _ in GENERATE}:
                ids = prompt(grid)
                kw = dict(video_grid_thw=torch.tensor([grid])) if grid else {}
                pos, delta = m.model.get_rope_index(torch.tensor([ids]), None, kw.get("video_grid_thw"), torch.ones(1, len(ids)))
                r["positions"][grid] = (pos[:, 0], int(delta))
            r["logits"] = logits(m, LOGITS)
            for grid, n in GENERATE:
                ids = prompt(grid, seed=1)
                kw = dict(pixel_values_videos=pixels(grid, 1), video_grid_thw=torch.tensor([grid])) if grid else {}
                m.model.rope_deltas = None
                g = m.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=n, do_sample=False, repetition_penalty=1.0, temperature=None, top_p=None,
                               top_k=None, eos_token_id=list(STOP), pad_token_id=151643, **kw)
                r["generate"][grid] = g[0, len(ids):].tolist()
    for name, rope in YARN.items():  # the untied weights under a YaRN rope_scaling
        d = os.path.join(out, name)
        shutil.copytree(os.path.join(out, "untied"), d)
        cfg = json.load(open(os.path.join(d, "config.json")))
        text = cfg["text_config"]
        text["rope_scaling"] = {**rope, "mrope_section": text["rope_scaling"]["mrope_section"], "mrope_interleaved": True}
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        m = Qwen3VLForConditionalGeneration.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
        rotary = m.model.language_model.rotary_emb
        with torch.no_grad():
            ref[name] = {"logits": logits(m, YARN_LOGITS), "rope_type": rotary.rope_type, "scale": rotary.attention_scaling}
    torch.save(ref, os.path.join(out, "reference.pt"))


def logits(m, cases):
    """Per (grid, steps): the logits of the prompt's last row, then of `steps` decode steps feeding a fixed
    continuation, each a full forward."""
    out = {}
    for grid, steps in cases:
        ids, out[grid] = prompt(grid), []
        for s in range(steps + 1):
            full = ids + [1000 + 37 * j for j in range(s)]
            kw = dict(pixel_values_videos=pixels(grid), video_grid_thw=torch.tensor([grid])) if grid else {}
            m.model.rope_deltas = None
            out[grid].append(m(input_ids=torch.tensor([full]), attention_mask=torch.ones(1, len(full), dtype=torch.long),
                               **kw).logits[0, -1].clone())
    return out


if __name__ == "__main__":
    main(sys.argv[1])
