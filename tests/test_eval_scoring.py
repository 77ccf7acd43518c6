"""eval.py's scores against Video-R1's src/eval_bench.py (reward_fn and the helpers it calls), its rules written out
again here independently (string search instead of a regex, numpy float32 instead of torch), on generated cases per
problem type: numbers on the exact 0.05 MRA steps, zero, negative, huge and tiny ground truths, commas, tag edge cases.
OCR and free-form are ours (Video-R1 scores both 0): checked against a second implementation of our rule."""
import math
import random

import numpy as np
import pytest

import videor1 as VR1

MC, NUM, REG, OCR, FREE = "multiple choice", "numerical", "regression", "OCR", "free-form"


# ----------------------------------------------------------------------------- Video-R1's rules, re-derived

def vr1_extract(text):
    """Video-R1's extract_answer: the text between the first "<answer>" and the first "</answer>" after it, without
    surrounding whitespace; "" when there is no such pair."""
    i = text.find("<answer>")
    j = text.find("</answer>", i + len("<answer>")) if i >= 0 else -1
    return text[i + len("<answer>"):j].strip() if j >= 0 else ""


def vr1_number(s):  # its normalize_number: commas removed, then Python's float(); None if that fails
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def vr1_mra(pred, gt):
    """Its mean_relative_accuracy, in numpy float32: the inputs are cast first, eps 1e-8, thresholds 0.5 + 0.05 i."""
    with np.errstate(over="ignore", invalid="ignore"):
        p, g = np.float32(pred), np.float32(gt)
        rel = np.abs(p - g) / (np.abs(g) + np.float32(1e-8))
        hits = sum(bool(rel < np.float32(1) - np.float32(0.5 + 0.05 * i)) for i in range(10))
    return float(np.float32(hits) / np.float32(10))


def vr1_reward(ptype, output, solution):
    out = vr1_extract(output) or output  # no (or an empty) answer: the whole output, as it is
    gt = vr1_extract(solution)
    if ptype == MC:
        return float(out.strip() == gt.strip())
    decimal = lambda s: "." in s or "," in s
    o, g = vr1_number(out), vr1_number(gt)
    if ptype == NUM:
        return float(decimal(out) == decimal(gt) and o is not None and g is not None and round(o, 2) == round(g, 2))
    if ptype == REG:
        return 0.0 if o is None or g is None else vr1_mra(o, g)
    return 0.0  # OCR, free-form: Video-R1 has no rule


def ours(ptype, output, solution):  # what eval.py's run_sample computes for one record
    return VR1.score(ptype, VR1.answer_of(output), VR1.answer_of(solution))


# ----------------------------------------------------------------------------- generated cases

def wrap(rng, a):
    """The model's output around answer text `a`: the tag layouts that decide what gets extracted."""
    return rng.choice([
        f"<answer>{a}</answer>", f"<think>so {a}?</think>\n<answer> {a} </answer>", f"<answer>\n{a}\n</answer>",
        f"<answer>{a}</answer> then <answer>X</answer>", a, f" {a} \n", f"<answer></answer> {a}",
        f"<answer> \n\t</answer>{a}", f"<answer>{a}", f"{a}</answer>", f"</answer><answer>{a}</answer>",
        f"<answer><answer>{a}</answer></answer>", f"<ANSWER>{a}</ANSWER>", f"<answer>{a}</answer >",
        f"<answer>\u3000{a}\u2003</answer>", f"The answer is <answer>{a}</answer>.", f"<answer>{a} </answer>\n"])


def solution(rng, g):
    return rng.choice([f"<answer>{g}</answer>", f"<answer> {g} </answer>", f"<think>x</think><answer>{g}</answer>"])


def fmt(rng, x):  # a number the way a model or a dataset may write it
    with np.errstate(all="ignore"):
        return rng.choice([repr(x), f"{x:.0f}", f"{x:.1f}", f"{x:.2f}", f"{x:.3f}", f"{x:,.1f}", f"{x:,.0f}", f"{x:g}"])


