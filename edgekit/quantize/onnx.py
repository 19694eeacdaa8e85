"""ONNX quantization with ONNX Runtime's own tools: quant_pre_process, quantize_static (QDQ),
quantize_dynamic, and the float16 converter."""

from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from edgekit._util import first_line
from edgekit.errors import ConversionError
from edgekit.targets import QuantSpec


def host_has_vnni() -> bool:
    """x86 VNNI decides whether ORT's u8s8 kernels can saturate (see reduce_range)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_reduce_range(setting: str) -> tuple[bool, str]:
    if setting in ("true", "false"):
        return setting == "true", "set by the target"
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686") and not host_has_vnni():
        return True, ("auto: this x86 host has no VNNI, where ONNX Runtime's u8s8 kernels saturate "
                      "with 8-bit per-channel weights; 7-bit weights avoid it")
    return False, "auto: 8-bit weights (host has VNNI or is not x86)"


class SampleReader:
    """ONNX Runtime's CalibrationDataReader protocol: get_next() until None."""

    def __init__(self, samples: Iterable[dict]):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return self._it


def preprocess(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation, not a requirement
        onnx.save(onnx.load(str(src)), str(dst))


def _gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Gemm (alpha = beta = 1, constant B) -> MatMul + Add, so MatMulNBits can take its weights: ONNX Runtime's
    4-bit quantizer handles MatMul only, and torch exports Linear on 2-D inputs as Gemm."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes, changed = [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(w.copy(), n.input[1]))
        mm_out = n.output[0] + "_matmul" if len(n.input) > 2 and n.input[2] else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [mm_out], name=n.name + "_matmul"))
        if mm_out != n.output[0]:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=n.name + "_bias"))
        changed += 1
    del g.node[:]
    g.node.extend(nodes)
    return changed


def _drop_duplicate_casts(model: onnx.ModelProto) -> int:
    """The float16 converter names each Cast it inserts (node and output) after the tensor it casts, so a
    constant read by two nodes (paddle2onnx shares them, e.g. PP-OCR's Resize scales) gets two identical
    Casts defining the same tensor, which ONNX Runtime rejects ("two nodes with same node name"). The
    repeats compute the same thing: drop them. Returns how many were dropped."""
    produced: dict[str, tuple] = {}
    keep, dropped = [], 0
    for n in model.graph.node:
        key = (n.op_type, n.domain, tuple(n.input), tuple(a.SerializeToString() for a in n.attribute))
        if n.output and all(o in produced for o in n.output) and all(produced[o] == key for o in n.output):
            dropped += 1
            continue
        for o in n.output:
            produced[o] = key
        keep.append(n)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return dropped


def _weight_only(src: Path, dst: Path, q: QuantSpec) -> dict:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    rewritten = _gemm_to_matmul(model)
    quantizer = MatMulNBitsQuantizer(model, bits=q.weight_bits, block_size=q.block_size or 32, is_symmetric=True)
    quantizer.process()
    quantized = quantizer.model.model
    n = sum(1 for node in quantized.graph.node if node.op_type == "MatMulNBits")
    if not n:
        raise ConversionError("ONNX Runtime's 4-bit quantizer found no MatMul/Gemm weights to quantize in this model",
                              "onnx-int4 packs MatMul weights only; use tflite-int4 or onnx-int8 for convolution-only models")
    onnx.save(quantized, str(dst))
    return {"tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer", "bits": q.weight_bits,
            "block_size": q.block_size or 32, "symmetric": True, "gemm_rewritten_to_matmul": rewritten, "matmulnbits_nodes": n,
            "note": "convolutions stay float: ONNX Runtime's 4-bit path covers MatMul"}


def _overrides(nodes, q: QuantSpec) -> tuple[list[str], list[str]]:
    """Per-layer overrides (regexes over node names) -> (nodes kept float, output tensors made int16)."""
    import re

    if not q.overrides:
        return [], []
    exclude: list[str] = []
    wide: list[str] = []
    for o in q.overrides:
        for n in nodes:
            if re.search(o.layer, n.name or ""):
                if o.precision == "float":
                    exclude.append(n.name)
                else:
                    wide += [t for t in n.output if t]
    return exclude, [t for t in dict.fromkeys(wide)]


