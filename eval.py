"""The paper's evaluation (spec ../shared/spec/vreason.md §6-§7): accuracy, VSI MRA, output tokens, latency and peak
memory of baseline / V-Reason / V-Reason Lite on benchmarks in Video-R1's evaluation format. Resumable; shards
samples across processes with torchrun.

    python eval.py --data eval_mvbench.json eval_vsibench.json --video-root Video-R1/src/r1-v --out runs/7b
    torchrun --nproc-per-node 8 eval.py --data ... --out runs/7b       # same flags, one shard per process
    python eval.py --report runs/7b      # figures + paired statistics from the records (no model; also mid-run)

Takes every decoding / V-Reason / video / runtime flag of vreason.py (vreason.add_args).
"""
import datetime
import fcntl
import glob
import hashlib
import io
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

import model as M
import video as V
import vreason as R

# ----------------------------------------------------------------------------- prompt and scoring (spec §7)
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
MODES = ("baseline", "vreason", "lite")


def question(item):
    """The user's text after the video: problem [+ options] + newline + instruction + type suffix."""
    q = item["problem"]
    if item["problem_type"] == "multiple choice":
        q += "Options:\n" + "".join(o + "\n" for o in item["options"])  # Video-R1 adds no separator before "Options:"
    return q + "\n" + INSTRUCTION + SUFFIX[item["problem_type"]]


def answer_of(text):
    """Text inside the first <answer>...</answer>, stripped; the whole text when there is none or it is empty (as
    Video-R1, which keeps that whole text unstripped: no rule in score() sees the difference)."""
    return R.extract_answer(text) or text.strip()


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


# ----------------------------------------------------------------------------- data

class DataError(ValueError):
    pass


class OutputError(Exception):  # a write into --out failed mid-run or at the end; str() is one line that says what is kept
    pass


def problem(x):  # what is wrong with one dataset entry, or None
    if not isinstance(x, dict):
        return "not a JSON object"
    for k in ("problem", "solution"):
        if not isinstance(x.get(k), str):
            return f"'{k}' is missing or not a string"
    if x.get("problem_type") not in SUFFIX:
        return f"problem_type {x.get('problem_type')!r} is not one of {', '.join(SUFFIX)}"
    path = x.get("path", x.get("video"))
    if not isinstance(path, str):
        return "no video path ('path' or 'video')"
    if os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == "..":  # a dataset file must not choose what we read
        return f"video path {path!r} is absolute or climbs out of --video-root"
    if x["problem_type"] == "multiple choice" and not (isinstance(x.get("options"), list) and all(isinstance(o, str) for o in x["options"])):
        return "a multiple-choice entry needs 'options', a list of strings"
    if not R.extract_answer(x["solution"]):  # Video-R1 would score every prediction against "" here
        return "'solution' has no <answer>...</answer> with text in it"


def load_dataset(path, limit=None):
    """A Video-R1 evaluation file (.json: a list of entries; .jsonl: one a line) -> (name, entries). Name: the file
    stem without "eval_". A bad entry stops everything with its place: a half-read benchmark gives wrong numbers."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if path.endswith(".jsonl"):
        rows = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold a raw U+2028
            try:
                rows += [(f"line {n}", json.loads(line))] if line.strip() else []
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of entries (or a .jsonl file)")
        rows = [(f"item {i}", x) for i, x in enumerate(data, 1)]
    items, where = [], {}
    for i, (at, x) in enumerate(rows[:limit], 1):
        if problem(x):
            raise DataError(f"{path}: {at}: {problem(x)}")
        sid = str(x.get("problem_id", i))
        if sid in where:  # records are keyed by id: a duplicate would silently shadow a sample
            raise DataError(f"{path}: {at}: duplicate problem_id {sid} (first at {where[sid]})")
        where[sid] = at
        items.append({**x, "id": sid})
    if not items:  # a run over nothing would write a summary of 0% and exit 0
        raise DataError(f"{path}: no entries")
    return re.sub(r"^eval_", "", Path(path).stem), items


# ----------------------------------------------------------------------------- records: append-only JSONL per rank

def record_files(out):  # every rank's file; else records.jsonl alone (a finished run's, copied without the others)
    return sorted(glob.glob(os.path.join(out, "records.rank*.jsonl"))) or glob.glob(os.path.join(out, "records.jsonl"))


def read_records(out):
    """Every rank's records by (dataset, id, mode). A line that does not parse (the torn tail of a crash) is skipped.
    Of two records of one key (--retry-errors redid an error) the later attempt wins, whichever rank's file holds it;
    records without an attempt number (an older eval.py) count as the first, and there a good one beats an error."""
    recs = {}
    for f in record_files(out):
        for line in Path(f).read_bytes().split(b"\n"):
            try:
                r = json.loads(line)
                k = (r["dataset"], r["id"], r["mode"])
            except (ValueError, KeyError, TypeError):
                continue
            if k not in recs or (r.get("attempt", 1), not r["error"]) > (recs[k].get("attempt", 1), not recs[k]["error"]):
                recs[k] = r
    return recs


def open_records(out, rank):
    fd = os.open(os.path.join(out, f"records.rank{rank}.jsonl"), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")  # end a torn line left by a crash, so the next record starts on a line of its own
    return fd


def append(fd, rec):
    """One write() of a whole line, then fsync: a crash loses at most the record being written, never an earlier one."""
    line = (R.dumps(rec) + "\n").encode()
    if os.write(fd, line) != len(line):
        raise OSError("short write to the records file")
    os.fsync(fd)


# ----------------------------------------------------------------------------- running

def settings(a, mode, dtype, model):
    """Everything that changes a record's numbers, stored with it; a resume must match it. --prune-ratio is Lite's.
    model: the checkpoint's identity (model_identity), the same for every mode."""
    s = R.Settings.from_args(a, mode=mode, prune_ratio=a.prune_ratio if mode == "lite" else 0.0)
    video = {k: getattr(a, k) for k in ("fps", "nframes", "max_frames", "min_pixels", "max_pixels", "total_pixels")}
    return {**asdict(s), **video, "system": a.system, **model, "dtype": str(dtype).replace("torch.", "")}


