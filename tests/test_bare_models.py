"""`edgekit bench` / `edgekit eval` of bare .onnx/.tflite files (no artifact folder, no manifest): dynamic dims
fixed by --input-shape or refused in one line, integer inputs fed from --input-range or zeros (ones for masks),
never from the whole int64 range; locally and through the adb/ssh doubles (the runner's argument channel)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.devices.profiles import DeviceProfile
from edgekit.errors import CalibrationError, DeviceError, UsageError
from edgekit.evaluate import evaluate
from edgekit.measure import bench
from edgekit.runner import BareInput, BareModel, make_feed, plan_inputs

from safety._common import assert_one_line_error, cli

AWKWARD = "pixel values 'raw'"  # an input name a remote shell would split or unquote


def _conv_net():
    """A small image net: conv, then the mean over H and W (any spatial size works)."""
    import torch

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    return Conv().eval()


def _export(module, args, path: Path, names: list[str], dynamic_axes: dict) -> Path:
    import torch

    torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=["y"], dynamic_axes=dynamic_axes, dynamo=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real ONNX files from torch.onnx.export: a conv net with dynamic N/H/W, an embedding model with int64
    input_ids + attention_mask (dynamic batch), and a 10-word embedding whose ONNX Runtime Gather refuses any id >= 10."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bare")

    class Ids(nn.Module):
        def __init__(self, vocab: int):
            super().__init__()
            self.emb = nn.Embedding(vocab, 8)

        def forward(self, input_ids, attention_mask):
            return (self.emb(input_ids) * attention_mask.unsqueeze(-1)).sum(1)

    class Words(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, ids):
            return self.emb(ids).sum(1)

    ids = torch.zeros(1, 16, dtype=torch.long)
    return {
        "conv": _export(_conv_net(), (torch.rand(1, 3, 32, 32),), root / "conv.onnx", ["x"], {"x": {0: "N", 2: "H", 3: "W"}}),
        "ids": _export(Ids(1000), (ids, torch.ones_like(ids)), root / "ids.onnx", ["input_ids", "attention_mask"],
                       {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}),
        "words": _export(Words(), (torch.zeros(1, 8, dtype=torch.long),), root / "words.onnx", [AWKWARD], {AWKWARD: {0: "batch"}}),
    }


@pytest.fixture(scope="module")
def dynamic_tflite(tmp_path_factory):
    """A real .tflite whose signature leaves H and W dynamic (-1): litert-torch with torch.export dynamic shapes.
    Returns (the file, the PyTorch module it came from)."""
    import litert_torch
    import torch
    from torch.export import Dim

    path = tmp_path_factory.mktemp("bare-tflite") / "dyn.tflite"
    h, w = Dim("H", min=8, max=1024), Dim("W", min=8, max=1024)
    net = _conv_net()
    litert_torch.convert(net, (torch.rand(1, 3, 32, 32),), dynamic_shapes=({2: h, 3: w},)).export(str(path))
    return path, net


def local(tmp_path) -> DeviceProfile:
    return DeviceProfile(name="local-bare", transport="local", python=sys.executable, workdir=str(tmp_path / "w"))


# ---------------------------------------------------------------- shapes


def test_dynamic_dims_without_input_shape_are_one_line_exit_2(files, tmp_path):
    line = assert_one_line_error(*cli("bench", files["conv"], "--device", "local", "--runs", "2"), 2,
                                 "input 'x' of conv.onnx has dynamic dims [N,3,H,W]")
    assert "pass --input-shape x=1,3,H,W" in line
    assert_one_line_error(*cli("eval", files["conv"], "--data", tmp_path / "none.npz"), 2, "dynamic dims [N,3,H,W]")


def test_input_shape_runs_locally_and_reports_latency(files, tmp_path):
    code, out = cli("bench", files["conv"], "--device", "local", "--runs", "5", "--warmup", "1", "--input-shape", "x=1,3,64,48",
                    "--json", tmp_path / "b.json")
    assert code == 0, out
    r = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert r["status"] == "ok" and r["stats"]["runs"] == 5 and r["stats"]["p50_ms"] > 0 and len(r["samples_ms"]) == 5
    assert r["inputs"] == [{"name": "x", "declared": "[N,3,H,W]", "shape": [1, 3, 64, 48], "dtype": "float32", "fill": "random",
                            "value_range": None}]
    assert r["notes"] == []


def test_bad_input_shapes_are_one_line(files):
    assert_one_line_error(*cli("bench", files["conv"], "--device", "local", "--input-shape", "y=1,3,64,48"), 2,
                          "conv.onnx has no input named 'y'; its inputs: x float32[N,3,H,W]")
    for shapes, needle in ((["x=1,4,64,48"], r"does not fit input 'x' of conv.onnx, declared \[N,3,H,W\]"),
                           (["x=1,3,64"], "does not fit input 'x'"), (["x=1,3,0,48"], "bad --input-shape"),
                           (["1,3,8,8", "1,3,8,8"], "has 1 input.* gave 2 unnamed")):
        with pytest.raises(UsageError, match=needle):
            BareModel(files["conv"], 1, shapes)


def test_input_shape_on_an_artifact_folder_is_refused(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({"file": "model.onnx", "inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}],
                                                   "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32"}]}))
    (art / "model.onnx").write_bytes(b"")
    with pytest.raises(UsageError, match="for bare .onnx/.tflite files"):
        bench(art, local(tmp_path), runs=2, input_shapes=["x=1,3"])


def test_plan_dynamic_batch_alone_defaults_to_one_and_says_so():
    x = BareInput("x", ("N", 3, 8, 8), "float32")
    state = BareInput("h", (2, None, 16), "float32")  # a dynamic dim that is not the leading one: refused
    assert plan_inputs([x], "m.onnx") and x.shape == (1, 3, 8, 8)
    with pytest.raises(UsageError, match=r"input 'h' of m.onnx has dynamic dims \[2,d1,16\]; pass --input-shape h=2,d1,16 with sizes for d1"):
        plan_inputs([state], "m.onnx")
    assert plan_inputs([state], "m.onnx", ["h=2,1,16"]) == [] and state.shape == (2, 1, 16)
    seq = BareInput("tokens", (None,), "int64")  # one dynamic axis of a 1-D input is a length, not a batch
    with pytest.raises(UsageError, match="dynamic dims"):
        plan_inputs([seq], "m.onnx")


def test_tflite_dynamic_dims_are_resized(dynamic_tflite, tmp_path):
    import torch

    dynamic_tflite, net = dynamic_tflite
    with pytest.raises(UsageError, match=r"input 'args_0' of dyn.tflite has dynamic dims \[1,3,d2,d3\]"):
        bench(dynamic_tflite, local(tmp_path), runs=2)
    r = bench(dynamic_tflite, local(tmp_path), runs=5, warmup=1, input_shapes=["args_0=1,3,64,48"])
    assert r.status == "ok" and len(r.samples_ms) == 5 and r.inputs[0]["shape"] == [1, 3, 64, 48]
    with pytest.raises(UsageError, match=r"args_0=3,3,20,12 does not fit .* declared \[1,3,d2,d3\]"):
        BareModel(dynamic_tflite, 1, ["args_0=3,3,20,12"])  # its batch is fixed at 1
    m = BareModel(dynamic_tflite, 1, ["1,3,20,12"])  # unnamed: in input order
    x = np.random.default_rng(0).random((3, 3, 20, 12), dtype=np.float32)
    out = m.run_batch(x)[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert out.shape == (3, 4) and np.allclose(out, ref, atol=1e-4)


# ---------------------------------------------------------------- integer inputs


def test_ids_from_a_range_stay_in_it():
    ids = BareInput("input_ids", (1, 4096), "int64")
    mask = BareInput("mask", (1, 4096), "bool")
    plan_inputs([ids, mask], "m.onnx", range_texts=["input_ids=5:10"])
    a, m = make_feed([ids, mask])
    assert a.dtype == np.int64 and a.min() == 5 and a.max() == 9  # every value of [5, 10), nothing else
    assert m.dtype == np.bool_ and m.all()  # a mask without a range: all on
    signed = BareInput("ids", (1, 4096), "int32")
    plan_inputs([signed], "m.onnx", range_texts=["ids=-3:3"])
    w = make_feed([signed])[0]
    assert w.dtype == np.int32 and w.min() == -3 and w.max() == 2


def test_ids_with_a_range_reach_the_runner(files, tmp_path):
    """ONNX Runtime's Gather refuses an id outside the 10-word table: the range given is the range fed, on the device."""
    name = AWKWARD
    r = bench(files["words"], local(tmp_path), runs=3, warmup=1, input_ranges=[f"{name}=0:10"])
    assert r.status == "ok" and r.inputs[0]["fill"] == "range" and r.inputs[0]["value_range"] == [0, 10]
    with pytest.raises(DeviceError, match="out of data bounds"):
        bench(files["words"], local(tmp_path), runs=3, warmup=1, input_ranges=[f"{name}=0:1000000"])
    m = BareModel(files["ids"], 1, (), ["input_ids=0:1000"])
    ids, mask = m.feed()
    assert ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < 1000 and len(np.unique(ids)) > 1 and mask.tolist() == [[1] * 16]