HUGE = 1e30  # float constants at or below -HUGE (or -inf) are additive masks: finfo(float32).min is -3.4e38
MASK_VALUE = -1e4  # what they become: BERT's own mask value; exp(-1e4) is as zero as exp(-3.4e38)


def finite_masks(model: onnx.ModelProto) -> int:
    """Additive-mask constants (-3.4e38, -inf) become -1e4, in place; returns how many values changed. A HF-style
    attention mask `(1 - mask) * finfo.min` made ONNX Runtime's histogram calibrators stop ("Too many bins for data
    range": the range is infinitely wide) and min/max ranges useless (1.3 dB on a toy attention block); -1e4 gives
    the same softmax and finite histograms."""
    from onnx import numpy_helper

    def fix(t: onnx.TensorProto) -> int:
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            return 0
        a = numpy_helper.to_array(t)
        bad = np.isneginf(a) | (a <= -HUGE) if a.dtype == np.float32 else np.isneginf(a) | (a <= -65504)
        if not bad.any():
            return 0
        t.CopyFrom(numpy_helper.from_array(np.where(bad, MASK_VALUE, a).astype(a.dtype), t.name))
        return int(bad.sum())

    n = sum(fix(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            n += sum(fix(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return n


def attention_float_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes of attention blocks kept float in a static int8 graph, with the reason: each Softmax over attention
    scores (a MatMul upstream, a MatMul downstream) with the nodes between the scores' MatMul and it (scaling,
    the mask's Add), and every LayerNormalization of such a graph. Softmax's input spans the mask and its output
    is 0..1 with the information near 0; LayerNorm's inputs carry a few channels 10-100x the rest (the outliers
    SmoothQuant is about). Nodes without names get names, so they can be named."""
    from edgekit.census import node_links

    producer, consumers = node_links(model.graph.node)
    found: list[tuple] = []  # (node, why)
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        between, cur = [], producer.get(sm.input[0])
        while cur is not None and cur.op_type in ("Add", "Div", "Mul", "Where", "Sub") and len(between) < 4:
            between.append(cur)
            cur = next((producer[i] for i in cur.input if i in producer and producer[i].op_type != "Constant"), None)
        if cur is None or cur.op_type != "MatMul" or not any(c.op_type == "MatMul" for c in consumers.get(sm.output[0], [])):
            continue
        found += [(sm, "attention softmax"), *[(b, "attention scores (scale / mask) feeding a softmax") for b in between]]
    if not found:
        return {}
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            found.append((n, "layer norm in a transformer"))
            res = producer.get(n.input[0])
            if res is not None and res.op_type == "Add":
                found.append((res, "residual sum feeding a layer norm (its outlier channels)"))
    for i, n in enumerate(model.graph.node):  # named only in a graph that is changed (and saved)
        if not n.name:
            n.name = f"edgekit_{n.op_type}_{i}"
    return {n.name: why for n, why in found}


WHY_PROJECTION = "a projection writing into the residual stream (outlier channels in its output): int8 weights, dynamic activations"


def residual_projections(model: onnx.ModelProto) -> dict[str, str]:
    """The projections that write into a transformer's residual stream: each Gemm/MatMul whose output reaches (through
    reshapes and its bias Add) the Add before a LayerNormalization, with the reason. Their outputs carry a few outlier
    channels 10-100x the rest, so a static int8 range fits neither. Asked only of graphs with attention
    (attention_float_nodes); they are quantized dynamically (`dynamic_projections`)."""
    from edgekit.census import node_links

    producer, _ = node_links(model.graph.node)
    found: dict[str, str] = {}
    for ln in (n for n in model.graph.node if n.op_type == "LayerNormalization"):
        res = producer.get(ln.input[0])
        if res is None or res.op_type != "Add":
            continue
        for t in res.input:
            cur, steps = producer.get(t), 0
            while cur is not None and cur.op_type in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Add") and steps < 3:
                cur, steps = producer.get(cur.input[0]), steps + 1  # an Add here is a projection's bias
            if cur is not None and cur.op_type in ("Gemm", "MatMul") and cur.name:
                found[cur.name] = WHY_PROJECTION
    return found


def dynamic_projections(model: onnx.ModelProto, names: dict[str, str], q: QuantSpec, reduce_range: bool, work: Path) -> tuple[onnx.ModelProto, dict]:
    """The projections quantized by ONNX Runtime's quantize_dynamic (int8 per-channel weights; each call quantizes its
    input from the input's own range: DynamicQuantizeLinear -> MatMulInteger), before the static pass, which then
    leaves them (and their bias Adds) alone. Returns the model and the nodes that now compute each projection.

    Measured on all-MiniLM-L6-v2 (64 calibration / 64 held-out sentences, ONNX Runtime, one thread): projections
    with 16-bit static activations gave cosine 0.9905 at 1.43x the fp32 latency (ONNX Runtime has no int16 kernels:
    Q/DQ around float ops); float, 0.9937 at 0.89x but 34.6 MiB; dynamic, 0.9879 (min 0.983) at 0.72x and 21.8 MiB."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.census import node_links

    before, dyn = work / "projections-float.onnx", work / "projections-dynamic.onnx"
    onnx.save(model, str(before))
    old = {n.name for n in model.graph.node}
    # quantize_dynamic first rewrites every Gemm as MatMul + Add (NAME_MatMul, NAME_Add), then quantizes the names given
    quantize_dynamic(str(before), str(dyn), weight_type=QuantType.QInt8, per_channel=q.per_channel, reduce_range=reduce_range,
                     nodes_to_quantize=[*names, *[f"{n}_MatMul" for n in names]], extra_options={"MatMulConstBOnly": True})
    out = onnx.load(str(dyn))
    _, consumers = node_links(out.graph.node)
    made = {n.name: names[p] for n in out.graph.node if n.name not in old for p in names if n.name.startswith(f"{p}_")}
    for n in [n for n in out.graph.node if n.name in made]:  # a MatMul projection's own bias Add stays float with it
        for c in (c for t in n.output for c in consumers.get(t, []) if c.op_type == "Add" and c.name not in made):
            made[c.name] = made[n.name]
    if not any(n.op_type == "MatMulInteger" for n in out.graph.node):
        raise ConversionError("ONNX Runtime's dynamic quantization did not quantize the transformer's projections",
                              "report this model; as a workaround add them as float overrides in a copy of the target")
    return out, made


def _unique_names(path: Path) -> None:
    """ONNX Runtime's static pass over a graph its dynamic pass already changed can name two QuantizeLinear nodes
    alike, which its own loader then refuses; names are labels, so the later ones get a suffix."""
    model = onnx.load(str(path))
    seen: dict[str, int] = {}
    renamed = 0
    for n in model.graph.node:
        if n.name in seen:
            seen[n.name] += 1
            n.name, renamed = f"{n.name}_{seen[n.name]}", renamed + 1
        seen.setdefault(n.name, 0)
    if renamed:
        onnx.save(model, str(path))


def _ort_op_types(q: QuantSpec) -> list[str]:
    """The op types quantize_static quantizes (and so calibrates): the target's, else every one it registers."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return list(q.op_types) or sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def searched_ranges(src: Path, model: onnx.ModelProto, q: QuantSpec, samples: Iterable[dict], work: Path) -> tuple[Path, dict]:
    """One pass of ONNX Runtime's histogram collector over the calibration samples, then each tensor's range
    chosen by edgekit.quantize.ranges (least expected int8 error among min/max, percentiles and clips), written
    as ONNX Runtime's calibration table for quantize_static to use as it is, on the grid of the target's activation
    type. `model` is `src` loaded. Returns the table and a summary of the rules chosen (counted per rule: the
    manifest keeps it)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data

    from edgekit.quantize import ranges

    info = np.iinfo(q.activation_type)
    grid = ranges.Grid(int(info.min), int(info.max))
    softmax_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Softmax" and n.input}
    cal = create_calibrator(src, _ort_op_types(q), augmented_model_path=str(work / "ranges-augmented.onnx"),
                            calibrate_method=CalibrationMethod.Entropy, extra_options={"num_bins": ranges.BINS, "symmetric": False})
    cal.collect_data(SampleReader(samples))
    table, rules = {}, Counter()
    for name, (hist, edges, *_rest) in cal.collector.histogram_dict.items():
        lo, hi, rule = ranges.choose(hist, edges, grid, feeds_softmax=name in softmax_inputs)
        table[name] = (np.array(lo, np.float32), np.array(hi, np.float32))
        rules[rule] += 1
    path = work / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, table), str(path))
    return path, {"range_search": "per tensor, least expected int8 error over the calibration histogram",
                  "tensors": len(table), "rules": dict(rules.most_common())}


