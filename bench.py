"""Speed and memory side by side: our model (model.py + vreason.generate) against transformers on the
same random-weight checkpoints, and V-Reason / Lite against our baseline, for the three families (Qwen2.5-VL, Qwen3-VL,
Qwen3.5; the shape picks the family). transformers is a bench-only dependency: 4.51 for the Qwen2.5-VL shapes, 4.57
(the Qwen3-VL oracle venv) for the q3-* shapes, 5.23 (the Qwen3.5 oracle venv) for the q35-* shapes, which need its
Qwen3-VL / Qwen3.5 classes.

    python bench.py                                  # 3b-slim, 7b-narrow, small; CPU fp32 (docs/performance.md#cpu-bench)
    .venv-oracle3/bin/python bench.py --shape q3-4b-slim   # Qwen3-VL-4B's layer width, 4 of 36 layers
    .venv-oracle35/bin/python bench.py --shape q35-4b-slim  # Qwen3.5-4B's layer width, 8 of 32 layers (6 linear, 2 full)
    python bench.py --shape 3b --ours-only --new-tokens 33 --vr-tokens 32 --video-grid 2 16 16   # the real 3B (15 GB RAM)
    python bench.py --shape 7b --device cuda --dtype bfloat16
    python bench.py --smoke --json /tmp/bench.json   # tiny shapes, 1 run (CI: checks the script, not the speed)

Every time is a median over --runs interleaved rounds (ours, theirs, V-Reason, ... in each) after one warm-up round;
every ratio is the median of the ratios within each round, so that drift of the machine between rounds cancels. Decode
time per token is taken between the first and the last generated token (prefill excluded), for both implementations.
"""
import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

import batch as B
import model as M
import video as V
import vreason as R

QWEN25, QWEN3, QWEN35 = "qwen2_5_vl", "qwen3_vl", "qwen3_5"  # config.json model_type


@dataclass(frozen=True)
class Tokens:
    """The ids a family's tokenizer gives the bench prompt: its special tokens and the fixed text around the video."""
    im_start: int
    im_end: int
    endoftext: int
    vstart: int  # <|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>
    vend: int
    ipad: int
    vpad: int
    head: tuple  # the prompt before the video: Qwen2.5-VL's default system turn and the user's opening; else the latter
    question: tuple  # "What happens after the ball is thrown?"
    tail: tuple  # ends the user turn, opens the answer (Qwen3.5: with "<think>\n", as its template does by default)
    seconds: int  # " seconds" of a timestamp "<0.5 seconds>" (Qwen3-VL, Qwen3.5; "<", digits, ".", ">" share their ids)


def qwen2_tokens(head):  # Qwen2.5-VL and Qwen3-VL share one tokenizer
    return Tokens(151644, 151645, 151643, 151652, 151653, 151655, 151656, head,
                  (3838, 8573, 1283, 279, 4935, 374, 14989, 30), (151645, 198, 151644, 77091, 198), 6486)


TOKENS = {
    QWEN25: qwen2_tokens((151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198)),
    QWEN3: qwen2_tokens((151644, 872, 198)),  # Qwen3-VL has no default system message
    QWEN35: Tokens(248045, 248046, 248044, 248053, 248054, 248056, 248057, (248045, 846, 198),
                   (3710, 8311, 1238, 279, 4776, 369, 14555, 30), (248046, 198, 248045, 74455, 198, 248068, 198), 6283),
}
# the real vision width, heads, intermediate. Qwen3.5-4B's tower is Qwen3-VL-4B's without DeepStack (a public
# config.json with Qwen3.5-4B's text sizes: depth 24, width 1024, 16 heads, intermediate 4096)
VISION = {QWEN25: (1280, 16, 3420), QWEN3: (1024, 16, 4096), QWEN35: (1024, 16, 4096)}
# name: family (config.json model_type), LM (hidden, layers, heads, kv heads, head dim, intermediate, vocab, tied),
# vision (depth, width, heads, intermediate), and for Qwen3.5 its Gated DeltaNet (key heads, value heads, key dim,
# value dim, conv kernel). Qwen3-VL-4B's sizes are its official config.json's.
SHAPES = {
    "3b-slim": (QWEN25, (2048, 4, 16, 2, 128, 11008, 151936, True), (2, *VISION[QWEN25])),  # the 3B, 4 of its 36 layers
    "7b-narrow": (QWEN25, (1792, 2, 14, 2, 128, 9472, 152064, False), (2, *VISION[QWEN25])),  # 7B at half width, 2 of 28
    "small": (QWEN25, (512, 3, 4, 2, 128, 2752, 151936, True), (2, *VISION[QWEN25])),
    "3b": (QWEN25, (2048, 36, 16, 2, 128, 11008, 151936, True), (32, *VISION[QWEN25])),  # the real sizes
    "7b": (QWEN25, (3584, 28, 28, 4, 128, 18944, 152064, False), (32, *VISION[QWEN25])),
    "tiny": (QWEN25, (128, 2, 1, 1, 128, 256, 151936, True), (2, 64, 4, 96)),  # --smoke
    "tiny-gqa": (QWEN25, (256, 2, 2, 1, 128, 512, 152064, False), (2, 64, 4, 96)),
    # Qwen3-VL-4B's layer (32 q heads x 128 > hidden 2560, 8 kv heads, q/k norms, no bias), 4 of its 36 layers; 3 of 24
    # vision blocks, each a DeepStack source, so that all three DeepStack mergers and injections run
    "q3-4b-slim": (QWEN3, (2560, 4, 32, 8, 128, 9728, 151936, True), (3, *VISION[QWEN3])),
    "q3-4b": (QWEN3, (2560, 36, 32, 8, 128, 9728, 151936, True), (24, *VISION[QWEN3])),  # the real sizes
    "q3-tiny": (QWEN3, (128, 2, 2, 1, 128, 256, 151936, True), (2, 64, 4, 96)),  # --smoke --shape q3-tiny
    # Qwen3.5-4B's layers (Gated DeltaNet: 16 key heads, 32 value heads of 128; gated full attention: 16 q heads x 256,
    # 4 kv heads, a quarter of each head rotated), 8 of its 32 in its 3:1 pattern, the last full attention; 3 of 24
    # vision blocks. Its head (248k x 2560, tied) is 0.64B of the 1.5B
    "q35-4b-slim": (QWEN35, (2560, 8, 16, 4, 256, 9216, 248320, True), (3, *VISION[QWEN35]), (16, 32, 128, 128, 4)),
    "q35-4b": (QWEN35, (2560, 32, 16, 4, 256, 9216, 248320, True), (24, *VISION[QWEN35]), (16, 32, 128, 128, 4)),
    "q35-tiny": (QWEN35, (128, 4, 2, 1, 256, 256, 248320, True), (2, 64, 4, 96), (2, 4, 32, 32, 4)),  # --smoke
}
HF_CLASS = {QWEN25: "Qwen2_5_VLForConditionalGeneration", QWEN3: "Qwen3VLForConditionalGeneration",
            QWEN35: "Qwen3_5ForConditionalGeneration"}
