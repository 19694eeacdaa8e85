"""The real ONNX files of tests/models/onnx_files.py (installed by scripts/setup-models.sh) and their
realistic inputs: the files are the recorded ones, the inputs fit them, ONNX Runtime runs them, and
the data means what it says (speech, faces, text). These check the fixtures, not edgekit."""

import hashlib

import numpy as np
import onnx
import pytest

import onnx_files as of

NAMES = list(of.FILES)
ONNX_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64}


def _graph_inputs(name):
    g = onnx.load(str(of.path(name)), load_external_data=False).graph
    weights = {t.name for t in g.initializer}
    return [i for i in g.input if i.name not in weights]


@pytest.mark.parametrize("name", NAMES)
def test_file_is_the_recorded_one(name):
    sha256, package, member = of.recorded(name)
    assert member.endswith("/" + of.FILES[name].file) and "==" in package
    assert hashlib.sha256(of.path(name).read_bytes()).hexdigest() == sha256


def test_missing_file_names_the_setup_script(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_MODEL_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="scripts/setup-models.sh"):
        of.path("silero_vad")


@pytest.mark.parametrize("name", NAMES)
def test_inputs_fit_the_file_and_ort_runs_it(name):
    spec = of.FILES[name]
    x = of.inputs(name, 2)
    graph_inputs = _graph_inputs(name)
    assert list(spec.shapes) == [i.name for i in graph_inputs if i.name not in spec.bind] == list(x)
    assert {i.name for i in graph_inputs} == set(spec.shapes) | set(spec.bind)
    for i in graph_inputs:
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        if i.name in spec.bind:  # silero's sr: an int64 scalar
            assert dims == [] and ONNX_DTYPES[t.elem_type] == np.int64
            continue
        shape = spec.shapes[i.name]
        assert len(dims) == len(shape) and all(d in (None, s) for d, s in zip(dims, shape)), (i.name, dims, shape)
        assert x[i.name].shape == (2, *shape) and x[i.name].dtype == ONNX_DTYPES[t.elem_type]
        assert np.isfinite(x[i.name]).all() and x[i.name].std() > 0
    assert spec.input_shape_args == tuple(f"{k}={','.join(map(str, v))}" for k, v in spec.shapes.items())
    y = of.run(name, x)
    for out, v in y.items():
        assert len(v) == 2 and v.dtype == np.float32 and np.isfinite(v).all(), out
    again = of.inputs(name, 2)
    assert all(np.array_equal(x[k], again[k]) for k in x)  # deterministic


def test_silero_scores_speech_above_pauses():
    x = of.inputs("silero_vad", 300)
    y = of.labels("silero_vad", 300)
    p = of.run("silero_vad", x)["output"].ravel()
    assert (y == 1).sum() > 100 and (y == 0).sum() > 30
    assert np.median(p[y == 1]) > 0.9 and p[y == 1].mean() > 0.8
    assert np.median(p[y == 0]) < 0.1 and p[y == 0].mean() < 0.2
    # the state really is the trajectory: feeding sample i's output state gives the next sample's state
    seq = of._silero_stream(1200)
    nxt = of.run("silero_vad", {"input": seq[0][:3], "state": seq[1][:3]})["stateN"]
    np.testing.assert_allclose(nxt[:2], seq[1][1:3], atol=1e-6)


def test_onet_scores_faces_above_non_faces():
    x = of.inputs("mtcnn_onet", 40)
    y = of.labels("mtcnn_onet", 40)
    p = of.run("mtcnn_onet", x)["softmax_2"][:, 0, 1]
    assert p[y == 1].min() > 0.9 and np.median(p[y == 0]) < 0.05
    assert p[y == 1].min() > p[y == 0].max()
    # the layout matters: the same faces untransposed (plain NHWC) are mostly missed
    plain = of.run("mtcnn_onet", {"input_3": x["input_3"].transpose(0, 1, 3, 2, 4)})["softmax_2"][:, 0, 1]
    assert np.median(plain[y == 1]) < 0.5


def test_pnet_finds_faces_in_face_windows():
    x = of.inputs("mtcnn_pnet", 20)
    y = of.labels("mtcnn_pnet", 20)
    best = of.run("mtcnn_pnet", x)["softmax"][..., 1].reshape(20, -1).max(1)
    assert np.median(best[y == 1]) > 0.9 and np.median(best[y == 0]) < 0.5


def test_nudenet_sees_the_astronauts_face_and_nothing_in_nature():
    x = of.inputs("nudenet_320n", 13)  # the astronaut, then the 12 nature photos
    scores = of.run("nudenet_320n", x)["output0"][:, 0, 4:]  # [13, 18 classes, 2100 anchors]
    assert scores[0].max(1).argmax() == 1 and scores[0].max() > 0.5  # class 1: FACE_FEMALE
    assert scores[1:].max() < 0.5


def test_ocr_reads_the_page():
    x = of.inputs("rapidocr_rec", len(of.PAGE_LINES))  # the first piece of each line of page.png
    text = [of.ocr_text(o) for o in of.run("rapidocr_rec", x)["softmax_11.tmp_0"]]
    for got, want in zip(text, ("Region-based", "Let us first", "background", "unambiguously", "the markers", "histogram", "markers")):
        assert want.replace(" ", "") in got.replace(" ", ""), text
    cls = of.run("rapidocr_cls", of.inputs("rapidocr_cls", 24))["save_infer_model/scale_0.tmp_1"][:, 0]
    assert (cls.argmax(1) == of.labels("rapidocr_cls", 24)).mean() >= 0.7


def test_det_finds_the_page_lines_not_photos():
    from scipy import ndimage

    x = of.inputs("rapidocr_det", 6)  # page, text.png, page turned 4 degrees, three nature photos
    prob = of.run("rapidocr_det", x)["sigmoid_0.tmp_0"][:, 0, 0]
    regions = []
    for p in prob:
        lab, k = ndimage.label(p > 0.3)
        regions.append(int((np.asarray(ndimage.mean(p, lab, range(1, k + 1))) > 0.6).sum()) if k else 0)
    assert regions[0] == regions[2] == len(of.PAGE_LINES), regions
    assert max(regions[3:]) <= 1, regions


@pytest.mark.parametrize("name", ["silero_vad", "mtcnn_onet"])
def test_npz_is_what_edgekit_calib_reads(name, tmp_path):
    from edgekit.calibration import load_calibration
    from edgekit.inputs import InputSpec

    spec = of.FILES[name]
    p = of.write_npz(name, 4, tmp_path / "data.npz")
    specs = [InputSpec(k, shape, batched=k not in spec.state) for k, shape in spec.shapes.items()]
    data = load_calibration(str(p), list(spec.shapes), list(spec.shapes.values()), inputs=specs)
    x = of.inputs(name, 4)
    calls = list(data.samples(batch=1))
    assert len(calls) == 4 and all(np.array_equal(calls[i][k], x[k][i]) for i in range(4) for k in x)