def quantize(src: Path, dst: Path, q: QuantSpec, samples: Iterable[dict] | None, work: Path) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    try:
        if q.mode == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
            dropped = _drop_duplicate_casts(half)
            onnx.save(half, str(dst))
            return {"tool": "onnxruntime.transformers.float16", "keep_io_types": True, "dropped_duplicate_casts": dropped}
        if q.mode == "weight_only":
            return _weight_only(src, dst, q)
        reduce_range, why = resolve_reduce_range(q.reduce_range)
        if q.mode == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=q.per_channel, reduce_range=reduce_range,
                             op_types_to_quantize=list(q.op_types) or None)
            return {"tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "int8", "op_types": list(q.op_types) or "all",
                    "per_channel": q.per_channel, "reduce_range": reduce_range, "reduce_range_reason": why}
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
        act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16, "int16": QuantType.QInt16}[q.activation_type]
        extra = {"CalibTensorRangeSymmetric": False}
        if q.activation_bits == 16 or q.activation_type.endswith("16"):
            extra["UseQDQContribOps"] = True
        # static from here on
        model = onnx.load(str(src))
        transformer: dict = {}
        masks, attention = finite_masks(model), attention_float_nodes(model)
        if masks or attention:
            transformer = {"finite_masks": masks, "attention_float_nodes": attention}
            projections = residual_projections(model) if attention else {}
            if projections:
                model, transformer["transformer_dynamic_nodes"] = dynamic_projections(model, projections, q, reduce_range, work)
            src = work / "static-src.onnx"
            onnx.save(model, str(src))
        exclude, wide = _overrides(model.graph.node, q)
        kept = {**transformer.get("attention_float_nodes", {}), **transformer.get("transformer_dynamic_nodes", {})}
        exclude = [*exclude, *[n for n in kept if n not in exclude]]
        if wide:  # per-layer int16: the layers' output tensors get 16-bit Q/DQ (ONNX Runtime's mixed precision, opset 21 Q/DQ)
            wide_type = QuantType.QUInt16 if q.activation_type.startswith("u") else QuantType.QInt16
            extra["TensorQuantOverrides"] = {t: [{"quant_type": wide_type}] for t in wide}
        searched: dict = {}
        reader, method, cache = SampleReader(samples or []), methods.get(q.calib_method), None
        if q.calib_method == "search":
            cache, searched = searched_ranges(src, model, q, samples or [], work)
            reader, method = None, CalibrationMethod.MinMax
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                        per_channel=q.per_channel, reduce_range=reduce_range, activation_type=act,
                        weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra,
                        op_types_to_quantize=list(q.op_types) or None, nodes_to_exclude=exclude or None,
                        calibration_cache_path=str(cache) if cache else None)
        if transformer.get("transformer_dynamic_nodes"):
            _unique_names(dst)
        return {"tool": "onnxruntime.quantization.quantize_static", **searched, **transformer, "float_nodes": exclude, "int16_tensors": wide, "format": "QDQ", "per_channel": q.per_channel,
                "op_types": list(q.op_types) or "all",
                "activation_type": q.activation_type, "weight_type": "int8", "calib_method": q.calib_method,
                "reduce_range": reduce_range, "reduce_range_reason": why}
    except ConversionError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise ConversionError(f"ONNX Runtime quantization failed: {type(exc).__name__}: {first}", "run with --debug for the log") from exc