def test_ids_without_a_range_are_zeros_with_a_note(files, tmp_path):
    code, out = cli("bench", files["ids"], "--device", "local", "--runs", "3", "--warmup", "1", "--json", tmp_path / "b.json")
    assert code == 0, out
    r = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert [(i["name"], i["shape"], i["fill"]) for i in r["inputs"]] == [("input_ids", [1, 16], "zeros"), ("attention_mask", [1, 16], "ones")]
    assert any("fed batch 1" in n for n in r["notes"])
    assert "note" in out and "input 'input_ids' (int64) is fed zeros" in out and "--input-range input_ids=LO:HI" in out
    m = BareModel(files["ids"], 1)
    assert [a.tolist() for a in m.feed()] == [[[0] * 16], [[1] * 16]]


def test_bad_input_ranges_are_one_line(files):
    assert_one_line_error(*cli("bench", files["ids"], "--device", "local", "--input-range", "input_id=0:10"), 2,
                          "ids.onnx has no input named 'input_id'; its inputs: input_ids int64[batch,16]")
    with pytest.raises(UsageError, match="bad --input-range"):
        BareModel(files["ids"], 1, (), ["input_ids=10:0"])
    with pytest.raises(UsageError, match="ranges are for integer inputs"):
        BareModel(files["conv"], 1, ["x=1,3,8,8"], ["x=0:10"])


