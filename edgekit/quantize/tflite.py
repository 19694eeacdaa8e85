"""TFLite quantization: ai-edge-quantizer recipes (fp16, dynamic, static a8w8 / a16w8) on the
converted float model, or litert-torch's PT2E route (quantize in torch, then convert).

ai-edge-quantizer's default calibration keeps a moving average of each tensor's min/max, which
clips the tails (the output logits most of all). `calib_method = "minmax"` (the catalogue's
default) keeps the true running min/max instead, through the same Calibrator with its
`min_max_update` rule. `percentile` and `search` edit that calibration result per tensor before quantizing (the
ranges of edgekit.quantize.ranges, from histograms of every activation on the calibration samples). On
EfficientNet-Lite0 (64 calibration photos, 256 held-out, top-1 agreement with PyTorch) they did not pay: min/max
0.902, percentile 99.999 0.906 (one photo), 99.99 0.867, 99.9 0.559, per-tensor search 0.883, so min/max stays the
default."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgekit._util import first_line
from edgekit.errors import ConversionError
from edgekit.quantize import tflite_rules
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
    chosen: dict = {}
    rules = []
    if q.mode == "static":  # transformers: attention / norms / residual sums float, projections dynamic; embedding tables int8
        rules = tflite_rules.static_rules(src)
        # after the global rule, before the target's own overrides (the last matching rule wins)
        recipe = recipe[:1] + tflite_rules.recipe_rules(rules, q) + recipe[1:]
    try:
        qz = aeq.Quantizer(str(src), recipe)
        qsvs = None
        if qz.need_calibration:
            feed = [{rn: np.asarray(s[k]) for rn, k in zip(runtime_names, s)} for s in (samples or [])]
            if not feed:
                raise ConversionError("static quantization needs calibration samples", "pass --calib")
            update = qsv_utils.moving_average_update if q.calib_method == "moving-average" else qsv_utils.min_max_update
            cal = calibrator.Calibrator(src.read_bytes(), num_threads=1, qsv_update_func=update)
            cal.calibrate({"serving_default": feed}, qz._recipe_manager)
            qsvs = cal.get_model_qsvs()
            if q.calib_method in ("percentile", "search"):
                qsvs, chosen = _chosen_ranges(src, qsvs, feed, q)
        result = qz.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
        dst.write_bytes(bytes(result.quantized_model))
    except ConversionError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise ConversionError(f"ai-edge-quantizer failed: {type(exc).__name__}: {first}", "run with --debug for the log") from exc
    return {"tool": "ai-edge-quantizer", "recipe": recipe, "calib_method": q.calib_method if q.needs_calibration else None, **chosen,
            **({"precision_rules": tflite_rules.summary(rules)} if rules else {})}


PERCENTILE_TAIL = 1e-5  # `percentile`: 99.999% of each tensor's calibration values kept (ONNX Runtime's default)


def _chosen_ranges(src: Path, qsvs: dict, feed: list[dict], q: QuantSpec) -> tuple[dict, dict]:
    """Each activation's min/max replaced by a range chosen on its histogram over the calibration samples (2048
    bins between the min/max calibration found): the 99.999th percentile on either side, or the least expected
    error on the activation grid (`search`; a softmax input floored 30 below its max). Returns the edited table and
    the rules chosen, counted, for the manifest."""
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tiu

    from edgekit.quantize import ranges

    interp = tiu.create_tfl_interpreter(src.read_bytes(), use_xnnpack=True, num_threads=1, preserve_all_tensors=True)
    key = next(iter(interp.get_signature_list()))
    sub = tiu.get_signature_main_subgraph_index(interp, key)
    names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    softmax_inputs = {names.get(op["inputs"][0]) for op in interp._get_ops_details() if op["op_name"] == "SOFTMAX" and len(op["inputs"])}
    hists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sample in feed:
        tiu.invoke_interpreter_signature(interp, sample, key)
        content = tiu.get_tensor_name_to_content_map(interp, sub)
        for name, qsv in qsvs.items():
            lo, hi = float(np.min(qsv["min"])), float(np.max(qsv["max"]))
            if name not in content or not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
                continue
            h, e = np.histogram(np.asarray(content[name], np.float64), bins=ranges.BINS, range=(lo, hi))
            hists[name] = (hists[name][0] + h, e) if name in hists else (h.astype(np.float64), e)
    grid = ranges.Grid(-(2 ** (q.activation_bits - 1)), 2 ** (q.activation_bits - 1) - 1, symmetric=q.activation_bits == 16)
    out, rules = dict(qsvs), Counter()
    for name, (h, e) in hists.items():
        if q.calib_method == "search":
            lo, hi, rule = ranges.choose(h, e, grid, feeds_softmax=name in softmax_inputs)
        else:
            (lo, hi), rule = ranges.percentile(h, e, PERCENTILE_TAIL), f"percentile {100 * (1 - PERCENTILE_TAIL):g}"
        out[name] = {**qsvs[name], "min": np.full_like(qsvs[name]["min"], lo), "max": np.full_like(qsvs[name]["max"], hi)}
        rules[rule] += 1
    return out, {"range_choice": q.calib_method, "tensors": len(hists), "rules": dict(rules.most_common())}


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
        first = first_line(exc)
        raise ConversionError(f"PT2E quantization failed: {type(exc).__name__}: {first}", "use the tflite-int8 target (ai-edge-quantizer) instead") from exc
    info = convert(graph, args, dst, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return {**info, "tool": "litert-torch PT2E", "observer": "HistogramObserver (activations), PerChannelMinMaxObserver (weights)",
            "per_channel": q.per_channel, "calib_method": q.calib_method}
