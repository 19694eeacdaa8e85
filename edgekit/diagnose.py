"""edgekit diagnose: which layers lose the accuracy of a quantized artifact, why, and the recipe change that fixes it.

The float model is rebuilt in the artifact's format (same exporter, so the same tensor names the
quantizer saw), both models run on real inputs with every intermediate tensor kept (LiteRT's
preserve-all-tensors interpreter through ai-edge-quantizer's helpers; ONNX Runtime's QDQ debugging
helpers), and each layer is scored by what it adds to the error: the noise-to-signal power of its
output minus that of its inputs (so the first layer's drop from a near-lossless input to ~40 dB of
ordinary int8 noise ranks below a layer that drops from 40 dB to 12 dB). The SQNR loss in dB is
reported beside it.

SQNR here is the median over channels: one outlier channel owns a per-tensor int8 scale and leaves
the other channels a few levels each, which a whole-tensor SQNR (dominated by that channel) hides.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit._util import work_dir
from edgekit.errors import UsageError
from edgekit.validate import SQNR_CAP_DB

CHANNEL_SPREAD = 20.0  # max / median of per-channel |x| max that marks an outlier channel
WIDE_TFLITE = {"HARD_SWISH", "GELU", "LOGISTIC"}
WIDE_ONNX = {"HardSwish", "Gelu", "Sigmoid", "Mish"}
WIDE_MODULES = ("SiLU", "Hardswish", "GELU", "Mish")
QUIET_DB = 30.0  # a layer whose output keeps this much SQNR with no known cause is not worth a recipe change
POOL_OPS = {"AVERAGE_POOL_2D", "MEAN", "AveragePool", "GlobalAveragePool", "ReduceMean"}


@dataclass
class LayerError:
    """One layer: the ops that came from one PyTorch module (TFLite) or one ONNX node."""

    name: str  # the PyTorch module path when the converter kept it (features.4), else the tensor / node name
    ops: list[str]
    modules: str  # PyTorch module types fused into it, e.g. Conv2d+BatchNorm2d+ReLU
    precision: str  # int8 | int16 | float, as found in the artifact
    sqnr_in_db: float
    sqnr_out_db: float
    loss_db: float
    added_noise: float  # noise-to-signal power this layer adds (NSR out - NSR in): the ranking key
    channel_spread: float  # max / median of the float output's per-channel |x| max
    cause: str = ""
    fix: str = ""  # int16 | float | per_channel
    fix_note: str = ""
    tensors: list[str] = field(default_factory=list)  # output tensors (TFLite) / node names (ONNX) the fix targets
    consumers: list[str] = field(default_factory=list)  # layers reading this layer's output

    @property
    def pattern(self) -> str:
        return tensors_pattern(self.tensors)


@dataclass
class Diagnosis:
    artifact: str
    target: str
    format: str
    samples: int
    output_sqnr_db: float
    layers: list[LayerError]  # ranked, worst first

    def suggestion(self):
        """The recipe change for the worst layer (a LayerOverride), or None."""
        if not self.layers or self.layers[0].fix not in ("int16", "float"):
            return None
        if self.layers[0].sqnr_out_db >= QUIET_DB and self.layers[0].cause.startswith("no known"):
            return None  # ordinary int8 noise everywhere: nothing worth moving
        return next_move(self.layers[0], {la.name: la for la in self.layers}, self.format)

    def to_json(self) -> dict:
        s = self.suggestion()
        return {**{k: v for k, v in asdict(self).items() if k != "layers"},
                "layers": [{**asdict(layer), "pattern": layer.pattern} for layer in self.layers],
                "suggested_override": asdict(s) if s else None}


def _name_regex(name: str) -> str:
    """litert-torch names a tensor 'pkg.Net/…/torch.nn.modules.conv.Conv2d_4;1': the root's module path depends on
    how the model was imported and the ';N' suffix on what else was converted, so neither is matched literally."""
    parts = []
    for piece in name.split(";;"):
        core = re.sub(r";\d*$", "", piece)
        _, sep, rest = core.partition("/")
        parts.append("[^/;]*/" + re.escape(rest) if sep else re.escape(core))
    return ";;".join(parts) + r"(?:;\d*)?"


def tensors_pattern(names: list[str]) -> str:
    """A regex matching these ops whichever process exported the model: ai-edge-quantizer matches an op's output
    names joined by ';' plus ';', edgekit's ONNX Runtime path matches node names."""
    return "^(?:" + "|".join(dict.fromkeys(_name_regex(n) for n in names)) + ");?$"


