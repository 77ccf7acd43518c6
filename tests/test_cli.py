"""The CLI end to end on a tiny checkpoint and synthetic clips, and every bad input: one line on stderr, exit 2,
no traceback, no JSON file left behind."""
import errno
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading

import pytest
import torch
from clips import write_audio_only, write_clip, write_empty_video
from conftest import ROOT

import cli as C
import qwen25vl

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


def strict(text):  # json.loads that refuses NaN / Infinity, which Python's json writes and reads by default
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_cli_end_to_end(model_dir, clip, tmp_path):
    """`python vreason.py ...` as a user runs it: streams text, prints stats, writes a complete, strict JSON record.
    stdout is redirected to a file and --trace names /dev/stdout: the trace joins that stream (the text then streams
    to stderr) and the file is written through, never replaced."""
    out, log = tmp_path / "run.json", tmp_path / "stdout.log"
    with open(log, "w") as f:
        inode = os.fstat(f.fileno()).st_ino
        r = subprocess.run([sys.executable, os.path.join(ROOT, "vreason.py"), "--video", clip, "--q", "What happens?",
                            "--model", model_dir, "--json", str(out), "--trace", "/dev/stdout", *SMALL],
                           stdout=f, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = strict(out.read_text())
    assert len(rec["token_ids"]) == len(rec["entropies"]) == 8
    assert all(e >= 0 for e in rec["entropies"])
    v = rec["video"]
    assert v["frame_indices"] == [0, 5, 9, 14, 18, 23]  # 3 s at 8 fps, sampled at 2 fps: linspace(0, 23, 6).round()
    assert rec["video_tokens"] == v["grid_thw"][0] * v["grid_thw"][1] * v["grid_thw"][2] // 4
    assert rec["prompt_tokens"] == rec["video_tokens"] + 21 + 3  # 21 chat-template tokens + "What happens?"
    for key in ("text", "model", "dtype", "device", "mode", "timings", "settings"):
        assert key in rec
    assert rec["settings"]["max_new_tokens"] == 8 and rec["settings"]["temperature"] == 0.0
    assert rec["text"] in r.stderr  # streamed
    assert "tok/s" in r.stderr and "peak memory" in r.stderr
    assert os.stat(log).st_ino == inode and [strict(x)["token"] for x in log.read_text().splitlines()] == rec["token_ids"]


def test_readme_first_command(model_dir, tmp_path, capsys, monkeypatch):
    """The README's first command runs as written, from the repository root, on the clip the repository ships
    (assets/clip.mp4, made by assets/make_clip.py), with the tiny checkpoint in place of the 7B one and 4 tokens."""
    line = next(x for x in open(os.path.join(ROOT, "README.md")) if x.lstrip().startswith("python vreason.py --video"))
    argv = shlex.split(line.split("python vreason.py", 1)[1])
    argv[argv.index("--model") + 1] = model_dir
    monkeypatch.chdir(ROOT)
    assert C.main([*argv, "--max-new-tokens", "4", "--json", str(tmp_path / "r.json")]) == 0
    rec = strict((tmp_path / "r.json").read_text())
    assert rec["video"]["path"] == "assets/clip.mp4" and rec["video"]["frames_decoded"] == 100 and len(rec["token_ids"]) == 4
    assert rec["question"] == "What happens after the ball is thrown?" and os.path.getsize("assets/clip.mp4") <= 500_000


def test_json_to_stdout_is_pure_json(model_dir, clip, capsys):
    assert C.main(["--video", clip, "--q", "Why?", "--model", model_dir, "--json", "-", *SMALL]) == 0
    out, err = capsys.readouterr()
    rec = strict(out)
    assert rec["text"] in err and rec["mode"] == "baseline"


def test_trace_to_stdout(model_dir, clip, capsys):
    assert C.main(["--video", clip, "--q", "Why?", "--model", model_dir, "--trace", "-", *SMALL]) == 0
    out, err = capsys.readouterr()
    steps = [strict(x) for x in out.splitlines()]
    assert len(steps) == 8 and "".join(x["text"] for x in steps) in err


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
    assert C.main([*argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vreason: error:") and "Traceback" not in err, err
    assert not out.exists() and not any(p.name.startswith(("out.json", ".vreason-")) for p in tmp_path.iterdir())
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


@pytest.fixture(scope="module")
def model_dirs(model_dir, qwen3, qwen_tokenizer_json, tmp_path_factory):
    """Both families' tiny checkpoints as the CLI takes them (three shards each, a real Qwen tokenizer)."""
    d = tmp_path_factory.mktemp("cli3") / "model"
    shutil.copytree(qwen3["dir"]["untied"], d)
    shutil.copy(qwen_tokenizer_json, d / "tokenizer.json")
    return {"qwen2_5_vl": model_dir, "qwen3_vl": str(d)}


def _copy(model_dir, tmp_path):
    """A copy to break. The shards are hard links (saves 80 MB a case): a breaker replaces a shard, never writes into
    it (see _replace), or it would break the original for every later test."""
    d = tmp_path / "m"
    shutil.copytree(model_dir, d, copy_function=lambda src, dst: (os.link if src.endswith(".safetensors") else shutil.copy)(src, dst))
    return d


def _replace(path, data):  # a new file in place of a (hard-linked) one
    os.remove(path)
    path.write_bytes(data)


def _edit(d, change, name="config.json"):  # change(j) edits the parsed JSON file in place
    j = json.loads((d / name).read_text())
    change(j)
    (d / name).write_text(json.dumps(j))


def _text(j):  # where the decoder's keys are: top level (Qwen2.5-VL) or text_config (Qwen3-VL)
    return j.get("text_config", j)


def _rope(j):
    return _text(j).get("rope_scaling") or j["rope_scaling"]


def _set_config(d, **kw):
    _edit(d, lambda j: j.update(kw))


def _set_text(d, **kw):
    _edit(d, lambda j: _text(j).update(kw))


def _set_vision(d, **kw):
    _edit(d, lambda j: j["vision_config"].update(kw))


def _rope_type(j, kind, **more):  # the rope dict's type (both its keys, where it has two: Qwen2.5-VL's), more keys
    rope = _rope(j)
    rope.update({k: kind for k in ("rope_type", "type") if k in rope or k == "rope_type"}, **more)


def _other_tokenizer(d):  # every Qwen VL special token, at another family's ids
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    tok.add_special_tokens(list(qwen25vl.FAMILY.special_tokens))  # ids 2, 3, ...: <|video_pad|> is 6
    tok.save(str(d / "tokenizer.json"))


def _plain_tokenizer(d):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(d / "tokenizer.json"))


def _nan_weights(d):  # the final norm's weight NaN: every logit NaN, from the first token on
    from safetensors.torch import load_file, save

    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    key = next(k for k in ("model.norm.weight", "model.language_model.norm.weight") if k in wm)
    tensors = load_file(d / wm[key])
    tensors[key][0] = float("nan")
    _replace(d / wm[key], save(tensors, metadata={"format": "pt"}))


def _truncate(d, name="model-00002-of-00003.safetensors"):
    _replace(d / name, (d / name).read_bytes()[:1000])


def _config_dir(d):  # unreadable: root reads through chmod 000, but nobody reads a directory as a file
    os.remove(d / "config.json")
    os.mkdir(d / "config.json")


def _first_shard_to(name):
    return lambda d: _edit(d, lambda j: j["weight_map"].update({next(iter(j["weight_map"])): name}),
                           "model.safetensors.index.json")


Q25, Q3 = "qwen2_5_vl", "qwen3_vl"
# The model directory, as each family gets it wrong: case -> (break the copy d, the exact line after "vreason: error: "
# with {d} the directory, {t} where the decoder's keys are (Qwen3-VL: "text_config."), {fam} and {patch} the family's
# name and patch size; "..." ends a prefix; the families it applies to). Every one stops before the weights are read,
# but the shard contents (truncated, NaN), which stop when they are.
BAD_MODEL_DIRS = {
    "missing model dir": (lambda d: shutil.rmtree(d), "model directory not found: {d}"),
    "model dir a file": (lambda d: shutil.rmtree(d) or d.write_text("{}"),
                         "--model {d} is a file: pass the checkpoint's directory (config.json, *.safetensors)"),
    "no config.json": (lambda d: os.remove(d / "config.json"), "{d}: no config.json (not a Hugging Face model directory)"),
    "config.json unreadable": (_config_dir, "cannot read {d}/config.json: Is a directory"),
    "config.json not JSON": (lambda d: (d / "config.json").write_text('{"model_type": '),
                             "{d}/config.json: invalid JSON at line 1 column 16 (Expecting value)"),
    "config.json not UTF-8": (lambda d: (d / "config.json").write_bytes(b'{"\xff": 1}'), "{d}/config.json: not UTF-8 text (byte 2)"),
    "config.json a JSON list": (lambda d: (d / "config.json").write_text("[1, 2]"),
                                "{d}/config.json: expected a JSON object (a Hugging Face config.json), found a JSON list"),
    "another model type": (lambda d: _set_config(d, model_type="qwen2_vl"),
                           "{d}/config.json: model_type is 'qwen2_vl'; supported: 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5' (Qwen2.5-VL, Qwen3-VL, Qwen3.5)"),
    "a size as a string": (lambda d: _set_text(d, hidden_size="64"),
                           "{d}/config.json: {t}hidden_size is '64', expected a positive integer below 2**31"),
    "a size of 0": (lambda d: _set_text(d, num_hidden_layers=0),
                    "{d}/config.json: {t}num_hidden_layers is 0, expected a positive integer below 2**31"),
    "a negative size": (lambda d: _set_text(d, intermediate_size=-128),
                        "{d}/config.json: {t}intermediate_size is -128, expected a positive integer below 2**31"),
    "a size as a bool": (lambda d: _set_text(d, num_key_value_heads=True),
                         "{d}/config.json: {t}num_key_value_heads is True, expected a positive integer below 2**31"),
    "a size as a float": (lambda d: _set_text(d, vocab_size=151936.0),
                          "{d}/config.json: {t}vocab_size is 151936.0, expected a positive integer below 2**31"),
    "a size of 1e30": (lambda d: _set_vision(d, depth=10**30),
                       "{d}/config.json: vision_config.depth is 1000000000000000000000000000000, expected a positive "
                       "integer below 2**31"),
    "a NaN": (lambda d: _set_text(d, rms_norm_eps=float("nan")), "{d}/config.json: {t}rms_norm_eps is nan, expected a positive number"),
    "a flag as a string": (lambda d: _set_text(d, tie_word_embeddings="no"),
                           "{d}/config.json: {t}tie_word_embeddings is 'no', expected true or false"),
    "a missing key": (lambda d: _edit(d, lambda j: _text(j).pop("num_attention_heads")), "{d}/config.json: missing {t}num_attention_heads"),
    "no vision_config": (lambda d: _edit(d, lambda j: j.pop("vision_config")), "{d}/config.json: missing vision_config.out_hidden_size"),
    "text_config a list": (lambda d: _set_config(d, text_config=[64]), "{d}/config.json: text_config is list, expected an object"),
    "mrope_section of strings": (lambda d: _edit(d, lambda j: _rope(j).update(mrope_section=["16", "24", "24"])),
                                 "{d}/config.json: {t}rope_scaling.mrope_section is ['16', '24', '24'], expected a list of 3 "
                                 "non-negative integers"),
    "mrope_section not head_dim/2": (lambda d: _edit(d, lambda j: _rope(j).update(mrope_section=[1, 1, 1])),
                                     "{d}/config.json: mrope_section [1, 1, 1] sums to 3, not head_dim/2 = ..."),
    "heads not a multiple of kv heads": (lambda d: _set_text(d, num_key_value_heads=3),
                                         "{d}/config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    "hidden not a multiple of heads": (lambda d: _set_text(d, num_attention_heads=3, num_key_value_heads=1),
                                       "{d}/config.json: hidden_size 64 is not a multiple of num_attention_heads 3", [Q25]),
    "a token id outside the vocabulary": (lambda d: _set_config(d, video_token_id=200000),
                                          "{d}/config.json: video_token_id 200000 is outside the vocabulary (151936)"),
    "vision heads": (lambda d: _set_vision(d, num_heads=3),
                     "{d}/config.json: vision_config.hidden_size 64 is not num_heads 3 x a head size divisible by 4"),
    "vision patch not the family's": (lambda d: _set_vision(d, patch_size=7),
                                      "{d}/config.json: vision_config.patch_size is 7; {fam}'s video preprocessing uses {patch}"),
    "vision merge not the family's": (lambda d: _set_vision(d, spatial_merge_size=3),
                                      "{d}/config.json: vision_config.spatial_merge_size is 3; {fam}'s video preprocessing uses 2"),
    "vision window under a token": (lambda d: _set_vision(d, window_size=10),
                                    "{d}/config.json: vision_config.window_size 10 is under one merged token (28 pixels)", [Q25]),
    "no weights": (lambda d: [os.remove(p) for p in d.glob("model*.safetensors*")],
                   "{d}: no model.safetensors or model.safetensors.index.json"),
    "index.json not JSON": (lambda d: (d / "model.safetensors.index.json").write_text("{"),
                            "{d}/model.safetensors.index.json: invalid JSON at line 1 column 2 (Expecting property name "
                            "enclosed in double quotes)"),
    "index.json not an object": (lambda d: (d / "model.safetensors.index.json").write_text('"model.safetensors"'),
                                 "{d}/model.safetensors.index.json: expected a JSON object, found a JSON str"),
    "index.json without weight_map": (lambda d: (d / "model.safetensors.index.json").write_text('{"metadata": {}}'),
                                      "{d}/model.safetensors.index.json: expected a non-empty weight_map of tensor name -> "
                                      "shard file"),
    "weight_map naming a missing shard": (_first_shard_to("model-00009-of-00009.safetensors"),
                                          "{d}: missing weight shard(s): model-00009-of-00009.safetensors"),
    "weight_map naming a file outside": (_first_shard_to("../../m/model-00001-of-00003.safetensors"),
                                         "{d}/model.safetensors.index.json: weight_map names "
                                         "'../../m/model-00001-of-00003.safetensors', not a file inside {d}"),
    "a shard missing": (lambda d: os.remove(d / "model-00002-of-00003.safetensors"),
                        "{d}: missing weight shard(s): model-00002-of-00003.safetensors"),
    "a truncated shard": (_truncate, "{d}/model-00002-of-00003.safetensors: cannot read safetensors (SafetensorError: ..."),
    "NaN weights": (_nan_weights, "non-finite logits at generated token 0 (NaN/inf weights, float16 overflow, too large a --lr)"),
    "tokenizer without vision tokens": (_plain_tokenizer, "{d}/tokenizer.json is not a {fam} tokenizer: missing ..."),
    "no tokenizer": (lambda d: os.remove(d / "tokenizer.json"), "tokenizer.json not found in {d}"),
    "tokenizer.json a directory": (lambda d: os.remove(d / "tokenizer.json") or os.mkdir(d / "tokenizer.json"),
                                   "cannot read {d}/tokenizer.json: Is a directory"),
    "a shard a directory": (lambda d: os.remove(d / "model-00002-of-00003.safetensors") or
                            os.mkdir(d / "model-00002-of-00003.safetensors"),
                            "cannot read weight shard {d}/model-00002-of-00003.safetensors: Is a directory"),
    # config.json's special-token ids against the tokenizer, before any position is computed
    "video and image ids swapped": (lambda d: _set_config(d, video_token_id=151655, image_token_id=151656),
                                    "{d}/config.json: video_token_id is 151655, which {d}/tokenizer.json names "
                                    "<|image_pad|> (<|video_pad|> is 151656 there): the config and the tokenizer are not "
                                    "of one checkpoint"),
    "vision start naming another token": (lambda d: _set_config(d, vision_start_token_id=151653),
                                          "{d}/config.json: vision_start_token_id is 151653, which {d}/tokenizer.json "
                                          "names <|vision_end|> (<|vision_start|> is 151652 there): the config and the "
                                          "tokenizer are not of one checkpoint"),
    "a tokenizer of another family": (_other_tokenizer,
                                      "{d}/config.json: video_token_id is 151656, which {d}/tokenizer.json does not "
                                      "have (<|video_pad|> is 6 there): the config and the tokenizer are not of one "
                                      "checkpoint"),
    # the chat template (read for Qwen3-VL, whose Thinking releases it tells apart; Qwen2.5-VL's prompt is fixed)
    "chat_template.jinja not UTF-8": (lambda d: (d / "chat_template.jinja").write_bytes(b"{{ '\xff' }}"),
                                      "{d}/chat_template.jinja: not UTF-8 text (byte 4)", [Q3]),
    "chat_template.jinja unreadable": (lambda d: os.mkdir(d / "chat_template.jinja"),
                                       "cannot read {d}/chat_template.jinja: Is a directory", [Q3]),
    "named templates without a default": (lambda d: (d / "chat_template.json").write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}]})),
        "{d}/chat_template.json: chat_template names no 'default' template (it has 'tool_use'), which transformers "
        "refuses too", [Q3]),
    # config keys that would change the computation and are not implemented: refused, never ignored (PORTING.md)
    **{f"rope_type {kind}": (lambda d, kind=kind: _edit(d, lambda j: _rope_type(j, kind, factor=2.0)),
                             f"{{d}}/config.json: {{t}}rope_scaling.rope_type '{kind}' is not implemented (implemented: "
                             f"'default' M-RoPE, 'yarn')") for kind in ("linear", "dynamic", "longrope", "llama3")},
    "type and rope_type disagree": (lambda d: _edit(d, lambda j: _rope(j).update(type="yarn", factor=4.0)),
                                    "{d}/config.json: {t}rope_scaling.type 'yarn' and {t}rope_scaling.rope_type 'default' "
                                    "disagree: give one"),
    "a YaRN factor under rope_type default": (lambda d: _edit(d, lambda j: _rope(j).update(factor=4.0)),
                                              "{d}/config.json: {t}rope_scaling.factor is not a key of rope_type 'default' "
                                              "implemented here; refused rather than ignored"),
    "a key YaRN does not take": (lambda d: _edit(d, lambda j: _rope_type(j, "yarn", factor=4.0, low_freq_factor=1.0)),
                                 "{d}/config.json: {t}rope_scaling.low_freq_factor is not a key of rope_type 'yarn' "
                                 "implemented here; refused rather than ignored"),
    "YaRN without a factor": (lambda d: _edit(d, lambda j: _rope_type(j, "yarn")), "{d}/config.json: missing {t}rope_scaling.factor"),
    "YaRN factor a string": (lambda d: _edit(d, lambda j: _rope_type(j, "yarn", factor="4")),
                             "{d}/config.json: {t}rope_scaling.factor is '4', expected a positive number"),
    "YaRN truncate false on Qwen2.5-VL": (lambda d: _edit(d, lambda j: _rope_type(j, "yarn", factor=4.0, truncate=False)),
                                          "{d}/config.json: rope_scaling.truncate is false, which Qwen2.5-VL's reference "
                                          "(transformers 4.51.3) does not read: it always rounds YaRN's ramp", [Q25]),
    "interleaved M-RoPE on Qwen2.5-VL": (lambda d: _edit(d, lambda j: _rope(j).update(mrope_interleaved=True)),
                                         "{d}/config.json: rope_scaling.mrope_interleaved is true, but Qwen2.5-VL's M-RoPE "
                                         "is sectioned", [Q25]),
    "sectioned M-RoPE on Qwen3-VL": (lambda d: _edit(d, lambda j: _rope(j).update(mrope_interleaved=False)),
                                     "{d}/config.json: text_config.rope_scaling.mrope_interleaved is false, but Qwen3-VL's "
                                     "M-RoPE is interleaved", [Q3]),
    "rope dicts that differ by level": (lambda d: _set_config(d, rope_scaling={"rope_type": "yarn", "factor": 3.0}),
                                        "{d}/config.json: rope_scaling and text_config.rope_scaling differ; which one "
                                        "applies depends on the transformers version: keep one", [Q3]),
    "sliding-window attention": (lambda d: _set_text(d, use_sliding_window=True),
                                 "{d}/config.json: {t}use_sliding_window is true: sliding-window attention is not implemented"),
    "a sliding layer": (lambda d: _set_text(d, layer_types=["full_attention", "sliding_attention"]),
                        "{d}/config.json: {t}layer_types names a 'sliding_attention' layer: sliding-window attention is "
                        "not implemented"),
    # (partial rotary is implemented, for Qwen3.5: here the sections no longer fit the dims it turns)
    "a partial rotary": (lambda d: _set_text(d, partial_rotary_factor=0.5), "{d}/config.json: mrope_section ..."),
    "a partial rotary in the rope dict": (lambda d: _edit(d, lambda j: _rope(j).update(partial_rotary_factor=0.25)),
                                          "{d}/config.json: mrope_section ..."),
    "a quantized checkpoint": (lambda d: _set_config(d, quantization_config={"quant_method": "awq", "bits": 4}),
                               "{d}/config.json: quantization_config (awq): quantized checkpoints are not supported; use "
                               "the unquantized release"),
    "Qwen2.5-VL without q/k/v biases": (lambda d: _set_config(d, attention_bias=False),
                                        "{d}/config.json: attention_bias false does not fit Qwen2.5-VL, whose attention has "
                                        "q/k/v biases and heads of hidden_size / num_attention_heads", [Q25]),
    "Qwen2.5-VL heads of another size": (lambda d: _edit(d, lambda j: j.update(head_dim=32) or
                                                         j["rope_scaling"].update(mrope_section=[4, 6, 6])),
                                         "{d}/config.json: head_dim 32 does not fit Qwen2.5-VL, whose attention has q/k/v "
                                         "biases and heads of hidden_size / num_attention_heads", [Q25]),
}
MODEL_DIR_CASES = [(case, fam) for case, v in BAD_MODEL_DIRS.items() for fam in (v[2] if len(v) > 2 else [Q25, Q3])]


