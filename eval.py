"""The paper's evaluation (spec ../shared/spec/vreason.md §6-§7): accuracy, VSI MRA, output tokens, latency and peak
memory of baseline / V-Reason / V-Reason Lite on benchmarks in Video-R1's evaluation format. Resumable; shards
samples across processes with torchrun.

    python eval.py --data eval_mvbench.json eval_vsibench.json --video-root Video-R1/src/r1-v --out runs/7b
    torchrun --nproc-per-node 8 eval.py --data ... --out runs/7b       # same flags, one shard per process

Takes every decoding / V-Reason / video / runtime flag of vreason.py (vreason.add_args).
"""
import datetime
import fcntl
import glob
import json
import os
import re
import socket
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

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
    """Text inside the first <answer>...</answer>; the whole text when there is none or it is empty (as Video-R1)."""
    return R.extract_answer(text) or text.strip()


def to_number(s):
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def mra(pred, gt):
    """Mean relative accuracy over theta = 0.50, 0.55, ..., 0.95: the share of thresholds with |pred-gt|/|gt| < 1-theta.
    In float32 with Video-R1's eps, so gt = 0 scores 1 for pred = 0 and 0 otherwise, and ties fall the same way."""
    rel = torch.tensor(abs(pred - gt), dtype=torch.float32) / (torch.tensor(abs(gt), dtype=torch.float32) + 1e-8)
    return float((rel < 1 - torch.arange(0.5, 0.95 + 0.025, 0.05, dtype=torch.float32)).float().mean())


def rouge_l(pred, gt):
    """ROUGE-L F1 on lower-cased alphanumeric words (rouge_score's tokenizer, no stemming)."""
    a, b = (re.sub(r"[^a-z0-9]+", " ", x.lower()).split() for x in (pred, gt))
    if not a or not b:
        return float(a == b)
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
        return float(" ".join(pred.lower().split()) == " ".join(gt.lower().split()))
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
    return re.sub(r"^eval_", "", Path(path).stem), items


# ----------------------------------------------------------------------------- records: append-only JSONL per rank

def read_records(out):
    """Every rank's records by (dataset, id, mode). A line that does not parse (the torn tail of a crash) is skipped;
    a good record beats an error record of the same key (see --retry-errors)."""
    recs = {}
    for f in sorted(glob.glob(os.path.join(out, "records.rank*.jsonl"))):
        for line in Path(f).read_bytes().split(b"\n"):
            try:
                r = json.loads(line)
                k = (r["dataset"], r["id"], r["mode"])
            except (ValueError, KeyError, TypeError):
                continue
            if k not in recs or recs[k]["error"] and not r["error"]:
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

def settings(a, mode, dtype):
    """Everything that changes a record's numbers, stored with it; a resume must match it. --prune-ratio is Lite's."""
    s = R.Settings.from_args(a, mode=mode, prune_ratio=a.prune_ratio if mode == "lite" else 0.0)
    video = {k: getattr(a, k) for k in ("fps", "nframes", "max_frames", "min_pixels", "max_pixels", "total_pixels")}
    return {**asdict(s), **video, "system": a.system, "model": a.model, "dtype": str(dtype).replace("torch.", "")}


