"""What every model family shares, and the contract between a model and the method.

V-Reason (vreason.py) talks to a model through `VideoLM` below and nothing else; a family file (qwen25vl.py,
qwen3vl.py) supplies its config, its vision encoder, its prompt positions and its checkpoint names. Everything else is
here, written once: config.json reading, norms, rotary, the KV cache we own, the decoder (Qwen2 / Qwen3 layers), the
vision attention, device placement and the safetensors loader. Batch size 1 throughout (V-Reason optimizes per sample).

Shapes: N = vision patches, M = N/4 merged video tokens, S = tokens in a forward, T = cache rows, D = LLM hidden,
H / Hkv = query / key-value heads, d = head dim. The method: METHOD.md; how a family plugs in: PORTING.md.
"""
import importlib
import json
import math
import os
import resource
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import video


# The one registry of families: config.json model_type -> the family's module (PORTING.md: a port adds a line here)
FAMILIES = {"qwen2_5_vl": "qwen25vl", "qwen3_vl": "qwen3vl", "qwen3_5": "qwen35"}


class ModelError(ValueError):
    """Bad model directory or checkpoint; str() is a one-line message for the user."""


# ----------------------------------------------------------------------------- config.json, read and checked once

def read_json(path, what="a JSON object"):
    """A JSON file that must hold an object; any failure is a one-line ModelError naming the file."""
    text = video.read_text(path, ModelError)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected {what}, found a JSON {type(raw).__name__}")
    return raw


# No Qwen-VL size or token id comes near this; the bound keeps a typo (1e30 layers wide) from overflowing a shape.
SIZE_LIMIT = 2**31


