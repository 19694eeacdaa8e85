"""ONNX files as a model source: `edgekit convert model.onnx --target tflite-int8`.

Many edge users only have an ONNX file (a detector from a model zoo, an OCR model inside a pip
package). Loading one here:
1. reads it as data (an ONNX file runs no code; external weight files must sit beside it, never
   outside its folder) and checks it with onnx.checker;
2. refuses graphs that are already quantized (QDQ, QLinear*, DynamicQuantize*): edgekit quantizes
   float models, and onnx2tf turns ONNX Runtime's quantized LSTM into a CUSTOM op nothing runs;
3. binds non-tensor inputs once (`--bind sr=16000` makes silero-vad's sample rate a constant), fixes
   dynamic dims (`--input-shape x=1,3,480,640`; a dynamic batch alone becomes 1), folds the `If`
   nodes a bound input decides (onnxscript's optimizer: without it no converter takes silero-vad),
   and simplifies with onnxsim, keeping the unsimplified graph when onnxsim changes the numbers;
4. keeps the original file as the reference: validation compares every artifact against ONNX Runtime
   running the file exactly as the user gave it (bound values fed as inputs).

The result, an `OnnxSpec`, answers the same questions as a PyTorch `ModelSpec` (inputs, reference
outputs, layouts, parameter count), so calibration, validation and the manifest treat both alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, ModelLoadError, UsageError
from edgekit.inputs import HasInputs, InputOptions, InputSpec, apply_options

# ONNX TensorProto element types -> numpy names
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}
# ops that mean the graph is quantized already (ONNX Runtime's static, dynamic and weight-only formats)
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
                 "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
                 "MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                 "QAttention", "QGemm", "MatMulNBits", "QOrderedMatMul"}
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


@dataclass
class OnnxSpec(HasInputs):
    """An ONNX file ready to convert: what its inputs are, the prepared float graph, and the original
    file to compare against. Same interface as sources.ModelSpec where the pipeline needs one."""

    path: Path  # the file the user gave (absolute)
    prepared: bytes  # the float graph every route starts from (bound, dims fixed, folded, simplified)
    inputs: list[InputSpec]
    output_names: list[str]
    name: str
    source: str
    bound: dict = field(default_factory=dict)  # input name -> the value it was bound to
    recipe: dict = field(default_factory=dict)  # what loading did, for the manifest
    num_params: int = 0
    notes: list[str] = field(default_factory=list)
    original: bytes | None = None  # the graph at `path` when that file is gone (a TorchScript model's export)
    reference_fn: Any = None  # arrays -> outputs of the user's own model, when it is not the ONNX file (TorchScript)
    converted: dict = field(default_factory=dict)  # format -> a float conversion kept for the run's other targets
    kind = "onnx"
    default_calibration = None
    prequantized = False
    weights = None

    def __post_init__(self):
        self._session = None
        self._example = None
        self._reference = None

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def param_bytes_fp32(self) -> int:
        return self.num_params * 4

    @property
    def example_inputs(self) -> tuple[np.ndarray, ...]:
        if self._example is None:
            self._example = tuple(example_array(s) for s in self.inputs)
        return self._example

    def _run_original(self, arrays) -> list[np.ndarray]:
        if self.reference_fn is not None:
            return self.reference_fn(arrays)
        if self._session is None:
            self._session, self._bound_feed = _session(self.original or self.path.read_bytes(), self.bound)
        feed = {**self._bound_feed, **{n: np.asarray(a) for n, a in zip(self.input_names, arrays)}}
        try:
            return [np.asarray(o) for o in self._session.run(self.output_names, feed)]
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot run {self.path.name} on inputs {', '.join(s.describe() for s in self.inputs)}: "
                                 f"{_first_line(exc)}", "check --input-shape / --bind") from None

    output_spec = None

    def run_reference(self, arrays) -> list[np.ndarray]:
        """One call of the original model on numpy inputs."""
        return self._run_original(arrays)

    def reference_outputs(self, *arrays) -> list[np.ndarray]:
        """The original file's outputs under ONNX Runtime (on the example inputs when none are given)."""
        if arrays:
            return self._run_original(arrays)
        if self._reference is None:
            self._reference = self._run_original(self.example_inputs)
        return self._reference

    def outputs_for(self, data) -> list[np.ndarray]:
        """The original file's outputs on every sample of a CalibrationData, batched as the inputs are."""
        from edgekit.runtime import combine_calls

        chunks = [self._run_original([s[n] for n in self.input_names]) for s in data.samples(self.batch)]
        return combine_calls(chunks, self.batch)

    def io_layouts(self) -> tuple[list[str | None], list[str | None]]:
        """4-D tensors are NCHW unless their last axis looks like channels and their second does not
        (Keras-exported files such as MTCNN's take NHWC)."""
        return [image_layout(s.shape) for s in self.inputs], [image_layout(o.shape) for o in self.reference_outputs()]