VENV = {QWEN25: ".venv/bin/python (transformers 4.51, requirements-test.txt)",  # where each family's reference is
        QWEN3: "the Qwen3-VL oracle venv, .venv-oracle3/bin/python (transformers 4.57, requirements-oracle3.txt)",
        QWEN35: "the Qwen3.5 oracle venv, .venv-oracle35/bin/python (transformers 5.23, requirements-oracle35.txt)"}
med = statistics.median


def hf_class(family):
    """transformers' class for a family, or None when the running transformers lacks it."""
    import transformers

    return getattr(transformers, HF_CLASS[family], None)


def hf_config(name, std):
    family, (D, L, H, KV, d, I, vocab, tied), (vd, vw, vh, vi), *linear = SHAPES[name]
    k = TOKENS[family]
    tokens = dict(image_token_id=k.ipad, video_token_id=k.vpad, vision_start_token_id=k.vstart, vision_end_token_id=k.vend)
    text = dict(vocab_size=vocab, hidden_size=D, intermediate_size=I, num_hidden_layers=L, num_attention_heads=H,
                num_key_value_heads=KV, head_dim=d, rms_norm_eps=1e-6, max_position_embeddings=262144,
                initializer_range=std, tie_word_embeddings=tied, hidden_act="silu", attention_bias=False)
    vision = dict(depth=vd, hidden_size=vw, num_heads=vh, intermediate_size=vi, out_hidden_size=D, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=2304,
                  hidden_act="gelu_pytorch_tanh", initializer_range=std)
    if family == QWEN35:  # layer_types left to the config's rule: every 4th layer full attention (so the last, L % 4 == 0)
        from transformers import Qwen3_5Config

        (lk, lv, dk, dv, kernel), = linear
        text.update(linear_num_key_heads=lk, linear_num_value_heads=lv, linear_key_head_dim=dk, linear_value_head_dim=dv,
                    linear_conv_kernel_dim=kernel,
                    rope_parameters=dict(rope_type="default", rope_theta=1e7, partial_rotary_factor=0.25,
                                         mrope_section=[11, 11, 10], mrope_interleaved=True))  # 64 of head_dim 256
        return Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=tied, **tokens)
    if family == QWEN3:
        from transformers import Qwen3VLConfig

        text.update(rope_theta=5e6, rope_scaling=dict(rope_type="default", mrope_section=[24, 20, 20], mrope_interleaved=True))
        vision.update(deepstack_visual_indexes=[5, 11, 17] if vd == 24 else list(range(min(vd, 3))))
        return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied, **tokens)
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        vocab_size=vocab, hidden_size=D, intermediate_size=I, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=KV, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=128000,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=tied, initializer_range=std,
        vision_config=dict(depth=vd, hidden_size=vw, num_heads=vh, intermediate_size=vi, out_hidden_size=D,
                           fullatt_block_indexes=[7, 15, 23, 31] if vd == 32 else [vd - 1], tokens_per_second=2,
                           window_size=112, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_chans=3,
                           hidden_act="silu", initializer_range=std),
        bos_token_id=k.endoftext, eos_token_id=k.im_end, torch_dtype="float32", **tokens)


def write_checkpoint(name, path, dev, dtype, std):
    """Random weights (uniform with the given std; norm weights 1, biases 0), built on `dev` in `dtype` so that the
    real 7B fits, written by transformers' save_pretrained: the official file layout."""
    try:
        from transformers.initialization import no_init_weights  # 5.x
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # 4.x

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(dev), no_init_weights():
            m = hf_class(SHAPES[name][0])(hf_config(name, std))
    finally:
        torch.set_default_dtype(default)
    m.tie_weights()
    with torch.no_grad():
        for key, p in m.named_parameters():
            if p.dim() > 1:
                p.uniform_(-std * 3**0.5, std * 3**0.5)
            else:  # no_init_weights leaves LayerNorm (Qwen3-VL's vision) uninitialized: set every 1-D weight here
                p.fill_(0.0 if key.endswith("bias") else 1.0)
    m.save_pretrained(path)
    del m
    gc.collect()


