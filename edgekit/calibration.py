"""Calibration (and validation) data: read, check against the model's inputs, split.

Sources: a .npy (first axis = samples), a .npz (one array per input name, optional labels),
a folder of .npy files (one sample each) or of images (preprocessed by a calibration/*.toml
spec), a named dataset spec from calibration/ (`digits`, `fashion-mnist`), or `random`.
Everything is checked before any conversion starts: shape, dtype, NaN/Inf, emptiness.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgekit.catalog import toml_catalogue
from edgekit.errors import CalibrationError
from edgekit.inputs import InputSpec
from edgekit.runtime.manifest import integer_bounds

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
LABEL_KEYS = ("y", "labels", "label", "targets")
SEQUENCE_KEYS = ("sequence", "sequence_ids")  # streaming data: one sequence id per sample, samples in time order


@dataclass
class CalibrationData:
    """Samples for every model input, first axis = samples, in the PyTorch model's layout."""

    source: str
    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False  # random data: fine for float targets' smoke checks, not for int8 ranges
    notes: list[str] = field(default_factory=list)
    classes: list[str] | None = None  # class names, when the source has them
    unbatched: frozenset = frozenset()  # inputs whose samples are whole tensors (state): one per model call
    sequence: np.ndarray | None = None  # streaming data: which sequence each sample belongs to (samples in time order)
    preprocess: dict | None = None  # images read through a spec: its ImagePreprocess.to_dict() (the manifest keeps it)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def take(self, idx: slice | np.ndarray) -> "CalibrationData":
        return CalibrationData(self.source, {k: v[idx] for k, v in self.arrays.items()},
                               None if self.labels is None else self.labels[idx], self.synthetic, list(self.notes),
                               self.classes, self.unbatched, None if self.sequence is None else self.sequence[idx], self.preprocess)

    def sequences(self) -> list[np.ndarray]:
        """Sample indices of each sequence, in time order (one sequence of everything when none are marked)."""
        if self.sequence is None:
            return [np.arange(len(self))]
        ids = list(dict.fromkeys(self.sequence.tolist()))
        return [np.flatnonzero(self.sequence == i) for i in ids]

    def samples(self, batch: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """One dict per model call: batched inputs with a leading batch axis of `batch`, inputs without a
        batch axis (state) as one whole sample."""
        n = len(self) - len(self) % batch
        for i in range(0, n, batch):
            yield {k: (v[i] if k in self.unbatched else v[i:i + batch]) for k, v in self.arrays.items()}

    def summary(self) -> dict:
        return {"source": self.source, "samples": len(self), "synthetic": self.synthetic,
                "labels": self.labels is not None}


# ---------------------------------------------------------------- specs (calibration/*.toml)

def list_specs() -> dict[str, Path]:
    return toml_catalogue("calibration")


def load_spec(name_or_path: str) -> dict:
    p = Path(name_or_path)
    if not (p.suffix == ".toml" and p.is_file()):
        specs = list_specs()
        if name_or_path not in specs:
            raise CalibrationError(f"unknown calibration spec {name_or_path!r}", f"known: {', '.join(specs)} (or a path to a .toml)")
        p = specs[name_or_path]
    try:
        spec = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(f"cannot read calibration spec {p}: {exc}", "fix the TOML syntax") from None
    spec["_path"] = str(p)
    return spec


# ---------------------------------------------------------------- readers

def _read_images(folder: Path, files: list[Path], spec: dict) -> np.ndarray:
    """Every file through the spec's preprocessing (edgekit.runtime.preprocess: the same code the runtime uses), each
    image first converted to the spec's colour."""
    from PIL import Image

    pre = image_preprocess(spec)
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                a = pre.array(im.convert(pre.color))
        except Exception as exc:
            raise CalibrationError(f"cannot read image {f}: {exc}", "remove it from the calibration folder") from None
        out.append(a)
    return np.stack(out).astype(np.float32)


def image_preprocess(spec: dict):
    """A calibration spec's image preprocessing (edgekit.runtime.preprocess.ImagePreprocess)."""
    from edgekit.runtime.preprocess import ImagePreprocess

    return ImagePreprocess.from_dict(spec, f"calibration spec {spec.get('_path', '?')}", CalibrationError)


def _read_class_folders(folder: Path, input_names: Sequence[str], spec_name: str | None) -> CalibrationData | None:
    """folder/<class name>/*.png: images labelled by their folder, classes in sorted order."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir()))
    if not classes:
        return None
    if spec_name is None:
        raise CalibrationError(f"{folder} holds class folders of images but no preprocessing spec was given",
                               f"pass --calib-spec NAME (one of: {', '.join(list_specs())}) or a .toml path")
    spec = load_spec(spec_name)
    files, labels = [], []
    for i, d in enumerate(classes):
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += imgs
        labels += [i] * len(imgs)
    data = CalibrationData(f"{folder} ({Path(spec['_path']).stem})", {input_names[0]: _read_images(folder, files, spec)},
                           np.asarray(labels, np.int64))
    data.classes = [d.name for d in classes]
    data.preprocess = image_preprocess(spec).to_dict()
    return data


def _read_folder(folder: Path, input_names: Sequence[str], spec_name: str | None) -> CalibrationData:
    by_class = _read_class_folders(folder, input_names, spec_name)
    if by_class is not None:
        return by_class
    files = sorted(p for p in folder.iterdir() if p.is_file())
    npys = [p for p in files if p.suffix == ".npy"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if npys:
        try:
            arrs = [np.load(p, allow_pickle=False) for p in npys]
        except Exception as exc:
            raise CalibrationError(f"cannot read .npy files in {folder}: {exc}", "each file must be one numeric array") from None
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise CalibrationError(f"the .npy files in {folder} have different shapes: {sorted(shapes)[:3]}", "every sample must have the same shape")
        return CalibrationData(str(folder), {input_names[0]: np.stack(arrs)})
    if images:
        if spec_name is None:
            raise CalibrationError(f"{folder} holds images but no preprocessing spec was given",
                                   f"pass --calib-spec NAME (one of: {', '.join(list_specs())}) or a .toml path")
        spec = load_spec(spec_name)
        return CalibrationData(f"{folder} ({Path(spec['_path']).stem})", {input_names[0]: _read_images(folder, images, spec)},
                               preprocess=image_preprocess(spec).to_dict())
    raise CalibrationError(f"no .npy files or images in {folder}", "put one .npy per sample, or images with --calib-spec")


def _read_npz(path: Path, input_names: Sequence[str], labels_key: str | None = None) -> CalibrationData:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CalibrationError(f"cannot read {path}: {exc}", "give an .npz written by numpy.savez") from None
    if labels_key is not None and labels_key not in data:
        raise CalibrationError(f"{path} has no array {labels_key!r} for the labels", f"its arrays: {', '.join(sorted(data))}")
    labels = data.pop(labels_key) if labels_key else next((data.pop(k) for k in LABEL_KEYS if k in data), None)
    sequence = next((data.pop(k) for k in SEQUENCE_KEYS if k in data and k not in input_names), None)
    if set(input_names) <= set(data):
        arrays = {n: data[n] for n in input_names}
    elif len(input_names) == 1 and len(data) == 1:
        arrays = {input_names[0]: next(iter(data.values()))}
    elif len(input_names) == 1 and "x" in data:
        arrays = {input_names[0]: data["x"]}
    else:
        raise CalibrationError(f"{path} holds arrays {sorted(data)} but the model's inputs are {list(input_names)}",
                               "name the arrays after the inputs (or use 'x' for a single input)")
    if sequence is not None and (sequence.ndim != 1 or not np.issubdtype(sequence.dtype, np.integer)):
        raise CalibrationError(f"{path}: 'sequence' must be one integer id per sample", "e.g. np.repeat(np.arange(n_clips), frames_per_clip)")
    return CalibrationData(str(path), arrays, labels, sequence=sequence)


def _dataset(name: str, spec: dict, input_names: Sequence[str], split: str) -> CalibrationData:
    from edgekit import datasets

    ds = datasets.load(spec.get("dataset", name))
    part = ds.test if split == "test" else ds.train
    return CalibrationData(f"{name}:{split}", {input_names[0]: part.x}, part.y)


def load_calibration(source: str | Path | np.ndarray | CalibrationData, input_names: Sequence[str],
                     input_shapes: Sequence[Sequence[int]], split: str = "train",
                     spec_name: str | None = None, seed: int = 0, random_samples: int = 256,
                     labels_key: str | None = None, inputs: Sequence[InputSpec] | None = None) -> CalibrationData:
    """Read a calibration source and check it against the model's inputs (`inputs`: their dtypes, batch
    axes and integer ranges; without it every input is a batched float tensor)."""
    if inputs is None:
        inputs = [InputSpec(n, tuple(s)) for n, s in zip(input_names, input_shapes)]
    inputs = list(inputs)
    input_names = [i.name for i in inputs]
    if isinstance(source, CalibrationData):
        data = source
    elif isinstance(source, np.ndarray):
        data = CalibrationData("array", {input_names[0]: source})
    elif str(source) == "random":
        data = _random(inputs, random_samples, seed)
    else:
        p = Path(source)
        if p.is_dir():
            data = _read_folder(p, input_names, spec_name)
        elif p.suffix == ".npy":
            if not p.is_file():
                raise CalibrationError(f"calibration file not found: {p}", "check the path")
            try:
                arr = np.load(p, allow_pickle=False)
            except Exception as exc:
                raise CalibrationError(f"cannot read {p}: {exc}", "give an .npy written by numpy.save") from None
            if len(input_names) != 1:
                raise CalibrationError(f"the model has {len(input_names)} inputs but {p} holds one array", "use an .npz with one array per input name")
            data = CalibrationData(str(p), {input_names[0]: arr})
        elif p.suffix == ".npz":
            if not p.is_file():
                raise CalibrationError(f"calibration file not found: {p}", "check the path")
            data = _read_npz(p, input_names, labels_key)
        elif str(source) in list_specs() and "dataset" in load_spec(str(source)):
            data = _dataset(str(source), load_spec(str(source)), input_names, split)
        else:
            names = [n for n in list_specs() if "dataset" in load_spec(n)]
            raise CalibrationError(f"calibration source not found: {source}",
                                   f"give a .npy, an .npz, a folder, or one of: {', '.join(names + ['random'])}")
    check(data, inputs)
    return data


def _random(inputs: Sequence[InputSpec], n: int, seed: int) -> CalibrationData:
    """Random samples: normal floats; integers only from a declared range (never the whole int64 range,
    which no embedding table accepts)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in inputs:
        if i.is_integer:
            if i.value_range is None:
                raise CalibrationError(f"input {i.name!r} is {i.dtype}: random data for it needs the range of valid values",
                                       f"pass real data with --calib, or --input-range {i.name}=LO:HI (e.g. 0:30522 for a BERT vocabulary)")
            arrays[i.name] = rng.integers(i.value_range[0], i.value_range[1], size=(n, *i.sample_shape)).astype(i.dtype)
        else:
            arrays[i.name] = rng.standard_normal((n, *i.sample_shape)).astype(np.float32)
    return CalibrationData("random", arrays, synthetic=True)