# ---------------------------------------------------------------- eval


def test_eval_of_a_bare_file_on_host_and_device(files, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 16, 20), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, 4, 12))
    host = evaluate(files["conv"], tmp_path / "d.npz", input_shapes=["x=1,3,16,20"])
    on_dev = evaluate(files["conv"], tmp_path / "d.npz", input_shapes=["x=1,3,16,20"], device=local(tmp_path))
    assert host.samples == 12 and host.target == "onnx" and "top1" in host.metrics and on_dev.metrics == host.metrics
    assert list((tmp_path / "w").iterdir()) == []
    ids = rng.integers(0, 1000, (6, 16))
    np.savez(tmp_path / "ids.npz", input_ids=ids, attention_mask=np.ones_like(ids), y=rng.integers(0, 8, 6))
    r = evaluate(files["ids"], tmp_path / "ids.npz", input_ranges=["input_ids=0:1000"])
    assert r.samples == 6 and any("fed batch 1" in n for n in r.notes)


def test_eval_data_that_does_not_fit_is_one_line(files, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 16, 21), np.float32), y=np.zeros(4, np.int64))
    assert_one_line_error(*cli("eval", files["conv"], "--data", tmp_path / "d.npz", "--input-shape", "x=1,3,16,20"), 2,
                          "the model's input 'x' takes (3, 16, 20)")
    mask = np.ones((4, 16), np.int64)
    for model, arrays, kw, needle in (
            ("conv", {"x": np.zeros((4, 3, 16, 20), np.int64)}, {"input_shapes": ["x=1,3,16,20"]}, "is int64 for input 'x'"),
            ("ids", {"input_ids": np.zeros((4, 16)), "attention_mask": mask}, {}, "is float64 for input 'input_ids'"),
            ("ids", {"input_ids": np.full((4, 16), 2000), "attention_mask": mask}, {"input_ranges": ["input_ids=0:1000"]},
             "values from 2000 to 2000, outside 0..999")):
        np.savez(tmp_path / "d.npz", **arrays, y=np.zeros(4, np.int64))
        with pytest.raises(CalibrationError, match=needle):
            evaluate(files[model], tmp_path / "d.npz", **kw)


# ---------------------------------------------------------------- remote devices: the runner's argument channel


def test_bare_file_over_the_adb_double(files, adb, monkeypatch):
    from doubles.adbd import AdbdDouble

    workdir = "/tmp/edgekit adb 'bare' test"
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb.port))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    shutil.rmtree(workdir, ignore_errors=True)
    with AdbdDouble(model="Pixel 8", abi="arm64-v8a") as dev:
        try:
            prof = DeviceProfile(name="test-phone", transport="adb", serial=dev.serial, runner="python", python=sys.executable,
                                 workdir=workdir, timeout_s=20)
            r = bench(files["words"], prof, runs=3, warmup=1, input_shapes=[f"{AWKWARD}=1,8"], input_ranges=[f"{AWKWARD}=0:10"])
            assert r.status == "ok" and r.inputs[0]["name"] == AWKWARD and r.inputs[0]["value_range"] == [0, 10]
            assert list(Path(workdir).iterdir()) == []
        finally:
            adb.disconnect(dev)
            shutil.rmtree(workdir, ignore_errors=True)


def test_bare_file_over_the_ssh_double(files, ssh_packages, tmp_path):
    from doubles.sshd import SshdDouble

    workdir = "/tmp/edgekit ssh 'bare' test"
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        with SshdDouble(tmp_path / "board") as b:
            prof = DeviceProfile(name="test-board", transport="ssh", host=b.host, port=b.port, user=b.user, key_file=str(b.key_path),
                                 known_hosts=str(b.known_hosts), python=sys.executable, workdir=workdir, timeout_s=20)
            r = bench(files["conv"], prof, runs=3, warmup=1, input_shapes=["x=1,3,24,16"])
            assert r.status == "ok" and r.inputs[0]["shape"] == [1, 3, 24, 16]
            assert list(Path(workdir).iterdir()) == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
