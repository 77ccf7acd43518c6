"""bench.py --smoke runs end to end and writes every section of the report (no timing assertions), for the three
families: the Qwen2.5-VL shapes here, the Qwen3-VL one in its oracle venv (transformers 4.57), the Qwen3.5 one in its
own (transformers 5.23)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import oracle3, oracle35

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench.py")


def check_report(rep, stdout):
    assert {"cpu", "cores", "threads", "torch", "transformers", "dtype", "date"} <= set(rep["machine"])
    for i, (name, s) in enumerate(rep["shapes"].items()):
        assert {"config", "prefill", "decode", "vreason", "memory", "batch"} <= set(s), name
        b = s["batch"]  # batch.py's step against batch 1
        assert b["slots"] == 3 and b["s_per_step"] > 0 and b["tokens_x_batch1"] > 0 and b["bound_x_base"] > 1
        assert ("vision" in s) == (i == 0)  # the vision encoder is benchmarked once, on the first shape
        assert s.get("vision", {"rel_diff": 0})["rel_diff"] < 1e-4  # both sides got the same inputs (DeepStack too)
        assert s["prefill"]["logits_rel_diff"] < 1e-4
        d = s["decode"]
        assert d["tokens_ours"] == d["tokens_theirs"] == d["new_tokens"]  # no early EOS on either side
        assert d["bandwidth_GBps"] > 0 and d["floor_s"] > 0 and d["ours_x_floor"] > 0 and d["theirs_x_floor"] > 0
        assert d["matvecs_s"] > 0 and d["ours_x_matvecs"] > 0
        assert isinstance(d["tokens_match"], bool)
        assert {"vreason_k1", "vreason_k2", "lite", "prune"} <= set(s["vreason"])
        assert all(0 <= s["vreason"][k]["opt_share"] <= 1 for k in ("vreason_k1", "vreason_k2", "lite"))
        assert s["vreason"]["prune"]["updates"] == 0 < s["vreason"]["vreason_k2"]["updates"]
        assert s["vreason"]["vreason_k2"]["bound_x_baseline"] > 1 and s["vreason"]["vreason_k2"]["x_bound"] > 0
        m = s["memory"]
        assert all(m[k]["peak_bytes"] > 0 for k in ("baseline", "vreason", "lite"))
        assert m["lite"]["kv_bytes_after"] < m["lite"]["kv_bytes_before"] == m["baseline"]["kv_bytes_before"]
    t = rep["targets"]
    assert t and all({"shape", "measure", "ours", "reference", "ratio", "target", "pass"} <= set(x) for x in t)
    assert "PASS" in stdout or "MISS" in stdout


def test_smoke_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, BENCH, "--smoke", "--json", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert len(rep["shapes"]) >= 2
    check_report(rep, r.stdout)


def test_smoke_ours_only(tmp_path):
    """--ours-only (the real 3B / 7B sizes, which fit in memory once): no transformers figures, ours all there."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, BENCH, "--smoke", "--ours-only", "--shape", "tiny",
                        "--json", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(out.read_text())["shapes"]["tiny"]
    assert "vision" not in s and "theirs_s" not in s["prefill"] and "theirs_s" not in s["decode"]
    assert s["decode"]["ours_x_floor"] > 0 and s["vreason"]["vreason_k2"]["x_baseline"] > 0
    assert all(s["memory"][k]["peak_bytes"] > 0 for k in ("baseline", "vreason", "lite"))


def test_smoke_qwen3(tmp_path):
    """The Qwen3-VL shape against transformers 4.57 (the oracle venv runs bench.py itself): every section, and both
    sides fed the same thing (check_report: vision features and each DeepStack feature, prefill logits with DeepStack
    injected on both sides; here: the greedy tokens of generate, which takes positions from its own get_rope_index).
    One thread: on a 2-core machine shared with other work, two threads each can run 10x slower."""
    out = tmp_path / "bench.json"
    stdout = oracle3(BENCH, "--smoke", "--shape", "q3-tiny", "--threads", "1", "--json", out)  # (an absolute path)
    rep = json.loads(out.read_text())
    check_report(rep, stdout)
    s = rep["shapes"]["q3-tiny"]
    assert rep["machine"]["transformers"].startswith("4.57") and s["config"]["family"] == "qwen3_vl"
    assert s["config"]["head_dim"] * s["config"]["heads"] != s["config"]["hidden"]
    assert s["decode"]["tokens_match"]
    assert any(t["measure"].startswith("V-Reason k=2 ms/token (it | its byte bound)") and t["target"] == "<= 1.05x bound"
               for t in rep["targets"])


def test_smoke_qwen35(tmp_path):
    """The Qwen3.5 shape (Gated DeltaNet layers and a full-attention last layer) against transformers 5.23 in its
    oracle venv: every section; both sides fed the same thing (vision, prefill logits; here: greedy tokens); the
    linear layers' fixed state in the bytes a token reads, and left out of what Lite can prune."""
    out = tmp_path / "bench.json"
    stdout = oracle35(BENCH, "--smoke", "--shape", "q35-tiny", "--threads", "1", "--json", out)
    rep = json.loads(out.read_text())
    check_report(rep, stdout)
    s = rep["shapes"]["q35-tiny"]
    assert rep["machine"]["transformers"].startswith("5.") and s["config"]["family"] == "qwen3_5"
    assert 0 < s["config"]["linear_layers"] < s["config"]["layers"] and s["config"]["fixed_state_bytes"] > 0
    assert s["decode"]["tokens_match"]
    m = s["memory"]["lite"]  # the state stays; half the video rows of the full-attention layers go
    assert m["kv_bytes_after"] > s["config"]["fixed_state_bytes"]
    assert any(t["measure"].startswith("V-Reason k=2 ms/token (it | its byte bound)") and t["target"] == "<= 1.05x bound"
               for t in rep["targets"])


@pytest.mark.parametrize("shape, cls, venv", [("q3-tiny", "Qwen3VLForConditionalGeneration", ".venv-oracle3/bin/python"),
                                              ("q35-tiny", "Qwen3_5ForConditionalGeneration", ".venv-oracle35/bin/python")])
def test_newer_shapes_need_their_oracle_interpreter(tmp_path, shape, cls, venv):
    """Under transformers 4.51 (no Qwen3-VL, no Qwen3.5) a q3-* or q35-* shape is refused in one line that names the
    interpreter to use."""
    import transformers

    if hasattr(transformers, cls):
        pytest.skip(f"transformers {transformers.__version__} has {cls}: nothing to refuse")
    r = subprocess.run([sys.executable, BENCH, "--smoke", "--shape", shape, "--json", str(tmp_path / "b.json")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and venv in r.stderr
    assert not (tmp_path / "b.json").exists()