def run_sample(model, tok, a, item, modes, conf, dev, stop_ids):
    """Decode and encode the video once, then run each pending mode on the same prepared input. Yields records."""
    base = {"dataset": item["dataset"], "id": item["id"], "problem_type": item["problem_type"],
            "data_source": item.get("data_source"), "answer": answer_of(item["solution"])}
    fail = lambda m, why: {**base, "mode": m, "prediction": None, "score": 0.0, "correct": False, "error": why, "settings": conf[m]}
    try:
        if item.get("data_type", "video") != "video":
            raise V.VideoError(f"data_type {item['data_type']!r} is not supported (videos only)")
        t0 = time.perf_counter()
        video = V.load_video(os.path.join(a.video_root, item.get("path", item.get("video"))), fps=a.fps, nframes=a.nframes,
                             max_frames=a.max_frames, min_pixels=a.min_pixels, max_pixels=a.max_pixels, total_pixels=a.total_pixels)
        video_s = time.perf_counter() - t0
        prep = R.prepare(model, tok, video, question(item), a.system)
    except V.VideoError as e:  # a missing or unreadable video costs this sample only
        yield from (fail(m, str(e)) for m in modes)
        return
    for m in modes:
        s = R.Settings(**{f.name: conf[m][f.name] for f in fields(R.Settings)})
        R.reset_peak_memory(model)
        info, ids, t0 = {}, [], time.perf_counter()
        try:
            ids = [st.token for st in R.generate(model, prep, s, stop_ids, info)]
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            yield fail(m, "out of GPU memory")
            continue
        R.sync(model)
        total = time.perf_counter() - t0
        text = tok.decode(ids, skip_special_tokens=True)
        pred = answer_of(text)
        sc = score(item["problem_type"], pred, base["answer"])
        yield {**base, "mode": m, "prediction": pred, "score": sc, "correct": sc == 1.0, "output": text,
               "output_tokens": len(ids), "prefill_s": info["prefill_s"], "decode_s": total - info["prefill_s"],
               "latency_s": total, "video_s": video_s, "vision_s": prep.vision_s, "peak_memory_bytes": R.peak_memory_bytes(model),
               "video_tokens": info["video_tokens"], "video_tokens_kept": info["video_tokens_kept"],
               "updates": info.get("updates", 0), "error": None, "settings": conf[m]}


