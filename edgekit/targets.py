"""Targets as data: one TOML file per target under targets/ (shipped) or ./targets/ (the user's own).

A target says what to produce (format, precision, I/O) and how (the quantizer and its settings),
and the validation thresholds that decide ok / warn / fail. Loading checks every field, so a typo
in a user's target file is an error naming the file and the field, not a surprise mid-conversion.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.catalog import build, data_dirs, read_toml, toml_catalogue
from edgekit.errors import TargetError
from edgekit.runtime.manifest import MANIFEST, is_safe_name, read_manifest

FORMATS = ("onnx", "tflite")
MODES = ("none", "fp16", "dynamic", "static", "weight_only")
OVERRIDE_PRECISIONS = ("int16", "float")
# Which calibration methods each quantizer backend really implements.
CALIB_METHODS = {
    "ort": ("minmax", "entropy", "percentile", "distribution", "search"),
    "pt2e": ("minmax", "histogram"),
    "aeq": ("minmax", "moving-average", "percentile", "search"),
    "none": (),
}
BACKENDS_BY_FORMAT = {"onnx": ("none", "ort"), "tflite": ("none", "aeq", "pt2e")}


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer fallback in a static-int8 target: the layers matching `layer` (a regular expression
    over the converter's tensor names, as `edgekit diagnose` prints them) get int16 activations or stay float."""

    layer: str
    precision: str  # int16 | float
    note: str = ""  # why (written by diagnose / the accuracy-budget search)


@dataclass(frozen=True)
class QuantSpec:
    """How the float model becomes the target precision."""

    mode: str = "none"  # none | fp16 | dynamic | static
    backend: str = "none"  # ort | aeq | pt2e | none
    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True
    calib_method: str = "minmax"
    activation_type: str = "uint8"  # ONNX Runtime QDQ activations: uint8 | int8 | uint16 | int16
    reduce_range: str = "auto"  # ONNX Runtime: auto | true | false (auto = 7-bit weights on x86 without VNNI)
    op_types: tuple[str, ...] = ()  # ONNX Runtime: op types to quantize (empty = every supported op)
    block_size: int = 0  # weight_only: weights quantized in blocks of this many input elements (0 = per channel)
    overrides: tuple[LayerOverride, ...] = ()  # static: per-layer int16 / float fallback, applied in order
    equalize: bool = False  # PyTorch sources: cross-layer equalization before export (edgekit.quantize.equalize)
    bias_correction: bool = False  # PyTorch sources: empirical bias correction for the weights' rounding, on calibration data

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "static"


@dataclass(frozen=True)
class Thresholds:
    """Validation verdict per output kind (see edgekit.validate): ok when every figure meets `ok_*`, fail
    when a figure is below `warn_*` (for agreements: when its whole 95% interval is)."""

    ok_sqnr_db: float = 30.0  # regression, state and unknown tensors
    warn_sqnr_db: float = 15.0
    ok_top1_agreement: float = 0.99  # class outputs: top-1 agreement on the samples where the reference is confident
    warn_top1_agreement: float = 0.95
    ok_cosine: float = 0.999  # embeddings: mean cosine
    warn_cosine: float = 0.99
    ok_retrieval_agreement: float = 0.95  # embeddings: nearest-neighbour agreement within the validation set
    warn_retrieval_agreement: float = 0.85
    ok_decision_agreement: float = 0.99  # probabilities: decisions at the output's threshold
    warn_decision_agreement: float = 0.95
    sqnr_for_every_output: bool = False  # float targets: any output below the SQNR lines is a conversion bug, whatever its kind


@dataclass(frozen=True)
class Target:
    name: str
    format: str
    precision: str
    description: str = ""
    quant: QuantSpec = field(default_factory=QuantSpec)
    io_dtype: str = "float32"  # what the artifact's inputs/outputs hold
    validation: Thresholds = field(default_factory=Thresholds)
    source: str = ""  # the file it came from

    @property
    def extension(self) -> str:
        return ".onnx" if self.format == "onnx" else ".tflite"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def search_dirs() -> list[Path]:
    """Later directories override earlier ones: shipped, then $EDGEKIT_TARGETS, then ./targets."""
    return data_dirs("targets", "EDGEKIT_TARGETS")


