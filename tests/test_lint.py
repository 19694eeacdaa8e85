"""Pre-conversion lint: heard before a conversion starts."""

import torch
from torch import nn

from edgekit.lint import lint
from edgekit.sources import load_model
from edgekit.targets import load_target, parse_target

from conftest import run_cli


class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = nn.SiLU()
        self.pool = nn.AvgPool2d(12)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv.weight[3] *= 100.0  # one outlier output channel

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def test_findings_per_target():
    spec = load_model(Hostile(), input_shapes=[(1, 3, 14, 14)])
    kinds = {f.kind for f in lint(spec, load_target("tflite-int8"))}
    assert kinds == {"wide-activation", "large-pool"}  # per-channel weights: the outlier channel is fine
    assert lint(spec, load_target("tflite-int16x8")) == [] and lint(spec, load_target("tflite-fp32")) == []
    d = load_target("onnx-int8").to_dict()
    per_tensor = parse_target({"name": "pt", "format": "onnx", "precision": "int8",
                               "quantize": {**d["quant"], "per_channel": False}}, "test")
    f = {x.kind: x for x in lint(spec, per_tensor)}
    assert f["channel-spread"].layers == ("conv",)


def test_bundled_model_is_clean():
    assert lint(load_model(), load_target("tflite-int8")) == []


def test_cli_prints_lint_before_converting(in_tmp):
    (in_tmp / "net.py").write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.Flatten(), nn.Linear(8 * 14 * 14, 4))\n")
    p = run_cli("convert", "net.py:build", "--input-shape", "1,3,16,16", "--target", "onnx-int8", "--calib", "random", cwd=in_tmp)
    assert "lint onnx-int8" in p.stderr and "Hardswish" in p.stderr
    assert p.stderr.index("lint") < p.stderr.index("export")
