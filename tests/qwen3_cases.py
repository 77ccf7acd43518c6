"""The Qwen3-VL model cases, shared by the oracle (tests/oracle3_model.py, transformers 4.57 venv) and our side
(tests/test_qwen3vl.py): plain Python + torch, importable from both venvs."""
import torch

IM_START, IM_END, ENDOFTEXT, VSTART, VEND, VPAD = 151644, 151645, 151643, 151652, 151653, 151656
STOP = (IM_END, ENDOFTEXT)

# name: (tie_word_embeddings, sharded, seed) -- both written by save_pretrained
CHECKPOINTS = {"untied": (False, True, 0), "tied": (True, False, 1)}

# (t, h, w) in 16-px patches: odd merged sizes, larger and smaller than the 8x8 position table, 1-4 frame groups,
# two videos in one call
GRIDS = [[(1, 6, 10)], [(2, 12, 8)], [(3, 10, 14)], [(4, 6, 6)], [(1, 4, 4), (2, 10, 6)]]
LOGITS = [((2, 12, 8), 3), ((3, 10, 14), 3), ((1, 6, 10), 3), (None, 3)]  # (grid, decode steps); None = text only
GENERATE = [((2, 12, 8), 40), ((3, 6, 10), 40)]

# YaRN copies of the untied checkpoint (same weights; mrope_section and mrope_interleaved added to this rope_scaling),
# under names of their own, and the logits cases run on them. The checkpoint has head_dim 32, rope_theta 5e6 and
# max_position_embeddings 32768.
YARN = {"yarn-card": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},  # 4.57: factor 4
        "yarn-betas": {"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0,
                       "mscale_all_dim": 0.5, "truncate": False},
        "yarn-attention": {"rope_type": "yarn", "factor": 3.0, "attention_factor": 0.9,
                           "original_max_position_embeddings": 256}}
YARN_LOGITS = [((2, 12, 8), 3), (None, 3)]


def pixels(grid, seed=0):
    t, h, w = grid
    return torch.randn(t * h * w, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(seed))


def prompt(grid, seed=0, q_len=7):
    """Chat-shaped ids the way Qwen3-VL lays a video out: per frame group a timestamp (text) then <|vision_start|>,
    h*w/4 <|video_pad|>, <|vision_end|>; no system turn. Random ids stand in for the words."""
    g = torch.Generator().manual_seed(seed)
    words = lambda n: torch.randint(0, 151000, (n,), generator=g).tolist()
    video = []
    if grid:
        t, h, w = grid
        for _ in range(t):
            video += [27] + words(3) + [29] + [VSTART] + [VPAD] * (h * w // 4) + [VEND]  # "<" t " seconds" ">"
    return [IM_START, 872, 198] + video + words(q_len) + [IM_END, 198, IM_START, 77091, 198]