def _build(cls, data: dict, where: str):
    return build(cls, data, where, TargetError)


def parse_target(data: dict, source: str) -> Target:
    data = dict(data)
    qdata = dict(data.pop("quantize", {}))
    if "op_types" in qdata:
        qdata["op_types"] = tuple(qdata["op_types"])
    if "overrides" in qdata:
        if not isinstance(qdata["overrides"], (list, tuple)):
            raise TargetError(f"{source}: quantize.overrides must be a list of {{layer, precision}} tables",
                              'write [[quantize.overrides]] with layer = "..." and precision = "int16" or "float"')
        qdata["overrides"] = tuple(o if isinstance(o, LayerOverride) else _build(LayerOverride, dict(o), f"{source} [quantize.overrides]")
                                   for o in qdata["overrides"])
    quant = _build(QuantSpec, qdata, f"{source} [quantize]")
    thresholds = _build(Thresholds, data.pop("validation", {}), f"{source} [validation]")
    target = _build(Target, {**data, "quant": quant, "validation": thresholds, "source": source}, source)
    _check(target)
    return target


def _check(t: Target) -> None:
    def bad(what: str, value, allowed):
        raise TargetError(f"{t.source}: {what} = {value!r} is not valid", f"use one of: {', '.join(map(str, allowed))}")

    if not is_safe_name(t.name):
        raise TargetError(f"{t.source}: name = {t.name!r} is not a plain name",
                          "a target name is one path segment of letters, digits and _.+=@,- (it names output folders)")
    if t.format not in FORMATS:
        bad("format", t.format, FORMATS)
    q = t.quant
    if q.mode not in MODES:
        bad("quantize.mode", q.mode, MODES)
    if q.backend not in BACKENDS_BY_FORMAT[t.format]:
        bad("quantize.backend", q.backend, BACKENDS_BY_FORMAT[t.format])
    if (q.mode == "none") != (q.backend == "none"):
        raise TargetError(f"{t.source}: quantize.mode {q.mode!r} and quantize.backend {q.backend!r} disagree",
                          "mode 'none' goes with backend 'none' and every other mode needs a quantizer backend")
    if q.needs_calibration and q.calib_method not in CALIB_METHODS[q.backend]:
        bad("quantize.calib_method", q.calib_method, CALIB_METHODS[q.backend])
    if q.weight_bits not in (4, 8, 16) or q.activation_bits not in (8, 16):
        raise TargetError(f"{t.source}: weight_bits/activation_bits out of range", "weights 4/8/16 bits, activations 8/16 bits")
    if q.reduce_range not in ("auto", "true", "false"):
        bad("quantize.reduce_range", q.reduce_range, ("auto", "true", "false"))
    if q.op_types and q.backend != "ort":
        raise TargetError(f"{t.source}: quantize.op_types is an ONNX Runtime setting", "remove it or use backend = \"ort\"")
    if q.activation_type not in ("uint8", "int8", "uint16", "int16"):
        bad("quantize.activation_type", q.activation_type, ("uint8", "int8", "uint16", "int16"))
    if q.mode == "weight_only" and (q.weight_bits not in (4, 8) or q.block_size not in (0, 16, 32, 64, 128, 256)):
        raise TargetError(f"{t.source}: weight_only needs weight_bits 4 or 8 and block_size 0, 16, 32, 64, 128 or 256",
                          "e.g. weight_bits = 4, block_size = 32")
    if q.overrides and (q.mode != "static" or q.backend not in ("aeq", "ort")):
        raise TargetError(f"{t.source}: quantize.overrides apply to static int8 targets (ai-edge-quantizer or ONNX Runtime)",
                          "remove them, or start from tflite-int8 / onnx-int8")
    if (q.equalize or q.bias_correction) and q.mode not in ("static", "dynamic", "weight_only"):
        raise TargetError(f"{t.source}: quantize.equalize / bias_correction prepare weights for integer quantization; mode {q.mode!r} has none",
                          "remove them, or start from an int8 target")
    if q.bias_correction and not q.needs_calibration:
        raise TargetError(f"{t.source}: quantize.bias_correction measures on calibration data, which mode {q.mode!r} does not take",
                          "remove it, or use a static target")
    v = t.validation
    for key in ("top1_agreement", "cosine", "retrieval_agreement", "decision_agreement"):
        ok, warn = getattr(v, f"ok_{key}"), getattr(v, f"warn_{key}")
        if not 0.0 <= warn <= ok <= 1.0:
            raise TargetError(f"{t.source}: validation ok_{key} = {ok} / warn_{key} = {warn} must satisfy 0 <= warn <= ok <= 1",
                              "they are proportions; the warn line is the fail threshold")
    if v.warn_sqnr_db > v.ok_sqnr_db:
        raise TargetError(f"{t.source}: validation warn_sqnr_db must not exceed ok_sqnr_db", "the warn line is the fail threshold")
    for o in q.overrides:
        if o.precision not in OVERRIDE_PRECISIONS:
            bad("quantize.overrides.precision", o.precision, OVERRIDE_PRECISIONS)
        try:
            re.compile(o.layer)
        except re.error as exc:
            raise TargetError(f"{t.source}: quantize.overrides.layer {o.layer!r} is not a regular expression ({exc})",
                              "escape special characters, or copy the pattern `edgekit diagnose` prints") from None


