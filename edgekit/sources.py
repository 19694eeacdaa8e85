"""Model sources: turn what the user names into an eval-mode nn.Module plus example inputs.

Accepted: `file.py:factory`, `package.module:attr` (a module, or a callable returning one),
TorchScript `.pt`, torch.export `.pt2`, a pickled whole model `.pt` only with trust_pickle=True,
an nn.Module object (Python API), or nothing: the bundled digits CNN.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgekit._util import first_line
from edgekit.errors import ModelLoadError, UsageError
from edgekit.inputs import HasInputs, InputOptions, InputSpec, apply_declared, apply_options, parse_shape  # noqa: F401 (parse_shape: old import path)

DEFAULT_MODEL = "edgekit.examples.digits:build"


@dataclass
class ModelSpec(HasInputs):
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    name: str  # short name, used for artifact folder names
    source: str  # what the user gave
    default_calibration: str | None = None  # e.g. "digits" for the bundled example
    prequantized: bool = False  # holds quantize/dequantize ops (a PT2E-quantized graph, e.g. from edgekit qat)
    weights: str | None = None  # the state dict loaded into it, if any (absolute path)
    inputs: list[InputSpec] = field(default_factory=list)  # name, shape, dtype, batch axis, integer range
    bound: dict = field(default_factory=dict)  # non-tensor forward arguments bound once (--bind)
    output_spec: Any = None  # what the outputs mean, from the factory (`output_spec = [{"name": ..., "kind": "class"}, ...]`)

    def __post_init__(self):
        if not self.inputs:
            self.inputs = [InputSpec(n, tuple(t.shape), _np_dtype(t.dtype)) for n, t in zip(self.input_names, self.example_inputs)]

    @property
    def param_bytes_fp32(self) -> int:
        return sum(p.numel() for p in self.module.parameters()) * 4

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    kind = "torch"  # the build layer's source kind (edgekit.build.EXPORTERS)

    @functools.cached_property
    def output_names(self) -> list[str]:
        """The factory's names when its `output_spec` names every output in order, else output / output_i."""
        n = len(self._output_ndims)
        given = [d.get("name") for d in self.output_spec or () if isinstance(d, dict)]
        if len(given) == n and all(isinstance(g, str) and g for g in given) and len(set(given)) == n:
            return given
        return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]

    def run_reference(self, arrays) -> list[np.ndarray]:
        """One call of the model on numpy inputs."""
        return [o.numpy() for o in self.reference_outputs(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))]

    def layout(self, i: int) -> str | None:
        """PyTorch image models take NCHW; we only call 4-D inputs that."""
        return "NCHW" if self.example_inputs[i].ndim == 4 else None

    def reference_outputs(self, *args: torch.Tensor) -> list[torch.Tensor]:
        """The model's outputs as a flat list (on the example inputs when no args are given)."""
        with torch.no_grad():
            out = self.module(*(args or self.example_inputs))
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def outputs_for(self, data) -> list[np.ndarray]:
        """The model's outputs on every sample of a CalibrationData, batched as the model was exported."""
        from edgekit.runtime import combine_calls

        chunks = [[o.numpy() for o in self.reference_outputs(*(torch.from_numpy(s[n]) for n in self.input_names))]
                  for s in data.samples(self.batch)]
        return combine_calls(chunks, self.batch)

    def io_layouts(self) -> tuple[list[str | None], list[str | None]]:
        """Layouts of the PyTorch model's inputs and outputs (NCHW for 4-D tensors)."""
        return ([self.layout(i) for i in range(len(self.example_inputs))],
                ["NCHW" if ndim == 4 else None for ndim in self._output_ndims])

    @functools.cached_property
    def _output_ndims(self) -> tuple[int, ...]:
        """The outputs' ranks, from one forward pass (io_layouts is asked once per target and per stage)."""
        return tuple(o.ndim for o in self.reference_outputs())


def is_loaded(model: Any) -> bool:
    """A model already loaded: a PyTorch ModelSpec or an ONNX file's OnnxSpec."""
    from edgekit.onnx_source import OnnxSpec

    return isinstance(model, (ModelSpec, OnnxSpec))


def is_torchscript_module(spec: Any) -> bool:
    module = getattr(spec, "module", None)
    return isinstance(getattr(module, "inner", module), torch.jit.ScriptModule)


