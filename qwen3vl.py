"""Qwen3-VL (2B-32B, Instruct and Thinking): its config, its vision encoder (learned position table, LayerNorm, GELU
MLP, DeepStack mergers) and its positions (timestamps as text between frame groups, no temporal index). The decoder
is the shared one with Qwen3 layers (per-head q/k RMSNorm, no bias) and interleaved M-RoPE (model.py).
Reference: transformers 4.57 models/qwen3_vl. What differs from Qwen2.5-VL, and where: PORTING.md §4.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M
import video as V


@dataclass
class Config(M.Config):
    n_pos_embed: int  # the learned position table has n x n entries
    deepstack: tuple  # vision blocks whose outputs feed decoder layers 0, 1, ... (DeepStack)

    @classmethod
    def from_json(cls, path):
        common, v = M.Config.read(path, "qwen3_vl", interleaved=True, qk_norm=True, bias=False,
                                  vision_act="gelu_pytorch_tanh")
        c = cls(**common, n_pos_embed=v.get("num_position_embeddings"), deepstack=v.ints("deepstack_visual_indexes"))
        c.check(path)
        if round(c.n_pos_embed ** 0.5) ** 2 != c.n_pos_embed:
            raise M.ModelError(f"{path}: vision_config.num_position_embeddings {c.n_pos_embed} is not a square number")
        if any(i >= c.v_depth for i in c.deepstack) or len(c.deepstack) > c.n_layers:
            raise M.ModelError(f"{path}: vision_config.deepstack_visual_indexes {list(c.deepstack)} do not fit "
                               f"{c.v_depth} vision blocks and {c.n_layers} decoder layers")
        return c


# ----------------------------------------------------------------------------- vision encoder

class MLP(nn.Module):  # not gated: fc1 -> GELU (tanh) -> fc2, with biases
    def __init__(self, dim, hidden):
        super().__init__()
        self.linear_fc1, self.linear_fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


class PatchMerger(nn.Module):
    """2x2 neighbouring patches -> one LLM token: LayerNorm, shuffle, fc1 -> GELU (exact) -> fc2. The DeepStack mergers
    normalize after the shuffle, over 4x the width."""

    def __init__(self, c, postshuffle):
        super().__init__()
        self.norm = nn.LayerNorm(4 * c.v_hidden if postshuffle else c.v_hidden, eps=1e-6)
        self.linear_fc1, self.linear_fc2 = nn.Linear(4 * c.v_hidden, 4 * c.v_hidden), nn.Linear(4 * c.v_hidden, c.hidden_size)
        self.postshuffle = postshuffle

    def forward(self, x):  # [N, Dv] -> [N/4, D]
        x = self.norm(x.view(-1, self.linear_fc1.in_features)) if self.postshuffle else self.norm(x).view(-1, self.linear_fc1.in_features)
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class VisionEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(c.in_chans, c.v_hidden, (c.temporal_patch_size, c.patch_size, c.patch_size))
        self.pos_embed = nn.Embedding(c.n_pos_embed, c.v_hidden)
        self.blocks = nn.ModuleList(M.VisionBlock(c.v_hidden, c.v_heads, lambda: nn.LayerNorm(c.v_hidden, eps=1e-6),
                                                  MLP(c.v_hidden, c.v_intermediate)) for _ in range(c.v_depth))
        self.merger = PatchMerger(c, postshuffle=False)
        self.deepstack_merger_list = nn.ModuleList(PatchMerger(c, postshuffle=True) for _ in c.deepstack)

    def position_table(self, grids):
        """The learned n x n table, bilinearly resampled (corner-aligned: linspace(0, n-1, h)) to each frame's h x w
        patches, repeated over t, in merge-block order -> [N, Dv]. The 4 tap weights are computed in fp32 and cast to
        the table's dtype, taps summed in a fixed order (transformers 4.57 fast_pos_embed_interpolate)."""
        n, table, m = round(self.c.n_pos_embed ** 0.5), self.pos_embed.weight, self.c.merge_size
        out = []
        for t, h, w in grids:
            fh, fw = torch.linspace(0, n - 1, h), torch.linspace(0, n - 1, w)
            h0, w0 = fh.long(), fw.long()  # floor: non-negative
            h1, w1 = (h0 + 1).clamp(max=n - 1), (w0 + 1).clamp(max=n - 1)
            dh, dw = fh - h0, fw - w0
            e = 0
            for hi, wh in ((h0, 1 - dh), (h1, dh)):
                for wi, ww in ((w0, 1 - dw), (w1, dw)):
                    idx = (hi[:, None] * n + wi[None]).flatten().to(table.device)
                    e = e + table[idx] * (wh[:, None] * ww[None]).flatten()[:, None].to(table.device, table.dtype)
            e = e.view(h // m, m, w // m, m, -1).permute(0, 2, 1, 3, 4).reshape(h * w, -1)
            out.append(e.repeat(t, 1))
        return torch.cat(out)

    def forward(self, pixels, grids):  # pixels [N, C*Tp*P*P] fp32, grids [(t, h, w)] in patches -> [N/4, D], k x [N/4, D]
        c, dev = self.c, pixels.device
        x = M.patch_embed(self.patch_embed.proj, pixels) + self.position_table(grids)
        dv = c.v_hidden // c.v_heads
        ang = M.vision_angles(grids, dv, c.merge_size)
        ang = torch.cat([ang, ang], -1)[:, None].to(dev)  # [N, 1, dv]
        cos, sin = ang.cos(), ang.sin()
        segments = M.segment_groups(M.frame_groups(grids), dev)  # every block: full attention within a 2-frame group
        deepstack = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, segments)
            if i in c.deepstack:
                deepstack.append(self.deepstack_merger_list[c.deepstack.index(i)](x))
        return self.merger(x), deepstack


# ----------------------------------------------------------------------------- positions

def rope_index(ids, video_grids, c):
    """transformers 4.57 get_rope_index for videos: each video's grid splits into t blocks of one frame group, each
    after its own <|vision_start|>, temporal index 0; the timestamp text between blocks advances positions as text.
    Time reaches the model only through the timestamps. -> [3, S] int64."""
    m = c.merge_size
    return M.grid_positions(ids, c, [(torch.zeros(1, dtype=torch.long), h // m, w // m)
                                     for t, h, w in video_grids for _ in range(t)])


# ----------------------------------------------------------------------------- the model

class Model(M.VideoLM):
    def __init__(self, c):
        super().__init__(c)
        self.visual = VisionEncoder(c)

    def encode_video(self, video):
        embeds, deepstack = self.visual(video.pixel_values.to(self.visual.pos_embed.weight.device), [video.grid_thw])
        return M.Visual(embeds, deepstack)

    def prompt(self, tok, question, video, system=None):
        ids = V.build_prompt(tok, question, video, system, V.QWEN3_VL, thinking=self.thinking)
        return ids, rope_index(ids, [video.grid_thw], self.c)