# ----------------------------------------------------------------------------- timers, memory, inputs

def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(dev, fn):
    sync(dev)
    t = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t


def make_input(c, grid, dev, seed=0):
    """Chat-shaped prompt ids around one video in the family's layout, and random normalized patches. Qwen2.5-VL: one
    <|vision_start|> ... <|vision_end|> block after a system turn. Qwen3-VL: no system turn; per 2-frame group a
    timestamp as text ("<0.5 seconds>", ...: digits are single tokens) then its own block. Qwen3.5: Qwen3-VL's groups
    inside the chat template's own vision pair (transformers 5.x's processor replaces only the <|video_pad|>)."""
    t, h, w = grid
    px = torch.randn(t * h * w, c.in_chans * c.temporal_patch_size * c.patch_size**2,
                     generator=torch.Generator().manual_seed(seed)).to(dev)
    k = TOKENS[c.model_type]
    block = lambda n: [k.vstart] + [k.vpad] * n + [k.vend]
    if c.model_type == QWEN25:
        video = block(t * h * w // 4)
    else:
        stamp = lambda i: [27, *(15 + int(digit) for digit in str(i)), 13, 20, k.seconds, 29]  # "<" i ".5 seconds>"
        video = [x for i in range(t) for x in stamp(i) + block(h * w // 4)]
        video = [k.vstart, *video, k.vend] if c.model_type == QWEN35 else video
    return [*k.head, *video, *k.question, *k.tail], px


def prepared(model, grid, dev):
    ids, px = make_input(model.c, grid, dev)
    video = V.Video(px, grid, 1.0, {}, family=model.family)
    with torch.no_grad():
        visual = model.encode_video(video)
    return R.Prepared(ids=torch.tensor(ids, device=dev), pos=model.positions(ids, video).to(dev), visual=visual,
                      video=video, vision_s=0.0)


# ----------------------------------------------------------------------------- one measurement each

def ours_decode(model, prep, n, **settings):  # -> time stamp of every generated token, the steps
    ts, steps = [], []
    for st in R.generate(model, prep, R.Settings(max_new_tokens=n, **settings), set(), {}):
        ts.append(time.perf_counter())  # the token was read back (the next step is already queued behind it)
        steps.append(st)
    return ts, steps


def batch_decode(model, prep, n_slots, n, **settings):
    """Seconds of batch.generate_batch over n_slots copies of prep, n tokens each, all admitted before the first step:
    the prefills, then n steps. A step's time is the difference of two lengths (the prefills cancel)."""
    todo = [(i, prep, R.Settings(max_new_tokens=n, **settings)) for i in range(n_slots)]
    t0 = time.perf_counter()
    for _ in B.generate_batch(model, todo, n_slots, len(prep.ids) + n, set()):
        pass
    R.sync(model)
    return time.perf_counter() - t0


def update_ops(model, prep, n_slots, n=9):
    """Host-side work of a batched update: the top-level aten ops (on a GPU, about one kernel launch each) per update
    step of n_slots samples, V-Reason at k = 1 (every step updates every sample) less the baseline, over n steps."""
    from torch.profiler import ProfilerActivity, profile

    count = {}
    for key, settings in (("baseline", {}), ("vreason", dict(mode="vreason", update_every=1))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            batch_decode(model, prep, n_slots, n, **settings)
        count[key] = sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)
    return (count["vreason"] - count["baseline"]) / n


class Stamps:  # a transformers streamer: put() gets the prompt once, then every new token (already on the CPU)
    def __init__(self):
        self.t, self.tokens, self.prompt_seen = [], [], False

    def put(self, x):
        if self.prompt_seen:
            self.t.append(time.perf_counter())
            self.tokens += x.flatten().tolist()
        self.prompt_seen = True

    def end(self):
        pass


def hf_video_kwargs(hf, ids):
    """What transformers' forward / generate want beside the ids for one video, in the versions that take it: Qwen2.5-VL's
    seconds per frame group (Qwen3-VL's time is text); 5.x's mm_token_type_ids (0 text, 2 video), from which its
    positions find the video rows."""
    takes, kw = inspect.signature(hf.forward).parameters, {}
    if "second_per_grid_ts" in takes:
        kw["second_per_grid_ts"] = torch.tensor([1.0], device=ids.device)
    if "mm_token_type_ids" in takes:
        kw["mm_token_type_ids"] = (ids == TOKENS[hf.config.model_type].vpad).int() * 2
    return kw


def theirs_decode(hf, ids, px, grid, n, vocab):
    st, dev = Stamps(), px.device
    ids = torch.tensor([ids], device=dev)
    with torch.no_grad():
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=px,
                    video_grid_thw=torch.tensor([grid], device=dev), **hf_video_kwargs(hf, ids),
                    max_new_tokens=n, do_sample=False, repetition_penalty=1.0, temperature=None, top_p=None, top_k=None,
                    eos_token_id=vocab, pad_token_id=TOKENS[hf.config.model_type].endoftext,
                    streamer=st)  # eos: an id that cannot be generated
    return st.t, st.tokens


def ours_prefill(model, prep, n):  # what generate() does before the first token
    cache = model.new_cache(len(prep.ids) + n)
    with torch.no_grad():
        return model.prefill(prep.ids, prep.pos, prep.visual, cache)[0]


def theirs_prefill(hf, prep):
    """What transformers' generate does before the first token, minus the vision encoder and the position rule: embed,
    put the video features in, run the decoder (Qwen3-VL: its DeepStack features added after the first layers; 5.x takes
    our 3 position rows for a plain forward, its 4th, the text row, only shapes the mask), then the head on the rows
    generate asks for: the last one where forward takes logits_to_keep (4.57, 5.x), else all (4.51)."""
    ids, deep = prep.ids[None], prep.visual.deepstack
    lm = getattr(hf.model, "language_model", hf.model)  # 4.57 and 5.x nest the decoder; 4.51's Qwen2.5-VL model is it
    video = ids == TOKENS[hf.config.model_type].vpad
    with torch.no_grad():
        x = lm.embed_tokens(ids)
        x = x.masked_scatter(video[..., None].expand_as(x), prep.visual.embeds.to(x.dtype))
        ds = dict(visual_pos_masks=video, deepstack_visual_embeds=[f.to(x.dtype) for f in deep]) if deep else {}
        h = lm(inputs_embeds=x, position_ids=prep.pos[:, None], attention_mask=torch.ones_like(ids), use_cache=True,
               **ds).last_hidden_state[0]
        keep = 1 if "logits_to_keep" in inspect.signature(hf.forward).parameters else len(h)
        return hf.lm_head(h[-keep:])[-1]


def vision_features(out):
    """A vision tower's output -> [merged features, *DeepStack's], ours or transformers' of any version: a tensor (4.51's
    Qwen2.5-VL, our Qwen2.5-VL), a tuple (4.57's Qwen3-VL, our Qwen3-VL and Qwen3.5) or 5.x's output object."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, tuple):
        return [out[0], *out[1]]
    return [out.pooler_output, *(getattr(out, "deepstack_features", None) or [])]


def per_token(ts, n=None):  # seconds per token between the first and the n-th generated token
    ts = ts[:n] if n else ts
    return (ts[-1] - ts[0]) / (len(ts) - 1)


def bandwidth(W, x, dev, reps=5):  # bytes/s of one large fp32 mat-vec, the faster of its two forms W x and x^T W
    forms = (lambda: torch.mv(W, x), lambda: x[None] @ W)
    return W.numel() * W.element_size() / min(med(timed(dev, f) for _ in range(reps)) for f in forms)


def matvecs(model, dev, reps=3):
    """Seconds for the weight products of one decode step alone, same matrices, same order, nothing else (no attention,
    recurrence, conv, norms, rotary, sampling): what the BLAS mat-vec achieves on this model. Decode over this = our
    per-token overhead. Each layer's packed matrices in its packing() order (an attention layer's q|k|v, o, gate|up,
    down; a Gated DeltaNet's in_proj, out_proj, gate|up, down): each reads the leading columns of the product before it,
    and a product back to the hidden width is the residual, which the next one reads."""
    D = model.c.hidden_size
    weights = [getattr(layer, key) for layer in model.llm.layers for key in layer.packing()] + [model.lm_head]

    def step():
        h = x = torch.zeros(1, D, device=dev, dtype=model.dtype)
        for W in weights:
            x = x[:, : W.shape[0]] @ W
            if x.shape[1] == D:
                h = x = h + x
        return x
    with torch.no_grad():
        return med(timed(dev, step) for _ in range(reps))


def paired(num, den):
    """Median over rounds of the ratio within each round: a machine's speed drifts between rounds (a shared VM's
    bandwidth does), and both sides of a ratio were measured back to back in the same round."""
    return med(n / d for n, d in zip(num, den))


def rounds(a, warm, body):  # warm() once, then body() --runs times: {key: [value per run]}
    warm()
    out = {}
    for _ in range(a.runs):
        for key, v in body().items():
            out.setdefault(key, []).append(v)
    return out


def log(t0, msg):
    print(f"   [{time.perf_counter() - t0:5.0f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- peak memory, in a fresh process

def memory_child(spec):
    dev, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    torch.set_num_threads(spec["threads"])
    model = M.load_model(spec["dir"], dev, dtype)
    prep = prepared(model, tuple(spec["grid"]), dev)
    gc.collect()
    M.reset_peak_memory(model)
    before, info = M.peak_memory_bytes(model), {}  # right after a reset the peak is what is in use now
    for _ in R.generate(model, prep, R.Settings(mode=spec["mode"], max_new_tokens=spec["n"]), set(), info):
        pass
    R.sync(model)
    print(json.dumps({"peak_bytes": M.peak_memory_bytes(model), "before_bytes": before, **info}))


def measure_memory(a, path, grid, mode):
    spec = dict(dir=path, device=a.device, dtype=a.dtype, threads=a.threads, grid=grid, mode=mode, n=8)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", json.dumps(spec)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory child ({mode}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- one shape

# V-Reason runs measured against our baseline: (key, label, settings). "prune" is Lite's pruning alone (no controller).
MODES = (("vreason_k1", "V-Reason k=1", dict(mode="vreason", update_every=1)),
         ("vreason_k2", "V-Reason k=2", dict(mode="vreason", update_every=2)),
         ("lite", "Lite k=2", dict(mode="lite", update_every=2)),
         ("prune", "Lite pruning only", dict(mode="lite", steps=0)))


def bench_shape(a, name, dev, dtype, with_vision):
    res, grid, vgrid, t0 = {}, tuple(a.video_grid), tuple(a.vision_grid), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as path:
        write_checkpoint(name, path, dev, dtype, a.init_std)
        ours, hf = M.load_model(path, dev, dtype), None
        if not a.ours_only:
            hf = hf_class(SHAPES[name][0]).from_pretrained(path, torch_dtype=dtype, attn_implementation="sdpa")
            hf = hf.to(dev).eval()
        c, esize = ours.c, ours.llm.norm.weight.element_size()
        head_b = c.vocab_size * c.hidden_size * esize  # whatever layout model.py keeps it in
        layers_b = sum(p.numel() * p.element_size() for p in [*ours.llm.layers.parameters(), ours.llm.norm.weight])
        # a linear-attention layer's fixed state (its cache at zero tokens; an attention layer's is empty), which each
        # token reads and writes back: its bytes count twice
        fixed_b = sum(layer.cache_bytes(0, esize) for layer in ours.llm.layers)
        token_b = layers_b + head_b + 2 * fixed_b
        last_b = sum(p.numel() * p.element_size() for p in ours.llm.layers[-1].parameters()) + head_b
        lm_params = sum(p.numel() for key, p in ours.named_parameters() if not key.startswith("visual."))  # tied: once
        linear = sum(not layer.holds_kv for layer in ours.llm.layers)
        res["config"] = dict(family=c.model_type, hidden=c.hidden_size, layers=c.n_layers, linear_layers=linear,
                             heads=c.n_heads, kv_heads=c.n_kv_heads, head_dim=c.head_dim, intermediate=c.intermediate_size,
                             vocab=c.vocab_size, tied=c.tie_word_embeddings,
                             vision_depth=c.v_depth, vision_width=c.v_hidden, lm_params=lm_params,
                             vision_params=sum(p.numel() for p in ours.visual.parameters()), bytes_per_token=token_b,
                             fixed_state_bytes=fixed_b)
        log(t0, f"{c.model_type} LM {lm_params / 1e6:.0f}M params ({c.n_layers} layers"
                + (f", {linear} of them linear attention" if linear else "") + f", hidden {c.hidden_size}, "
                f"{c.n_heads}/{c.n_kv_heads} heads of {c.head_dim}, {'tied' if c.tie_word_embeddings else 'untied'}), "
                f"{token_b / 1e9:.2f} GB read per token" + (f" ({2 * fixed_b / 1e6:.1f} MB of it state, read and written)"
                if fixed_b else "") + f"; vision depth {c.v_depth} width {c.v_hidden}")
        prep = prepared(ours, grid, dev)
        ids, px = make_input(c, grid, dev)

        if with_vision and hf is not None:  # 1. vision encoder
            vpx = make_input(c, vgrid, dev, seed=1)[1]
            tower = hf.visual if hasattr(hf, "visual") else hf.model.visual  # (5.x: under .model only)
            f_ours = lambda: ours.visual(vpx, [vgrid])
            f_hf = lambda: tower(vpx.to(dtype), grid_thw=torch.tensor([vgrid], device=dev))
            with torch.no_grad():
                r = rounds(a, lambda: (f_ours(), f_hf()), lambda: {"ours": timed(dev, f_ours), "theirs": timed(dev, f_hf)})
                diff = max(float((mine - theirs).abs().max() / theirs.abs().max())  # (DeepStack's features too)
                           for mine, theirs in zip(vision_features(f_ours()), vision_features(f_hf())))
            res["vision"] = dict(grid=vgrid, ours_s=med(r["ours"]), theirs_s=med(r["theirs"]),
                                 speedup=paired(r["theirs"], r["ours"]), rel_diff=diff, runs=r)
            log(t0, f"vision {vgrid}: ours {med(r['ours']):.3f}s, hf {med(r['theirs']):.3f}s (rel diff {diff:.1e})")

        # 2. prefill (video + prompt)
        res["prefill"] = dict(prompt_tokens=len(ids), video_tokens=prep.video.n_tokens)
        if hf is not None:
            f_ours, f_hf = lambda: ours_prefill(ours, prep, a.new_tokens), lambda: theirs_prefill(hf, prep)
            r = rounds(a, lambda: (f_ours(), f_hf()), lambda: {"ours": timed(dev, f_ours), "theirs": timed(dev, f_hf)})
            lo, lt = f_ours(), f_hf().float()
            res["prefill"].update(ours_s=med(r["ours"]), theirs_s=med(r["theirs"]), runs=r,
                                  speedup=paired(r["theirs"], r["ours"]),
                                  logits_rel_diff=float((lo - lt).abs().max() / lt.abs().max()))
            log(t0, f"prefill {len(ids)} tokens: ours {med(r['ours']):.3f}s, hf {med(r['theirs']):.3f}s")

        # 3, 4, 6. decode, interleaved: memory bandwidth, ours, transformers, then V-Reason / Lite / pruning alone
        side = int((a.bw_mib * 2**20 / 4) ** 0.5)
        W, x = torch.ones(side, side, device=dev), torch.ones(side, device=dev)
        toks = {}

        def body(n=a.new_tokens, nv=a.vr_tokens + 1):  # V-Reason runs: vr_tokens intervals, every k-th one updates
            row = {"bandwidth": bandwidth(W, x, dev), "matvecs": matvecs(ours, dev)}
            ts, steps = ours_decode(ours, prep, n)
            toks["ours"] = [s.token for s in steps]
            row.update(ours=per_token(ts), ours_window=per_token(ts, nv), n_ours=len(ts))
            if hf is not None:
                tt, toks["theirs"] = theirs_decode(hf, ids, px, grid, n, c.vocab_size)
                row.update(theirs=per_token(tt), n_theirs=len(tt))
            for key, _, settings in MODES:
                ts, steps = ours_decode(ours, prep, nv, **settings)
                row.update({key: per_token(ts), key + "_opt_share": sum(s.opt_s for s in steps[1:]) / (ts[-1] - ts[0]),
                            key + "_updates": sum(s.updated for s in steps[1:])})
            if a.batch > 1:  # 7. batch.py: a step for a.batch samples, the baseline's and V-Reason k=2's
                for key, settings in (("batch", {}), ("batch_k2", dict(mode="vreason", update_every=2))):
                    one = batch_decode(ours, prep, a.batch, 1, **settings)
                    row[key] = (batch_decode(ours, prep, a.batch, nv, **settings) - one) / (nv - 1)
            return row

        r = rounds(a, lambda: body(4, 4), body)
        if a.batch > 1:
            r["update_ops"] = update_ops(ours, prep, a.batch)
        bw = med(r["bandwidth"])
        floor, floors = token_b / bw, [token_b / b for b in r["bandwidth"]]
        res["decode"] = dict(new_tokens=a.new_tokens, tokens_ours=r["n_ours"][-1], bandwidth_GBps=bw / 1e9, floor_s=floor,
                             ours_s=med(r["ours"]), ours_x_floor=paired(r["ours"], floors), matvecs_s=med(r["matvecs"]),
                             matvecs_x_floor=paired(r["matvecs"], floors), ours_x_matvecs=paired(r["ours"], r["matvecs"]), runs=r)
        if hf is not None:
            mismatch = [i for i, (p, q) in enumerate(zip(toks["ours"], toks["theirs"])) if p != q]
            res["decode"].update(tokens_theirs=r["n_theirs"][-1], tokens_match=toks["ours"] == toks["theirs"],
                                 first_mismatch=(mismatch or [None])[0], theirs_s=med(r["theirs"]),
                                 theirs_x_floor=paired(r["theirs"], floors), speedup=paired(r["theirs"], r["ours"]))
        base = med(r["ours_window"])
        # bound: a token with an update reads the last layer and the LM head three times where a plain token reads them
        # once: the forward with grad (the decode step before it stopped after projecting that layer's q/k/v, which
        # this forward projects again), the backward (head, MLP, o_proj: the gradient goes to ΔV alone, so q/k/v and
        # the norms are not read) and the redecode. So 2 * last_b more bytes (last_b: every parameter of that layer,
        # Qwen3's q/k norms included, plus the head, counted once when tied), at the bandwidth measured in the same
        # round, every k-th token, on top of our measured baseline.
        every = lambda st: 0 if st.get("steps") == 0 else st.get("update_every", 2)  # tokens per update; 0: none
        bound = lambda st: [w + (2 * last_b / b / every(st) if every(st) else 0)  # seconds per token, per round
                            for b, w in zip(r["bandwidth"], r["ours_window"])]
        res["vreason"] = {key: dict(s_per_token=med(r[key]), x_baseline=paired(r[key], r["ours_window"]),
                                    opt_share=med(r[key + "_opt_share"]), updates=r[key + "_updates"][-1],
                                    bound_x_baseline=paired(bound(st), r["ours_window"]),
                                    x_bound=paired(r[key], bound(st)))
                          for key, _, st in MODES}
        res["vreason"].update(new_tokens=a.vr_tokens + 1, baseline_s_per_token=base)
        if a.batch > 1:
            # bound at B: as at batch 1, a step in which the samples are due (all at once here: admitted together,
            # k = 2) reads the last layer and the head twice more than a plain step: the decode step before it stops
            # after the layers below (batch.py shares the update's forward with grad, as generate does), then the
            # backward and the redecode
            bbound = [s + 2 * last_b / bw_ / 2 for bw_, s in zip(r["bandwidth"], r["batch"])]
            res["batch"] = dict(slots=a.batch, s_per_step=med(r["batch"]), s_per_step_k2=med(r["batch_k2"]),
                                tokens_x_batch1=paired([a.batch * w for w in r["ours_window"]], r["batch"]),
                                k2_x_base=paired(r["batch_k2"], r["batch"]), bound_x_base=paired(bbound, r["batch"]),
                                k2_x_bound=paired(r["batch_k2"], bbound),
                                # where B rows make the products compute-bound (2 CPU cores at B = 8), each extra pass
                                # costs its share of the step's work instead: the same 2 passes, priced at last_b's
                                # share of a token's bytes (a product's work and its bytes both scale with its weights)
                                share_bound_x_base=1 + 2 * (last_b / token_b) / 2,
                                k2_x_share_bound=med(r["batch_k2"]) / (med(r["batch"]) * (1 + last_b / token_b)),
                                update_ops=r["update_ops"])
            log(t0, f"batch {a.batch}: {a.batch / med(r['batch']):.2f} tok/s ({res['batch']['tokens_x_batch1']:.2f}x "
                    f"batch 1), V-Reason k=2 {res['batch']['k2_x_base']:.2f}x its baseline ({res['batch']['k2_x_bound']:.2f}x its bound); "
                    f"{r['update_ops']:.0f} aten ops an update step ({r['update_ops'] / a.batch:.1f} a sample)")
        log(t0, f"decode: ours {1 / med(r['ours']):.2f} tok/s" + (f", hf {1 / med(r['theirs']):.2f} tok/s, same tokens "
                f"{res['decode']['tokens_match']}" if hf is not None else "") + f", {bw / 1e9:.1f} GB/s; "
                + ", ".join(f"{label} {res['vreason'][k]['x_baseline']:.2f}x" for k, label, _ in MODES) + " baseline")
        ours = hf = prep = W = x = None  # free before the memory children load their own copy
        gc.collect()

        # 5. peak memory, each configuration in a fresh process
        res["memory"] = {mode: measure_memory(a, path, grid, mode) for mode in ("baseline", "vreason", "lite")}
        log(t0, "peak memory GiB: " + ", ".join(f"{k} {v['peak_bytes'] / 2**30:.2f}" for k, v in res["memory"].items()))
    return res


# ----------------------------------------------------------------------------- report

def targets(name, res):
    """The table: (shape, measure, ours, reference, ratio, target, PASS / MISS / None = reported only) per line.
    Targets: issue 5's for the Qwen2.5-VL shapes; issue 9's for the Qwen3-VL ones and issue 19's, the same, for the
    Qwen3.5 ones (decode faster than transformers, V-Reason k=2 within 5% of its byte bound, peak memory V-Reason /
    baseline <= 1.02x)."""
    newer, big = SHAPES[name][0] != QWEN25, SHAPES[name][1][0] >= 1792  # newer: Qwen3-VL or Qwen3.5
    d, p, v, m = res["decode"], res["prefill"], res["vreason"], res["memory"]
    rows = []
    for key, what in (("vision", "vision encoder %s" % (tuple(res.get("vision", {}).get("grid", ())),)),
                      ("prefill", f"prefill {p['prompt_tokens']} tokens")):
        if "ours_s" in res.get(key, {}):
            x = res[key]
            rows.append((f"{what}: s (ours | hf)", x["ours_s"], x["theirs_s"], x["speedup"], (">=", 1.0, "hf")))
    if "theirs_s" in d:
        rows.append((f"decode tok/s (ours | hf); {d['new_tokens']} tokens, same: {'yes' if d['tokens_match'] else 'no'}",
                     1 / d["ours_s"], 1 / d["theirs_s"], d["speedup"], (">=", 1.0 if newer else 1.1 if big else 1.6, "hf")))
    hf_floor = f"; hf {d['theirs_x_floor']:.2f}x floor" if "theirs_s" in d else ""
    rows.append((f"decode ms/token (ours | floor){hf_floor}", 1e3 * d["ours_s"], 1e3 * d["floor_s"], d["ours_x_floor"],
                 ("<=", 1.1 if big else 1.4, "floor")))
    rows.append((f"decode ms/token (ours | its weight mat-vecs alone: {d['matvecs_x_floor']:.2f}x floor)",
                 1e3 * d["ours_s"], 1e3 * d["matvecs_s"], d["ours_x_matvecs"], None))
    limits = {"vreason_k2": None if newer else ("<=", 1.25, "base"), "prune": ("<=", 1.0, "base")}
    for key, label, _ in MODES:
        x = v[key]
        bound = f", bound {x['bound_x_baseline']:.2f}x" if x["updates"] else ""
        rows.append((f"{label} ms/token (it | base); opt {x['opt_share']:.0%}{bound}",
                     1e3 * x["s_per_token"], 1e3 * v["baseline_s_per_token"], x["x_baseline"], limits.get(key)))
    x = v["vreason_k2"]
    rows.append(("V-Reason k=2 ms/token (it | its byte bound)", 1e3 * x["s_per_token"],
                 1e3 * v["baseline_s_per_token"] * x["bound_x_baseline"], x["x_bound"], newer and ("<=", 1.05, "bound")))
    for mode, limit in (("vreason", 1.02 if newer else 1.05), ("lite", None)):
        it, base = m[mode]["peak_bytes"], m["baseline"]["peak_bytes"]
        rows.append((f"peak memory {mode} GiB (it | baseline)", it / 2**30, base / 2**30, it / base, limit and ("<=", limit, "base")))
    if "batch" in res:  # issue 20's CPU targets
        bt, n = res["batch"], res["batch"]["slots"]
        rows.append((f"decode tok/s at batch {n} (it | batch 1, vreason.generate)", n / bt["s_per_step"],
                     1 / v["baseline_s_per_token"], bt["tokens_x_batch1"], (">=", 3.0, "batch 1")))
        rows.append((f"V-Reason k=2 at batch {n} ms/step (it | its byte bound; {bt['k2_x_base']:.2f}x base)",
                     1e3 * bt["s_per_step_k2"], 1e3 * bt["s_per_step"] * bt["bound_x_base"], bt["k2_x_bound"],
                     ("<=", 1.10, "bound")))
        rows.append((f"V-Reason k=2 at batch {n} ms/step (it | its work-share bound)", 1e3 * bt["s_per_step_k2"],
                     1e3 * bt["s_per_step"] * bt["share_bound_x_base"], bt["k2_x_share_bound"], None))
    L, fixed = m["lite"], res["config"]["fixed_state_bytes"]  # (the linear layers' state: nothing in it is pruned)
    text = (L["kv_bytes_before"] - fixed) / p["prompt_tokens"] * (p["prompt_tokens"] - L["video_tokens"])
    rows.append(("Lite KV cache MiB (after | before prune); half the video", L["kv_bytes_after"] / 2**20,
                 L["kv_bytes_before"] / 2**20, L["kv_bytes_after"] / L["kv_bytes_before"],
                 ("<=", 1 - 0.5 * (L["kv_bytes_before"] - fixed - text) / L["kv_bytes_before"], "before")))
    ok = lambda ratio, op, lim: ratio >= lim * (1 - 1e-9) if op == ">=" else ratio <= lim * (1 + 1e-9)
    return [(name, what, ours, ref, ratio, f"{t[0]} {t[1]:.2f}x {t[2]}" if t else "", ok(ratio, *t[:2]) if t else None)
            for what, ours, ref, ratio, t in rows]


def machine(dev, dtype):
    import transformers

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, python=platform.python_version(), device=str(dev),
                gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, dtype=str(dtype).replace("torch.", ""),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=git or None)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", action="append", choices=list(SHAPES), help="repeatable; default: 3b-slim, 7b-narrow, small")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=5, help="measured rounds per figure, after one warm-up round")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy decode length, ours vs transformers")
    p.add_argument("--vr-tokens", type=int, default=16, help="timed tokens of each V-Reason / Lite run")
    p.add_argument("--video-grid", type=int, nargs=3, default=[4, 16, 16], help="prompt video, t h w patches (256 tokens)")
    p.add_argument("--vision-grid", type=int, nargs=3, default=[8, 24, 24],
                   help="vision benchmark clip: 16 frames 336x336 (8 32 32: 448x448, 4x slower in transformers)")
    p.add_argument("--batch", type=int, default=8, help="slots of the batched decode (batch.py) against batch 1; 1: skip")
    p.add_argument("--bw-mib", type=int, default=1024, help="size of the mat-vec that measures memory bandwidth")
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--json", default="bench.json")
    p.add_argument("--ours-only", action="store_true",
                   help="skip transformers (vision, prefill, its decode): for shapes that fit in memory only once")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 run: checks the script, not the speed")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.shape = a.shape or ["tiny", "tiny-gqa"]
        a.runs, a.new_tokens, a.vr_tokens, a.bw_mib, a.video_grid, a.vision_grid = 1, 8, 6, 64, [2, 8, 8], [2, 12, 12]
        a.batch = min(a.batch, 3)
    a.shape = a.shape or ["3b-slim", "7b-narrow", "small"]
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.memory_child:
        return memory_child(json.loads(a.memory_child))
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # (5.x draws one per checkpoint written and loaded)
    lacking = [name for name in a.shape if hf_class(SHAPES[name][0]) is None]
    if lacking:  # before any work: it writes the checkpoints, so even --ours-only needs the family's class
        family = SHAPES[lacking[0]][0]
        print(f"bench.py: shape {', '.join(lacking)} ({family}) needs transformers' {HF_CLASS[family]}, which transformers "
              f"{transformers.__version__} lacks: run it with {VENV[family]}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    dev, dtype, t0 = torch.device(a.device), getattr(torch, a.dtype), time.perf_counter()
    report = {"machine": machine(dev, dtype), "settings": {k: v for k, v in vars(a).items() if k != "memory_child"}, "shapes": {}}
    print(" | ".join(f"{k} {v}" for k, v in report["machine"].items() if v is not None), flush=True)
    rows = []
    for i, name in enumerate(a.shape):
        print(f"-- {name}", flush=True)
        report["shapes"][name] = bench_shape(a, name, dev, dtype, with_vision=i == 0)
        rows += targets(name, report["shapes"][name])
        report["targets"] = [dict(zip(("shape", "measure", "ours", "reference", "ratio", "target", "pass"), r)) for r in rows]
        report["runtime_s"] = time.perf_counter() - t0
        with open(a.json + ".tmp", "w") as f:  # after every shape, whole: a run that dies late keeps what it measured
            json.dump(report, f, indent=1, allow_nan=False)
        os.replace(a.json + ".tmp", a.json)
    w = max(10, *map(len, a.shape))
    print(f"\n{'shape':<{w}} {'measure':<62} {'ours':>8} {'ref':>8} {'ratio':>6}  {'target':<16} result")
    for shape, what, ours, ref, ratio, target, ok in rows:
        result = "" if ok is None else "PASS" if ok else "MISS"
        print(f"{shape:<{w}} {what:<62} {ours:>8.4g} {ref:>8.4g} {ratio:>5.2f}x  {target:<16} {result}")
    print(f"\n{sum(r[-1] is True for r in rows)} PASS, {sum(r[-1] is False for r in rows)} MISS; runtime "
          f"{report['runtime_s']:.0f}s; times: medians of {a.runs} interleaved rounds after a warm-up; ratios: medians of the "
          f"ratio within each round; JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
