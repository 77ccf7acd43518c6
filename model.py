"""Qwen2.5-VL in plain PyTorch: vision encoder, Qwen2 decoder with M-RoPE, a KV cache we own, and a loader that
reads the official Hugging Face safetensors directly. Batch size 1 throughout (V-Reason optimizes per sample).

Shapes: N = vision patches, M = N/4 merged video tokens, S = tokens in a forward, T = cache rows,
D = LLM hidden, H / Hkv = query / key-value heads, d = head dim. Spec: ../shared/spec/qwen25vl.md (section numbers below).
"""
import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelError(ValueError):
    """Bad model directory or checkpoint; str() is a one-line message for the user."""


@dataclass
class Config:
    # decoder (Qwen2)
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple  # (T, H, W) frequency counts, sum = head_dim / 2
    tie_word_embeddings: bool
    # vision encoder
    v_depth: int
    v_hidden: int
    v_heads: int
    v_intermediate: int
    v_out: int  # = hidden_size
    in_chans: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    window_size: int  # pixels
    fullatt_blocks: tuple
    tokens_per_second: float
    # special tokens
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    torch_dtype: str

    @property
    def head_dim(self):
        return self.hidden_size // self.n_heads

    @classmethod
    def from_json(cls, path):
        """Read an official config.json (flat, `rope_scaling`) or a newer nested one (`text_config`,
        `rope_parameters`). Every value comes from the file: the HF class defaults differ from the checkpoints (§1.2)."""
        with open(path) as f:
            raw = json.load(f)
        if raw.get("model_type") != "qwen2_5_vl":
            raise ModelError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'qwen2_5_vl' (Qwen2.5-VL)")
        t = {**raw, **raw.get("text_config", {})}
        v = raw.get("vision_config", {})
        rope = t.get("rope_scaling") or t.get("rope_parameters") or {}

        def need(d, key, where):
            if key not in d:
                raise ModelError(f"{path}: missing {where}{key}")
            return d[key]

        for d, where in ((t, ""), (v, "vision_config.")):
            if d.get("hidden_act", "silu") != "silu":
                raise ModelError(f"{path}: {where}hidden_act {d['hidden_act']!r} is not supported (expected 'silu')")
        cfg = cls(
            vocab_size=need(t, "vocab_size", ""), hidden_size=need(t, "hidden_size", ""),
            n_layers=need(t, "num_hidden_layers", ""), n_heads=need(t, "num_attention_heads", ""),
            n_kv_heads=need(t, "num_key_value_heads", ""), intermediate_size=need(t, "intermediate_size", ""),
            rms_norm_eps=need(t, "rms_norm_eps", ""),
            rope_theta=t.get("rope_theta", rope.get("rope_theta")) or need(t, "rope_theta", ""),
            mrope_section=tuple(need(rope, "mrope_section", "rope_scaling.")),
            tie_word_embeddings=raw.get("tie_word_embeddings", t.get("tie_word_embeddings", False)),
            v_depth=need(v, "depth", "vision_config."), v_hidden=need(v, "hidden_size", "vision_config."),
            v_heads=need(v, "num_heads", "vision_config."), v_intermediate=need(v, "intermediate_size", "vision_config."),
            v_out=need(v, "out_hidden_size", "vision_config."), in_chans=v.get("in_chans", v.get("in_channels", 3)),
            patch_size=need(v, "patch_size", "vision_config."),
            temporal_patch_size=need(v, "temporal_patch_size", "vision_config."),
            merge_size=need(v, "spatial_merge_size", "vision_config."),
            window_size=need(v, "window_size", "vision_config."),
            fullatt_blocks=tuple(need(v, "fullatt_block_indexes", "vision_config.")),
            tokens_per_second=need(v, "tokens_per_second", "vision_config."),
            image_token_id=need(raw, "image_token_id", ""), video_token_id=need(raw, "video_token_id", ""),
            vision_start_token_id=need(raw, "vision_start_token_id", ""),
            torch_dtype=t.get("torch_dtype", raw.get("dtype", "bfloat16")),
        )
        if 2 * sum(cfg.mrope_section) != cfg.head_dim:
            raise ModelError(f"{path}: mrope_section {list(cfg.mrope_section)} does not sum to head_dim/2 = {cfg.head_dim // 2}")
        if cfg.v_out != cfg.hidden_size:
            raise ModelError(f"{path}: vision out_hidden_size {cfg.v_out} != hidden_size {cfg.hidden_size}")
        return cfg