def mc_cases(rng):
    for _ in range(300):
        g = rng.choice("ABCDE")
        p = rng.choice([g, g, rng.choice("ABCDE"), f"{g}.", f"({g})", g.lower(), f" {g}\n", f"{g} {g}", "", f"{g}. left"])
        yield wrap(rng, p), solution(rng, g)


def num_cases(rng):
    for _ in range(400):
        g = rng.choice([rng.randint(-50, 50), round(rng.uniform(-100, 100), rng.randint(1, 3)), 0, 1000, 1234.5, 0.005])
        gs = rng.choice([str(g), f"{g:,}", f"{g}0" if "." in str(g) else f"{g}.0"])
        x = float(g) + rng.choice([0, 0, 0, 0.004, -0.004, 0.005, -0.005, 0.006, 0.01, 1])
        same = gs.replace(",", "") if rng.random() < 0.5 else gs  # the ground truth as written, commas or not
        p = rng.choice([same, same, same, fmt(rng, x), fmt(rng, x), "three", f"{x} apples", "nan", "inf", "1_000", "", "-0"])
        yield wrap(rng, p), solution(rng, gs)


def reg_cases(rng):
    for _ in range(600):
        g = rng.choice([round(rng.uniform(0.1, 20), 1), round(rng.uniform(0.1, 20), 1), rng.randint(1, 40), 0, 0.0,
                        -round(rng.uniform(0.1, 20), 1), 10 ** rng.uniform(-45, 39), 1e39, 3.4028235e38, 1e-40, 1234567.0])
        gs = rng.choice([repr(g), fmt(rng, g)])
        steps = g * (1 + rng.choice([-1, 1]) * 0.05 * rng.randint(0, 20))  # exactly on a threshold, in decimal
        p = rng.choice([fmt(rng, steps), fmt(rng, steps), repr(steps), fmt(rng, rng.uniform(-50, 50)), "0", "1e39",
                        "-1e39", "nan", "about 3", f"{steps:,.2f}"])
        yield wrap(rng, p), solution(rng, gs)


def text_cases(rng):
    vocab = ["the", "cat", "Cat", "sat", "on", "mat", "42", "a", "dog", "猫", "が", "座", "った", "кот", "...", "!!!", "—"]
    for _ in range(300):
        g = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 5)))
        p = rng.choice([g, g.upper(), "  ".join(rng.choice(vocab) for _ in range(rng.randint(0, 5))), g + "!", ""])
        yield wrap(rng, p), solution(rng, g)


CASES = {MC: mc_cases, NUM: num_cases, REG: reg_cases}


@pytest.mark.parametrize("ptype", [MC, NUM, REG])
def test_scores_equal_video_r1_bit_for_bit(ptype):
    cases = list(CASES[ptype](random.Random(ptype)))
    cases = [(o, s) for o, s in dict.fromkeys(cases)]  # distinct
    assert len(cases) >= 200
    for out, sol in cases:
        want, got = vr1_reward(ptype, out, sol), ours(ptype, out, sol)
        assert type(got) is float and got.hex() == want.hex(), (out, sol, got, want)  # bit for bit (nan never occurs)
    scores = [ours(ptype, o, s) for o, s in cases]
    assert 0.1 < sum(x > 0 for x in scores) / len(scores) < 0.9  # the cases are not all right or all wrong
    if ptype == REG:  # they do hit the ties where float64-first subtraction scores otherwise (ours before issue 11)
        f64 = lambda p, g: float(np.mean([abs(p - g) / (abs(g) + 1e-8) < 1 - (0.5 + 0.05 * i) for i in range(10)]))
        nums = [(vr1_number(VR1.answer_of(o)), vr1_number(VR1.answer_of(s))) for o, s in cases]
        differ = [(p, g) for p, g in nums if p is not None and abs(p) < 1e38 and abs(VR1.mra(p, g) - f64(p, g)) > 0.05]
        assert len(differ) >= 10, differ
        assert len(set(scores)) >= 9  # nearly every MRA value 0, 0.1, ..., 1 occurs


