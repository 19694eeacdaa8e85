"""TFLite quantization: ai-edge-quantizer recipes (fp16, dynamic, static a8w8 / a16w8) on the
converted float model, or litert-torch's PT2E route (quantize in torch, then convert).

ai-edge-quantizer's default calibration keeps a moving average of each tensor's min/max, which
clips the tails (the output logits most of all). `calib_method = "minmax"` (the catalogue's
default) keeps the true running min/max instead, through the same Calibrator with its
`min_max_update` rule."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError
from edgekit.targets import QuantSpec


def _weights(q: QuantSpec) -> dict:
    granularity = f"BLOCKWISE_{q.block_size}" if q.block_size else ("CHANNELWISE" if q.per_channel else "TENSORWISE")
    return {"num_bits": q.weight_bits, "symmetric": True, "granularity": granularity, "dtype": "INT"}


def _static(q: QuantSpec, activation_bits: int) -> dict:
    acts = {"num_bits": activation_bits, "symmetric": activation_bits == 16, "granularity": "TENSORWISE", "dtype": "INT"}
    return {"activation_tensor_config": acts, "weight_tensor_config": _weights(q), "compute_precision": "INTEGER", "explicit_dequantize": False}


def _rule(regex: str, op_config: dict | None, algorithm: str = "min_max_uniform_quantize") -> dict:
    if op_config is None:
        return {"regex": regex, "operation": "*", "algorithm_key": "no_quantize", "op_config": {}}
    return {"regex": regex, "operation": "*", "algorithm_key": algorithm, "op_config": op_config}


def aeq_recipe(q: QuantSpec) -> list[dict]:
    """The ai-edge-quantizer recipe (serialisable data) for a target's QuantSpec.

    Per-layer overrides become later rules (ai-edge-quantizer lets the last matching rule win);
    their regex matches an op's scope, i.e. its output tensor names joined by ';' plus ';'."""
    if q.mode == "fp16":
        return [_rule(".*", {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                             "compute_precision": "FLOAT", "explicit_dequantize": True}, "float_casting")]
    if q.mode == "weight_only":  # weights stored in q.weight_bits, dequantized to float before each op
        return [_rule(".*", {"weight_tensor_config": _weights(q), "compute_precision": "FLOAT", "explicit_dequantize": True})]
    if q.mode == "dynamic":
        return [_rule(".*", {"weight_tensor_config": _weights(q), "compute_precision": "INTEGER", "explicit_dequantize": False})]
    if q.mode != "static":
        raise ConversionError(f"ai-edge-quantizer has no mode {q.mode!r}")
    rules = [_rule(".*", _static(q, q.activation_bits))]
    rules += [_rule(o.layer, _static(q, 16) if o.precision == "int16" else None) for o in q.overrides]
    return rules


def quantize_aeq(src: Path, dst: Path, q: QuantSpec, samples: Iterable[dict] | None, runtime_names: list[str]) -> dict:
    import ai_edge_quantizer as aeq
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    recipe = aeq_recipe(q)
    try:
        qz = aeq.Quantizer(str(src), recipe)
        qsvs = None
        if qz.need_calibration:
            feed = [{rn: np.asarray(s[k]) for rn, k in zip(runtime_names, s)} for s in (samples or [])]
            if not feed:
                raise ConversionError("static quantization needs calibration samples", "pass --calib")
            update = qsv_utils.min_max_update if q.calib_method == "minmax" else qsv_utils.moving_average_update
            cal = calibrator.Calibrator(src.read_bytes(), num_threads=1, qsv_update_func=update)
            cal.calibrate({"serving_default": feed}, qz._recipe_manager)
            qsvs = cal.get_model_qsvs()
        result = qz.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
        dst.write_bytes(bytes(result.quantized_model))
    except ConversionError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:240]
        raise ConversionError(f"ai-edge-quantizer failed: {type(exc).__name__}: {first}", "run with --debug for the log") from exc
    return {"tool": "ai-edge-quantizer", "recipe": recipe, "calib_method": q.calib_method if q.needs_calibration else None}


def write_recipe(recipe: dict, path: Path) -> None:
    path.write_text(json.dumps(recipe, indent=2) + "\n")


def pt2e_convert(module, args, samples: Iterable[tuple], q: QuantSpec, dst: Path) -> dict:
    """litert-torch's PT2E route: export, insert observers, calibrate in torch, convert, lower."""
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    from edgekit.export.tflite import convert

    try:
        quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=q.per_channel))
        graph = torch.export.export(module, args).module()
        graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
        n = 0
        with torch.no_grad():
            for batch in samples:
                graph(*batch)
                n += 1
        if not n:
            raise ConversionError("static quantization needs calibration samples", "pass --calib")
        graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    except ConversionError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:240]
        raise ConversionError(f"PT2E quantization failed: {type(exc).__name__}: {first}", "use the tflite-int8 target (ai-edge-quantizer) instead") from exc
    info = convert(graph, args, dst, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return {**info, "tool": "litert-torch PT2E", "observer": "HistogramObserver (activations), PerChannelMinMaxObserver (weights)",
            "per_channel": q.per_channel, "calib_method": q.calib_method}
