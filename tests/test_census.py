"""edgekit.census on real conversions: what the converter put into the file, per op and per constant.

Each check is a function applied to the artifact it describes and, as a control, to one it does not
(`pytest.raises(AssertionError)`), so every assertion is shown to be able to fail. The premises about
the converters (litert-torch duplicates a Linear->PReLU weight; PT2E leaves an LSTM in float) are checked
with LiteRT's interpreter, independently of the census, before the census is judged against them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit import census
from edgekit.artifact import Artifact

SEQ, FEAT, HID = 4, 20, 32


class LinearPReLU(nn.Module):
    """Linear -> PReLU -> Linear: litert-torch lowers the PReLU as relu(Wx+b) - a*relu(-(Wx+b)), two FULLY_CONNECTED."""

    example_input_shape = (1, 64)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(64, 256), nn.PReLU(), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TinyKWS(nn.Module):
    """A keyword-spotting shape: LayerNorm over features, an LSTM over time, a classifier on the last step."""

    example_input_shape = (1, SEQ, FEAT)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm, self.lstm, self.fc = nn.LayerNorm(FEAT), nn.LSTM(FEAT, HID, batch_first=True), nn.Linear(HID, 4)

    def forward(self, x):
        y, _ = self.lstm(self.norm(x))
        return self.fc(y[:, -1])


def _calib(shape, n=64):
    return np.random.default_rng(0).standard_normal((n, *shape[1:])).astype(np.float32)


@pytest.fixture(scope="module")
def arts(tmp_path_factory, digits_int8):
    """Real artifacts: name -> (census, param_bytes_fp32, precision, artifact folder)."""
    root = tmp_path_factory.mktemp("census")
    prelu, kws = LinearPReLU().eval(), TinyKWS().eval()
    jobs = {
        "digits-tflite-int8": None,  # the session's shared conversion (conftest.digits_int8)
        "digits-tflite-dynamic": (None, "tflite-dynamic", None),
        "digits-tflite-fp16": (None, "tflite-fp16", None),
        "digits-onnx-int8": (None, "onnx-int8", None),
        "prelu-tflite-fp32": (prelu, "tflite-fp32", _calib(prelu.example_input_shape)),
        "kws-tflite-int8-pt2e": (kws, "tflite-int8-pt2e", _calib(kws.example_input_shape)),
        "kws-onnx-int8": (kws, "onnx-int8", _calib(kws.example_input_shape)),
    }
    out = {}
    for name, job in jobs.items():
        if job is None:
            art = Artifact.load(digits_int8)
        else:
            model, target, calib = job
            # few samples: these tests read the file's structure, the validation figures are not under test
            art = edgekit.convert(model, target=target, out_dir=root / name, calibration=calib, calib_samples=64, val_samples=32)
        m = art.manifest
        out[name] = (census.read(art.model_path), m.param_bytes_fp32, m.precision, art.path)
    return out


# --- the checks ----------------------------------------------------------------------------------------

def check_full_integer(c: census.Census, precision: str) -> None:
    s = census.summary(c, 1, precision)
    assert s["full_integer"] and s["float_ops"] == 0 and s["float_ops_in_integer_model"] == []
    assert all(set(by) <= {"int8", "int16", "int32", "convert"} for by in s["op_counts"].values()), s["op_counts"]
    assert not [w for w in census.explain(c, None, precision) if "not full-integer" in w]


def check_not_full_integer(c: census.Census, precision: str, must_list: set[str]) -> None:
    s = census.summary(c, 1, precision)
    assert not s["full_integer"]
    listed = {f["op"] for f in s["float_ops_in_integer_model"]}
    assert must_list <= listed, listed
    assert all(f["name"] for f in s["float_ops_in_integer_model"])
    (line,) = [w for w in census.explain(c, None, precision) if "not full-integer" in w]
    assert all(op in line for op in must_list), line


def check_duplicate(c: census.Census, each: int, kind: str, op: str) -> None:
    assert c.duplicates, "no duplicated constant found"
    d = c.duplicates[0]
    assert (d.each, d.kind, len(d.copies)) == (each, kind, 2), d
    assert {u.split("#")[0] for u in d.users} == {op} and len(set(d.users)) == 2, d.users
    assert c.duplicated_bytes >= each


# --- TFLite --------------------------------------------------------------------------------------------

def test_tflite_int8_digits_is_full_integer(arts):
    c, pb, prec, _ = arts["digits-tflite-int8"]
    assert prec == "int8"
    check_full_integer(c, prec)
    counts = c.op_counts()
    assert counts["FULLY_CONNECTED"] == {"int8": 2} and counts["CONV_2D"] == {"int8": 1}
    assert c.bytes_by_dtype().get("int8", 0) >= 0.98 * pb / 4  # every weight stored as int8
    assert census.explain(c, pb, prec) == []  # 0.27× the fp32 parameter bytes: nothing to say
    with pytest.raises(AssertionError):  # control: the PT2E LSTM is not full-integer
        check_full_integer(arts["kws-tflite-int8-pt2e"][0], "int8")


def test_pt2e_lstm_is_reported_not_full_integer_with_its_ops(arts):
    c, pb, prec, folder = arts["kws-tflite-int8-pt2e"]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(folder / "model.tflite"))
    float_lstm = [d for d in it.get_tensor_details() if d["dtype"] == np.float32 and "LSTM" in d["name"]]
    assert float_lstm, "premise: this litert-torch PT2E route leaves the LSTM in float32"
    check_not_full_integer(c, prec, {"LOGISTIC", "TANH", "RSQRT", "FULLY_CONNECTED"})
    s = census.summary(c, pb, prec)
    assert s["op_counts"]["RSQRT"] == {"float32": 1}  # the LayerNorm's square root
    assert any("LSTM" in f["name"] for f in s["float_ops_in_integer_model"])
    assert s["float_weight_bytes"] >= 4 * 4 * HID * (FEAT + HID)  # the LSTM's weights stay float32
    assert any(w.startswith("file is") and "float32 weights" in w for w in census.explain(c, pb, prec))
    with pytest.raises(AssertionError):  # control: the digits int8 artifact has no float op to list
        check_not_full_integer(arts["digits-tflite-int8"][0], "int8", {"LOGISTIC"})


def test_dynamic_range_computes_in_float(arts):
    c, pb, prec, _ = arts["digits-tflite-dynamic"]
    s = census.summary(c, pb, prec)
    assert prec == "dynamic-int8" and not s["full_integer"]
    assert s["op_counts"]["FULLY_CONNECTED"] == {"float32": 2}  # float activations, int8 weights
    fc = [op for op in c.ops if op.type == "FULLY_CONNECTED"]
    assert all(op.weights[0] == "int8" for op in fc)
    assert s["float_ops_in_integer_model"] == []  # dynamic range is float compute by design: no integer promise broken
    assert not [w for w in census.explain(c, pb, prec) if "full-integer" in w]
    check_not_full_integer(c, "int8", {"FULLY_CONNECTED", "CONV_2D"})  # judged as a full-integer target, it is not


def test_fp16_reads_buffers_stored_after_the_flatbuffer(arts):
    c, pb, prec, _ = arts["digits-tflite-fp16"]
    # ai-edge-quantizer stores the large fp16 weights past the flatbuffer (buffer offset/size): all must be read
    assert c.bytes_by_dtype()["float16"] == 2 * pb // 4 - 2 * sum(p.numel() for n, p in _digits().named_parameters()
                                                                    if not n.endswith("weight") or p.ndim == 1)
    assert c.op_counts()["DEQUANTIZE"] == {"convert": 4}
    assert census.explain(c, pb, prec) == []
    assert census.explain(c, pb, "int8")[0].startswith("file is")  # control: fp16 is twice what int8 suggests


def _digits():
    from edgekit.examples.digits import build

    return build()


def test_linear_prelu_duplicated_weight_is_found_with_its_bytes(arts):
    c, pb, prec, folder = arts["prelu-tflite-fp32"]
    from ai_edge_litert.interpreter import Interpreter

    w = LinearPReLU().fc1.weight.detach().numpy()
    it = Interpreter(str(folder / "model.tflite"))
    it.allocate_tensors()
    copies = [d for d in it.get_tensor_details() if tuple(d["shape"]) == w.shape
              and (np.array_equal(it.get_tensor(d["index"]), w) or np.array_equal(it.get_tensor(d["index"]), -w))]
    if len(copies) < 2:  # a litert-torch that stops duplicating: the census must then find nothing
        assert c.duplicated_bytes < w.nbytes
        pytest.skip(f"litert-torch stores fc1's weight once on this version ({len(copies)} copy)")
    check_duplicate(c, w.nbytes, "negated", "FULLY_CONNECTED")
    s = census.summary(c, pb, prec)
    assert s["duplicated_constant_bytes"] == w.nbytes + 4 * w.shape[0]  # the weight and its bias, each stored twice
    assert s["size_ratio"] > 1.5  # fp32 stored at more than 1.5× its parameters
    (line,) = census.explain(c, pb, prec)
    assert line.startswith(f"file is {s['size_ratio']:.2f}× the fp32 parameter bytes")
    assert "2 FULLY_CONNECTED ops carry a duplicated 64.0 KiB weight (a negated copy" in line and "Linear_fc1" in line
    assert s["flags"] == [f"{s['size_ratio']:.2f}× (expected 1×): dup {w.nbytes / 1024 + 1:.1f} KiB"]
    with pytest.raises(AssertionError):  # control: the digits CNN stores each weight once
        check_duplicate(arts["digits-tflite-int8"][0], w.nbytes, "negated", "FULLY_CONNECTED")


# --- ONNX ----------------------------------------------------------------------------------------------

def test_onnx_int8_digits_is_full_integer_qdq(arts):
    c, pb, prec, _ = arts["digits-onnx-int8"]
    check_full_integer(c, prec)
    counts = c.op_counts()
    assert counts["Conv"] == {"int8": 2} and counts["Gemm"] == {"int8": 2}
    assert counts["QuantizeLinear"]["convert"] >= 5 and counts["DequantizeLinear"]["convert"] >= 5
    conv_weights = [k for k in c.constants if any(u.startswith("Conv") for u in k.users) and k.dtype == "int8"]
    assert len(conv_weights) == 2  # int8 weights, found through their DequantizeLinear
    assert census.explain(c, pb, prec) == []
    with pytest.raises(AssertionError):  # control: the LSTM's ONNX int8 graph leaves the LSTM float
        check_full_integer(arts["kws-onnx-int8"][0], "int8")


def test_onnx_int8_lstm_left_float(arts):
    c, pb, prec, _ = arts["kws-onnx-int8"]
    check_not_full_integer(c, prec, {"LSTM"})
    lstm = [op for op in c.ops if op.type == "LSTM"]
    assert lstm and lstm[0].compute == "float32" and "float32" in lstm[0].weights
    with pytest.raises(AssertionError):  # control: the digits ONNX graph has no LSTM
        check_not_full_integer(arts["digits-onnx-int8"][0], "int8", {"LSTM"})


def test_read_refuses_what_it_cannot_parse(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="neither"):
        census.read(bad)


def test_report_is_what_the_manifest_gets_and_never_raises(arts, tmp_path):
    c, pb, prec, folder = arts["kws-tflite-int8-pt2e"]
    summary, warnings = census.report(folder / "model.tflite", pb, prec)
    assert summary["warnings"] == warnings == census.explain(c, pb, prec) and len(warnings) == 2
    assert summary["ops"] == len(c.ops) and summary["file_bytes"] == (folder / "model.tflite").stat().st_size
    assert summary["flags"][-1] == f"not full-integer: {summary['float_ops']} float ops"
    import json

    json.dumps(summary)  # goes into manifest.json as it is
    broken = tmp_path / "model.tflite"
    broken.write_bytes((folder / "model.tflite").read_bytes()[:200])  # a truncated flatbuffer
    summary, warnings = census.report(broken, pb, prec)
    assert "error" in summary and warnings == []
