"""A CNN trained on Fashion-MNIST (Debian's dataset-fashion-mnist), converted to every target;
task accuracy of each artifact on the full 10,000-image labeled test split."""

import numpy as np
import pytest

import edgekit
from edgekit import runtime
from edgekit.targets import list_targets

TARGETS = sorted(t.name for t in list_targets())
MODEL = "tests/models/fashion_cnn.py:build"


@pytest.fixture(scope="module")
def results(fashion_model, fashion_calib, fashion, tmp_path_factory):
    model, weights = fashion_model
    root = tmp_path_factory.mktemp("fashion")
    from edgekit.sources import load_model

    spec = load_model(MODEL, weights=weights)
    out = {}
    for name in TARGETS:
        art = edgekit.convert(spec, name, calibration=str(fashion_calib), out_dir=root / name)
        (logits,) = runtime.load(art.path).run_batch(fashion.test.x)
        out[name] = (art, float(np.mean(logits.argmax(1) == fashion.test.y)))
    return out


def test_the_float_model_is_really_trained(results):
    assert results["tflite-fp32"][1] > 0.83 and results["onnx-fp32"][1] > 0.83


@pytest.mark.parametrize("name", TARGETS)
def test_each_target_validates(results, name):
    art, acc = results[name]
    v = art.validation
    assert v["status"] in ("ok", "warn"), v
    assert v["synthetic_inputs"] is False and v["samples"] == 250  # a random quarter of the 1000 calibration images
    assert art.manifest.calibration is None or art.manifest.calibration["samples"] == 200


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_within_one_point_of_fp32_on_the_test_split(results, fmt):
    fp32, int8 = results[f"{fmt}-fp32"][1], results[f"{fmt}-int8"][1]
    assert fp32 - int8 <= 0.01, (fp32, int8)


def test_int8_tflite_size(results):
    ratio = results["tflite-int8"][0].size_bytes / results["tflite-fp32"][0].size_bytes
    assert ratio <= 0.30, ratio


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_fp16_halves_the_file(results, fmt):
    ratio = results[f"{fmt}-fp16"][0].size_bytes / results[f"{fmt}-fp32"][0].size_bytes
    assert ratio <= 0.55, ratio


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int4_weights_shrink_the_dense_layers_and_keep_accuracy(results, fmt):
    """The CNN's parameters are 85% Linear(1024, 128): int4 blocks there shrink the file well below int8's fp32 share."""
    art, acc = results[f"{fmt}-int4"]
    ratio = art.size_bytes / results[f"{fmt}-fp32"][0].size_bytes
    assert ratio <= 0.40, ratio
    assert results[f"{fmt}-fp32"][1] - acc <= 0.015, (results[f"{fmt}-fp32"][1], acc)
    q = art.manifest.recipe["quantize"]
    if fmt == "onnx":
        assert q["matmulnbits_nodes"] == 2 and q["bits"] == 4
    else:
        assert q["recipe"][0]["op_config"]["weight_tensor_config"] == {"num_bits": 4, "symmetric": True, "granularity": "BLOCKWISE_32", "dtype": "INT"}