def image_layout(shape) -> str | None:
    if len(shape) != 4:
        return None
    return "NHWC" if shape[3] in (1, 2, 3, 4) and shape[1] not in (1, 2, 3, 4) else "NCHW"


def example_array(s: InputSpec) -> np.ndarray:
    """A deterministic example: floats in [0, 1), integers from their declared range, else zeros (a valid
    index for an embedding; never ids from the whole integer range)."""
    rng = np.random.default_rng(0)
    if not s.is_integer:
        return rng.random(s.shape).astype(s.dtype)
    if s.value_range is not None:
        return rng.integers(s.value_range[0], s.value_range[1], s.shape).astype(s.dtype)
    return np.zeros(s.shape, dtype=s.dtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:200]}"


def _session(model_bytes: bytes, bound: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    feed = {n: np.asarray(v, dtype=_ort_dtype(types.get(n, ""))) for n, v in bound.items() if n in types}
    return sess, feed


def _ort_dtype(ort_type: str) -> str:
    return {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32", "tensor(double)": "float64",
            "tensor(bool)": "bool", "tensor(float16)": "float16", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}.get(ort_type, "float32")


def _read(path: Path):
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path} as ONNX ({_first_line(exc)})", "give an .onnx model file") from None
    _load_external_data(model, path)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a valid ONNX model ({_first_line(exc)})", "re-export it, or check it with onnx.checker") from None
    return model


def _load_external_data(model, path: Path) -> None:
    """Weights kept in files beside the model: only plain relative paths inside the model's folder (a
    received file could otherwise make edgekit read any file on this machine into an artifact)."""
    from onnx import external_data_helper

    tensors = [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return
    base = path.resolve().parent
    for t in tensors:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        p = PurePosixPath(loc.replace("\\", "/"))
        target = (base / loc).resolve()
        if not loc or p.is_absolute() or ".." in p.parts or base not in target.parents or not target.is_file():
            raise ModelLoadError(f"{path.name} keeps weights of {t.name!r} in {loc!r}, which is not a file beside it",
                                 "external weight files must sit in the model's folder (or save the model as one file)")
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ModelLoadError(f"cannot read the external weights of {path.name} ({_first_line(exc)})", "check the files beside it") from None


def _refuse_unsupported(model, path: Path) -> None:
    ops = {(n.domain or "", n.op_type) for n in model.graph.node}
    quantized = sorted({op for _, op in ops if op in QUANTIZED_OPS})
    if quantized:
        raise ModelLoadError(f"{path.name} is already quantized ({', '.join(quantized[:4])}); edgekit quantizes float models",
                             "give the float ONNX file it was made from (edgekit bench/eval take the quantized file as it is)")
    custom = sorted({f"{d}.{op}" for d, op in ops if d not in KNOWN_DOMAINS})
    if custom:
        raise ModelLoadError(f"{path.name} uses custom ops ({', '.join(custom[:4])}) that neither ONNX Runtime nor LiteRT provides",
                             "export the model with standard ONNX ops")


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in value_info.type.tensor_type.shape.dim]


