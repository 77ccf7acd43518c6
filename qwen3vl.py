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
import qwen25vl as Q25
import video as V

# qwen-vl-utils 0.0.14 with image_patch_size=16 and the 4.57 fast video processor: mean = std = 0.5 (the rescale
# fused into them), 32-px blocks, 128 to 768 tokens a frame, a video's total MODEL_SEQ_LEN(128000)*32*32*0.9 (a
# float; env MODEL_SEQ_LEN, likewise), and max_pixels below min_pixels refused. Prompt: ChatML, a "<t seconds>" before
# each frame group's block (at most 8 tokens with its vision pair), no default system message.
FAMILY = V.Family("qwen3_vl", "Qwen3-VL", patch=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), fused_normalize=True,
                  sampler="qwen-vl-utils", min_pixels=128 * 32 * 32, max_pixels=768 * 32 * 32,
                  total_pixels=128000 * 32 * 32 * 0.9, strict_pixel_limits=True,
                  special_tokens=Q25.FAMILY.special_tokens, vision_tokens=Q25.FAMILY.vision_tokens,
                  config_tokens=Q25.FAMILY.config_tokens, stop_tokens=Q25.FAMILY.stop_tokens, group_text_tokens=8)


@dataclass
class Config(M.Config):
    n_pos_embed: int  # the learned position table has n x n entries
    deepstack: tuple  # vision blocks whose outputs feed decoder layers 0, 1, ... (DeepStack)

    @classmethod
    def from_json(cls, path):
        common, _, v = M.Config.read(path, "qwen3_vl", interleaved=True, qk_norm=True, bias=False,
                                  vision_act="gelu_pytorch_tanh")
        c = cls(**common, n_pos_embed=v.get("num_position_embeddings"), deepstack=v.ints("deepstack_visual_indexes"))
        c.check(path, FAMILY)
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

def timed_blocks(video, fam):
    """Qwen3-VL's video text: per frame group its timestamp, then a block of h*w/4 <|video_pad|> -> (text, counts)."""
    t, h, w = video.grid_thw
    if len(video.timestamps) != t:
        raise V.VideoError(f"the video has {len(video.timestamps)} timestamps for {t} temporal groups")
    text = "".join(f"<{s:.1f} seconds>{Q25.VIDEO_BLOCK}" for s in video.timestamps)
    return text, [h * w // fam.merge**2] * t


def prompt_ids(tok, question, video, system=None, thinking=False):
    """The Instruct (or, thinking=True, the Thinking) chat template's ids for one video and a question, expanded as
    the 4.57 processor does; no system turn unless given."""
    if thinking:
        V.check_thinking(tok, FAMILY)
    V.check_typed(FAMILY, question, system)
    blocks, counts = timed_blocks(video, FAMILY)
    return V.expand_video(tok, V.chat_text(blocks + question, system, V.THINK_OPEN if thinking else ""), counts, FAMILY)


class Model(M.VideoLM):
    family, prefixes = FAMILY, Q25.PREFIXES

    def __init__(self, c):
        super().__init__(c)
        self.visual = VisionEncoder(c)

    def encode_video(self, video):
        embeds, deepstack = self.visual(video.pixel_values.to(self.visual.pos_embed.weight.device), [video.grid_thw])
        return M.Visual(embeds, deepstack)

    def read_template(self, model_dir):  # a Thinking checkpoint is known by the chat template it ships
        self.thinking = V.thinking_template(model_dir)

    def prompt(self, tok, question, video, system=None):
        ids = prompt_ids(tok, question, video, system, self.thinking)
        return ids, self.positions(ids, video)

    def positions(self, ids, video=None):  # the prompt's positions [3, S] (a text-only prompt: video None)
        return rope_index(ids, [video.grid_thw] if video else [], self.c)
