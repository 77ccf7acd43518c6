"""Qwen3.5 (0.8B-27B dense; Qwen3.6 and Qwen3.8 dense share its model_type and architecture): a hybrid decoder in
which three of every four layers are Gated DeltaNet linear attention (a fixed recurrent state, no K/V) and every
fourth is full attention, the last one included; Qwen3-VL's vision tower without DeepStack; Qwen3-VL's video layout,
as transformers 5.x writes it. What differs from Qwen3-VL, and where: PORTING.md §5. Reference: transformers 5.23
models/qwen3_5 (and models/qwen3_next, which it inherits from).

V-Reason on it: the controller sits on the last layer, which is full attention, so the shortcut gradient stays exact;
Lite prunes the full-attention layers only, since the linear layers have folded every video token into their state
(METHOD.md §5).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M
import qwen25vl as Q25
import qwen3vl as Q3
import video as V

# transformers 5.x Qwen3VLVideoProcessor, as the released video_preprocessor_config.json sets it: mean = std = 0.5, 32-px
# blocks, its own frame count, pixel limits over the whole clip (size: shortest_edge 4096, longest_edge 25165824),
# uncapped per frame. Prompt: ChatML, the video inside the template's own vision pair, a "<t seconds>" and a vision
# block per frame group (at most 8 tokens beside its pads), the answer opened with <think>.
FAMILY = V.Family("qwen3_5", "Qwen3.5", patch=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), fused_normalize=True,
                  sampler="processor", min_pixels=4096, max_pixels=None, total_pixels=25165824,
                  strict_pixel_limits=False, special_tokens=Q25.FAMILY.special_tokens + ("<think>", "</think>"),
                  vision_tokens=Q25.FAMILY.vision_tokens, config_tokens=Q25.FAMILY.config_tokens,
                  stop_tokens=Q25.FAMILY.stop_tokens, group_text_tokens=8)
THINK_CLOSED = "<think>\n\n</think>\n\n"  # the template's generation prompt with enable_thinking=False
LAYER_TYPES = ("linear_attention", "full_attention")
CHUNK = 64  # the reference's chunk of the gated delta rule in prefill (the result does not depend on it)


@dataclass
class Config(M.Config):
    n_pos_embed: int  # the vision tower's learned position table: n x n entries
    layer_types: tuple  # per decoder layer: "linear_attention" or "full_attention"
    lin_k_heads: int  # Gated DeltaNet: key (and query) heads, value heads, their sizes, the causal conv's kernel
    lin_v_heads: int
    lin_k_dim: int
    lin_v_dim: int
    conv_kernel: int
    deepstack: tuple = ()  # Qwen3-VL's tower, without DeepStack

    @classmethod
    def from_json(cls, path):
        common, t, v = M.Config.read(path, "qwen3_5", interleaved=True, qk_norm=True, bias=False,
                                     vision_act="gelu_pytorch_tanh", attn_gate=True, zero_centred=True, rotary_factor=0.25)
        # 5.x ties the head by the top-level flag alone (the text config's is not read)
        common["tie_word_embeddings"] = M.Fields(M.read_json(path), path).get("tie_word_embeddings", bool, False)
        n = common["n_layers"]
        types = t.d.get("layer_types")
        if types is None:  # the reference's rule: every full_attention_interval-th layer is full attention
            every = t.get("full_attention_interval", int, 4)
            types = ["linear_attention" if (i + 1) % every else "full_attention" for i in range(n)]
        where = f"{path}: {t.where}layer_types"
        if not isinstance(types, list) or len(types) != n or any(x not in LAYER_TYPES for x in types):
            raise M.ModelError(f"{where} is {types!r}, expected {n} of {' / '.join(LAYER_TYPES)}")
        if types[-1] != "full_attention":  # V-Reason's controller needs the last layer's value cache (PORTING.md §3)
            raise M.ModelError(f"{where} ends in {types[-1]!r}: V-Reason needs the last layer to be full_attention")
        c = cls(**common, n_pos_embed=v.get("num_position_embeddings"), layer_types=tuple(types),
                lin_k_heads=t.get("linear_num_key_heads"), lin_v_heads=t.get("linear_num_value_heads"),
                lin_k_dim=t.get("linear_key_head_dim"), lin_v_dim=t.get("linear_value_head_dim"),
                conv_kernel=t.get("linear_conv_kernel_dim"))
        c.check(path, FAMILY)
        if c.yarn is not None:  # (5.23's YaRN for this family is not checked against: refused rather than guessed)
            raise M.ModelError(f"{path}: {t.where}rope_parameters rope_type 'yarn' is not implemented for Qwen3.5")
        if c.lin_v_heads % c.lin_k_heads:
            raise M.ModelError(f"{path}: {t.where}linear_num_value_heads {c.lin_v_heads} is not a multiple of "
                               f"linear_num_key_heads {c.lin_k_heads}")
        if round(c.n_pos_embed ** 0.5) ** 2 != c.n_pos_embed:
            raise M.ModelError(f"{path}: vision_config.num_position_embeddings {c.n_pos_embed} is not a square number")
        return c


# ----------------------------------------------------------------------------- Gated DeltaNet

def l2norm(x):  # the reference's, eps inside the root
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def delta_rule_step(q, k, v, beta, g, S):
    """One token of the gated delta rule, in place on the state S [B, Hv, dk, dv] (fp32), one token per sample:
    decay it by exp(g), write the value's correction against what S predicts for k, then read it with q. q, k
    [B, Hv, dk]; v [B, Hv, dv]; beta, g [B, Hv]. -> [B, Hv, dv]."""
    S.mul_(g.exp()[..., None, None])
    predicted = (S * k[..., None]).sum(-2)  # [B, Hv, dv]
    S.add_(k[..., None] * ((v - predicted) * beta[..., None])[..., None, :])
    return (S * q[..., None]).sum(-2)


def delta_rule_chunked(q, k, v, beta, g, S):
    """The gated delta rule over a whole prompt, chunk by chunk as the reference computes it (a chunk's updates
    folded into a few products by the UT transform), from and into the state S [Hv, dk, dv] (fp32, in place).
    q, k [L, Hv, dk]; v [L, Hv, dv]; beta, g [L, Hv] -> [L, Hv, dv]. Equal to delta_rule_step token by token, up to
    rounding."""
    L = q.shape[0]
    pad = -L % CHUNK  # zero rows: beta 0 writes nothing, g 0 decays nothing
    q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)).transpose(0, 1) for x in (q, k, v))  # [Hv, L', d]
    beta, g = (F.pad(x, (0, 0, 0, pad)).T for x in (beta, g))  # [Hv, L']
    H, n = q.shape[0], q.shape[1] // CHUNK
    q, k, v = (x.reshape(H, n, CHUNK, -1) for x in (q, k, v))  # [Hv, chunks, C, d]
    beta, g = beta.reshape(H, n, CHUNK, 1), g.reshape(H, n, CHUNK).cumsum(-1)  # g: decay accumulated in the chunk
    later = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=q.device).triu(1)
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(later, -math.inf).exp()  # [i, j]: from j to i, j <= i
    k_beta = k * beta
    # the UT transform: T = (I + strictly lower part of (beta k k^T * decay))^-1, applied to beta v and beta k exp(g)
    system = (k_beta @ k.transpose(-1, -2)) * decay
    new_v = torch.linalg.solve_triangular(system, v * beta, upper=False, unitriangular=True)
    k_read = torch.linalg.solve_triangular(system, k_beta * g.exp()[..., None], upper=False, unitriangular=True)
    within = (q @ k.transpose(-1, -2)) * decay
    q = q * g.exp()[..., None]
    k = k * (g[..., -1:] - g).exp()[..., None]
    out = torch.empty_like(new_v)
    for i in range(n):  # chunk by chunk: the state carries everything before it
        fresh = new_v[:, i] - k_read[:, i] @ S
        out[:, i] = q[:, i] @ S + within[:, i] @ fresh
        S.mul_(g[:, i, -1].exp()[:, None, None]).add_(k[:, i].transpose(-1, -2) @ fresh)
    return out.reshape(H, n * CHUNK, -1)[:, :L].transpose(0, 1)


class GatedDeltaNet(nn.Module):
    """A Gated DeltaNet decoder layer: zero-centred RMSNorm, linear attention (a causal depthwise conv over q|k|v,
    L2-normed q and k, the gated delta rule with decay g = -exp(A_log) softplus(a + dt_bias) and strength
    beta = sigmoid(b), a gated RMSNorm with z), then the residual SwiGLU MLP every layer has. Its state is fixed in
    size: the conv's last inputs and the rule's matrix per value head (fp32, as in the reference). Matrices packed
    [in, out] as DecoderLayer's: in_proj = [qkv | z | b | a]."""

    holds_kv = False  # (Cache keeps its state instead of K/V rows)
    renames = {"conv": "linear_attn.conv1d.weight", "dt_bias": "linear_attn.dt_bias", "A_log": "linear_attn.A_log",
               "norm": "linear_attn.norm.weight"}  # (checkpoint_layout)

    def __init__(self, c):
        super().__init__()
        D, I = c.hidden_size, c.intermediate_size
        self.hk, self.hv, self.dk, self.dv, self.kernel = c.lin_k_heads, c.lin_v_heads, c.lin_k_dim, c.lin_v_dim, c.conv_kernel
        self.key_dim, self.value_dim = self.hk * self.dk, self.hv * self.dv
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.eps = c.rms_norm_eps
        self.input_layernorm = M.RMSNorm(D, c.rms_norm_eps, zero_centred=True)
        self.in_proj = nn.Parameter(torch.empty(D, self.conv_dim + self.value_dim + 2 * self.hv))
        self.conv = nn.Parameter(torch.empty(self.conv_dim, 1, self.kernel))  # depthwise, no bias
        self.dt_bias = nn.Parameter(torch.empty(self.hv))
        self.A_log = nn.Parameter(torch.empty(self.hv))
        self.norm = nn.Parameter(torch.empty(self.dv))  # the gated norm's weight: plain, not zero-centred
        self.out_proj = nn.Parameter(torch.empty(self.value_dim, D))
        self.post_attention_layernorm = M.RMSNorm(D, c.rms_norm_eps, zero_centred=True)
        self.gate_up = nn.Parameter(torch.empty(D, 2 * I))
        self.down = nn.Parameter(torch.empty(I, D))

    def packing(self):  # (checkpoint_layout)
        lin = "linear_attn."
        return {"in_proj": [(lin + "in_proj_qkv", self.conv_dim), (lin + "in_proj_z", self.value_dim),
                            (lin + "in_proj_b", self.hv), (lin + "in_proj_a", self.hv)],
                "out_proj": [(lin + "out_proj", self.out_proj.shape[1])],
                "gate_up": [("mlp.gate_proj", self.down.shape[0]), ("mlp.up_proj", self.down.shape[0])],
                "down": [("mlp.down_proj", self.down.shape[1])]}

    def new_state(self, dtype):  # (the conv's last `kernel` inputs [conv_dim, K], the rule's state [Hv, dk, dv] fp32)
        dev = self.input_layernorm.weight.device
        return (torch.zeros(self.conv_dim, self.kernel, device=dev, dtype=dtype),
                torch.zeros(self.hv, self.dk, self.dv, device=dev, dtype=torch.promote_types(dtype, torch.float32)))

    def cache_bytes(self, tokens, itemsize):  # fixed, however many tokens
        return self.conv_dim * self.kernel * itemsize + self.hv * self.dk * self.dv * 4

    def prefill_values(self):  # a prompt token's activations here: in_proj's outputs, the conv's, and fp32 q|k|v|out
        return 2 * self.in_proj.shape[1] + 2 * (self.conv_dim + self.value_dim) + 4 * self.down.shape[0]

    def forward(self, x, state, prefill):
        """x [S, D] -> [S, D]. Prefill: the S rows, in order, from an empty state, the conv padded with zeros on the
        left, the rule chunked. Decode: each row one sample's next token (state [conv_dim, K], [Hv, dk, dv]: one
        sample; with a leading slot dimension: one per row, Slots), the conv over its saved inputs, one step of the
        rule. Either way `state` is advanced in place."""
        conv_state, S_rule = state
        if prefill:  # (a compiled model reuses its cache: the state may hold the previous sample's)
            S_rule.zero_()
        elif conv_state.dim() == 2:  # one sample: its state as a slot of one (views: updated in place)
            conv_state, S_rule = conv_state[None], S_rule[None]
        L = x.shape[0]
        qkv, z, b, a = (self.input_layernorm(x) @ self.in_proj).split([self.conv_dim, self.value_dim, self.hv, self.hv], -1)
        # causal depthwise conv of q|k|v over time, SiLU; the state keeps the last `kernel` inputs for the next token
        if prefill:
            window = torch.cat([torch.zeros_like(conv_state[:, 1:]), qkv.T], -1)  # [conv_dim, K - 1 + L]
            conv_state.copy_(window[:, -self.kernel:])
            qkv = F.silu(F.conv1d(window[None], self.conv, groups=self.conv_dim)[0].T)  # [L, conv_dim]
        else:
            window = torch.cat([conv_state[:, :, 1:], qkv[:, :, None]], -1)  # [B, conv_dim, K]
            conv_state.copy_(window)
            qkv = F.silu(F.conv1d(window, self.conv, groups=self.conv_dim)[..., 0])  # [B, conv_dim]
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], -1)
        rep = self.hv // self.hk  # each key head serves this many consecutive value heads
        up = M.upcast  # the rule in fp32 (fp64 stays fp64: the gradient checks)
        q = l2norm(up(q).view(L, self.hk, self.dk)).repeat_interleave(rep, 1) * self.dk**-0.5
        k = l2norm(up(k).view(L, self.hk, self.dk)).repeat_interleave(rep, 1)
        v, beta = up(v).view(L, self.hv, self.dv), up(torch.sigmoid(b))
        g = -up(self.A_log).exp() * F.softplus(up(a) + self.dt_bias)  # log decay, <= 0
        if prefill:
            o = delta_rule_chunked(q, k, v, beta, g, S_rule)
        else:
            o = delta_rule_step(q, k, v, beta, g, S_rule)
        o = o.to(x.dtype)  # [L, Hv, dv]
        # gated RMSNorm per value head: normalize in fp32, weight in the model dtype, then times silu(z) in fp32
        normed = up(o) * torch.rsqrt(up(o).pow(2).mean(-1, keepdim=True) + self.eps)
        o = ((self.norm * normed.to(x.dtype)) * F.silu(up(z.view(L, self.hv, self.dv)))).to(x.dtype)
        return M.swiglu(x + o.reshape(L, -1) @ self.out_proj, self.post_attention_layernorm, self.gate_up, self.down)


