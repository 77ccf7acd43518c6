"""eval.py: prompt bytes and scoring (METHOD.md §8), a synthetic benchmark end to end with known predictions, resume after a
crash and a torn line, bad input, and a 2-process torchrun (gloo) run that must equal the 1-process one."""
import errno
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from clips import write_clip
from conftest import IM_END, ROOT
from test_cli import _main_or_hang, model_dir  # noqa: F401  (model_dir: fixture, tiny checkpoint + real tokenizer)

import cli as C
import eval as E
import qwen25vl
import report
import videor1 as VR1
import video as V
import vreason as R

VIDEO = ["--min-pixels", "3136", "--max-pixels", "12544"]  # tiny frames keep the real-model runs fast
MC, NUM, REG = "multiple choice", "numerical", "regression"
INSTR = ("Please think about this question as if you were a human pondering deeply. Engage in an internal dialogue using "
         "expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other natural "
         "language thought expressions It's encouraged to include self-reflection or verification in the reasoning process. "
         "Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer between "
         "the <answer> and </answer> tags.")


def test_prompt_bytes():
    """The user text of Video-R1's eval_bench.py: QUESTION_TEMPLATE.format(Question=q) + TYPE_TEMPLATE[type]."""
    tags = " within the <answer> </answer> tags."
    mc = {"problem": "Which way does it go? ", "problem_type": MC, "options": ["A. left", "B. right"]}
    assert VR1.question(mc) == ("Which way does it go? Options:\nA. left\nB. right\n\n" + INSTR +
                              " Please provide only the single option letter (e.g., A, B, C, D, etc.)" + tags)
    num = " Please provide the numerical value (e.g., 42 or 3.14)" + tags
    assert VR1.question({"problem": "How many?", "problem_type": NUM}) == "How many?\n" + INSTR + num
    assert VR1.question({"problem": "How far?", "problem_type": REG}) == "How far?\n" + INSTR + num
    assert VR1.question({"problem": "Read it.", "problem_type": "OCR"}) == ("Read it.\n" + INSTR + " Please transcribe text from "
                                                                         "the image/video clearly and provide your text answer" + tags)
    assert VR1.question({"problem": "Why?", "problem_type": "free-form"}) == "Why?\n" + INSTR + " Please provide your text answer" + tags
    assert INSTR.count(".") == 3 and "expressions It's" in VR1.INSTRUCTION  # the missing full stop is kept


def test_answer_extraction_and_scoring():
    a = VR1.answer_of
    assert a("<think>hmm</think><answer> B </answer>") == "B"
    assert a("<answer>\nC.\n</answer> then <answer>D</answer>") == "C."  # the first tag pair, stripped
    assert a("  The answer is B \n") == "The answer is B"  # no tags: the whole output
    assert a("<answer> </answer> B") == "<answer> </answer> B"  # empty tags count as none (Video-R1)
    assert a("<answer>B") == "<answer>B"  # unclosed
    s = VR1.score
    assert [s(MC, p, "B") for p in ("B", " B\n", "B.", "(B)", "b", "B. right", "The answer is B")] == [1, 1, 0, 0, 0, 0, 0]
    assert s(MC, a("no tags, just B"), "B") == 0 and s(MC, a("B"), "B") == 1
    assert s(NUM, "3.14", "3.140") == s(NUM, "3.140", "3.14") == s(NUM, "1,000.5", "1000.50") == s(NUM, "-2", "-2") == 1
    assert s(NUM, "3", "3.0") == s(NUM, "1,000", "1000") == 0  # Video-R1: a decimal point in one only is wrong
    assert s(NUM, "3.15", "3.14") == s(NUM, "three", "3") == s(NUM, "", "3") == 0
    assert s(NUM, "0.004", "0.0") == 1 and s(NUM, "0.006", "0.0") == 0  # round to 2 decimals
    mra = VR1.mra
    assert mra(10, 10) == 1.0 and mra(15, 10) == 0.0  # rel. error 0.5 is not < 1 - 0.50
    assert mra(14, 10) == pytest.approx(0.2)  # 0.4 < 1 - theta for theta = 0.50, 0.55 only
    assert mra(-9.2, -10) == pytest.approx(0.9) and mra(9.2, -10) == 0.0  # negative ground truth: |gt|
    assert mra(0, 0) == 1.0 and mra(0.001, 0) == mra(-3, 0) == 0.0  # zero ground truth
    assert s(REG, "14", "10") == pytest.approx(0.2) and s(REG, "about 14", "10") == 0 and s(REG, "14", "ten") == 0
    assert s("OCR", " Hello   World ", "hello world") == 1 and s("OCR", "hello world!", "hello world") == 0
    assert s("free-form", "The cat sat.", "the cat sat") == 1 and s("free-form", "dog", "cat") == 0
    assert s("free-form", "cat", "the cat sat") == pytest.approx(0.5)  # P 1, R 1/3
    assert s("free-form", "a b c d", "a x c d") == pytest.approx(0.75)  # LCS 3 of 4
    assert s("free-form", "", "x") == 0 and s("free-form", "...", "!!") == 0  # never 1 for two different texts


# ----------------------------------------------------------------------------- a synthetic benchmark, predictions known

def entry(pid, problem, answer, ptype, path, **kw):
    return dict(problem_id=pid, problem=problem, solution=f"<answer>{answer}</answer>", problem_type=ptype, path=path,
                data_type="video", **kw)


