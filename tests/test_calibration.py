import numpy as np
import pytest

from edgekit.calibration import load_calibration, split_holdout
from edgekit.errors import CalibrationError

NAMES, SHAPES = ["input"], [(1, 1, 8, 8)]


def load(src, **kw):
    return load_calibration(src, NAMES, SHAPES, **kw)


def test_npy_npz_and_folder(tmp_path):
    x = np.random.rand(20, 1, 8, 8).astype(np.float32)
    np.save(tmp_path / "c.npy", x)
    assert len(load(str(tmp_path / "c.npy"))) == 20
    np.savez(tmp_path / "c.npz", input=x, y=np.arange(20))
    d = load(str(tmp_path / "c.npz"))
    assert len(d) == 20 and d.labels is not None
    (tmp_path / "f").mkdir()
    for i in range(5):
        np.save(tmp_path / "f" / f"{i}.npy", x[i])
    assert load(str(tmp_path / "f")).arrays["input"].shape == (5, 1, 8, 8)


def test_image_folder_with_spec(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray((np.random.rand(40, 30) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    with pytest.raises(CalibrationError, match="--calib-spec"):
        load_calibration(str(tmp_path / "imgs"), NAMES, [(1, 1, 28, 28)])
    d = load_calibration(str(tmp_path / "imgs"), NAMES, [(1, 1, 28, 28)], spec_name="grayscale-28")
    a = d.arrays["input"]
    assert a.shape == (3, 1, 28, 28) and 0.0 <= a.min() and a.max() <= 1.0


def test_named_dataset_has_labels():
    d = load("digits")
    assert len(d) > 1000 and d.labels is not None


@pytest.mark.parametrize("arr,match", [
    (np.random.rand(10, 1, 9, 9).astype(np.float32), r"samples of shape \(1, 9, 9\)"),
    (np.random.rand(1, 8, 8).astype(np.float32), "one sample without the samples axis"),
    (np.zeros((0, 1, 8, 8), np.float32), "empty"),
    ((np.random.rand(10, 1, 8, 8) * 255).astype(np.uint8), "uint8"),
])
def test_mismatched_data_is_rejected(tmp_path, arr, match):
    np.save(tmp_path / "c.npy", arr)
    with pytest.raises(CalibrationError, match=match):
        load(str(tmp_path / "c.npy"))


def test_nan_and_inf_are_rejected(tmp_path):
    x = np.random.rand(10, 1, 8, 8).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    x[7, 0, 0, 0] = np.inf
    np.save(tmp_path / "c.npy", x)
    with pytest.raises(CalibrationError, match="2 NaN/Inf values .first in sample 3"):
        load(str(tmp_path / "c.npy"))


def test_missing_source_lists_alternatives():
    with pytest.raises(CalibrationError, match="not found: no/such/thing.npy"):
        load("no/such/thing.npy")
    with pytest.raises(CalibrationError, match="digits"):
        load("no-such-dataset")
    with pytest.raises(CalibrationError, match="random"):
        load("nonsense")


def test_holdout_never_overlaps_calibration():
    x = np.arange(100, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 8, 8), np.float32)
    d = load(x)
    calib, val = split_holdout(d, calib_samples=200, val_samples=50)
    assert len(val) == 25 and len(calib) == 75  # a random quarter
    assert not set(calib.arrays["input"][:, 0, 0, 0]) & set(val.arrays["input"][:, 0, 0, 0])
