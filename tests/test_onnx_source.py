"""ONNX files (and TorchScript) as a model source, on real ONNX files that PyPI packages ship
(tests/models/onnx_files.py; installed by scripts/setup-models.sh).

Every artifact is checked on held-out inputs (samples the conversion never saw) against ONNX Runtime
running the original file, with the figure that means something for the output: the face decision
of MTCNN's ONet, the orientation decision of the OCR classifier, the speech probability of silero-vad.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.inputs import InputOptions
from edgekit.pipeline import convert_many
from edgekit.runtime import Model
from tests.models import onnx_files as of
from tests.safety._common import assert_one_line_error, cli

CALIB_N, HELD_OUT_N = 24, 16


def _opts(name: str) -> InputOptions:
    f = of.FILES[name]
    return InputOptions(named_shapes=dict(f.shapes), bind=dict(f.bind), state=tuple(f.state))


def _held_out(name: str) -> dict[str, np.ndarray]:
    """Samples after the calibration ones, in edgekit's dataset layout (batch axis of 1 dropped)."""
    f = of.FILES[name]
    arrays = of.inputs(name, CALIB_N + HELD_OUT_N)
    return {k: (v if k in f.state else v[:, 0])[CALIB_N:] for k, v in arrays.items()}


def _convert(name: str, targets: list[str], tmp_path) -> dict:
    from edgekit.onnx_source import load_onnx

    calib = of.write_npz(name, CALIB_N, tmp_path / f"{name}.npz")
    spec = load_onnx(of.path(name), _opts(name))
    results = convert_many(spec, targets, calibration=str(calib), out_root=tmp_path / "out", val_samples=8, calib_samples=CALIB_N)
    bad = {r.target: str(r.error) for r in results if r.error is not None}
    assert not bad, bad
    return {r.target: r.artifact for r in results}


def _reference(name: str, held: dict[str, np.ndarray]) -> list[np.ndarray]:
    f = of.FILES[name]
    feed = {k: (v if k in f.state else v[:, None]) for k, v in held.items()}
    return [v[:, 0] if v.ndim > 1 and v.shape[1] == 1 else v for v in of.run(name, feed).values()]


def _artifact_outputs(art, held: dict[str, np.ndarray]) -> list[np.ndarray]:
    m = Model(art.path)
    return m.run_batch(*(held[t.name] for t in m.inputs))


