"""The build layer: a model source becomes a float model in the target's format, then the target's
precision. Everything that knows formats and converters sits here, under the pipeline, diagnose and
the accuracy budget, which all use it and none of which it imports.

Two tables decide what runs:
- `EXPORTERS[(source kind, format)]`: the float model in the target's format. PyTorch sources go
  through torch.onnx + onnxsim or litert-torch; ONNX files through onnxsim (ONNX) or onnx2tf (TFLite).
- `QUANTIZERS[backend]`: the float model to the target's precision (ONNX Runtime's tools for ONNX,
  ai-edge-quantizer for TFLite). litert-torch's PT2E route quantizes inside torch and exports in one
  step, so it is a row of `FUSED` instead, keyed the same way.
A new source or backend is one module plus one row here.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit._util import Stages
from edgekit.errors import ConversionError, UsageError
from edgekit.targets import Target


@dataclass
class FloatModel:
    """The float model in the target's format, as the quantizer sees it (tensor names included).
    Layouts are in the source's input/output order."""

    path: Path
    recipe: dict
    in_layouts: list
    out_layouts: list


def source_kind(spec) -> str:
    return getattr(spec, "kind", "torch")


# ---- float export, per (source kind, format)

def _torch_onnx(spec, tgt: Target, channels_last: bool, work: Path, stages: Stages) -> FloatModel:
    from edgekit.export import onnx as onnx_export

    raw, simple = work / "exported.onnx", work / "float.onnx"
    with stages.stage("export"):
        recipe = {"export": onnx_export.export(spec, raw)}
    with stages.stage("simplify"):
        recipe["simplify"] = onnx_export.simplify(raw, simple)
    return FloatModel(simple, recipe, *spec.io_layouts())


def _torch_tflite(spec, tgt: Target, channels_last: bool, work: Path, stages: Stages) -> FloatModel:
    from edgekit.export import tflite as tfl_export

    module, args, in_layouts, out_layouts = tfl_export.prepare(spec, channels_last)
    with stages.stage("export"):
        recipe = {"export": tfl_export.convert(module, args, work / "float.tflite")}
    return FloatModel(work / "float.tflite", recipe, in_layouts, out_layouts)


def _onnx_onnx(spec, tgt: Target, channels_last: bool, work: Path, stages: Stages) -> FloatModel:
    from edgekit.onnx_source import with_opset

    path = work / "float.onnx"
    recipe = dict(spec.recipe)
    data = spec.prepared  # checked, bound, dims fixed and simplified when the file was loaded
    if tgt.quant.mode in ("static", "dynamic"):  # ONNX Runtime's per-channel Q/DQ needs opset 13
        data, recipe["opset_for_quantization"] = with_opset(data, 13)
    path.write_bytes(data)
    return FloatModel(path, {"export": recipe}, *spec.io_layouts())


def _onnx_tflite(spec, tgt: Target, channels_last: bool, work: Path, stages: Stages) -> FloatModel:
    from edgekit.export import onnx2tf

    cached = spec.converted.get("tflite")  # one onnx2tf run (~20 s) serves every TFLite target of a convert
    with stages.stage("export"):
        if cached is None:
            path, recipe, in_layouts, out_layouts = onnx2tf.convert(spec, work, channels_last)
            cached = spec.converted["tflite"] = (path.read_bytes(), recipe, in_layouts, out_layouts)
        data, recipe, in_layouts, out_layouts = cached
        path = work / "float.tflite"
        path.write_bytes(data)
    return FloatModel(path, {"export": {**spec.recipe, **recipe}}, list(in_layouts), list(out_layouts))


EXPORTERS: dict[tuple[str, str], Callable[..., FloatModel]] = {
    ("torch", "onnx"): _torch_onnx,
    ("torch", "tflite"): _torch_tflite,
    ("onnx", "onnx"): _onnx_onnx,
    ("onnx", "tflite"): _onnx_tflite,
}


BIAS_SAMPLES = 64  # calibration samples bias correction measures on (one batch: ~20 s and ~2 GB for EfficientNet-Lite0)