def max_input_bytes() -> int:
    """The largest float32 input edgekit makes or accepts: 1 GiB, or EDGEKIT_MAX_INPUT_MB."""
    try:
        return int(float(os.environ.get("EDGEKIT_MAX_INPUT_MB", "1024")) * (1 << 20))
    except ValueError:
        raise UsageError(f"EDGEKIT_MAX_INPUT_MB={os.environ['EDGEKIT_MAX_INPUT_MB']!r} is not a number", "e.g. EDGEKIT_MAX_INPUT_MB=4096") from None


def check_input_size(shapes: Sequence[Sequence[int]]) -> None:
    """Refuse input shapes whose tensors would not fit in memory, before anything is allocated."""
    limit = max_input_bytes()
    for s in shapes:
        n = 1
        for d in s:
            n *= int(d)
        if n * 4 > limit:
            raise UsageError(f"input shape {','.join(map(str, s))} is {n * 4 / (1 << 30):.1f} GiB as float32, over edgekit's "
                             f"{limit / (1 << 30):.1f} GiB limit", "check --input-shape; to allow it, set EDGEKIT_MAX_INPUT_MB")


def _import_file(path: Path) -> Any:
    # a stable name (str hash() changes per process): litert-torch puts it in every tensor name, and
    # per-layer recipes written in one run must match the export of the next
    name = f"_edgekit_user_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}", "give a Python file, e.g. models/net.py:build")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))  # let the file import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}", "fix the model file (--debug shows the traceback)") from exc
    finally:
        sys.path.pop(0)
    return module


def _resolve_attr(source: str) -> tuple[Any, str]:
    where, _, attr = source.rpartition(":")
    if not attr:
        raise ModelLoadError(f"{source!r} names no attribute", "write file.py:factory or package.module:attr")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {where}", "check the path")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {where!r}: {exc}", "check the module path and that it is installed") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{where} has no attribute {attr!r}", "check the name after the colon")
        obj = getattr(obj, part)
    return obj, attr


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def is_prequantized(module: nn.Module) -> bool:
    """A PT2E-quantized graph: quantize/dequantize ops with their scales already in it."""
    graph = getattr(module, "graph", None)
    return isinstance(graph, torch.fx.Graph) and any(
        n.op == "call_function" and getattr(n.target, "namespace", None) == "quantized_decomposed" for n in graph.nodes)


def _recorded_data(meta: str) -> str | None:
    """The training data an edgekit-compressed .pt2 names, when it is still there."""
    import json

    from edgekit.calibration import list_specs

    try:
        data = json.loads(meta).get("data") if meta else None
    except (ValueError, AttributeError):
        return None
    return data if isinstance(data, str) and (data in list_specs() or Path(data).exists()) else None


class _UnsafePickle(Exception):
    def __init__(self, kind: str):
        self.kind = kind
        super().__init__(kind)


@contextlib.contextmanager
def _pickle_guard(path: Path, trust_pickle: bool):
    """Load a .pt2 without running code from it. torch.export.load unpickles several members: it retries
    a failed `weights_only=True` load with `weights_only=False`, loads pickled weights and constants with
    `weights_only=False`, and `pickle.loads` opaque objects; any of these runs a `__reduce__` payload.
    Unless the user trusts the file, every torch.load during the call is forced to weights_only=True
    and plain unpickling is refused, so such a member fails to load instead of running."""
    if trust_pickle:
        yield
        return
    from torch.export.pt2_archive import _package

    real_load, real_pickle = torch.load, _package.pickle

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise _UnsafePickle("a member that torch.load(weights_only=True) rejects") from exc

    class _NoPickle:
        UnpicklingError = pickle.UnpicklingError

        def __getattr__(self, name):
            return getattr(pickle, name)

        @staticmethod
        def loads(*_a, **_k):
            raise _UnsafePickle("an opaque pickled object")

        load = loads

    torch.load, _package.pickle = safe_load, _NoPickle()
    try:
        yield
    except _UnsafePickle as exc:
        raise ModelLoadError(f"{path} holds pickled objects that load only by running code (refused: {exc.kind})",
                             "pass --trust-pickle only if you trust where the file came from") from None
    finally:
        torch.load, _package.pickle = real_load, real_pickle


