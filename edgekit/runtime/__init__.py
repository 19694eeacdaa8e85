"""edgekit's minimal on-device runtime: numpy + LiteRT (ai-edge-litert / tflite-runtime) or ONNX Runtime.

    from edgekit import runtime
    model = runtime.load("out/digits-cnn-tflite-int8")
    logits, = model(x)            # float32 in, float32 out, in the PyTorch model's layout (NCHW)
    logits, = model(x_nhwc, input_layout="NHWC")   # or in the layout the artifact stores
    model.classify("cat.jpg", top_k=5)               # [(label, probability), ...]: the artifact's own preprocessing
    session = model.stream(); y, = session(frame)    # a recurrent model: the state is fed back between calls

The manifest written by `edgekit convert` says the artifact's layout and int8/int16 quantization
parameters; this module applies them, so callers always speak float. No torch import, ever.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgekit.errors import ArtifactError, UsageError
from edgekit.runtime.backends import TensorInfo, open_backend, tflite_interpreter_class  # noqa: F401
from edgekit.runtime.manifest import MANIFEST, Manifest, TensorSpec, integer_bounds, model_file, read_manifest  # noqa: F401

_TO_LAST = (0, 2, 3, 1)  # NCHW -> NHWC
_TO_FIRST = (0, 3, 1, 2)  # NHWC -> NCHW


def quantize(x: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _layout_perm(src: str | None, dst: str | None):
    if not src or not dst or src == dst:
        return None
    return _TO_LAST if (src, dst) == ("NCHW", "NHWC") else _TO_FIRST


class Model:
    """A loaded artifact. Call it with float arrays, get float arrays back."""

    def __init__(self, folder: str | Path, num_threads: int | None = None):
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        self.backend = open_backend(model_file(self.folder, self.manifest), num_threads)
        self.inputs: list[TensorSpec] = self.manifest.inputs
        self.outputs: list[TensorSpec] = self.manifest.outputs
        self._in_order = _positions(self.inputs, self.backend.inputs)
        self._out_order = _positions(self.outputs, self.backend.outputs)
        if [(t.shape, t.dtype) for t in self.inputs] != [(tuple(self.backend.inputs[k].shape), self.backend.inputs[k].dtype) for k in self._in_order] \
                or len(self.outputs) != len(self.backend.outputs):
            raise ArtifactError(f"{self.folder}: the manifest's inputs/outputs do not match {self.manifest.file}",
                                "the artifact was edited or damaged; re-run edgekit convert")

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """Input shapes in the PyTorch model's layout (what __call__ takes by default)."""
        return [tuple(i.source_shape) for i in self.inputs]

    def __call__(self, *arrays: np.ndarray, input_layout: str | None = None) -> list[np.ndarray]:
        return self.decode(self.backend.run(self.encode(*arrays, input_layout=input_layout)))

    def encode(self, *arrays: np.ndarray, input_layout: str | None = None) -> list[np.ndarray]:
        """Float inputs -> what the interpreter takes (layout, dtype, quantization)."""
        if len(arrays) != len(self.inputs):
            raise UsageError(f"the model takes {len(self.inputs)} input(s), got {len(arrays)}")
        feed = []
        for spec, x in zip(self.inputs, arrays):
            x = np.asarray(x)
            if spec.takes_integers:
                feed.append(_as_integer(x, spec))  # ids and masks go in as they are: never through float
                continue
            x = x.astype(np.float32, copy=False)
            perm = _layout_perm(input_layout or spec.source_layout, spec.layout)
            if perm:
                x = x.transpose(perm)
            if tuple(x.shape) != spec.shape:
                raise UsageError(f"input {spec.name!r} has shape {tuple(x.shape)}, the artifact takes {spec.shape} ({spec.layout or 'no layout'})")
            q = spec.quantization
            feed.append(quantize(x, spec.dtype, q.scale, q.zero_point) if q else x.astype(spec.dtype))
        return _reorder(feed, self._in_order)

    def decode(self, outs: list[np.ndarray]) -> list[np.ndarray]:
        """The interpreter's outputs (in its own order) -> float arrays in the model's order and layout."""
        result = []
        for spec, y in zip(self.outputs, (outs[k] for k in self._out_order)):
            q = spec.quantization
            y = dequantize(y, q.scale, q.zero_point) if q else np.asarray(y, dtype=np.float32)
            perm = _layout_perm(spec.layout, spec.source_layout)
            result.append(np.ascontiguousarray(y.transpose(perm)) if perm else y)
        return result

    # ------------------------------------------------------------------ in an app

    @functools.cached_property
    def image_preprocess(self):
        """The artifact's image preprocessing (ImagePreprocess), or None when the manifest has none (read once, not
        per image)."""
        from edgekit.runtime.preprocess import ImagePreprocess

        pre = self.manifest.preprocess
        return ImagePreprocess.from_dict(pre, str(self.folder)) if pre else None

    def preprocess(self, image) -> np.ndarray:
        """An image (a path, a Pillow image, an HxWxC uint8 array) -> the batch of one tensor calibration saw,
        in the PyTorch model's layout (what __call__ takes)."""
        pre = self.image_preprocess
        if pre is None:
            raise UsageError(f"{self.folder} records no image preprocessing",
                             "convert with --preprocess SPEC (or calibrate on an image folder with --calib-spec)")
        x = pre(image)
        spec = self.inputs[0]
        want = tuple(spec.source_shape[1:])
        if tuple(x.shape[1:]) != want:
            raise UsageError(f"the preprocessed image is {tuple(x.shape[1:])}, input {spec.name!r} takes {want}",
                             "the spec resizes without a crop: give it a crop, or resize the image to the model's size first")
        if spec.batched and spec.source_shape and spec.source_shape[0] > 1:
            raise UsageError(f"input {spec.name!r} takes batches of {spec.source_shape[0]}", "use run_batch with preprocessed images")
        return x

    def _class_output(self) -> tuple[int, bool]:
        """(index of the class output, whether its scores are probabilities already)."""
        kinds = [o.kind for o in self.outputs]
        if "class" not in kinds:
            shown = ", ".join(f"{o.name}: {o.kind or 'undeclared'}" for o in self.outputs)
            raise UsageError(f"{self.folder} is not a classifier: no class output ({shown})",
                             "call the model directly, or convert with --output NAME=class")
        j = kinds.index("class")
        return j, self.manifest.output_details().get(self.outputs[j].name, {}).get("probs") is True

    def classify(self, image, top_k: int = 5) -> list[tuple[str, float]]:
        """The top_k (label, probability) pairs for one image, best first. Labels come from the manifest (else the
        class index as text); logits go through a softmax, probability outputs are used as they are."""
        j, probs = self._class_output()
        scores = np.asarray(self(self.preprocess(image))[j], np.float64).reshape(-1)
        if not probs:
            e = np.exp(scores - scores.max())
            scores = e / e.sum()
        labels = self.manifest.labels
        order = np.argsort(-scores, kind="stable")[:max(1, int(top_k))]
        return [(labels[i] if labels and i < len(labels) else str(int(i)), float(scores[i])) for i in order]

    def stream(self) -> "Stream":
        """A stateful session for a model with state outputs (declared at convert with --state OUT=IN): each call
        takes the other inputs, feeds the state back, and returns the outputs that are not state."""
        return Stream(self)

    @property
    def batch(self) -> int:
        return next((int(t.shape[0]) or 1 for t in self.inputs if t.batched and t.shape), 1)

    def run_batch(self, *arrays: np.ndarray, input_layout: str | None = None) -> list[np.ndarray]:
        """Run N samples through a fixed-batch artifact: batched inputs are sliced along their first axis,
        inputs without a batch axis (state) take their i-th sample whole. Each input's first axis counts samples."""
        b = self.batch
        n = len(arrays[0])
        if n % b:
            raise UsageError(f"{n} samples do not divide into the artifact's batch of {b}")
        chunks = [self(*(a[i:i + b] if t.batched else a[i] for t, a in zip(self.inputs, arrays)), input_layout=input_layout)
                  for i in range(0, n, b)]
        return combine_calls(chunks, b)