@pytest.mark.parametrize("case,family", MODEL_DIR_CASES)
def test_bad_model_dir(case, family, model_dirs, clip, tmp_path, capsys):
    breaker, message = BAD_MODEL_DIRS[case][:2]
    d = _copy(model_dirs[family], tmp_path)
    breaker(d)
    fam = C.M.family(family).FAMILY
    message = message.format(d=d, t="text_config." if family == Q3 else "", fam=fam.name, patch=fam.patch)
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", str(d), *SMALL])
    assert err.startswith(f"vreason: error: {message[:-3]}") if message.endswith("...") else err == f"vreason: error: {message}"


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model-00002-of-00003.safetensors"])
def test_a_file_without_read_permission_says_so(name, model_dirs, clip, tmp_path, capsys, monkeypatch):
    """A file of the model directory that cannot be read is reported as what it is (it used to be "No such file or
    directory" for a shard). chmod 000, and, since root reads through that, EACCES where the file is opened."""
    import builtins

    d = _copy(model_dirs[Q25], tmp_path)
    _replace(d / name, (d / name).read_bytes())  # (its own inode, not the shared hard link)
    os.chmod(d / name, 0)
    real_open, real_os_open = builtins.open, os.open

    def denied(p):  # EACCES for that one file, as the kernel answers a user without the permission
        if isinstance(p, (str, os.PathLike)) and os.path.realpath(p) == os.path.realpath(d / name):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), p)

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: denied(p) or real_open(p, *a, **k))
    monkeypatch.setattr(os, "open", lambda p, *a, **k: denied(p) or real_os_open(p, *a, **k))
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", str(d), *SMALL])
    what = "weight shard " if name.endswith(".safetensors") else ""
    assert err == f"vreason: error: cannot read {what}{d / name}: Permission denied"