def _show(dims) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def _bind_value(name: str, value: Any, dtype: str, dims: list, path: Path) -> np.ndarray:
    if isinstance(value, (str, type(None))) or (dims and any(d is None for d in dims)):
        raise UsageError(f"--bind {name}={value!r}: input {name!r} of {path.name} is {dtype}{_show(dims)}",
                         "bind numbers to scalar (or fixed-shape) inputs, e.g. --bind sr=16000")
    arr = np.full(tuple(dims), value, dtype=dtype) if dims else np.asarray(value, dtype=dtype)
    if np.issubdtype(arr.dtype, np.integer) and arr.size and float(arr.flat[0]) != float(value):
        raise UsageError(f"--bind {name}={value!r}: input {name!r} of {path.name} takes {dtype}", f"give a whole number for {name}")
    return arr


def _fixed_shapes(graph_inputs: list, opts: InputOptions, path: Path, notes: list[str]) -> dict[str, tuple[int, ...]]:
    names = [i.name for i in graph_inputs]
    given: dict[str, tuple[int, ...]] = dict(opts.named_shapes)
    for n in given:
        if n not in names:
            raise UsageError(f"{path.name} has no input named {n!r}", f"its inputs: {', '.join(names)}")
    if opts.shapes:
        if len(opts.shapes) != len(names):
            raise UsageError(f"{len(opts.shapes)} --input-shape given, {path.name} has {len(names)} inputs ({', '.join(names)})",
                             "name them: --input-shape NAME=DIMS")
        given = dict(zip(names, opts.shapes))
    out = {}
    for vi in graph_inputs:
        dims = _dims(vi)
        if vi.name in given:
            want = given[vi.name]
            if len(want) != len(dims) or any(d is not None and d != w for d, w in zip(dims, want)):
                raise UsageError(f"--input-shape {vi.name}={','.join(map(str, want))} does not fit input {vi.name!r} of {path.name}, "
                                 f"which is {_show(dims)}", "keep its fixed dims and its rank; set only the ? dims")
            out[vi.name] = tuple(want)
            continue
        free = [k for k, d in enumerate(dims) if d is None]
        if free == [0] and len(dims) > 1:
            notes.append(f"input {vi.name!r} has a dynamic batch: converted with batch 1")
            dims = [1, *dims[1:]]
        elif free:
            example = ",".join(str(d) if d is not None else ("1" if k == 0 else "N") for k, d in enumerate(dims))
            raise UsageError(f"input {vi.name!r} of {path.name} has dynamic dims {_show(dims)}",
                             f"pass --input-shape {vi.name}={example} with N set (edge runtimes plan memory for fixed shapes)")
        out[vi.name] = tuple(int(d) for d in dims)
    return out


def _prepare(model, bound: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], recipe: dict):
    """Bound inputs become initializers, dims are fixed, If nodes on constants folded; then onnxsim."""
    from onnx import numpy_helper

    m = copy.deepcopy(model)
    for vi in [i for i in m.graph.input if i.name in bound]:
        m.graph.input.remove(vi)
        m.graph.initializer.append(numpy_helper.from_array(bound[vi.name], vi.name))
    inits = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        for d, v in zip(dims, shapes[vi.name]):
            d.Clear()
            d.dim_value = v
    if bound or any(n.op_type in ("If", "Loop") for n in m.graph.node):
        import onnxscript.optimizer

        before = sum(n.op_type == "If" for n in m.graph.node)
        try:
            m = onnxscript.optimizer.optimize(m)
            recipe["folded_if"] = before - sum(n.op_type == "If" for n in m.graph.node)
        except Exception as exc:  # the simplifier below may still manage
            recipe["fold"] = f"skipped: {_first_line(exc)}"
    fixed = m
    try:
        import onnxsim

        before = len(m.graph.node)
        simplified, ok = onnxsim.simplify(m)
        if ok:
            recipe["simplify"] = {"simplifier": "onnxsim", "applied": True, "nodes_before": before, "nodes": len(simplified.graph.node)}
            return fixed, simplified
        recipe["simplify"] = {"simplifier": "onnxsim", "applied": False, "reason": "onnxsim's check failed"}
    except Exception as exc:
        recipe["simplify"] = {"simplifier": "onnxsim", "applied": False, "reason": _first_line(exc)}
    return fixed, None


