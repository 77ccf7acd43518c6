"""The report of an eval.py run, from its records alone (no model): the table in the paper's layout, each mode paired
with the baseline (bootstrap intervals, McNemar's test), the settings the records were made with, and the figures.
eval.py writes the table and the statistics at the end of a run; `python eval.py --report RUN_DIR` adds the figures,
also while a run is still going. What each figure and statistic is: docs/eval.md.
"""
import glob
import io
import json
import math
import os
import re
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

import cli as C
import video as V
from vreason import MODES
from videor1 import SUFFIX


class OutputError(Exception):  # a write into --out failed mid-run or at the end; str() is one line that says what is kept
    pass


# ----------------------------------------------------------------------------- the records, read defensively

def record_files(out):  # every rank's file; else records.jsonl alone (a finished run's, copied without the others)
    return sorted(glob.glob(os.path.join(out, "records.rank*.jsonl"))) or glob.glob(os.path.join(out, "records.jsonl"))


def record_problem(r):
    """What makes one parsed line not a record of this eval.py (the fields a resume and the report read), or None.
    A record is still read when it lacks what it is not needed for (an older eval.py wrote no trace, no attempt)."""
    if not isinstance(r, dict):
        return "not a JSON object"
    for k, kind in (("dataset", str), ("id", str), ("mode", str), ("problem_type", str), ("settings", dict)):
        if not isinstance(r.get(k), kind):
            return f"{k!r} is missing or not a {kind.__name__}"
    if r["mode"] not in MODES or r["problem_type"] not in SUFFIX:
        return f"mode {r['mode']!r} or problem_type {r['problem_type']!r} is not one eval.py writes"
    if "error" not in r or not (r["error"] is None or isinstance(r["error"], str)):
        return "'error' is missing or neither null nor a string"
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    count = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0
    if not (number(r.get("score")) and isinstance(r.get("correct"), bool)):
        return "'score' or 'correct' is missing or of the wrong type"
    if not (count(r.get("attempt", 1)) and count(r["settings"].get("max_new_tokens"))):
        return "'attempt' or settings.max_new_tokens is not a count"
    if r["error"] is None:
        if not (count(r.get("output_tokens")) and number(r.get("latency_s")) and count(r.get("peak_memory_bytes"))):
            return "'output_tokens', 'latency_s' or 'peak_memory_bytes' is missing or of the wrong type"
        try:
            read_trace(r)
        except (AttributeError, KeyError, TypeError, ValueError):
            return "its 'trace' is malformed"
    return None


