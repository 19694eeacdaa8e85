"""Labelled training data for the compression methods, read through edgekit.calibration.

Sources: an .npz (inputs + a `y`/`labels` array), a folder of class-named image folders (the
folder is the label; needs a preprocessing spec), the named datasets `digits` / `fashion-mnist`,
a CalibrationData with labels, or (x, y) arrays. Validation data is `val` when given (a named
dataset's test split), else a seeded hold-out from the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.calibration import CalibrationData, list_specs, load_calibration, load_spec
from edgekit.errors import CalibrationError, UsageError


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled data comes from and how much of it is used."""

    data_spec: str | None = None  # preprocessing spec for image folders (calibration/*.toml)
    labels_key: str | None = None  # labels array in an .npz (default: y, labels, label or targets)
    max_samples: int | None = None  # train on at most this many samples (a seeded random subset)
    val_fraction: float = 0.1  # held out from the training data when no validation source is given
    max_val_samples: int = 5000


DEFAULT_DATA = DataConfig()


@dataclass(frozen=True)
class Labelled:
    """Samples (first axis) in the model's input layout, float32, with int64 class labels."""

    x: np.ndarray
    y: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> Labelled:
        return Labelled(self.x[idx], self.y[idx], self.source)

    def summary(self) -> dict:
        return {"source": self.source, "samples": len(self)}


def _named_datasets() -> list[str]:
    return [n for n in list_specs() if "dataset" in load_spec(n)]


def describe(source: Any) -> str | None:
    """A source worth recording in a compressed model, so `edgekit convert` can find the data again."""
    if isinstance(source, (str, Path)):
        s = str(source)
        return s if s in _named_datasets() else str(Path(s).resolve())
    return None


def load_labelled(source: Any, input_names: list[str], input_shapes: list[tuple[int, ...]], *, split: str = "train",
                  cfg: DataConfig = DEFAULT_DATA, what: str = "training data") -> Labelled:
    """Read one labelled source and check it against the model's (single) input."""
    if len(input_names) != 1:
        raise UsageError(f"the model has {len(input_names)} inputs; compression trains single-input classifiers only",
                         "wrap the model so it takes one input tensor")
    if isinstance(source, tuple) and len(source) == 2:
        source = CalibrationData("arrays", {input_names[0]: np.asarray(source[0])}, np.asarray(source[1]))
    elif hasattr(source, "x") and hasattr(source, "y"):  # an edgekit.datasets Split
        source = CalibrationData("arrays", {input_names[0]: source.x}, source.y)
    elif isinstance(source, (str, Path)):
        s = str(source)
        if s == "random":
            raise CalibrationError(f"{what} cannot be random: training needs labels", "give an .npz with a y array, class folders, digits or fashion-mnist")
        if s not in _named_datasets() and not Path(s).exists():
            raise CalibrationError(f"{what} not found: {s}",
                                   f"give an .npz, a folder of class-named image folders, or one of: {', '.join(_named_datasets())}")
    data = load_calibration(source, input_names, input_shapes, split=split, spec_name=cfg.data_spec, labels_key=cfg.labels_key)
    if data.labels is None:
        raise CalibrationError(f"{what} from {data.source} has no labels",
                               "add a y array to the .npz (or pass --labels-key), or use class-named image folders")
    y = np.asarray(data.labels)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise CalibrationError(f"labels from {data.source} must be one integer class per sample, got {y.dtype} {y.shape}",
                               "store class indices (0 .. classes-1)")
    return Labelled(data.arrays[input_names[0]], y.astype(np.int64), data.source)


def train_val(data: Any, val: Any, input_names: list[str], input_shapes: list[tuple[int, ...]], cfg: DataConfig,
              seed: int) -> tuple[Labelled, Labelled]:
    """(training samples, validation samples), never overlapping when both come from one source."""
    train = load_labelled(data, input_names, input_shapes, split="train", cfg=cfg)
    rng = np.random.default_rng(seed)
    if val is not None:
        held = load_labelled(val, input_names, input_shapes, split="test", cfg=cfg, what="validation data")
        held = held.take(np.arange(min(len(held), cfg.max_val_samples)))
    else:
        order = rng.permutation(len(train))
        n_val = min(cfg.max_val_samples, int(len(train) * cfg.val_fraction))
        if n_val < 1 or len(train) - n_val < 1:
            raise CalibrationError(f"{len(train)} samples in {train.source} are too few to hold some out for validation",
                                   "give more data, or validation data with --val")
        held = train.take(np.sort(order[:n_val]))
        train = train.take(np.sort(order[n_val:]))
    if cfg.max_samples is not None and cfg.max_samples < len(train):
        train = train.take(np.sort(rng.permutation(len(train))[: cfg.max_samples]))
    return train, held


def check_classes(train: Labelled, val: Labelled, num_outputs: int) -> None:
    top = int(max(train.y.max(), val.y.max()))
    if train.y.min() < 0 or top >= num_outputs:
        raise CalibrationError(f"labels run up to {top} but the model has {num_outputs} outputs",
                               "the labels must be class indices 0 .. outputs-1 of the model")