class _Stats:
    """Per-tensor running sums: per-channel signal and noise energy, per-channel |x| max of the float tensor."""

    def __init__(self):
        self.signal = self.noise = self.absmax = None

    def add(self, ref: np.ndarray, out: np.ndarray, channel_axis: int) -> None:
        ref = np.moveaxis(ref.astype(np.float64), channel_axis, -1).reshape(-1, ref.shape[channel_axis])
        out = np.moveaxis(out.astype(np.float64), channel_axis, -1).reshape(ref.shape)
        s, n, m = (ref ** 2).sum(0), ((ref - out) ** 2).sum(0), np.abs(ref).max(0)
        if self.signal is None:
            self.signal, self.noise, self.absmax = s, n, m
        else:
            self.signal += s
            self.noise += n
            self.absmax = np.maximum(self.absmax, m)

    def sqnr_db(self) -> float:
        live = self.signal > 0
        if not live.any():
            return SQNR_CAP_DB
        with np.errstate(divide="ignore"):
            db = np.where(self.noise[live] > 0, 10 * np.log10(self.signal[live] / np.maximum(self.noise[live], 1e-300)), SQNR_CAP_DB)
        return float(min(SQNR_CAP_DB, np.median(db)))

    def spread(self) -> float:
        med = float(np.median(self.absmax))
        return float(self.absmax.max()) / med if med > 0 else (math.inf if self.absmax.max() > 0 else 1.0)


@dataclass
class _Op:
    kind: str
    inputs: list[str]
    outputs: list[str]
    layer: str
    scope: list[str]  # the names a recipe override matches: output tensors (TFLite) or the node name (ONNX)
    modules: str = ""


# --- module names from litert-torch tensor names -------------------------------------------------------

def _module_parts(tensor: str) -> list[tuple[str, str]]:
    """'pkg.Net/torch.nn.modules.container.Sequential_features/torch.nn.modules.conv.Conv2d_4;1' -> [('features.4', 'Conv2d')]
    (fused ops list several modules separated by ';;')."""
    parts = []
    for piece in tensor.split(";;"):
        segs = re.sub(r";\d*$", "", piece).split("/")
        if len(segs) < 2:
            continue
        path, kind = [], ""
        for seg in segs[1:]:
            cls, _, attr = seg.rpartition(".")[2].partition("_")
            if not attr:
                break
            path.append(attr)
            kind = cls
        if path:
            parts.append((".".join(path), kind))
    return parts


def _tflite_graph(model: bytes) -> tuple[list[_Op], list[str], set[str]]:
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tu

    it = tu.create_tfl_interpreter(model, use_xnnpack=False, preserve_all_tensors=False, num_threads=1)
    det = {d["index"]: d["name"] for d in it.get_tensor_details()}
    ops = []
    for op in it._get_ops_details():  # the interpreter's op list: the public API has no other way to walk it
        outs = [det[i] for i in op["outputs"] if i >= 0]
        parts = _module_parts(outs[0]) if outs else []
        layer = parts[-1][0] if parts else (outs[0] if outs else op["op_name"])
        ops.append(_Op(op["op_name"], [det[i] for i in op["inputs"] if i >= 0], outs, layer, outs,
                       "+".join(k for _, k in reversed(parts))))
    graph_inputs = [d["name"] for d in it.get_input_details()]
    produced = {t for o in ops for t in o.outputs} | set(graph_inputs)
    return ops, graph_inputs, produced


def _unrooted(name: str) -> str:
    """A tensor name without its root module path (which depends on how the model was imported)."""
    return ";;".join(p.partition("/")[2] or p for p in name.split(";;"))


