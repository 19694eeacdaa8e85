"""PyTorch -> ONNX: torch.onnx's dynamo exporter (TorchScript exporter as a fallback), one
self-contained file, then onnxsim. Input names come from the model spec; batch stays fixed
(edge runtimes plan memory for static shapes)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from edgekit.errors import ConversionError
from edgekit.sources import ModelSpec


def output_names(spec: ModelSpec) -> list[str]:
    return spec.output_names


def export(spec: ModelSpec, path: Path) -> dict:
    """Write the float ONNX model to `path`; return what was done, for the manifest."""
    names = output_names(spec)
    errors = []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = {"dynamo": dynamo, "input_names": spec.input_names, "output_names": names}
                if dynamo:
                    kwargs["external_data"] = False
                    kwargs["verbose"] = False
                else:
                    kwargs["opset_version"] = 17
                torch.onnx.export(spec.module, spec.example_inputs, str(path), **kwargs)
            onnx.checker.check_model(str(path))
            return {"exporter": "torch.onnx dynamo" if dynamo else "torch.onnx torchscript", "opset": onnx.load(str(path)).opset_import[0].version}
        except Exception as exc:  # the fallback exporter gets its turn
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}")
    raise ConversionError("ONNX export failed (" + "; ".join(errors) + ")", "run with --debug for the log; unsupported ops need rewriting in the model")


def simplify(src: Path, dst: Path) -> dict:
    """onnxsim; if it cannot simplify, keep the exported graph and say so."""
    import onnxsim

    model = onnx.load(str(src))
    before = len(model.graph.node)
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:
        ok, simplified, why = False, model, f"{type(exc).__name__}: {str(exc)[:160]}"
    else:
        why = "" if ok else "onnxsim's check failed"
    if not ok:
        onnx.save(model, str(dst))
        return {"simplifier": "onnxsim", "applied": False, "reason": why, "nodes": before}
    onnx.save(simplified, str(dst))
    return {"simplifier": "onnxsim", "applied": True, "nodes_before": before, "nodes": len(simplified.graph.node)}