def _count_params(model) -> int:
    """Float weights: initializers and Constant nodes (paddle2onnx keeps every weight in a Constant)."""
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in (1, 10, 11, 16))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in (1, 10, 11, 16):
                    n += int(np.prod(a.t.dims))
    return n


def _agrees(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        if x.dtype.kind == "f":
            scale = float(np.max(np.abs(x))) if x.size else 0.0
            if not np.allclose(x, y, rtol=1e-3, atol=1e-4 * max(scale, 1.0), equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def from_torchscript(spec) -> OnnxSpec:
    """A TorchScript model (a ModelSpec holding a ScriptModule) as an ONNX source.

    torch.export cannot trace a ScriptModule, so neither the dynamo ONNX exporter nor litert-torch takes
    one; torch.onnx's TorchScript exporter does. Its graph keeps script control flow as `If` nodes
    (silero-vad's branches on the sample rate), so bound arguments go in as inputs and are folded by the
    ONNX source's own binding. The export must reproduce the ScriptModule on the example inputs, or the
    conversion stops here."""
    import io
    import tempfile
    import warnings

    import torch

    from edgekit._util import captured_output
    from edgekit.sources import _forward_params

    module = getattr(spec.module, "inner", spec.module)
    n = len(spec.example_inputs)
    extra_names, extra_values = [], []
    for name, _has_default, _kind in (_forward_params(module) or [])[n:]:
        if name not in spec.bound:
            break  # later arguments keep their defaults
        extra_names.append(name)
        extra_values.append(spec.bound[name])
    with tempfile.TemporaryDirectory(prefix="edgekit-ts-") as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings(), captured_output(io.StringIO()):  # the exporter prints whole graphs on failure
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (*spec.example_inputs, *extra_values), str(out), dynamo=False, opset_version=17,
                                  input_names=[*spec.input_names, *extra_names])
        except Exception as exc:
            raise ConversionError(f"exporting TorchScript {spec.source} to ONNX failed: {_first_line(exc)}",
                                  "export the model with torch.export (.pt2) or as a factory (file.py:factory)") from exc
        data = out.read_bytes()
        import onnx

        graph_inputs = {i.name for i in onnx.load_from_string(data).graph.input}
        opts = InputOptions(named_shapes={s.name: tuple(s.shape) for s in spec.inputs},
                            ranges={s.name: s.value_range for s in spec.inputs if s.value_range},
                            state=tuple(s.name for s in spec.inputs if not s.batched),
                            bind={k: v for k, v in zip(extra_names, extra_values) if k in graph_inputs})
        onnx_spec = load_onnx(out, opts)
    onnx_spec.original, onnx_spec.source, onnx_spec.name = data, spec.source, spec.name
    onnx_spec.output_spec = spec.output_spec
    onnx_spec.recipe["source_format"] = "torchscript"
    onnx_spec.recipe["torchscript_export"] = "torch.onnx (TorchScript exporter), opset 17"
    exported = onnx_spec.reference_outputs()
    onnx_spec._reference = None

    def run_torchscript(arrays) -> list[np.ndarray]:  # validation compares with the user's model itself
        with torch.no_grad():
            return [t.numpy() for t in spec.reference_outputs(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))]

    onnx_spec.reference_fn = run_torchscript
    if not _agrees(onnx_spec.reference_outputs(), exported):
        raise ConversionError(f"the ONNX export of TorchScript {spec.source} does not reproduce the model's outputs",
                              "export the model with torch.export (.pt2) or as a factory (file.py:factory)")
    return onnx_spec


def with_opset(data: bytes, minimum: int) -> tuple[bytes, int]:
    """The graph at opset `minimum` or above (onnx's version converter; files from older exporters, such as
    paddle2onnx's opset 11, lack the per-channel Q/DQ that ONNX Runtime's quantizer writes)."""
    import onnx
    from onnx import version_converter

    model = onnx.load_from_string(data)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), minimum)
    if opset >= minimum:
        return data, opset
    try:
        return version_converter.convert_version(model, minimum).SerializeToString(), minimum
    except Exception as exc:
        raise ConversionError(f"the ONNX file is opset {opset}; converting it to opset {minimum} for quantization failed: {_first_line(exc)}",
                              f"re-export it at opset {minimum} or newer") from None