def _load_file(path: Path, trust_pickle: bool) -> tuple[nn.Module, tuple | None, list[str] | None, str | None]:
    """(module, example args, input names, default calibration data) from a model file."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", "check the path")
    if path.suffix in (".jit", ".ts") and not _is_torchscript(path):
        raise ModelLoadError(f"{path} is not a TorchScript file", "save it with torch.jit.save(torch.jit.script(model), 'net.pt')")
    if path.suffix == ".pt2":
        from torch.ao.quantization.fx._decomposed import quantized_decomposed_lib  # noqa: F401  (q/dq ops of QAT graphs)

        extra = {"edgekit.json": ""}  # written by edgekit.compress: the data the model was trained on
        try:
            with _pickle_guard(path, trust_pickle):
                ep = torch.export.load(str(path), extra_files=extra)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot read {path} as a torch.export program: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                 "save it with torch.export.save(torch.export.export(model, args), 'net.pt2')") from exc
        example = getattr(ep, "example_inputs", None)
        args = tuple(example[0]) if example and not example[1] else None
        names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        return ep.module(), args, names or None, _recorded_data(extra["edgekit.json"])
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu"), None, None, None
        except Exception as exc:
            raise ModelLoadError(f"cannot read {path} as TorchScript: {type(exc).__name__}", "re-save it with torch.jit.save") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        first = first_line(exc, 200)
        if not trust_pickle and "Unsupported global" in str(exc):
            raise ModelLoadError(f"{path} is a pickled model that needs code execution to load",
                                 "pass --trust-pickle only if you trust the file, or export it as .pt2 / TorchScript") from exc
        raise ModelLoadError(f"cannot read {path} as a PyTorch model: {type(exc).__name__}: {first}",
                             "give TorchScript (.pt), torch.export (.pt2) or file.py:factory") from exc
    if isinstance(obj, nn.Module):
        return obj, None, None, None
    if isinstance(obj, dict):
        raise ModelLoadError(f"{path} holds a state dict (weights only), not a model",
                             "give the architecture as file.py:factory and the weights with --weights")
    raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a model", "give TorchScript (.pt), torch.export (.pt2) or file.py:factory")


def _names_from(obj: Any) -> list[str] | None:
    """Input names a factory or module declares (`input_names = ("input_ids", "attention_mask")`)."""
    names = getattr(obj, "input_names", None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _example_from(obj: Any) -> tuple | None:
    """Example inputs declared on a factory or module: example_inputs (tensors) or example_input_shape."""
    for holder in (obj,):
        ex = getattr(holder, "example_inputs", None)
        if callable(ex) and not isinstance(ex, torch.Tensor):
            ex = ex()
        if isinstance(ex, torch.Tensor):
            return (ex,)
        if isinstance(ex, (tuple, list)) and ex and all(isinstance(t, torch.Tensor) for t in ex):
            return tuple(ex)
        shape = getattr(holder, "example_input_shape", None)
        if shape:
            shapes = shape if isinstance(shape[0], (tuple, list)) else [shape]
            return tuple(torch.rand(*map(int, s)) for s in shapes)
    return None


def load_model(
    source: str | nn.Module | None = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    inputs: InputOptions | None = None,
) -> ModelSpec:
    """The model as an eval-mode module, its example inputs and what each input is (see edgekit.inputs).

    `input_shapes` is the same as `inputs.shapes` (kept for the callers that only have shapes)."""
    opts = inputs or InputOptions()
    if input_shapes and not opts.shapes:
        opts = InputOptions(**{**opts.__dict__, "shapes": [tuple(map(int, s)) for s in input_shapes]})
    if isinstance(source, (str, Path)) and Path(str(source)).suffix.lower() == ".onnx" and ":" not in str(source):
        if weights is not None:
            raise UsageError("--weights loads a state dict into a PyTorch factory; an ONNX file carries its own weights", "drop --weights")
        from edgekit.onnx_source import load_onnx

        return load_onnx(source, opts)
    default_calib = None
    names: list[str] | None = None
    example: tuple | None = None
    declared = None
    out_declared = None
    if source is None:
        source, default_calib = DEFAULT_MODEL, "digits"
    if isinstance(source, nn.Module):
        module, label, name = source, type(source).__name__, type(source).__name__.lower()
        example = _example_from(source)
        declared = getattr(source, "input_spec", None)
    else:
        label = str(source)
        suffix = Path(label).suffix
        if suffix in (".pt", ".pth", ".pt2", ".ptl", ".jit", ".ts") and ":" not in label:
            module, example, names, default_calib = _load_file(Path(label), trust_pickle)
            name = Path(label).stem
        elif ":" in label:
            obj, attr = _resolve_attr(label)
            example = _example_from(obj)
            declared = getattr(obj, "input_spec", None)
            out_declared = getattr(obj, "output_spec", None)
            names = _names_from(obj)
            if isinstance(obj, nn.Module):
                module = obj
            elif callable(obj):
                try:
                    module = obj()
                except Exception as exc:
                    raise ModelLoadError(f"calling {label}() failed: {type(exc).__name__}: {exc}", "the factory must build the model with no arguments") from exc
            else:
                raise ModelLoadError(f"{label} is a {type(obj).__name__}, not a model or a factory", "point at an nn.Module or a function returning one")
            if not isinstance(module, nn.Module):
                raise ModelLoadError(f"{label}() returned a {type(module).__name__}, not an nn.Module", "the factory must return a torch.nn.Module")
            example = example or _example_from(module)
            declared = declared if declared is not None else getattr(module, "input_spec", None)
            names = names or _names_from(module)
            name = "digits-cnn" if label == DEFAULT_MODEL else (Path(label.split(":")[0]).stem if label.split(":")[0].endswith(".py") else attr)
        else:
            raise ModelLoadError(f"cannot tell what model {label!r} is",
                                 "give file.py:factory, package.module:attr, a TorchScript .pt/.jit/.ts, a torch.export .pt2 or an .onnx file")
    if weights is not None:
        wpath = Path(weights)
        if not wpath.is_file():
            raise ModelLoadError(f"weights file not found: {weights}", "check the path")
        try:
            state = torch.load(str(wpath), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            module.load_state_dict(state)
        except Exception as exc:
            raise ModelLoadError(f"cannot load weights {weights}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                                 "the file must be a state dict matching the architecture") from exc
    if declared is not None and not isinstance(declared, (list, tuple)):
        declared = None if callable(declared) else declared
    if opts.named_shapes:
        opts = _shapes_by_name(opts, names, declared, label)
    example = _example_inputs(example, opts, declared)
    if not example:
        raise UsageError(f"cannot tell the input shape of {label}",
                         "pass --input-shape 1,3,224,224 (once per input), or set example_input_shape on the factory")
    try:
        module.eval()
    except NotImplementedError:  # torch.export modules keep the mode they were exported in
        pass
    if not names or len(names) != len(example):
        names = ["input"] if len(example) == 1 else [f"input_{i}" for i in range(len(example))]
    specs = [InputSpec(n, tuple(t.shape), _np_dtype(t.dtype)) for n, t in zip(names, example)]
    specs = apply_options(apply_declared(specs, declared, label), opts)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"{label} names two inputs the same: {names}", "give each input its own name in input_spec")
    if not all(s.batched for s in specs) and next((s.shape[0] for s in specs if s.batched and s.shape), 1) != 1:
        raise UsageError(f"{label} has state inputs (no batch axis) and a batch of more than 1",
                         "export streaming models with batch 1 (--input-shape 1,...)")
    module = _bind(module, len(example), opts.bind, label)
    try:
        with torch.no_grad():
            module(*example)
    except Exception as exc:
        raise ModelLoadError(f"the model does not run on inputs {', '.join(s.describe() for s in specs)}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                             "check --input-shape / --input-dtype / --bind") from exc
    output_spec = out_declared if out_declared is not None else getattr(getattr(module, "inner", module), "output_spec", None)
    return ModelSpec(module, tuple(example), names, name, label, default_calib, prequantized=is_prequantized(module),
                     weights=str(Path(weights).resolve()) if weights else None, inputs=specs, bound=dict(opts.bind),
                     output_spec=output_spec if isinstance(output_spec, (list, tuple)) else None)


_TORCH_TO_NP = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64", torch.bfloat16: "bfloat16",
                torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
                torch.bool: "bool"}
_NP_TO_TORCH = {v: k for k, v in _TORCH_TO_NP.items()}


def _np_dtype(dtype: torch.dtype) -> str:
    if dtype not in _TORCH_TO_NP:
        raise UsageError(f"an input of dtype {dtype} is not supported", f"inputs are one of {', '.join(_TORCH_TO_NP.values())}")
    return _TORCH_TO_NP[dtype]


def _shapes_by_name(opts: InputOptions, names: list[str] | None, declared, label: str) -> InputOptions:
    """`--input-shape NAME=DIMS` on a PyTorch model: the names must be the model's own input names."""
    import dataclasses

    known = names or ([str(d.get("name", "")) for d in declared if isinstance(d, dict)] if isinstance(declared, (list, tuple)) else [])
    if not known or not all(known):
        raise UsageError(f"{label} does not name its inputs, so --input-shape NAME=DIMS cannot say which is which",
                         "give the shapes in input order without names (--input-shape 1,3,224,224 once per input)")
    unknown = [n for n in opts.named_shapes if n not in known]
    if unknown:
        raise UsageError(f"the model has no input named {unknown[0]!r}", f"its inputs: {', '.join(known)}")
    missing = [n for n in known if n not in opts.named_shapes]
    if missing:
        raise UsageError(f"--input-shape gives no shape for input {missing[0]!r}", "name every input's shape once")
    return dataclasses.replace(opts, shapes=[opts.named_shapes[n] for n in known], named_shapes={})


