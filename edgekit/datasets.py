"""Real labeled data available offline: scikit-learn's digits (shipped with scikit-learn) and
Fashion-MNIST (Debian's dataset-fashion-mnist, IDX files under /usr/share/datasets).

Every loader returns float32 images in NCHW scaled to [0, 1] and int64 labels.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import CalibrationError

FASHION_MNIST_DIR = Path(os.environ.get("EDGEKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digit images, split reproducibly into train and test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = idx[:n_test], idx[n_test:]
    return Dataset("digits", Split(x[tr], y[tr]), Split(x[te], y[te]), tuple(str(i) for i in range(10)))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(root: Path | None = None) -> Dataset:
    """Fashion-MNIST: 60,000 train and 10,000 test 28x28 grayscale images, 10 classes."""
    root = Path(root or FASHION_MNIST_DIR)
    files = {k: root / f"{k}-{kind}-idx{n}-ubyte.gz" for k in ("train", "t10k")
             for kind, n in (("images", 3),)}
    if not all(p.is_file() for p in files.values()):
        raise CalibrationError(f"Fashion-MNIST not found under {root}",
                               "install it with `apt-get install dataset-fashion-mnist` or set EDGEKIT_FASHION_MNIST")

    def split(prefix: str) -> Split:
        x = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
        y = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        return Split(x, y)

    return Dataset("fashion-mnist", split("train"), split("t10k"), FASHION_MNIST_CLASSES)


LOADERS = {"digits": digits, "fashion-mnist": fashion_mnist}


def load(name: str) -> Dataset:
    try:
        return LOADERS[name]()
    except KeyError:
        raise CalibrationError(f"unknown dataset {name!r}", f"known: {', '.join(LOADERS)}") from None