def model_identity(model_dir):
    """The model as a resume knows it: its resolved directory and fingerprint, not the --model string (./m/ and /abs/m
    are one run; two directories spelled m from different working directories are two)."""
    return {"model_dir": os.path.realpath(model_dir), "model_fingerprint": fingerprint(model_dir)}


def fingerprint(model_dir):
    """config.json's bytes and the weight shards' names and sizes, hashed (no weight is read): a checkpoint replaced
    in the same directory is another run."""
    h = hashlib.sha256(Path(model_dir, "config.json").read_bytes())
    for f in M.weight_files(model_dir):
        h.update(f"\0{os.path.basename(f)}\0{os.path.getsize(f)}".encode())
    return h.hexdigest()[:16]


def trace_of(steps):
    """Per generated token, compactly (one string per list, a few bytes a token): the entropy of the logits that chose
    it and the EMA (nats, 3 decimals), the switching rule's alpha ('+' explore, '-' exploit; computed in the baseline
    too, where nothing acts on it) and the indices of the tokens at which the controller was updated. Outputs, not
    settings: a resume never compares them."""
    num = lambda xs: " ".join(f"{x:.3f}".rstrip("0").rstrip(".") for x in xs)
    return {"entropy": num(st.entropy for st in steps), "ema": num(st.ema for st in steps),
            "alpha": "".join("+" if st.alpha > 0 else "-" for st in steps),
            "updated_at": " ".join(str(i) for i, st in enumerate(steps) if st.updated)}


def read_trace(r):
    """A record's trace as numpy arrays (explore: alpha = +1), or None: an error, or a record older than traces."""
    t = r.get("trace")
    if not t:
        return None
    return {"entropy": np.array(t["entropy"].split(), float), "ema": np.array(t["ema"].split(), float),
            "explore": np.frombuffer(t["alpha"].encode(), np.uint8) == ord("+"),
            "updated_at": np.array(t["updated_at"].split(), int)}


def run_sample(model, tok, a, item, modes, conf, dev, stop_ids):
    """Decode and encode the video once, then run each pending mode on the same prepared input. Yields records."""
    base = {"dataset": item["dataset"], "id": item["id"], "problem_type": item["problem_type"],
            "data_source": item.get("data_source"), "answer": answer_of(item["solution"]), "model": a.model,
            "device": str(dev), "device_map": a.device_map, "compile": a.compile}  # how it ran: not compared on resume
    fail = lambda m, why: {**base, "mode": m, "prediction": None, "score": 0.0, "correct": False, "error": why, "settings": conf[m]}
    try:
        if item.get("data_type", "video") != "video":
            raise V.VideoError(f"data_type {item['data_type']!r} is not supported (videos only)")
        t0 = time.perf_counter()
        video = V.load_video(os.path.join(a.video_root, item.get("path", item.get("video"))), model.c.model_type, fps=a.fps,
                             nframes=a.nframes, max_frames=a.max_frames, min_pixels=a.min_pixels, max_pixels=a.max_pixels,
                             total_pixels=a.total_pixels)
        video_s = time.perf_counter() - t0
        prep = R.prepare(model, tok, video, question(item), a.system)
    except V.VideoError as e:  # a missing or unreadable video costs this sample only
        yield from (fail(m, str(e)) for m in modes)
        return
    for m in modes:
        s = R.Settings(**{f.name: conf[m][f.name] for f in fields(R.Settings)})
        R.reset_peak_memory(model)
        info, t0 = {}, time.perf_counter()
        try:
            steps = list(R.generate(model, prep, s, stop_ids, info))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            yield fail(m, "out of GPU memory")
            continue
        except M.ModelError as e:  # non-finite logits: this sample's (a float overflow on one input), not the run's
            yield fail(m, str(e))
            continue
        R.sync(model)
        total = time.perf_counter() - t0
        text = tok.decode([st.token for st in steps], skip_special_tokens=True)
        pred = answer_of(text)
        sc = score(item["problem_type"], pred, base["answer"])
        yield {**base, "mode": m, "prediction": pred, "score": sc, "correct": sc == 1.0, "output": text,
               "output_tokens": len(steps), "prefill_s": info["prefill_s"], "decode_s": total - info["prefill_s"],
               "latency_s": total, "video_s": video_s, "vision_s": prep.vision_s, "peak_memory_bytes": R.peak_memory_bytes(model),
               "video_tokens": info["video_tokens"], "video_tokens_kept": info["video_tokens_kept"],
               "updates": info.get("updates", 0), "error": None, "settings": conf[m], "trace": trace_of(steps)}


def progress(total, unit="sample"):
    """Plain stderr progress with ETA: redrawn in place on a terminal, one line per step in a log file."""
    t0, done, tty = time.perf_counter(), [0], sys.stderr.isatty()

    def step(what):
        done[0] += 1
        el, n = time.perf_counter() - t0, done[0]
        eta = int(el / n * (total - n))
        print(("\r\033[K" if tty else "") + f"[{'#' * (20 * n // total):<20}] {n}/{total} {unit}s | {el / n:.1f} s/{unit} | "
              f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d} | {what}", end="" if tty and n < total else "\n",
              file=sys.stderr, flush=True)
    return step


