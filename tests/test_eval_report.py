"""eval.py --report and the paired statistics: McNemar and the bootstrap on cases with known answers, the report on a
synthetic run (merged shards, a run in progress, records without traces, an error), and bad input."""
import json
import math
import random
import sys

import numpy as np
import pytest

import eval as E
import report
import vreason as R

MC, REG = "multiple choice", "regression"


# ----------------------------------------------------------------------------- a synthetic run, written as eval.py would

def trace_steps(rng, n, mode, hump):
    """n Steps whose entropy rises to a hump then falls (the shape of the paper's Fig. 1), with eval's EMA / switch."""
    sw, steps = R.Switch(0.9, "switch"), []
    for t in range(n):
        H = max(0.0, 0.2 + hump * math.exp(-((t - 30) / 25) ** 2) + rng.gauss(0, 0.15))
        a = sw(H)
        steps.append(R.Step(1, H, sw.ema, sw.peak, a, updated=mode != "baseline" and t % 2 == 0))
    return steps


def record(rng, ds, i, mode, ptype, right, n, error=None):
    r = {"dataset": ds, "id": str(i), "mode": mode, "problem_type": ptype, "data_source": None, "answer": "A",
         "prediction": None if error else "A", "score": 0.0, "correct": False, "error": error,
         "settings": {"max_new_tokens": 300, "mode": mode}}
    if error:
        return r
    score = (rng.choice([0.3, 0.6, 0.9]) if right else 0.1) if ptype == REG else float(right)
    return {**r, "score": score, "correct": score == 1.0, "output": "<answer>A</answer>", "output_tokens": n,
            "prefill_s": 0.1, "decode_s": 1.0, "latency_s": 1.1, "video_s": 0.1, "vision_s": 0.1,
            "peak_memory_bytes": 2**30, "video_tokens": 10, "video_tokens_kept": 10, "updates": n // 2,
            "trace": E.trace_of(trace_steps(rng, n, mode, {"baseline": 1.0, "vreason": 0.8, "lite": 0.7}[mode]))}


def synthetic_run(d, n_mc=40, n_vsi=30, seed=0):
    """Two datasets, three modes; V-Reason flips a few baseline answers either way and is shorter. Returns the
    records as written (by key). Split over two rank files like a torchrun run."""
    rng, recs = random.Random(seed), {}
    for ds, n in (("mc", n_mc), ("vsi", n_vsi)):
        for i in range(n):
            ptype = REG if ds == "vsi" and i % 3 == 0 else MC
            right = rng.random() < 0.55
            length = min(300, int(rng.lognormvariate(4.6, 0.5)))
            for mode, flip, scale in (("baseline", 0.0, 1.0), ("vreason", 0.25, 0.75), ("lite", 0.3, 0.8)):
                ok = right if rng.random() > flip else rng.random() < 0.65
                recs[ds, str(i), mode] = record(rng, ds, i, mode, ptype, ok, max(1, min(300, int(length * scale))))
    write_ranks(d, recs)
    return recs