def check(data: CalibrationData, inputs: Sequence[InputSpec]) -> None:
    """Reject data that does not fit the model, with a message that says how it differs."""
    for spec in inputs:
        name = spec.name
        if name not in data.arrays:
            raise CalibrationError(f"calibration data from {data.source} has no array for input {name!r}", "provide one array per model input")
        a = data.arrays[name]
        if a.size == 0 or len(a) == 0:
            raise CalibrationError(f"calibration data from {data.source} is empty", "give at least one sample")
        want = tuple(spec.sample_shape)
        if tuple(a.shape[1:]) != want:
            if tuple(a.shape) == want:
                raise CalibrationError(f"calibration data from {data.source} has shape {a.shape}: it looks like one sample without the samples axis",
                                       f"stack samples along a first axis: (N, {', '.join(map(str, want))})")
            if spec.batched and tuple(a.shape[1:]) == tuple(spec.shape):
                raise CalibrationError(f"calibration data from {data.source} has samples of shape {tuple(a.shape[1:])} for input {name!r}, "
                                       f"whose batch axis takes {want}",
                                       f"if the first axis of {name!r} is not the batch (a recurrent state), declare it: --state-input {name}")
            raise CalibrationError(f"calibration data from {data.source} has samples of shape {tuple(a.shape[1:])}, the model's input {name!r} takes {want}",
                                   "give data with shape (N, " + ", ".join(map(str, want)) + ") or fix --input-shape")
        if spec.is_integer:
            data.arrays[name] = _integers(a, spec, data.source)
            continue
        if not np.issubdtype(a.dtype, np.floating):
            raise CalibrationError(f"calibration data from {data.source} is {a.dtype} for input {name!r}, the model takes {spec.dtype}",
                                   "preprocess it to the model's float input range (e.g. x / 255.0) first")
        bad = ~np.isfinite(a)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(a), -1).any(1))[0][0])
            raise CalibrationError(f"calibration data from {data.source} has {int(bad.sum())} NaN/Inf values (first in sample {first})",
                                   "clean the data before calibrating")
        data.arrays[name] = np.ascontiguousarray(a, dtype=np.float32)
    data.unbatched = frozenset(s.name for s in inputs if not s.batched)
    n = {len(data.arrays[s.name]) for s in inputs}
    if len(n) != 1:
        raise CalibrationError(f"calibration arrays from {data.source} have different sample counts {sorted(n)}", "every input needs the same number of samples")
    if data.labels is not None and len(data.labels) != len(data):
        data.labels = None
        data.notes.append("labels ignored: their count differs from the samples")
    if data.sequence is not None and len(data.sequence) != len(data):
        raise CalibrationError(f"{data.source}: 'sequence' has {len(data.sequence)} ids for {len(data)} samples", "give one sequence id per sample")


