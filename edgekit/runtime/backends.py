"""Interpreters behind one small interface: describe inputs/outputs, run a list of arrays.

Torch-free: numpy plus ai-edge-litert (or tflite-runtime on old boards) or onnxruntime,
each imported only when an artifact of its format is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import ArtifactError, RuntimeMissing


@dataclass(frozen=True)
class TensorInfo:
    name: str  # the runtime's own name (signature key or ONNX value name)
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name
    scale: float | None = None  # set for integer (quantized) tensors
    zero_point: int | None = None

    def to_dict(self) -> dict:
        d = {"runtime_name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.scale is not None:
            d["quantization"] = {"scale": self.scale, "zero_point": self.zero_point}
        return d


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def tflite_interpreter_class():
    """ai-edge-litert first; tflite-runtime only as a fallback for old boards."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise RuntimeMissing("no TFLite interpreter is installed", "pip install ai-edge-litert (or tflite-runtime on old boards)") from None


class TFLiteBackend:
    format = "tflite"

    def __init__(self, path: Path, num_threads: int | None = None):
        cls, self.runtime_name = tflite_interpreter_class()
        try:
            self._it = cls(model_path=str(path), num_threads=num_threads)
        except Exception as exc:
            raise ArtifactError(f"cannot load {path} in LiteRT: {exc}", "re-run edgekit convert") from None
        self._it.allocate_tensors()
        sigs = self._it.get_signature_list()
        if sigs:
            key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
            self._runner = self._it.get_signature_runner(key)
            ins, outs = self._runner.get_input_details(), self._runner.get_output_details()
            self.inputs = [self._info(k, ins[k]) for k in sorted(ins, key=_natural)]
            self.outputs = [self._info(k, outs[k]) for k in sorted(outs, key=_natural)]
            # One-subgraph models (what edgekit writes): call the interpreter directly by tensor
            # index, which costs far less per call than the signature runner's dict round trip.
            main_in = {d["index"] for d in self._it.get_input_details()}
            main_out = {d["index"] for d in self._it.get_output_details()}
            in_idx = [ins[k]["index"] for k in sorted(ins, key=_natural)]
            out_idx = [outs[k]["index"] for k in sorted(outs, key=_natural)]
            if set(in_idx) == main_in and set(out_idx) == main_out:
                self._runner, self._in_idx, self._out_idx = None, in_idx, out_idx
        else:
            self._runner = None
            self.inputs = [self._info(d["name"], d) for d in self._it.get_input_details()]
            self.outputs = [self._info(d["name"], d) for d in self._it.get_output_details()]
            self._in_idx = [d["index"] for d in self._it.get_input_details()]
            self._out_idx = [d["index"] for d in self._it.get_output_details()]

    @staticmethod
    def _info(name: str, d: dict) -> TensorInfo:
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d.get("quantization", (0.0, 0))
        quantized = np.issubdtype(np.dtype(d["dtype"]), np.integer) and scale
        return TensorInfo(name, tuple(int(s) for s in d["shape"]), dtype,
                          float(scale) if quantized else None, int(zp) if quantized else None)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self._runner is not None:
            out = self._runner(**{t.name: a for t, a in zip(self.inputs, arrays)})
            return [np.asarray(out[t.name]) for t in self.outputs]
        for i, a in zip(self._in_idx, arrays):
            self._it.set_tensor(i, a)
        self._it.invoke()
        return [self._it.get_tensor(i).copy() for i in self._out_idx]


class OrtBackend:
    format = "onnx"
    runtime_name = "onnxruntime"

    def __init__(self, path: Path, num_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing("onnxruntime is not installed", "pip install onnxruntime") from None
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if num_threads:
            so.intra_op_num_threads = num_threads
            so.inter_op_num_threads = 1
        try:
            self._sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"cannot load {path} in ONNX Runtime: {str(exc).splitlines()[0][:200]}", "re-run edgekit convert") from None
        self.inputs = [self._info(v) for v in self._sess.get_inputs()]
        self.outputs = [self._info(v) for v in self._sess.get_outputs()]

    @staticmethod
    def _info(v) -> TensorInfo:
        dtypes = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
                  "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32"}
        shape = tuple(d if isinstance(d, int) else 1 for d in v.shape)
        return TensorInfo(v.name, shape, dtypes.get(v.type, v.type))

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self._sess.run(None, {t.name: a for t, a in zip(self.inputs, arrays)})


def open_backend(path: str | Path, num_threads: int | None = None):
    path = Path(path)
    if path.suffix == ".tflite":
        return TFLiteBackend(path, num_threads)
    if path.suffix == ".onnx":
        return OrtBackend(path, num_threads)
    raise ArtifactError(f"unknown model file type {path.suffix!r}: {path}", "edgekit runs .tflite and .onnx files")