def write_ranks(d, recs):  # entry by entry, alternately to rank 0 and rank 1 (as torchrun's round robin)
    d.mkdir(exist_ok=True)
    for rank in (0, 1):
        part = [r for r in recs.values() if int(r["id"]) % 2 == rank]
        (d / f"records.rank{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


# ----------------------------------------------------------------------------- statistics with known answers

def test_mcnemar_exact():
    assert report.mcnemar(0, 0) == report.mcnemar(5, 5) == report.mcnemar(40, 41) == 1.0
    assert report.mcnemar(2, 8) == report.mcnemar(8, 2) == 2 * (1 + 10 + 45) / 2**10  # 2 P(X <= 2), X ~ Bin(10, 1/2)
    assert report.mcnemar(0, 10) == 2 / 2**10 and report.mcnemar(1, 0) == 1.0
    # against the sum written as floats, where it is representable
    for b, c in ((3, 17), (12, 30), (100, 140)):
        n = b + c
        assert report.mcnemar(b, c) == pytest.approx(2 * sum(math.comb(n, i) * 0.5**n for i in range(min(b, c) + 1)), rel=1e-12)
    assert 0 <= report.mcnemar(0, 3000) < 1e-300  # exact integers: no overflow for thousands of flips


def recs_from(rows, ds="d"):
    """rows: (problem_type, baseline score, mode score, baseline tokens, mode tokens) -> records of two modes."""
    recs = {}
    for i, (pt, sb, sm, tb, tm) in enumerate(rows):
        for m, s, t in (("baseline", sb, tb), ("vreason", sm, tm)):
            recs[ds, str(i), m] = {"dataset": ds, "id": str(i), "mode": m, "problem_type": pt, "score": float(s),
                                   "correct": s == 1, "error": None, "output_tokens": t}
    return recs


def stats(recs):
    items = {}
    for (n, i, _), r in recs.items():
        items.setdefault(n, {})[i] = {"id": i, "problem_type": r["problem_type"]}
    return report.paired([(n, list(x.values())) for n, x in items.items()], ["baseline", "vreason"], recs, B=2000)


def test_paired_identical_modes():
    rng = random.Random(0)
    rows = [(MC, s, s, t, t) for s, t in ((rng.random() < 0.5, rng.randint(5, 500)) for _ in range(300))]
    p = stats(recs_from(rows))["modes"]["vreason"]
    c = p["columns"]["d"]
    assert (c["delta"], c["ci"], c["flips"], c["p"]) == (0.0, [0.0, 0.0], [0, 0], 1.0)
    assert p["mean"]["delta"] == 0.0 and p["mean"]["p"] == 1.0
    assert (p["tokens"]["d"]["reduction"], p["tokens"]["d"]["ci"]) == (0.0, [0.0, 0.0])


def test_paired_known_flips_and_interval():
    # 30 entries both right, 20 both wrong, 2 right->wrong, 8 wrong->right; the mode always half the tokens
    rows = [(MC, 1, 1, 100, 50)] * 30 + [(MC, 0, 0, 200, 100)] * 20 + [(MC, 1, 0, 40, 20)] * 2 + [(MC, 0, 1, 80, 40)] * 8
    p = stats(recs_from(rows))["modes"]["vreason"]
    c = p["columns"]["d"]
    assert c["flips"] == [2, 8] and c["p"] == 112 / 1024 and c["delta"] == pytest.approx(100 * 6 / 60)
    assert (c["baseline"], c["mode"], c["pairs"]) == (pytest.approx(100 * 32 / 60), pytest.approx(100 * 38 / 60), 60)
    # the bootstrap interval of a mean of n paired differences: about mean ± 1.96 sd / sqrt(n)
    d = np.array([0] * 50 + [-1] * 2 + [1] * 8) * 100.0
    half = 1.96 * d.std() / math.sqrt(len(d))
    assert c["ci"][0] == pytest.approx(d.mean() - half, abs=0.25 * half) and c["ci"][1] == pytest.approx(d.mean() + half, abs=0.25 * half)
    t = p["tokens"]["d"]
    assert (t["reduction"], t["ci"]) == (pytest.approx(50.0), [pytest.approx(50.0), pytest.approx(50.0)])


def test_paired_mra_column_and_order_independence():
    rows = [(REG, 0.5, 0.7, 10, 10)] * 5 + [(MC, 1, 1, 10, 10)] * 5
    recs = recs_from(rows, "v")
    p = stats(recs)["modes"]["vreason"]
    assert p["columns"]["v MRA"]["delta"] == pytest.approx(20.0) and "p" not in p["columns"]["v MRA"]
    assert p["columns"]["v"]["delta"] == 0.0 and p["mean+MRA"]["delta"] == pytest.approx(10.0)
    # the same records in another order (another shard layout) give the same numbers, resamples included
    rng = np.random.default_rng(1)
    big = recs_from([(MC, int(x), int(y), 50, 40) for x, y in rng.random((200, 2)) < 0.5], "a")
    keys = list(big)
    random.Random(3).shuffle(keys)
    assert stats(big) == stats({k: big[k] for k in keys})


# ----------------------------------------------------------------------------- the report

def run_report(d, capsys):
    assert E.main(["--report", str(d)]) == 0
    return capsys.readouterr()


def test_report_on_a_synthetic_run(tmp_path, capsys):
    d = tmp_path / "run"
    recs = synthetic_run(d)
    # older records without traces, an error, a run in progress (lite missing for the last entries, a torn line)
    for k in list(recs)[:3]:
        del recs[k]["trace"]
    recs["mc", "39", "vreason"] = record(random.Random(0), "mc", 39, "vreason", MC, False, 0, error="video not found: x.mp4")
    recs = {k: r for k, r in recs.items() if not (k[0] == "vsi" and k[2] == "lite" and int(k[1]) >= 20)}
    write_ranks(d, recs)
    with open(d / "records.rank0.jsonl", "a") as f:
        f.write('{"dataset": "vsi", "id": "29", "mo')
    cap = run_report(d, capsys)
    assert "3 of" in cap.err and "no per-token trace" in cap.err and "figure" in cap.err  # progress, per figure
    figs = sorted(p.name for p in (d / "figures").iterdir())
    assert figs == sorted(f"{k}{s}.png" for k in ("entropy", "alpha", "lengths", "accuracy") for s in ("", ".mc", ".vsi"))
    for f in figs:
        data = (d / "figures" / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, f
    md = (d / "summary.md").read_text()
    assert md.startswith("| mode | mc | vsi | vsi MRA | mean | mean+MRA |") and md.count("![") == 12
    assert "## Against the baseline, paired" in md and "seed 0" in md and "McNemar" in md and "(figures/entropy.vsi.png)" in md
    assert "3 records without a per-token trace" in md and md.split("\n## Figures")[0] in cap.out
    s = json.loads((d / "summary.json").read_text())
    assert s["modes"]["lite"]["datasets"]["vsi"]["recorded"] == 20  # what is recorded so far
    # the paired numbers, recounted from the records
    for m in ("vreason", "lite"):
        keys = [(n, i) for n, i, mm in recs if mm == "baseline" and (n, i, m) in recs]
        for ds in ("mc", "vsi"):
            acc = [(recs[n, i, "baseline"], recs[n, i, m]) for n, i in keys if n == ds and recs[n, i, "baseline"]["problem_type"] == MC]
            c = s["paired"]["modes"][m]["columns"][ds]
            flips = [sum(b["correct"] and not x["correct"] for b, x in acc), sum(not b["correct"] and x["correct"] for b, x in acc)]
            assert c["pairs"] == len(acc) and c["flips"] == flips and c["p"] == report.mcnemar(*flips)
            assert c["delta"] == pytest.approx(100 * np.mean([x["score"] - b["score"] for b, x in acc]))
            assert c["ci"][0] <= c["delta"] <= c["ci"][1]
        t = s["paired"]["modes"][m]["tokens"]["all"]
        assert 0 < t["ci"][0] < t["reduction"] < t["ci"][1] < 50  # the synthetic modes are 20-25% shorter
    assert s["paired"]["modes"]["vreason"]["columns"]["mc"]["pairs"] == 40  # the error counts 0, as in the table


def test_report_stats_without_matplotlib(tmp_path, capsys, monkeypatch):
    """Also: a finished run's records.jsonl alone is read, and the report's statistics are those the run wrote (the
    run knows entries not recorded yet and lists them in file order: neither changes a number)."""
    d = tmp_path / "run"
    recs = synthetic_run(d, n_mc=8, n_vsi=6)
    for f in d.iterdir():
        f.unlink()
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs.values()))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    cap = run_report(d, capsys)
    assert "the figures need matplotlib (pip install matplotlib)" in cap.err and not (d / "figures").exists()
    assert "## Against the baseline, paired" in (d / "summary.md").read_text() and "![" not in (d / "summary.md").read_text()
    as_run = [(n, [{"id": str(i), "problem_type": r["problem_type"]} for i in reversed(range(12))
                   for r in [recs.get((n, str(i), "baseline"), {"problem_type": MC})]]) for n in ("vsi", "mc")]
    assert json.loads(json.dumps(report.paired(as_run, R.MODES, recs))) == json.loads((d / "summary.json").read_text())["paired"]