class Fields:
    """Typed access to one JSON object of a config file: every error names the file and the key."""

    def __init__(self, d, path, where=""):
        self.d, self.path, self.where = d, path, where

    def get(self, key, kind=int, default=..., positive=True):
        if key not in self.d or self.d[key] is None:
            if default is ...:
                raise ModelError(f"{self.path}: missing {self.where}{key}")
            return default
        v = self.d[key]
        ok = (isinstance(v, bool) if kind is bool else isinstance(v, str) if kind is str else
              isinstance(v, int) and not isinstance(v, bool) and abs(v) < SIZE_LIMIT if kind is int else
              isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if ok and kind in (int, float) and positive and v <= 0:
            ok = False
        if not ok:
            want = {int: f"a{' positive' if positive else 'n'} integer below 2**31", float: "a positive number",
                    bool: "true or false", str: "a string"}[kind]
            raise ModelError(f"{self.path}: {self.where}{key} is {v!r}, expected {want}")
        return float(v) if kind is float else v

    def ints(self, key, n=None):  # a list of non-negative integers (of length n)
        if key not in self.d:
            raise ModelError(f"{self.path}: missing {self.where}{key}")
        v = self.d[key]
        if not (isinstance(v, list) and (n is None or len(v) == n)
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
            raise ModelError(f"{self.path}: {self.where}{key} is {v!r}, expected a list of {f'{n} ' if n else ''}"
                             f"non-negative integers")
        return tuple(v)

    def sub(self, key):  # a nested object (absent: an empty one)
        v = self.d.get(key, {})
        if not isinstance(v, dict):
            raise ModelError(f"{self.path}: {self.where}{key} is {type(v).__name__}, expected an object")
        return Fields(v, self.path, f"{self.where}{key}.")


@dataclass
class Config:
    """What every family's config holds: the decoder, the special tokens, and the sizes both vision towers have (a ViT
    over 3D patches, 2x2-merged into LLM tokens). A family's Config adds its own vision fields."""
    model_type: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rotary_dim: int  # the leading dims of each head that the rotary turns (head_dim, or less: partial rotary)
    mrope_section: tuple  # (T, H, W) frequency counts, sum = rotary_dim / 2
    rope_axis: tuple  # for each of the rotary_dim/2 frequencies, the position row (0 T, 1 H, 2 W) it rotates by
    yarn: dict  # YaRN's resolved parameters (read_yarn), or None: plain M-RoPE
    attn_bias: bool  # Qwen2: q/k/v biases; Qwen3: none
    qk_norm: bool  # Qwen3: per-head RMSNorm on q and k before the rotary
    attn_gate: bool  # Qwen3.5: q_proj also gives a per-element gate, sigmoid(gate) * attention output before o_proj
    zero_centred_norms: bool  # Qwen3.5: every RMSNorm of the decoder scales by 1 + w
    tie_word_embeddings: bool
    max_positions: int  # max_position_embeddings: how far the rotary was trained
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    torch_dtype: str
    v_depth: int
    v_hidden: int
    v_heads: int
    v_intermediate: int
    in_chans: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int

    @staticmethod
    def read(path, model_type, interleaved, qk_norm, bias, vision_act, attn_gate=False, zero_centred=False,
             rotary_factor=1.0, legacy_yarn=False):
        """Read what Config holds from config.json (flat, or nested under text_config; rope under rope_scaling or
        rope_parameters), checked. Every value comes from the file: the transformers class defaults are not the
        checkpoints. What the file does not say is the family's: interleaved M-RoPE, q/k norms, q/k/v bias when
        `attention_bias` is absent, the vision activation, the attention output gate, zero-centred norms, the
        partial_rotary_factor when the file has none, and which transformers' YaRN it follows (read_yarn). A key
        that would change the computation and is not implemented here is refused, naming it (PORTING.md, "Config
        keys"). Returns the fields, the text config's and the vision config's Fields for the family's own."""
        raw = read_json(path, "a JSON object (a Hugging Face config.json)")
        if raw.get("model_type") != model_type:
            raise ModelError(f"{path}: model_type is {raw.get('model_type')!r}, expected {model_type!r}")
        top = Fields(raw, path)
        t = Fields({**raw, **top.sub("text_config").d}, path, "text_config." if "text_config" in raw else "")
        rope = t.sub("rope_scaling") if t.d.get("rope_scaling") else t.sub("rope_parameters")
        for key in ("rope_scaling", "rope_parameters"):  # the two levels read by different transformers versions
            if raw.get(key) and t.d.get(key) and raw[key] != t.d[key]:
                raise ModelError(f"{path}: {key} and text_config.{key} differ; which one applies depends on the "
                                 f"transformers version: keep one")
        refuse_unimplemented(path, raw, t, rope)
        n_heads = t.get("num_attention_heads")
        hidden = t.get("hidden_size")
        if "head_dim" not in t.d and hidden % n_heads:  # (no head_dim: the head size is hidden / heads, whole)
            raise ModelError(f"{path}: {t.where}hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
        head_dim = t.get("head_dim", default=hidden // n_heads)
        factor = rope.get("partial_rotary_factor", float, None) or t.get("partial_rotary_factor", float, rotary_factor)
        rotary_dim = int(head_dim * factor)  # (transformers: int(head_dim * partial_rotary_factor))
        if not 0 < factor <= 1 or rotary_dim % 2:
            raise ModelError(f"{path}: partial_rotary_factor {factor:g} of head_dim {head_dim} does not give an even "
                             f"number of dims in (0, head_dim]")
        section = rope.ints("mrope_section", 3)
        if 2 * sum(section) != rotary_dim:
            what = "head_dim" if rotary_dim == head_dim else "the rotary dims (head_dim x partial_rotary_factor)"
            raise ModelError(f"{path}: mrope_section {list(section)} sums to {sum(section)}, not {what}/2 = {rotary_dim / 2:g}")
        if t.get("hidden_act", str, "silu") != "silu":
            raise ModelError(f"{path}: hidden_act {t.d['hidden_act']!r} is not supported (expected 'silu')")
        theta = rope.get("rope_theta", float, None) or t.get("rope_theta", float)
        yarn = read_yarn(path, rope, family(model_type).FAMILY.name, interleaved, legacy_yarn,
                         t.get("max_position_embeddings", int, 128000))
        v = top.sub("vision_config")
        if v.get("hidden_act", str, vision_act) != vision_act:
            raise ModelError(f"{path}: vision_config.hidden_act {v.d['hidden_act']!r} is not supported (expected {vision_act!r})")
        if v.get("out_hidden_size") != hidden:
            raise ModelError(f"{path}: vision_config.out_hidden_size {v.d['out_hidden_size']} != hidden_size {hidden}")
        return dict(
            model_type=model_type, vocab_size=t.get("vocab_size"), hidden_size=hidden, n_layers=t.get("num_hidden_layers"),
            n_heads=n_heads, n_kv_heads=t.get("num_key_value_heads"), head_dim=head_dim,
            intermediate_size=t.get("intermediate_size"), rms_norm_eps=t.get("rms_norm_eps", float), rope_theta=theta,
            rotary_dim=rotary_dim, mrope_section=section, rope_axis=rope_axis(section, interleaved), yarn=yarn,
            attn_bias=t.get("attention_bias", bool, bias), qk_norm=qk_norm,
            attn_gate=t.get("attn_output_gate", bool, attn_gate),
            zero_centred_norms=zero_centred,
            # the text config's flag wins where there is one (transformers reads get_text_config().tie_word_embeddings)
            tie_word_embeddings=t.get("tie_word_embeddings", bool, False),
            max_positions=t.get("max_position_embeddings", int, 128000),
            image_token_id=top.get("image_token_id"), video_token_id=top.get("video_token_id"),
            vision_start_token_id=top.get("vision_start_token_id"),
            torch_dtype=t.get("torch_dtype", str, None) or top.get("dtype", str, "bfloat16"),
            v_depth=v.get("depth"), v_hidden=v.get("hidden_size"), v_heads=v.get("num_heads"),
            v_intermediate=v.get("intermediate_size"), in_chans=v.get("in_channels", int, v.get("in_chans", int, 3)),
            patch_size=v.get("patch_size"), temporal_patch_size=v.get("temporal_patch_size"),
            merge_size=v.get("spatial_merge_size"),
        ), t, v

    def check(self, path, fam):
        """What the sizes must satisfy together (each was checked alone when read): the decoder's and the vision
        tower's, and the vision sizes against the family's preprocessing (fam, a video.Family)."""
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"{path}: num_attention_heads {self.n_heads} is not a multiple of num_key_value_heads {self.n_kv_heads}")
        for key in ("image_token_id", "video_token_id", "vision_start_token_id"):
            if getattr(self, key) >= self.vocab_size:
                raise ModelError(f"{path}: {key} {getattr(self, key)} is outside the vocabulary ({self.vocab_size})")
        # the vision rotary turns a quarter of each head with the patch's row, a quarter with its column
        if self.v_hidden % self.v_heads or self.v_hidden // self.v_heads % 4:
            raise ModelError(f"{path}: vision_config.hidden_size {self.v_hidden} is not num_heads {self.v_heads} x a "
                             f"head size divisible by 4")
        # video.py cuts frames into patches with the family's constants, not the config's: they must agree
        for key, have, want in (("patch_size", self.patch_size, fam.patch), ("spatial_merge_size", self.merge_size, fam.merge),
                                ("temporal_patch_size", self.temporal_patch_size, fam.temporal_patch),
                                ("in_channels", self.in_chans, 3)):
            if have != want:
                raise ModelError(f"{path}: vision_config.{key} is {have}; {fam.name}'s video preprocessing uses {want}")


def refuse_unimplemented(path, raw, t, rope):
    """Keys of the decoder that change what it computes, each held to the one value implemented here: a checkpoint
    that asks for more stops with the key named, rather than running as if the key were not there."""
    if t.get("use_sliding_window", bool, False):
        raise ModelError(f"{path}: {t.where}use_sliding_window is true: sliding-window attention is not implemented")
    if "sliding_attention" in (t.d.get("layer_types") or ()):  # (newer transformers' name for a windowed layer)
        raise ModelError(f"{path}: {t.where}layer_types names a 'sliding_attention' layer: sliding-window attention is "
                         f"not implemented")
    quant = raw.get("quantization_config") or t.d.get("quantization_config")
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        raise ModelError(f"{path}: quantization_config{f' ({method})' if method else ''}: quantized checkpoints are not "
                         f"supported; use the unquantized release")


# The rotary types implemented here. "mrope" is Qwen2.5-VL's old name for plain M-RoPE (its config class maps it to
# "default"). Each type takes only its own keys: any other key in the dict is refused (a YaRN factor left under
# rope_type "default" would otherwise be dropped in silence, as transformers drops it).
ROPE_KEYS = {"rope_type", "type", "mrope_section", "mrope_interleaved", "rope_theta", "partial_rotary_factor",
             "original_max_position_embeddings"}  # (the last names the trained context: plain M-RoPE ignores it)
YARN_KEYS = {"factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate"}


def read_yarn(path, rope, name, interleaved, legacy, max_positions):
    """The rotary dict (rope_scaling / rope_parameters) beyond mrope_section: plain M-RoPE (-> None) or YaRN (-> its
    parameters, resolved as the family's reference resolves them). legacy: transformers 4.51.3's YaRN (Qwen2.5-VL's
    reference), where a given original_max_position_embeddings replaces `factor` by max_position_embeddings /
    original_max_position_embeddings and the ramp's ends are always rounded outwards; else 4.57's (Qwen3-VL's), which
    uses `factor` as written and reads `truncate`."""
    where = rope.where
    named = {k: rope.get(k, str, None) for k in ("rope_type", "type")}
    kinds = {"default" if v == "mrope" else v for v in named.values() if v is not None}
    if len(kinds) > 1:  # (Qwen2.5-VL's config class lets `type` win, Qwen3-VL's rotary reads rope_type alone)
        raise ModelError(f"{path}: {where}type {named['type']!r} and {where}rope_type {named['rope_type']!r} disagree: "
                         f"give one")
    kind = kinds.pop() if kinds else "default"
    if kind not in ("default", "yarn"):
        raise ModelError(f"{path}: {where}rope_type {kind!r} is not implemented (implemented: 'default' M-RoPE, 'yarn')")
    if rope.get("mrope_interleaved", bool, interleaved) != interleaved:  # its reference would ignore the key
        raise ModelError(f"{path}: {where}mrope_interleaved is {str(not interleaved).lower()}, but {name}'s M-RoPE is "
                         f"{'interleaved' if interleaved else 'sectioned'}")
    allowed = ROPE_KEYS | (YARN_KEYS if kind == "yarn" else set())
    for key in rope.d:
        if key not in allowed:
            raise ModelError(f"{path}: {where}{key} is not a key of rope_type {kind!r} implemented here; refused rather "
                             f"than ignored")
    if kind == "default":
        return None
    factor = rope.get("factor", float)
    original = rope.get("original_max_position_embeddings", int, None)
    if legacy and original is not None:
        factor = max_positions / original
    truncate = rope.get("truncate", bool, True)
    if legacy and not truncate:
        raise ModelError(f"{path}: {where}truncate is false, which {name}'s reference (transformers 4.51.3) does not "
                         f"read: it always rounds YaRN's ramp")
    # the attention scale (YaRN's "mscale"): sqrt(1/t) of the paper, 0.1 ln(s) + 1, unless given outright
    mscale = lambda scale, m=1.0: 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
    m, m_all = rope.get("mscale", float, None), rope.get("mscale_all_dim", float, None)
    attention = rope.get("attention_factor", float, None)
    if attention is None:
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    return dict(factor=factor, original=original or max_positions, beta_fast=rope.get("beta_fast", float, 32.0),
                beta_slow=rope.get("beta_slow", float, 1.0), truncate=truncate, attention=attention)


def rope_frequencies(c, device):
    """The decoder rotary's inverse frequencies [rotary_dim/2] fp32, and the factor cos/sin are scaled by (1 but for
    YaRN). YaRN keeps the fast frequencies (many turns within the original context: local order), divides the slow
    ones by the factor (so the longer context spans no more of their period than training did), and blends linearly
    in between, over the frequency indexes where a frequency turns beta_fast down to beta_slow times."""
    d = c.rotary_dim
    period = c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)  # (over 2 pi)
    if c.yarn is None:
        return 1.0 / period, 1.0
    y = c.yarn
    # the (fractional) frequency index at which a frequency turns `turns` times over the original context
    index = lambda turns: d * math.log(y["original"] / (turns * 2 * math.pi)) / (2 * math.log(c.rope_theta))
    lo, hi = index(y["beta_fast"]), index(y["beta_slow"])
    if y["truncate"]:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    width = hi - lo if hi != lo else 0.001  # (the reference's guard against a ramp of no width)
    ramp = ((torch.arange(d // 2, dtype=torch.float32, device=device) - lo) / width).clamp(0, 1)
    keep = 1 - ramp  # 1: the trained frequency, 0: divided by the factor (written as the reference blends, bit for bit)
    return 1.0 / (y["factor"] * period) * (1 - keep) + 1.0 / period * keep, y["attention"]


def rope_axis(section, interleaved):
    """Which position row (T=0, H=1, W=2) each rotary frequency j < head_dim/2 turns with. Qwen2.5-VL: contiguous
    sections [T..T H..H W..W]. Qwen3-VL (interleaved): T by default, H where j % 3 == 1 and W where j % 3 == 2, for j
    below 3x that axis' section (transformers 4.57 apply_interleaved_mrope)."""
    if not interleaved:
        return tuple(a for a, n in enumerate(section) for _ in range(n))
    return tuple(1 if j % 3 == 1 and j < 3 * section[1] else 2 if j % 3 == 2 and j < 3 * section[2] else 0
                 for j in range(sum(section)))


# ----------------------------------------------------------------------------- small shared pieces

def upcast(x):  # to fp32 for bf16/fp16/fp32; fp64 stays fp64 (the float64 gradient checks rely on it)
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    """RMSNorm as each family's reference computes it: Qwen2 / Qwen3 normalize in fp32 and scale in the model dtype;
    a zero-centred one (Qwen3.5: its stored weight w scales by 1 + w) scales in fp32, then casts."""

    def __init__(self, dim, eps, zero_centred=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.zero_centred = eps, zero_centred

    def forward(self, x):
        xf = upcast(x)
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.zero_centred:
            return (normed * (1.0 + upcast(self.weight))).to(x.dtype)
        return self.weight * normed.to(x.dtype)


def rotate_half(x):  # pairs dim i with dim i + d/2
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    """x [..., S, d] turned by cos/sin [S, r]: all of it (r = d), or (partial rotary) its first r dims only, the rest
    passed through as they are."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    turned, kept = x[..., :r], x[..., r:]
    return torch.cat([turned * cos + rotate_half(turned) * sin, kept], -1)


# ----------------------------------------------------------------------------- vision: what both towers share

def merge_order_hw(h, w, m):
    """(row, col) of every patch of one frame, in the processor's merge-block-major order. -> [h*w, 2]"""
    rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
    cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
    return torch.stack([rows.permute(0, 2, 1, 3).flatten(), cols.permute(0, 2, 1, 3).flatten()], -1)


def vision_angles(grids, head_dim, m):
    """2D rotary angles of every patch, fp32 [N, head_dim/2]: the first half of the frequencies turn with the row, the
    second half with the column (both families)."""
    inv = 1.0 / 10000 ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float32) / (head_dim // 2))
    hw = torch.cat([merge_order_hw(h, w, m).repeat(t, 1) for t, h, w in grids]).float()
    return torch.cat([hw[:, :1] * inv, hw[:, 1:] * inv], -1)


def frame_groups(grids):
    """Cumulative patch boundaries of the 2-frame groups: full attention never crosses one."""
    cu = [0]
    for t, h, w in grids:
        cu += [cu[-1] + h * w * (i + 1) for i in range(t)]
    return cu


def segment_groups(cu, device):
    """Cumulative boundaries -> one [n, L] index tensor per distinct segment length, so that all equal-length
    segments run as one batched attention call."""
    starts, lens = torch.tensor(cu[:-1]), torch.tensor(cu[1:]) - torch.tensor(cu[:-1])
    return [(starts[lens == L, None] + torch.arange(L)).to(device) for L in lens.unique().tolist()]


class VisionAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # rows: [q | k | v]
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin, segments):  # x [N, Dv]; cos/sin [N, 1, dv] fp32; segments: list of [n, L] indices
        N, Dv = x.shape
        q, k, v = self.qkv(x).view(N, 3, self.heads, -1).unbind(1)  # each [N, Hv, dv]
        # the vision rotary is applied in fp32 (both references)
        q = (upcast(q) * cos + rotate_half(upcast(q)) * sin).to(x.dtype)
        k = (upcast(k) * cos + rotate_half(upcast(k)) * sin).to(x.dtype)
        out = torch.empty_like(q)
        for idx in segments:  # attention never crosses a window / 2-frame group; equal-length segments batched
            qs, ks, vs = (t[idx].transpose(1, 2) for t in (q, k, v))  # [n, Hv, L, dv]
            out[idx] = F.scaled_dot_product_attention(qs, ks, vs).transpose(1, 2)
        return self.proj(out.reshape(N, Dv))


class VisionBlock(nn.Module):  # pre-norm transformer block; the family gives its norms and MLP
    def __init__(self, dim, heads, norm, mlp):
        super().__init__()
        self.norm1, self.norm2 = norm(), norm()
        self.attn = VisionAttention(dim, heads)
        self.mlp = mlp

    def forward(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


def patch_embed(proj, pixels):  # the Conv3d has stride = kernel: one matmul over flattened patches
    w = proj.weight
    return F.linear(pixels.to(w.dtype), w.view(w.shape[0], -1), proj.bias)


def grid_positions(ids, c, blocks):
    """M-RoPE positions [3, S] (T, H, W rows), int64, for a prompt whose visual blocks are given in order as
    (t_index [t] int64, lh, lw) merged-token grids. Text advances all three rows together; a block starts at the
    position after the text before it and spans (t_index, row, col); text after a block resumes at its max + 1.
    Each block must sit right after a <|vision_start|>. Both families' get_rope_index reduce to this."""
    ids = torch.as_tensor(ids)
    S = ids.numel()
    starts = ((ids[:-1] == c.vision_start_token_id).nonzero().flatten() + 1).tolist()
    if any(int(ids[s]) == c.image_token_id for s in starts):
        raise NotImplementedError("image inputs are not supported; this pipeline is video-only")
    starts = [s for s in starts if int(ids[s]) == c.video_token_id]
    n_video = sum(len(t) * lh * lw for t, lh, lw in blocks)
    if len(starts) != len(blocks) or int((ids == c.video_token_id).sum()) != n_video:
        raise ValueError("the prompt's <|video_pad|> tokens do not match the video grids")
    pos, nxt, st = [], 0, 0
    for s, (tt, lh, lw) in zip(starts, blocks):
        pos.append(torch.arange(s - st).expand(3, -1) + nxt)  # text before the block, incl. <|vision_start|>
        nxt += s - st
        grid = torch.stack(torch.meshgrid(tt, torch.arange(lh), torch.arange(lw), indexing="ij")).view(3, -1)
        pos.append(grid + nxt)
        nxt = int(pos[-1].max()) + 1
        st = s + len(tt) * lh * lw
    pos.append(torch.arange(S - st).expand(3, -1) + nxt)
    return torch.cat(pos, 1)


# ----------------------------------------------------------------------------- the decoder (Qwen2 / Qwen3)

@dataclass
class Cache:
    """The decoder state that we own, per layer, preallocated. An attention layer keeps keys and values: rows
    [0, length) are valid, and keys are stored after RoPE, so rows can be edited (the V-Reason controller) or dropped
    (V-Reason Lite) without recomputing anything. A layer with a fixed-size state (linear attention) keeps that
    instead, in `state`, and None in k and v: it has folded every token in, so nothing of it can be edited or
    dropped. `at` holds, on each device, the row the next decode step writes: a step reads it as a tensor, never as a
    Python int."""
    k: list  # per layer: [Hkv, T_max, d], or None
    v: list  # per layer: [Hkv, T_max, d], or None
    state: list  # per layer: a fixed-state layer's tensors (its new_state), or None
    length: int = 0
    at: dict = field(default_factory=dict)  # device -> int64 [1]

    @classmethod
    def empty(cls, layers, max_len, dtype):
        """For these decoder layers, each on its own device (a model may be split across GPUs)."""
        k, v, state = [], [], []
        for layer in layers:
            dev = layer.input_layernorm.weight.device
            if layer.holds_kv:
                # zeros, not empty: a decode step attends over every row under a mask, and 0 * NaN of a garbage row is NaN
                k.append(torch.zeros(layer.hkv, max_len, layer.d, device=dev, dtype=dtype))
                v.append(torch.zeros(layer.hkv, max_len, layer.d, device=dev, dtype=dtype))
                state.append(None)
            else:
                k.append(None), v.append(None), state.append(layer.new_state(dtype))
        devs = {layer.input_layernorm.weight.device for layer in layers}
        return cls(k, v, state, at={torch.device(d): torch.zeros(1, dtype=torch.long, device=d) for d in devs})

    @property
    def kv_layers(self):  # the layers that keep K/V rows (all of them but a hybrid's linear-attention layers)
        return [i for i, K in enumerate(self.k) if K is not None]

    def tensors(self):  # every tensor the cache holds
        return [t for t in [*self.k, *self.v] if t is not None] + [t for s in self.state if s for t in s]

    def nbytes(self):  # bytes of the valid rows, and of the fixed states
        rows = sum(2 * self.k[i][:, : self.length].numel() * self.k[i].element_size() for i in self.kv_layers)
        return rows + sum(t.numel() * t.element_size() for s in self.state if s for t in s)


@dataclass
class Slots:
    """B samples' decoder states side by side, to decode them together (batch.generate_batch): every tensor of a
    Cache with a leading slot dimension, and each slot's own valid rows. view(b) is slot b as a Cache of its own (views
    of the same storage), on which prefill, Lite and the controller run unchanged; a step (VideoLM.decode_slots) then
    advances every slot by one token, at its own row."""
    k: list  # per layer: [B, Hkv, T_max, d], or None
    v: list
    state: list  # per layer: a fixed-state layer's tensors, each [B, ...], or None
    lengths: list  # per slot: its valid rows
    at: dict = field(default_factory=dict)  # device -> int64 [B]: the row each slot's next token goes to

    @classmethod
    def empty(cls, layers, slots, max_len, dtype):
        one = [Cache.empty(layers, max_len, dtype) for _ in range(slots)]  # (the same layout, stacked)
        stack = lambda ts: None if ts[0] is None else torch.stack(ts)
        return cls([stack([c.k[i] for c in one]) for i in range(len(layers))],
                   [stack([c.v[i] for c in one]) for i in range(len(layers))],
                   [None if one[0].state[i] is None else tuple(torch.stack(ts) for ts in zip(*(c.state[i] for c in one)))
                    for i in range(len(layers))],
                   [0] * slots, {d: torch.zeros(slots, dtype=torch.long, device=d) for d in one[0].at})

    def view(self, b):  # slot b as a Cache (its length read back into lengths[b] by the caller that changes it)
        return Cache([None if K is None else K[b] for K in self.k], [None if V is None else V[b] for V in self.v],
                     [None if s is None else tuple(t[b] for t in s) for s in self.state], self.lengths[b],
                     {d: a[b : b + 1] for d, a in self.at.items()})


# SDPA may pick cuDNN attention on an H100 with recent torch; its plans are keyed on the exact key length, so every
# new prompt length and every controller update (attention over the valid rows) would build a plan, and the plan cache
# grows over an eval run. Flash, memory-efficient and math kernels do not re-plan per length.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def rows_mask(last, T, dtype):
    """[B] int64, each sample's last valid row -> the [B, T] additive mask over its preallocated rows: 0 up to that
    row, -inf after (a decode step's, one sample's or many slots', and the batched update's)."""
    return torch.zeros(last.shape[0], T, device=last.device, dtype=dtype).masked_fill(
        torch.arange(T, device=last.device) > last[:, None], -math.inf)


def decode_attention(q, K, V, mask):
    """A decode step's attention: one new row per query head and sample, q [H, B, d], over each sample's whole
    preallocated cache K/V [B, Hkv, T, d] (one sample: [Hkv, T, d], B = 1), rows after its new one masked (mask
    [B, T], 0 or -inf) -> [H, B, d]. The H / Hkv query heads that share a kv head become that head's query rows, so
    each cached row is read once (SDPA's GQA under a mask falls back to the math kernel, which repeats and upcasts the
    cache for every query head)."""
    if K.dim() == 3:
        K, V = K[None], V[None]
    (H, B, d), Hkv = q.shape, K.shape[1]
    q = q.transpose(0, 1).reshape(B, Hkv, H // Hkv, d)
    mask = mask.view(B, 1, 1, -1)
    if torch.compiler.is_compiling():  # --compile: the same sums written out, for inductor to spread over the GPU
        # (SDPA's memory-efficient kernel runs one block per kv head and walks the cache rows in turn: few of a big
        # GPU's SMs work; measured: docs/performance.md#decode-attention)
        s = (q[:, :, :, None].float() * K[:, :, None].float()).sum(-1) / math.sqrt(d) + mask  # [B, Hkv, H/Hkv, T] fp32
        o = (s.softmax(-1)[..., None] * V[:, :, None].float()).sum(-2).to(q.dtype)  # [B, Hkv, H/Hkv, d]
    else:
        with sdpa_kernel(SDPA_BACKENDS):  # eager: SDPA (the eager step is bound by its launches, not by this)
            o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask)
    return o.reshape(B, H, d).transpose(0, 1)


def swiglu(x, norm, gate_up, down):  # the residual SwiGLU MLP every decoder layer ends with: x + down(silu(g) * u)
    gate, up = (norm(x) @ gate_up).chunk(2, -1)
    return x + (F.silu(gate) * up) @ down


class DecoderLayer(nn.Module):
    """An attention layer with a K/V cache: a Qwen2 layer (q/k/v bias), a Qwen3 layer (no bias, per-head RMSNorm on q
    and k before the rotary) or a Qwen3.5 full-attention layer (Qwen3's, plus an output gate from q_proj, partial
    rotary and zero-centred norms): RMSNorm, GQA attention, RMSNorm, SwiGLU MLP. The matrices are stored packed and
    transposed, [in, out]: q|k|v as one, gate|up as one. Decoding reads every weight once per token, and on a CPU a
    vector times an [in, out] matrix streams it faster than the checkpoint's [out, in]
    (docs/performance.md#weight-layout); packing also means fewer, larger products. Values get no norm and no rotary
    in any family: ΔV acts on v_proj's output."""

    holds_kv = True  # its cache is K/V rows (Cache); a layer with a fixed state says False
    renames = {"q_norm.weight": "self_attn.q_norm.weight", "k_norm.weight": "self_attn.k_norm.weight"}  # (checkpoint_layout)

    def __init__(self, c):
        super().__init__()
        D, d, H, Hkv, I = c.hidden_size, c.head_dim, c.n_heads, c.n_kv_heads, c.intermediate_size
        q_width = 2 * d if c.attn_gate else d  # gated: per head [query | gate], as q_proj lays them out
        self.d, self.hkv, self.gated = d, Hkv, c.attn_gate
        self.split, self.widths = [H * q_width, Hkv * d, Hkv * d], [q_width, d, d]
        norm = lambda dim: RMSNorm(dim, c.rms_norm_eps, c.zero_centred_norms)
        self.input_layernorm = norm(D)
        self.qkv = nn.Parameter(torch.empty(D, sum(self.split)))  # [q_proj | k_proj | v_proj].T
        self.qkv_bias = nn.Parameter(torch.empty(sum(self.split))) if c.attn_bias else None
        self.q_norm = norm(d) if c.qk_norm else None
        self.k_norm = norm(d) if c.qk_norm else None
        self.o = nn.Parameter(torch.empty(H * d, D))  # o_proj.T, no bias
        self.post_attention_layernorm = norm(D)
        self.gate_up = nn.Parameter(torch.empty(D, 2 * I))  # [gate_proj | up_proj].T, no bias
        self.down = nn.Parameter(torch.empty(I, D))  # down_proj.T

    def packing(self):  # our packed matrix -> the checkpoint matrices in it, in order, with their output rows
        return {"qkv": [("self_attn.q_proj", self.split[0]), ("self_attn.k_proj", self.split[1]),
                        ("self_attn.v_proj", self.split[2])],
                "o": [("self_attn.o_proj", self.o.shape[1])],
                "gate_up": [("mlp.gate_proj", self.down.shape[0]), ("mlp.up_proj", self.down.shape[0])],
                "down": [("mlp.down_proj", self.down.shape[1])]}

    def project(self, x, cos, sin):
        """x [S, D] -> q [H, S, d], k/v [Hkv, S, d], RoPE applied to q and k. Gated (Qwen3.5), q is [H, S, 2d]: the
        query, then its output gate, which rides along into finish."""
        S = x.shape[0]
        x = self.input_layernorm(x)
        qkv = x @ self.qkv if self.qkv_bias is None else x @ self.qkv + self.qkv_bias  # (not addmm: compiled, the add fuses)
        q, k, v = (t.view(S, -1, w).transpose(0, 1) for t, w in zip(qkv.split(self.split, -1), self.widths))
        if self.gated:
            q, gate = q.chunk(2, -1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return (torch.cat([q, gate], -1) if self.gated else q), k, v

    def finish(self, x, q, K, V, mask=None):
        """Attention of q [H, S, d] (gated: [H, S, 2d], see project) over K/V [Hkv, T, d] (causal when S > 1 and no
        mask; a decode step passes the mask [1, T] of its preallocated cache; decoding slots (Slots), the S rows are S
        samples, each over its own cache K/V [S, Hkv, T, d] under its mask [S, T]), the output gate, o_proj,
        residual, MLP."""
        if self.gated:
            q, gate = q.chunk(2, -1)
        H, S, d = q.shape
        if mask is not None and (S == 1 or K.dim() == 4):
            o = decode_attention(q, K, V, mask)
        else:
            with sdpa_kernel(SDPA_BACKENDS):
                o = F.scaled_dot_product_attention(q[None], K[None], V[None], attn_mask=mask, is_causal=S > 1 and mask is None,
                                                   enable_gqa=True)
        o = o.reshape(H, S, d).transpose(0, 1).reshape(S, -1)
        if self.gated:
            o = o * torch.sigmoid(gate.transpose(0, 1).reshape(S, -1))
        return swiglu(x + o @ self.o, self.post_attention_layernorm, self.gate_up, self.down)

    def cache_bytes(self, tokens, itemsize):  # what its K/V rows for this many tokens take
        return 2 * self.hkv * self.d * tokens * itemsize

    def prefill_values(self):  # activations a prompt token holds in this layer at once: q|k|v, then the MLP's 4 I
        return sum(self.split) + 4 * self.down.shape[0]


class LLM(nn.Module):  # checkpoint prefix "model." / "model.language_model."
    def __init__(self, c, make_layer):
        super().__init__()
        # a tied head is the embedding: then the one table lives in VideoLM.lm_head, transposed
        self.embed_tokens = None if c.tie_word_embeddings else nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(make_layer(i) for i in range(c.n_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.zero_centred_norms)


@dataclass
class Visual:
    """A video after the vision encoder: one feature per <|video_pad|> token, in prompt order, and (Qwen3-VL's
    DeepStack) one more feature set per early decoder layer, added to the video rows after that layer in prefill."""
    embeds: torch.Tensor  # [M, D]
    deepstack: list = field(default_factory=list)  # k x [M, D]


class VideoLM(nn.Module):
    """The model contract: what V-Reason needs from a model, and nothing more. vreason.py uses exactly these:

      encode_video(video) -> Visual          vision features of a prepared video (video.py's Video)
      prompt(tok, question, video, system)   -> ids [S], positions [3, S]: the family's chat prompt and its
                                             explicit M-RoPE positions
      text_position(p, device) -> [3, 1]     the position of a text token at index p: decode steps continue at
                                             max(prompt positions) + 1, whatever Lite did to the cache
      new_cache(max_len) -> Cache            the decoder state we own, on the layers' devices; of it, the method reads:
        cache.k[i], cache.v[i]               layer i's keys and values, [Hkv, T_max, d], or None for a layer with a
                                             fixed state (linear attention): the controller edits the last layer's
                                             video value rows (the last layer must keep K/V)
        cache.kv_layers                      the layers that keep K/V rows: Lite compacts those, and only those
        cache.length                         the valid rows [0, length) (Lite lowers it)
        cache.nbytes()                       bytes of the cache (what Lite saves)
      prefill(ids, pos, visual, cache)       -> (logits [vocab] fp32 of the last row, that row's input to the last
                                             layer [1, D]); fills cache rows [0, S) and the fixed states
      decode(token, pos, cache, finish)      one step; finish=False stops once the last layer's K/V are cached and
                                             returns (None, h_in): the controller finishes that layer itself
      last_layer(h_in, pos, K, V) -> logits  the last layer for one position over given K/V (edited value rows),
                                             then final norm + head. Why the last layer: its values feed nothing
                                             else that is cached, so ΔV's gradient needs only this
      video_spans(ids) -> [(lo, hi), ...]    cache rows of the video tokens (Qwen3-VL: one span per frame group,
                                             timestamps between them are text)
      layer_devices()                        each layer's device (its cache's); the first takes the prompt ids
      devices()                              every device the model uses (synchronized before a timer is read)
    and for batch.py: new_slots(n, max_len) (Slots: n caches side by side; view(b) is one as a Cache),
    decode_slots(tokens, pos, slots, finish) (one step for every slot), last_layer over slots (mask), slot_mask,
    text_position of an index tensor [B] -> [3, B];
    and, for the CLI and eval.py around the method: family (the video.Family: preprocessing, special tokens),
    stop_ids(tok), thinking (the prompt opens the answer with <think>), compile_decode() (--compile), c.model_type
    and c.max_positions (the prompt's length check).

    Assumed of the model: the last layer is full attention with a value cache, values carry no rotary, and the video
    rows are known (PORTING.md). The decoder and the head are shared by every family; a family file adds `visual`,
    `encode_video`, `prompt`, its video.Family and checkpoint prefixes, and (a hybrid) its own kind of layer."""

    family = None  # the family's video.Family: its preprocessing, special and stop tokens
    prefixes = ()  # its checkpoint key prefixes: (old, new) pairs (checkpoint_name)
    ignored = ()  # checkpoint keys it does not use, by prefix (as transformers ignores them on load)
    thinking = False  # the prompt opens the answer with <think> (read_template decides; a family may let you choose)
    compiled = cuda_graphs = False  # set by compile_decode()

    def __init__(self, c, make_layer=None):
        """make_layer(i) -> decoder layer i (default: an attention DecoderLayer; a hybrid's family mixes kinds)."""
        super().__init__()
        self.c = c
        self.llm = LLM(c, make_layer or (lambda i: DecoderLayer(c)))
        self.lm_head = nn.Parameter(torch.empty(c.hidden_size, c.vocab_size))  # lm_head.weight.T [D, vocab]
        self._rope = {}  # device -> (inverse frequencies [d/2], rope_axis [d/2]): computed once per device

    @property
    def dtype(self):
        return self.lm_head.dtype

    # --- the contract
    def text_position(self, p, device):
        """The position of a text token at index p, as the prompt's positions lay it out ([3, 1]: every M-RoPE row
        the same): where a decode step's token goes. p may be an int64 tensor [B], one index per slot -> [3, B]."""
        if isinstance(p, torch.Tensor):
            return p.to(device)[None].repeat(3, 1)
        return torch.full((3, 1), p, device=device)

    def stop_ids(self, tok):  # the ids generation ends at: the family's stop tokens, as this tokenizer spells them
        return {tok.token_to_id(t) for t in self.family.stop_tokens} - {None}

    def read_template(self, model_dir):  # what the checkpoint's chat template decides (a family overrides)
        pass

    def new_cache(self, max_len):
        if not self.compiled:
            return Cache.empty(self.llm.layers, max_len, self.dtype)
        # compiled: one cache for the life of the model, grown (in steps of 512 rows: a recompile) only when a request
        # needs more, so that the step keeps its shapes and, under CUDA graphs, its addresses. One sample at a time.
        cache = self._cache
        if cache is None or cache.k[cache.kv_layers[0]].shape[1] < max_len:
            cache = self._cache = Cache.empty(self.llm.layers, -(-max_len // 512) * 512, self.dtype)
            if self.cuda_graphs:  # the graphs write into these in place: their addresses are part of the graph
                for t in [*cache.tensors(), *cache.at.values()]:
                    torch._dynamo.mark_static_address(t)
        cache.length = 0
        return cache

    def compile_decode(self):
        """--compile: torch.compile the decode step, whole (fullgraph), with CUDA graphs on CUDA (one launch a token
        instead of ~40 a layer). Its shapes and Python values never change from token to token, so each variant
        (finish or not, see decode) compiles once. last_layer, V-Reason's update and redecode, is compiled too, for
        any number of valid rows (dynamic). The eager code stays the readable reference; tests/test_compile.py holds
        the two equal. On CUDA, as gpt-fast does, inductor's coordinate-descent tuning: it turns each vector x matrix
        product of the step into a Triton reduction tuned to the bandwidth, with the norm, bias, SwiGLU or residual
        around it fused in. Such a reduction streams the weights fastest along its rows, so the decoder's matrices
        and the head are then stored [out, in] (the checkpoint's order) behind the same [in, out] view (eager code
        and cuBLAS take either; the three measured: docs/performance.md#compiled-decode)."""
        self.cuda_graphs = any(d.type == "cuda" for d in self.devices())
        if self.cuda_graphs:
            with torch.no_grad():
                for p in [*self.llm.layers.parameters(), self.lm_head]:
                    if p.dim() == 2:
                        p.data = p.data.T.contiguous().T
        options = {"triton.cudagraphs": True, "coordinate_descent_tuning": True} if self.cuda_graphs else None
        self.step = torch.compile(self.step, fullgraph=True, options=options)
        self.step_slots = torch.compile(self.step_slots, fullgraph=True, options=options)  # (batch.py's step)
        self.last_layer = torch.compile(self.last_layer, dynamic=True)
        self.compiled, self._cache, self._slots = True, None, None

    def prefill(self, ids, pos, visual, cache):
        deepstack = (ids == self.c.video_token_id, visual.deepstack) if visual is not None and visual.deepstack else None
        return self(self.embed(ids, visual), pos, cache, deepstack=deepstack)

    def decode(self, token, pos, cache, finish=True):
        """One token (token [1] int64 on the embedding's device, pos [3, 1]) written at row cache.length. The step
        itself (`step`, which compile_decode() compiles) sees that row only as a device tensor (cache.at): its shapes
        and Python values are the same for every token, and it makes no host sync."""
        for at in cache.at.values():
            at.fill_(cache.length)  # a fill kernel with the value as its argument: asynchronous
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new token: the previous replay's outputs may be overwritten
        logits, h_in = self.step(token, pos, cache, finish)
        cache.length += 1
        if self.compiled:  # the graph's outputs live in its own memory, which the next replay reuses: keep copies
            logits, h_in = (None if logits is None else logits.clone()), h_in.clone()
        return logits, h_in

    def step(self, token, pos, cache, finish):
        return self.layers(self.embed(token), pos, cache, finish=finish, at=cache.at)

    def new_slots(self, n, max_len):
        """The decoder state of n samples side by side (Slots), max_len rows each, every slot empty. Compiled (as
        new_cache): one set for the life of the model while n and max_len stay (an eval run's do), so that the
        batched step keeps its shapes and, under CUDA graphs, its addresses."""
        slots = self._slots if self.compiled else None
        if slots is None or (len(slots.lengths), slots.k[-1].shape[2]) != (n, max_len):
            slots = Slots.empty(self.llm.layers, n, max_len, self.dtype)
            if self.cuda_graphs:  # the graphs write into these in place: their addresses are part of the graph
                for t in [*(x for x in slots.k + slots.v if x is not None), *(t for st in slots.state if st for t in st),
                          *slots.at.values()]:
                    torch._dynamo.mark_static_address(t)
            if self.compiled:
                self._slots = slots
        slots.lengths = [0] * n
        return slots

    def decode_slots(self, tokens, pos, slots, finish=True):
        """One token for every slot (tokens [B] int64 on the embedding's device, pos [3, B]), each written at its own
        row slots.lengths[b] -> (logits [B, vocab] fp32, the last layer's input [B, D]); finish=False stops as
        decode's does, once the last layer's K/V are cached (logits None). Rows that are no sample's (an empty slot)
        compute and are dropped. The step (step_slots, compiled by compile_decode) has the same shapes for every
        token and makes no host sync."""
        for at in slots.at.values():
            at.copy_(torch.tensor(slots.lengths, device=at.device))
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits, h_in = self.step_slots(tokens, pos, slots, finish)
        slots.lengths = [n + 1 for n in slots.lengths]
        if self.compiled:  # (as decode: the graph's outputs are overwritten by its next replay)
            logits, h_in = (None if logits is None else logits.clone()), h_in.clone()
        return logits, h_in

    def step_slots(self, tokens, pos, slots, finish):
        return self.layers(self.embed(tokens), pos, slots, finish=finish, at=slots.at)

    def slot_mask(self, slots, device):  # [B, T] for last_layer over the slots: 0 on each slot's valid rows, -inf after
        K = next(K for K in slots.k if K is not None)
        return rows_mask(torch.tensor(slots.lengths, device=device) - 1, K.shape[2], K.dtype)

    def last_layer(self, h_in, pos, K, V, mask=None):
        """Recompute the last layer for one position from its input h_in [1, D] over the given K/V [Hkv, T, d]
        (the V-Reason controller passes values with edited video rows), then norm + head -> logits [vocab]. Over
        slots: h_in [B, D], pos [3, B], each row over its own K/V [B, Hkv, T, d] under mask [B, T] -> [B, vocab]."""
        layer = self.llm.layers[-1]
        cos, sin = self.rope(pos.to(h_in.device), h_in.dtype)
        q, _, _ = layer.project(h_in, cos[None], sin[None])
        logits = self.logits(layer.finish(h_in, q, K, V, mask))
        return logits if mask is not None else logits[0]

    def video_spans(self, ids):  # contiguous runs of <|video_pad|> -> [(lo, hi)] cache rows
        where = (torch.as_tensor(ids) == self.c.video_token_id).nonzero().flatten().tolist()
        spans = []
        for i in where:
            if spans and spans[-1][1] == i:
                spans[-1][1] = i + 1
            else:
                spans.append([i, i + 1])
        return [tuple(s) for s in spans]

    def layer_devices(self):  # where each decoder layer (and its KV cache) lives; one device unless split
        return [layer.input_layernorm.weight.device for layer in self.llm.layers]

    def devices(self):  # every device the model uses
        return sorted({p.device for p in (self.lm_head, self.llm.norm.weight, next(self.visual.parameters()))}
                      | set(self.layer_devices()), key=str)

    # --- the shared decoder
    def rope(self, pos, dtype):
        """pos [3, S] -> cos/sin [S, r] (r = c.rotary_dim): frequency j turns with the T/H/W row that c.rope_axis names;
        angles in fp32, cos/sin (times YaRN's attention scale) in fp32, then the model dtype (the references)."""
        if pos.device not in self._rope:
            inv, scale = rope_frequencies(self.c, pos.device)
            self._rope[pos.device] = inv, scale, torch.tensor(self.c.rope_axis, device=pos.device)
        inv, scale, axis = self._rope[pos.device]
        theta = pos[axis].float().T * inv  # [S, r/2] fp32
        theta = torch.cat([theta, theta], -1)
        cos, sin = theta.cos(), theta.sin()
        if scale != 1:  # (plain M-RoPE: no multiply, no extra kernel in the decode step)
            cos, sin = cos * scale, sin * scale
        return cos.to(dtype), sin.to(dtype)

    def embed(self, ids, visual=None):  # ids [S] -> [S, D], video rows replaced by the vision features
        table = self.llm.embed_tokens
        h = table(ids) if table is not None else self.lm_head[:, ids].T.contiguous()
        if visual is not None:
            is_video = ids == self.c.video_token_id
            if int(is_video.sum()) != visual.embeds.shape[0]:
                raise ValueError(f"{int(is_video.sum())} <|video_pad|> tokens but {visual.embeds.shape[0]} video features")
            h = h.masked_scatter(is_video[:, None], visual.embeds.to(h.dtype))
        return h

    def logits(self, h):  # final norm + LM head, only on the rows passed in; bf16/fp16 logits are upcast to fp32
        h = self.llm.norm(h.to(self.llm.norm.weight.device)).to(self.lm_head.device)
        return upcast(h @ self.lm_head)

    def forward(self, h, pos, cache, finish=True, deepstack=None):
        """Prefill: S rows h [S, D] at positions pos [3, S] into the empty cache (causal attention). Returns the logits
        of the last row [vocab] (fp32) and that row's input to the last layer [1, D]."""
        assert cache.length == 0, "a prefill fills an empty cache; decode() appends"
        out = self.layers(h, pos, cache, finish, deepstack)
        cache.length = h.shape[0]
        return out

    def layers(self, h, pos, cache, finish=True, deepstack=None, at=None):
        """All decoder layers. Prefill (at None): rows [0, S) of the cache, causal attention. Decode (at: device -> int64
        [1]): the one new row goes to row `at` and attends over the whole preallocated cache, rows after `at` masked.
        A fixed-state layer (linear attention) runs over its S rows from, and into, its own state. finish=False stops
        once the last layer's K/V are cached and returns no logits (the V-Reason controller finishes that layer itself;
        the last layer is always attention). deepstack = (rows [S] bool, k x [rows, D]): feature i is added to those
        rows after layer i (Qwen3-VL's DeepStack, prefill only)."""
        S, slotted = h.shape[0], isinstance(cache, Slots)  # slotted: one row per slot, each over its own cache
        cos, sin = self.rope(pos, h.dtype)
        last, masks = self.c.n_layers - 1, {}
        for i, layer in enumerate(self.llm.layers):
            dev = layer.input_layernorm.weight.device
            if dev != h.device:  # model split across devices: hop to this layer's device
                h, cos, sin = h.to(dev), cos.to(dev), sin.to(dev)
            if i == last:  # a copy: a view would keep the prefill's [S, D] activations alive until the next step
                h_last_in = h if slotted or S == 1 else h[-1:].clone()
            if not layer.holds_kv:
                h = layer(h, cache.state[i], prefill=at is None)
                continue
            q, k, v = layer.project(h, cos[None], sin[None])
            if at is None:
                cache.k[i][:, :S], cache.v[i][:, :S] = k, v
                K, V, mask = cache.k[i][:, :S], cache.v[i][:, :S], None
            elif slotted:  # slot b's new row goes to its own row at[b]
                slot = torch.arange(S, device=dev)
                cache.k[i][slot, :, at[dev]], cache.v[i][slot, :, at[dev]] = k.transpose(0, 1), v.transpose(0, 1)
                if dev not in masks:  # [B, T_max]: 0 up to each slot's new row, -inf after
                    masks[dev] = rows_mask(at[dev], cache.k[i].shape[2], h.dtype)
                K, V, mask = cache.k[i], cache.v[i], masks[dev]
            else:
                cache.k[i].index_copy_(1, at[dev], k)
                cache.v[i].index_copy_(1, at[dev], v)
                if dev not in masks:  # [1, T_max]: 0 up to the new row, -inf after
                    masks[dev] = rows_mask(at[dev], cache.k[i].shape[1], h.dtype)
                K, V, mask = cache.k[i], cache.v[i], masks[dev]
            # only the last row matters after the last layer, so skip the others there (slots: every row is a last one)
            if i == last:
                h, q = (h, q) if slotted else (h[-1:], q[:, -1:])
                if not finish:
                    break
            h = layer.finish(h, q, K, V, mask)
            if deepstack is not None and i < len(deepstack[1]) and i != last:
                rows = deepstack[0].to(dev)
                h = h.index_put((rows,), h[rows] + deepstack[1][i].to(dev, h.dtype))
        if not finish:
            return None, h_last_in
        return (self.logits(h) if slotted else self.logits(h)[0]), h_last_in


# ----------------------------------------------------------------------------- device, dtype, loading

def pick_device_dtype(device="auto", dtype="auto"):
    """The one place device and dtype are chosen. auto: CUDA if present, else MPS, else CPU; bf16 on CUDA, fp32 elsewhere."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available() or device == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {device} requested but it is not available on this machine")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return torch.device(device), getattr(torch, dtype)


def checkpoint_name(key, prefixes):
    """A checkpoint key in our module tree (visual.*, llm.*, lm_head): the first of the family's (old, new) prefix
    pairs that it starts with, replaced."""
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def weight_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        wm = read_json(index).get("weight_map")
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise ModelError(f"{index}: expected a non-empty weight_map of tensor name -> shard file")
        shards = sorted(set(wm.values()))
        outside = [s for s in shards if os.path.isabs(s) or os.path.normpath(s).split(os.sep)[0] in (".", "..")]
        if outside:  # a weight_map that names /etc/passwd or ../other-model would read it
            raise ModelError(f"{index}: weight_map names {outside[0]!r}, not a file inside {model_dir}")
    elif os.path.exists(os.path.join(model_dir, "model.safetensors")):
        shards = ["model.safetensors"]
    else:
        raise ModelError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    missing = [s for s in shards if not os.path.exists(os.path.join(model_dir, s))]
    if missing:
        raise ModelError(f"{model_dir}: missing weight shard(s): {', '.join(missing)}")
    paths = [os.path.join(model_dir, s) for s in shards]
    for path in paths:  # each opened (not read) now: one that cannot be read says why before a weight is read
        try:
            if why := video.not_regular(path):
                raise OSError(0, why)
            os.close(os.open(path, os.O_RDONLY))
        except OSError as e:
            raise ModelError(f"cannot read weight shard {path}: {e.strerror}") from None
    return paths


def placement(name, c, device, device_map):
    """Device of one parameter. device_map "auto" splits the decoder layers evenly over the visible GPUs (vision and
    embedding on the first, final norm and head on the last); a list of devices does the same over that list."""
    if device_map is None:
        return device
    devs = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] if device_map == "auto" else list(device_map)
    if not devs:
        raise ModelError("--device-map auto needs at least one CUDA device")
    if name.startswith("llm.layers."):
        return devs[int(name.split(".")[2]) * len(devs) // c.n_layers]
    if name == "lm_head":  # a tied head is also the embedding table, which the first device reads
        return devs[0] if c.tie_word_embeddings else devs[-1]
    return devs[-1] if name.startswith("llm.norm.") else devs[0]


def checkpoint_layout(model):
    """Checkpoint tensor name (as checkpoint_name gives it) -> (our parameter, its column range or None, the shape the
    checkpoint must have). Most parameters keep the checkpoint's name and shape. A decoder layer's packed [in, out]
    matrices (its packing(): DecoderLayer's q|k|v, gate|up, ...) each take, transposed, a column range per checkpoint
    matrix, and a packed bias (`<name>_bias`) the same ranges; a layer's `renames` are parameters the checkpoint keeps
    elsewhere (Qwen3's q/k norms sit under self_attn). The head, tied or not, goes into lm_head, transposed."""
    c = model.c
    layout = {n: (n, None, tuple(p.shape)) for n, p in model.named_parameters()}
    for i, layer in enumerate(model.llm.layers):
        pre = f"llm.layers.{i}."
        for ours, parts in layer.packing().items():
            d_in = layout.pop(pre + ours)[2][0]
            bias = layout.pop(pre + ours + "_bias", None)
            start = 0
            for part, n in parts:
                layout[pre + part + ".weight"] = (pre + ours, slice(start, start + n), (n, d_in))
                if bias is not None:
                    layout[pre + part + ".bias"] = (pre + ours + "_bias", slice(start, start + n), (n,))
                start += n
        for ours, theirs in layer.renames.items():
            if pre + ours in layout:
                layout[pre + theirs] = layout.pop(pre + ours)
    del layout["lm_head"]
    head = "llm.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
    layout[head] = ("lm_head", slice(0, c.vocab_size), (c.vocab_size, c.hidden_size))
    return layout


def model_type(model_dir):
    """The family of a checkpoint directory: config.json's model_type, checked against the families we have."""
    if not os.path.isdir(model_dir):
        raise ModelError(f"model directory not found: {model_dir}")
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise ModelError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    mt = read_json(path, "a JSON object (a Hugging Face config.json)").get("model_type")
    if mt not in FAMILIES:
        raise ModelError(f"{path}: model_type is {mt!r}; supported: {', '.join(repr(f) for f in FAMILIES)} "
                         f"({', '.join(family(f).FAMILY.name for f in FAMILIES)})")
    return mt


def family(model_type):  # the family's module (qwen25vl, ...) of a model_type in FAMILIES, imported on first use
    return importlib.import_module(FAMILIES[model_type])


def vision_tokens():  # every registered family's vision tokens: what typed text may not hold, known before a checkpoint is
    return tuple(dict.fromkeys(t for mt in FAMILIES for t in family(mt).FAMILY.vision_tokens))  # read


def skeleton(model_dir):
    """The family's model on the meta device: its config (read and checked), its shapes and its prompt (Thinking or
    not), no storage. load_model fills it; before that, it tells the prompt's length and positions and memory_need."""
    fam = family(model_type(model_dir))
    c = fam.Config.from_json(os.path.join(model_dir, "config.json"))
    with torch.device("meta"):
        model = fam.Model(c)
    model.read_template(model_dir)
    return model


def load_model(model_dir, device="cpu", dtype=torch.float32, device_map=None, progress=None):
    """Build the family's model on the meta device, give every parameter its storage on its device, then copy each
    checkpoint tensor into place straight from the safetensors shards, one at a time: peak memory stays close to
    the weights themselves. device_map: None (all on `device`), "auto" (layers split over the visible GPUs) or a
    list of devices. progress(done, total): called after each shard (a 7B checkpoint is 5 shards of ~4 GB)."""
    from safetensors import safe_open

    model = skeleton(model_dir)
    c, files = model.c, weight_files(model_dir)
    layout = checkpoint_layout(model)
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        storage = torch.empty(p.shape, device=placement(name, c, device, device_map), dtype=dtype)
        setattr(model.get_submodule(owner), leaf, nn.Parameter(storage, requires_grad=False))
    params, seen, unexpected = dict(model.named_parameters()), set(), []
    for done, path in enumerate(files, 1):
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    if key.startswith(model.ignored):
                        continue
                    name = checkpoint_name(key, model.prefixes)
                    if name not in layout:  # (a tied checkpoint's stored lm_head copy is ignored)
                        unexpected += [] if c.tie_word_embeddings and name == "lm_head.weight" else [key]
                        continue
                    target, cols, shape = layout[name]
                    t = f.get_tensor(key)
                    if tuple(t.shape) != shape:
                        raise ModelError(f"{path}: {key} has shape {list(t.shape)}, expected {list(shape)}")
                    with torch.no_grad():
                        dst = params[target] if cols is None else params[target][..., cols]
                        dst.copy_(t.T if cols is not None and t.dim() == 2 else t)
                    seen.add(name)
        except ModelError:
            raise
        except Exception as e:  # truncated / corrupt shard
            raise ModelError(f"{path}: cannot read safetensors ({type(e).__name__}: {e})") from None
        if progress is not None:
            progress(done, len(files))
    missing = sorted(set(layout) - seen)
    if missing or unexpected:
        raise ModelError(f"{model_dir}: checkpoint does not match the config: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                         f" ({len(missing)}), unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    return model.eval()


# ----------------------------------------------------------------------------- memory, checked before loading

GB = 1e9
SLACK = 2**29  # 512 MiB on every device: allocator rounding and fragmentation, cuBLAS workspaces, small buffers
CONTROLLER = 10  # float32 copies of the last layer's value rows a controller holds at most, counted from the code (vreason.
# Controller: v0, ΔV and Adam's two moments; batch.py's side-by-side v0; an update's temporaries: the side-by-side ΔV,
# the map's intermediates kept for backward, their gradients, Adam's denominator)


def memory_need(model, device, dtype, device_map=None, prompt_tokens=0, new_tokens=0, slots=1, ahead=0):
    """Bytes a request needs on each device it uses, found before anything is loaded: {device: [weights, kv, margin]}.
    weights, exact: from the skeleton (the model on the meta device), every parameter at `dtype` on the device
    placement() gives it (a tied head is one table, VideoLM.lm_head: counted once).
    kv: each layer's cache on its device (layer.cache_bytes): an attention layer's 2 (K, V) x kv heads x head_dim x
    (prompt + new tokens) x bytes, a linear-attention layer's fixed state; x slots, for a batch (batch.py: each slot
    holds that many rows), whose update also copies the last layer's cache once (its edited values).
    margin, for activations and the rest: the larger of two moments that never overlap, plus SLACK. While loading,
    one checkpoint tensor is in flight: at most the largest parameter, at the checkpoint's dtype or ours, whichever is
    wider. While running, the prefill's activations, per prompt token: the widest layer's own (layer.prefill_values:
    an attention layer's q|k|v and, in the MLP, gate|up 2I, silu(gate) I and their product I), and 6 D (the
    residual, the embedding and its copy with the video features in, the video features themselves, RMSNorm's
    float32 temporaries), plus a D per DeepStack feature (Qwen3-VL). Attention is flash or memory-efficient: O(S). The count is checked against a GPU's measured peak, and doubled for CUDA's
    caching allocator, which reserves more than the live activations (docs/performance.md#memory-check).
    ahead > 0: a loader encodes the next videos while the batch decodes (eval.py at --batch-size > 1), so the vision
    encoder's activations come on top of the prefill's (per video token merge_size^2 patches, each the vision block's
    q|k|v, its MLP's 4 I_v and 6 D_v, as above), and `ahead` encoded videos wait, each a feature of D per token and
    per DeepStack layer. On the last layer's device, V-Reason's controllers: CONTROLLER float32 copies of that
    layer's value rows at the prompt's tokens, a slot each. Meant to err high: refusing a run that would just have
    fit costs a flag, an OOM kill costs the run."""
    c, size, need = model.c, dtype.itemsize, {}
    for name, p in model.named_parameters():
        need.setdefault(torch.device(placement(name, c, device, device_map)), [0, 0, 0])[0] += p.numel() * size
    for i, layer in enumerate(model.llm.layers):  # (every layer's device holds weights, so is in `need` already)
        copies = slots + 1 if slots > 1 and i == c.n_layers - 1 else slots  # (+ the batched update's edited copy)
        need[torch.device(placement(f"llm.layers.{i}.", c, device, device_map))][1] += \
            copies * layer.cache_bytes(prompt_tokens + new_tokens, size)
    stored = getattr(torch, c.torch_dtype, None)  # the checkpoint's dtype, as config.json states it
    wider = max(size, stored.itemsize if isinstance(stored, torch.dtype) else 0)
    in_flight = max(p.numel() for p in model.parameters()) * wider
    features = (1 + len(getattr(c, "deepstack", ()))) * c.hidden_size  # a video token's, out of the vision encoder
    per_token = max(layer.prefill_values() for layer in model.llm.layers) + 5 * c.hidden_size + features
    waiting = 0
    if ahead:
        per_token += c.merge_size ** 2 * (9 * c.v_hidden + 4 * c.v_intermediate)
        waiting = ahead * prompt_tokens * features * size
    margin = max(in_flight, 2 * prompt_tokens * per_token * size + waiting) + SLACK
    for parts in need.values():
        parts[2] = margin
    # V-Reason's controllers, beside the last layer, one a slot: CONTROLLER float32 copies of its value rows at the
    # prompt's tokens (counted whatever the mode: it errs high for the baseline)
    last = model.llm.layers[-1]
    need[torch.device(placement(f"llm.layers.{c.n_layers - 1}.", c, device, device_map))][2] += \
        slots * CONTROLLER * last.cache_bytes(prompt_tokens, 4) // 2
    return need


def free_memory(device):
    """Bytes free for us on `device`; None where it cannot be known (MPS shares memory with everything: no check)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):  # not Linux
        return None
    # In a container the kernel kills at the cgroup's limit, which MemAvailable (the host's) does not see. Usage as
    # the kubelet counts it: everything charged but the inactive page cache, which is reclaimed before a kill.
    def read(name):
        with open(os.path.join("/sys/fs/cgroup", name)) as f:
            return f.read()

    for limit, usage, stat, cache in (("memory.max", "memory.current", "memory.stat", "inactive_file"),  # v2, v1
                                      ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                       "memory/memory.stat", "total_inactive_file")):
        try:
            inactive = dict(line.split() for line in read(stat).splitlines()).get(cache, 0)
            return min(free, int(read(limit)) - int(read(usage)) + int(inactive))
        except (OSError, ValueError):  # no such cgroup file, or "max": no limit
            continue
    return free


def reset_peak_memory(model):
    if any(d.type == "cuda" for d in model.devices()):
        for d in model.devices():
            torch.cuda.reset_peak_memory_stats(d)
    else:  # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so each run gets its own peak
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_memory_bytes(model):
    if any(d.type == "cuda" for d in model.devices()):  # summed over the GPUs a split model uses
        return sum(torch.cuda.max_memory_allocated(d) for d in model.devices())
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux reports KiB)


def shortfall(need):  # the first device where the need exceeds what is free: (device, bytes needed, bytes free)
    for dev, parts in need.items():
        free = free_memory(dev)
        if free is not None and sum(parts) > free:
            return dev, sum(parts), free
    return None


def check_memory(model, device, dtype, device_map=None, prompt_tokens=0, new_tokens=0, slots=1, ahead=0):
    """Before loading (model: the skeleton): a request that does not fit the free memory of a device it uses stops here
    with one line naming what it needs, what is free, and the ways out, not in an OOM kill or a CUDA error mid-run."""
    need = memory_need(model, device, dtype, device_map, prompt_tokens, new_tokens, slots, ahead)
    short = shortfall(need)
    if short is None:
        return
    dev, total, free = short
    weights, kv, margin = need[dev]
    ways = []
    if dtype == torch.float32:
        half = memory_need(model, device, torch.bfloat16, device_map, prompt_tokens, new_tokens, slots, ahead)
        ways.append(f"--dtype bfloat16 (needs {sum(half[dev]) / GB:.1f} GB{'' if shortfall(half) else ': fits'})")
    if slots > 1:
        ways.append(f"a smaller --batch-size (KV cache of {slots} samples)")
    ways.append("a smaller checkpoint (e.g. --model Qwen/Qwen3-VL-2B-Instruct)")
    if device_map is None:
        ways.append("--device-map auto on several GPUs")
    raise ModelError(f"not enough memory on {dev}: {str(dtype)[6:]} weights {weights / GB:.1f} GB + KV cache "
                     f"{kv / GB:.1f} GB + margin {margin / GB:.1f} GB = {total / GB:.1f} GB, {free / GB:.1f} GB free; "
                     f"options: {', '.join(ways)}")