HOLDOUT_FRACTION = 0.25


def split_holdout(data: CalibrationData, calib_samples: int, val_samples: int | None,
                  seed: int = 0) -> tuple[CalibrationData, CalibrationData | None]:
    """A random quarter of the samples held out for validation (never the tail: files are often sorted by
    class, speaker or date), at most `val_samples`; calibration takes up to `calib_samples` of the rest.
    Streaming data (samples marked with sequences) is split by whole sequences, each kept in time order."""
    rng = np.random.default_rng(seed)
    groups = data.sequences()
    if len(data) < 8 or len(groups) < 2 and data.sequence is not None:
        return data.take(slice(0, min(calib_samples, len(data)))), None
    order = [groups[i] for i in rng.permutation(len(groups))] if data.sequence is not None else \
        [np.array([i]) for i in rng.permutation(len(data))]
    want = max(1, int(round(len(data) * HOLDOUT_FRACTION)))
    if val_samples is not None:
        want = min(want, val_samples)
    held: list[np.ndarray] = []
    while order and sum(map(len, held)) < want and len(order) > 1:
        held.append(order.pop(0))
    rest = np.sort(np.concatenate(order))
    val_idx = np.concatenate(held) if data.sequence is not None else np.sort(np.concatenate(held))
    return data.take(rest[:calib_samples]), data.take(val_idx)


def _integers(a: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    """Integer data for an integer input: kept integer end to end, checked against the dtype and range."""
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise CalibrationError(f"calibration data from {source} is {a.dtype} for input {spec.name!r}, which takes {spec.dtype} "
                               "(ids, masks, indices)", f"give integer arrays for {spec.name!r}, as the tokenizer produces them")
    lo, hi = integer_bounds(spec.dtype, spec.value_range)
    if a.size and (int(a.min()) < lo or int(a.max()) >= hi):
        raise CalibrationError(f"calibration data from {source} holds {spec.name!r} values from {int(a.min())} to {int(a.max())}, "
                               f"outside {lo}..{hi - 1}", "check the tokenizer/vocabulary, or --input-range")
    return np.ascontiguousarray(a, dtype=spec.dtype)
