import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "models"))
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fashion():
    from edgekit.datasets import fashion_mnist

    return fashion_mnist()


@pytest.fixture(scope="session")
def fashion_model(fashion, tmp_path_factory):
    """A Fashion-MNIST CNN trained here (60k images, 1 epoch, ~20 s, ~85% test accuracy), saved as a state dict."""
    import fashion_cnn

    model = fashion_cnn.train(fashion.train.x, fashion.train.y, epochs=1, batch=64)
    path = tmp_path_factory.mktemp("fashion") / "fashion_cnn.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="session")
def fashion_calib(fashion, tmp_path_factory):
    """Calibration images from the train split, as a user would ship them: an .npy."""
    path = tmp_path_factory.mktemp("calib") / "fashion_calib.npy"
    np.save(path, fashion.train.x[-1000:])
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args, cwd=None, env=None):
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    e["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=600)