def load_onnx(path: str | Path, opts: InputOptions | None = None) -> OnnxSpec:
    """Read, check and prepare an ONNX file; see the module docstring."""
    from edgekit.runtime.manifest import safe_name
    from edgekit.sources import check_input_size

    opts = opts or InputOptions()
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", "check the path")
    model = _read(path)
    _refuse_unsupported(model, path)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    by_name = {i.name: i for i in graph_inputs}
    for n in opts.bind:
        if n not in by_name:
            raise UsageError(f"--bind {n}: {path.name} has no input named {n!r}", f"its inputs: {', '.join(by_name)}")
    dtypes = {}
    for vi in graph_inputs:
        et = vi.type.tensor_type.elem_type
        if not vi.type.HasField("tensor_type") or et not in ONNX_DTYPES:
            raise ModelLoadError(f"input {vi.name!r} of {path.name} is not a tensor of a supported type", "edgekit takes tensor inputs")
        dtypes[vi.name] = ONNX_DTYPES[et]
    bound = {n: _bind_value(n, v, dtypes[n], _dims(by_name[n]), path) for n, v in opts.bind.items()}
    free = [vi for vi in graph_inputs if vi.name not in bound]
    if not free:
        raise UsageError(f"--bind leaves {path.name} with no input", "bind only non-tensor arguments such as a sample rate")
    for k, dt in opts.dtypes.items():
        name = free[int(k[1:])].name if k.startswith("#") and k[1:].isdigit() and int(k[1:]) < len(free) else k
        if dtypes.get(name) not in (None, dt):
            raise UsageError(f"{path.name} fixes input {name!r} to {dtypes[name]}, not {dt}", "drop --input-dtype for ONNX files")
    notes: list[str] = []
    shapes = _fixed_shapes(free, replace(opts, named_shapes={k: v for k, v in opts.named_shapes.items() if k not in bound}), path, notes)
    check_input_size(shapes.values())
    specs = apply_options([InputSpec(vi.name, shapes[vi.name], dtypes[vi.name]) for vi in free],
                          replace(opts, dtypes={}, bind={}))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    recipe: dict = {"source_format": "onnx", "opset": opset, "fixed_shapes": {n: list(s) for n, s in shapes.items()}}
    if bound:
        recipe["bound"] = {n: v.tolist() for n, v in bound.items()}
    fixed, simplified = _prepare(model, bound, shapes, recipe)
    spec = OnnxSpec(path.resolve(), b"", specs, [o.name for o in model.graph.output], safe_name(path.stem) or "model",
                    str(path), {n: v.tolist() for n, v in bound.items()}, recipe, _count_params(model), notes)
    spec.reference_outputs()  # the original runs on these inputs (else: one line naming them)
    try:
        for candidate in (simplified, fixed):
            if candidate is None:
                continue
            data = candidate.SerializeToString()
            sess, feed = _session(data, {})
            got = [np.asarray(o) for o in sess.run(spec.output_names, {n: a for n, a in zip(spec.input_names, spec.example_inputs)})]
            if _agrees(spec.reference_outputs(), got):
                spec.prepared = data
                break
            recipe["simplify"] = {**recipe.get("simplify", {}), "applied": False, "reason": "onnxsim changed the outputs; kept the graph as it was"}
    except Exception as exc:
        raise ConversionError(f"preparing {path.name} (bound inputs, fixed dims) broke it: {_first_line(exc)}",
                              "run with --debug; report the file if ONNX Runtime runs it as given") from exc
    if not spec.prepared:
        raise ConversionError(f"preparing {path.name} (bound inputs, fixed dims) changed its outputs",
                              "check --bind and --input-shape; run with --debug")
    import onnx

    spec.num_params = _count_params(onnx.load_from_string(spec.prepared)) or spec.num_params  # weights inside folded Ifs count too
    return spec


__all__ = ["OnnxSpec", "load_onnx", "image_layout", "example_array", "QUANTIZED_OPS"]