def _tflite_stats(float_model: bytes, quant_model: bytes, samples: list[dict]) -> tuple[dict[str, _Stats], dict[str, str]]:
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tu

    stats: dict[str, _Stats] = {}
    dtypes: dict[str, str] = {}
    ref_it = tu.create_tfl_interpreter(float_model, use_xnnpack=False, preserve_all_tensors=True, num_threads=1)
    q_it = tu.create_tfl_interpreter(quant_model, use_xnnpack=False, preserve_all_tensors=True, num_threads=1)
    dtypes = {_unrooted(d["name"]): np.dtype(d["dtype"]).name for d in q_it.get_tensor_details()}
    for sample in samples:
        tu.invoke_interpreter_signature(ref_it, sample)
        tu.invoke_interpreter_signature(q_it, sample)
        ref = tu.get_tensor_name_to_content_map(ref_it, dequantize=True)
        out = {_unrooted(k): v for k, v in tu.get_tensor_name_to_content_map(q_it, dequantize=True).items()}
        for name, r in ref.items():
            o = out.get(_unrooted(name))
            if o is None or r.shape != o.shape or r.dtype.kind != "f" or r.ndim == 0:
                continue
            stats.setdefault(name, _Stats()).add(r, o.astype(np.float64), -1)
    return stats, dtypes


# --- ONNX ------------------------------------------------------------------------------------------------

def _onnx_graph(path: Path) -> tuple[list[_Op], list[str], set[str]]:
    import onnx

    g = onnx.load(str(path)).graph
    ops = [_Op(n.op_type, [i for i in n.input if i], [o for o in n.output if o], n.name or n.output[0], [n.name or n.output[0]])
           for n in g.node]
    inits = {i.name for i in g.initializer}
    graph_inputs = [i.name for i in g.input if i.name not in inits]
    produced = {t for o in ops for t in o.outputs} | set(graph_inputs)
    return ops, graph_inputs, produced


def _onnx_stats(float_path: Path, quant_path: Path, samples: list[dict], work: Path) -> tuple[dict[str, _Stats], dict[str, str]]:
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from edgekit.quantize.onnx import SampleReader

    aug_f, aug_q = work / "float-aug.onnx", work / "quant-aug.onnx"
    modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
    modify_model_output_intermediate_tensors(str(quant_path), str(aug_q))
    matched = create_activation_matching(collect_activations(str(aug_q), SampleReader(samples)),
                                         collect_activations(str(aug_f), SampleReader(samples)))
    stats: dict[str, _Stats] = {}
    for name, m in matched.items():
        if "float" not in m:
            continue
        quant = m.get("post_qdq") or m.get("pre_qdq")
        if not quant:
            continue
        for r, o in zip(m["float"], quant):
            if r.shape == o.shape and r.dtype.kind == "f" and r.ndim:
                stats.setdefault(name, _Stats()).add(r, o, 1 if r.ndim >= 3 else -1)
    g = onnx.load(str(quant_path)).graph
    # a tensor's precision is its QuantizeLinear's zero-point type; tensors without one stay float
    dtypes = {n.input[0]: "int16" if len(n.input) > 2 and "16" in _zero_point_type(g, n.input[2]) else "int8"
              for n in g.node if n.op_type == "QuantizeLinear"}
    return stats, dtypes


def _zero_point_type(graph, name: str) -> str:
    import onnx

    for init in graph.initializer:
        if init.name == name:
            return onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
    return "int8"


# --- layers, causes, fixes ---------------------------------------------------------------------------------

def _layers(ops: list[_Op], graph_inputs: list[str], produced: set[str], stats: dict[str, _Stats], dtypes: dict[str, str],
            per_channel: bool) -> list[LayerError]:
    groups: dict[str, list[_Op]] = {}
    for op in ops:
        groups.setdefault(op.layer, []).append(op)
    graph_in = set(graph_inputs)
    read_by: dict[str, set[str]] = {}  # tensor -> the layers reading it
    for op in ops:
        for t in op.inputs:
            read_by.setdefault(t, set()).add(op.layer)
    layers = []
    for name, members in groups.items():
        own = {t for o in members for t in o.outputs}
        ins = [t for o in members for t in o.inputs if t not in own and (t in produced or t in graph_in)]
        outs = [t for o in members for t in o.outputs if t in stats]
        # the layer's result: what other layers read (or the model's output when nothing does)
        final = [t for t in outs if read_by.get(t, set()) - {name}] or outs[-1:]
        if not final:
            continue
        s_in = min((stats[t].sqnr_db() for t in ins if t in stats), default=SQNR_CAP_DB)
        s_out = min(stats[t].sqnr_db() for t in final)
        kinds = [o.kind for o in members]
        prec = {dtypes.get(t, dtypes.get(_unrooted(t), "float32")) for t in final}
        le = LayerError(name, sorted(set(kinds), key=kinds.index), next((o.modules for o in members if o.modules), ""),
                        "int16" if "int16" in prec else "int8" if prec & {"int8", "uint8"} else "float",
                        round(s_in, 2), round(s_out, 2), round(max(0.0, s_in - s_out), 2),
                        float(max(0.0, 10 ** (-s_out / 10) - 10 ** (-s_in / 10))),
                        round(max(stats[t].spread() for t in final), 1),
                        tensors=[n for o in members for n in o.scope],
                        consumers=sorted(set().union(*(read_by.get(t, set()) for t in own)) - {name}))
        le.cause, le.fix, le.fix_note = _cause(le, per_channel)
        layers.append(le)
    return sorted(layers, key=lambda la: -la.added_noise)


