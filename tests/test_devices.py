"""What would break on a GPU, checked where it can be on a CPU: device placement under torchrun and --device-map,
flags that cannot work together, a split model through every mode, the prefill's memory, --compile end to end.
device_check.py runs the GPU side (CUDA graphs, bf16 parity, speed) on a machine that has one."""
import json

import pytest
import torch
from test_cli import SMALL, clip, model_dir  # noqa: F401  (fixtures)
from test_vreason import prepared

import eval as E
import model as M
import cli as C
import vreason as R

cuda = lambda *i: [torch.device("cuda", j) for j in i]


@pytest.mark.parametrize("local,per_node,visible,device_map,dev,devs", [
    (3, 8, 8, None, "cuda:3", None),  # eight processes share the node's eight GPUs
    (3, 8, 1, None, "cuda:0", None),  # the launcher gave each process its own GPU
    (5, 8, 4, None, "cuda:1", None),  # fewer GPUs than processes: two a GPU
    (1, 2, 8, "auto", "cuda:4", cuda(4, 5, 6, 7)),  # 72B on two processes of four GPUs each
    (1, 4, 2, "auto", "cuda:0", cuda(0, 1)),  # each process sees its own two
    (0, 1, 3, "auto", "cuda:0", cuda(0, 1, 2)),
])
def test_rank_devices(local, per_node, visible, device_map, dev, devs):
    assert E.rank_devices(local, per_node, visible, device_map) == (torch.device(dev), devs)


def test_rank_devices_refuses_no_gpu():
    with pytest.raises(C.UsageError, match="no CUDA device"):
        E.rank_devices(0, 1, 0, None)


@pytest.mark.parametrize("flags,words", [(["--dtype", "float16"], "float16 is not supported"),
                                         (["--device", "cpu", "--device-map", "auto"], "cannot run on --device cpu")])
def test_runtime_flags_that_cannot_work(model_dir, clip, tmp_path, capsys, flags, words):  # noqa: F811
    assert C.main(["--video", clip, "--q", "x", "--model", model_dir, *SMALL, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


@pytest.mark.parametrize("policy", ["per-layer", "last-layer"])
def test_split_model_runs_every_mode(ckpt, policy):
    """A model split over two 'devices' (here both the CPU) goes through prefill, Lite's pruning (the last-layer policy
    scores on the last device and prunes every layer on its own) and the controller exactly like the whole model."""
    whole, split = M.load_model(ckpt), M.load_model(ckpt, device_map=["cpu", "cpu"])
    prep = prepared(whole, (2, 12, 20), 1.0)[0]
    for mode in ("baseline", "vreason", "lite"):
        s = R.Settings(mode=mode, max_new_tokens=8, prune_policy=policy)
        a, b = (list(R.generate(m, prep, s, set())) for m in (whole, split))
        assert [(x.token, x.entropy) for x in a] == [(y.token, y.entropy) for y in b], mode


def test_prefill_keeps_only_the_last_row(ckpt):
    """The last layer's input that prefill hands back is a copy of one row: holding it until the first decode step
    must not keep the prompt's [S, D] activations alive."""
    model = M.load_model(ckpt)
    prep = prepared(model, (2, 12, 20), 1.0)[0]
    with torch.no_grad():
        _, h_in = model.prefill(prep.ids, prep.pos, prep.visual, model.new_cache(len(prep.ids) + 1))
    assert h_in.shape == (1, model.c.hidden_size) and h_in.untyped_storage().nbytes() == h_in.numel() * h_in.element_size()


def test_rotary_frequencies_once_per_device(ckpt):
    model = M.load_model(ckpt)
    prep = prepared(model, (2, 8, 8), 1.0)[0]
    list(R.generate(model, prep, R.Settings(max_new_tokens=3), set()))
    assert list(model._rope) == [torch.device("cpu")]


def test_cli_compile(model_dir, clip, tmp_path):  # noqa: F811
    """--compile end to end gives the eager run's tokens (the compiled step itself is tested in test_compile.py)."""
    recs = []
    for extra in ([], ["--compile"]):
        out = tmp_path / f"r{len(recs)}.json"
        assert C.main(["--video", clip, "--q", "x", "--model", model_dir, "--mode", "vreason", *SMALL, "--json", str(out),
                       "--quiet", *extra]) == 0
        recs.append(json.loads(out.read_text()))
    assert recs[0]["token_ids"] == recs[1]["token_ids"] and recs[1]["settings"]["compile"] is True