def read_records(out, skipped=None):
    """Every rank's records by (dataset, id, mode). A line that is not a record (the torn tail of a crash, or a line
    that another tool or a hand wrote: record_problem) is skipped, and listed in `skipped` (file, line, why) when one
    is given; the file is left as it is. Of two records of one key (--retry-errors redid an error) the later attempt
    wins, whichever rank's file holds it; records without an attempt number (an older eval.py) count as the first,
    and there a good one beats an error."""
    recs, skipped = {}, [] if skipped is None else skipped
    for f in record_files(out):
        for n, line in enumerate(read_bytes(f).split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                why = record_problem(r)
            except ValueError:
                why = "not JSON (a line torn by a crash mid-write?)"
            if why:
                skipped.append((f, n, why))
                continue
            k = (r["dataset"], r["id"], r["mode"])
            if k not in recs or (r.get("attempt", 1), not r["error"]) > (recs[k].get("attempt", 1), not recs[k]["error"]):
                recs[k] = r
    return recs


def read_bytes(path):  # a records file, whole; a directory, a FIFO (it would block) or an unreadable file: one line
    try:
        if why := V.not_regular(path):
            raise OSError(0, why)
        return Path(path).read_bytes()
    except OSError as e:
        raise C.UsageError(f"cannot read {path}: {e.strerror or e}") from None


def one_checkpoint(recs, run_dir):
    """--report over records of two checkpoints (rank files gathered from two runs) is refused, naming both: a table
    would pool their numbers in one row. A checkpoint is its resolved directory and fingerprint, as for a resume."""
    models = Counter((str(s.get("model_dir")), str(s["model_fingerprint"])) for s in (r["settings"] for r in recs.values())
                     if "model_fingerprint" in s)  # (an older eval.py's records name the model by --model alone: not compared)
    if len(models) > 1:
        (a, fa), (b, fb) = list(models)[:2]
        raise C.UsageError(f"--report: {run_dir} holds records of {len(models)} checkpoints: {a} (fingerprint {fa}, "
                           f"{models[a, fa]} records) and {b} (fingerprint {fb}, {models[b, fb]} records); report each "
                           f"from a directory of its own")


def note_skipped(skipped):  # one line for the lines read_records skipped, naming the first
    if skipped:
        f, n, why = skipped[0]
        C.note(f"eval: {len(skipped)} line(s) of the records are not records of this eval.py and were skipped "
               f"(first: {f} line {n}: {why}); the files are left as they are")


def read_trace(r):
    """A record's trace as numpy arrays (explore: alpha = +1), or None: an error, or a record older than traces."""
    t = r.get("trace")
    if not t:
        return None
    return {"entropy": np.array(t["entropy"].split(), float), "ema": np.array(t["ema"].split(), float),
            "explore": np.frombuffer(t["alpha"].encode(), np.uint8) == ord("+"),
            "updated_at": np.array(t["updated_at"].split(), int)}


# ----------------------------------------------------------------------------- the table (METHOD.md §7 layout)

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


RUN_KEYS = ("model", "device", "device_map", "compile", "batch_size")  # how a record was run, beside its settings


def recorded_settings(recs, modes, given=None):
    """What the records were made with: the run's (given: data files...), then the --model string, device, device map,
    compile flag and batch size (one value, or the list of them where resumed runs differed), the settings all modes share
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
    show = lambda v: v if isinstance(v, str) else C.dumps(v)
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
    for name, text in (("summary.json", C.dumps(summary, indent=1)), ("summary.md", md)):
        write_out(out, name, text)
    return summary


def write_out(out, name, data):  # a file made from the records: if it cannot be written, they are still there
    try:
        C.write_atomic(os.path.join(out, name), data)
    except OSError as e:
        raise OutputError(f"cannot write {out}/{name} ({e.strerror}); the records are kept in records.rank*.jsonl: "
                          f"rerun the same command to write it") from None


# ----------------------------------------------------------------------------- figures, and --report

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
        C.note(f"eval: {untraced} of {len(ok)} records have no per-token trace (an older eval.py): left out of the per-token "
             f"figures")
    scopes = [("all datasets", "", {n for n, _ in datasets})]
    if len(datasets) > 1:  # file names: figures/<kind>.<dataset>.png
        scopes += [(n, "." + re.sub(r"[^\w.-]+", "_", n), {n}) for n, _ in datasets]
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    bar, done = C.progress(len(scopes) * len(FIGURES), unit="figure"), []
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
        raise C.UsageError(f"--report: {run_dir} is not a directory")
    t0, none = time.perf_counter(), f"--report: no records in {run_dir} (records.rank*.jsonl or records.jsonl)"
    if not record_files(run_dir):
        raise C.UsageError(none)
    skipped = []
    recs = read_records(run_dir, skipped)
    if not recs:  # (no "reading" line before: the one line says it all)
        raise C.UsageError(none)
    one_checkpoint(recs, run_dir)
    note_skipped(skipped)
    items = {}  # dataset -> id -> what summarize needs, in the order first recorded
    for (n, i, m), r in recs.items():
        items.setdefault(n, {}).setdefault(i, {"id": i, "dataset": n, "problem_type": r["problem_type"]})
    datasets = [(n, list(x.values())) for n, x in items.items()]
    modes = [m for m in MODES if any(k[2] == m for k in recs)]
    C.note(f"eval: {len(recs)} records ({', '.join(f'{n} {len(x)} entries' for n, x in datasets)}; modes {', '.join(modes)}) "
         f"read in {time.perf_counter() - t0:.1f}s")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        C.note("eval: the figures need matplotlib (pip install matplotlib); writing the statistics without them")
        plt = None
    figures, untraced = draw_figures(run_dir, datasets, modes, recs, plt) if plt else (None, 0)
    write_summary(run_dir, datasets, modes, recs, figures, untraced)
    n_figs = sum(len(f) for _, f in figures or [])
    C.note(f"eval: wrote {os.path.join(run_dir, 'summary.md')}" + (f" and {n_figs} figures under figures/" if n_figs else ""))
    return 0