def progress(total):
    """Plain stderr progress with ETA: redrawn in place on a terminal, one line per sample in a log file."""
    t0, done, tty = time.perf_counter(), [0], sys.stderr.isatty()

    def step(what):
        done[0] += 1
        el, n = time.perf_counter() - t0, done[0]
        eta = int(el / n * (total - n))
        print(("\r\033[K" if tty else "") + f"[{'#' * (20 * n // total):<20}] {n}/{total} samples | {el / n:.1f} s/sample | "
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


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    p = R.Parser(description="Evaluate baseline / V-Reason / Lite on Video-R1-format benchmarks", allow_abbrev=False)
    p.add_argument("--data", nargs="+", required=True, help="Video-R1 evaluation files (.json or .jsonl), one per dataset")
    p.add_argument("--video-root", default="", help="directory the entries' relative video paths start from")
    p.add_argument("--out", required=True, help="directory for records.rank*.jsonl, records.jsonl, summary.json/.md")
    p.add_argument("--modes", default="baseline,vreason,lite")
    p.add_argument("--limit", type=int, default=None, help="first N entries of each file")
    p.add_argument("--retry-errors", action="store_true", help="rerun entries recorded as errors (e.g. a video now present)")
    R.add_args(p)  # vreason.py's decoding, V-Reason, video and runtime flags
    p.set_defaults(max_frames=16, max_pixels=128 * 28 * 28)  # spec §7: up to 16 frames of 128*28*28 pixels
    a = p.parse_args(argv)
    R.check_args(a)
    a.modes = a.modes.split(",")
    if not a.modes or len(set(a.modes)) < len(a.modes) or not set(a.modes) <= set(MODES):
        raise R.UsageError(f"argument --modes: a comma-separated list of distinct {', '.join(MODES)}")
    if a.limit is not None and a.limit < 1:
        raise R.UsageError(f"argument --limit: invalid value {a.limit}")
    return a


def check_resume(recs, conf, out):
    """Records already in --out must have been made with the current settings: mixing two runs' numbers is silent."""
    for r in recs.values():
        was, now = r.get("settings") or {}, conf.get(r["mode"])
        if now is not None and was != now:
            k = next(k for k in {**now, **was} if was.get(k) != now.get(k))
            raise R.UsageError(f"{out} holds {r['mode']} records made with {k}={was.get(k)!r}, now {now.get(k)!r}: "
                               f"use another --out, or the same settings to resume")


class OutputError(Exception):  # a write into --out failed mid-run or at the end; str() is one line that says what is kept
    pass


def open_out(out, lock):
    """--out: a directory we can write, created if need be; with lock=True (rank 0) held for the whole run, so that a
    second run on it stops, naming this one. flock dies with its process: a crashed or killed run's lock is simply
    taken over. eval.lock stays behind, naming the last run that held it. Returns the lock's fd (or None)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise R.UsageError(f"--out {out} is not a directory")
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


def run_shard(a, mine, conf, dev, dtype, device_map, rank):
    model_dir = R.resolve_model(a.model)
    tok = V.load_tokenizer(model_dir)
    model = M.load_model(model_dir, dev, dtype, device_map)
    stop_ids = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")} - {None}
    fd, bar = open_records(a.out, rank), progress(len(mine)) if rank == 0 else (lambda what: None)
    try:
        for it, modes in mine:
            errors = []
            for rec in run_sample(model, tok, a, it, modes, conf, dev, stop_ids):
                try:
                    append(fd, rec)
                except OSError as e:
                    raise OutputError(f"cannot append to {a.out}/records.rank{rank}.jsonl ({e.strerror}); the records "
                                      f"before it are kept: rerun the same command to resume") from None
                errors += [rec["error"]] if rec["error"] and rec["error"] not in errors else []
            for e in errors:
                note(f"eval: {it['dataset']}/{it['id']}: {e}")
            bar(f"{it['dataset']}/{it['id']}")
    finally:
        os.close(fd)


def write_results(a, datasets):
    """Merge every rank's records (in dataset order) and write the summary; returns how many runs are still missing."""
    recs = read_records(a.out)
    keep = [recs[k] for _, items in datasets for it in items for k in ((it["dataset"], it["id"], m) for m in a.modes) if k in recs]
    summary = summarize(datasets, a.modes, recs)
    print(table(summary), end="")
    for name, text in (("records.jsonl", "".join(R.dumps(r) + "\n" for r in keep)),
                       ("summary.json", R.dumps(summary, indent=1)), ("summary.md", table(summary))):
        try:
            R.write_atomic(os.path.join(a.out, name), text)
        except OSError as e:
            raise OutputError(f"cannot write {a.out}/{name} ({e.strerror}); the records are kept in "
                              f"records.rank*.jsonl: rerun the same command to write it") from None
    return sum(len(items) for _, items in datasets) * len(a.modes) - len(keep)


def run(a):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    datasets = [load_dataset(path, a.limit) for path in a.data]
    if len({n for n, _ in datasets}) < len(datasets):
        raise DataError("two --data files have the same name (file stem without eval_)")
    for n, items in datasets:
        for it in items:
            it["dataset"] = n
    dev, dtype = M.pick_device_dtype(a.device, a.dtype)
    conf = {m: settings(a, m, dtype) for m in a.modes}
    lock = open_out(a.out, lock=rank == 0)
    try:
        return run_locked(a, datasets, conf, dev, dtype, rank, world)
    finally:
        if lock is not None:
            os.close(lock)


def run_locked(a, datasets, conf, dev, dtype, rank, world):
    recs = read_records(a.out)
    check_resume(recs, conf, a.out)
    # The work list: every (entry, mode) not recorded yet, from all ranks' files (of this or any earlier run), grouped by
    # entry so a video is decoded once; identical on every rank, then dealt out round-robin.
    done = lambda k: k in recs and not (a.retry_errors and recs[k]["error"])
    todo = [(it, ms) for _, items in datasets for it in items if (ms := [m for m in a.modes if not done((it["dataset"], it["id"], m))])]
    if rank == 0:
        print(f"eval: {sum(len(ms) for _, ms in todo)} (entry, mode) runs to do, in {len(todo)} entries, on {world} "
              f"process(es)", file=sys.stderr)
    device_map = None if a.device_map == "none" else a.device_map
    if world > 1 and dev.type == "cuda":  # each process its own GPU, or with --device-map auto its own slice of them
        local, per_node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if device_map:
            g = torch.cuda.device_count() // per_node
            device_map = [torch.device("cuda", i) for i in range(local * g, (local + 1) * g)]
        dev = device_map[0] if device_map else torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1:
        # a long timeout: the first rank done waits at the last barrier for the slowest
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=24))
        torch.distributed.barrier()  # nobody appends before every rank has read the record files
    if todo[rank::world]:
        run_shard(a, todo[rank::world], conf, dev, dtype, device_map, rank)
    if world > 1:
        torch.distributed.barrier()  # every shard is on disk
    if rank == 0 and (missing := write_results(a, datasets)):
        print(f"eval: {missing} (entry, mode) runs still missing; rerun the same command to finish", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def main(argv=None):
    try:
        return run(parse_args(argv))
    except (R.UsageError, DataError, OutputError, V.VideoError, M.ModelError) as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\neval: interrupted; the records written so far are kept: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
