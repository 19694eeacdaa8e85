"""Training data for the compression methods, read through edgekit.calibration.

Sources: an .npz (one array per model input, or `x` for one input; optionally a `y`/`labels` array of
class indices, and arrays named after the model's outputs holding the wanted outputs), a .npy (one
input, no labels), a folder of class-named image folders (the folder is the label; needs a
preprocessing spec) or of plain images/.npy files (unlabelled), the named datasets `digits` /
`fashion-mnist`, (x, y) arrays or a {input name: array} dict. Labels are optional: an output without
labels or target arrays learns the reference model's outputs (the model before compression, or
the teacher). Validation data is `val` when given (a named dataset's test split), else a seeded
hold-out from the training data, never overlapping it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.calibration import LABEL_KEYS, CalibrationData, list_specs, load_calibration, load_spec
from edgekit.errors import CalibrationError


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how much of it is used."""

    data_spec: str | None = None  # preprocessing spec for image folders (calibration/*.toml)
    labels_key: str | None = None  # labels array in an .npz (default: y, labels, label or targets)
    max_samples: int | None = None  # train on at most this many samples (a seeded random subset)
    val_fraction: float = 0.1  # held out from the training data when no validation source is given
    max_val_samples: int = 5000


DEFAULT_DATA = DataConfig()


@dataclass(frozen=True)
class Samples:
    """Samples (first axis) for every model input, in the model's input order and dtypes; optional class labels
    and per-output target arrays."""

    inputs: dict[str, np.ndarray]
    source: str
    labels: np.ndarray | None = None
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def arrays(self) -> list[np.ndarray]:
        return list(self.inputs.values())

    @property
    def x(self) -> np.ndarray:  # the single input of a one-input model
        return self.arrays[0]

    @property
    def y(self) -> np.ndarray | None:
        return self.labels

    def take(self, idx: np.ndarray) -> Samples:
        return Samples({k: v[idx] for k, v in self.inputs.items()}, self.source, None if self.labels is None else self.labels[idx],
                       {k: v[idx] for k, v in self.targets.items()})

    def summary(self) -> dict:
        out: dict = {"source": self.source, "samples": len(self), "labels": self.labels is not None}
        if self.targets:
            out["targets"] = sorted(self.targets)
        return out


def Labelled(x: np.ndarray, y: np.ndarray | None, source: str = "arrays") -> Samples:  # noqa: N802  (the old name, kept)
    """One-input samples with class labels."""
    return Samples({"input": np.asarray(x)}, source, None if y is None else np.asarray(y))


def _named_datasets() -> list[str]:
    return [n for n in list_specs() if "dataset" in load_spec(n)]


def describe(source: Any) -> str | None:
    """A source worth recording in a compressed model, so `edgekit convert` can find the data again."""
    if isinstance(source, (str, Path)):
        s = str(source)
        return s if s in _named_datasets() else str(Path(s).resolve())
    return None


def _targets_in(path: Path, output_names: list[str]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {n: z[n] for n in output_names if n in z.files}


def load(source: Any, spec, *, split: str = "train", cfg: DataConfig = DEFAULT_DATA, what: str = "training data") -> Samples:
    """Read one source and check it against the model's inputs (names, shapes, dtypes) and outputs (target arrays)."""
    names = list(spec.input_names)
    labels, targets = None, {}
    if isinstance(source, Samples):
        targets = dict(source.targets)
        source = CalibrationData(source.source, dict(zip(names, source.arrays)), source.labels)
    elif isinstance(source, tuple) and len(source) == 2:
        labels = None if source[1] is None else np.asarray(source[1])
        source = CalibrationData("arrays", {names[0]: np.asarray(source[0])}, labels)
    elif isinstance(source, dict):
        arrays = dict(source)
        labels = next((np.asarray(arrays.pop(k)) for k in LABEL_KEYS if k in arrays), None)
        targets = {n: np.asarray(arrays.pop(n)) for n in spec.output_names if n in arrays and n not in names}
        source = CalibrationData("arrays", arrays, labels)
    elif hasattr(source, "x") and hasattr(source, "y"):  # an edgekit.datasets Split
        source = CalibrationData("arrays", {names[0]: source.x}, source.y)
    elif isinstance(source, (str, Path)):
        s = str(source)
        if s == "random":
            raise CalibrationError(f"{what} cannot be random: training needs real inputs",
                                   "give an .npz/.npy, a folder of images (or class folders), digits or fashion-mnist")
        if s not in _named_datasets() and not Path(s).exists():
            raise CalibrationError(f"{what} not found: {s}",
                                   f"give an .npz, .npy, a folder of images or class folders, or one of: {', '.join(_named_datasets())}")
    data = load_calibration(source, names, [i.shape for i in spec.inputs], split=split, spec_name=cfg.data_spec,
                            labels_key=cfg.labels_key, inputs=spec.inputs)
    if isinstance(source, (str, Path)) and str(source).endswith(".npz"):
        targets = _targets_in(Path(source), [n for n in spec.output_names if n not in names])
    y = None
    if data.labels is not None:
        y = np.asarray(data.labels)
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise CalibrationError(f"labels from {data.source} must be one integer class per sample, got {y.dtype} {y.shape}",
                                   "store class indices (0 .. classes-1), or arrays named after the outputs for other targets")
        y = y.astype(np.int64)
    for name, t in targets.items():
        if len(t) != len(data):
            raise CalibrationError(f"{data.source}: target {name!r} has {len(t)} samples, the inputs {len(data)}", "one target row per sample")
    return Samples({n: data.arrays[n] for n in names}, data.source, y, targets)


def train_val(data: Any, val: Any, spec, cfg: DataConfig, seed: int) -> tuple[Samples, Samples]:
    """(training samples, validation samples), never overlapping when both come from one source."""
    train = load(data, spec, split="train", cfg=cfg)
    rng = np.random.default_rng(seed)
    if val is not None:
        held = load(val, spec, split="test", cfg=cfg, what="validation data")
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
