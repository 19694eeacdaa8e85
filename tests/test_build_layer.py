"""The build layer's contract (fast tier: no conversion runs here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgekit.build import EXPORTERS, FUSED, QUANTIZERS, check_route, match_names
from edgekit.errors import UsageError
from edgekit.inputs import parse_shapes
from edgekit.runtime.backends import TensorInfo
from edgekit.targets import load_target
from tests.safety._common import REPO


def test_build_sits_under_pipeline_diagnose_and_budget():
    """Importing the build layer (and diagnose, budget) never pulls in the pipeline or the CLI above them."""
    code = ("import sys, edgekit.build, edgekit.diagnose, edgekit.budget, edgekit.onnx_source\n"
            "above = [m for m in ('edgekit.pipeline', 'edgekit.cli') if m in sys.modules]\n"
            "assert not above, above\n"
            "import edgekit.pipeline\n"
            "assert 'edgekit.cli' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert p.returncode == 0, p.stderr[-800:]


def test_every_source_kind_reaches_every_format():
    assert set(EXPORTERS) == {(k, f) for k in ("torch", "onnx") for f in ("onnx", "tflite")}
    assert set(QUANTIZERS) == {"ort", "aeq"} and set(FUSED) == {("torch", "pt2e")}


def _infos(*names):
    return [TensorInfo(n, (1,), "float32") for n in names]


@pytest.mark.parametrize("names, runtime, want", [
    (["x", "state"], ["state", "x"], [1, 0]),  # a TFLite signature lists its keys sorted
    (["input.1", "h0"], ["h0", "input_1"], [1, 0]),  # converters fold punctuation
    (["input"], ["serving_default_args_0:0"], [0]),  # litert-torch's own names: by position
    (["a", "b"], ["a", "a"], [0, 1]),  # ambiguous: by position
])
def test_match_names(names, runtime, want):
    assert match_names(names, _infos(*runtime)) == want


def test_pt2e_needs_a_pytorch_graph():
    class Onnx:
        kind, source = "onnx", "m.onnx"

    with pytest.raises(UsageError, match="quantizes a PyTorch graph"):
        check_route(Onnx(), load_target("tflite-int8-pt2e"))
    check_route(Onnx(), load_target("tflite-int8"))


@pytest.mark.parametrize("texts, want", [
    (["1,3,224,224"], ([(1, 3, 224, 224)], {})),
    (["x=1,3,48,192", "state=2,1,128"], (None, {"x": (1, 3, 48, 192), "state": (2, 1, 128)})),
    (["1x3x8x8"], ([(1, 3, 8, 8)], {})),
])
def test_parse_shapes(texts, want):
    assert parse_shapes(texts) == want


@pytest.mark.parametrize("texts, match", [
    (["x=1,3", "1,3"], "mixes named"),
    (["x=1,3", "x=1,4"], "twice"),
    (["=1,3"], "bad --input-shape"),
    (["x=1,0"], "positive"),
])
def test_parse_shapes_refuses(texts, match):
    with pytest.raises(UsageError, match=match):
        parse_shapes(texts)
