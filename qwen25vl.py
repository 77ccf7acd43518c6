"""Qwen2.5-VL (3B-72B): its config, its vision encoder (window attention, RMSNorm, SwiGLU) and its M-RoPE positions
(the temporal index follows the sampled time). The decoder, the cache and the loader are shared (model.py).
Reference: transformers 4.51.3 models/qwen2_5_vl (Qwen's own M-RoPE rule).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M
import video as V

# qwen-vl-utils 0.0.10 (vision_process.py) and the Instruct checkpoints' processor: CLIP normalization, 28-px blocks,
# 128 to 768 tokens a frame, a video's total int(128000*28*28*0.9) (it reads env VIDEO_MAX_PIXELS: we take
# --total-pixels). Its tokens and prompt: ChatML, one video block, a default system message.
FAMILY = V.Family("qwen2_5_vl", "Qwen2.5-VL", patch=14, mean=(0.48145466, 0.4578275, 0.40821073),
                  std=(0.26862954, 0.26130258, 0.27577711), fused_normalize=False, sampler="qwen-vl-utils",
                  min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28, total_pixels=90316800, strict_pixel_limits=False,
                  special_tokens=("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>",
                                  "<|image_pad|>"),
                  vision_tokens=("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"),
                  config_tokens=(("video_token_id", "<|video_pad|>"), ("image_token_id", "<|image_pad|>"),
                                 ("vision_start_token_id", "<|vision_start|>")),
                  stop_tokens=("<|im_end|>", "<|endoftext|>"), group_text_tokens=0)
DEFAULT_SYSTEM = "You are a helpful assistant."
VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"
# Checkpoint key prefixes of both eras (Qwen2.5-VL, Qwen3-VL and Qwen3.5 alike) -> our module tree
PREFIXES = (("model.language_model.", "llm."), ("language_model.model.", "llm."), ("language_model.lm_head.", "lm_head."),
            ("model.visual.", "visual."), ("visual.", "visual."), ("lm_head.", "lm_head."), ("model.", "llm."))


@dataclass
class Config(M.Config):
    window_size: int  # pixels
    fullatt_blocks: tuple
    tokens_per_second: float

    @classmethod
    def from_json(cls, path):
        """An official config.json (flat, `rope_scaling`) or a newer nested one (`text_config`, `rope_parameters`)."""
        common, _, v = M.Config.read(path, "qwen2_5_vl", interleaved=False, qk_norm=False, bias=True,
                                     vision_act="silu", legacy_yarn=True)
        c = cls(**common, window_size=v.get("window_size"), fullatt_blocks=v.ints("fullatt_block_indexes"),
                tokens_per_second=v.get("tokens_per_second", float))
        c.check(path, FAMILY)
        # the reference (4.51.3) builds q/k/v with biases and heads of hidden_size / num_attention_heads whatever the
        # file says: a file that says otherwise describes another model
        if not c.attn_bias or c.head_dim * c.n_heads != c.hidden_size:
            key = "attention_bias false" if not c.attn_bias else f"head_dim {c.head_dim}"
            raise M.ModelError(f"{path}: {key} does not fit Qwen2.5-VL, whose attention has q/k/v biases and heads of "
                               f"hidden_size / num_attention_heads")
        if c.window_size < c.merge_size * c.patch_size:  # the window in merged tokens would be 0
            raise M.ModelError(f"{path}: vision_config.window_size {c.window_size} is under one merged token "
                               f"({c.merge_size * c.patch_size} pixels)")
        return c


# ----------------------------------------------------------------------------- vision encoder

class MLP(nn.Module):  # SwiGLU with bias
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PatchMerger(nn.Module):  # 2x2 neighbouring patches -> one LLM token
    def __init__(self, c):
        super().__init__()
        self.ln_q = M.RMSNorm(c.v_hidden, 1e-6)
        self.mlp = nn.Sequential(nn.Linear(4 * c.v_hidden, 4 * c.v_hidden), nn.GELU(), nn.Linear(4 * c.v_hidden, c.hidden_size))

    def forward(self, x):  # [N, Dv] -> [N/4, D]
        return self.mlp(self.ln_q(x).view(-1, self.mlp[0].in_features))


def window_index(grids, ws):
    """Order merged tokens window by window (ws x ws merged tokens per window, the reference's get_window_index). Returns the permutation
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


class VisionEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(c.in_chans, c.v_hidden, (c.temporal_patch_size, c.patch_size, c.patch_size), bias=False)
        self.blocks = nn.ModuleList(M.VisionBlock(c.v_hidden, c.v_heads, lambda: M.RMSNorm(c.v_hidden, 1e-6),
                                                  MLP(c.v_hidden, c.v_intermediate)) for _ in range(c.v_depth))
        self.merger = PatchMerger(c)

    def forward(self, pixels, grids):  # pixels [N, C*Tp*P*P] fp32, grids [(t, h, w)] in patches -> [N/4, D]
        c, dev = self.c, pixels.device
        x = M.patch_embed(self.patch_embed.proj, pixels)
        N, dv = x.shape[0], c.v_hidden // c.v_heads
        ang = M.vision_angles(grids, dv, c.merge_size)  # [N, dv/2]
        # reorder merged-token groups of 4 patches window by window; window blocks attend within a window,
        # full blocks within one 2-frame group (the reorder keeps each group contiguous)
        win, cu_win = window_index(grids, c.window_size // c.merge_size // c.patch_size)
        x = x.view(N // 4, 4, -1)[win.to(dev)].view(N, -1)
        ang = torch.cat([ang.view(N // 4, 4, -1)[win], ang.view(N // 4, 4, -1)[win]], -1).view(N, 1, dv).to(dev)
        cos, sin = ang.cos(), ang.sin()
        seg_win, seg_full = M.segment_groups(cu_win, dev), M.segment_groups(M.frame_groups(grids), dev)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, seg_full if i in c.fullatt_blocks else seg_win)
        return self.merger(x)[torch.argsort(win).to(dev)]  # back to (t, h, w) token order


# ----------------------------------------------------------------------------- M-RoPE positions

def rope_index(ids, video_grids, second_per_grid, c):
    """Qwen's reference M-RoPE positions for one sequence. ids: list[int]; video_grids: [(t, h, w)] in patches;
    second_per_grid: [float] per video. Returns positions [3, S] (T, H, W rows), int64. The temporal index is
    floor(t * second_per_grid * tokens_per_second) computed in float32, as the reference does (transformers 4.57
    casts second_per_grid to an integer first, which breaks fractional sample rates: our oracle is 4.51.3)."""
    m = c.merge_size
    blocks = [((torch.arange(t, dtype=torch.float32) * torch.tensor(spg, dtype=torch.float32) * c.tokens_per_second).long(),
               h // m, w // m) for (t, h, w), spg in zip(video_grids, second_per_grid)]
    return M.grid_positions(ids, c, blocks)


# ----------------------------------------------------------------------------- the model

def prompt_ids(tok, question, video, system=None):
    """The Instruct chat template's ids for one video and a question, the video expanded as the processor does: one
    block of n <|video_pad|>. video: a Video, or its <|video_pad|> count. system None: the template's default."""
    n = video.n_tokens if isinstance(video, V.Video) else int(video)
    V.check_typed(FAMILY, question, system)
    text = V.chat_text(VIDEO_BLOCK + question, DEFAULT_SYSTEM if system is None else system)
    return V.expand_video(tok, text, [n], FAMILY)


class Model(M.VideoLM):
    family, prefixes = FAMILY, PREFIXES

    def __init__(self, c):
        super().__init__(c)
        self.visual = VisionEncoder(c)

    def encode_video(self, video):
        return M.Visual(self.visual(video.pixel_values.to(self.visual.merger.ln_q.weight.device), [video.grid_thw]))

    def prompt(self, tok, question, video, system=None):
        ids = prompt_ids(tok, question, video, system)
        return ids, self.positions(ids, video)

    def positions(self, ids, video=None):  # the prompt's M-RoPE positions [3, S] (a text-only prompt: video None)
        return rope_index(ids, [video.grid_thw] if video else [], [video.second_per_grid] if video else [], self.c)
