import pytest
import torch
from torch import nn

from edgekit.errors import ModelLoadError, UsageError
from edgekit.sources import load_model, parse_shape


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def test_default_is_the_bundled_trained_digits_cnn():
    spec = load_model()
    assert spec.input_shapes == [(1, 1, 8, 8)] and spec.default_calibration == "digits"
    from edgekit.datasets import digits

    d = digits()
    with torch.no_grad():
        acc = (spec.module(torch.from_numpy(d.test.x)).argmax(1).numpy() == d.test.y).mean()
    assert acc > 0.97


def test_file_factory_with_shape_attribute(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch\nfrom torch import nn\n"
                 "def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
                 "build.example_input_shape = (1, 3, 16, 16)\n")
    spec = load_model(f"{f}:build")
    assert spec.input_shapes == [(1, 3, 16, 16)] and spec.name == "net"


def test_module_attr_and_input_shape_flag():
    spec = load_model("torch.nn:Identity", input_shapes=[(2, 5)])
    assert spec.input_shapes == [(2, 5)]


def test_missing_shape_is_a_usage_error(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("from torch import nn\ndef build():\n    return nn.Linear(4, 2)\n")
    with pytest.raises(UsageError, match="--input-shape"):
        load_model(f"{f}:build")


def test_torchscript_and_exported_program(tmp_path):
    m = Tiny().eval()
    x = torch.rand(1, 4)
    torch.jit.save(torch.jit.trace(m, x), tmp_path / "m.pt")
    spec = load_model(str(tmp_path / "m.pt"), input_shapes=[(1, 4)])
    assert torch.allclose(spec.module(x), m(x))
    torch.export.save(torch.export.export(m, (x,)), tmp_path / "m.pt2")
    spec = load_model(str(tmp_path / "m.pt2"))
    assert spec.input_shapes == [(1, 4)]
    assert torch.allclose(spec.module(x), m(x))


def test_state_dict_file_explains_what_to_do(tmp_path):
    torch.save(Tiny().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="state dict"):
        load_model(str(tmp_path / "w.pt"), input_shapes=[(1, 4)])


def test_pickled_module_needs_explicit_trust(tmp_path):
    torch.save(Tiny(), tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(str(tmp_path / "whole.pt"), input_shapes=[(1, 4)])
    spec = load_model(str(tmp_path / "whole.pt"), input_shapes=[(1, 4)], trust_pickle=True)
    assert isinstance(spec.module, nn.Module)


def test_weights_flag_loads_a_state_dict(tmp_path):
    src = Tiny()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    f = tmp_path / "tiny.py"
    f.write_text("from torch import nn\nclass T(nn.Module):\n    def __init__(self):\n        super().__init__(); self.fc = nn.Linear(4, 3)\n"
                 "    def forward(self, x):\n        return self.fc(x)\ndef build():\n    return T()\n")
    spec = load_model(f"{f}:build", input_shapes=[(1, 4)], weights=tmp_path / "w.pt")
    assert torch.equal(spec.module.fc.weight, src.fc.weight)


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b"this is not a model"), "cannot read"),
    (lambda p: p.write_bytes(b"PK\x03\x04 broken zip"), "cannot read"),
])
def test_missing_and_corrupt_model_files(tmp_path, make, match):
    p = tmp_path / "model.pt"
    make(p)
    with pytest.raises(ModelLoadError, match=match):
        load_model(str(p), input_shapes=[(1, 4)])


def test_corrupt_pt2(tmp_path):
    p = tmp_path / "m.pt2"
    p.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="torch.export"):
        load_model(str(p))


def test_model_that_does_not_run_on_the_shape():
    with pytest.raises(ModelLoadError, match="does not run"):
        load_model(Tiny(), input_shapes=[(1, 5)])


@pytest.mark.parametrize("text", ["", "1,a,3", "1,0,3", "-1,3"])
def test_bad_shapes(text):
    with pytest.raises(UsageError):
        parse_shape(text)