# ----------------------------------------------------------------------------- shared pieces

def upcast(x):  # to fp32 for bf16/fp16/fp32; fp64 stays fp64 (the float64 gradient checks rely on it)
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # normalize in fp32, scale in the model dtype (as the reference does)
        xf = upcast(x)
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class MLP(nn.Module):  # SwiGLU with bias (vision tower; the decoder packs its MLP, see DecoderLayer)
    def __init__(self, dim, hidden, bias):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x):  # pairs dim i with dim i + d/2
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# ----------------------------------------------------------------------------- vision encoder (§2)

class VisionAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # rows: [q | k | v]
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin, segments):  # x [N, Dv]; cos/sin [N, 1, dv] fp32; segments: list of [n, L] indices
        N, Dv = x.shape
        q, k, v = self.qkv(x).view(N, 3, self.heads, -1).unbind(1)  # each [N, Hv, dv]
        # vision rotary is applied in fp32 (§2.5)
        q = (upcast(q) * cos + rotate_half(upcast(q)) * sin).to(x.dtype)
        k = (upcast(k) * cos + rotate_half(upcast(k)) * sin).to(x.dtype)
        out = torch.empty_like(q)
        for idx in segments:  # attention never crosses a window / 2-frame group; equal-length segments batched
            qs, ks, vs = (t[idx].transpose(1, 2) for t in (q, k, v))  # [n, Hv, L, dv]
            out[idx] = F.scaled_dot_product_attention(qs, ks, vs).transpose(1, 2)
        return self.proj(out.reshape(N, Dv))


class VisionBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1 = RMSNorm(c.v_hidden, 1e-6)
        self.norm2 = RMSNorm(c.v_hidden, 1e-6)
        self.attn = VisionAttention(c.v_hidden, c.v_heads)
        self.mlp = MLP(c.v_hidden, c.v_intermediate, bias=True)

    def forward(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):  # 2x2 neighbouring patches -> one LLM token
    def __init__(self, c):
        super().__init__()
        self.ln_q = RMSNorm(c.v_hidden, 1e-6)
        self.mlp = nn.Sequential(nn.Linear(4 * c.v_hidden, 4 * c.v_hidden), nn.GELU(), nn.Linear(4 * c.v_hidden, c.v_out))

    def forward(self, x):  # [N, Dv] -> [N/4, D]
        return self.mlp(self.ln_q(x).view(-1, self.mlp[0].in_features))


def merge_order_hw(h, w, m):
    """(row, col) of every patch of one frame, in the processor's merge-block-major order (§2.1). -> [h*w, 2]"""
    rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
    cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
    return torch.stack([rows.permute(0, 2, 1, 3).flatten(), cols.permute(0, 2, 1, 3).flatten()], -1)


def window_index(grids, ws):
    """Order merged tokens window by window (ws x ws merged tokens per window, §2.4). Returns the permutation
    [M] and the cumulative patch boundaries of the non-empty windows."""
    order, cu, offset = [], [0], 0
    for t, h, w in grids:
        lh, lw = h // 2, w // 2
        nh, nw = lh // ws + 1, lw // ws + 1  # the reference pads a whole extra window when lh % ws == 0: empty, dropped
        grid = torch.full((t, nh * ws, nw * ws), -1)
        grid[:, :lh, :lw] = torch.arange(t * lh * lw).view(t, lh, lw)
        win = grid.view(t, nh, ws, nw, ws).permute(0, 1, 3, 2, 4).reshape(t * nh * nw, ws * ws)
        lens = (win >= 0).sum(-1)
        order.append(win[win >= 0] + offset)
        cu += (lens[lens > 0].cumsum(0) * 4 + cu[-1]).tolist()
        offset += t * lh * lw
    return torch.cat(order), cu


