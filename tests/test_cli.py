"""The CLI end to end on a tiny checkpoint and synthetic clips, and every bad input: one line on stderr, exit 2,
no traceback, no JSON file left behind."""
import json
import os
import shutil
import subprocess
import sys

import av
import pytest
from clips import write_audio_only, write_clip
from conftest import ROOT

import vreason as R

SMALL = ["--min-pixels", "3136", "--max-pixels", "12544", "--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def model_dir(ckpt, qwen_tokenizer_json, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "model"
    shutil.copytree(ckpt, d)
    shutil.copy(qwen_tokenizer_json, d / "tokenizer.json")
    return str(d)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clips") / "clip.mp4")
    write_clip(path, n_frames=24, width=96, height=72, fps=8)
    return path


def test_cli_end_to_end(model_dir, clip, tmp_path):
    """`python vreason.py ...` as a user runs it: streams text, prints stats, writes a complete JSON record."""
    out = tmp_path / "run.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "vreason.py"), "--video", clip, "--q", "What happens?",
                        "--model", model_dir, "--json", str(out), *SMALL], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    assert len(rec["token_ids"]) == len(rec["entropies"]) == 8
    assert all(e >= 0 for e in rec["entropies"])
    v = rec["video"]
    assert v["frame_indices"] == [0, 5, 9, 14, 18, 23]  # 3 s at 8 fps, sampled at 2 fps: linspace(0, 23, 6).round()
    assert rec["video_tokens"] == v["grid_thw"][0] * v["grid_thw"][1] * v["grid_thw"][2] // 4
    assert rec["prompt_tokens"] == rec["video_tokens"] + 21 + 3  # §5: 21 template tokens + "What happens?"
    for key in ("text", "model", "dtype", "device", "mode", "timings", "settings"):
        assert key in rec
    assert rec["settings"]["max_new_tokens"] == 8 and rec["settings"]["temperature"] == 0.0
    assert rec["text"] in r.stdout  # streamed
    assert "tok/s" in r.stdout and "peak memory" in r.stdout


def test_json_to_stdout_is_pure_json(model_dir, clip, capsys):
    assert R.main(["--video", clip, "--q", "Why?", "--model", model_dir, "--json", "-", *SMALL]) == 0
    out, err = capsys.readouterr()
    rec = json.loads(out)
    assert rec["text"] in err and rec["mode"] == "baseline"


def _truncated(tmp_path, clip):
    p = tmp_path / "trunc.mp4"
    data = open(clip, "rb").read()
    p.write_bytes(data[: len(data) // 3])
    return str(p)


def _no_frames(tmp_path, clip):
    p = str(tmp_path / "empty.mp4")
    with av.open(p, "w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height = 64, 48
    return p


def _text_file(tmp_path, clip):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    return str(p)


def _audio(tmp_path, clip):
    p = str(tmp_path / "sound.wav")
    write_audio_only(p)
    return p


BAD_VIDEOS = {
    "missing video": lambda tmp, clip: str(tmp / "nope.mp4"),
    "not a video": _text_file,
    "truncated video": _truncated,
    "no decodable frames": _no_frames,
    "audio only": _audio,
    "directory": lambda tmp, clip: str(tmp),
}


def _bad(capsys, tmp_path, argv):
    out = tmp_path / "out.json"
    assert R.main([*argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vreason: error:") and "Traceback" not in err, err
    assert not out.exists() and not any(p.name.startswith("out.json") for p in tmp_path.iterdir())
    return err


@pytest.mark.parametrize("case", BAD_VIDEOS)
def test_bad_video(case, model_dir, clip, tmp_path, capsys):
    path = BAD_VIDEOS[case](tmp_path, clip)
    _bad(capsys, tmp_path, ["--video", path, "--q", "x", "--model", model_dir, *SMALL])


def test_too_few_frames(model_dir, clip, tmp_path, capsys):
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", model_dir, "--nframes", "100", *SMALL])
    assert "frame" in err


def _copy(model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    return d


def _set_config(d, **kw):
    j = json.loads((d / "config.json").read_text())
    j.update(kw)
    (d / "config.json").write_text(json.dumps(j))


def _plain_tokenizer(d):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(d / "tokenizer.json"))


BAD_MODELS = {
    "missing model dir": (lambda d: shutil.rmtree(d), "not found"),
    "missing shard": (lambda d: os.remove(d / "model-00002-of-00003.safetensors"), "shard"),
    "other model type": (lambda d: _set_config(d, model_type="qwen2_vl"), "model_type"),
    "tokenizer without vision tokens": (_plain_tokenizer, "video_pad"),
    "no tokenizer": (lambda d: os.remove(d / "tokenizer.json"), "tokenizer"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model(case, model_dir, clip, tmp_path, capsys):
    d = _copy(model_dir, tmp_path)
    breaker, words = BAD_MODELS[case]
    breaker(d)
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", str(d), *SMALL])
    assert words in err, err


@pytest.mark.parametrize("flags", [["--mode", "nonsense"], ["--dtype", "float8"], ["--device", "tpu"], ["--temperature", "-1"],
                                   ["--top-p", "0"], ["--max-new-tokens", "0"], ["--fps", "abc"], ["--bogus-flag", "1"]])
def test_bad_flags(flags, model_dir, clip, tmp_path, capsys):
    _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", model_dir, *SMALL, *flags])
