"""Video-R1's evaluation rules, which the paper follows (METHOD.md §8): the prompt around each question, the answer
inside <answer> tags, and the score of a prediction. Each rule is Video-R1's src/eval_bench.py (QUESTION_TEMPLATE,
TYPE_TEMPLATE, reward_fn) in our words, byte for byte where it is text and bit for bit where it is arithmetic
(tests/test_eval_scoring.py writes Video-R1's rules out again and compares); OCR and free-form, which Video-R1 scores
0, are ours. No model, no files: eval.py runs the benchmarks, report.py summarizes them.
"""
import re

import torch

# Byte for byte Video-R1's src/eval_bench.py (QUESTION_TEMPLATE, TYPE_TEMPLATE, reward_fn), which the paper follows.

INSTRUCTION = (
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "  # no full stop: as in Video-R1
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer "
    "between the <answer> and </answer> tags.")
SUFFIX = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}
def question(item):
    """The user's text after the video: problem [+ options] + newline + instruction + type suffix."""
    q = item["problem"]
    if item["problem_type"] == "multiple choice":
        q += "Options:\n" + "".join(o + "\n" for o in item["options"])  # Video-R1 adds no separator before "Options:"
    return q + "\n" + INSTRUCTION + SUFFIX[item["problem_type"]]


def extract_answer(text):  # the text of the first <answer>...</answer>, stripped; None if there is none
    m = re.search(r"<answer>(.*?)</answer>", text, re.S)
    return m.group(1).strip() if m else None


def answer_of(text):
    """Text inside the first <answer>...</answer>, stripped; the whole text when there is none or it is empty (as
    Video-R1, which keeps that whole text unstripped: no rule in score() sees the difference)."""
    return extract_answer(text) or text.strip()


def to_number(s):
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def mra(pred, gt):
    """Mean relative accuracy over theta = 0.50, 0.55, ..., 0.95: the share of thresholds with |pred-gt|/|gt| < 1-theta.
    Video-R1's arithmetic exactly: both numbers become float32 *before* the subtraction, then eps 1e-8 and float32
    thresholds. Ties fall its way (3.6 vs 3 scores 0.7, not the 0.6 of float64), gt = 0 scores 1 for pred = 0 and 0
    otherwise, and a magnitude past float32's range becomes inf (1e39 vs 1e39: inf - inf = nan, scores 0)."""
    p, g = torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32)
    rel = (p - g).abs() / (g.abs() + 1e-8)
    return float((rel < 1 - torch.arange(0.5, 0.95 + 0.025, 0.05, dtype=torch.float32)).float().mean())


def norm(s):  # lower case, runs of whitespace as one space
    return " ".join(s.lower().split())


def words(s):
    """ROUGE tokens: lower-cased runs of a-z/0-9 (rouge_score's tokenizer, which drops everything else), and every
    other letter or digit as a token of its own, so that text in a script without a-z (Japanese, Chinese, Russian...)
    is compared character by character instead of vanishing. Punctuation and symbols are dropped, as in rouge_score;
    on ASCII text the tokens are rouge_score's."""
    return re.findall(r"[a-z0-9]+|[^\W_a-z0-9]", s.lower())


def rouge_l(pred, gt):
    """ROUGE-L F1 over words() (no stemming). A side with no token at all (only punctuation, or empty) can only match
    the same text: "..." vs "!!!" scores 0, never 1."""
    a, b = words(pred), words(gt)
    if not a or not b:
        return float(norm(pred) == norm(gt))
    lcs = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, lcs[j] = lcs[j], prev + 1 if x == y else max(lcs[j], lcs[j - 1])
    p, r = lcs[-1] / len(a), lcs[-1] / len(b)
    return 0.0 if lcs[-1] == 0 else 2 * p * r / (p + r)


def score(ptype, pred, gt):
    """In [0, 1]. Multiple choice: exact match after strip (so "B." or "(B)" is wrong, as in Video-R1). Numerical:
    equal after rounding to 2 decimals, and a decimal point or comma in one but not the other is wrong (Video-R1's
    rule: "3" vs "3.0" is wrong, "3.14" vs "3.140" right). Regression: MRA. OCR: exact match after lower-casing and
    collapsing whitespace; free-form: ROUGE-L F1 (ours: Video-R1's eval_bench scores both 0)."""
    if ptype == "multiple choice":
        return float(pred.strip() == gt.strip())
    if ptype == "OCR":
        return float(norm(pred) == norm(gt))
    if ptype == "free-form":
        return rouge_l(pred, gt)
    p, g = to_number(pred), to_number(gt)
    if p is None or g is None:
        return 0.0
    if ptype == "numerical":
        return float(("." in pred or "," in pred) == ("." in gt or "," in gt) and round(p, 2) == round(g, 2))
    return mra(p, g)