def segment_groups(cu, device):
    """Cumulative boundaries -> one [n, L] index tensor per distinct segment length, so that all equal-length
    segments run as one batched attention call."""
    starts, lens = torch.tensor(cu[:-1]), torch.tensor(cu[1:]) - torch.tensor(cu[:-1])
    return [(starts[lens == L, None] + torch.arange(L)).to(device) for L in lens.unique().tolist()]


class VisionEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(c.in_chans, c.v_hidden, (c.temporal_patch_size, c.patch_size, c.patch_size), bias=False)
        self.blocks = nn.ModuleList(VisionBlock(c) for _ in range(c.v_depth))
        self.merger = PatchMerger(c)

    def forward(self, pixels, grids):  # pixels [N, C*Tp*P*P] fp32, grids [(t, h, w)] in patches -> [N/4, D]
        c, dev = self.c, pixels.device
        w_pe = self.patch_embed.proj.weight
        x = F.linear(pixels.to(w_pe.dtype), w_pe.view(w_pe.shape[0], -1))  # the Conv3d has stride = kernel: a matmul
        N = x.shape[0]
        # 2D rotary angles in fp32: first half of the frequencies encode the row, second half the column
        dv = c.v_hidden // c.v_heads
        inv = 1.0 / 10000 ** (torch.arange(0, dv // 2, 2, dtype=torch.float32) / (dv // 2))
        hw = torch.cat([merge_order_hw(h, w, c.merge_size).repeat(t, 1) for t, h, w in grids]).float()
        ang = torch.cat([hw[:, :1] * inv, hw[:, 1:] * inv], -1)  # [N, dv/2]
        # reorder merged-token groups of 4 patches window by window; window blocks attend within a window,
        # full blocks within one 2-frame group (the reorder keeps each group contiguous)
        win, cu_win = window_index(grids, c.window_size // c.merge_size // c.patch_size)
        x = x.view(N // 4, 4, -1)[win.to(dev)].view(N, -1)
        ang = torch.cat([ang.view(N // 4, 4, -1)[win], ang.view(N // 4, 4, -1)[win]], -1).view(N, 1, dv).to(dev)
        cos, sin = ang.cos(), ang.sin()
        cu_full = [0]
        for t, h, w in grids:
            cu_full += [cu_full[-1] + h * w * (i + 1) for i in range(t)]
        seg_win, seg_full = segment_groups(cu_win, dev), segment_groups(cu_full, dev)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, seg_full if i in c.fullatt_blocks else seg_win)
        return self.merger(x)[torch.argsort(win).to(dev)]  # back to (t, h, w) token order


# ----------------------------------------------------------------------------- M-RoPE positions (§3.3)

def rope_index(ids, video_grids, second_per_grid, c):
    """Qwen's reference M-RoPE positions for one sequence. ids: list[int]; video_grids: [(t, h, w)] in patches;
    second_per_grid: [float] per video. Returns positions [3, S] (T, H, W rows), int64.
    Text after a video starts at the video block's max position + 1; the temporal index is
    floor(t * second_per_grid * tokens_per_second) computed in float32, as the reference does."""
    ids = torch.as_tensor(ids)
    S, m = ids.numel(), c.merge_size
    starts = (ids[:-1] == c.vision_start_token_id).nonzero().flatten() + 1
    starts = starts[ids[starts] == c.video_token_id].tolist()
    if any(ids[s] == c.image_token_id for s in (ids[:-1] == c.vision_start_token_id).nonzero().flatten() + 1):
        raise NotImplementedError("image inputs are not supported; this pipeline is video-only")
    if len(starts) != len(video_grids) or int((ids == c.video_token_id).sum()) != sum(t * h * w // m**2 for t, h, w in video_grids):
        raise ValueError("the prompt's <|video_pad|> tokens do not match the video grids")
    pos, nxt, st = [], 0, 0
    for s, (t, h, w), spg in zip(starts, video_grids, second_per_grid):
        pos.append(torch.arange(s - st).expand(3, -1) + nxt)  # text before the video, incl. <|vision_start|>
        nxt += s - st
        lh, lw = h // m, w // m
        tt = (torch.arange(t, dtype=torch.float32) * torch.tensor(spg, dtype=torch.float32) * c.tokens_per_second).long()
        grid = torch.stack(torch.meshgrid(tt, torch.arange(lh), torch.arange(lw), indexing="ij")).view(3, -1)
        pos.append(grid + nxt)
        nxt = int(pos[-1].max()) + 1
        st = s + t * lh * lw
    pos.append(torch.arange(S - st).expand(3, -1) + nxt)
    return torch.cat(pos, 1)


# ----------------------------------------------------------------------------- decoder (§3)

@dataclass
class KVCache:
    """Per-layer key/value tensors that we own. Rows [0, length) are valid; keys are stored after RoPE, so rows
    can be edited (the V-Reason controller) or dropped (V-Reason Lite) without recomputing anything."""
    k: list  # n_layers x [Hkv, T_max, d]
    v: list  # n_layers x [Hkv, T_max, d]
    length: int = 0

    @classmethod
    def empty(cls, c, max_len, device, dtype):  # device: one, or one per layer (a model split across GPUs)
        devs = device if isinstance(device, (list, tuple)) else [device] * c.n_layers
        shape = (c.n_kv_heads, max_len, c.head_dim)
        return cls([torch.empty(shape, device=d, dtype=dtype) for d in devs],
                   [torch.empty(shape, device=d, dtype=dtype) for d in devs])

    def nbytes(self):  # bytes of the valid rows
        return sum(2 * t[:, : self.length].numel() * t.element_size() for t in self.k)


class DecoderLayer(nn.Module):
    """A Qwen2 layer (§3.1): RMSNorm, GQA attention with q/k/v bias, RMSNorm, SwiGLU MLP. The matrices are stored
    packed and transposed, [in, out]: q|k|v as one, gate|up as one. Decoding reads every weight once per token, and
    a vector times an [in, out] matrix streams it faster than the [out, in] layout of the checkpoint (bench.py
    measured 1.0x instead of 1.25x the bandwidth floor on CPU); packing also means fewer, larger products."""

    def __init__(self, c):
        super().__init__()
        D, d, H, Hkv, I = c.hidden_size, c.head_dim, c.n_heads, c.n_kv_heads, c.intermediate_size
        self.d, self.split = d, [H * d, Hkv * d, Hkv * d]
        self.input_layernorm = RMSNorm(D, c.rms_norm_eps)
        self.qkv = nn.Parameter(torch.empty(D, (H + 2 * Hkv) * d))  # [q_proj | k_proj | v_proj].T
        self.qkv_bias = nn.Parameter(torch.empty((H + 2 * Hkv) * d))
        self.o = nn.Parameter(torch.empty(H * d, D))  # o_proj.T, no bias
        self.post_attention_layernorm = RMSNorm(D, c.rms_norm_eps)
        self.gate_up = nn.Parameter(torch.empty(D, 2 * I))  # [gate_proj | up_proj].T, no bias
        self.down = nn.Parameter(torch.empty(I, D))  # down_proj.T

    def project(self, x, cos, sin):  # x [S, D] -> q [H, S, d], k/v [Hkv, S, d], RoPE applied to q and k
        S = x.shape[0]
        q, k, v = (t.view(S, -1, self.d).transpose(0, 1)
                   for t in torch.addmm(self.qkv_bias, self.input_layernorm(x), self.qkv).split(self.split, -1))
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def finish(self, x, q, K, V, mask=None):
        """Attention of q [H, S, d] over K/V [Hkv, T, d] (causal when S > 1 and no mask), o_proj, residual, MLP."""
        S = q.shape[1]
        causal = S > 1 and mask is None
        o = F.scaled_dot_product_attention(q[None], K[None], V[None], attn_mask=mask, is_causal=causal, enable_gqa=True)
        x = x + o[0].transpose(0, 1).reshape(S, -1) @ self.o
        gate, up = (self.post_attention_layernorm(x) @ self.gate_up).chunk(2, -1)
        return x + (F.silu(gate) * up) @ self.down


class LLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        # a tied head (3B) is the embedding: then the one table lives in Qwen25VL.lm_head, transposed
        self.embed_tokens = None if c.tie_word_embeddings else nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Qwen25VL(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.visual = VisionEncoder(c)
        self.llm = LLM(c)  # checkpoint prefix "model."
        self.lm_head = nn.Parameter(torch.empty(c.hidden_size, c.vocab_size))  # lm_head.weight.T [D, vocab]

    @property
    def dtype(self):
        return self.lm_head.dtype

    def rope(self, pos, dtype):  # pos [3, S] -> cos/sin [S, d]: dim j uses the T/H/W row its mrope section names (§3.2)
        c = self.c
        inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32, device=pos.device) / c.head_dim)
        axis = torch.repeat_interleave(torch.arange(3, device=pos.device), torch.tensor(c.mrope_section, device=pos.device))
        theta = pos[axis].float().T * inv  # [S, d/2] fp32
        theta = torch.cat([theta, theta], -1)
        return theta.cos().to(dtype), theta.sin().to(dtype)

    def embed(self, ids, video_embeds=None):  # ids [S] -> [S, D], video rows replaced by the vision features
        table = self.llm.embed_tokens
        h = table(ids) if table is not None else self.lm_head[:, ids].T.contiguous()
        if video_embeds is not None:
            is_video = ids == self.c.video_token_id
            if int(is_video.sum()) != video_embeds.shape[0]:
                raise ValueError(f"{int(is_video.sum())} <|video_pad|> tokens but {video_embeds.shape[0]} video features")
            h = h.masked_scatter(is_video[:, None], video_embeds.to(h.dtype))
        return h

    def logits(self, h):  # final norm + LM head, only on the rows passed in; bf16/fp16 logits are upcast to fp32
        h = self.llm.norm(h.to(self.llm.norm.weight.device)).to(self.lm_head.device)
        return upcast(h @ self.lm_head)

    def layer_devices(self):  # where each decoder layer (and its KV cache) lives; one device unless split
        return [layer.input_layernorm.weight.device for layer in self.llm.layers]

    def devices(self):  # every device the model uses
        return sorted({self.visual.merger.ln_q.weight.device, self.lm_head.device, *self.layer_devices()}, key=str)

    def forward(self, h, pos, cache, finish=True):
        """Run all layers on S new rows h [S, D] at positions pos [3, S], appending their K/V to the cache.
        Prefill (S > 1) needs an empty cache. Returns the logits of the last row [vocab] (fp32) and that row's input
        to the last layer [1, D], which the V-Reason controller recomputes the last layer from. finish=False stops
        once the last layer's K/V are cached and returns no logits: the controller finishes that layer itself."""
        S, start = h.shape[0], cache.length
        assert S == 1 or start == 0, "multi-token forwards run on an empty cache only"
        cos, sin = self.rope(pos, h.dtype)
        for i, layer in enumerate(self.llm.layers):
            if cache.k[i].device != h.device:  # model split across devices: hop to this layer's device
                h, cos, sin = h.to(cache.k[i].device), cos.to(cache.k[i].device), sin.to(cache.k[i].device)
            if i == self.c.n_layers - 1:
                h_last_in = h[-1:]
            q, k, v = layer.project(h, cos[None], sin[None])
            cache.k[i][:, start : start + S] = k
            cache.v[i][:, start : start + S] = v
            # attention over the cache; only the last row matters after the last layer, so skip the others there
            if i == self.c.n_layers - 1:
                h, q = h[-1:], q[:, -1:]
                if not finish:
                    break
            h = layer.finish(h, q, cache.k[i][:, : start + S], cache.v[i][:, : start + S])
        cache.length = start + S
        return (self.logits(h)[0] if finish else None), h_last_in

    def last_layer(self, h_in, pos, K, V):
        """Recompute the last layer for one position from its input h_in [1, D] over the given K/V [Hkv, T, d]
        (the V-Reason controller passes values with edited video rows), then norm + head -> logits [vocab]."""
        layer = self.llm.layers[-1]
        cos, sin = self.rope(pos.to(h_in.device), h_in.dtype)
        q, _, _ = layer.project(h_in, cos[None], sin[None])
        return self.logits(layer.finish(h_in, q, K, V))[0]


# ----------------------------------------------------------------------------- device, dtype, loading (§1.4)

def pick_device_dtype(device="auto", dtype="auto"):
    """The one place device and dtype are chosen. auto: CUDA if present, else MPS, else CPU; bf16 on CUDA, fp32 elsewhere."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available() or device == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {device} requested but it is not available on this machine")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return torch.device(device), getattr(torch, dtype)


def checkpoint_name(key):
    """Map the key prefixes of both checkpoint eras onto our module tree (visual.*, llm.*, lm_head)."""
    for old, new in (("model.language_model.", "llm."), ("language_model.model.", "llm."), ("language_model.lm_head.", "lm_head."),
                     ("model.visual.", "visual."), ("visual.", "visual."), ("lm_head.", "lm_head."), ("model.", "llm.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def weight_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(model_dir, "model.safetensors")):
        shards = ["model.safetensors"]
    else:
        raise ModelError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    missing = [s for s in shards if not os.path.exists(os.path.join(model_dir, s))]
    if missing:
        raise ModelError(f"{model_dir}: missing weight shard(s): {', '.join(missing)}")
    return [os.path.join(model_dir, s) for s in shards]


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


PACKED = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
          "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}


def checkpoint_layout(model):
    """Checkpoint tensor name (as checkpoint_name gives it) -> (our parameter, its column range or None, the shape the
    checkpoint must have). Most parameters keep the checkpoint's name and shape; each decoder matrix and the head go,
    transposed, into a column range of a packed [in, out] parameter (DecoderLayer)."""
    c = model.c
    layout = {n: (n, None, tuple(p.shape)) for n, p in model.named_parameters()}
    for i, layer in enumerate(model.llm.layers):
        pre = f"llm.layers.{i}."
        del layout[pre + "qkv_bias"]
        for ours, parts in PACKED.items():
            d_in, d_out = layout.pop(pre + ours)[2]
            sizes = layer.split if ours == "qkv" else [d_out // len(parts)] * len(parts)
            start = 0
            for part, n in zip(parts, sizes):
                layout[pre + part + ".weight"] = (pre + ours, slice(start, start + n), (n, d_in))
                if ours == "qkv":
                    layout[pre + part + ".bias"] = (pre + "qkv_bias", slice(start, start + n), (n,))
                start += n
    del layout["lm_head"]
    head = "llm.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
    layout[head] = ("lm_head", slice(0, c.vocab_size), (c.vocab_size, c.hidden_size))
    return layout


def load_model(model_dir, device="cpu", dtype=torch.float32, device_map=None):
    """Build the model on the meta device, give every parameter its storage on its device, then copy each
    checkpoint tensor into place straight from the safetensors shards, one at a time: peak memory stays close to
    the weights themselves. device_map: None (all on `device`), "auto" (layers split over the visible GPUs) or a
    list of devices."""
    from safetensors import safe_open

    if not os.path.isdir(model_dir):
        raise ModelError(f"model directory not found: {model_dir}")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise ModelError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    c = Config.from_json(os.path.join(model_dir, "config.json"))
    files = weight_files(model_dir)
    with torch.device("meta"):
        model = Qwen25VL(c)
    layout = checkpoint_layout(model)
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        storage = torch.empty(p.shape, device=placement(name, c, device, device_map), dtype=dtype)
        setattr(model.get_submodule(owner), leaf, nn.Parameter(storage, requires_grad=False))
    params, seen, unexpected = dict(model.named_parameters()), set(), []
    for path in files:
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    name = checkpoint_name(key)
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
    missing = sorted(set(layout) - seen)
    if missing or unexpected:
        raise ModelError(f"{model_dir}: checkpoint does not match the config: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                         f" ({len(missing)}), unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    return model.eval()
