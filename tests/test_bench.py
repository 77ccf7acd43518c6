"""bench.py --smoke runs end to end and writes every section of the report (no timing assertions)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert {"cpu", "cores", "threads", "torch", "transformers", "dtype", "date"} <= set(rep["machine"])
    assert len(rep["shapes"]) >= 2
    for i, (name, s) in enumerate(rep["shapes"].items()):
        assert {"config", "prefill", "decode", "vreason", "memory"} <= set(s), name
        assert ("vision" in s) == (i == 0)  # the vision encoder is benchmarked once, on the first shape
        d = s["decode"]
        assert d["tokens_ours"] == d["tokens_theirs"] == d["new_tokens"]  # no early EOS on either side
        assert d["bandwidth_GBps"] > 0 and d["floor_s"] > 0 and d["ours_x_floor"] > 0 and d["theirs_x_floor"] > 0
        assert d["matvecs_s"] > 0 and d["ours_x_matvecs"] > 0
        assert isinstance(d["tokens_match"], bool)
        assert {"vreason_k1", "vreason_k2", "lite", "prune"} <= set(s["vreason"])
        assert all(0 <= s["vreason"][k]["opt_share"] <= 1 for k in ("vreason_k1", "vreason_k2", "lite"))
        assert s["vreason"]["prune"]["updates"] == 0 < s["vreason"]["vreason_k2"]["updates"]
        m = s["memory"]
        assert all(m[k]["peak_bytes"] > 0 for k in ("baseline", "vreason", "lite"))
        assert m["lite"]["kv_bytes_after"] < m["lite"]["kv_bytes_before"] == m["baseline"]["kv_bytes_before"]
    t = rep["targets"]
    assert t and all({"shape", "measure", "ours", "reference", "ratio", "target", "pass"} <= set(x) for x in t)
    assert "PASS" in r.stdout or "MISS" in r.stdout


def test_smoke_ours_only(tmp_path):
    """--ours-only (the real 3B / 7B sizes, which fit in memory once): no transformers figures, ours all there."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--smoke", "--ours-only", "--shape", "tiny",
                        "--json", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(out.read_text())["shapes"]["tiny"]
    assert "vision" not in s and "theirs_s" not in s["prefill"] and "theirs_s" not in s["decode"]
    assert s["decode"]["ours_x_floor"] > 0 and s["vreason"]["vreason_k2"]["x_baseline"] > 0
    assert all(s["memory"][k]["peak_bytes"] > 0 for k in ("baseline", "vreason", "lite"))
