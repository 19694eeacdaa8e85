"""A two-input, two-output model through both formats, calibrated from an .npz keyed by input name."""

import numpy as np
import pytest

from conftest import assert_healthy
import torch

import edgekit
from edgekit import runtime

MODEL_PY = """
import torch
from torch import nn

class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.b = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, image, features):
        h = torch.cat([self.a(image), self.b(features)], 1)
        return self.head(h), h

def build():
    return TwoTower().eval()

build.example_input_shape = [(1, 3, 12, 12), (1, 6)]
"""


@pytest.mark.parametrize("target", ["onnx-int8", "tflite-int8", "tflite-fp32"])
def test_two_inputs_two_outputs(tmp_path, target):
    (tmp_path / "two.py").write_text(MODEL_PY)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input_0=rng.random((120, 3, 12, 12), np.float32), input_1=rng.random((120, 6), np.float32))
    art = edgekit.convert(f"{tmp_path / 'two.py'}:build", target, calibration=str(tmp_path / "calib.npz"), out_dir=tmp_path / target)
    m = art.manifest.to_dict()
    assert [i["name"] for i in m["inputs"]] == ["input_0", "input_1"]
    assert [o["source_shape"] for o in m["outputs"]] == [[1, 4], [1, 16]]
    assert_healthy(m["validation"])
    from edgekit.sources import load_model

    spec = load_model(f"{tmp_path / 'two.py'}:build")
    x0, x1 = rng.random((1, 3, 12, 12), np.float32), rng.random((1, 6), np.float32)
    ref = spec.reference_outputs(torch.from_numpy(x0), torch.from_numpy(x1))
    got = runtime.load(art.path)(x0, x1)
    for r, g in zip(ref, got):
        assert g.shape == tuple(r.shape)
        assert np.abs(g - r.numpy()).max() <= 0.05 * np.abs(r.numpy()).max() + 1e-3