def test_mra_crafted_ties():
    """The issue's cases: float32 before subtracting moves each exact tie by one threshold."""
    f32 = lambda x: float(np.float32(x))
    assert (VR1.mra(3.6, 3), VR1.mra(1.1, 1), VR1.mra(0.15, 0.1), VR1.mra(1e39, 1e39)) == (f32(0.7), f32(0.8), 0.0, 0.0)
    assert VR1.score(REG, "3.6", "3") == f32(0.7) == pytest.approx(0.7)
    assert VR1.mra(0, 0) == 1.0 and VR1.mra(-3, 0) == 0.0 and VR1.mra(-9.2, -10) == f32(0.9)
    assert VR1.mra(3.4028235e38, 3.4028235e38) == 1.0  # float32's largest still finite


def test_answer_extraction_equals_video_r1():
    rng = random.Random(1)
    texts = [wrap(rng, rng.choice(["B", " 3.5 ", "", "\n", "a\nb", "<answer>", "</answer>"])) for _ in range(400)]
    for t in dict.fromkeys(texts):
        assert VR1.answer_of(t) == (vr1_extract(t) or t.strip()), t  # Video-R1 keeps the whole text unstripped


# ----------------------------------------------------------------------------- ours: OCR and free-form

def rouge_ref(pred, gt):
    """Our free-form rule, written again: tokens as eval.words() documents (a-z/0-9 runs; any other letter or digit
    alone), ROUGE-L F1 from a full LCS table; a side without tokens scores by normalized equality."""
    def toks(s):
        out, run = [], ""
        for ch in s.lower() + " ":
            if ch.isascii() and ch.isalnum():
                run += ch
                continue
            out += [run] if run else []
            run = ""
            if ch.isalnum():
                out.append(ch)
        return out
    a, b = toks(pred), toks(gt)
    if not a or not b:
        return float(" ".join(pred.lower().split()) == " ".join(gt.lower().split()))
    T = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            T[i + 1][j + 1] = T[i][j] + 1 if a[i] == b[j] else max(T[i][j + 1], T[i + 1][j])
    lcs = T[-1][-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))  # F1 = 2PR/(P+R) = 2 LCS/(|a|+|b|)


def test_free_form_and_ocr_generated():
    cases = list(dict.fromkeys(text_cases(random.Random(2))))
    assert len(cases) >= 200
    for out, sol in cases:
        p, g = VR1.answer_of(out), VR1.answer_of(sol)
        assert ours(FREE, out, sol) == pytest.approx(rouge_ref(p, g), abs=1e-12), (p, g)
        assert ours(OCR, out, sol) == float(" ".join(p.lower().split()) == " ".join(g.lower().split()))
        if ours(FREE, out, sol) == 1.0:  # only texts equal up to case, spacing and punctuation
            assert VR1.words(p) == VR1.words(g)


def test_rouge_without_latin_words():
    s = lambda p, g: VR1.score(FREE, p, g)
    assert s("...", "!!!") == 0 and s("...", "...") == 1 and s("", "x") == 0
    assert s("猫がマットに座った", "犬が庭で寝ている") == pytest.approx(2 * 1 / (9 + 8))  # characters; only が shared
    assert s("猫がマットに座った", "猫がマットに座った") == 1 and 0 < s("猫が座った", "猫がマットに座った") < 1
    assert s("кот сидит", "кот спит") == pytest.approx(2 * 6 / (8 + 7))  # LCS котсит of 8 and 7 letters
    assert s("3 個のりんご", "3 個のみかん") < 1  # the digit alone no longer decides
    assert s("The cat sat.", "the cat sat") == 1 and s("cat", "the cat sat") == pytest.approx(0.5)
    assert math.isclose(s("a b c d", "a x c d"), 0.75)
