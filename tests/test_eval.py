"""edgekit eval: task accuracy on labelled data, on the host and on a device, against a reference."""

import json

import numpy as np
import pytest

from edgekit.datasets import digits
from edgekit.errors import CalibrationError, UsageError
from edgekit.evaluate import evaluate, mean_kl

from conftest import run_cli


@pytest.fixture
def art(digits_int8):
    return digits_int8


def test_host_eval_against_the_reference(art):
    got = []
    r = evaluate(art, "digits", reference="edgekit.examples.digits:build", progress=lambda d, t: got.append((d, t)))
    test = digits().test
    assert r.samples == len(test.y) and r.data == "digits:test" and r.device == "host"
    assert r.metrics["top1"] > 0.97 and r.metrics["top5"] >= r.metrics["top1"]
    assert abs(r.metrics["top1"] - r.metrics["reference_accuracy"]) <= 0.01
    assert r.metrics["top1_agreement"] > 0.98 and 0 <= r.metrics["mean_kl"] < 0.01
    assert got[-1] == (len(test.y), len(test.y))


def test_device_eval_gives_the_host_numbers(art, tmp_path):
    from edgekit.devices.profiles import DeviceProfile
    import sys

    dev = DeviceProfile(name="local-eval", transport="local", python=sys.executable, workdir=str(tmp_path / "w"))
    host = evaluate(art, "digits", samples=100)
    on_dev = evaluate(art, "digits", samples=100, device=dev)
    assert on_dev.device == "local-eval" and on_dev.metrics == host.metrics
    assert list((tmp_path / "w").iterdir()) == []


def test_npz_with_a_labels_key_and_class_folders(art, tmp_path):
    test = digits().test
    np.savez(tmp_path / "t.npz", input=test.x[:50], cls=test.y[:50])
    r = evaluate(art, str(tmp_path / "t.npz"), labels_key="cls")
    assert r.samples == 50 and r.metrics["top1"] > 0.9
    with pytest.raises(CalibrationError, match="no array 'label_id'"):
        evaluate(art, str(tmp_path / "t.npz"), labels_key="label_id")
    from PIL import Image

    spec = tmp_path / "digits8.toml"
    spec.write_text('color = "L"\nresize = 8\ncrop = 8\nscale = 0.00392156862745098\nlayout = "NCHW"\n')
    for i in range(30):
        d = tmp_path / "imgs" / str(test.y[i])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((test.x[i, 0] * 255).round().astype(np.uint8)).save(d / f"{i}.png")
    r = evaluate(art, str(tmp_path / "imgs"), data_spec=str(spec))
    assert r.samples == 30 and r.metrics["top1"] > 0.8  # folder names are the labels, sorted


def test_nothing_to_score_is_a_clear_error(art, tmp_path):
    np.save(tmp_path / "x.npy", digits().test.x[:10])
    with pytest.raises(UsageError, match="nothing to score"):
        evaluate(art, str(tmp_path / "x.npy"))


def test_mean_kl():
    a = np.array([[2.0, 0.0, -1.0]])
    assert mean_kl(a, a) == pytest.approx(0.0, abs=1e-9)
    assert mean_kl(a, a[:, ::-1]) > 0.5


def test_cli_eval_json(art, tmp_path):
    p = run_cli("eval", art, "--data", "digits", "--samples", "60", "--json", tmp_path / "e.json")
    assert p.returncode == 0, p.stderr
    assert "top-1 accuracy" in p.stdout
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["samples"] == 60 and res["metrics"]["top1"] > 0.9