def _cause(le: LayerError, per_channel: bool) -> tuple[str, str, str]:
    ops, mods = set(le.ops), le.modules
    if le.precision == "float":
        return "already float", "", "nothing left to move"
    if le.channel_spread > CHANNEL_SPREAD:
        return (f"outlier channel: one output channel spans {le.channel_spread:.0f}x the median channel, so one int8 scale "
                "leaves the others a few levels", "int16", "int16 activations for this layer and the layers reading it")
    if ops & (WIDE_TFLITE | WIDE_ONNX) or any(m in mods for m in WIDE_MODULES):
        return ("SiLU/HardSwish/GELU-type output: wide, skewed range", "int16", "int16 activations for this layer")
    if ops & POOL_OPS or "AvgPool" in mods:
        return ("average pooling accumulates rounding over a large window", "float", "keep this layer in float")
    if not per_channel and ops & {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "Conv", "Gemm", "MatMul"}:
        return ("per-tensor weights: channels with small weights lose precision", "per_channel", "set per_channel = true in the target")
    if le.precision == "int16":
        return ("still loses precision at int16", "float", "keep this layer in float")
    return ("no known pattern: quantization noise accumulates here", "int16", "int16 activations; float if that is not enough")


def next_move(layer: LayerError, by_name: dict[str, LayerError], fmt: str):
    """The recipe change for a layer as a LayerOverride: int8 -> int16 (with its readers on TFLite, or they
    re-quantize the wide tensor to int8), int16 -> float; None when it is float already."""
    from edgekit.targets import LayerOverride

    if layer.precision == "int8":
        names = list(layer.tensors)
        if fmt == "tflite":
            for c in layer.consumers:
                if c in by_name and by_name[c].precision != "float":
                    names += by_name[c].tensors
        return LayerOverride(tensors_pattern(names), "int16", f"{layer.name}: {layer.cause}")
    if layer.precision == "int16":
        return LayerOverride(tensors_pattern(layer.tensors), "float", f"{layer.name}: still lossy at int16")
    return None


def _float_twin(art, spec, work: Path, data=None):
    """The float model the artifact was quantized from, in its format. A target that corrects biases
    (bias_correction) re-derives the correction from `data`: with the calibration data the twin is the one
    converted (a twin with the original biases would show every corrected layer as adding error)."""
    from edgekit._util import Stages
    from edgekit.build import export_float
    from edgekit.targets import load_target

    tgt = load_target(art.path)
    channels_last = any(i.layout == "NHWC" for i in art.manifest.inputs)
    return export_float(spec, tgt, channels_last, work, Stages(None), data)


def layer_errors(fmt: str, float_path: Path, quant_path: Path, samples: list[dict], work: Path, per_channel: bool = True) -> list[LayerError]:
    """Per-layer SQNR loss of `quant_path` against `float_path` on `samples` (dicts keyed by the float model's input names)."""
    if fmt == "onnx":
        stats, dtypes = _onnx_stats(float_path, quant_path, samples, work)
        ops, ins, produced = _onnx_graph(float_path)
    else:
        from edgekit.build import by_runtime_name
        from edgekit.runtime import open_backend

        float_inputs = open_backend(float_path).inputs
        feed = [by_runtime_name(s, float_inputs) for s in samples]
        stats, dtypes = _tflite_stats(float_path.read_bytes(), quant_path.read_bytes(), feed)
        ops, ins, produced = _tflite_graph(float_path.read_bytes())
    return _layers(ops, ins, produced, stats, dtypes, per_channel)