@pytest.mark.slow
def test_ocr_orientation_classifier_every_format(tmp_path):
    """paddle2onnx opset-11 file, weights in Constant nodes, dynamic H/W: ONNX and TFLite at every precision."""
    targets = ["onnx-fp32", "onnx-fp16", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8"]
    arts = _convert("rapidocr_cls", targets, tmp_path)
    held = _held_out("rapidocr_cls")
    (ref,) = _reference("rapidocr_cls", held)
    for t, art in arts.items():
        (got,) = _artifact_outputs(art, held)
        agree = float(np.mean(got.reshape(len(got), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)))
        if t.endswith(("fp32", "fp16")):
            assert np.max(np.abs(got.reshape(ref.shape) - ref)) < (1e-4 if t.endswith("fp32") else 2e-2), t
        assert agree >= (1.0 if not t.endswith("int8") else 0.8), (t, agree)
        assert art.manifest.validation.status != "fail", (t, art.manifest.validation.reasons)
        assert art.manifest.recipe["export"]["source_format"] == "onnx"
    assert arts["onnx-int8"].manifest.recipe["export"]["opset_for_quantization"] == 13  # the file is opset 11
    tfl = arts["tflite-fp32"].manifest
    assert tfl.inputs[0].layout == "NHWC" and tfl.inputs[0].source_layout == "NCHW"  # TFLite's own layout, no TRANSPOSE at the input
    assert tfl.recipe["export"]["converter"].startswith("onnx2tf")
    assert tfl.model["num_params"] > 100_000  # weights kept in Constant nodes are counted


@pytest.mark.slow
def test_mtcnn_onet_nhwc_three_outputs(tmp_path):
    """A Keras-exported NHWC-native file with three outputs: the input keeps its shape; int8 keeps the face decisions."""
    arts = _convert("mtcnn_onet", ["tflite-fp32", "tflite-int8", "onnx-int8"], tmp_path)
    held = _held_out("mtcnn_onet")
    ref = _reference("mtcnn_onet", held)
    for t, art in arts.items():
        got = _artifact_outputs(art, held)
        assert [g.shape for g in got] == [r.shape for r in ref], t
        faces_ref, faces = ref[2].argmax(-1), got[2].argmax(-1)
        assert np.mean(faces == faces_ref) == 1.0, t
        assert art.manifest.inputs[0].shape == (1, 48, 48, 3)
        assert [o.name for o in art.manifest.outputs] == ["dense_5", "dense_6", "softmax_2"]
    assert np.max(np.abs(_artifact_outputs(arts["tflite-fp32"], held)[1] - ref[1])) < 1e-4


@pytest.mark.slow
def test_silero_vad_bound_sample_rate_and_state(tmp_path):
    """The shipped VAD: `sr` bound (its If nodes folded), a state input without a batch axis, and the
    speech probability through the artifact equal to the original's on held-out speech and pauses."""
    arts = _convert("silero_vad", ["onnx-fp32", "tflite-fp32"], tmp_path)
    held = _held_out("silero_vad")
    prob_ref, state_ref = _reference("silero_vad", held)
    for t, art in arts.items():
        m = art.manifest
        assert [i.name for i in m.inputs] == ["input", "state"] and not m.inputs[1].batched
        assert m.recipe["export"]["bound"] == {"sr": 16000}
        prob, state = _artifact_outputs(art, held)
        assert np.max(np.abs(prob.reshape(prob_ref.shape) - prob_ref)) < 1e-4, t
        assert np.max(np.abs(state.reshape(state_ref.shape) - state_ref)) < 1e-3, t


@pytest.mark.slow
def test_torchscript_with_a_bound_argument(tmp_path):
    """A scripted model with `forward(x, sr: int)` branching on sr (as silero's .jit does) converts
    through its ONNX export, and the artifact matches the TorchScript model itself."""
    import torch

    script = tmp_path / "vad.py"
    script.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv1d(1, 8, 5)\n"
        "        self.head = torch.nn.Linear(8, 2)\n"
        "    def forward(self, x, sr: int):\n"
        "        y = self.conv(x).mean(-1)\n"
        "        if sr == 16000:\n"
        "            y = y * 2.0\n"
        "        return self.head(y)\n")
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("vad_ts", script)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.Net().eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "vad.jit"))
    x = np.random.default_rng(1).standard_normal((12, 1, 400)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = convert_many(str(tmp_path / "vad.jit"), ["onnx-fp32", "tflite-fp32"], input_shapes=[(1, 1, 400)], calibration=str(tmp_path / "x.npy"),
                       inputs=InputOptions(bind={"sr": 16000}), out_root=tmp_path / "out")
    assert all(r.error is None for r in res), [str(r.error) for r in res]
    with torch.no_grad():
        want = net(torch.from_numpy(x), 16000).numpy()
    for r in res:
        assert r.artifact.manifest.recipe["export"]["source_format"] == "torchscript"
        (got,) = Model(r.artifact.path).run_batch(x)
        assert np.max(np.abs(got - want)) < 1e-4, r.target


# ---- bad input: one line, exit 2, nothing written

def test_dynamic_dims_need_input_shape(tmp_path):
    p = cli("convert", str(of.path("rapidocr_cls")), "--target", "onnx-fp32", "--calib", "random", "--out-dir", str(tmp_path / "out"))
    line = assert_one_line_error(*p, 2)
    assert "dynamic dims [?,3,?,?]" in line and "--input-shape x=1,3,N,N" in line
    assert not (tmp_path / "out").exists()


def test_input_shape_that_contradicts_the_file(tmp_path):
    p = cli("convert", str(of.path("rapidocr_cls")), "--target", "onnx-fp32", "--input-shape", "x=1,4,48,192", "--out-dir", str(tmp_path / "out"))
    assert "does not fit input 'x'" in assert_one_line_error(*p, 2)
    p = cli("convert", str(of.path("rapidocr_cls")), "--target", "onnx-fp32", "--input-shape", "y=1,3,48,192", "--out-dir", str(tmp_path / "out"))
    assert "no input named 'y'" in assert_one_line_error(*p, 2)


def test_unbound_integer_input_and_bad_bind(tmp_path):
    f = of.FILES["silero_vad"]
    shapes = [a for s in f.input_shape_args for a in ("--input-shape", s)]
    p = cli("convert", str(of.path("silero_vad")), "--target", "onnx-fp32", *shapes, "--bind", "rate=16000", "--out-dir", str(tmp_path / "out"))
    assert "no input named 'rate'" in assert_one_line_error(*p, 2)
    p = cli("convert", str(of.path("silero_vad")), "--target", "onnx-fp32", *shapes[:2], "--bind", "sr=16000", "--out-dir", str(tmp_path / "out"))
    assert "input 'state'" in assert_one_line_error(*p, 2)  # its batch dim is dynamic and not the first


def test_quantized_onnx_is_refused(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    q = tmp_path / "cls-int8.onnx"
    quantize_dynamic(str(of.path("mtcnn_onet")), str(q))
    p = cli("convert", str(q), "--target", "tflite-fp32", "--out-dir", str(tmp_path / "out"))
    line = assert_one_line_error(*p, 2)
    assert "already quantized" in line and "float ONNX file" in line


def test_pt2e_target_from_onnx_is_refused_before_converting(tmp_path):
    args = [a for s in of.FILES["mtcnn_onet"].input_shape_args for a in ("--input-shape", s)]
    p = cli("convert", str(of.path("mtcnn_onet")), "--target", "onnx-fp32", "--target", "tflite-int8-pt2e", *args,
            "--calib", "random", "--out-dir", str(tmp_path / "out"))
    assert "quantizes a PyTorch graph" in assert_one_line_error(*p, 2)
    assert not (tmp_path / "out").exists()


def test_external_weights_outside_the_folder_are_refused(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    (tmp_path / "m").mkdir()
    onnx.external_data_helper.set_external_data(model.graph.initializer[0], location="../secret.bin")
    model.graph.initializer[0].ClearField("raw_data")
    model.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    p = cli("convert", str(path), "--target", "onnx-fp32", "--calib", "random", "--out-dir", str(tmp_path / "out"))
    assert "not a file beside it" in assert_one_line_error(*p, 2)
