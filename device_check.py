"""The device check: one call on a GPU machine, one table (issue 12).

    python device_check.py                 # CUDA: every section (4-7 not yet timed on a GPU)
    python device_check.py --skip batch,eval,speed35,parity35      # without them: ~8 minutes on a bare GPU
    python device_check.py --skip long,parity,attention,cli,speed35,parity35   # speed, then batch.py's (6, 7)
    python device_check.py --skip speed,long,parity,attention,cli   # the Qwen3.5 sections alone
    python device_check.py --device cpu    # dry run: every step on scaled-down shapes (its timings mean nothing)

What it checks, on random weights written by transformers' save_pretrained (the official layout) and loaded by ours (it
runs 3's speed rows and video-length prompt first, so that a run cut short keeps the targets, then 1, 3's attention
A/B, and 2, then 4 and 5; each section's rows and device_check.json are written when it ends):
  1. parity, ours vs transformers, fp32 and bf16, both families (Qwen2.5-VL, Qwen3-VL), a mid-size checkpoint: vision
     features (and DeepStack's), prefill + 3 decode-step logits, greedy tokens (32); and, Qwen3-VL fp32, --compile
     (CUDA graphs, Triton products) against eager: logits and V-Reason's tokens;
  2. the CLI end to end in all three modes (and with --compile in the dry run; needs PyAV: carry its wheel, README);
  3. Qwen2.5-VL-7B proportions in bf16: decode ms/token eager and compiled (torch.compile + CUDA graphs) against the
     bandwidth floor measured in the same run (a large device-to-device copy), transformers' generate on the same
     weights, V-Reason k=2 and Lite against the compiled baseline, and peak memory; then at a video-length prompt
     (4096 video tokens) compiled decode and V-Reason k=2, and the decode attention alone, SDPA's memory-efficient
     kernel against the written-out sums the compiled step runs, at 512 rows and at that length;
  4. (speed35) Qwen3.5-4B proportions in bf16 (all 32 layers, 24 Gated DeltaNet + 8 gated full attention; 2 vision
     blocks): compiled decode against the bandwidth floor, where a token reads every weight and the head, reads and
     writes the Gated DeltaNet layers' state, and reads the full-attention layers' K/V rows; eager decode and
     transformers' generate beside it;
  5. (parity35) parity as in 1 for Qwen3.5 (its linear layers' chunked prefill and recurrent decode included), fp32
     and bf16, a mid-size checkpoint;
  6. (batch) the compiled 7B of 3 through batch.py: tokens/s at B = 8, 32, 64 against compiled batch 1, peak
     memory, V-Reason k=2 at B = 32 against the baseline at B = 32;
  7. (eval) eval.py end to end on 256 synthetic 2-second clips (baseline, 64 new tokens, eager) on 3's checkpoint:
     questions an hour at the default --batch-size against --batch-size 1, and the share of the time decoding
     waited for the next video (read and encoded by eval.py's loader thread at batch > 1; needs PyAV); then the
     default again with --compile: it must run (the loader's stream beside the capture of CUDA graphs).
Targets (H100, bf16, batch 1): compiled decode <= 1.25x the floor, >= 3x transformers' tokens/s, V-Reason k=2 <= 1.15x
baseline per token, peak memory <= 1.02x baseline; Qwen3.5 compiled decode <= 1.3x its floor; batched (issue 20):
>= 16x batch 1's tokens/s at B = 32, >= 24x at 64, V-Reason k=2 <= 1.20x the baseline at B = 32, eval >= 6x the
questions an hour of batch 1. transformers is needed
here only (the machine's 5.x: its Qwen2.5-VL wants mm_token_type_ids and casts second_per_grid to an integer, so the
prompts use 1.0 s per group, where both rules agree; Qwen3.5 needs a 5.x that has Qwen3_5ForConditionalGeneration, and
runs its pure-torch Gated DeltaNet where fla is not installed). Writes device_check.json (and $OUT/device_check.json
when $OUT is set).
"""
import argparse
import gc
import importlib.util
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import namedtuple

import torch

import batch as B
import model as M
import video as V
import vreason as R

ROOT = os.path.dirname(os.path.abspath(__file__))
# a family's special ids, as its tokenizer has them
Ids = namedtuple("Ids", "im_start im_end endoftext vstart vend ipad vpad")
QWEN2_IDS = Ids(151644, 151645, 151643, 151652, 151653, 151655, 151656)  # Qwen2.5-VL's and Qwen3-VL's tokenizer
IDS = {"qwen2_5_vl": QWEN2_IDS, "qwen3_vl": QWEN2_IDS, "qwen3_5": Ids(248045, 248046, 248044, 248053, 248054, 248056, 248057)}
SPECIAL = {"<|endoftext|>": QWEN2_IDS.endoftext, "<|im_start|>": QWEN2_IDS.im_start, "<|im_end|>": QWEN2_IDS.im_end,
           "<|vision_start|>": QWEN2_IDS.vstart, "<|vision_end|>": QWEN2_IDS.vend, "<|image_pad|>": QWEN2_IDS.ipad,
           "<|video_pad|>": QWEN2_IDS.vpad}  # (the CLI's checkpoint is a Qwen3-VL)
# (hidden, layers, heads, kv heads, head dim, intermediate, vocab, tied), (vision depth, width, heads, intermediate),
# and for Qwen3.5 its Gated DeltaNet (key heads, value heads, key dim, value dim, conv kernel); Qwen3.5's head_dim is
# 256 at every size, and its layers go 3 linear : 1 full attention, so a layer count is a multiple of 4
SHAPES = {
    "parity": ((1024, 4, 8, 2, 128, 2816, 151936, False), (4, 512, 8, 1024)),
    "7b": ((3584, 28, 28, 4, 128, 18944, 152064, False), (2, 1280, 16, 3420)),  # Qwen2.5-VL-7B's LM; 2 vision blocks
    "parity35": ((1024, 4, 4, 2, 256, 2816, 248320, False), (4, 512, 8, 1024), (4, 8, 128, 128, 4)),
    "4b35": ((2560, 32, 16, 4, 256, 9216, 248320, True), (2, 1024, 16, 4096), (16, 32, 128, 128, 4)),  # Qwen3.5-4B's LM
    "parity-dry": ((128, 2, 4, 2, 32, 256, 151936, False), (2, 64, 4, 96)),
    "7b-dry": ((256, 2, 4, 2, 64, 512, 152064, False), (2, 64, 4, 96)),
    "parity35-dry": ((128, 4, 2, 1, 256, 256, 248320, False), (2, 64, 4, 96), (2, 4, 32, 32, 4)),
    "4b35-dry": ((256, 4, 2, 1, 256, 512, 248320, True), (2, 64, 4, 96), (2, 4, 64, 64, 4)),
}