class Stream:
    """Model.stream(): the recurrent state kept between calls (zeros at the start and after reset())."""

    def __init__(self, model: Model):
        feeds = model.manifest.state_feeds()
        names = [i.name for i in model.inputs]
        self.pairs = [(j, names.index(feeds[o.name])) for j, o in enumerate(model.outputs) if o.name in feeds]
        if not self.pairs:
            raise UsageError(f"{model.folder} has no state output to stream", "convert with --state OUT=IN for a recurrent model")
        self.model = model
        self.state_inputs = {i for _, i in self.pairs}
        self.reset()

    def reset(self) -> None:
        self.state = {i: np.zeros(self.model.inputs[i].source_shape, np.float32) for i in self.state_inputs}

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        others = [i for i in range(len(self.model.inputs)) if i not in self.state_inputs]
        if len(arrays) != len(others):
            raise UsageError(f"a stream call takes {len(others)} input(s) ({', '.join(self.model.inputs[i].name for i in others)}), got {len(arrays)}")
        feed = dict(zip(others, arrays))
        feed.update(self.state)
        outs = self.model(*(feed[i] for i in range(len(self.model.inputs))))
        for j, i in self.pairs:
            self.state[i] = outs[j]
        states = {j for j, _ in self.pairs}
        return [y for j, y in enumerate(outs) if j not in states]