@pytest.mark.parametrize("name,family", [("config.json", Q25), ("tokenizer.json", Q25), ("chat_template.jinja", Q3),
                                         ("model-00002-of-00003.safetensors", Q25)])
def test_a_fifo_in_the_model_directory_is_refused_not_read(name, family, model_dirs, clip, tmp_path, capsys):
    """A FIFO where a file of the checkpoint goes: opening it would wait for a writer forever. Refused instead."""
    d = _copy(model_dirs[family], tmp_path)
    if os.path.lexists(d / name):
        os.remove(d / name)
    os.mkfifo(d / name)
    out = tmp_path / "out.json"
    argv = ["--video", clip, "--q", "x", "--model", str(d), *SMALL, "--json", str(out)]
    assert _main_or_hang(argv, lambda: open(d / name, "w").close()) == 2
    what = "weight shard " if name.endswith(".safetensors") else ""
    assert capsys.readouterr().err == f"vreason: error: cannot read {what}{d / name}: not a regular file\n"
    assert not out.exists()


# ----------------------------------------------------------------------------- the request against the checkpoint and the machine

def _free(monkeypatch, gb):  # every device reports this much free memory
    monkeypatch.setattr(C.M, "free_memory", lambda dev: gb * 1e9)


@pytest.mark.parametrize("family", [Q25, Q3])
def test_memory_fits_or_stops_before_loading(family, model_dirs, clip, tmp_path, capsys, monkeypatch):
    """The same request with room to spare runs; with less free than it needs in float32 but enough in bfloat16 it
    stops before a weight is read, naming the need, what is free, and the ways out; with less still, bfloat16 does
    not fit either and the line says so."""
    d, cpu = model_dirs[family], torch.device("cpu")
    argv = ["--video", clip, "--q", "x", "--model", d, "--device", "cpu", *SMALL]
    _free(monkeypatch, 1000)
    assert C.main([*argv, "--quiet"]) == 0
    loads = []
    monkeypatch.setattr(C.M, "load_model", lambda *a, **k: loads.append(a))
    skeleton = C.M.skeleton(d)
    video = C.V.load_video(clip, skeleton.family, min_pixels=3136, max_pixels=12544)
    prompt = len(skeleton.prompt(C.V.load_tokenizer(d, skeleton.family), "x", video)[0])
    full, half = (C.M.memory_need(skeleton, cpu, dt, None, prompt, 8)[cpu] for dt in (torch.float32, torch.bfloat16))
    gb = lambda n: f"{n / 1e9:.1f}"
    for free, fits in ((sum(half) / 1e9 + 0.001, ": fits"), (sum(half) / 1e9 - 0.001, "")):
        _free(monkeypatch, free)
        err = _bad(capsys, tmp_path, argv)
        assert err == (f"vreason: error: not enough memory on cpu: float32 weights {gb(full[0])} GB + KV cache {gb(full[1])} GB"
                       f" + margin {gb(full[2])} GB = {gb(sum(full))} GB, {gb(free * 1e9)} GB free; options: --dtype bfloat16 "
                       f"(needs {gb(sum(half))} GB{fits}), a smaller checkpoint (e.g. --model Qwen/Qwen3-VL-2B-Instruct), "
                       f"--device-map auto on several GPUs")
    assert not loads