# ----------------------------------------------------------------------------- the prompt

def prompt_ids(tok, question, video, system=None, thinking=True):
    """The chat template's ids for one video and a question, expanded as transformers 5.x's processor does: it
    replaces only <|video_pad|>, so the template's own <|vision_start|> ... <|vision_end|> stay around the timed
    frame-group blocks. The template trims the user's and the system's text; thinking opens the answer with <think>
    (the template's default), thinking=False closes it at once (enable_thinking=False)."""
    V.check_thinking(tok, FAMILY)
    V.check_typed(FAMILY, question, system)
    blocks, counts = Q3.timed_blocks(video, FAMILY)
    user = f"<|vision_start|>{blocks}<|vision_end|>{question}".strip()
    system = None if system is None else system.strip()
    return V.expand_video(tok, V.chat_text(user, system, V.THINK_OPEN if thinking else THINK_CLOSED), counts, FAMILY)


# ----------------------------------------------------------------------------- the model

class Model(M.VideoLM):
    family, prefixes = FAMILY, Q25.PREFIXES
    ignored = ("mtp.",)  # the released checkpoints' multi-token-prediction head: transformers drops it, so do we
    thinking = True  # as released: the template opens a thinking block unless told not to (set False to close it)

    def __init__(self, c):
        super().__init__(c, lambda i: GatedDeltaNet(c) if c.layer_types[i] == "linear_attention" else M.DecoderLayer(c))
        self.visual = Q3.VisionEncoder(c)

    def encode_video(self, video):
        embeds, _ = self.visual(video.pixel_values.to(self.visual.pos_embed.weight.device), [video.grid_thw])
        return M.Visual(embeds)

    def prompt(self, tok, question, video, system=None):
        ids = prompt_ids(tok, question, video, system, self.thinking)
        return ids, self.positions(ids, video)

    def positions(self, ids, video=None):  # Qwen3-VL's rule: one block per frame group, the timestamps (and the outer
        return Q3.rope_index(ids, [video.grid_thw] if video else [], self.c)  # vision pair) are text