# Two datasets; ANSWERS[marker][mode] is what the fake model writes for the entry whose problem holds [marker].
ENTRIES = {
    "eval_mc.jsonl": [entry(1, "[q1] Which way? ", "A", MC, "c0.mp4", options=["A. left", "B. right"]),
                      entry(2, "[q2] Which colour? ", "B", MC, "c1.mp4", options=["A. red", "B. blue"]),
                      entry(3, "[q3] How many?", "3.5", NUM, "c2.mp4"),
                      entry(4, "[q4] Lost?", "A", MC, "gone.mp4", options=["A. x", "B. y"])],
    "eval_vsi.json": [entry("v1", "[q5] Nearest? ", "C", MC, "c0.mp4", options=["A. a", "B. b", "C. c"], data_source="scannet"),
                      entry("v2", "[q6] Room size?", "20", REG, "c1.mp4"),
                      entry("v3", "[q7] Distance?", "-10", REG, "c2.mp4")],
}
ANSWERS = {"q1": {"baseline": "<answer>A</answer>", "vreason": "<answer>A</answer>", "lite": "<answer>B</answer>"},
           "q2": {"baseline": "<think>hmm</think><answer>A</answer>", "vreason": "<answer>B</answer>", "lite": "B"},
           "q3": {"baseline": "<answer>3.50</answer>", "vreason": "<answer>3</answer>", "lite": "<answer>3.5</answer>"},
           "q4": dict.fromkeys(("baseline", "vreason", "lite"), "<answer>A</answer>"),  # once its video exists
           "q5": {"baseline": "<answer>C</answer>", "vreason": "<answer>C</answer>", "lite": "<answer>C.</answer>"},
           "q6": {"baseline": "<answer>30</answer>", "vreason": "<answer>20</answer>", "lite": "<answer>23.3</answer>"},
           "q7": {"baseline": "<answer>-9.2</answer>", "vreason": "<answer>-10</answer>", "lite": "ten"}}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    for i in range(3):
        write_clip(d / f"c{i}.mp4", n_frames=12, width=64, height=48, fps=4, seed=i)
    (d / "eval_mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ENTRIES["eval_mc.jsonl"]))
    (d / "eval_vsi.json").write_text(json.dumps(ENTRIES["eval_vsi.json"], indent=1))
    return d


def args(bench, out, *extra):
    return ["--data", str(bench / "eval_mc.jsonl"), str(bench / "eval_vsi.json"), "--video-root", str(bench),
            "--out", str(out), *VIDEO, *extra]


@pytest.fixture
def fake(monkeypatch, model_dir):
    """R.generate replaced by a model that writes ANSWERS for the question it is shown; counts calls, can crash."""
    tok = V.load_tokenizer(model_dir, qwen25vl.FAMILY)
    calls = {"generate": [], "prepare": 0, "crash_at": None}
    prepare = R.prepare

    def counting_prepare(*a, **k):
        calls["prepare"] += 1
        return prepare(*a, **k)

    def generate(model, prep, s, stop_ids, info):
        prompt = tok.decode(prep.ids.tolist(), skip_special_tokens=False)
        q = re.search(r"\[(q\d)\]", prompt).group(1)
        calls["generate"].append((q, s.mode, prompt, prep.ids.tolist(), s))
        if len(calls["generate"]) == calls["crash_at"]:
            raise KeyboardInterrupt  # Ctrl-C (or a crash) in the middle of the run
        info.update(prefill_s=0.01, video_tokens=5, video_tokens_kept=5, updates=0)
        for i, t in enumerate(tok.encode(ANSWERS[q][s.mode], add_special_tokens=False).ids + [IM_END]):
            yield R.Step(t, 0.25 * i, 0.1 * i + 1e-4, 0.1 * i, 1.0 if i < 2 else -1.0, updated=s.mode != "baseline" and i % 2 == 0)

    monkeypatch.setattr(R, "prepare", counting_prepare)
    monkeypatch.setattr(R, "generate", generate)
    calls["tok"] = tok
    return calls


def records(out):
    return [json.loads(line) for line in open(out / "records.jsonl")]


def test_end_to_end_known_predictions(bench, model_dir, fake, tmp_path, capsys):
    out = tmp_path / "out"
    assert E.main(args(bench, out, "--model", model_dir, "--update-every", "3", "--beta", "0.8")) == 0
    cap = capsys.readouterr()
    assert "ETA" in cap.err and "mc/4 (baseline, vreason, lite): video not found" in cap.err
    # each video decoded and encoded once, every mode run on it; the missing one never reaches the model
    assert fake["prepare"] == 6 and len(fake["generate"]) == 18
    for q, mode, prompt, ids, s in fake["generate"]:
        item = next(x for xs in ENTRIES.values() for x in xs if x["problem"].startswith(f"[{q}]"))
        assert f"<|vision_end|>{VR1.question(item)}<|im_end|>" in prompt
        assert ids == qwen25vl.prompt_ids(fake["tok"], VR1.question(item), ids.count(151656))
        assert (s.update_every, s.beta, s.prune_ratio, s.max_new_tokens) == (3, 0.8, 0.5 if mode == "lite" else 0.0, 1024)
    recs = records(out)
    order = [(f[5:].split(".")[0], str(x["problem_id"]), m) for f in ENTRIES for x in ENTRIES[f] for m in R.MODES]
    assert [(r["dataset"], r["id"], r["mode"]) for r in recs] == order  # merged in dataset order, modes in --modes order
    by = {(r["id"], r["mode"]): r for r in recs}
    assert by["2", "lite"]["prediction"] == "B" and by["2", "lite"]["correct"]  # no tags: the whole output
    assert by["3", "baseline"]["score"] == 1 and by["3", "vreason"]["score"] == 0
    assert by["v3", "baseline"]["score"] == pytest.approx(0.9) and by["v1", "lite"]["score"] == 0
    assert by["4", "vreason"]["error"].startswith("video not found") and by["4", "vreason"]["score"] == 0
    assert by["v1", "baseline"]["data_source"] == "scannet" and by["v1", "baseline"]["answer"] == "C"
    r = by["1", "lite"]
    assert r["output_tokens"] == len(fake["tok"].encode("<answer>B</answer>", add_special_tokens=False).ids) + 1
    assert r["settings"]["max_frames"] == 16 and r["settings"]["max_pixels"] == 12544 and r["settings"]["prune_ratio"] == 0.5
    for k in ("prefill_s", "decode_s", "latency_s", "peak_memory_bytes", "video_tokens", "output"):
        assert k in r
    # the per-token trace, one compact string per list; the baseline computes alpha too but never updates
    n = r["output_tokens"]
    ema = " ".join(f"{0.1 * i:.3f}".rstrip("0").rstrip(".") for i in range(n))  # 3 decimals, no trailing zeros
    assert r["trace"] == {"entropy": " ".join(f"{0.25 * i:g}" for i in range(n)), "ema": ema, "alpha": "++" + "-" * (n - 2),
                          "updated_at": " ".join(map(str, range(0, n, 2)))}
    t = report.read_trace(r)
    assert t["entropy"].tolist() == [0.25 * i for i in range(n)] and t["explore"].tolist() == [True, True] + [False] * (n - 2)
    assert t["updated_at"].tolist() == list(range(0, n, 2)) and len(t["ema"]) == n
    assert by["1", "baseline"]["trace"]["updated_at"] == "" and "trace" not in by["4", "lite"]  # errors have none
    # summary: the errored entry counts 0 (as in Video-R1); MRA only over regression entries
    summ = json.loads((out / "summary.json").read_text())
    assert summ["columns"] == ["mc", "vsi", "vsi MRA"]
    want = {"baseline": (50, 100, (0.0 + 0.9) / 2), "vreason": (50, 100, 1.0), "lite": (50, 0, (0.7 + 0.0) / 2)}
    for m, (mc, vsi, vmra) in want.items():
        got = summ["modes"][m]
        assert got["metrics"] == pytest.approx({"mc": mc, "vsi": vsi, "vsi MRA": 100 * vmra})
        assert got["mean"] == pytest.approx((mc + vsi) / 2) and got["mean+MRA"] == pytest.approx((mc + vsi + 100 * vmra) / 3)
        assert got["datasets"]["mc"]["errors"] == 1 and got["datasets"]["mc"]["recorded"] == 4
    assert summ["modes"]["baseline"]["datasets"]["vsi"]["mra"] == pytest.approx(45.0)  # (mra(30, 20) = 0 + 0.9) / 2
    md = (out / "summary.md").read_text()
    assert md.splitlines()[0] == "| mode | mc | vsi | vsi MRA | mean | mean+MRA | tokens | latency s | peak GiB |"
    assert md.splitlines()[3].startswith("| vreason | 50.0 | 100.0 | 100.0 | 75.0 | 83.3 |") and md in cap.out
    # a rerun does nothing new, also over records an older eval.py wrote without traces (outputs, not settings)
    rank0 = out / "records.rank0.jsonl"
    lines = rank0.read_text().splitlines()
    rank0.write_text("".join((json.dumps({k: v for k, v in json.loads(x).items() if k != "trace"}) if i < 5 else x) + "\n"
                             for i, x in enumerate(lines)))
    fake["generate"].clear()
    assert E.main(args(bench, out, "--model", model_dir, "--update-every", "3", "--beta", "0.8")) == 0
    assert fake["generate"] == [] and "eval: 5 records in" in capsys.readouterr().err
    assert sum("trace" not in r for r in records(out)) == 5 + 3  # + the 3 errors
    # --retry-errors reruns the error once its video exists
    (bench / "gone.mp4").write_bytes((bench / "c0.mp4").read_bytes())
    try:
        assert E.main(args(bench, out, "--model", model_dir, "--update-every", "3", "--beta", "0.8", "--retry-errors")) == 0
    finally:
        os.remove(bench / "gone.mp4")
    assert sorted(m for q, m, *_ in fake["generate"]) == sorted(R.MODES) and {q for q, *_ in fake["generate"]} == {"q4"}
    assert {r["mode"]: r["error"] for r in records(out) if r["id"] == "4"} == {m: None for m in R.MODES}


def test_resume_after_crash_and_torn_line(bench, model_dir, fake, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert E.main(args(bench, ref, "--model", model_dir)) == 0
    fake["generate"].clear()
    fake["crash_at"] = 5  # Ctrl-C during the 2nd mode of the 2nd entry
    assert E.main(args(bench, out, "--model", model_dir)) == 130
    rank0 = out / "records.rank0.jsonl"
    assert len(rank0.read_text().splitlines()) == 4 and not (out / "records.jsonl").exists()
    with open(rank0, "a") as f:  # a crash in the middle of a write leaves a torn last line
        f.write('{"dataset": "mc", "id": "2", "mode": "vreason", "predic')
    assert E.main(["--report", str(out)]) == 0  # the report of a run in progress: what is recorded so far
    summ = json.loads((out / "summary.json").read_text())
    assert summ["modes"]["baseline"]["datasets"]["mc"]["recorded"] == 2  # mc/1 in every mode, mc/2 in the baseline only
    assert summ["paired"]["modes"]["vreason"]["columns"]["mc"]["pairs"] == 1
    assert (out / "figures" / "entropy.png").stat().st_size > 10_000
    fake["generate"].clear()
    fake["crash_at"] = None
    assert E.main(args(bench, out, "--model", model_dir)) == 0
    assert len(fake["generate"]) == 18 - 4  # only what was missing
    lines = rank0.read_text().split("\n")
    assert lines[4].endswith('"predic') and json.loads(lines[5])["dataset"]  # the torn line ended, the next record whole
    key = lambda r: (r["dataset"], r["id"], r["mode"], r["prediction"], r["score"], r.get("output_tokens"), r["error"])
    assert [key(r) for r in records(out)] == [key(r) for r in records(ref)]
    assert len(records(out)) == 21


def test_resume_skips_lines_that_are_not_records(bench, model_dir, fake, tmp_path, capsys):
    """A records line another tool or a hand wrote (here: only dataset, id and mode; a number where a string goes)
    is skipped and counted, in a resume and in --report: never a traceback, the file left as it was, and its (entry,
    mode) run again."""
    out = tmp_path / "out"
    assert E.main(args(bench, out, "--model", model_dir, "--limit", "1")) == 0
    rank0 = out / "records.rank0.jsonl"
    good = rank0.read_text()
    bad = ['{"dataset": "mc", "id": "1", "mode": "lite"}', '{"dataset": "mc", "id": 1, "mode": "lite", "error": null}']
    rank0.write_text("".join(line for line in good.splitlines(True) if '"lite"' not in line) + "\n".join(bad) + "\n")
    capsys.readouterr()
    assert E.main(["--report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"eval: 2 line(s) of the records are not records of this eval.py and were skipped (first: {rank0} line 5: " \
           f"'problem_type' is missing or not a str)" in err and "Traceback" not in err
    fake["generate"].clear()
    assert E.main(args(bench, out, "--model", model_dir, "--limit", "1")) == 0
    assert [(q, m) for q, m, *_ in fake["generate"]] == [("q1", "lite"), ("q5", "lite")]
    assert rank0.read_text().splitlines()[4:6] == bad  # kept as they were
    assert {(r["dataset"], r["mode"]) for r in records(out)} == {(d, m) for d in ("mc", "vsi") for m in R.MODES}


# A records file that is no file to read, in a resume and in --report: (break it, what the one line says it is)
BAD_RECORD_FILES = {
    "a directory": (os.mkdir, "Is a directory"),
    "a FIFO": (os.mkfifo, "not a regular file"),
    "unreadable": (lambda p: os.symlink("/proc/self/mem", p), "Input/output error"),  # (a file root cannot read either)
}


@pytest.mark.parametrize("when", ["resume", "report"])
@pytest.mark.parametrize("case", BAD_RECORD_FILES)
def test_a_records_file_that_cannot_be_read(case, when, bench, model_dir, fake, tmp_path, capsys):
    out = tmp_path / "out"
    run = args(bench, out, "--model", model_dir, "--limit", "1", "--modes", "baseline")
    assert E.main(run) == 0
    breaker, why = BAD_RECORD_FILES[case]
    breaker(str(out / "records.rank1.jsonl"))  # (another rank's: this rank's own is the one it appends to)
    fake["generate"].clear()
    capsys.readouterr()
    fifo = out / "records.rank1.jsonl"
    assert _main_or_hang(run if when == "resume" else ["--report", str(out)], lambda: open(fifo, "w").close(), main=E.main) == 2
    err = capsys.readouterr().err
    assert err == f"eval: error: cannot read {out / 'records.rank1.jsonl'}: {why}\n" and fake["generate"] == []


def test_resume_refuses_other_settings(bench, model_dir, fake, tmp_path, capsys):
    out = tmp_path / "out"
    assert E.main(args(bench, out, "--model", model_dir, "--modes", "baseline", "--limit", "1")) == 0
    capsys.readouterr()
    assert E.main(args(bench, out, "--model", model_dir, "--modes", "baseline", "--max-new-tokens", "7")) == 2
    assert "max_new_tokens=1024, now 7" in capsys.readouterr().err


def _bad_data(tmp_path, capsys, name, text):
    (tmp_path / name).write_text(text)
    assert E.main(["--data", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("eval: error:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    return err


def test_malformed_dataset(tmp_path, capsys):
    good = json.dumps(ENTRIES["eval_mc.jsonl"][0])
    assert "line 3: invalid JSON" in _bad_data(tmp_path, capsys, "a.jsonl", f"{good}\n\n{good[:-5]}\n{good}\n")
    bad = dict(ENTRIES["eval_mc.jsonl"][1], problem_type="essay")
    assert "line 2: problem_type 'essay'" in _bad_data(tmp_path, capsys, "b.jsonl", f"{good}\n{json.dumps(bad)}\n")
    assert "line 2: duplicate problem_id 1 (first at line 1)" in _bad_data(tmp_path, capsys, "c.jsonl", f"{good}\n{good}\n")
    no_opts = {k: v for k, v in ENTRIES["eval_mc.jsonl"][0].items() if k != "options"}
    err = _bad_data(tmp_path, capsys, "d.json", json.dumps([json.loads(good), no_opts]))
    assert "item 2: a multiple-choice entry needs 'options'" in err
    assert "line 3: invalid JSON" in _bad_data(tmp_path, capsys, "e.json", "[\n" + good + ",\n}")
    for i, sol in enumerate(["B", "<answer> \n</answer>", "<answer>B", "B</answer>"]):  # Video-R1 would compare with ""
        bad = json.dumps(dict(ENTRIES["eval_mc.jsonl"][1], solution=sol))
        err = _bad_data(tmp_path, capsys, f"f{i}.jsonl", f"{good}\n{bad}\n")
        assert "line 2: 'solution' has no <answer>...</answer> with text in it" in err
    assert E.main(["--data", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("flags,words", [(["--mode", "lite"], "--mode"), (["--video", "x.mp4"], "--video"),
                                         (["--modes", "baseline,magic"], "--modes"), (["--temperature", "-1"], "--temperature"),
                                         (["--bogus", "1"], "unrecognized"), (["--compare"], "--compare")])
def test_bad_flags(flags, words, bench, tmp_path, capsys):
    assert E.main(args(bench, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


# ----------------------------------------------------------------------------- torchrun: 2 processes == 1 process

def test_two_process_gloo_run_equals_one_process(bench, model_dir, tmp_path):
    """Real tiny model. A 1-process baseline-only run, then a 2-process run of all modes resuming it (so it must
    shard only the missing (entry, mode) pairs), must give the records of one uninterrupted 1-process run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default; the same thread count keeps the floats equal
    flags = ["--model", model_dir, "--max-new-tokens", "4", "--limit", "3"]
    both = tmp_path / "both"
    run = lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    r = run([sys.executable, os.path.join(ROOT, "eval.py"), *args(bench, both, *flags, "--modes", "baseline")])
    assert r.returncode == 0, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
             "--master-port", str(port), os.path.join(ROOT, "eval.py"), *args(bench, both, *flags)])
    assert r.returncode == 0, r.stderr
    assert "12 (entry, mode) runs to do, in 6 entries, on 2 process(es)" in r.stderr
    rank0, rank1 = ([json.loads(x) for x in open(both / f"records.rank{i}.jsonl")] for i in (0, 1))
    assert {x["mode"] for x in rank1} == {"vreason", "lite"}  # the baseline was not redone
    keys = [(x["dataset"], x["id"], x["mode"]) for x in rank0 + rank1]
    assert len(keys) == len(set(keys)) == 18 and len(rank1) == 6  # each missing pair run once, by one rank, half each
    one = tmp_path / "one"
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert E.main(args(bench, one, *flags)) == 0
    finally:
        torch.set_num_threads(torch_threads)
    key = lambda r: (r["dataset"], r["id"], r["mode"], r["output"], r["prediction"], r["score"], r["output_tokens"],
                     r["video_tokens_kept"])
    assert [key(r) for r in records(both)] == [key(r) for r in records(one)]
    last = records(one)[-2:]  # vsi/v3 vreason, lite
    assert len(records(one)) == 18 and last[1]["video_tokens_kept"] < last[0]["video_tokens_kept"]  # Lite pruned
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, both))
    assert s1["columns"] == s2["columns"]
    for m in R.MODES:
        assert s1["modes"][m]["metrics"] == s2["modes"][m]["metrics"]
        assert s1["modes"][m]["output_tokens"] == s2["modes"][m]["output_tokens"]


# ----------------------------------------------------------------------------- --batch-size: the records of batch 1

def test_a_batched_run_gives_the_records_of_batch_1(bench, model_dir, tmp_path, capsys):
    """Real tiny model, every mode, 5 new tokens, the first 4 entries of each file (mc/4's video is missing). At
    --batch-size 4 (refills, a failing video among them) each record is its batch-1 record but for the timings and the
    batch size: outputs, scores, tokens kept, updates, the switching rule's trace (entropies to the trace's 3
    decimals); and a run resumed at another batch size (baseline at 1, then the rest at 3) gives them too."""
    flags = ["--model", model_dir, "--max-new-tokens", "5", "--limit", "4"]
    one, four, mixed = tmp_path / "one", tmp_path / "four", tmp_path / "mixed"
    assert E.main(args(bench, one, *flags)) == 0
    assert E.main(args(bench, four, *flags, "--batch-size", "4")) == 0
    err = capsys.readouterr().err
    assert "mc/4 (baseline, vreason, lite): video not found" in err and "runs in " in err and "at batch size 4, " in err
    assert E.main(args(bench, mixed, *flags, "--modes", "baseline")) == 0
    assert E.main(args(bench, mixed, *flags, "--batch-size", "3")) == 0
    key = lambda r: (r["dataset"], r["id"], r["mode"], r.get("output"), r["prediction"], r["score"], r.get("output_tokens"),
                     r.get("video_tokens_kept"), r.get("updates"), r["error"], r["settings"],
                     r.get("trace", {}).get("alpha"), r.get("trace", {}).get("updated_at"))
    entropies = lambda r: [float(x) for x in r.get("trace", {}).get("entropy", "").split()]
    ref = records(one)
    assert len(ref) == 21 and sum(r["error"] is not None for r in ref) == 3
    for run, sizes in ((four, [4]), (mixed, [1, 3])):
        got = records(run)
        assert [key(r) for r in got] == [key(r) for r in ref]
        assert all(a == pytest.approx(b, abs=1.5e-3) for r, q in zip(got, ref) for a, b in zip(entropies(r), entropies(q)))
        assert sorted({r["batch_size"] for r in got}) == sizes
        assert json.loads((run / "summary.json").read_text())["settings"]["batch_size"] == (sizes[0] if len(sizes) == 1 else sizes)
    assert any(r["updates"] for r in ref) and all(r["latency_s"] > r["prefill_s"] > 0 for r in records(four) if not r["error"])


def test_the_loader_prepares_entries_ahead_on_a_thread_of_its_own():
    """eval.Prefetch (--batch-size > 1): entries come in order, each prepared (read, encoded) by a thread that is not
    the decoding's, no more than eval.held() ahead of it (what the memory check counts); an error that is not a
    video's stops the run on the decoding's thread, after the entries before it; `waited` is the decoding's wait."""
    import threading
    import time

    made = []

    def load(item):
        made.append((item, threading.get_ident()))
        time.sleep(0.2 if item == 0 else 0.0)
        if item == 9:
            raise RuntimeError("the encoder failed")
        return f"why {item}", 0.0  # (a string: an entry that could not be prepared)

    entries = E.Prefetch([(i, ["baseline"]) for i in range(12)], load, torch.device("cpu"))
    got = iter(entries)
    assert next(got) == (0, ["baseline"], ("why 0", 0.0)) and entries.waited >= 0.2
    time.sleep(0.3)  # the loader runs ahead until its queue is full
    assert [i for i, _ in made] == list(range(E.held(2)))  # 0 taken, AHEAD queued, one waiting to enter the queue
    rest = []
    with pytest.raises(RuntimeError, match="the encoder failed"):
        for item, *_ in got:
            rest.append(item)
    assert rest == list(range(1, 9)) and all(t != threading.get_ident() for _, t in made)
    made.clear()  # a decoding that stops early (an error of its own) stops the loader too
    entries = E.Prefetch([(i, ["baseline"]) for i in range(10, 100)], load, torch.device("cpu"))
    for _ in entries:
        break
    entries.thread.join(timeout=10)
    assert not entries.thread.is_alive() and len(made) <= E.held(2) + 1


# ----------------------------------------------------------------------------- --out, its lock, video paths, failed writes

def _refused(argv, capsys, message):
    """Exit 2 with exactly `message` (or its prefix, before "...") as the one line on stderr."""
    assert E.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"eval: error: {message[:-3]}") if message.endswith("...") else err == f"eval: error: {message}\n"


def test_out_must_be_a_writable_directory(bench, tmp_path, capsys):
    (tmp_path / "a file").write_text("x")
    _refused(args(bench, tmp_path / "a file"), capsys, f"--out {tmp_path / 'a file'} is not a directory")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    out = ro / "out" if not os.access(ro, os.W_OK) else "/sys/out"  # root ignores mode bits: /sys is read-only to it too
    _refused(args(bench, out), capsys, f"cannot write in --out {out}: ...")
    assert not os.path.exists(out) and (tmp_path / "a file").read_text() == "x"


def test_a_second_run_on_one_out_is_refused(bench, model_dir, fake, tmp_path, capsys):
    """Another process holds the lock: refused, naming it. Once it is gone (killed: the kernel drops its flock), its
    lock is taken over; the lock file then names this run."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'eval.py pid 4242 on elsewhere since 2026-01-01 "
                               "00:00:00'); print('locked', flush=True); sys.stdin.read()", str(out / "eval.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        _refused(args(bench, out, "--model", model_dir), capsys, f"--out {out} is in use by eval.py pid 4242 on elsewhere "
                 f"since 2026-01-01 00:00:00: wait for it to end, or use another --out")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert fake["generate"] == [] and sorted(os.listdir(out)) == ["eval.lock"]
    assert E.main(args(bench, out, "--model", model_dir, "--limit", "1")) == 0
    capsys.readouterr()
    assert (out / "eval.lock").read_text().startswith(f"eval.py pid {os.getpid()} on {socket.gethostname()} since ")
    fd = E.open_out(str(out), lock=True)  # and this run's own lock, while held, refuses the next one
    try:
        _refused(args(bench, out, "--model", model_dir), capsys, f"--out {out} is in use by eval.py pid {os.getpid()} ...")
    finally:
        os.close(fd)


# A dataset entry whose text the tokenizer or a record cannot take is that entry's problem, at load time, with its
# place: entry fields over the good entry -> the line after "eval: error: <file>: line 1: ".
BAD_TEXT_ENTRIES = {
    "an image block in the problem": ({"problem": "Is <|vision_start|><|image_pad|><|vision_end|> red?"},
                                      "its question holds <|vision_start|>, a vision token, which only the prompt itself "
                                      "places"),
    "a vision end in an option": ({"options": ["A. <|vision_end|>", "B. y"]},
                                  "its question holds <|vision_end|>, a vision token, which only the prompt itself places"),
    "a video pad in the problem": ({"problem": "<|video_pad|>"},
                                   "its question holds <|video_pad|>, a vision token, which only the prompt itself places"),
    "half a character in the problem": ({"problem": "caf\udce9"},
                                        "it holds a lone surrogate (a \\u escape of half a character), not text"),
    "half a character in the id": ({"problem_id": "\ud83d"},
                                   "it holds a lone surrogate (a \\u escape of half a character), not text"),
}


@pytest.mark.parametrize("case", BAD_TEXT_ENTRIES)
def test_dataset_text_the_prompt_cannot_take(case, tmp_path, capsys):
    fields, message = BAD_TEXT_ENTRIES[case]
    line = json.dumps({**ENTRIES["eval_mc.jsonl"][0], **fields})  # (ensure_ascii: a surrogate goes in as \udce9)
    assert _bad_data(tmp_path, capsys, "x.jsonl", line + "\n") == f"eval: error: {tmp_path / 'x.jsonl'}: line 1: {message}"


def _pipe(text):  # --data through a pipe, as the shell passes <(cat x.jsonl): /dev/fd/N, a name without a suffix
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    return f"/dev/fd/{r}"


def _file(t, name, text):
    (t / name).write_text(text)
    return str(t / name)


# --data's format is its content's: a JSON list opens with "[", anything else is JSON lines, whatever the name
DATA_FORMATS = {
    "JSON lines through a pipe": lambda t, rows: _pipe("".join(json.dumps(x) + "\n" for x in rows)),
    "a JSON list through a pipe": lambda t, rows: _pipe(json.dumps(rows, indent=1)),
    "JSON lines named .json": lambda t, rows: _file(t, "eval_x.json", "".join(json.dumps(x) + "\n" for x in rows)),
    "a JSON list named .jsonl": lambda t, rows: _file(t, "eval_x.jsonl", " \n" + json.dumps(rows)),
}


@pytest.mark.parametrize("case", DATA_FORMATS)
def test_data_format_is_read_from_the_content(case, bench, model_dir, fake, tmp_path, capsys):
    data, out = DATA_FORMATS[case](tmp_path, ENTRIES["eval_mc.jsonl"][:2]), tmp_path / "out"
    argv = ["--data", data, "--video-root", str(bench), "--out", str(out), *VIDEO, "--model", model_dir, "--modes", "baseline"]
    assert E.main(argv) == 0, capsys.readouterr().err
    name = "x" if "named" in case else os.path.basename(data)  # (a pipe's name: its fd number)
    assert [(r["dataset"], r["id"]) for r in records(out)] == [(name, "1"), (name, "2")]


@pytest.mark.parametrize("path", ["../c0.mp4", "a/../../c0.mp4", "/etc/passwd"])
def test_video_paths_stay_inside_the_video_root(path, tmp_path, capsys):
    err = _bad_data(tmp_path, capsys, "x.jsonl", json.dumps(dict(ENTRIES["eval_mc.jsonl"][2], path=path)) + "\n")
    assert err == f"eval: error: {tmp_path / 'x.jsonl'}: line 1: video path {path!r} is absolute or climbs out of --video-root"


def test_failed_writes_keep_the_records(bench, model_dir, fake, tmp_path, capsys, monkeypatch):
    """A full disk mid-run (a record append) or at the end (the summary): one line, exit 2, every record written so
    far kept, and the same command then finishes the job without redoing any."""
    out, append, write_atomic = tmp_path / "out", E.append, C.write_atomic
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_after(n):
        def f(fd, rec):
            if len(records_so_far()) >= n:
                raise enospc
            append(fd, rec)
        return f

    records_so_far = lambda: (out / "records.rank0.jsonl").read_text().splitlines()
    monkeypatch.setattr(E, "append", full_after(4))
    assert E.main(args(bench, out, "--model", model_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"eval: error: cannot append to {out}/records.rank0.jsonl (No space left on device); the records before "
                   f"it are kept: rerun the same command to resume")
    assert len(records_so_far()) == 4
    monkeypatch.setattr(E, "append", append)
    monkeypatch.setattr(C, "write_atomic", lambda path, data: (_ for _ in ()).throw(enospc) if path.endswith("summary.json")
                        else write_atomic(path, data))
    fake["generate"].clear()
    assert E.main(args(bench, out, "--model", model_dir)) == 2
    cap = capsys.readouterr()
    assert cap.err.strip().splitlines()[-1] == (f"eval: error: cannot write {out}/summary.json (No space left on device); "
                                                f"the records are kept in records.rank*.jsonl: rerun the same command to write it")
    assert len(fake["generate"]) == 18 - 4 and "| mode |" in cap.out and len(records_so_far()) == 21
    monkeypatch.setattr(C, "write_atomic", write_atomic)
    fake["generate"].clear()
    assert E.main(args(bench, out, "--model", model_dir)) == 0
    assert fake["generate"] == [] and json.loads((out / "summary.json").read_text())["columns"]


def test_memory_is_checked_before_loading(bench, model_dir, fake, tmp_path, capsys, monkeypatch):
    """Before the model loads, the weights, the KV cache of the longest prompt the flags allow (a bound: no video is
    read yet) and the margin are held against the free memory: too little stops the run with one line; with enough it
    runs, and no prompt it meets is longer than the bound."""
    import model as M

    bounds, check = [], M.check_memory
    monkeypatch.setattr(M, "check_memory", lambda *a: bounds.append(a[4]) or check(*a))
    monkeypatch.setattr(M, "free_memory", lambda dev: 1e6)
    assert E.main(args(bench, tmp_path / "out", "--model", model_dir)) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("eval: error: not enough memory on cpu: float32 weights 0.1 GB + KV cache 0.0 GB + margin 0.6 GB")
    monkeypatch.setattr(M, "free_memory", lambda dev: 1e12)
    assert E.main(args(bench, tmp_path / "out", "--model", model_dir, "--modes", "baseline")) == 0
    question = max(len(fake["tok"].encode(VR1.question(x)).ids) for xs in ENTRIES.values() for x in xs)
    assert bounds == [8 * 12544 // 28**2 + question + 64] * 2  # 16 frames (eval's default) of 12544 pixels, in pairs
    assert max(len(ids) for *_, ids, _ in fake["generate"]) <= bounds[0]


def test_the_default_batch_size_counts_the_loaders_videos(model_dir, monkeypatch):
    """--batch-size unset, on CUDA: the most of 32 .. 2 whose slots and the loader's encoded entries (eval.held) pass
    the memory check: memory that 8 slots fit alone, but not with what the loader holds, gives 4. Off CUDA: 1."""
    import model as M

    skeleton, cuda, bf16 = M.skeleton(model_dir), torch.device("cuda"), torch.bfloat16
    need = lambda n, ahead: sum(M.memory_need(skeleton, cuda, bf16, None, 20000, 64, slots=n, ahead=ahead)[cuda])
    monkeypatch.setattr(M, "free_memory", lambda dev: need(8, E.held(8)))
    assert E.default_batch_size(skeleton, cuda, bf16, None, 20000, 64) == 8
    free = need(8, E.held(8)) - 1
    assert need(8, 0) < free and need(4, E.held(4)) <= free
    monkeypatch.setattr(M, "free_memory", lambda dev: free)
    assert E.default_batch_size(skeleton, cuda, bf16, None, 20000, 64) == 4
    assert E.default_batch_size(skeleton, torch.device("cpu"), bf16, None, 20000, 64) == 1


# ----------------------------------------------------------------------------- request-wide errors, resume identity, retries

Q3_CONFIG = {  # a tiny Qwen3-VL config.json as transformers 4.57.6 writes it: enough for the checks before any weight
    "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl", "image_token_id": 151655,
    "video_token_id": 151656, "vision_start_token_id": 151652, "vision_end_token_id": 151653, "tie_word_embeddings": False,
    "text_config": {"head_dim": 32, "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128,
                    "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 2,
                    "rms_norm_eps": 1e-06, "rope_scaling": {"mrope_interleaved": True, "mrope_section": [6, 5, 5], "rope_type": "default"},
                    "rope_theta": 5000000.0, "vocab_size": 151936, "tie_word_embeddings": False},
    "vision_config": {"deepstack_visual_indexes": [0, 2], "depth": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 64,
                      "in_channels": 3, "intermediate_size": 96, "num_heads": 4, "num_position_embeddings": 64,
                      "out_hidden_size": 64, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2}}


def _q3_config_only(model_dir, tmp_path):
    d = tmp_path / "q3"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(Q3_CONFIG))
    os.link(os.path.join(model_dir, "tokenizer.json"), d / "tokenizer.json")
    return str(d)


def _short_positions(model_dir, tmp_path):  # max_position_embeddings 120: under the longest prompt the flags allow
    from test_cli import _copy, _set_config

    d = _copy(model_dir, tmp_path)
    _set_config(d, max_position_embeddings=120)
    return str(d)


def _data(bench, out):  # args() without the pixel flags
    return ["--data", str(bench / "eval_mc.jsonl"), str(bench / "eval_vsi.json"), "--out", str(out)]


REQUEST_ERRORS = {  # case: (argv of bench, model_dir, tmp_path, out; the one line after "eval: error: ")
    "Qwen3-VL max pixels under its min": (
        lambda b, m, t, o: [*_data(b, o), "--video-root", str(b), "--model", _q3_config_only(m, t), "--max-pixels", "50000"],
        "max_pixels=50000 is below min_pixels=131072 (per frame), which Qwen3-VL's reference refuses; lower min_pixels too"),
    "min pixels over eval's default max": (
        lambda b, m, t, o: [*_data(b, o), "--video-root", str(b), "--model", m, "--min-pixels", "200000"],
        "--min-pixels 200000 is above --max-pixels 100352 (eval's default for Qwen2.5-VL: 128 tokens a frame)"),
    "a video pad in the system prompt": (lambda b, m, t, o: args(b, o, "--model", m, "--system", "You see <|video_pad|>."),
                                         "argument --system: holds <|video_pad|>, a vision token, which only the prompt "
                                         "itself places"),
    "an image block in the system prompt": (
        lambda b, m, t, o: args(b, o, "--model", m, "--system", "<|vision_start|><|image_pad|><|vision_end|>"),
        "argument --system: holds <|vision_start|>, a vision token, which only the prompt itself places"),
    "a Latin-1 system prompt": (lambda b, m, t, o: args(b, o, "--model", m, "--system", os.fsdecode(b"caf\xe9")),
                                "argument --system: byte 0xe9 is not UTF-8; pass UTF-8 text (a file: by a UTF-8 name; a "
                                "symlink will do)"),
    "a Latin-1 --out name": (lambda b, m, t, o: args(b, os.path.join(str(o), os.fsdecode(b"r\xe9sults")), "--model", m),
                             "argument --out: byte 0xe9 is not UTF-8; pass UTF-8 text (a file: by a UTF-8 name; a symlink "
                             "will do)"),
    "video root missing": (lambda b, m, t, o: [*_data(b, o), "--video-root", str(t / "nope"), "--model", m],
                           "--video-root {t}/nope is not found"),
    "video root a file": (lambda b, m, t, o: [*_data(b, o), "--video-root", str(b / "c0.mp4"), "--model", m],
                          "--video-root {b}/c0.mp4 is not a directory"),
    "prompt past the positions": (  # 8 frame pairs of 16 tokens + the longest question + the template: past 120
        lambda b, m, t, o: args(b, o, "--model", _short_positions(m, t)),
        "the prompt ends at position 344, past this checkpoint's 120 positions (max_position_embeddings): fewer or "
        "smaller frames (--max-frames, --fps, --max-pixels) [a bound: the longest prompt the flags allow, 345 tokens]"),
    "answer past the positions": (
        lambda b, m, t, o: args(b, o, "--model", m, "--max-new-tokens", "32700"),
        "argument --max-new-tokens: invalid value 32700 (the prompt ends at position 344 of this checkpoint's 32768 "
        "(max_position_embeddings): at most 32424) [a bound: the longest prompt the flags allow, 345 tokens]"),
}


@pytest.mark.parametrize("case", REQUEST_ERRORS)
def test_request_errors_stop_before_the_model_and_out(case, bench, model_dir, fake, tmp_path, capsys, monkeypatch):
    """What would fail every sample is refused with one line, exit 2, before a weight is read and before --out is made
    (it used to be recorded as each sample's error, and the run ended 0 with 0%)."""
    import model as M

    monkeypatch.setattr(M, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    make, message = REQUEST_ERRORS[case]
    out = tmp_path / "out"
    _refused(make(bench, model_dir, tmp_path, out), capsys, message.format(t=tmp_path, b=bench))
    assert not out.exists() and fake["generate"] == []


def test_a_failed_start_leaves_no_new_out(bench, model_dir, fake, tmp_path, capsys, monkeypatch):
    """A bad --model, a --device-map no GPU can take, or a load that fails after --out was made: no --out is left
    behind (only its eval.lock used to be). An --out that was there before stays."""
    import model as M

    out = tmp_path / "out"
    _refused(args(bench, out, "--model", str(tmp_path / "none")), capsys, f"model directory not found: {tmp_path / 'none'}")
    assert not out.exists()
    assert E.main(args(bench, out, "--model", model_dir, "--device-map", "auto")) == 2
    assert "--device-map auto" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(M, "load_model", lambda *a, **k: (_ for _ in ()).throw(M.ModelError("a shard cannot be read")))
    for there_before in (False, True):
        if there_before:
            out.mkdir()
        assert E.main(args(bench, out, "--model", model_dir)) == 2
        assert capsys.readouterr().err.endswith("\neval: error: a shard cannot be read\n")
        assert out.exists() == there_before


# The instants of a start that is interrupted (Ctrl-C) before the first record: what to interrupt, and the call
# after which the KeyboardInterrupt comes
INTERRUPTS = {"--out just made": ("os", "makedirs"), "its lock just taken": ("fcntl", "flock"),
              "the weights loading": ("M", "load_model")}


@pytest.mark.parametrize("case", INTERRUPTS)
def test_an_interrupted_start_leaves_no_new_out(case, bench, model_dir, fake, tmp_path, capsys, monkeypatch):
    """The README's promise: a run that stops before its first record leaves no new --out, however early the Ctrl-C."""
    import fcntl

    import model as M

    module, name = INTERRUPTS[case]
    module = {"os": os, "fcntl": fcntl, "M": M}[module]
    real = getattr(module, name)

    def then_interrupted(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, name, then_interrupted)
    out = tmp_path / "out"
    assert E.main(args(bench, out, "--model", model_dir)) == 130
    assert "interrupted" in capsys.readouterr().err and not out.exists() and fake["generate"] == []


@pytest.mark.parametrize("name,text", [("eval_empty.json", "[]"), ("eval_empty.jsonl", ""), ("eval_blank.jsonl", "\n\n")])
def test_an_empty_dataset_is_refused(name, text, tmp_path, capsys):
    assert _bad_data(tmp_path, capsys, name, text) == f"eval: error: {tmp_path / name}: no entries"


def test_resume_knows_the_model_by_its_directory(bench, model_dir, fake, tmp_path, capsys, monkeypatch):
    """./m/, m and /abs/m are one run; a directory spelled m from another working directory is another, and so is
    the same directory once its checkpoint changed (config.json or a shard: the fingerprint)."""
    from test_cli import _copy, _set_config

    out, a, b = tmp_path / "out", tmp_path / "a", tmp_path / "b"
    _copy(model_dir, a.mkdir() or a), _copy(model_dir, b.mkdir() or b)
    run = lambda where, model: monkeypatch.chdir(where) or E.main(args(bench, out, "--model", model, "--modes", "baseline",
                                                                         "--limit", "1"))
    assert run(a, "m") == 0 and len(fake["generate"]) == 2
    for spelled in ("./m/", str(a / "m"), "../a/m"):
        assert run(a, spelled) == 0, capsys.readouterr().err
    assert len(fake["generate"]) == 2  # nothing redone
    capsys.readouterr()
    assert run(b, "m") == 2
    assert f"made with model_dir={str(a / 'm')!r}, now {str(b / 'm')!r}" in capsys.readouterr().err
    _set_config(a / "m", rope_theta=1e5)
    assert run(a, "m") == 2 and "made with model_fingerprint=" in capsys.readouterr().err


def test_a_run_of_an_older_eval_resumes(bench, model_dir, fake, tmp_path, capsys):
    """An older eval.py recorded the --model string, not the directory and fingerprint: the same string resumes."""
    out = tmp_path / "out"
    flags = ["--model", model_dir, "--modes", "baseline", "--limit", "1"]
    assert E.main(args(bench, out, *flags)) == 0
    f = out / "records.rank0.jsonl"
    old = [json.loads(x) for x in f.read_text().splitlines()]
    for r in old:
        r["settings"] = {**{k: v for k, v in r["settings"].items() if k not in ("model_dir", "model_fingerprint")}, "model": model_dir}
    f.write_text("".join(json.dumps(r) + "\n" for r in old))
    n = len(fake["generate"])
    assert E.main(args(bench, out, *flags[:-1], "2")) == 0 and len(fake["generate"]) > n  # resumed: only the new entry
    assert [r["id"] for r in records(out) if "model" in r["settings"]] == [r["id"] for r in old]
    capsys.readouterr()
    assert E.main(args(bench, out, "--model", model_dir + "/", *flags[2:])) == 2  # another string: not known the same
    assert f"made with model={model_dir!r}, now {model_dir + '/'!r}" in capsys.readouterr().err


def test_retry_errors_keeps_the_latest_attempt(bench, model_dir, fake, tmp_path, capsys):
    """A retried entry that fails again, differently, is recorded with its new error (the first used to win), also
    when an older attempt sits in another rank's file."""
    out = tmp_path / "out"
    flags = ["--model", model_dir, "--modes", "baseline"]
    assert E.main(args(bench, out, *flags)) == 0
    (bench / "gone.mp4").write_text("not a video\n" * 50)  # there now, but unreadable
    try:
        assert E.main(args(bench, out, *flags, "--retry-errors")) == 0
    finally:
        os.remove(bench / "gone.mp4")
    r = next(r for r in records(out) if r["id"] == "4")
    assert r["error"].startswith("cannot read video") and r["attempt"] == 2
    # the attempt, not the file order, decides: the older error moved to a later rank's file still loses
    rank0 = (out / "records.rank0.jsonl").read_text().splitlines()
    first = next(x for x in rank0 if '"id": "4"' in x and '"attempt": 1' in x)
    (out / "records.rank0.jsonl").write_text("".join(x + "\n" for x in rank0 if x != first))
    (out / "records.rank1.jsonl").write_text(first + "\n")
    assert report.read_records(str(out))["mc", "4", "baseline"]["error"].startswith("cannot read video")


def test_non_finite_logits_are_that_samples_error(bench, model_dir, fake, tmp_path, capsys, monkeypatch):
    import model as M

    fake_generate = R.generate

    def nan_on_q1(model, prep, s, stop_ids, info):  # as R.generate says it
        if s.mode == "vreason" and "[q1]" in fake["tok"].decode(prep.ids.tolist()):
            raise M.ModelError("non-finite logits at generated token 0 (NaN/inf weights, float16 overflow, too large a --lr)")
        yield from fake_generate(model, prep, s, stop_ids, info)

    monkeypatch.setattr(R, "generate", nan_on_q1)
    out = tmp_path / "out"
    assert E.main(args(bench, out, "--model", model_dir, "--limit", "1")) == 0
    assert "eval: mc/1 (vreason): non-finite logits at generated token 0" in capsys.readouterr().err
    errors = {(r["dataset"], r["id"], r["mode"]): r["error"] for r in records(out)}
    assert len(errors) == 6 and errors.pop(("mc", "1", "vreason")).startswith("non-finite logits")
    assert set(errors.values()) == {None}  # the other modes of that entry, and the next entry, ran


def test_summary_records_the_settings(bench, model_dir, fake, tmp_path, capsys):
    out = tmp_path / "out"
    assert E.main(args(bench, out, "--model", model_dir, "--modes", "baseline,lite", "--limit", "1")) == 0
    s = json.loads((out / "summary.json").read_text())["settings"]
    assert s["data"] == [str(bench / "eval_mc.jsonl"), str(bench / "eval_vsi.json")] and s["video_root"] == str(bench)
    assert (s["model"], s["model_dir"], s["dtype"], s["device"], s["device_map"], s["compile"], s["limit"]) == \
        (model_dir, os.path.realpath(model_dir), "float32", "cpu", "none", False, 1)
    assert len(s["model_fingerprint"]) == 16 and s["max_pixels"] == 12544 and s["max_new_tokens"] == 1024
    assert s["modes"] == {"baseline": {"mode": "baseline", "prune_ratio": 0.0}, "lite": {"mode": "lite", "prune_ratio": 0.5}}
    md = (out / "summary.md").read_text()
    assert f"\n## Settings\n\n- data: [\"{bench / 'eval_mc.jsonl'}\", " in md and "\n- device: cpu\n" in md
    assert f"\n- model_dir: {os.path.realpath(model_dir)}\n" in md and "\n- lite: mode lite, prune_ratio 0.5\n" in md
    assert md in capsys.readouterr().out
    r = records(out)[0]
    assert (r["device"], r["device_map"], r["compile"], r["model"]) == ("cpu", "none", False, model_dir)


def test_report_on_empty_records_is_one_line(tmp_path, capsys):
    (tmp_path / "records.jsonl").write_text("")
    _refused(["--report", str(tmp_path)], capsys, f"--report: no records in {tmp_path} (records.rank*.jsonl or records.jsonl)")