def _positions(specs: list[TensorSpec], infos) -> list[int]:
    """Where each manifest tensor sits in the interpreter's own order: matched by runtime name (a TFLite
    signature lists its keys sorted, which need not be the model's order), else by position."""
    where = {t.name: k for k, t in enumerate(infos)}
    order = [where.get(s.runtime_name) for s in specs]
    if len(specs) == len(infos) and None not in order and len(set(order)) == len(order):
        return order  # type: ignore[return-value]
    return list(range(len(specs)))


def _reorder(feed: list, order: list[int]) -> list:
    """Arrays in the manifest's order -> the interpreter's order."""
    out = [None] * len(feed)
    for a, k in zip(feed, order):
        out[k] = a
    return out


def _as_integer(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An integer input in the artifact's dtype (LiteRT takes int64 ids as int32), refusing values that
    would not survive the cast or lie outside the declared range."""
    if tuple(x.shape) != spec.shape:
        raise UsageError(f"input {spec.name!r} has shape {tuple(x.shape)}, the artifact takes {spec.shape}")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
            raise UsageError(f"input {spec.name!r} takes {spec.dtype} values (ids, masks), got non-integer floats", "pass integer arrays")
    elif x.dtype.kind not in "iub":
        raise UsageError(f"input {spec.name!r} takes {spec.dtype}, got {x.dtype}")
    if x.size:
        lo, hi = integer_bounds(spec.dtype, spec.value_range)
        if x.min() < lo or x.max() >= hi:
            raise UsageError(f"input {spec.name!r} holds values from {x.min()} to {x.max()}, outside {lo}..{hi - 1}",
                             "check the tokenizer / ids against the model's vocabulary")
    return x.astype(spec.dtype, copy=False)


def combine_calls(chunks: list[list[np.ndarray]], batch: int) -> list[np.ndarray]:
    """Per-call outputs joined over calls: concatenated along the batch axis, or stacked on a new first
    axis for outputs whose first axis is not the batch (a state shaped (layers, 1, hidden))."""
    out = []
    for k in range(len(chunks[0])):
        parts = [np.asarray(c[k]) for c in chunks]
        batched = parts[0].ndim > 0 and parts[0].shape[0] == batch
        out.append(np.concatenate(parts) if batched else np.stack(parts))
    return out


def load(folder: str | Path, num_threads: int | None = None) -> Model:
    return Model(folder, num_threads)


__all__ = ["Model", "Stream", "load", "combine_calls", "read_manifest", "Manifest", "TensorSpec", "MANIFEST", "quantize", "dequantize", "TensorInfo", "open_backend"]
