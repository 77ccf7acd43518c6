"""The CLI end to end on a tiny checkpoint and synthetic clips, and every bad input: one line on stderr, exit 2,
no traceback, no JSON file left behind."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from clips import write_audio_only, write_clip, write_empty_video
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


def _no_frames(tmp_path, clip):  # (a muxer given no packet at all writes no file: an audio packet makes one)
    return write_empty_video(str(tmp_path / "empty.mkv"))


def _text_file(tmp_path, clip):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    return str(p)


def _audio(tmp_path, clip):
    p = str(tmp_path / "sound.wav")
    write_audio_only(p)
    return p


def _bad(capsys, tmp_path, argv):
    out = tmp_path / "out.json"
    assert R.main([*argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vreason: error:") and "Traceback" not in err, err
    assert not out.exists() and not any(p.name.startswith("out.json") for p in tmp_path.iterdir())
    return err


def _thin(tmp_path, clip):  # 600x20: under the SMALL pixel cap, shrinking rounds the short side down to 0
    return write_clip(str(tmp_path / "thin.mp4"), n_frames=8, width=600, height=20, fps=4)


BAD_VIDEOS = {  # name: (make the path, what the one line says)
    "missing video": (lambda tmp, clip: str(tmp / "nope.mp4"), "video not found"),
    "not a video": (_text_file, "cannot read video"),
    "truncated video": (_truncated, "cannot read video"),
    "no decodable frames": (_no_frames, "no decodable video frames"),
    "audio only": (_audio, "no video stream"),
    "directory": (lambda tmp, clip: str(tmp), "video path is a directory"),
    "device": (lambda tmp, clip: "/dev/zero", "video is not a regular file: /dev/zero (a pipe or device; it is decoded twice: "
                                              "save it to a file)"),
    "frames shrunk to nothing": (_thin, "a limit of 12544 pixels per frame shrinks 600x20 frames to nothing (a side under 28 "
                                        "pixels); raise --max-pixels / --total-pixels"),
}


@pytest.mark.parametrize("case", BAD_VIDEOS)
def test_bad_video(case, model_dir, clip, tmp_path, capsys):
    make, words = BAD_VIDEOS[case]
    err = _bad(capsys, tmp_path, ["--video", make(tmp_path, clip), "--q", "x", "--model", model_dir, *SMALL])
    assert words in err, err


def test_fifo_video_is_refused_not_read(model_dir, tmp_path):
    """A FIFO with no writer would block the first open forever, and a stream cannot be decoded twice: refused at
    once. In a subprocess with a timeout, so that a regression fails instead of hanging the suite."""
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "vreason.py"), "--video", str(fifo), "--q", "x", "--model", model_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == (f"vreason: error: video is not a regular file: {fifo} (a pipe or device; it is "
                                              f"decoded twice: save it to a file)\n"), r.stderr


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


def _nan_weights(d):  # the final norm's weight NaN: every logit NaN, from the first token on
    from safetensors.torch import load_file, save_file

    shard = d / json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"]
    tensors = load_file(shard)
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})


BAD_MODELS = {
    "missing model dir": (lambda d: shutil.rmtree(d), "not found"),
    "missing shard": (lambda d: os.remove(d / "model-00002-of-00003.safetensors"), "shard"),
    "other model type": (lambda d: _set_config(d, model_type="qwen2_vl"), "model_type"),
    "tokenizer without vision tokens": (_plain_tokenizer, "video_pad"),
    "no tokenizer": (lambda d: os.remove(d / "tokenizer.json"), "tokenizer"),
    "NaN weights": (_nan_weights, "non-finite logits at generated token 0 (NaN/inf weights, float16 overflow, too large a --lr)"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model(case, model_dir, clip, tmp_path, capsys):
    d = _copy(model_dir, tmp_path)
    breaker, words = BAD_MODELS[case]
    breaker(d)
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", str(d), *SMALL])
    assert words in err, err


# Every flag class: argparse's own errors, then each range rule of check_args (NaN and infinities included), before
# anything is loaded. The expected line is exact; "..." ends a prefix (argparse quotes choices differently by version).
BAD_FLAGS = {
    "unknown mode": (["--mode", "nonsense"], "argument --mode: invalid choice: 'nonsense' (choose from ..."),
    "unknown dtype": (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8' (choose from ..."),
    "unknown device": (["--device", "tpu"], "argument --device: invalid choice: 'tpu' (choose from ..."),
    "not a number": (["--fps", "abc"], "argument --fps: invalid float value: 'abc'"),
    "unknown flag": (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag 1"),
    "compare without a method": (["--compare"], "--compare runs the baseline next to --mode vreason or lite; pick one of those"),
    "lr inf": (["--lr", "inf"], "argument --lr: invalid value inf (must be a finite number >= 0)"),
    "lr 1e999": (["--lr", "1e999"], "argument --lr: invalid value inf (must be a finite number >= 0)"),
    "lr nan": (["--lr", "nan"], "argument --lr: invalid value nan (must be a finite number >= 0)"),
    "fps inf": (["--fps", "inf"], "argument --fps: invalid value inf (must be a finite number > 0)"),
    "fps nan": (["--fps", "nan"], "argument --fps: invalid value nan (must be a finite number > 0)"),
    "fps 0": (["--fps", "0"], "argument --fps: invalid value 0.0 (must be a finite number > 0)"),
    "temperature inf": (["--temperature", "inf"], "argument --temperature: invalid value inf (must be 0 (greedy) or a finite number >= 1e-06)"),
    "temperature -1": (["--temperature", "-1"], "argument --temperature: invalid value -1.0 (must be 0 (greedy) or a finite number >= 1e-06)"),
    "temperature 1e-300": (["--temperature", "1e-300"], "argument --temperature: invalid value 1e-300 (must be 0 (greedy) or a finite number >= 1e-06)"),
    "top-p nan": (["--top-p", "nan"], "argument --top-p: invalid value nan (must be a number in (0, 1])"),
    "top-p 0": (["--top-p", "0"], "argument --top-p: invalid value 0.0 (must be a number in (0, 1])"),
    "repetition-penalty inf": (["--repetition-penalty", "inf"], "argument --repetition-penalty: invalid value inf (must be a finite number >= 1e-06)"),
    "repetition-penalty 0": (["--repetition-penalty", "0"], "argument --repetition-penalty: invalid value 0.0 (must be a finite number >= 1e-06)"),
    "beta nan": (["--beta", "nan"], "argument --beta: invalid value nan (must be a number in [0, 1))"),
    "beta 1": (["--beta", "1"], "argument --beta: invalid value 1.0 (must be a number in [0, 1))"),
    "prune-ratio nan": (["--prune-ratio", "nan"], "argument --prune-ratio: invalid value nan (must be a number in [0, 1))"),
    "prune-ratio 1": (["--prune-ratio", "1"], "argument --prune-ratio: invalid value 1.0 (must be a number in [0, 1))"),
    "seed -1": (["--seed", "-1"], "argument --seed: invalid value -1 (must be an integer from 0 to 2**64-1)"),
    "seed 2**64": (["--seed", str(2**64)], f"argument --seed: invalid value {2**64} (must be an integer from 0 to 2**64-1)"),
    "max-new-tokens 0": (["--max-new-tokens", "0"], "argument --max-new-tokens: invalid value 0 (must be an integer from 1 to 262144)"),
    "max-new-tokens past positions": (["--max-new-tokens", "262145"],
                                      "argument --max-new-tokens: invalid value 262145 (must be an integer from 1 to 262144)"),
    "update-every 0": (["--update-every", "0"], "argument --update-every: invalid value 0 (must be an integer >= 1)"),
    "steps -1": (["--steps", "-1"], "argument --steps: invalid value -1 (must be an integer >= 0)"),
    "nframes 1": (["--nframes", "1"], "argument --nframes: invalid value 1 (must be an integer >= 2)"),
    "max-frames 1": (["--max-frames", "1"], "argument --max-frames: invalid value 1 (must be an integer >= 2)"),
    "max-pixels -1": (["--max-pixels", "-1"], "argument --max-pixels: invalid value -1 (must be an integer >= 784, one 28x28 block)"),
    "max-pixels 100": (["--max-pixels", "100"], "argument --max-pixels: invalid value 100 (must be an integer >= 784, one 28x28 block)"),
    "min-pixels 0": (["--min-pixels", "0"], "argument --min-pixels: invalid value 0 (must be an integer >= 784, one 28x28 block)"),
    "total-pixels 1": (["--total-pixels", "1"], "argument --total-pixels: invalid value 1 (must be an integer >= 784, one 28x28 block)"),
    "min above max": (["--min-pixels", "900000", "--max-pixels", "1000"], "--min-pixels 900000 is above --max-pixels 1000"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flags(case, model_dir, clip, tmp_path, capsys):
    flags, message = BAD_FLAGS[case]
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", model_dir, *SMALL, *flags])
    assert err.startswith(f"vreason: error: {message[:-3]}") if message.endswith("...") else err == f"vreason: error: {message}"