def test_readme_command_on_a_24gb_cpu_machine(tmp_path, qwen_tokenizer_json, capsys, monkeypatch):
    """The README's main command as written (--model Qwen/Qwen2.5-VL-7B-Instruct, float32: the CPU default) on a CPU
    machine with 24 GB (22 GB available): the Hub is asked for the config and tokenizer only, and the run stops
    before the weights' download, saying what to pass; with --dtype bfloat16 it goes on to fetch the weights."""
    small = tmp_path / "hub"
    small.mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "data", "qwen2.5-vl-7b-instruct.config.json"), small / "config.json")
    shutil.copy(qwen_tokenizer_json, small / "tokenizer.json")
    asked = []

    def snapshot_download(name, allow_patterns, local_files_only=False):  # a Hub that has the small files cached
        asked.append((name, "*.safetensors" in allow_patterns))
        if "*.safetensors" in allow_patterns and not local_files_only:
            raise OSError("offline")
        return str(small)

    monkeypatch.setitem(sys.modules, "huggingface_hub", type(sys)("huggingface_hub"))
    monkeypatch.setattr(sys.modules["huggingface_hub"], "snapshot_download", snapshot_download, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _free(monkeypatch, 22)
    line = next(x for x in open(os.path.join(ROOT, "README.md")) if x.lstrip().startswith("python vreason.py --video"))
    argv = shlex.split(line.split("python vreason.py", 1)[1])
    monkeypatch.chdir(ROOT)
    err = _bad(capsys, tmp_path, argv)
    assert err == ("vreason: error: not enough memory on cpu: float32 weights 33.2 GB + KV cache 0.2 GB + margin 2.7 GB = "
                   "36.1 GB, 22.0 GB free; options: --dtype bfloat16 (needs 18.3 GB: fits), a smaller checkpoint (e.g. "
                   "--model Qwen/Qwen3-VL-2B-Instruct), --device-map auto on several GPUs")
    assert asked == [("Qwen/Qwen2.5-VL-7B-Instruct", False)]  # nothing of the 16 GB of weights was asked for
    assert C.main([*argv, "--dtype", "bfloat16"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "downloading Qwen/Qwen2.5-VL-7B-Instruct (weights) from the Hugging Face Hub ...",
        "vreason: error: cannot get Qwen/Qwen2.5-VL-7B-Instruct: OSError: offline; pass --model /path/to/a/downloaded/checkpoint"]
    assert [w for _, w in asked] == [False, False, True, True]  # the cache first, then the download


def test_hub_cache_without_huggingface_hub_takes_refs_main(model_dir, tmp_path, monkeypatch):
    """Without huggingface_hub, a Hub id resolves to the snapshot the cache's refs/main names (the revision
    huggingface_hub itself takes), not to whichever snapshot hash sorts last; no refs/main, no snapshot."""
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-3B-Instruct"
    for rev in ("0" * 40, "f" * 40):
        (repo / "snapshots" / rev).mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub -> ImportError
    with pytest.raises(C.M.ModelError, match="not a local directory nor in the Hugging Face cache"):
        C.resolve_model("Qwen/Qwen2.5-VL-3B-Instruct")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert C.resolve_model("Qwen/Qwen2.5-VL-3B-Instruct") == str(repo / "snapshots" / ("0" * 40))


@pytest.mark.parametrize("family,value,ok", [("qwen2_5_vl", 800, True), ("qwen3_vl", 800, False), ("qwen3_vl", 1024, True)])
def test_pixel_flags_are_checked_against_the_checkpoints_block(model_dirs, clip, tmp_path, capsys, family, value, ok):
    """--min-pixels below one block of the checkpoint's own family: 28x28 = 784 for Qwen2.5-VL, 32x32 = 1024 for
    Qwen3-VL."""
    argv = ["--video", clip, "--q", "x", "--model", model_dirs[family], "--min-pixels", str(value), "--max-pixels", "12544",
            "--max-new-tokens", "2", "--quiet"]
    if ok:
        assert C.main(argv) == 0
    else:
        assert _bad(capsys, tmp_path, argv) == ("vreason: error: argument --min-pixels: invalid value 800 (must be an "
                                                "integer >= 1024, one 32x32 block)")


@pytest.mark.parametrize("mode", ["baseline", "vreason"])
def test_prune_ratio_is_lites(model_dir, clip, tmp_path, capsys, mode):
    """--prune-ratio has one meaning in vreason.py and eval.py: Lite's ratio. With another mode it is refused, and the
    way to prune without the controller is named."""
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", model_dir, *SMALL, "--mode", mode, "--prune-ratio", "0.3"])
    assert err == (f"vreason: error: --prune-ratio is Lite's: use --mode lite (with --steps 0 to prune without the "
                   f"controller), not --mode {mode}")


def test_streamed_pieces_are_the_text(qwen_tokenizer_json):
    """The streamer decodes only what is new (linear in the answer's length), yet its pieces add up to the whole
    decode, byte for byte: multi-byte characters split over tokens are held back until complete, special tokens
    vanish."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(qwen_tokenizer_json)
    text = "Let me think: 3.14 ≈ π, 日本語のテキスト, emoji 🎉🐍 and <answer>B</answer>\n\nDone."
    ids = tok.encode(text).ids + [151645] + tok.encode(" 🎉 after").ids
    ids += torch.randint(0, 151000, (300,), generator=torch.Generator().manual_seed(0)).tolist()  # any bytes at all
    streamer, calls = C.Streamer(tok), []
    decode = tok.decode
    streamer.tok = type("Counting", (), {"decode": lambda self, x, **kw: calls.append(len(x)) or decode(x, **kw)})()
    pieces = [streamer.put(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert "" in pieces[: len(tok.encode(text).ids)]  # something was held back
    assert max(calls) <= 8  # never the whole answer


def test_answer_past_the_checkpoint_positions(model_dir, clip, tmp_path, capsys):
    """The prompt's last position + --max-new-tokens beyond max_position_embeddings (32768 for the tiny checkpoint)
    stops before a weight is read; a prompt that alone goes past them too."""
    argv = ["--video", clip, "--q", "x", "--model", model_dir, *SMALL]
    err = _bad(capsys, tmp_path, [*argv, "--max-new-tokens", "32760"])
    assert err == ("vreason: error: argument --max-new-tokens: invalid value 32760 (the prompt ends at position 26 of this "
                   "checkpoint's 32768 (max_position_embeddings): at most 32742)")
    d = _copy(model_dir, tmp_path)
    _set_config(d, max_position_embeddings=20)
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", str(d), *SMALL])
    assert err == ("vreason: error: the prompt ends at position 26, past this checkpoint's 20 positions "
                   "(max_position_embeddings): fewer or smaller frames (--max-frames, --fps, --max-pixels)")
    C.check_positions(26, 32742, 32768)  # the last new token fed at 32767: the last position there is


@pytest.mark.parametrize("family", [Q25, Q3])
def test_progress_and_where_the_time_went(family, model_dirs, clip, capsys, monkeypatch):
    """Steps past PROGRESS_AFTER seconds show progress on stderr (here every step: 0 s): a line per shard while loading,
    and lines while the video decodes (off a terminal, at most one every 5 s, and the last); the header and the stats
    line say where the time went, for both families."""
    monkeypatch.setattr(C, "PROGRESS_AFTER", 0)
    assert C.main(["--video", clip, "--q", "x", "--model", model_dirs[family], *SMALL]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["reading video (2 passes): 1 frames", "reading video (2 passes): 48/48 frames",
                                "loading weights: 1/3 shards", "loading weights: 2/3 shards", "loading weights: 3/3 shards"]
    assert re.search(r"\| video read \d+\.\d\ds, model load \d+\.\d\ds, vision \d+\.\d\ds\n", out), out
    assert re.search(r"-- baseline: 8 tokens \| prefill \d+\.\d\ds decode \d+\.\d\ds \(", out), out


def test_progress_on_a_terminal():
    """On a terminal: one line rewritten in place (at most 10 times a second), ended when the step ends."""
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    with C.Progress("loading weights", "shards", stream=tty) as bar:
        bar.t0 -= C.PROGRESS_AFTER  # as if the step had run that long
        for i in range(1, 4):
            bar(i, 3)
            bar.last -= 1  # as if a second passed before the next shard
    assert tty.getvalue() == "".join(f"\rloading weights: {i}/3 shards\033[K" for i in range(1, 4)) + "\n"
    quick = Tty()
    with C.Progress("reading video", "frames", stream=quick) as bar:
        bar(1, None)
    assert quick.getvalue() == ""  # a step within PROGRESS_AFTER shows nothing


def test_broken_pipe_exits_quietly(model_dir, clip):
    """`python vreason.py ... | head -1`: the reader gone, the run stops without a traceback, with the status of a
    program killed by SIGPIPE (141). Here the reader is gone before the first line."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "vreason.py"), "--video", clip, "--q", "x", "--model", model_dir,
                          *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141 and err == "", err


# Every flag class: argparse's own errors, then each range rule of check_args (NaN and infinities included), before
# anything is loaded. The expected line is exact; "..." ends a prefix (argparse quotes choices differently by version).
BAD_FLAGS = {
    "unknown mode": (["--mode", "nonsense"], "argument --mode: invalid choice: 'nonsense' (choose from ..."),
    "unknown dtype": (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8' (choose from ..."),
    "unknown device": (["--device", "tpu"], "argument --device: invalid choice: 'tpu' (choose from ..."),
    "not a number": (["--fps", "abc"], "argument --fps: invalid float value: 'abc'"),
    "unknown flag": (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag 1"),
    "compare without a method": (["--compare"], "--compare runs the baseline next to --mode vreason or lite; pick one of those"),
    "lr inf": (["--lr", "inf"], "argument --lr: invalid value inf (must be a number from 0 to 1e+06)"),
    "lr 1e999": (["--lr", "1e999"], "argument --lr: invalid value inf (must be a number from 0 to 1e+06)"),
    "lr nan": (["--lr", "nan"], "argument --lr: invalid value nan (must be a number from 0 to 1e+06)"),
    "lr 1e38": (["--lr", "1e38"], "argument --lr: invalid value 1e+38 (must be a number from 0 to 1e+06)"),
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


# Text the user types. A vision token in --q or --system would open, close or fill a visual block the positions do
# not have; bytes that are not UTF-8 reach Python as lone surrogates (os.fsdecode's surrogateescape), which no
# tokenizer takes and no UTF-8 record can hold. Each refused before anything is read: case -> (flags over the good
# ones, or a callable tmp_path -> flags; the exact line after "vreason: error: ").
LATIN1 = os.fsdecode(b"caf\xe9")  # 'caf\udce9', as Python hands over a Latin-1 argument


def _latin1_video(t):  # a real clip under a Latin-1 file name: the name, not the file, is the problem
    path = os.path.join(os.fsdecode(bytes(t)), os.fsdecode(b"clip\xe9.mp4"))
    write_clip(path, n_frames=8, width=64, height=48, fps=4)
    return ["--video", path]


BAD_TEXT = {
    "an image block in --q": (["--q", "What is in <|vision_start|><|image_pad|><|vision_end|>?"],
                              "argument --q: holds <|vision_start|>, a vision token, which only the prompt itself places"),
    "an image pad in --q": (["--q", "<|image_pad|>"],
                            "argument --q: holds <|image_pad|>, a vision token, which only the prompt itself places"),
    "a vision end in --q": (["--q", "the end <|vision_end|>"],
                            "argument --q: holds <|vision_end|>, a vision token, which only the prompt itself places"),
    "a vision pad in --q": (["--q", "<|vision_pad|>"],
                            "argument --q: holds <|vision_pad|>, a vision token, which only the prompt itself places"),
    "a video pad in --q": (["--q", "x <|video_pad|>"],
                           "argument --q: holds <|video_pad|>, a vision token, which only the prompt itself places"),
    "a vision start in --system": (["--system", "<|vision_start|>"],
                                   "argument --system: holds <|vision_start|>, a vision token, which only the prompt "
                                   "itself places"),
    "a video pad in --system": (["--system", "You see <|video_pad|>."],
                                "argument --system: holds <|video_pad|>, a vision token, which only the prompt itself places"),
    "a Latin-1 question": (["--q", LATIN1], "argument --q: byte 0xe9 is not UTF-8; pass UTF-8 text (a file: by a UTF-8 "
                                            "name; a symlink will do)"),
    "a Latin-1 system prompt, --flag=value": ([f"--system={LATIN1}"],
                                              "argument --system: byte 0xe9 is not UTF-8; pass UTF-8 text (a file: by a "
                                              "UTF-8 name; a symlink will do)"),
    "a Latin-1 video file name": (_latin1_video, "argument --video: byte 0xe9 is not UTF-8; pass UTF-8 text (a file: by a "
                                                 "UTF-8 name; a symlink will do)"),
    "a Latin-1 output name": (lambda t: ["--trace", os.path.join(str(t), LATIN1 + ".jsonl")],
                              "argument --trace: byte 0xe9 is not UTF-8; pass UTF-8 text (a file: by a UTF-8 name; a "
                              "symlink will do)"),
    "half a character (not from bytes)": (["--q", "\ud83d"], "argument --q: not valid Unicode; pass UTF-8 text (a file: "
                                                              "by a UTF-8 name; a symlink will do)"),
}


@pytest.mark.parametrize("case", BAD_TEXT)
def test_bad_text(case, model_dir, clip, tmp_path, capsys, monkeypatch):
    flags, message = BAD_TEXT[case]
    flags = flags(tmp_path) if callable(flags) else flags
    monkeypatch.setattr(C.M, "skeleton", lambda *a: pytest.fail("the checkpoint was read"))
    err = _bad(capsys, tmp_path, ["--video", clip, "--q", "x", "--model", model_dir, *SMALL, *flags])
    assert err == f"vreason: error: {message}"


# ----------------------------------------------------------------------------- outputs

def _read_only_dir(tmp_path):  # a directory we cannot create files in; root ignores mode bits, so /sys there
    d = tmp_path / "ro"
    d.mkdir(mode=0o555, exist_ok=True)
    return str(d) if not os.access(d, os.W_OK) else "/sys"


BAD_OUTPUTS = {  # name: tmp_path, clip -> (output flags, the exact message, "..." ending a prefix); refused before the run
    "no such directory": lambda t, c: (["--trace", f"{t}/no/t.jsonl"], f"output directory does not exist: {t}/no"),
    "onto a directory": lambda t, c: (["--json", str(t)], f"--json {t} is a directory"),
    "a directory to be": lambda t, c: (["--json", f"{t}/res/"], f"--json {t}/res/ is a directory"),
    "read-only directory": lambda t, c: (["--plot", f"{_read_only_dir(t)}/p.png"],
                                         f"cannot write --plot {_read_only_dir(t)}/p.png: ..."),
    "empty path": lambda t, c: (["--plot", ""], "argument --plot: empty path"),
    "two outputs, one file": lambda t, c: (["--json", f"{t}/r", "--trace", f"{t}/r"],
                                           f"--trace and --json name the same file ({t}/r)"),
    "two outputs on stdout": lambda t, c: (["--json", "-", "--trace", "-"], "--trace and --json name the same file (stdout)"),
    "onto the video": lambda t, c: (["--json", c], f"--json and --video name the same file ({c})"),
}


@pytest.mark.parametrize("case", BAD_OUTPUTS)
def test_bad_output(case, model_dir, clip, tmp_path, capsys):
    t = tmp_path.resolve()
    flags, message = BAD_OUTPUTS[case](t, os.path.realpath(clip))
    before = sorted(os.listdir(t))
    assert C.main(["--video", clip, "--q", "x", "--model", model_dir, *SMALL, *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"vreason: error: {message[:-3]}") if message.endswith("...") else err == f"vreason: error: {message}\n"
    assert sorted(os.listdir(t)) == before  # no file, no temp file
    assert os.path.getsize(clip) > 0


# Names the file system takes (NAME_MAX: 255 bytes) are taken: the atomic write's temp file is short whatever the name.
GOOD_OUTPUT_NAMES = {"250 bytes": "r" * 245 + ".json", "255 bytes": "r" * 250 + ".json",
                     "254 bytes of UTF-8": "é" * 124 + "r.json"}


@pytest.mark.parametrize("case", GOOD_OUTPUT_NAMES)
def test_every_name_the_file_system_takes_is_taken(case, model_dir, clip, tmp_path, capsys):
    name = GOOD_OUTPUT_NAMES[case]
    assert C.main(["--video", clip, "--q", "x", "--model", model_dir, *SMALL, "--quiet", "--json", str(tmp_path / name)]) == 0
    assert os.listdir(tmp_path) == [name] and len(strict((tmp_path / name).read_text())["token_ids"]) == 8


def test_an_output_onto_the_checkpoint_is_refused(model_dir, clip, capsys):
    config = os.path.join(model_dir, "config.json")
    before = open(config).read()
    assert C.main(["--video", clip, "--q", "x", "--model", model_dir, *SMALL, "--json", config]) == 2
    err = capsys.readouterr().err
    assert err == f"vreason: error: --json and --model's config.json name the same file ({os.path.realpath(config)})\n", err
    assert open(config).read() == before


def _char_device(tmp_path, name, minor):
    """A character device node of our own as root (a regression must not replace the system's /dev/null), else the
    system's, which a non-root process cannot replace anyway."""
    if os.geteuid():
        return f"/dev/{name}"
    p = tmp_path / name
    os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    return str(p)


def _main_or_hang(argv, unblock, timeout=60, main=C.main):
    """main(argv) in a thread; if it hangs (a FIFO opened blocking), unblock() it and fail rather than hang."""
    result = []
    t = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        unblock()
        t.join(timeout)
        pytest.fail(f"{main.__module__}.main blocked")
    return result[0]


def test_write_failures_keep_the_result(model_dir, clip, tmp_path, capsys, monkeypatch):
    """A write that fails after the run (a full disk: /dev/full and a regular file; a FIFO nobody reads) is one line
    on stderr and exit 2, the output is not left half-written, and what it held is printed on stdout instead."""
    run = ["--video", clip, "--q", "x", "--model", model_dir, *SMALL, "--quiet"]

    def failed(*flags, main=C.main):
        assert main([*run, *flags]) == 2
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return out, err.strip()

    full = _char_device(tmp_path, "full", 7)
    out, err = failed("--json", full)
    assert err == f"vreason: error: cannot write --json {full} (No space left on device); the record follows on stdout"
    assert len(strict(out)["token_ids"]) == 8 and stat.S_ISCHR(os.stat(full).st_mode)

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out, err = failed("--trace", str(fifo), main=lambda argv: _main_or_hang(argv, lambda: open(fifo, "rb").close()))
    assert err == f"vreason: error: cannot write --trace {fifo} (nobody is reading this FIFO); the trace follows on stdout"
    assert len([strict(x) for x in out.splitlines()]) == 8 and stat.S_ISFIFO(os.stat(fifo).st_mode)

    rec = tmp_path / "r.json"
    out, err = failed("--json", str(rec), "--plot", full)
    assert err == f"vreason: error: cannot write --plot {full} (No space left on device); its data is in --json {rec}"
    assert out == "" and len(strict(rec.read_text())["token_ids"]) == 8

    rec.unlink()  # a regular file on a full disk, simulated: fsync failing with ENOSPC. Full before the run: refused
    fsyncs = []

    def fsync(fd):
        fsyncs.append(fd)
        if len(fsyncs) > allowed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(C.os, "fsync", fsync)
    allowed = 0
    out, err = failed("--json", str(rec))
    assert err == f"vreason: error: cannot write --json {rec}: No space left on device" and out == "" and fsyncs
    allowed, fsyncs[:] = 1, []  # full by the time the record is written: the record goes to stdout
    out, err = failed("--json", str(rec))
    assert err == f"vreason: error: cannot write --json {rec} (No space left on device); the record follows on stdout"
    assert len(strict(out)["token_ids"]) == 8
    assert sorted(os.listdir(tmp_path)) == (["fifo", "full"] if os.geteuid() == 0 else ["fifo"])  # no r.json, no temp file


def test_special_targets_are_written_in_place(model_dir, clip, tmp_path, capsys):
    """A device node or a FIFO is written into, never renamed over; a symlink is kept and its target replaced."""
    null, fifo, target, link = _char_device(tmp_path, "null", 3), tmp_path / "fifo", tmp_path / "t.jsonl", tmp_path / "link"
    os.mkfifo(fifo)
    target.write_text("old")
    link.symlink_to(target)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    argv = ["--video", clip, "--q", "x", "--model", model_dir, *SMALL, "--quiet", "--json", null, "--trace", str(fifo),
            "--plot", str(link)]
    assert _main_or_hang(argv, lambda: None) == 0
    reader.join(60)
    assert len([strict(x) for x in got[0].decode().splitlines()]) == 8
    assert stat.S_ISCHR(os.stat(null).st_mode) and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert link.is_symlink() and target.read_bytes()[:4] == b"\x89PNG"