# Rank files gathered from two runs: the records' checkpoints (directory, fingerprint) of rank 0 and rank 1
TWO_CHECKPOINTS = {"another fingerprint": (("/m/a", "aaaa"), ("/m/a", "bbbb")),
                   "another directory": (("/m/a", "aaaa"), ("/m/b", "aaaa"))}


@pytest.mark.parametrize("case", TWO_CHECKPOINTS)
def test_report_refuses_two_checkpoints(case, tmp_path, capsys):
    """One table over them would pool two checkpoints' numbers in one row (and name one model): refused, naming
    both. The same checkpoint in both files is one run."""
    d = tmp_path / "run"
    recs = synthetic_run(d, n_mc=4, n_vsi=2)
    for r in recs.values():
        r["settings"].update(zip(("model_dir", "model_fingerprint"), TWO_CHECKPOINTS[case][0]))
    write_ranks(d, recs)
    assert E.main(["--report", str(d)]) == 0
    capsys.readouterr()
    for r in recs.values():
        if int(r["id"]) % 2:  # rank 1's
            r["settings"].update(zip(("model_dir", "model_fingerprint"), TWO_CHECKPOINTS[case][1]))
    write_ranks(d, recs)
    assert E.main(["--report", str(d)]) == 2
    (a, fa), (b, fb) = TWO_CHECKPOINTS[case]
    assert capsys.readouterr().err == (f"eval: error: --report: {d} holds records of 2 checkpoints: {a} (fingerprint {fa}, "
                                       f"9 records) and {b} (fingerprint {fb}, 9 records); report each from a directory "
                                       f"of its own\n")


@pytest.mark.parametrize("case", ["missing", "empty", "file", "only junk", "extra flag"])
def test_report_bad_run_dir(case, tmp_path, capsys):
    d = tmp_path / "run"
    if case == "empty":
        d.mkdir()
    elif case == "file":
        d.write_text("x")
    elif case == "only junk":
        d.mkdir()
        (d / "records.rank0.jsonl").write_text('{"dataset": "a", "id"\n')
    argv = ["--report", str(d)] + (["--modes", "lite"] if case == "extra flag" else [])
    assert E.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and err[-1].startswith("eval: error:") and "Traceback" not in "".join(err), err
    assert ("is not a directory" if case in ("missing", "file") else "unrecognized" if case == "extra flag" else "no records") in err[-1]