# ----------------------------------------------------------------------------- checkpoints and inputs

def hf_model(family, shape, std, dev, dtype, seed=0):
    """A random-weight transformers model of the family (uniform weights of the given std, norms 1, biases 0), built
    in place on the device."""
    import transformers

    try:
        from transformers.initialization import no_init_weights  # 5.x
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # 4.x

    (D, L, H, KV, hd, I, vocab, tied), (vd, vw, vh, vi), *linear = SHAPES[shape]
    text = dict(vocab_size=vocab, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
                intermediate_size=I, rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=tied)
    vision = dict(depth=vd, hidden_size=vw, num_heads=vh, intermediate_size=vi, out_hidden_size=D, spatial_merge_size=2,
                  temporal_patch_size=2)
    k = IDS[family]
    ids = dict(image_token_id=k.ipad, video_token_id=k.vpad, vision_start_token_id=k.vstart, vision_end_token_id=k.vend,
               tie_word_embeddings=tied)
    if family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [hd // 8, 3 * hd // 16, 3 * hd // 16], "rope_theta": 1e6}
        vision.update(fullatt_block_indexes=[vd - 1], tokens_per_second=2, window_size=112, patch_size=14, hidden_act="silu")
        cls, cfg = transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig
    elif family == "qwen3_vl":
        s = hd // 2
        text.update(head_dim=hd, rope_parameters={"rope_type": "default", "mrope_section": [s - 2 * (3 * s // 8), 3 * s // 8, 3 * s // 8],
                                                  "mrope_interleaved": True, "rope_theta": 5e6})
        vision.update(patch_size=16, num_position_embeddings=576, deepstack_visual_indexes=list(range(min(3, vd))),
                      hidden_act="gelu_pytorch_tanh")
        cls, cfg = transformers.Qwen3VLForConditionalGeneration, transformers.Qwen3VLConfig
    elif family == "qwen3_5":  # layer_types: the config's rule, every 4th layer full attention (the last too)
        if not hasattr(transformers, "Qwen3_5ForConditionalGeneration"):
            raise RuntimeError(f"transformers {transformers.__version__} has no Qwen3.5: carry one that does "
                               f"(requirements-oracle35.txt: 5.23.0)")
        (lk, lv, dk, dv, kernel), = linear
        text.update(head_dim=hd, linear_num_key_heads=lk, linear_num_value_heads=lv, linear_key_head_dim=dk,
                    linear_value_head_dim=dv, linear_conv_kernel_dim=kernel,
                    rope_parameters={"rope_type": "default", "mrope_section": [11, 11, 10], "mrope_interleaved": True,
                                     "partial_rotary_factor": 0.25, "rope_theta": 1e7})  # 64 of the 256 dims turn
        vision.update(patch_size=16, num_position_embeddings=576, hidden_act="gelu_pytorch_tanh")
        cls, cfg = transformers.Qwen3_5ForConditionalGeneration, transformers.Qwen3_5Config
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    try:  # built in its dtype, on the device: a 7B never exists in float32
        torch.set_default_dtype(dtype)
        with torch.device(dev), no_init_weights():
            m = cls(cfg(text_config=text, vision_config=vision, **ids))
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.uniform_(-std * 3**0.5, std * 3**0.5)
    m.tie_weights()
    return m.eval()


def inputs(family, grid, seed=0):
    """Prompt ids laid out as the family's processor does (Qwen3-VL: a timestamp and a block per frame group; Qwen3.5:
    those inside the template's own vision pair, the answer opened with <think>), random normalized patches, and our
    Video for them. 1.0 s per group: the one rule transformers 5.x and Qwen agree on."""
    g = torch.Generator().manual_seed(seed)
    k, (t, h, w) = IDS[family], grid
    patch = 14 if family == "qwen2_5_vl" else 16
    words = lambda n: torch.randint(0, 151000, (n,), generator=g).tolist()  # (below both vocabularies' special ids)
    user, assistant, think = (846, 74455, [248068, 198]) if family == "qwen3_5" else (872, 77091, [])
    block = lambda n: [k.vstart] + [k.vpad] * n + [k.vend]
    if family == "qwen2_5_vl":
        video = block(t * h * w // 4)
        head = [k.im_start, 8948, 198] + words(6) + [k.im_end, 198, k.im_start, user, 198]
    else:
        video = sum(([27] + words(3) + [29] + block(h * w // 4) for _ in range(t)), [])
        video = [k.vstart] + video + [k.vend] if family == "qwen3_5" else video
        head = [k.im_start, user, 198]
    ids = head + video + words(9) + [k.im_end, 198, k.im_start, assistant, 198] + think
    px = torch.randn(t * h * w, 3 * 2 * patch * patch, generator=g)
    return ids, px, V.Video(px, grid, 1.0, {}, tuple(float(i) for i in range(t)), M.family(family).FAMILY)


def hf_kwargs(hf, ids, px, grid, dev):
    """The inputs transformers' forward / generate want for one video (and what only some versions take)."""
    ids_t = torch.tensor([ids], device=dev)
    kw = dict(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), pixel_values_videos=px.to(dev, hf.dtype),
              video_grid_thw=torch.tensor([grid], device=dev))
    takes = inspect.signature(hf.forward).parameters
    if "mm_token_type_ids" in takes:  # transformers >= 5.3: 0 text, 1 image, 2 video
        kw["mm_token_type_ids"] = (ids_t == IDS[hf.config.model_type].vpad).int() * 2
    if "second_per_grid_ts" in takes:
        kw["second_per_grid_ts"] = torch.tensor([1.0], device=dev)
    return kw


def hf_vision(out):  # transformers' vision output -> (merged features, DeepStack features), across versions
    if torch.is_tensor(out):  # 4.x Qwen2.5-VL
        return out, []
    if isinstance(out, tuple):  # 4.x Qwen3-VL
        return out
    return out.pooler_output, getattr(out, "deepstack_features", None) or []  # 5.x: an output object


def rel(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def save(hf, path):
    hf.save_pretrained(path, max_shard_size="5GB")
    return path


# ----------------------------------------------------------------------------- 1. parity

def parity(family, dtype, dev, shape, tmp):
    hf = hf_model(family, shape, 0.2 if dtype == torch.float32 else 0.05, dev, dtype)
    stop = {IDS[family].im_end, IDS[family].endoftext}
    ours = M.load_model(save(hf, os.path.join(tmp, f"{family}-{dtype}")), dev, dtype)
    grid = (2, 12, 16)
    ids, px, video = inputs(family, grid)
    out = {}
    with torch.no_grad():
        mine = ours.encode_video(video)
        emb, deep = hf_vision(hf.model.visual(px.to(dev, dtype), grid_thw=torch.tensor([grid], device=dev)))
        out["vision"] = max([rel(mine.embeds, emb)] + [rel(a, b) for a, b in zip(mine.deepstack, deep)])
        # prefill + 3 decode steps (a fixed continuation) vs full forwards over the growing sequence
        # the decoder from here on gets transformers' vision features: in fp32 on CUDA a random vision tower amplifies
        # rounding (Qwen2.5-VL: vision 4e-5 apart gave logits 1.5e-3 apart, both 7-8e-4 from a float64 CPU run)
        prep = R.Prepared(torch.tensor(ids, device=dev), ours.positions(ids, video).to(dev), M.Visual(emb, list(deep)), video, 0.0)
        mine = steps(ours, prep, 4)
        diffs = []
        for s in range(4):
            full = ids + [1000 + 37 * j for j in range(s)]
            hf.model.rope_deltas = None
            ref = hf(**hf_kwargs(hf, full, px, grid, dev)).logits[0, -1]
            diffs.append(rel(mine[s], ref))
        out["logits"] = max(diffs)
    n = 32
    mine_t = [st.token for st in R.generate(ours, prep, R.Settings(max_new_tokens=n), stop)]
    if dtype == torch.float32 and family == "qwen3_vl":  # --compile (CUDA graphs, Triton products) vs eager: one family
        # (the decoder is shared; a compile with coordinate-descent tuning costs ~45 s on a bare machine)
        vr = R.Settings(max_new_tokens=n, mode="vreason")
        eager_t = [st.token for st in R.generate(ours, prep, vr, stop)]
        torch._dynamo.reset()  # (the graphs of a model compiled before in this process are of no use here)
        ours.compile_decode()
        out["compiled"] = max(rel(a, b) for a, b in zip(steps(ours, prep, 4), mine))
        comp_t = [st.token for st in R.generate(ours, prep, vr, stop)]
        out.update(compiled_vreason_same=agree(comp_t, eager_t), compiled_vreason_of=len(eager_t))
    hf.model.rope_deltas = None
    with torch.no_grad():
        ref_t = hf.generate(**hf_kwargs(hf, ids, px, grid, dev), max_new_tokens=n, do_sample=False, temperature=None,
                            top_p=None, top_k=None, eos_token_id=sorted(stop), pad_token_id=IDS[family].endoftext)[0, len(ids):].tolist()
    out.update(greedy_same=agree(mine_t, ref_t), greedy_of=len(ref_t))
    return out


def agree(a, b):  # how many tokens two runs share before they first differ
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def steps(model, prep, n):
    """Logits of the prefill and then n - 1 decode steps of a fixed continuation (1000, 1037, ...), fp32."""
    cache = model.new_cache(len(prep.ids) + n)
    with torch.no_grad():
        logits, _ = model.prefill(prep.ids, prep.pos, prep.visual, cache)
        out, nxt = [logits.float()], int(prep.pos.max()) + 1
        for s in range(n - 1):
            logits, _ = model.decode(torch.tensor([1000 + 37 * s], device=prep.ids.device),
                                     torch.full((3, 1), nxt + s, device=prep.ids.device), cache)
            out.append(logits.float())
    return out


# ----------------------------------------------------------------------------- 2. the CLI

def char_tokenizer(d):  # a character-level tokenizer.json with the Qwen2 special tokens, into checkpoint d
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(set(map(chr, range(32, 127))) | {"\n"}))}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel({**vocab, **SPECIAL}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.add_special_tokens([AddedToken(k, special=True) for k in SPECIAL])
    tok.save(os.path.join(d, "tokenizer.json"))


def cli(dev, tmp, dtype):
    if importlib.util.find_spec("av") is None:  # the CLI decodes the clip
        return {"error": "PyAV is not installed here: carry its wheel (README, 'The device check')"}
    d = save(hf_model("qwen3_vl", "parity-dry", 0.2, dev, torch.float32), os.path.join(tmp, "cli"))
    char_tokenizer(d)
    out = {}
    for mode, extra in (("baseline", []), ("vreason", []), ("lite", [])) + ((("vreason", ["--compile"]),) if dev.type == "cpu" else ()):
        j = os.path.join(tmp, "cli.json")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "vreason.py"), "--video", os.path.join(ROOT, "assets", "clip.mp4"),
                            "--q", "What happens after the ball is thrown?", "--model", d, "--mode", mode, "--max-new-tokens", "8",
                            "--device", dev.type, "--dtype", str(dtype).replace("torch.", ""), "--json", j, "--quiet", *extra],
                           capture_output=True, text=True, timeout=300)
        rec = json.load(open(j)) if r.returncode == 0 else {}
        out[" ".join([mode, *extra])] = {"rc": r.returncode, "tokens": len(rec.get("token_ids", [])), "err": r.stderr.strip()[-300:],
                                      "updates": rec.get("vreason", {}).get("updates")}
    return out


# ----------------------------------------------------------------------------- 3. speed at 7B proportions

def bandwidth(dev, gib):
    """Bytes per second of a large device-to-device copy, bytes read plus bytes written (the decode floor's rate)."""
    n = int(gib * 2**30 // 4)
    a, b = torch.empty(n, device=dev), torch.empty(n, device=dev)
    a.uniform_()
    times = []
    for _ in range(6):
        sync(dev)
        t0 = time.perf_counter()
        b.copy_(a)
        sync(dev)
        times.append(time.perf_counter() - t0)
    del a, b
    return 2 * n * 4 / statistics.median(times[1:])


def token_bytes(model, rows=0):
    """Bytes a decode step must move at least: every decoder weight, the final norm and the head read once, a fixed-state
    layer's state (Gated DeltaNet: its cache at zero tokens) read and written back, and `rows` K/V rows of each layer
    that keeps them (its cache at one token, a row). The floor is this over the copy bandwidth."""
    esize = model.lm_head.element_size()
    weights = sum(p.numel() * p.element_size() for p in [*model.llm.layers.parameters(), model.llm.norm.weight, model.lm_head])
    fixed = sum(layer.cache_bytes(0, esize) for layer in model.llm.layers)
    row = sum(layer.cache_bytes(1, esize) for layer in model.llm.layers if layer.holds_kv)
    return weights + 2 * fixed + rows * row


def per_token(stamps):  # seconds per token between the first and the last generated token
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def ours_run(model, prep, n, dev, **kw):
    torch.cuda.reset_peak_memory_stats(dev) if dev.type == "cuda" else None
    stamps = []
    for _ in R.generate(model, prep, R.Settings(max_new_tokens=n, **kw), set()):
        stamps.append(time.perf_counter())  # the token was read back (the next step is already queued behind it)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    return per_token(stamps), peak


class Stamps:  # a transformers streamer: put() sees the prompt once, then each new token
    def __init__(self):
        self.t, self.first = [], True

    def put(self, x):
        if not self.first:
            self.t.append(time.perf_counter())
        self.first = False

    def end(self):
        pass


def checkpoint_pair(family, shape, dev, dtype, tmp, say):
    """transformers' random model of the family (built on the device), written by save_pretrained and loaded by ours."""
    hf = hf_model(family, shape, 0.02, dev, dtype)
    path = save(hf, os.path.join(tmp, shape))
    say("written")
    ours = M.load_model(path, dev, dtype)
    say("loaded")
    return hf, ours


def prepare(model, grid, dev):  # a prompt around one video of this grid: its ids, patches, and what generate takes
    ids, px, video = inputs(model.c.model_type, grid)
    with torch.no_grad():
        prep = R.Prepared(torch.tensor(ids, device=dev), model.positions(ids, video).to(dev), model.encode_video(video), video, 0.0)
    return ids, px, prep


def hf_generate_s(hf, ids, px, grid, n, dev):
    """transformers' generate on the same prompt, greedy, n tokens after a warm-up of 8: seconds a token."""
    with torch.no_grad():
        for k in (8, n):
            st = Stamps()
            hf.model.rope_deltas = None
            hf.generate(**hf_kwargs(hf, ids, px, grid, dev), max_new_tokens=k, do_sample=False, temperature=None, top_p=None,
                        top_k=None, eos_token_id=hf.config.get_text_config().vocab_size,  # (an id it cannot generate)
                        pad_token_id=IDS[hf.config.model_type].endoftext, streamer=st)
    return per_token(st.t)


def free(dev):
    gc.collect()
    torch.cuda.empty_cache() if dev.type == "cuda" else None


def eager_then_compiled(ours, prep, n, dev, res, say, mode="baseline"):
    """Eager decode (after a warm-up), then compile_decode() and a first run in `mode` (vreason compiles both variants
    of the step, baseline only the plain one): res gets eager_s, compile_s and compiled_vs_eager (4 steps' logits)."""
    ours_run(ours, prep, 8, dev)  # warm-up
    eager_logits = steps(ours, prep, 4)
    res["eager_s"], _ = ours_run(ours, prep, n, dev)
    say(f"eager {1e3 * res['eager_s']:.2f} ms/token")
    t1 = time.perf_counter()
    torch._dynamo.reset()
    ours.compile_decode()
    ours_run(ours, prep, 8, dev, mode=mode)  # the compile (and the graphs' capture)
    res["compile_s"] = time.perf_counter() - t1
    res["compiled_vs_eager"] = max(rel(a, b) for a, b in zip(steps(ours, prep, 4), eager_logits))
    say(f"compiled in {res['compile_s']:.0f} s; logits vs eager {res['compiled_vs_eager']:.1e}")


def speed(dev, dtype, shape, n, tmp, res, keep):
    """Fills res as it goes, so that what was measured survives a later failure; leaves the compiled model in keep for
    the video-length prompt."""
    t0 = time.perf_counter()
    say = lambda what: print(f"   speed [{time.perf_counter() - t0:4.0f}s] {what}", flush=True)
    hf, ours = checkpoint_pair("qwen2_5_vl", shape, dev, dtype, tmp, say)
    c = ours.c
    bytes_token = token_bytes(ours)  # (the prompt's 286 K/V rows: 0.1% of it, left out as before)
    res["lm_params"] = sum(p.numel() for k, p in ours.named_parameters() if not k.startswith("visual."))
    res["bandwidth"] = bandwidth(dev, 4 if dev.type == "cuda" else 0.25)
    res["floor_s"] = bytes_token / res["bandwidth"]
    say(f"floor {1e3 * res['floor_s']:.2f} ms ({bytes_token / 1e9:.2f} GB a token at {res['bandwidth'] / 1e12:.2f} TB/s)")
    grid = (4, 16, 16)  # 256 video tokens
    ids, px, prep = prepare(ours, grid, dev)
    # transformers first, then freed: the peak memory below is ours alone
    res["hf_s"] = hf_generate_s(hf, ids, px, grid, n, dev)
    say(f"transformers {1e3 * res['hf_s']:.2f} ms/token")
    del hf
    free(dev)
    eager_then_compiled(ours, prep, n, dev, res, say, mode="vreason")
    for key, kw in (("base", {}), ("vreason_k2", dict(mode="vreason", update_every=2)), ("lite", dict(mode="lite"))):
        runs = [ours_run(ours, prep, n, dev, **kw) for _ in range(3)]
        res[key + "_s"] = statistics.median(r[0] for r in runs)
        res[key + "_peak"] = max(r[1] for r in runs)
        say(f"{key} {1e3 * res[key + '_s']:.2f} ms/token, peak {res[key + '_peak'] / 2**30:.2f} GiB")
    keep.update(model=ours, c=c, bandwidth=res["bandwidth"])


def speed_long(dev, n, res, keep):
    """The compiled model of speed() at a video-length prompt (4096 video tokens: 32 frames at Video-R1's 256 tokens a
    frame pair): the cache grows past 512 rows (a recompile, then dynamic in the length), and attention is a larger
    share of a token."""
    t0 = time.perf_counter()
    ours = keep["model"]
    grid = (4, 32, 32) if dev.type == "cpu" else (16, 32, 32)
    ids, px, prep = prepare(ours, grid, dev)
    ours_run(ours, prep, 8, dev, mode="vreason")  # the recompile, both variants of the step
    res["long_compile_s"] = time.perf_counter() - t0
    res["long_rows"] = len(ids) + n // 2  # valid cache rows, on average over the run
    res["long_floor_s"] = token_bytes(ours, res["long_rows"]) / keep["bandwidth"]
    print(f"   long [{time.perf_counter() - t0:4.0f}s] recompiled; floor {1e3 * res['long_floor_s']:.2f} ms", flush=True)
    for key, kw in (("long_s", {}), ("long_vreason_k2_s", dict(mode="vreason", update_every=2))):
        res[key] = statistics.median(ours_run(ours, prep, n, dev, **kw)[0] for _ in range(3))
        print(f"   long [{time.perf_counter() - t0:4.0f}s] {len(ids)}-token prompt, {kw.get('mode', 'baseline')}: "
              f"{1e3 * res[key]:.2f} ms/token", flush=True)
    res["attention_rows"] = [512, len(ids) + n]  # for the attention A/B after it


def speed35(dev, dtype, shape, n, tmp, res):
    """Qwen3.5-4B proportions: compiled decode against its floor (token_bytes: weights, head, the Gated DeltaNet state
    read and written, the full-attention layers' K/V rows, on average over the run), eager decode and transformers'
    generate beside it. Baseline only: V-Reason would compile the step's second variant too (time the call lacks)."""
    t0 = time.perf_counter()
    say = lambda what: print(f"   speed35 [{time.perf_counter() - t0:4.0f}s] {what}", flush=True)
    hf, ours = checkpoint_pair("qwen3_5", shape, dev, dtype, tmp, say)
    res["lm_params"] = sum(p.numel() for k, p in ours.named_parameters() if not k.startswith("visual."))
    grid = (4, 16, 16)  # 256 video tokens, as speed()'s prompt
    ids, px, prep = prepare(ours, grid, dev)
    res["rows"] = len(ids) + n // 2  # valid cache rows, on average over the run
    res["bytes_token"] = token_bytes(ours, res["rows"])
    res["bandwidth"] = bandwidth(dev, 4 if dev.type == "cuda" else 0.25)
    res["floor_s"] = res["bytes_token"] / res["bandwidth"]
    say(f"floor {1e3 * res['floor_s']:.2f} ms ({res['bytes_token'] / 1e9:.2f} GB a token at {res['bandwidth'] / 1e12:.2f} TB/s)")
    res["hf_s"] = hf_generate_s(hf, ids, px, grid, n, dev)
    say(f"transformers {1e3 * res['hf_s']:.2f} ms/token")
    del hf
    free(dev)
    eager_then_compiled(ours, prep, n, dev, res, say)
    res["base_s"] = statistics.median(ours_run(ours, prep, n, dev)[0] for _ in range(3))
    say(f"compiled {1e3 * res['base_s']:.2f} ms/token")


# ----------------------------------------------------------------------------- 6. batched decoding (batch.py)

def batch_step_s(model, prep, n_slots, n, dev, **kw):
    """Seconds of one batched step for n_slots copies of prep (batch.generate_batch): runs of n // 4 and n tokens,
    their difference over the steps between (the prefills cancel), after a warm-up run (the compile of this batch
    size, the graphs' capture). Every run has the same slots (n_slots x the rows of n tokens): one set of graphs."""
    def run(k):
        todo = [(i, prep, R.Settings(max_new_tokens=k, **kw)) for i in range(n_slots)]
        sync(dev)
        t0 = time.perf_counter()
        for _ in B.generate_batch(model, todo, n_slots, len(prep.ids) + n, set()):
            pass
        sync(dev)
        return time.perf_counter() - t0
    run(8)
    short = run(n // 4)
    return (run(n) - short) / (n - n // 4)


def speed_batch(dev, n, res, keep, sizes):
    """The compiled 7B of speed(): tokens/s of batch.py at each batch size against compiled batch 1 (speed()'s
    baseline, vreason.generate), its peak memory, and V-Reason k=2 at the middle size against the baseline there."""
    t0, ours = time.perf_counter(), keep["model"]
    prep = prepare(ours, (4, 16, 16), dev)[2]  # speed()'s prompt
    res["one_s"] = keep.get("base_s") or ours_run(ours, prep, n, dev)[0]
    for b in sizes:
        torch.cuda.reset_peak_memory_stats(dev) if dev.type == "cuda" else None
        res[f"b{b}_s"] = batch_step_s(ours, prep, b, n, dev)
        res[f"b{b}_peak"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
        print(f"   batch [{time.perf_counter() - t0:4.0f}s] B={b}: {1e3 * res[f'b{b}_s']:.2f} ms/step, "
              f"{b / res[f'b{b}_s'] * res['one_s']:.1f}x batch 1's tokens/s", flush=True)
    mid = sizes[len(sizes) // 2]
    res["k2_size"], res["k2_s"] = mid, batch_step_s(ours, prep, mid, n, dev, mode="vreason", update_every=2)
    print(f"   batch [{time.perf_counter() - t0:4.0f}s] V-Reason k=2 at B={mid}: {1e3 * res['k2_s']:.2f} ms/step", flush=True)


def eval_e2e(dev, tmp, res, clips, tokens):
    """eval.py end to end on `clips` synthetic 2-second clips (multiple choice, baseline), on speed()'s 7B checkpoint
    (a character-level tokenizer added), eager: --batch-size 1 against the default, then the default compiled; each
    run's questions an hour and the share of its time decoding waited for videos, as eval.py states them."""
    if importlib.util.find_spec("av") is None:
        res["error"] = "PyAV is not installed here: carry its wheel (README, 'The device check')"
        return
    import av
    import numpy as np

    ckpt, data = os.path.join(tmp, "7b-dry" if dev.type == "cpu" else "7b"), os.path.join(tmp, "e2e")
    if not os.path.isdir(ckpt):
        res["error"] = "needs the speed section's checkpoint: run it without --skip speed"
        return
    char_tokenizer(ckpt)
    os.makedirs(data, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(data, "eval_synthetic.jsonl"), "w") as f:
        for i in range(clips):
            with av.open(os.path.join(data, f"c{i}.mp4"), "w") as box:
                st = box.add_stream("mpeg4", rate=4)
                st.width, st.height, st.pix_fmt = 128, 96, "yuv420p"
                for _ in range(8):
                    box.mux(st.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), format="rgb24")))
                box.mux(st.encode())
            f.write(json.dumps({"problem_id": i, "problem": "Which way does it move?", "options": ["A. left", "B. right"],
                                "solution": "<answer>A</answer>", "problem_type": "multiple choice", "path": f"c{i}.mp4"}) + "\n")
    default = ["--batch-size", "4"] if dev.type == "cpu" else []  # (eval's default off CUDA is 1: the dry run sets 4)
    # (and compiled at the default: the loader thread encodes beside the capture of the step's CUDA graphs)
    for name, extra in (("b1", ["--batch-size", "1"]), ("default", default), ("compiled", [*default, "--compile"])):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--data", os.path.join(data, "eval_synthetic.jsonl"),
                            "--video-root", data, "--out", os.path.join(tmp, f"e2e-{name}"), "--model", ckpt, "--modes", "baseline",
                            "--max-new-tokens", str(tokens), "--device", dev.type, *extra], capture_output=True, text=True, timeout=900)
        line = next((x for x in r.stderr.splitlines() if " runs in " in x), "")
        got = [float(v) for v in re.findall(r"in ([\d.]+) s at batch size (\d+), (\d+) entries an hour; decoding waited ([\d.]+) s", line)[0]] \
            if r.returncode == 0 and line else None
        res[name] = {"rc": r.returncode, "err": r.stderr.strip()[-300:]} if got is None else \
            dict(seconds=got[0], batch_size=int(got[1]), per_hour=got[2], waited_s=got[3])
        print(f"   eval [{name}] {res[name]}", flush=True)


def attention_ab(dev, dtype, c, rows):
    """The decode attention alone over a cache of `rows` rows, every layer's in turn, microseconds a layer: eager, SDPA
    (the eager step's: its memory-efficient kernel runs one block per kv head) and the same as two products and a
    softmax; compiled into one graph (CUDA graphs, as the step), that SDPA call (the compiled step's attention before)
    and the written-out sums the compiled step runs now (model.decode_attention)."""
    g = torch.Generator(dev).manual_seed(0)
    H, Hkv, d = c.n_heads, c.n_kv_heads, c.head_dim
    q = torch.randn(H, 1, d, device=dev, dtype=dtype, generator=g)
    KV = [torch.randn(2, Hkv, rows, d, device=dev, dtype=dtype, generator=g) for _ in range(c.n_layers)]
    mask = torch.zeros(1, rows, device=dev, dtype=dtype).masked_fill(torch.arange(rows, device=dev) > rows - 40, -float("inf"))
    for t in [q, mask, *KV] if dev.type == "cuda" else []:  # as the step's cache: CUDA graphs read them in place
        torch._dynamo.mark_static_address(t)

    def sdpa(q, K, V, mask):
        with M.sdpa_kernel(M.SDPA_BACKENDS):
            return torch.nn.functional.scaled_dot_product_attention(q.reshape(1, Hkv, H // Hkv, d), K[None], V[None], attn_mask=mask)

    def products(q, K, V, mask):
        s = (q.reshape(Hkv, H // Hkv, d) @ K.mT).float() / d**0.5 + mask
        return s.softmax(-1).to(V.dtype) @ V

    out = []
    for form, compiled in ((sdpa, False), (products, False), (sdpa, True), (M.decode_attention, True)):
        f = lambda: [form(q, K, V, mask) for K, V in KV]
        if compiled:
            torch._dynamo.reset()
            f = torch.compile(f, fullgraph=True, options={"triton.cudagraphs": True, "coordinate_descent_tuning": True}
                              if dev.type == "cuda" else None)
        for i in range(23):
            if i == 3:  # after a compile and two warm-up runs
                sync(dev)
                t0 = time.perf_counter()
            torch.compiler.cudagraph_mark_step_begin()
            f()
        sync(dev)
        out.append(round((time.perf_counter() - t0) / 20 / c.n_layers * 1e6, 1))
    return out


# ----------------------------------------------------------------------------- the table

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--skip", default="", help="comma-separated sections to leave out, of (in the order they run) "
                   "speed, long (the video-length prompt: needs speed), batch (batch.py's tokens/s: needs speed), eval "
                   "(eval.py end to end at batch 1 and its default: needs speed's checkpoint), parity, attention (the "
                   "decode attention A/B), cli, speed35 (Qwen3.5-4B's compiled decode), parity35 (Qwen3.5's parity)")
    a = p.parse_args(argv)
    dry = a.device == "cpu"
    if not dry and not torch.cuda.is_available():
        print("device_check: no CUDA device here; --device cpu runs the dry run", file=sys.stderr)
        return 2
    dev, t_start = torch.device(a.device), time.perf_counter()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity means fp32
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # (5.x draws one per checkpoint written)
    report = {"device": torch.cuda.get_device_name(dev) if not dry else "cpu (dry run: scaled-down shapes)",
              "torch": torch.__version__, "transformers": transformers.__version__}
    rows = []

    def table():
        print(f"\ndevice check on {report['device']}, torch {report['torch']}, transformers {report['transformers']}, "
              f"{time.perf_counter() - t_start:.0f} s{' (dry run: timings and targets mean nothing)' if dry else ''}")
        print(f"| {'check':<72} | {'measured':<40} | {'target':<9} | result |\n|{'-' * 74}|{'-' * 42}|{'-' * 11}|--------|")
        for what, got, target, ok in rows:
            print(f"| {what:<72} | {got:<40} | {target:<9} | {'' if ok is None else 'PASS' if ok else 'MISS'} |", flush=True)

    def section(name, run):  # a failure costs its own section only; results are written after each one
        try:
            run()
        except Exception as e:
            report[name + "_error"] = traceback.format_exc()
            print(report[name + "_error"], flush=True)
            rows.append((f"{name}: FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", "", False))
        report["runtime_s"] = time.perf_counter() - t_start
        text = json.dumps(report, indent=1, default=str)
        for d in {ROOT, os.environ.get("OUT") or ROOT}:
            with open(os.path.join(d, "device_check.json"), "w") as f:
                f.write(text)
        print(f"[{report['runtime_s']:4.0f}s] {name} done", flush=True)

    def parity_of(families):
        keep.pop("model", None)  # (with --skip long, the 7B is still here)
        for family in families:
            shape = ("parity35" if family == "qwen3_5" else "parity") + ("-dry" if dry else "")
            for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
                r = report.setdefault("parity", {})[f"{family} {str(dtype)[6:]}"] = parity(family, dtype, dev, shape, tmp)
                ok = r["vision"] <= tol and r["logits"] <= tol and (dtype != torch.float32 or r["greedy_same"] == r["greedy_of"])
                rows.append((f"parity {family} {str(dtype)[6:]}: vision | logits rel diff, greedy same",
                             f"{r['vision']:.1e} | {r['logits']:.1e}, {r['greedy_same']}/{r['greedy_of']}", f"<= {tol:.0e}", ok))
                if "compiled" in r:
                    rows.append((f"  {family} fp32 --compile vs eager: logits, V-Reason tokens same",
                                 f"{r['compiled']:.1e}, {r['compiled_vreason_same']}/{r['compiled_vreason_of']}", "<= 1e-04",
                                 r["compiled"] <= 1e-4 and r["compiled_vreason_same"] == r["compiled_vreason_of"]))
                print(f"[{time.perf_counter() - t_start:4.0f}s] parity {family} {dtype}: {r}", flush=True)
                free(dev)

    def cli_all():
        r = report["cli"] = cli(dev, tmp, torch.float32 if dry else torch.bfloat16)
        for mode, x in r.items() if "error" not in r else []:
            rows.append((f"CLI --mode {mode}", f"exit {x['rc']}, {x['tokens']} tokens, {x['updates']} updates", "exit 0",
                         x["rc"] == 0 and x["tokens"] > 0))
        if "error" in r:
            rows.append(("CLI", r["error"], "", False))

    s, s35, keep = {}, {}, {}  # the speed sections' numbers (in the report), and what the 7B's sections hand on
    report["speed"], report["speed35"] = s, s35
    ms = lambda k, d=s: f"{1e3 * d[k]:.2f} ms"
    x = lambda k, base, d=s: f"{ms(k, d)} ({d[k] / d[base]:.2f}x)"
    have = lambda *k, d=s: all(key in d for key in k)

    def speed_all():
        try:
            speed(dev, torch.float32 if dry else torch.bfloat16, "7b-dry" if dry else "7b", 16 if dry else a.new_tokens, tmp, s, keep)
        finally:  # the rows of what was measured, also when a later step failed
            if have("floor_s"):
                rows.append(("7B bf16: floor (bytes/token over the copy bandwidth)", f"{ms('floor_s')} ({s['bandwidth'] / 1e12:.2f} TB/s)", "", None))
            if have("compiled_vs_eager"):
                rows.append(("compiled vs eager, 7B bf16: logits rel diff (4 steps)", f"{s['compiled_vs_eager']:.1e}", "", None))
            if have("eager_s", "floor_s"):
                rows.append(("decode eager (x floor)", x("eager_s", "floor_s"), "", None))
            if have("base_s", "floor_s"):
                rows.append((f"decode compiled (x floor); compile {s['compile_s']:.0f} s", x("base_s", "floor_s"), "<= 1.25x",
                             s["base_s"] / s["floor_s"] <= 1.25))
            if have("hf_s", "base_s"):
                rows.append(("transformers generate (ours compiled faster by)", x("hf_s", "base_s"), ">= 3x", s["hf_s"] / s["base_s"] >= 3))
            elif have("hf_s", "eager_s"):
                rows.append(("transformers generate (ours eager faster by)", x("hf_s", "eager_s"), "", None))
            if have("vreason_k2_s", "base_s"):
                rows.append(("V-Reason k=2 per token (x compiled baseline)", x("vreason_k2_s", "base_s"), "<= 1.15x",
                             s["vreason_k2_s"] / s["base_s"] <= 1.15))
            if have("lite_s", "base_s"):
                rows.append(("Lite per token (x compiled baseline)", x("lite_s", "base_s"), "", None))
            if have("vreason_k2_peak", "base_peak") and not dry:
                rows.append(("peak memory V-Reason / baseline", f"{s['vreason_k2_peak'] / 2**30:.2f} / {s['base_peak'] / 2**30:.2f} "
                             f"GiB ({s['vreason_k2_peak'] / s['base_peak']:.3f}x)", "<= 1.02x", s["vreason_k2_peak"] / s["base_peak"] <= 1.02))

    def long_all():
        try:
            if "model" in keep:  # (speed failed before its model was compiled: nothing to run this on)
                speed_long(dev, 16 if dry else a.new_tokens, s, keep)
        finally:
            if "batch" in a.skip.split(","):
                keep.pop("model", None)  # the 7B goes before the parity checkpoints come (batch, if run, takes it)
                free(dev)
            if have("long_s", "long_floor_s"):
                rows.append((f"decode compiled, {s['long_rows']} rows (x floor with the rows' bytes); recompile "
                             f"{s['long_compile_s']:.0f} s", x("long_s", "long_floor_s"), "", None))
            if have("long_vreason_k2_s", "long_s"):
                rows.append(("  V-Reason k=2 there (x compiled baseline)", x("long_vreason_k2_s", "long_s"), "", None))

    sb, se = report.setdefault("batch", {}), report.setdefault("eval", {})

    def batch_all():
        sizes = (2, 4) if dry else (8, 32, 64)
        try:
            if "model" in keep:
                keep["base_s"] = s.get("base_s")
                speed_batch(dev, 16 if dry else 64, sb, keep, sizes)
        finally:
            keep.pop("model", None)  # the 7B goes before the parity checkpoints come
            free(dev)
            for b, goal in zip(sizes, (None, 16, 24) if not dry else (None, None)):
                if have(f"b{b}_s", "one_s", d=sb):
                    gain = b * sb["one_s"] / sb[f"b{b}_s"]
                    rows.append((f"batch.py at B={b}: tokens/s x compiled batch 1; ms/step, peak GiB",
                                 f"{gain:.1f}x; {1e3 * sb[f'b{b}_s']:.2f} ms, {sb[f'b{b}_peak'] / 2**30:.1f} GiB",
                                 f">= {goal}x" if goal else "", gain >= goal if goal else None))
            if have("k2_s", f"b{sb.get('k2_size')}_s", d=sb):
                ratio = sb["k2_s"] / sb[f"b{sb['k2_size']}_s"]
                rows.append((f"  V-Reason k=2 at B={sb['k2_size']} per step (x its baseline)", f"{1e3 * sb['k2_s']:.2f} ms ({ratio:.2f}x)",
                             "<= 1.20x", ratio <= 1.20))

    def eval_all():
        eval_e2e(dev, tmp, se, 8 if dry else 256, 16 if dry else 64)
        if "error" in se:
            rows.append(("eval.py end to end", se["error"], "", False))
        elif have("b1", "default", d=se) and "per_hour" in se["b1"] and "per_hour" in se["default"]:
            gain = se["default"]["per_hour"] / se["b1"]["per_hour"]
            rows.append((f"eval.py, {8 if dry else 256} clips: questions/hour at its default B={se['default']['batch_size']} x B=1; "
                         f"waited for video", f"{gain:.1f}x; {100 * se['default']['waited_s'] / se['default']['seconds']:.0f}% "
                         f"(B=1: {100 * se['b1']['waited_s'] / se['b1']['seconds']:.0f}%)", ">= 6x" if not dry else "",
                         gain >= 6 if not dry else None))
        else:
            rows.append(("eval.py end to end", str({k: v.get("err", "") for k, v in se.items()})[:200], "", False))
        if have("default", "compiled", d=se) and "per_hour" in se["default"]:
            ok = "per_hour" in se["compiled"]
            rows.append(("  eval.py --compile, same B (x eager): encoding beside graph capture",
                         f"{se['compiled']['per_hour'] / se['default']['per_hour']:.1f}x" if ok else se["compiled"]["err"][-120:],
                         "runs", ok))

    def attention_all():
        for n_rows in s.get("attention_rows", [512]) if "c" in keep else []:
            r = s[f"attention_us_{n_rows}"] = attention_ab(dev, torch.float32 if dry else torch.bfloat16, keep["c"], n_rows)
            print(f"   attention at {n_rows} rows, µs a layer (eager SDPA, products; compiled SDPA, sums): {r}", flush=True)
            rows.append((f"attention at {n_rows} rows, µs a layer: eager SDPA | mm; compiled SDPA | sums",
                         " | ".join(map(str, r)), "", None))

    def speed35_all():
        keep.pop("model", None)
        try:
            speed35(dev, torch.float32 if dry else torch.bfloat16, "4b35-dry" if dry else "4b35", 16 if dry else a.new_tokens,
                    tmp, s35)
        finally:  # the rows of what was measured, also when a later step failed
            free(dev)
            if have("floor_s", d=s35):
                rows.append((f"Qwen3.5-4B bf16: floor (weights, head, state x2, {s35['rows']} K/V rows)",
                             f"{ms('floor_s', s35)} ({s35['bytes_token'] / 1e9:.2f} GB at {s35['bandwidth'] / 1e12:.2f} TB/s)",
                             "", None))
            if have("compiled_vs_eager", d=s35):
                rows.append(("  compiled vs eager, Qwen3.5-4B bf16: logits rel diff (4 steps)", f"{s35['compiled_vs_eager']:.1e}",
                             "", None))
            if have("eager_s", "floor_s", d=s35):
                rows.append(("  Qwen3.5 decode eager (x floor)", x("eager_s", "floor_s", s35), "", None))
            if have("base_s", "floor_s", d=s35):
                rows.append((f"  Qwen3.5 decode compiled (x floor); compile {s35['compile_s']:.0f} s", x("base_s", "floor_s", s35),
                             "<= 1.3x", s35["base_s"] / s35["floor_s"] <= 1.3))
            if have("hf_s", "base_s", d=s35):
                rows.append(("  Qwen3.5 transformers generate (ours compiled faster by)", x("hf_s", "base_s", s35), "", None))

    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        # the targets first, so that a run cut short keeps them; the 7B's graphs stay for the long prompt, and
        # parity's compile comes after (it resets them). The Qwen3.5 sections last: the check of the first five stays
        # as it was, and a short call leaves them out (--skip speed35,parity35) or runs them alone
        for name, run in (("speed", speed_all), ("long", long_all), ("batch", batch_all), ("eval", eval_all),
                          ("parity", lambda: parity_of(("qwen2_5_vl", "qwen3_vl"))),
                          ("attention", attention_all), ("cli", cli_all), ("speed35", speed35_all),
                          ("parity35", lambda: parity_of(("qwen3_5",)))):
            if name not in a.skip.split(","):
                section(name, run)
                table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