def _read(path: Path) -> Target:
    return parse_target(read_toml(path, TargetError, "target file"), str(path))


def _catalogue() -> dict[str, Path]:
    return toml_catalogue("targets", "EDGEKIT_TARGETS")


def list_targets() -> list[Target]:
    return [_read(p) for p in _catalogue().values()]


def target_from_dict(d: dict, source: str) -> Target:
    """The inverse of Target.to_dict (as kept in an artifact's manifest)."""
    if not isinstance(d, dict) or not isinstance(d.get("quant", {}), dict) or not isinstance(d.get("validation", {}), dict):
        raise TargetError(f"{source}: the target is not a table of fields", "point --target at an edgekit artifact folder or a target name")
    d = dict(d)
    quant, validation = d.pop("quant", {}), d.pop("validation", {})
    d.pop("source", None)
    try:
        return parse_target({**d, "quantize": quant, "validation": validation}, source)
    except (TypeError, ValueError, AttributeError) as exc:
        raise TargetError(f"{source}: the target is malformed ({type(exc).__name__}: {str(exc)[:120]})",
                          "point --target at an edgekit artifact folder or a target name") from None


def load_target(name_or_path: str | Path | Target) -> Target:
    """A target by catalogue name (`tflite-int8`), by path to a .toml file, or by artifact folder
    (the exact target that artifact was made with, per-layer overrides included)."""
    if isinstance(name_or_path, Target):
        return name_or_path
    s = str(name_or_path)
    if (Path(s) / MANIFEST).exists():
        manifest = read_manifest(s)
        if not manifest.target:
            raise TargetError(f"{s}/{MANIFEST} records no target", "point --target at an edgekit artifact folder")
        return target_from_dict(manifest.target, f"{s}/{MANIFEST}")
    if s.endswith(".toml"):
        p = Path(s)
        if not p.is_file():
            raise TargetError(f"target file not found: {s}", "check the path, or use a name from `edgekit targets`")
        return _read(p)
    cat = _catalogue()
    if s not in cat:
        close = difflib.get_close_matches(s, list(cat), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else "run `edgekit targets` for the catalogue"
        raise TargetError(f"unknown target {s!r}", hint)
    return _read(cat[s])