def prepare_weights(spec, tgt: Target, calib, stages: Stages):
    """A PyTorch source as the target's recipe wants it exported: cross-layer equalization (`equalize`) and
    empirical bias correction (`bias_correction`, on the calibration samples, for the target's own weight rounding),
    edgekit.quantize.equalize. Returns (spec, recipe entry); the spec is the one given when nothing applies. Only the
    exported copy changes: validation keeps comparing against the model the user gave."""
    q = tgt.quant
    if source_kind(spec) != "torch" or not (q.equalize or q.bias_correction) or getattr(spec, "prequantized", False):
        return spec, {}
    import dataclasses

    import torch

    from edgekit.quantize import equalize as eq

    module, info = spec.module, {}
    with stages.stage("equalize+bias" if q.equalize and q.bias_correction else "equalize" if q.equalize else "bias correction"):
        if q.equalize:
            rep = eq.equalize(module, example_inputs=spec.example_inputs)
            module, info["equalize"] = rep.model, rep.to_dict()
        if q.bias_correction:
            if calib is None or getattr(calib, "unbatched", None) or not len(calib):
                info["bias_correction"] = {"reason": "not applied: needs calibration samples with a batch axis"}
            else:
                n = min(len(calib), BIAS_SAMPLES)
                batch = tuple(torch.from_numpy(np.ascontiguousarray(calib.arrays[k][:n])) for k in spec.input_names)
                qmax = None
                if q.backend == "ort":  # the rounding ONNX Runtime will do: 7-bit weights where reduce_range applies
                    from edgekit.quantize.onnx import resolve_reduce_range

                    qmax = 64 if resolve_reduce_range(q.reduce_range)[0] else None
                rep = eq.correct_bias(module, [batch], weight_bits=q.weight_bits, per_channel=q.per_channel, weight_qmax=qmax)
                module, info["bias_correction"] = rep.model, {**rep.to_dict(), "weight_qmax": qmax or 2 ** (q.weight_bits - 1) - 1}
    if module is spec.module:
        return spec, info
    return dataclasses.replace(spec, module=module), info


def export_float(spec, tgt: Target, channels_last: bool, work: Path, stages: Stages, calib=None) -> FloatModel:
    """The float model in the target's format (for ONNX targets that will be quantized, also ONNX
    Runtime's pre-processing: shape inference and graph optimisation). The recipe's weight preparation
    (prepare_weights) comes first; `calib` is what bias correction measures on."""
    check_route(spec, tgt)
    spec, prepared = prepare_weights(spec, tgt, calib, stages)
    fm = EXPORTERS[(source_kind(spec), tgt.format)](spec, tgt, channels_last, work, stages)
    if prepared:
        fm.recipe = {"weights": prepared, **fm.recipe}
    if tgt.format == "onnx" and tgt.quant.mode not in ("none", "fp16"):
        from edgekit.quantize import onnx as onnx_quant

        pre = work / "preprocessed.onnx"
        onnx_quant.preprocess(fm.path, pre)
        fm.path = pre
    return fm


# ---- quantization, per quantizer backend

def _quantize_ort(fm: FloatModel, spec, tgt: Target, samples, model_file: Path, work: Path, stages: Stages) -> dict:
    from edgekit.quantize import onnx as onnx_quant

    with stages.stage("quantize"):
        return onnx_quant.quantize(fm.path, model_file, tgt.quant, samples, work)


def _quantize_aeq(fm: FloatModel, spec, tgt: Target, samples, model_file: Path, work: Path, stages: Stages) -> dict:
    from edgekit.quantize import tflite as tfl_quant
    from edgekit.runtime import open_backend

    float_inputs = open_backend(fm.path).inputs
    if samples:
        samples = [by_runtime_name(s, float_inputs) for s in samples]
    with stages.stage("calibrate+quantize" if tgt.quant.needs_calibration else "quantize"):
        info = tfl_quant.quantize_aeq(fm.path, model_file, tgt.quant, samples, [t.name for t in float_inputs])
    tfl_quant.write_recipe(info["recipe"], model_file.with_name("recipe.json"))
    return info


QUANTIZERS: dict[str, Callable[..., dict]] = {"ort": _quantize_ort, "aeq": _quantize_aeq}


def quantize_float(fm: FloatModel, spec, tgt: Target, calib, model_file: Path, work: Path, stages: Stages) -> dict:
    """Quantize an exported float model to the target's precision; returns the recipe's quantize entry."""
    if tgt.quant.backend not in QUANTIZERS:
        raise ConversionError(f"quantizer {tgt.quant.backend!r} does not take an exported float model", "use another target")
    samples = calib_samples(spec, fm, calib) if tgt.quant.needs_calibration else None
    return QUANTIZERS[tgt.quant.backend](fm, spec, tgt, samples, model_file, work, stages)


# ---- routes that quantize while exporting (PT2E; graphs that arrive quantized)

