"""Every target on the bundled digits CNN, checked on the real labeled test split."""

import json
import subprocess
import sys

import numpy as np
import pytest

import edgekit
from edgekit import runtime
from edgekit.datasets import digits
from edgekit.targets import list_targets

TARGETS = sorted(t.name for t in list_targets())


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return {name: edgekit.convert(target=name, out_dir=root / name) for name in TARGETS}


@pytest.fixture(scope="session")
def test_split():
    return digits().test


def accuracy(folder, split):
    (logits,) = runtime.load(folder).run_batch(split.x)
    return float(np.mean(logits.argmax(1) == split.y))


@pytest.mark.parametrize("name", TARGETS)
def test_every_target_converts_validates_and_runs(artifacts, name, test_split):
    art = artifacts[name]
    m = art.manifest.to_dict()
    assert art.model_path.is_file() and m["size_bytes"] == art.model_path.stat().st_size
    assert m["validation"]["status"] == "ok", m["validation"]
    assert m["validation"]["inputs"] == "digits:test"  # held out, not the calibration split
    assert m["target"]["name"] == name and m["tool_versions"]["torch"].startswith("2.13")
    assert accuracy(art.path, test_split) > 0.97


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_accuracy_within_one_point_of_fp32(artifacts, fmt, test_split):
    fp32 = accuracy(artifacts[f"{fmt}-fp32"].path, test_split)
    int8 = accuracy(artifacts[f"{fmt}-int8"].path, test_split)
    assert abs(fp32 - int8) <= 0.01, (fp32, int8)


def test_int8_tflite_is_at_most_030_of_fp32(artifacts):
    ratio = artifacts["tflite-int8"].size_bytes / artifacts["tflite-fp32"].size_bytes
    assert ratio <= 0.30, ratio
    assert 0.45 <= artifacts["tflite-fp16"].size_bytes / artifacts["tflite-fp32"].size_bytes <= 0.55


def test_full_integer_tflite_manifest_records_quantization(artifacts):
    m = artifacts["tflite-int8"].manifest.to_dict()
    (inp,) = m["inputs"]
    assert inp["dtype"] == "int8" and inp["quantization"]["scale"] > 0
    assert m["outputs"][0]["dtype"] == "int8"
    assert m["calibration"] == {"source": "digits:train", "samples": 200, "synthetic": False, "labels": True, "method": "minmax"}
    recipe = json.loads((artifacts["tflite-int8"].path / "recipe.json").read_text())
    assert recipe[0]["op_config"]["activation_tensor_config"]["num_bits"] == 8


def test_runtime_quantizes_inputs_like_the_interpreter(artifacts, test_split):
    """The runtime's float->int8 mapping, checked against a hand call of the raw interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    art = artifacts["tflite-int8"]
    it = Interpreter(model_path=str(art.model_path))
    run = it.get_signature_runner()
    (i_name,) = run.get_input_details()
    d = run.get_input_details()[i_name]
    scale, zp = d["quantization"]
    x = test_split.x[:1]
    raw = run(**{i_name: np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)})
    o = run.get_output_details()["output_0"]
    expect = (raw["output_0"].astype(np.float32) - o["quantization"][1]) * o["quantization"][0]
    (got,) = runtime.load(art.path)(x)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-6)


def test_runtime_does_not_import_torch(artifacts, test_split, tmp_path):
    np.save(tmp_path / "x.npy", test_split.x[:4])
    code = ("import sys, numpy as np; from edgekit import runtime; "
            f"m = runtime.load({str(artifacts['tflite-int8'].path)!r}); "
            f"y = m.run_batch(np.load({str(tmp_path / 'x.npy')!r}))[0]; "
            f"m2 = runtime.load({str(artifacts['onnx-int8'].path)!r}); m2.run_batch(np.load({str(tmp_path / 'x.npy')!r})); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(y.argmax(1).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(test_split.y[:4].tolist())


def test_channels_last_tflite(tmp_path, test_split):
    from edgekit.examples.digits import build
    import torch

    art = edgekit.convert(target="tflite-fp32", out_dir=tmp_path / "nhwc", channels_last=True)
    (inp,) = [i.to_dict() for i in art.manifest.inputs]
    assert inp["layout"] == "NHWC" and inp["shape"] == [1, 8, 8, 1] and inp["source_layout"] == "NCHW"
    m = runtime.load(art.path)
    x = test_split.x[:1]
    with torch.no_grad():
        ref = build()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(m(x)[0], ref, atol=1e-4)  # NCHW in, as from PyTorch
    np.testing.assert_allclose(m(x.transpose(0, 2, 3, 1), input_layout="NHWC")[0], ref, atol=1e-4)


def test_pt2_source_converts_to_onnx_int8(tmp_path):
    import torch
    from edgekit.examples.digits import build

    m = build()
    torch.export.save(torch.export.export(m, (torch.rand(1, 1, 8, 8),)), tmp_path / "net.pt2")
    art = edgekit.convert(str(tmp_path / "net.pt2"), target="onnx-int8", calibration="digits", out_dir=tmp_path / "o")
    assert art.validation["status"] == "ok"
    assert art.validation["top1_agreement"] >= 0.97
