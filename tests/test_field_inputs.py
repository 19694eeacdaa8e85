"""Inputs of every kind (issue 10, part 1): integer ids and masks stay integer end to end, state inputs
without a batch axis, non-tensor forward arguments bound once; and each bad input is one line, exit 2.

The real-model checks (a pretrained sentence-embedding transformer on real sentences, a streaming GRU on
real speech) are in test_real_models_convert.py; here the error paths run on small models written below."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_healthy, run_cli

EMB_PY = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30522, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        return self.out(x.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1))

def build():
    torch.manual_seed(0)
    return Net().eval()

build.example_inputs = (torch.randint(0, 30522, (1, 12)), torch.ones(1, 12, dtype=torch.int64))
build.input_spec = [{"name": "input_ids", "range": [0, 30522]}, {"name": "attention_mask", "range": [0, 2]}]
'''

BIND_PY = '''
import torch
from torch import nn

class Vad(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 2)

    def forward(self, x, sr: int):
        return torch.softmax(self.lin(x) * (1.0 if sr == 16000 else 0.5), -1)

def build():
    torch.manual_seed(0)
    return Vad().eval()

build.example_input_shape = (1, 16)
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("field-models")
    (root / "emb.py").write_text(EMB_PY)
    (root / "vad.py").write_text(BIND_PY)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, (240, 12))
    mask = (np.arange(12)[None, :] < rng.integers(3, 13, (240, 1))).astype(np.int64)
    np.savez(root / "tokens.npz", input_ids=ids, attention_mask=mask)
    return root


def one_line(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_integer_inputs_stay_integer_and_match_the_reference(models, tmp_path):
    import edgekit
    from edgekit import runtime
    from edgekit.sources import load_model

    spec = load_model(f"{models / 'emb.py'}:build")
    assert [(i.name, i.dtype, i.value_range) for i in spec.inputs] == [("input_ids", "int64", (0, 30522)), ("attention_mask", "int64", (0, 2))]
    with np.load(models / "tokens.npz") as z:
        ids, mask = z["input_ids"][:32], z["attention_mask"][:32]
    ref = spec.outputs_for(__import__("edgekit.calibration", fromlist=["x"]).load_calibration(
        models / "tokens.npz", spec.input_names, spec.input_shapes, inputs=spec.inputs).take(slice(0, 32)))[0]
    for target in ("onnx-fp32", "onnx-fp16", "tflite-fp32", "tflite-fp16", "tflite-dynamic"):
        art = edgekit.convert(spec, target, calibration=str(models / "tokens.npz"), out_dir=tmp_path / target)
        dtypes = [i.dtype for i in art.manifest.inputs]
        assert all(d in ("int64", "int32") for d in dtypes), (target, dtypes)  # never cast to float (fp16 included)
        assert_healthy(art.validation)
        got = runtime.load(art.path).run_batch(ids, mask)[0]
        tol = 2e-2 if "fp16" in target or "dynamic" in target else 1e-4
        np.testing.assert_allclose(got, ref, atol=tol * max(1.0, float(np.abs(ref).max())), err_msg=target)


def test_runtime_refuses_ids_outside_the_declared_range(models, tmp_path):
    import edgekit
    from edgekit import runtime
    from edgekit.errors import UsageError

    art = edgekit.convert(f"{models / 'emb.py'}:build", "onnx-fp32", calibration=str(models / "tokens.npz"), out_dir=tmp_path / "a")
    m = runtime.load(art.path)
    with pytest.raises(UsageError, match="outside"):
        m(np.full((1, 12), 40000), np.ones((1, 12), np.int64))
    with pytest.raises(UsageError, match="non-integer"):
        m(np.full((1, 12), 0.5), np.ones((1, 12), np.int64))


def test_random_integer_data_needs_a_range(models, tmp_path):
    r = run_cli("convert", f"{models / 'emb.py'}:build", "-t", "onnx-fp32", "--input-shape", "1,12", "--input-shape", "1,12",
                "--input-dtype", "int64", "--input-dtype", "int64", "--out", tmp_path / "x")
    # the shapes made fresh int64 inputs; the declared ranges came from the factory, so random ids are drawn in range
    assert r.returncode == 0, r.stderr
    (models / "plain.py").write_text(EMB_PY.replace("build.input_spec", "# build.input_spec"))
    r = run_cli("convert", f"{models / 'plain.py'}:build", "-t", "onnx-fp32", "--out", tmp_path / "y")
    one_line(r, "input_0", "--input-range")


def test_float_data_for_an_integer_input_is_refused(models, tmp_path):
    np.savez(tmp_path / "floats.npz", input_ids=np.random.default_rng(0).random((20, 12)), attention_mask=np.ones((20, 12)))
    r = run_cli("convert", f"{models / 'emb.py'}:build", "-t", "onnx-fp32", "--calib", tmp_path / "floats.npz", "--out", tmp_path / "z")
    one_line(r, "input_ids", "int64")


def test_ids_outside_the_range_in_calibration_data_are_refused(models, tmp_path):
    np.savez(tmp_path / "big.npz", input_ids=np.full((20, 12), 50000), attention_mask=np.ones((20, 12), np.int64))
    r = run_cli("convert", f"{models / 'emb.py'}:build", "-t", "onnx-fp32", "--calib", tmp_path / "big.npz", "--out", tmp_path / "z")
    one_line(r, "input_ids", "outside")


def test_bound_argument(models, tmp_path):
    r = run_cli("convert", f"{models / 'vad.py'}:build", "-t", "onnx-fp32", "--out", tmp_path / "a")
    one_line(r, "'sr'", "--bind sr=")
    r = run_cli("convert", f"{models / 'vad.py'}:build", "-t", "onnx-fp32", "--bind", "rate=16000", "--out", tmp_path / "b")
    one_line(r, "rate", "sr")
    import edgekit
    from edgekit.inputs import InputOptions

    art = edgekit.convert(f"{models / 'vad.py'}:build", "tflite-fp32", out_dir=tmp_path / "c", inputs=InputOptions(bind={"sr": 16000}))
    assert art.validation["status"] == "ok"


@pytest.mark.parametrize("flag,value,needle", [("--input-range", "input_ids=5:5", "LO < HI"), ("--input-range", "nosuch=0:10", "nosuch"),
                                                ("--input-dtype", "input_ids=int65", "int65"), ("--state-input", "nosuch", "nosuch"),
                                                ("--bind", "0bad=1", "NAME=VALUE")])
def test_bad_input_declarations_are_one_line(models, tmp_path, flag, value, needle):
    one_line(run_cli("convert", f"{models / 'emb.py'}:build", "-t", "onnx-fp32", flag, value, "--out", tmp_path / "x"), needle)


def test_a_jit_file_that_is_not_torchscript(tmp_path):
    (tmp_path / "m.jit").write_bytes(b"not a zip")
    one_line(run_cli("convert", tmp_path / "m.jit", "-t", "onnx-fp32", "--out", tmp_path / "x"), "not a TorchScript file")