def diagnose(artifact: str | Path, *, model=None, weights=None, data=None, samples: int = 64, data_spec: str | None = None,
             trust_pickle: bool = False) -> Diagnosis:
    """Rank the artifact's layers by the SQNR they lose against the float model on real inputs."""
    from edgekit.build import calib_samples

    art, spec, ds, q = prepare(artifact, model, weights, data, samples, data_spec, trust_pickle)
    work = Path(work_dir("diagnose"))
    try:
        fm = _float_twin(art, spec, work, ds)
        feed = calib_samples(spec, fm, ds)
        layers = layer_errors(art.manifest.format, fm.path, art.model_path, feed, work, q.get("per_channel", True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = min((la.sqnr_out_db for la in layers), default=SQNR_CAP_DB)
    return Diagnosis(str(artifact), art.target, art.manifest.format, len(ds), out, layers)


def prepare(artifact, model, weights, data, samples: int, data_spec: str | None, trust_pickle: bool):
    """(artifact, float model spec, the first `samples` inputs, the target's quant recipe) for a diagnosis;
    UsageError (one line) for an artifact that is not static int8, a float model not named, no data."""
    from edgekit.artifact import Artifact
    from edgekit.calibration import load_calibration
    from edgekit.sources import load_model

    art = Artifact.load(artifact)
    t = art.manifest.target
    q = t.get("quant") if isinstance(t.get("quant"), dict) else {}
    if q.get("mode") not in ("static",) or q.get("backend") not in ("aeq", "ort"):
        raise UsageError(f"{art.target} is not a static int8 artifact made by ai-edge-quantizer or ONNX Runtime: nothing to diagnose",
                         "diagnose tflite-int8, tflite-int16x8, onnx-int8 or artifacts made from them")
    src, weights = _float_source(art, model, weights)
    spec = load_model(src, weights=weights, trust_pickle=trust_pickle, inputs=_recorded_inputs(art, src))
    source = data if data is not None else _recorded_dataset(art) or spec.default_calibration
    if source is None:
        raise UsageError("no inputs to diagnose on", "pass --data (the calibration data is a good choice)")
    split = "train"
    if isinstance(source, str) and source.endswith((":train", ":test")) and not Path(source).exists():
        source, split = source.rsplit(":", 1)  # a named dataset as the manifest records it, e.g. digits:train
    ds = load_calibration(source, spec.input_names, spec.input_shapes, split=split, spec_name=data_spec, inputs=spec.inputs).take(slice(0, samples))
    return art, spec, ds, q


def _recorded_inputs(art, src):
    """The input options the artifact was converted with, from its manifest (values only: shapes, state
    inputs, integer ranges and, for ONNX files, the bound inputs), so the float twin is the same graph."""
    from edgekit.inputs import InputOptions

    ins = art.manifest.inputs
    is_onnx = isinstance(src, (str, Path)) and str(src).lower().endswith(".onnx")
    bound = (art.manifest.recipe.get("export") or {}).get("bound") if is_onnx else None
    return InputOptions(shapes=None if is_onnx else [tuple(i.source_shape) for i in ins],
                        named_shapes={i.name: tuple(i.source_shape) for i in ins} if is_onnx else {},
                        ranges={i.name: tuple(i.value_range) for i in ins if i.value_range},
                        state=tuple(i.name for i in ins if not i.batched),
                        bind=dict(bound) if isinstance(bound, dict) else {})


def _float_source(art, model, weights) -> tuple:
    """The float model to compare against. A received artifact is data: the model its manifest names is
    never imported (that would run its code) unless the user names it; edgekit's own bundled example is
    the one exception, since its code ships inside edgekit."""
    from edgekit.sources import DEFAULT_MODEL

    recorded = art.manifest.model.get("source")
    if model is not None:
        return model, weights
    if recorded == DEFAULT_MODEL:
        return DEFAULT_MODEL, None
    named = f" (its manifest names {recorded!r})" if isinstance(recorded, str) and recorded else ""
    raise UsageError(f"diagnose needs the float model of {art.path}{named}",
                     "pass --model SOURCE (and --weights); edgekit never imports code an artifact's manifest names")


def _recorded_dataset(art) -> str | None:
    """The calibration data the manifest records, only when it is one of edgekit's named datasets
    (a path in a received manifest could point anywhere on this machine)."""
    from edgekit.datasets import LOADERS

    source = (art.manifest.calibration or {}).get("source")
    if not isinstance(source, str):
        return None
    name = source.rsplit(":", 1)[0] if source.endswith((":train", ":test")) else source
    return source if name in LOADERS and not Path(name).exists() else None
