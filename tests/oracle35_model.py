"""The Qwen3.5 model oracle, run in its own venv (requirements-oracle35.txt: transformers 5.23.0, pure-torch Gated
DeltaNet, no fla / causal-conv1d) the way conftest.oracle3 runs the Qwen3-VL one:

    python tests/oracle35_model.py OUT_DIR

Writes tiny random Qwen3.5 checkpoints with save_pretrained (the official layout: untied + sharded, tied + one file;
8 layers, 3 Gated DeltaNet : 1 gated full attention, the last one full; head_dim != hidden / heads; partial rotary with
interleaved M-RoPE; key heads fewer than value heads) and, for each case of qwen35_cases.py, the reference outputs into
OUT_DIR/reference.pt, fp32, eager attention:
  vision     {str(grids): (merged features, pre-merger hidden states)}
  positions  {key: (get_rope_index's 3 rows [3, L], delta, the 4 rows generate feeds the text model [4, L])}
  logits     {(grids, q_len): {"full": [prefill, step 1..n] last-token logits, each a full forward (chunked rule
              over the whole sequence), "cached": the same from one prefill + n single-token steps on the model's own
              DynamicCache (recurrent rule), "hidden": every layer's prefill hidden states, "state": per layer the
              cache after prefill, ("linear", conv_state [conv_dim, kernel], recurrent_state [H_v, d_k, d_v]) or
              ("full", keys, values)}}
  generate   {(grids, q_len): greedy `generate` tokens}
  config     the config.json save_pretrained wrote
Norm weights, biases, A_log and dt_bias are perturbed after init (the zero-centred RMSNorm starts at w = 0, which
would let a port that ignores the weights pass).
"""
import json
import os
import sys
import time

import torch
from transformers import DynamicCache, Qwen3_5Config, Qwen3_5ForConditionalGeneration

from qwen35_cases import (CHECKPOINTS, GENERATE, GRIDS, LOGITS, POSITIONS, STOP, ENDOFTEXT, IPAD, VEND, VPAD, VSTART,
                          as_list, continuation, mm_token_type_ids, pixels, prompt)

LAYERS = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 2


def config(tie, vocab=248320):
    return Qwen3_5Config(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=len(LAYERS),
                         layer_types=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=64,                                  # != hidden / heads (16)
                         linear_num_key_heads=2, linear_num_value_heads=4,   # keys repeated to the value heads
                         linear_key_head_dim=16, linear_value_head_dim=24, linear_conv_kernel_dim=4,
                         rms_norm_eps=1e-6, max_position_embeddings=32768, initializer_range=0.2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                          "mrope_section": [3, 3, 2], "mrope_interleaved": True},  # 16 of 64 dims rotate
                         tie_word_embeddings=tie, hidden_act="silu", attention_bias=False),
        vision_config=dict(depth=3, hidden_size=64, num_heads=4, intermediate_size=96, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=64, hidden_act="gelu_pytorch_tanh", initializer_range=0.2),
        image_token_id=IPAD, video_token_id=VPAD, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=tie)


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def inputs(grids, seed=0, q_len=7):
    ids = prompt(grids, seed=seed, q_len=q_len)
    kw = {}
    if grids is not None:
        gl = as_list(grids)
        kw = dict(pixel_values_videos=torch.cat([pixels(g, seed + i) for i, g in enumerate(gl)]),
                  video_grid_thw=torch.tensor(gl), mm_token_type_ids=torch.tensor([mm_token_type_ids(ids)]))
    return ids, kw


def layer_state(cache, layer_type, i):
    layer = cache.layers[i]
    if layer_type == "linear_attention":
        return ("linear", layer.conv_states[0][0].clone(), layer.recurrent_states[0][0].clone())
    return ("full", layer.keys[0].clone(), layer.values[0].clone())


def run(m):
    r = {"vision": {}, "positions": {}, "logits": {}, "generate": {}}
    for grids in GRIDS:
        px = torch.cat([pixels(g, i) for i, g in enumerate(grids)])
        out = m.model.visual(px, grid_thw=torch.tensor(grids))
        r["vision"][str(grids)] = (out.pooler_output, out.last_hidden_state)
    for grids, q_len in POSITIONS:
        ids, kw = inputs(grids, q_len=q_len)
        t = torch.tensor([ids])
        if grids is None:
            pos3, delta = torch.arange(len(ids)).expand(3, -1), 0
        else:
            pos, delta = m.model.get_rope_index(t, kw["mm_token_type_ids"], video_grid_thw=kw["video_grid_thw"].clone(),
                                                attention_mask=torch.ones_like(t))
            pos3, delta = pos[:, 0], int(delta)
        model_kwargs = {"input_ids": t, "attention_mask": torch.ones_like(t), **kw}
        model_kwargs.pop("pixel_values_videos", None)
        pos4 = m._prepare_position_ids_for_generation(t, model_kwargs)
        r["positions"][(str(grids), q_len)] = (pos3, delta, pos4[:, 0])
    for grids, steps, q_len in LOGITS:
        ids, kw = inputs(grids, q_len=q_len)
        cont, full, cached = continuation(steps), [], []
        for s in range(steps + 1):          # full forwards over prompt + s continuation tokens
            seq = ids + cont[:s]
            kws = dict(kw, mm_token_type_ids=torch.tensor([mm_token_type_ids(seq)])) if kw else {}
            m.model.rope_deltas = None
            full.append(m(input_ids=torch.tensor([seq]), use_cache=False, **kws).logits[0, -1].clone())
        m.model.rope_deltas = None
        cache = DynamicCache(config=m.config)
        out = m(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, output_hidden_states=True, **kw)
        cached.append(out.logits[0, -1].clone())
        hidden = [h[0].clone() for h in out.hidden_states]
        state = [layer_state(cache, lt, i) for i, lt in enumerate(m.config.text_config.layer_types)]
        for tok in cont:                    # one token at a time on the model's own cache (no mask: no padding)
            out = m(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
            cached.append(out.logits[0, -1].clone())
        diff = max(float((a - b).abs().max()) for a, b in zip(full, cached))
        print(f"  logits {grids} len {len(ids)}: cached vs full max |diff| {diff:.2e}", file=sys.stderr)
        r["logits"][(str(grids), q_len)] = dict(full=full, cached=cached, hidden=hidden, state=state)
    for grids, n, q_len in GENERATE:
        ids, kw = inputs(grids, seed=1, q_len=q_len)
        m.model.rope_deltas = None
        g = m.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       max_new_tokens=n, do_sample=False, repetition_penalty=1.0, temperature=None,
                       top_p=None, top_k=None, eos_token_id=list(STOP), pad_token_id=ENDOFTEXT, **kw)
        r["generate"][(str(grids), q_len)] = g[0, len(ids):].tolist()
    return r


def main(out):
    ref = {}
    for name, (tie, shard, seed) in CHECKPOINTS.items():
        t0 = time.time()
        torch.manual_seed(seed)
        m = Qwen3_5ForConditionalGeneration(config(tie)).float().eval()
        perturb(m, seed)
        path = os.path.join(out, name)
        m.save_pretrained(path, max_shard_size="8MB" if shard else "10GB")
        m = Qwen3_5ForConditionalGeneration.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            ref[name] = run(m)
        ref[name]["config"] = json.load(open(os.path.join(path, "config.json")))
        print(f"{name}: {time.time() - t0:.1f} s", file=sys.stderr)
    torch.save(ref, os.path.join(out, "reference.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