def note(msg):  # a line of its own, also when the progress bar is being redrawn in place
    print(("\r\033[K" if sys.stderr.isatty() else "") + msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- summary (spec §6 layout)

def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(datasets, modes, recs):
    """Per dataset and mode: accuracy (%, every non-regression entry; an error counts 0, as in Video-R1), MRA (%,
    regression entries), mean output tokens, mean latency, peak memory. Columns: a dataset's accuracy, plus "<name>
    MRA" if it has regression entries; "mean" leaves the MRA columns out, "mean+MRA" keeps them."""
    cols = [(n, k) for n, items in datasets for k in ("acc", "mra")
            if any((it["problem_type"] == "regression") == (k == "mra") for it in items)]
    rows = {}
    for m in modes:
        per = {}
        for n, items in datasets:
            rs = [recs[k] for k in ((n, it["id"], m) for it in items) if k in recs]
            ok = [r for r in rs if not r["error"]]
            per[n] = {"entries": len(items), "recorded": len(rs), "errors": len(rs) - len(ok),
                      "accuracy": mean([100 * r["score"] for r in rs if r["problem_type"] != "regression"]),
                      "mra": mean([100 * r["score"] for r in rs if r["problem_type"] == "regression"]),
                      "output_tokens": mean([r["output_tokens"] for r in ok]), "latency_s": mean([r["latency_s"] for r in ok]),
                      "peak_memory_bytes": max([r["peak_memory_bytes"] for r in ok], default=None)}
        metric = lambda n, k: per[n]["accuracy" if k == "acc" else "mra"]
        rows[m] = {"datasets": per, "mean": mean([metric(n, k) for n, k in cols if k == "acc"]),
                   "mean+MRA": mean([metric(n, k) for n, k in cols]),
                   "output_tokens": mean([d["output_tokens"] for d in per.values()]),  # mean of the per-dataset means
                   "latency_s": mean([d["latency_s"] for d in per.values()]),
                   "peak_memory_bytes": max([d["peak_memory_bytes"] or 0 for d in per.values()], default=0) or None,
                   "metrics": {f"{n} MRA" if k == "mra" else n: metric(n, k) for n, k in cols}}
    return {"columns": [f"{n} MRA" if k == "mra" else n for n, k in cols], "modes": rows}


def table(summary):
    f = lambda x, spec=".1f": "-" if x is None else format(x, spec)
    head = ["mode", *summary["columns"], "mean", "mean+MRA", "tokens", "latency s", "peak GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in summary["modes"].items():
        cells = [m, *(f(r["metrics"][c]) for c in summary["columns"]), f(r["mean"]), f(r["mean+MRA"]), f(r["output_tokens"], ".0f"),
                 f(r["latency_s"], ".2f"), f(r["peak_memory_bytes"] and r["peak_memory_bytes"] / 2**30, ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- paired statistics against the baseline

BOOT_SEED, BOOT_RESAMPLES = 0, 10000


def mcnemar(b, c):
    """McNemar's exact two-sided p-value for b right->wrong and c wrong->right flips: with no effect each of the
    n = b + c flips goes either way with probability 1/2, so p = 2 P(X <= min(b, c)) for X ~ Binomial(n, 1/2), at
    most 1. In integers to the last division (no scipy): exact for any n."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def resample_means(rng, X, B=BOOT_RESAMPLES):
    """Paired bootstrap: B resamples with replacement of the rows (entries) of X [n, k]; each column's mean per
    resample -> [B, k]. In blocks of about 2M indices: 5000 entries x 10000 resamples at once would be 400 MB."""
    n, out = len(X), np.empty((B, X.shape[1]))
    block = max(1, 2_000_000 // n)
    for i in range(0, B, block):
        idx = rng.integers(0, n, (min(block, B - i), n))
        out[i:i + len(idx)] = X[idx].mean(1)
    return out


def interval(reps):  # 95% percentile interval of bootstrap replicates; nan replicates (an empty subgroup) left out
    reps = reps[~np.isnan(reps)]
    return [float(x) for x in np.percentile(reps, [2.5, 97.5])] if len(reps) else None


def paired(datasets, modes, recs, seed=BOOT_SEED, B=BOOT_RESAMPLES):
    """Each mode against the baseline on the entries recorded in both (errors score 0, as in the table). Per column
    of the table (a dataset's accuracy, or its MRA) and for "mean" / "mean+MRA": the difference in points with a 95%
    paired bootstrap interval, and for accuracy McNemar's exact p on the right/wrong flips. Per dataset and over all:
    mean output tokens (entries without an error in either mode) and the reduction in %. Over all, as the table:
    means of the per-dataset figures, each resample drawing every dataset's entries anew (a stratified bootstrap);
    McNemar pools the flips. Entries are taken in id order and each (dataset, mode) has its own random stream seeded
    from (seed, its name), so the numbers depend on the records alone, not on shards, order or other datasets."""
    if "baseline" not in modes:
        return {}
    res = {"seed": seed, "resamples": B, "modes": {}}
    for m in modes:
        if m == "baseline":
            continue
        cols, tokens, reps = {}, {}, {"acc": [], "all": [], "tb": [], "tm": []}
        flips = [0, 0]
        for n, items in datasets:
            ids = sorted(it["id"] for it in items if (n, it["id"], "baseline") in recs and (n, it["id"], m) in recs)
            if not ids:
                continue
            b, c = [recs[n, i, "baseline"] for i in ids], [recs[n, i, m] for i in ids]
            reg = np.array([r["problem_type"] == "regression" for r in b])
            ok = np.array([not (x["error"] or y["error"]) for x, y in zip(b, c)])
            sb, sm = (np.array([r["score"] for r in rs], float) for rs in (b, c))
            tb, tm = (np.array([r.get("output_tokens") or 0 for r in rs], float) * ok for rs in (b, c))
            # per entry: [acc diff, is acc, MRA diff, is MRA, base tokens, mode tokens, has tokens]; a ratio of two
            # column means is then a subgroup's mean, in the original sample and in every resample alike
            X = np.column_stack([~reg * (sm - sb), ~reg, reg * (sm - sb), reg, tb, tm, ok]).astype(float)
            rng = np.random.default_rng([seed, zlib.crc32(f"{n}\0{m}".encode())])
            with np.errstate(invalid="ignore", divide="ignore"):
                M = np.vstack([X.mean(0), resample_means(rng, X, B)])
                d_acc, d_mra, mb, mm = 100 * M[:, 0] / M[:, 1], 100 * M[:, 2] / M[:, 3], M[:, 4] / M[:, 6], M[:, 5] / M[:, 6]
            for name, is_col, d in ((n, ~reg, d_acc), (f"{n} MRA", reg, d_mra)):
                if is_col.any():
                    col = {"pairs": int(is_col.sum()), "baseline": float(100 * sb[is_col].mean()),
                           "mode": float(100 * sm[is_col].mean()), "delta": float(d[0]), "ci": interval(d[1:])}
                    if name == n:  # accuracy: right/wrong flips
                        cb, cm = (np.array([r["correct"] for r in rs]) & ~reg for rs in (b, c))
                        f = [int((cb & ~cm).sum()), int((~cb & cm).sum())]
                        col.update(flips=f, p=mcnemar(*f))
                        flips = [flips[0] + f[0], flips[1] + f[1]]
                        reps["acc"].append((col, d))
                    reps["all"].append((col, d))
                    cols[name] = col
            if ok.any():
                tokens[n] = reduction(int(ok.sum()), mb, mm)
                reps["tb"].append(mb)
                reps["tm"].append(mm)
        r = {"columns": cols}
        for name, cd in (("mean", reps["acc"]), ("mean+MRA", reps["all"])):
            if cd:
                d = np.mean([d for _, d in cd], 0)
                r[name] = {"pairs": sum(c["pairs"] for c, _ in cd), "baseline": mean([c["baseline"] for c, _ in cd]),
                           "mode": mean([c["mode"] for c, _ in cd]), "delta": float(d[0]), "ci": interval(d[1:])}
        if reps["acc"]:
            r["mean"].update(flips=flips, p=mcnemar(*flips))
        if tokens:
            tokens["all"] = reduction(sum(t["pairs"] for t in tokens.values()), np.mean(reps["tb"], 0), np.mean(reps["tm"], 0))
        r["tokens"] = tokens
        res["modes"][m] = r
    return res


def reduction(pairs, mb, mm):  # mean tokens of the baseline and the mode: [original, *replicates] -> the figures
    with np.errstate(invalid="ignore", divide="ignore"):
        red = 100 * (1 - mm / mb)
    return {"pairs": pairs, "baseline": float(mb[0]), "mode": float(mm[0]), "reduction": float(red[0]), "ci": interval(red[1:])}


def paired_tables(p):
    """The paired statistics as markdown: what they are, then accuracy / MRA and output tokens."""
    if not p or not p["modes"]:
        return ""
    f = lambda x: f"{x:+.1f}"
    ci = lambda c: "-" if c is None else f"[{f(c[0])}, {f(c[1])}]"
    pv = lambda x: "-" if x is None else "1" if x == 1 else f"{x:.3f}" if x >= 1e-3 else f"{x:.1e}"
    lines = ["", "## Against the baseline, paired", "",
             f"On the entries recorded in both modes (errors score 0). Δ: the mode minus the baseline, in points, with a 95% "
             f"paired bootstrap interval (2.5 and 97.5 percentiles of {p['resamples']} resamples of the entries, numpy "
             f"seed {p['seed']}; `mean` averages the per-dataset Δs, each resample drawing every dataset anew). Flips: "
             f"entries right with the baseline and wrong with the mode, and the reverse; p: McNemar's exact two-sided "
             f"test on them (`mean`: every dataset's flips pooled).", "",
             "| column | mode | pairs | baseline | mode | Δ | 95% interval | right→wrong | wrong→right | McNemar p |",
             "|" + "---|" * 10]
    row = lambda *cells: "| " + " | ".join(map(str, cells)) + " |"
    for m, r in p["modes"].items():
        for name, c in [*r["columns"].items(), *((k, r[k]) for k in ("mean", "mean+MRA") if k in r)]:
            lines.append(row(name, m, c["pairs"], f"{c['baseline']:.1f}", f"{c['mode']:.1f}", f(c["delta"]), ci(c["ci"]),
                             *c.get("flips", ["-", "-"]), pv(c.get("p"))))
    lines += ["", "Output tokens on the entries without an error in either mode (`all`: the mean of the per-dataset means, "
              "as the table); reduction = 1 - mode / baseline, with its 95% paired bootstrap interval.", "",
              "| dataset | mode | pairs | baseline tokens | mode tokens | reduction % | 95% interval |", "|" + "---|" * 7]
    for m, r in p["modes"].items():
        for n, t in r["tokens"].items():
            lines.append(row(n, m, t["pairs"], f"{t['baseline']:.1f}", f"{t['mode']:.1f}", f(t["reduction"]), ci(t["ci"])))
    return "\n".join(lines) + "\n"


RUN_KEYS = ("model", "device", "device_map", "compile")  # how a record was run, beside its settings


def recorded_settings(recs, modes, given=None):
    """What the records were made with: the run's (given: data files...), then the --model string, device, device map
    and compile flag (one value, or the list of them where resumed runs differed), the settings all modes share
    (model directory and fingerprint, dtype, decoding, video...) and, per mode, the rest."""
    out = dict(given or {})
    for k in RUN_KEYS:
        vs = list(dict.fromkeys(r[k] for r in recs.values() if k in r))
        if vs:
            out[k] = vs[0] if len(vs) == 1 else vs
    per = {m: next(r["settings"] for k, r in recs.items() if k[2] == m) for m in modes if any(k[2] == m for k in recs)}
    first = next(iter(per.values()), {})
    shared = {k: v for k, v in first.items() if all(k in s and s[k] == v for s in per.values())}
    return {**out, **shared, "modes": {m: {k: v for k, v in s.items() if k not in shared} for m, s in per.items()}}


def settings_md(s):
    show = lambda v: v if isinstance(v, str) else R.dumps(v)
    lines = [f"- {k}: {show(v)}" for k, v in s.items() if k != "modes"]
    lines += [f"- {m}: " + ", ".join(f"{k} {show(v)}" for k, v in ms.items()) for m, ms in s["modes"].items()]
    return "\n## Settings\n\n" + "\n".join(lines) + "\n"


def write_summary(out, datasets, modes, recs, figures=None, untraced=0, given=None):
    """summary.json and summary.md: the paper-layout table, the paired statistics, the settings (recorded_settings)
    and the figures when drawn (a list of (scope, [(caption, path relative to out)]); all but the figures also go to
    stdout."""
    summary = {**summarize(datasets, modes, recs), "paired": paired(datasets, modes, recs),
               "settings": recorded_settings(recs, modes, given)}
    body = table(summary) + paired_tables(summary["paired"]) + settings_md(summary["settings"])
    md = body
    if figures:
        summary["figures"] = {scope: dict(figs) for scope, figs in figures}
        md += f"\n## Figures\n\nPer-token curves stop where fewer than {MIN_SHARE:.0%} of a mode's samples still generate."
        md += f" {untraced} records without a per-token trace (an older eval.py) are left out of them." if untraced else ""
        for scope, figs in figures:
            md += f"\n\n### {scope}\n\n" + "\n\n".join(f"![{cap}]({path})" for cap, path in figs)
        md += "\n"
    print(body, end="")  # first: a write that fails below loses no table
    for name, text in (("summary.json", R.dumps(summary, indent=1)), ("summary.md", md)):
        write_out(out, name, text)
    return summary


def write_out(out, name, data):  # a file made from the records: if it cannot be written, they are still there
    try:
        R.write_atomic(os.path.join(out, name), data)
    except OSError as e:
        raise OutputError(f"cannot write {out}/{name} ({e.strerror}); the records are kept in records.rank*.jsonl: "
                          f"rerun the same command to write it") from None


# ----------------------------------------------------------------------------- --report: figures from the records

COLORS = {"baseline": "tab:gray", "vreason": "tab:green", "lite": "tab:purple"}
MIN_SHARE = 0.05  # per-token curves stop where fewer than 5% of a mode's samples are still generating


def per_index(arrays):
    """Arrays of different lengths (one per sample) -> mean, std and count at each index, cut where fewer than
    MIN_SHARE of them reach: beyond, the mean is that of a handful of unusually long outputs."""
    L = max(map(len, arrays))
    S, S2, C = np.zeros(L), np.zeros(L), np.zeros(L)
    for a in arrays:
        S[: len(a)] += a
        S2[: len(a)] += a * a
        C[: len(a)] += 1
    keep = int((C >= max(1, MIN_SHARE * len(arrays))).sum())  # C never grows with the index: a prefix
    S, S2, C = S[:keep], S2[:keep], C[:keep]
    m = S / C
    return m, np.sqrt(np.maximum(S2 / C - m * m, 0)), C


def fig_entropy(ax, axn, traces):
    """The paper's Fig. 1: mean entropy per generated-token index, ±1 std, and how many samples are still generating."""
    for m, ts in traces.items():
        mu, sd, n = per_index([t["entropy"] for t in ts])
        x = np.arange(len(mu))
        ax.plot(x, mu, color=COLORS[m], lw=1.4, label=f"{m} ({len(ts)} samples)")
        ax.fill_between(x, np.maximum(mu - sd, 0), mu + sd, color=COLORS[m], alpha=0.15, lw=0)
        axn.plot(x, n, color=COLORS[m], lw=1.4)
    ax.set(ylabel="entropy (nats), mean ± 1 std")
    axn.set(xlabel=f"generated token index (curves end where fewer than {MIN_SHARE:.0%} of a mode's samples still generate)",
            ylabel="still generating")
    ax.legend(loc="upper right", fontsize=9)


def fig_alpha(ax, traces):
    """The share of samples exploring (alpha = +1) at each token index."""
    for m, ts in traces.items():
        share = per_index([t["explore"].astype(float) for t in ts])[0]
        label = f"{m} (rule computed, not applied)" if m == "baseline" else m
        ax.plot(100 * share, color=COLORS[m], lw=1.4, ls="--" if m == "baseline" else "-", label=label)
    ax.set(xlabel=f"generated token index (curves end where fewer than {MIN_SHARE:.0%} of a mode's samples still generate)",
           ylabel="% of samples with alpha = +1", ylim=(-3, 103))
    ax.legend(loc="upper right", fontsize=9)


def fig_lengths(ax, recs):
    """Output lengths per mode, on common bins; the legend says how many reached --max-new-tokens."""
    lens = {m: np.array([r["output_tokens"] for r in rs]) for m, rs in recs.items()}
    lo, hi = min(map(min, lens.values())), max(map(max, lens.values()))
    w = -(-(hi - lo + 1) // 40)  # about 40 bins, each a whole number of tokens wide
    bins = np.arange(lo, hi + w + 1, w) - 0.5
    for m, rs in recs.items():
        limit = max(r["settings"]["max_new_tokens"] for r in rs)
        at = int((lens[m] >= limit).sum())
        label = f"{m}: mean {lens[m].mean():.0f}, median {np.median(lens[m]):.0f}" + (f", {at} at the {limit} limit" if at else "")
        ax.hist(lens[m], bins, histtype="step", lw=1.8, color=COLORS[m], label=label)
    ax.set(xlabel="output tokens (stop token included)", ylabel="samples")
    ax.legend(loc="upper right", fontsize=9)


def fig_accuracy(ax, recs):
    """Accuracy against output length: bins holding equal shares of all modes' outputs together; a point per bin at
    the mode's median length there, ±1 standard error (a bin holds few samples: its noise should show). Regression
    entries (MRA) are left out, as from the accuracy columns."""
    recs = {m: [r for r in rs if r["problem_type"] != "regression"] for m, rs in recs.items()}
    pooled = np.array([r["output_tokens"] for rs in recs.values() for r in rs])
    if not len(pooled):
        ax.text(0.5, 0.5, "no accuracy entries (regression only)", ha="center", transform=ax.transAxes)
        return
    k = int(np.clip(len(pooled) // (30 * len(recs)), 1, 8))  # about 30 samples of each mode per bin at least
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, k + 1)))
    ends = []
    for m, rs in recs.items():
        L, S = np.array([r["output_tokens"] for r in rs]), np.array([r["score"] for r in rs])
        b = np.clip(np.searchsorted(edges, L, side="right") - 1, 0, max(len(edges) - 2, 0))
        x, y, se = (np.array(v) for v in zip(*[(np.median(L[b == j]), 100 * S[b == j].mean(),
                                                100 * S[b == j].std() / np.sqrt((b == j).sum())) for j in np.unique(b)]))
        ax.errorbar(x, y, se, marker="o", color=COLORS[m], lw=1.4, capsize=3,
                    label=f"{m}: {100 * S.mean():.1f}% overall, {len(rs)} samples")
        ends += [(y - se).min(), (y + se).max()]
    ax.set_ylim(max(-3, min(ends) - 5), min(103, max(ends) + 5))  # at least 10 points tall, within 0..100
    ax.set(xlabel=f"output tokens (median per bin; {max(len(edges) - 1, 1)} bins holding equal shares)", ylabel="accuracy %, ±1 s.e.")
    ax.legend(loc="best", fontsize=9)


FIGURES = [("entropy", "mean entropy per generated token (Fig. 1)"), ("alpha", "share of alpha = +1 per token"),
           ("lengths", "output lengths"), ("accuracy", "accuracy against output tokens")]


def draw_figures(out, datasets, modes, recs, plt):
    """Every figure over all datasets and, with more than one, per dataset, as PNGs under out/figures. Returns
    [(scope, [(caption, path relative to out)])] and the number of records left out for having no trace."""
    ok = {k: r for k, r in recs.items() if not r["error"]}
    traces = {k: read_trace(r) for k, r in ok.items()}
    untraced = sum(t is None for t in traces.values())
    if untraced:
        note(f"eval: {untraced} of {len(ok)} records have no per-token trace (an older eval.py): left out of the per-token "
             f"figures")
    scopes = [("all datasets", "", {n for n, _ in datasets})]
    if len(datasets) > 1:  # file names: figures/<kind>.<dataset>.png
        scopes += [(n, "." + re.sub(r"[^\w.-]+", "_", n), {n}) for n, _ in datasets]
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    bar, done = progress(len(scopes) * len(FIGURES), unit="figure"), []
    for scope, suffix, names in scopes:
        rs = {m: [r for k, r in ok.items() if k[0] in names and k[2] == m] for m in modes}
        ts = {m: [traces[k] for k in ok if k[0] in names and k[2] == m and traces[k] is not None] for m in modes}
        rs, ts = {m: x for m, x in rs.items() if x}, {m: x for m, x in ts.items() if x}
        skipped = sum(len(x) for x in rs.values()) - sum(len(x) for x in ts.values())
        figs = []
        for kind, caption in FIGURES:
            tall = kind == "entropy"
            fig = plt.figure(figsize=(9, 5.6 if tall else 4.4))
            axes = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}) if tall else [fig.subplots()]
            per_token = kind in ("entropy", "alpha")
            if not rs or (per_token and not ts):
                axes[0].text(0.5, 0.5, "no records with a trace" if rs else "no records", ha="center",
                             transform=axes[0].transAxes)
            elif kind == "entropy":
                fig_entropy(*axes, ts)
            elif kind == "alpha":
                fig_alpha(axes[0], ts)
            else:
                (fig_lengths if kind == "lengths" else fig_accuracy)(axes[0], rs)
            more = f" ({skipped} records without a trace left out)" if per_token and skipped else ""
            axes[0].set_title(f"{scope}: {caption}{more}", fontsize=11)
            for ax in axes:
                ax.grid(alpha=0.3)
            fig.tight_layout()
            path = os.path.join("figures", f"{kind}{suffix}.png")
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=110)
            write_out(out, path, png.getvalue())
            plt.close(fig)
            figs.append((caption, path))
            bar(path)
        done.append((scope, figs))
    return done, untraced


def report(run_dir):
    """--report RUN_DIR: the table, the paired statistics and the figures from the records alone (no model), also of
    a run still going (what is recorded so far) or of torchrun shards (every rank's file is read)."""
    if not os.path.isdir(run_dir):
        raise R.UsageError(f"--report: {run_dir} is not a directory")
    t0, none = time.perf_counter(), f"--report: no records in {run_dir} (records.rank*.jsonl or records.jsonl)"
    if not record_files(run_dir):
        raise R.UsageError(none)
    recs = read_records(run_dir)
    if not recs:  # (no "reading" line before: the one line says it all)
        raise R.UsageError(none)
    items = {}  # dataset -> id -> what summarize needs, in the order first recorded
    for (n, i, m), r in recs.items():
        items.setdefault(n, {}).setdefault(i, {"id": i, "dataset": n, "problem_type": r["problem_type"]})
    datasets = [(n, list(x.values())) for n, x in items.items()]
    modes = [m for m in MODES if any(k[2] == m for k in recs)]
    note(f"eval: {len(recs)} records ({', '.join(f'{n} {len(x)} entries' for n, x in datasets)}; modes {', '.join(modes)}) "
         f"read in {time.perf_counter() - t0:.1f}s")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        note("eval: the figures need matplotlib (pip install matplotlib); writing the statistics without them")
        plt = None
    figures, untraced = draw_figures(run_dir, datasets, modes, recs, plt) if plt else (None, 0)
    write_summary(run_dir, datasets, modes, recs, figures, untraced)
    n_figs = sum(len(f) for _, f in figures or [])
    note(f"eval: wrote {os.path.join(run_dir, 'summary.md')}" + (f" and {n_figs} figures under figures/" if n_figs else ""))
    return 0


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    p = R.Parser(description="Evaluate baseline / V-Reason / Lite on Video-R1-format benchmarks", allow_abbrev=False,
                 epilog="python eval.py --report RUN_DIR: figures and paired statistics from a run's records (no model)")
    p.add_argument("--data", nargs="+", required=True, help="Video-R1 evaluation files (.json or .jsonl), one per dataset")
    p.add_argument("--video-root", default="", help="directory the entries' relative video paths start from")
    p.add_argument("--out", required=True, help="directory for records.rank*.jsonl, records.jsonl, summary.json/.md")
    p.add_argument("--modes", default="baseline,vreason,lite")
    p.add_argument("--limit", type=int, default=None, help="first N entries of each file")
    p.add_argument("--retry-errors", action="store_true", help="rerun entries recorded as errors (e.g. a video now present)")
    R.add_args(p)  # vreason.py's decoding, V-Reason, video and runtime flags
    p.set_defaults(max_frames=16)  # spec §7: up to 16 frames of 128 tokens (--max-pixels: set in run(), per family)
    a = p.parse_args(argv)
    R.check_args(a)
    a.modes = a.modes.split(",")
    if not a.modes or len(set(a.modes)) < len(a.modes) or not set(a.modes) <= set(MODES):
        raise R.UsageError(f"argument --modes: a comma-separated list of distinct {', '.join(MODES)}")
    if a.limit is not None and a.limit < 1:
        raise R.UsageError(f"argument --limit: invalid value {a.limit}")
    return a


def check_resume(recs, conf, out, model):
    """Records already in --out must have been made with the current settings: mixing two runs' numbers is silent.
    Records of an older eval.py name the model by its --model string: then that string is compared, as it was."""
    for r in recs.values():
        was, now = r.get("settings") or {}, conf.get(r["mode"])
        if now is not None and "model_dir" not in was and "model" in was:
            now = {**{k: v for k, v in now.items() if k not in ("model_dir", "model_fingerprint")}, "model": model}
        if now is not None and was != now:
            k = next(k for k in {**now, **was} if was.get(k) != now.get(k))
            raise R.UsageError(f"{out} holds {r['mode']} records made with {k}={was.get(k)!r}, now {now.get(k)!r}: "
                               f"use another --out, or the same settings to resume")


def check_out(out):
    """--out before anything is downloaded or made: a directory, or a path where one can be made. A directory made
    and removed at once in it, or in the nearest directory above it that exists, is the probe (os.access says yes to
    root on a read-only /sys). open_out makes it once the request is checked."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise R.UsageError(f"--out {out} is not a directory")
    there = os.path.abspath(out)
    while not os.path.exists(there):
        there = os.path.dirname(there)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".eval-probe-", dir=there))
    except OSError as e:
        raise R.UsageError(f"cannot write in --out {out}: {e.strerror}") from None


def open_out(out, lock):
    """--out: a directory we can write, created if need be; with lock=True (rank 0) held for the whole run, so that a
    second run on it stops, naming this one. flock dies with its process: a crashed or killed run's lock is simply
    taken over. eval.lock stays behind, naming the last run that held it. Returns the lock's fd (or None)."""
    try:
        os.makedirs(out, exist_ok=True)
        if not lock:
            return None
        fd = os.open(os.path.join(out, "eval.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise R.UsageError(f"cannot write in --out {out}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        who = f"eval.py pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.pwrite(fd, who.encode(), 0)  # (and a write probe: a full disk fails here, not after the first sample)
        return fd
    except OSError as e:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another eval.py run"
        os.close(fd)
        if isinstance(e, BlockingIOError):
            raise R.UsageError(f"--out {out} is in use by {holder}: wait for it to end, or use another --out") from None
        raise R.UsageError(f"cannot write in --out {out}: {e.strerror}") from None


def longest_prompt(a, tok, items, fam):
    """A bound on the prompt tokens of any sample, before a video is read: the most video tokens the frame and pixel
    flags allow (fewer frames may get more pixels each: every count is tried), 8 a frame group for Qwen3-VL's
    "<t seconds>", the longest question, the system prompt, and 64 for the chat template around them."""
    video = max(n // fam.temporal_patch * (int(V.video_pixel_limits(n, a.min_pixels, a.max_pixels, a.total_pixels, fam)[1])
                                           // fam.factor**2 + 8 * fam.timestamps)
                for n in range(fam.temporal_patch, (a.nframes or a.max_frames) + 1, fam.temporal_patch))
    text = max(len(tok.encode(question(it)).ids) for it in items) + len(tok.encode(a.system or "").ids)
    return video + text + 64


def check_request(a, skeleton, tok, items):
    """What vreason.py refuses before loading, here on eval's defaults and the longest prompt of any entry: one line
    now, rather than the same error recorded for every sample and a run of 0%. Returns that bound (prompt tokens)."""
    fam = V.get_family(skeleton.c.model_type)
    if a.max_pixels is None:  # Video-R1's 128 tokens a frame: 128*28*28 for Qwen2.5-VL, 128*32*32 for Qwen3-VL
        a.max_pixels = 128 * fam.factor ** 2
        try:
            R.check_args(a)  # again, now that --max-pixels has a value: a --min-pixels above it
        except R.UsageError as e:
            raise R.UsageError(f"{e} (eval's default for {fam.name}: 128 tokens a frame)") from None
    V.check_pixel_limits(fam, a.min_pixels, a.max_pixels)
    V.build_prompt(tok, "", 1, a.system, V.QWEN25_VL)  # refuses a <|video_pad|> in --system, as every family's prompt
    bound = longest_prompt(a, tok, items, fam)
    try:
        R.check_positions(bound - 1, a.max_new_tokens, skeleton.c.max_positions)
    except R.UsageError as e:
        raise R.UsageError(f"{e} [a bound: the longest prompt the flags allow, {bound} tokens]") from None
    return bound


def rank_devices(local, per_node, visible, device_map):
    """Under torchrun on CUDA: this process's device, and its GPUs for --device-map auto. A launcher may give each
    process GPUs of its own (it then sees fewer than there are processes on the node), hence local rank modulo the
    visible count. --device-map auto: when every process sees all the node's GPUs, each takes an even share,
    [r*g, (r+1)*g) with g = visible // processes; when it sees fewer GPUs than there are processes, they are its own."""
    if visible == 0:
        raise R.UsageError("--device cuda under torchrun, but this process sees no CUDA device")
    if device_map is None:
        return torch.device("cuda", local % visible), None
    g, first = (visible // per_node, local * (visible // per_node)) if visible >= per_node else (visible, 0)
    devs = [torch.device("cuda", first + i) for i in range(g)]
    return devs[0], devs


def run_shard(a, model_dir, tok, mine, tries, conf, dev, dtype, device_map, rank):
    """Load the model and run this rank's (entry, modes); tries: the attempts recorded so far, by key."""
    with R.Progress("loading weights", "shards", every=0, quiet=rank != 0) as shards:
        model = M.load_model(model_dir, dev, dtype, device_map, progress=shards)
    if a.compile:
        model.compile_decode()
    stop_ids = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")} - {None}
    fd, bar = open_records(a.out, rank), progress(len(mine)) if rank == 0 else (lambda what: None)
    try:
        for it, modes in mine:
            errors = {}  # error -> the modes it ended
            for rec in run_sample(model, tok, a, it, modes, conf, dev, stop_ids):
                rec["attempt"] = tries.get((rec["dataset"], rec["id"], rec["mode"]), 0) + 1
                try:
                    append(fd, rec)
                except OSError as e:
                    raise OutputError(f"cannot append to {a.out}/records.rank{rank}.jsonl ({e.strerror}); the records "
                                      f"before it are kept: rerun the same command to resume") from None
                if rec["error"]:
                    errors.setdefault(rec["error"], []).append(rec["mode"])
            for e, ms in errors.items():
                note(f"eval: {it['dataset']}/{it['id']} ({', '.join(ms)}): {e}")
            bar(f"{it['dataset']}/{it['id']}")
    finally:
        os.close(fd)


def write_results(a, datasets):
    """Merge every rank's records (in dataset order) and write the summary; returns how many runs are still missing."""
    recs = read_records(a.out)
    keep = [recs[k] for _, items in datasets for it in items for k in ((it["dataset"], it["id"], m) for m in a.modes) if k in recs]
    write_out(a.out, "records.jsonl", "".join(R.dumps(r) + "\n" for r in keep))
    given = {"data": [os.path.abspath(p) for p in a.data], "video_root": os.path.abspath(a.video_root), "limit": a.limit}
    write_summary(a.out, datasets, a.modes, recs, given=given)
    print(f"eval: figures: python eval.py --report {a.out}", file=sys.stderr)
    return sum(len(items) for _, items in datasets) * len(a.modes) - len(keep)


def run(a):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    datasets = [load_dataset(path, a.limit) for path in a.data]
    if len({n for n, _ in datasets}) < len(datasets):
        raise DataError("two --data files have the same name (file stem without eval_)")
    for n, items in datasets:
        for it in items:
            it["dataset"] = n
    if a.video_root and not os.path.isdir(a.video_root):  # every video would be "not found": one line instead
        raise R.UsageError(f"--video-root {a.video_root} is {'not a directory' if os.path.exists(a.video_root) else 'not found'}")
    check_out(a.out)  # before a download: a bad --out is one line at once
    dev, dtype = M.pick_device_dtype(a.device, a.dtype)
    device_map = None if a.device_map == "none" else a.device_map
    if world > 1 and dev.type == "cuda":  # each process its own GPU, or with --device-map auto its own share of them
        dev, device_map = rank_devices(int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                                       torch.cuda.device_count(), device_map)
    # The request against the checkpoint's small files (config, tokenizer) and this machine, before --out is made and
    # a weight is downloaded or read; the same on every rank, so every rank stops alike.
    model_dir = R.resolve_model(a.model, weights=False)
    skeleton, tok = M.skeleton(model_dir), V.load_tokenizer(model_dir)
    bound = check_request(a, skeleton, tok, [it for _, items in datasets for it in items])
    M.check_memory(skeleton, dev, dtype, device_map, bound, a.max_new_tokens)
    made = rank == 0 and not os.path.lexists(a.out)
    lock = open_out(a.out, lock=rank == 0)
    try:
        model_dir = R.resolve_model(a.model)  # the weights now (a download, for a Hub id not in the cache)
        model = model_identity(model_dir)  # (hashed once, not once a mode)
        conf = {m: settings(a, m, dtype, model) for m in a.modes}
        return run_locked(a, model_dir, tok, datasets, conf, dev, dtype, device_map, rank, world)
    except BaseException:
        if made:
            forget_out(a.out)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def forget_out(out):
    """A --out this run made and then stopped before its first record (a failed download or load, a bad device map,
    Ctrl-C) is removed again: its lock and empty record files are all it holds, and a directory left behind would
    look like a run."""
    try:
        names = os.listdir(out)
        if all(n == "eval.lock" or re.fullmatch(r"records\.rank\d+\.jsonl", n) and not os.path.getsize(os.path.join(out, n))
               for n in names):
            for n in names:
                os.remove(os.path.join(out, n))
            os.rmdir(out)
    except OSError:  # another rank's file appeared meanwhile: kept
        pass


def run_locked(a, model_dir, tok, datasets, conf, dev, dtype, device_map, rank, world):
    recs = read_records(a.out)
    check_resume(recs, conf, a.out, a.model)
    if rank == 0 and (old := sum(not r["error"] and "trace" not in r for r in recs.values())):
        print(f"eval: {old} records in {a.out} have no per-token trace (an older eval.py made them): kept, and left "
              f"out of the figures", file=sys.stderr)
    # The work list: every (entry, mode) not recorded yet, from all ranks' files (of this or any earlier run), grouped by
    # entry so a video is decoded once; identical on every rank, then dealt out round-robin.
    done = lambda k: k in recs and not (a.retry_errors and recs[k]["error"])
    todo = [(it, ms) for _, items in datasets for it in items if (ms := [m for m in a.modes if not done((it["dataset"], it["id"], m))])]
    if rank == 0:
        print(f"eval: {sum(len(ms) for _, ms in todo)} (entry, mode) runs to do, in {len(todo)} entries, on {world} "
              f"process(es)", file=sys.stderr)
    if world > 1 and dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        # a long timeout: the first rank done waits at the last barrier for the slowest; nccl is told this rank's GPU
        cuda = dev.type == "cuda"
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=24),
                                             device_id=dev if cuda else None)
        torch.distributed.barrier()  # nobody appends before every rank has read the record files
    if todo[rank::world]:
        tries = {k: r.get("attempt", 1) for k, r in recs.items()}
        run_shard(a, model_dir, tok, todo[rank::world], tries, conf, dev, dtype, device_map, rank)
    if world > 1:
        torch.distributed.barrier()  # every shard is on disk
    if rank == 0 and (missing := write_results(a, datasets)):
        print(f"eval: {missing} (entry, mode) runs still missing; rerun the same command to finish", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def parse_report_args(argv):
    p = R.Parser(prog="eval.py --report", description="figures and paired statistics from a run's records (no model)",
                 allow_abbrev=False)
    p.add_argument("--report", required=True, metavar="RUN_DIR", help="an --out directory of eval.py, finished or not")
    return p.parse_args(argv).report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if any(x == "--report" or x.startswith("--report=") for x in argv):
            return report(parse_report_args(argv))
        return run(parse_args(argv))
    except (R.UsageError, DataError, OutputError, V.VideoError, M.ModelError) as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\neval: interrupted; the records written so far are kept: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