def _example_inputs(example: tuple | None, opts: InputOptions, declared) -> tuple | None:
    """The example tensors: the model's own, or made from --input-shape; dtypes as declared.

    Integer inputs made here hold values from their declared range (else zeros: a valid index for an
    embedding, never random ids from the whole int64 range)."""
    decl = list(declared) if isinstance(declared, (list, tuple)) else []

    def dtype_for(i: int, current: str) -> str:
        name = decl[i].get("name") if i < len(decl) and isinstance(decl[i], dict) else None
        want = opts.dtypes.get(f"#{i}") or (opts.dtypes.get(name) if name else None)
        if want is None and len(opts.dtypes) == 1 and "#0" in opts.dtypes:
            want = opts.dtypes["#0"]
        if want is None and i < len(decl) and isinstance(decl[i], dict):
            want = decl[i].get("dtype")
        return want or current

    def range_for(i: int):
        name = decl[i].get("name") if i < len(decl) and isinstance(decl[i], dict) else None
        r = opts.ranges.get(name) if name else None
        if r is None and i < len(decl) and isinstance(decl[i], dict) and decl[i].get("range") is not None:
            r = tuple(decl[i]["range"])
        return r

    def make(shape, dtype: str, rng) -> torch.Tensor:
        if dtype not in _NP_TO_TORCH:
            raise UsageError(f"input dtype {dtype!r} is not supported", f"use one of {', '.join(_NP_TO_TORCH)}")
        tdt = _NP_TO_TORCH[dtype]
        if tdt.is_floating_point:
            return torch.rand(*shape).to(tdt)
        if rng is not None:
            return torch.randint(int(rng[0]), int(rng[1]), tuple(shape), generator=torch.Generator().manual_seed(0)).to(tdt)
        return torch.zeros(tuple(shape), dtype=tdt)

    if opts.shapes:
        check_input_size(opts.shapes)
        return tuple(make(s, dtype_for(i, "float32"), range_for(i)) for i, s in enumerate(opts.shapes))
    if example and opts.dtypes:
        return tuple(t if dtype_for(i, _np_dtype(t.dtype)) == _np_dtype(t.dtype) else t.to(_NP_TO_TORCH[dtype_for(i, _np_dtype(t.dtype))])
                     for i, t in enumerate(example))
    return example


