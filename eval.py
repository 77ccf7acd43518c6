"""The paper's evaluation (METHOD.md §7-§8): accuracy, VSI MRA, output tokens, latency and peak memory of baseline /
V-Reason / V-Reason Lite on benchmarks in Video-R1's evaluation format. Resumable; shards samples across processes
with torchrun. The scoring rules are videor1.py's, the summary and the figures report.py's; this file runs them.

    python eval.py --data eval_mvbench.json eval_vsibench.json --video-root Video-R1/src/r1-v --out runs/7b
    torchrun --nproc-per-node 8 eval.py --data ... --out runs/7b       # same flags, one shard per process
    python eval.py --report runs/7b      # figures + paired statistics from the records (no model; also mid-run)

--batch-size B decodes B (entry, mode) runs together (batch.py), each equal to its batch-1 run, the videos of the next
entries read and encoded by a thread meanwhile.

Takes every decoding / V-Reason / video / runtime flag of cli.py (cli.add_args). Reference: docs/eval.md.
"""
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import queue
import re
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

import batch as B
import cli as C
import model as M
import report
import video as V
import vreason as R
from report import OutputError
from videor1 import SUFFIX, answer_of, extract_answer, question, score

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
    if not extract_answer(x["solution"]):  # Video-R1 would score every prediction against "" here
        return "'solution' has no <answer>...</answer> with text in it"
    if token := V.vision_token_in(question(x), M.vision_tokens()):  # (what the tokenizer gets: problem and options)
        return f"its question holds {token}, a vision token, which only the prompt itself places"
    try:  # JSON can escape half a character ("\\udce9"): no tokenizer takes it, no record could hold it
        json.dumps(x, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return "it holds a lone surrogate (a \\u escape of half a character), not text"


def load_dataset(path, limit=None):
    """A Video-R1 evaluation file (a JSON list of entries, or JSON lines: one entry a line) -> (name, entries). The
    format is the content's, not the name's (a pipe, <(cat x.jsonl), is /dev/fd/63): a list opens with "[". Name: the
    file stem without "eval_". A bad entry stops everything with its place: a half-read benchmark gives wrong
    numbers."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not text.lstrip().startswith("["):
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

def open_records(out, rank):
    fd = os.open(os.path.join(out, f"records.rank{rank}.jsonl"), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")  # end a torn line left by a crash, so the next record starts on a line of its own
    return fd


def append(fd, rec):
    """One write() of a whole line, then fsync: a crash loses at most the record being written, never an earlier one."""
    line = (C.dumps(rec) + "\n").encode()
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


def read_video(a, item, fam):
    """An entry's video, as the flags read it -> (video.Video, seconds it took); a video.VideoError if it cannot be."""
    if item.get("data_type", "video") != "video":
        raise V.VideoError(f"data_type {item['data_type']!r} is not supported (videos only)")
    t0 = time.perf_counter()
    video = V.load_video(os.path.join(a.video_root, item.get("path", item.get("video"))), fam, fps=a.fps,
                         nframes=a.nframes, max_frames=a.max_frames, min_pixels=a.min_pixels, max_pixels=a.max_pixels,
                         total_pixels=a.total_pixels)
    return video, time.perf_counter() - t0


def base_record(a, item, dev):  # what every record of an entry holds; the run keys: how it ran, not compared on resume
    return {"dataset": item["dataset"], "id": item["id"], "problem_type": item["problem_type"],
            "data_source": item.get("data_source"), "answer": answer_of(item["solution"]), "model": a.model,
            "device": str(dev), "device_map": a.device_map, "compile": a.compile, "batch_size": a.batch_size}


def failed(base, m, conf, why):  # an (entry, mode) run that ended in an error: scored 0
    return {**base, "mode": m, "prediction": None, "score": 0.0, "correct": False, "error": why, "settings": conf[m]}


def finished(base, m, conf, tok, steps, info, times, item_type):
    """The record of a decoded (entry, mode) run; times: prefill_s, decode_s, latency_s, video_s, vision_s and
    peak_memory_bytes, as the batch size measures them (docs/eval.md#records---out)."""
    text = tok.decode([st.token for st in steps], skip_special_tokens=True)
    pred = answer_of(text)
    sc = score(item_type, pred, base["answer"])
    return {**base, "mode": m, "prediction": pred, "score": sc, "correct": sc == 1.0, "output": text,
            "output_tokens": len(steps), **times, "video_tokens": info["video_tokens"],
            "video_tokens_kept": info["video_tokens_kept"], "updates": info.get("updates", 0), "error": None,
            "settings": conf[m], "trace": trace_of(steps)}


def settings_of(conf):  # a record's settings -> the vreason.Settings they were made with
    return R.Settings(**{f.name: conf[f.name] for f in fields(R.Settings)})


def prepare_entry(model, tok, a, item):
    """An entry's video read and through the vision encoder -> (vreason.Prepared, or why it could not be: a missing or
    unreadable video costs this entry only; seconds reading the video)."""
    try:
        video, video_s = read_video(a, item, model.family)
        return R.prepare(model, tok, video, question(item), a.system), video_s
    except V.VideoError as e:
        return str(e), 0.0


def run_sample(model, tok, a, item, modes, conf, dev, stop_ids):
    """Batch 1: decode and encode the video once, then run each pending mode on the same prepared input. Yields
    records; each mode's peak memory is its own."""
    base = base_record(a, item, dev)
    prep, video_s = prepare_entry(model, tok, a, item)
    if isinstance(prep, str):
        yield from (failed(base, m, conf, prep) for m in modes)
        return
    for m in modes:
        M.reset_peak_memory(model)
        info, t0 = {}, time.perf_counter()
        try:
            steps = list(R.generate(model, prep, settings_of(conf[m]), stop_ids, info))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            yield failed(base, m, conf, "out of GPU memory")
            continue
        except M.ModelError as e:  # non-finite logits: this sample's (a float overflow on one input), not the run's
            yield failed(base, m, conf, str(e))
            continue
        R.sync(model)
        total = time.perf_counter() - t0
        times = {"prefill_s": info["prefill_s"], "decode_s": total - info["prefill_s"], "latency_s": total,
                 "video_s": video_s, "vision_s": prep.vision_s, "peak_memory_bytes": M.peak_memory_bytes(model)}
        yield finished(base, m, conf, tok, steps, info, times, item["problem_type"])


AHEAD = 4  # entries the batched loader keeps prepared ahead of the decoding (a burst of free slots takes several)


class Prefetch:
    """--batch-size > 1: a thread prepares the next entries (prepare_entry: the video read on the CPU, what bounds an
    evaluation run otherwise, then the vision encoder) while the batch decodes, up to AHEAD ahead. On CUDA the
    encoder runs on a stream of its own, beside the decode steps: torch.compile captures its CUDA graphs in
    thread-local mode, which lets another thread queue work on another stream meanwhile. A prepared entry is handed
    over once its stream has done it (vreason.prepare syncs this thread's streams), and its tensors are marked used
    by the decoding's stream too, so that their memory is not given back to the loader's stream while a prefill may
    still read them. Iterating gives (entry, modes, (Prepared or why not, seconds reading the video)); `waited`:
    the seconds the decoding waited for the next entry."""

    def __init__(self, work, load, device):
        self.q, self.waited, self.stopped = queue.Queue(AHEAD), 0.0, False
        self.thread = threading.Thread(target=self.loader, args=(work, load, device), daemon=True)  # (daemon: dies with
        self.thread.start()  # the run)

    def loader(self, work, load, device):
        own = torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda" else contextlib.nullcontext()
        try:
            with own:
                for item, modes in work:
                    if self.stopped:
                        return
                    self.q.put((item, modes, load(item)))
        except BaseException as e:  # anything else than a bad video stops the run, on the main thread
            self.q.put(e)
            return
        self.q.put(None)

    def __iter__(self):
        try:
            while True:
                t0 = time.perf_counter()
                x = self.q.get()
                self.waited += time.perf_counter() - t0
                if x is None:
                    return
                if isinstance(x, BaseException):
                    raise x
                prep = x[2][0]
                if not isinstance(prep, str) and prep.ids.is_cuda:
                    for t in (prep.ids, prep.pos, prep.visual.embeds, *prep.visual.deepstack):
                        t.record_stream(torch.cuda.current_stream(t.device))
                yield x
        finally:  # the decoding ended (done, or stopped by an error): the loader stops after the entry in its hands
            self.stopped = True
            while not self.q.empty():  # (a loader waiting to put into a full queue goes on, and sees it)
                self.q.get_nowait()


def run_batched(model, tok, a, mine, conf, dev, stop_ids, max_len, write):
    """--batch-size > 1: every pending (entry, mode) of this rank through batch.generate_batch; calls write(entry,
    record) as each ends. An entry's video is read once and encoded once for all its modes, by the loader (Prefetch).
    Timings: a sample's prefill, and its latency from admission to its end (its decoding shared the device with the
    batch); peak memory: the batch's, since the run began. Returns the seconds the decoding waited for an entry."""
    entries = Prefetch(mine, lambda item: prepare_entry(model, tok, a, item), model.layer_devices()[0])

    def samples():
        for item, modes, (prep, video_s) in entries:
            base = base_record(a, item, dev)
            for m in modes:
                yield (item, base, m, video_s, prep), prep, settings_of(conf[m])

    M.reset_peak_memory(model)
    try:
        for (item, base, m, video_s, prep), steps, info, error in B.generate_batch(model, samples(), a.batch_size, max_len, stop_ids):
            if error:
                write(item, failed(base, m, conf, error))
                continue
            times = {"prefill_s": info["prefill_s"], "decode_s": info["latency_s"] - info["prefill_s"],
                     "latency_s": info["latency_s"], "video_s": video_s, "vision_s": prep.vision_s,
                     "peak_memory_bytes": M.peak_memory_bytes(model)}
            write(item, finished(base, m, conf, tok, steps, info, times, item["problem_type"]))
    except torch.cuda.OutOfMemoryError:
        raise M.ModelError(f"out of GPU memory at --batch-size {a.batch_size}; the records so far are kept: rerun with "
                           f"a smaller --batch-size to resume") from None
    return entries.waited


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    p = C.Parser(description="Evaluate baseline / V-Reason / Lite on Video-R1-format benchmarks", allow_abbrev=False,
                 epilog="python eval.py --report RUN_DIR: figures and paired statistics from a run's records (no model)")
    p.add_argument("--data", nargs="+", required=True, help="Video-R1 evaluation files (.json or .jsonl), one per dataset")
    p.add_argument("--video-root", default="", help="directory the entries' relative video paths start from")
    p.add_argument("--out", required=True, help="directory for records.rank*.jsonl, records.jsonl, summary.json/.md")
    p.add_argument("--modes", default="baseline,vreason,lite")
    p.add_argument("--limit", type=int, default=None, help="first N entries of each file")
    p.add_argument("--retry-errors", action="store_true", help="rerun entries recorded as errors (e.g. a video now present)")
    p.add_argument("--batch-size", type=int, default=None, help="(entry, mode) runs decoded together, each equal to "
                   "its batch-1 run (default: 1 on CPU; on CUDA the most of 32, 16, 8, 4, 2 that fits the memory check)")
    C.add_args(p)  # the CLI's decoding, V-Reason, video and runtime flags
    p.set_defaults(max_frames=16)  # METHOD.md §8: up to 16 frames of 128 tokens (--max-pixels: set in run(), per family)
    a = p.parse_args(argv)
    C.check_args(a)
    a.modes = a.modes.split(",")
    if not a.modes or len(set(a.modes)) < len(a.modes) or not set(a.modes) <= set(R.MODES):
        raise C.UsageError(f"argument --modes: a comma-separated list of distinct {', '.join(R.MODES)}")
    for flag in ("limit", "batch_size"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            raise C.UsageError(f"argument --{flag.replace('_', '-')}: invalid value {getattr(a, flag)}")
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
            raise C.UsageError(f"{out} holds {r['mode']} records made with {k}={was.get(k)!r}, now {now.get(k)!r}: "
                               f"use another --out, or the same settings to resume")


def check_out(out):
    """--out before anything is downloaded or made: a directory, or a path where one can be made. A directory made
    and removed at once in it, or in the nearest directory above it that exists, is the probe (os.access says yes to
    root on a read-only /sys). open_out makes it once the request is checked."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise C.UsageError(f"--out {out} is not a directory")
    there = os.path.abspath(out)
    while not os.path.exists(there):
        there = os.path.dirname(there)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".eval-probe-", dir=there))
    except OSError as e:
        raise C.UsageError(f"cannot write in --out {out}: {e.strerror}") from None


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
        raise C.UsageError(f"cannot write in --out {out}: {e.strerror}") from None
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
            raise C.UsageError(f"--out {out} is in use by {holder}: wait for it to end, or use another --out") from None
        raise C.UsageError(f"cannot write in --out {out}: {e.strerror}") from None


def longest_prompt(a, tok, items, fam):
    """A bound on the prompt tokens of any sample, before a video is read: the most video tokens the frame and pixel
    flags allow (video.max_video_prompt), the longest question, the system prompt, and 64 for the chat template
    around them."""
    video = V.max_video_prompt(fam, a.nframes or a.max_frames, a.min_pixels, a.max_pixels, a.total_pixels)
    text = max(len(tok.encode(question(it)).ids) for it in items) + len(tok.encode(a.system or "").ids)
    return video + text + 64


def check_request(a, skeleton, tok, items):
    """What the CLI refuses before loading, here on eval's defaults and the longest prompt of any entry: one line
    now, rather than the same error recorded for every sample and a run of 0%. Returns that bound (prompt tokens)."""
    fam = skeleton.family
    default = a.max_pixels is None
    if default:  # Video-R1's 128 tokens a frame: 128*28*28 for Qwen2.5-VL, 128*32*32 for Qwen3-VL
        a.max_pixels = 128 * fam.factor ** 2
    try:
        C.check_pixels(a, fam)  # (with that default: a --min-pixels above it)
    except C.UsageError as e:
        raise C.UsageError(f"{e} (eval's default for {fam.name}: 128 tokens a frame)" if default else str(e)) from None
    V.check_pixel_limits(fam, a.min_pixels, a.max_pixels)
    bound = longest_prompt(a, tok, items, fam)
    try:
        C.check_positions(bound - 1, a.max_new_tokens, skeleton.c.max_positions)
    except C.UsageError as e:
        raise C.UsageError(f"{e} [a bound: the longest prompt the flags allow, {bound} tokens]") from None
    return bound


def held(batch_size):  # the encoded entries a run holds beside its slots: the loader's (Prefetch), and the one admitted
    return AHEAD + 2 if batch_size > 1 else 0  # (the queue's, the one waiting to enter it, the one being admitted)


def default_batch_size(skeleton, dev, dtype, device_map, prompt_tokens, new_tokens):
    """--batch-size unset: 1 off CUDA (a CPU is not bound by the weights' bytes at batch 1 the way a GPU is); on CUDA
    the most of 32, 16, 8, 4, 2 whose caches (each slot the longest prompt the flags allow) pass the memory check."""
    if dev.type != "cuda":
        return 1
    fits = lambda n: M.shortfall(M.memory_need(skeleton, dev, dtype, device_map, prompt_tokens, new_tokens, slots=n,
                                               ahead=held(n))) is None
    return next((n for n in (32, 16, 8, 4, 2) if fits(n)), 1)


def rank_devices(local, per_node, visible, device_map):
    """Under torchrun on CUDA: this process's device, and its GPUs for --device-map auto. A launcher may give each
    process GPUs of its own (it then sees fewer than there are processes on the node), hence local rank modulo the
    visible count. --device-map auto: when every process sees all the node's GPUs, each takes an even share,
    [r*g, (r+1)*g) with g = visible // processes; when it sees fewer GPUs than there are processes, they are its own."""
    if visible == 0:
        raise C.UsageError("--device cuda under torchrun, but this process sees no CUDA device")
    if device_map is None:
        return torch.device("cuda", local % visible), None
    g, first = (visible // per_node, local * (visible // per_node)) if visible >= per_node else (visible, 0)
    devs = [torch.device("cuda", first + i) for i in range(g)]
    return devs[0], devs


def run_shard(a, model_dir, tok, mine, tries, conf, dev, dtype, device_map, rank, max_len):
    """Load the model and run this rank's (entry, modes); tries: the attempts recorded so far, by key; max_len: the
    longest prompt the flags allow + --max-new-tokens (a slot's rows at --batch-size > 1)."""
    with C.Progress("loading weights", "shards", every=0, quiet=rank != 0) as shards:
        model = M.load_model(model_dir, dev, dtype, device_map, progress=shards)
    if a.compile:
        model.compile_decode()
    stop_ids = model.stop_ids(tok)
    fd, bar = open_records(a.out, rank), C.progress(len(mine)) if rank == 0 else (lambda what: None)
    left = {(it["dataset"], it["id"]): (len(modes), {}) for it, modes in mine}  # per entry: runs to end, errors -> modes

    def write(it, rec):  # one record on disk; once an entry's last run has ended, its errors and the progress bar
        rec["attempt"] = tries.get((rec["dataset"], rec["id"], rec["mode"]), 0) + 1
        try:
            append(fd, rec)
        except OSError as e:
            raise OutputError(f"cannot append to {a.out}/records.rank{rank}.jsonl ({e.strerror}); the records "
                              f"before it are kept: rerun the same command to resume") from None
        n, errors = left[it["dataset"], it["id"]]
        if rec["error"]:
            errors.setdefault(rec["error"], []).append(rec["mode"])
        left[it["dataset"], it["id"]] = n - 1, errors
        if n == 1:
            for e, ms in errors.items():
                C.note(f"eval: {it['dataset']}/{it['id']} ({', '.join(ms)}): {e}")
            bar(f"{it['dataset']}/{it['id']}")

    t0, waited = time.perf_counter(), 0.0
    try:
        if a.batch_size > 1:
            waited = run_batched(model, tok, a, mine, conf, dev, stop_ids, max_len, write)
        else:
            for it, modes in mine:
                video_s = 0.0
                for rec in run_sample(model, tok, a, it, modes, conf, dev, stop_ids):
                    write(it, rec)
                    video_s = rec.get("video_s", video_s)
                waited += video_s  # (at batch 1 the device idles while a video is read)
    finally:
        os.close(fd)
    total = time.perf_counter() - t0
    print(f"eval: rank {rank}: {sum(len(ms) for _, ms in mine)} (entry, mode) runs in {total:.1f} s at batch size "
          f"{a.batch_size}, {3600 * len(mine) / total:.0f} entries an hour; decoding waited {waited:.1f} s "
          f"({100 * waited / total:.1f}%) for videos", file=sys.stderr)


def write_results(a, datasets):
    """Merge every rank's records (in dataset order) and write the summary; returns how many runs are still missing."""
    recs = report.read_records(a.out)
    keep = [recs[k] for _, items in datasets for it in items for k in ((it["dataset"], it["id"], m) for m in a.modes) if k in recs]
    report.write_out(a.out, "records.jsonl", "".join(C.dumps(r) + "\n" for r in keep))
    given = {"data": [os.path.abspath(p) for p in a.data], "video_root": os.path.abspath(a.video_root), "limit": a.limit}
    report.write_summary(a.out, datasets, a.modes, recs, given=given)
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
        raise C.UsageError(f"--video-root {a.video_root} is {'not a directory' if os.path.exists(a.video_root) else 'not found'}")
    check_out(a.out)  # before a download: a bad --out is one line at once
    dev, dtype = M.pick_device_dtype(a.device, a.dtype)
    device_map = None if a.device_map == "none" else a.device_map
    if world > 1 and dev.type == "cuda":  # each process its own GPU, or with --device-map auto its own share of them
        dev, device_map = rank_devices(int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                                       torch.cuda.device_count(), device_map)
    # The request against the checkpoint's small files (config, tokenizer) and this machine, before --out is made and
    # a weight is downloaded or read; the same on every rank, so every rank stops alike.
    model_dir = C.resolve_model(a.model, weights=False)
    skeleton = M.skeleton(model_dir)
    tok = V.load_tokenizer(model_dir, skeleton.family, skeleton.c)
    bound = check_request(a, skeleton, tok, [it for _, items in datasets for it in items])
    if a.batch_size is None:
        a.batch_size = default_batch_size(skeleton, dev, dtype, device_map, bound, a.max_new_tokens)
    M.check_memory(skeleton, dev, dtype, device_map, bound, a.max_new_tokens, a.batch_size, held(a.batch_size))
    made, lock = rank == 0 and not os.path.lexists(a.out), None
    try:  # (open_out inside: a Ctrl-C in the instant after it made --out still removes it)
        lock = open_out(a.out, lock=rank == 0)
        model_dir = C.resolve_model(a.model)  # the weights now (a download, for a Hub id not in the cache)
        model = model_identity(model_dir)  # (hashed once, not once a mode)
        conf = {m: settings(a, m, dtype, model) for m in a.modes}
        return run_locked(a, model_dir, tok, datasets, conf, dev, dtype, device_map, rank, world, bound + a.max_new_tokens)
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


def run_locked(a, model_dir, tok, datasets, conf, dev, dtype, device_map, rank, world, max_len):
    skipped = []
    recs = report.read_records(a.out, skipped)
    if rank == 0:
        report.note_skipped(skipped)  # (their (entry, mode) runs again below, and the new record wins)
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
        run_shard(a, model_dir, tok, todo[rank::world], tries, conf, dev, dtype, device_map, rank, max_len)
    if world > 1:
        torch.distributed.barrier()  # every shard is on disk
    if rank == 0 and (missing := write_results(a, datasets)):
        print(f"eval: {missing} (entry, mode) runs still missing; rerun the same command to finish", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def parse_report_args(argv):
    p = C.Parser(prog="eval.py --report", description="figures and paired statistics from a run's records (no model)",
                 allow_abbrev=False)
    p.add_argument("--report", required=True, metavar="RUN_DIR", help="an --out directory of eval.py, finished or not")
    return p.parse_args(argv).report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if any(x == "--report" or x.startswith("--report=") for x in argv):
            return report.report(parse_report_args(argv))
        return run(parse_args(argv))
    except (C.UsageError, DataError, OutputError, V.VideoError, M.ModelError) as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\neval: interrupted; the records written so far are kept: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
