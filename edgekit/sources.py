"""Model sources: turn what the user names into an eval-mode nn.Module plus example inputs.

Accepted: `file.py:factory`, `package.module:attr` (a module, or a callable returning one),
TorchScript `.pt`, torch.export `.pt2`, a pickled whole model `.pt` only with trust_pickle=True,
an nn.Module object (Python API), or nothing: the bundled digits CNN.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgekit.errors import ModelLoadError, UsageError

DEFAULT_MODEL = "edgekit.examples.digits:build"


@dataclass
class ModelSpec:
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    name: str  # short name, used for artifact folder names
    source: str  # what the user gave
    default_calibration: str | None = None  # e.g. "digits" for the bundled example
    prequantized: bool = False  # holds quantize/dequantize ops (a PT2E-quantized graph, e.g. from edgekit qat)
    weights: str | None = None  # the state dict loaded into it, if any (absolute path)

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in self.example_inputs]

    @property
    def param_bytes_fp32(self) -> int:
        return sum(p.numel() for p in self.module.parameters()) * 4

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

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
        chunks = [self.reference_outputs(*(torch.from_numpy(s[n]) for n in self.input_names))
                  for s in data.samples(self.example_inputs[0].shape[0])]
        return [np.concatenate([c[k].numpy() for c in chunks]) for k in range(len(chunks[0]))]

    def io_layouts(self) -> tuple[list[str | None], list[str | None]]:
        """Layouts of the PyTorch model's inputs and outputs (NCHW for 4-D tensors)."""
        outs = self.reference_outputs()
        return ([self.layout(i) for i in range(len(self.example_inputs))],
                ["NCHW" if o.ndim == 4 else None for o in outs])


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise UsageError(f"bad --input-shape {text!r}", "write it as comma-separated integers, e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"bad --input-shape {text!r}", "every dimension must be a positive integer, e.g. 1,3,224,224")
    return dims


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
        first = (str(exc).strip().splitlines() or [""])[0][:200]
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
) -> ModelSpec:
    default_calib = None
    names: list[str] | None = None
    example: tuple | None = None
    if source is None:
        source, default_calib = DEFAULT_MODEL, "digits"
    if isinstance(source, nn.Module):
        module, label, name = source, type(source).__name__, type(source).__name__.lower()
        example = _example_from(source)
    else:
        label = str(source)
        suffix = Path(label).suffix
        if suffix in (".pt", ".pth", ".pt2", ".ptl") and ":" not in label:
            module, example, names, default_calib = _load_file(Path(label), trust_pickle)
            name = Path(label).stem
        elif ":" in label:
            obj, attr = _resolve_attr(label)
            example = _example_from(obj)
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
            name = "digits-cnn" if label == DEFAULT_MODEL else (Path(label.split(":")[0]).stem if label.split(":")[0].endswith(".py") else attr)
        else:
            raise ModelLoadError(f"cannot tell what model {label!r} is",
                                 "give file.py:factory, package.module:attr, a TorchScript .pt or a torch.export .pt2 file")
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
    if input_shapes:
        check_input_size([tuple(map(int, s)) for s in input_shapes])
        example = tuple(torch.rand(*map(int, s)) for s in input_shapes)
    if not example:
        raise UsageError(f"cannot tell the input shape of {label}",
                         "pass --input-shape 1,3,224,224 (once per input), or set example_input_shape on the factory")
    try:
        module.eval()
    except NotImplementedError:  # torch.export modules keep the mode they were exported in
        pass
    if not names or len(names) != len(example):
        names = ["input"] if len(example) == 1 else [f"input_{i}" for i in range(len(example))]
    try:
        with torch.no_grad():
            module(*example)
    except Exception as exc:
        raise ModelLoadError(f"the model does not run on inputs of shape {', '.join(str(tuple(t.shape)) for t in example)}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                             "check --input-shape") from exc
    return ModelSpec(module, tuple(example), names, name, label, default_calib, prequantized=is_prequantized(module),
                     weights=str(Path(weights).resolve()) if weights else None)