class _Bound(nn.Module):
    """A module whose non-tensor forward arguments (a VAD's sample rate) are bound once."""

    def __init__(self, inner: nn.Module, kwargs: dict):
        super().__init__()
        self.inner = inner
        self.kwargs = dict(kwargs)

    def forward(self, *args):
        return self.inner(*args, **self.kwargs)


def _forward_params(module: nn.Module) -> list[tuple[str, bool, str]] | None:
    """(name, has default, kind) of forward's arguments after self, TorchScript or Python; None if unknown."""
    import inspect

    fwd = getattr(module, "forward", None)
    schema = getattr(fwd, "schema", None)
    if schema is not None:  # TorchScript
        return [(a.name, a.has_default_value(), str(a.type)) for a in schema.arguments[1:]]
    try:
        sig = inspect.signature(fwd)
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        return None
    return [(p.name, p.default is not p.empty, "") for p in sig.parameters.values()]


def _bind(module: nn.Module, n_tensors: int, bind: dict, label: str) -> nn.Module:
    params = _forward_params(module)
    if params is not None:
        rest = params[n_tensors:]
        unknown = sorted(set(bind) - {n for n, _, _ in rest})
        if unknown:
            raise UsageError(f"--bind {unknown[0]}: forward() of {label} has no argument {unknown[0]!r} after its tensor inputs",
                             f"its arguments after the inputs: {', '.join(n for n, _, _ in rest) or 'none'}")
        missing = [(n, kind) for n, has_default, kind in rest if not has_default and n not in bind]
        if missing:
            n, kind = missing[0]
            raise UsageError(f"forward() of {label} needs a value for argument {n!r}{f' ({kind})' if kind else ''}",
                             f"bind it once with --bind {n}=VALUE (e.g. --bind sr=16000)")
    return _Bound(module, bind) if bind else module