def _pt2e(spec, tgt: Target, calib, channels_last: bool, model_file: Path, work: Path, stages: Stages) -> tuple[dict, list, list]:
    import torch

    from edgekit.export import tflite as tfl_export
    from edgekit.quantize import tflite as tfl_quant

    spec, prepared = prepare_weights(spec, tgt, calib, stages)
    module, args, in_layouts, out_layouts = tfl_export.prepare(spec, channels_last)
    fm = FloatModel(model_file, {}, in_layouts, out_layouts)
    batches = (tuple(torch.from_numpy(s[n]) for n in spec.input_names) for s in calib_samples(spec, fm, calib))
    with stages.stage("calibrate+export"):
        recipe = {"quantize": tfl_quant.pt2e_convert(module, args, batches, tgt.quant, model_file)}
    if prepared:
        recipe = {"weights": prepared, **recipe}
    return recipe, in_layouts, out_layouts


FUSED: dict[tuple[str, str], Callable[..., tuple[dict, list, list]]] = {("torch", "pt2e"): _pt2e}


def check_route(spec, tgt: Target) -> None:
    """Refuse, before any conversion starts, a target this source cannot take."""
    q = tgt.quant
    if (source_kind(spec), tgt.format) not in EXPORTERS:
        raise UsageError(f"edgekit has no route from a {source_kind(spec)} model to {tgt.format}", "use another target")
    if q.backend in {b for _, b in FUSED} and (source_kind(spec), q.backend) not in FUSED:
        raise UsageError(f"{tgt.name} quantizes a PyTorch graph ({q.backend}); {spec.source} is converted from ONNX",
                         "use tflite-int8 (ai-edge-quantizer), which quantizes the converted model")


def build(spec, tgt: Target, calib, channels_last: bool, model_file: Path, work: Path, stages: Stages) -> tuple[dict, list, list]:
    """Write the target's artifact model to `model_file`; returns (recipe, input layouts, output layouts)."""
    if getattr(spec, "prequantized", False):  # a QAT graph (edgekit qat): lower its learned q/dq parameters, never re-quantize it
        from edgekit.quantize import prequantized

        return prequantized.build(spec, tgt, channels_last, model_file, stages)
    q = tgt.quant
    check_route(spec, tgt)
    if q.backend in {b for _, b in FUSED}:
        return FUSED[(source_kind(spec), q.backend)](spec, tgt, calib, channels_last, model_file, work, stages)
    fm = export_float(spec, tgt, channels_last, work, stages, calib)
    recipe = dict(fm.recipe)
    if q.mode == "none":
        shutil.copyfile(fm.path, model_file)
    else:
        recipe["quantize"] = quantize_float(fm, spec, tgt, calib, model_file, work, stages)
    return recipe, fm.in_layouts, fm.out_layouts


# ---- data in the float model's terms

def as_model_dtypes(sample: dict, model_inputs) -> dict:
    """Integer arrays in the dtypes the converted model takes (LiteRT takes int64 ids as int32), in input order."""
    return {n: (a.astype(t.dtype) if a.dtype.kind in "iub" and a.dtype != np.dtype(t.dtype) else a)
            for (n, a), t in zip(sample.items(), model_inputs)}


def _plain(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()


def match_names(names: list[str], infos) -> list[int]:
    """For each source tensor name, its position among an interpreter's tensors: by exact name, then by
    name with punctuation folded (converters rename `input.1` to `input_1`), else by position."""
    runtime = [t.name for t in infos]
    for key in (lambda s: s, _plain):
        where = {key(r): k for k, r in enumerate(runtime)}
        order = [where.get(key(n)) for n in names]
        if len(names) == len(runtime) and None not in order and len(set(order)) == len(order):
            return order  # type: ignore[return-value]
    return list(range(len(names)))


def by_runtime_name(sample: dict, infos) -> dict:
    """A sample keyed by source input names -> keyed by the interpreter's names, in its order and dtypes."""
    order = match_names(list(sample), infos)
    arrays = list(sample.values())
    keyed = {infos[k].name: arrays[i] for i, k in enumerate(order)}
    return as_model_dtypes({t.name: keyed[t.name] for t in infos}, infos)


def calib_samples(spec, fm: FloatModel, calib) -> list[dict]:
    """Calibration batches keyed by the model's input names, in the float model's layout."""
    moves = [lay == "NHWC" and src != "NHWC" for lay, src in zip(fm.in_layouts, spec.io_layouts()[0])]
    return [{n: (s[n].transpose(0, 2, 3, 1).copy() if move else s[n]) for n, move in zip(spec.input_names, moves)}
            for s in calib.samples(spec.batch)]


__all__ = ["FloatModel", "EXPORTERS", "QUANTIZERS", "FUSED", "export_float", "quantize_float", "build", "calib_samples",
           "as_model_dtypes", "by_runtime_name", "match_names", "source_kind", "check_route"]
