"""The artifact manifest, typed: one writer, one reader that validates what it reads.

An artifact folder is something users receive from others, so its manifest.json is untrusted
data. Everything that reads one (the runtime, bench, eval, report, diagnose, targets) goes through
`read_manifest`, which checks it before any field is used:

- `file` is a plain file name inside the folder (one path segment, safe characters, .tflite/.onnx),
  so no reader ever opens, scores or pushes a file outside the artifact under its name;
- names (target, model, tensors' file-facing names) are single segments of safe characters;
- shapes are small non-negative ints (rank <= 8, at most MAX_ELEMENTS elements), dtypes come from
  a known set, quantization parameters are finite numbers in the dtype's range;
- anything else is one ArtifactError line naming the field, never a KeyError deep in a reader.

Stdlib only: this module ships inside the device runner, where numpy may be missing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError

MANIFEST = "manifest.json"
SCHEMA = 1
MODEL_SUFFIXES = {".tflite": "tflite", ".onnx": "onnx"}
DTYPES = frozenset({"float32", "float16", "float64", "bfloat16", "int8", "uint8", "int16", "uint16",
                    "int32", "uint32", "int64", "uint64", "bool"})
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
              "int32": (-(2 ** 31), 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 1),
              "int64": (-(2 ** 63), 2 ** 63 - 1), "uint64": (0, 2 ** 64 - 1)}
LAYOUTS = frozenset({"NCHW", "NHWC"})
MAX_RANK = 8
# 2**28 elements: a 1 GiB float32 tensor. Far above any edge model's input (a 4K RGB frame is 25M);
# a manifest asking for more is broken or hostile, and the runtime would allocate it.
MAX_ELEMENTS = 1 << 28
MAX_TENSORS = 256
MAX_MANIFEST_BYTES = 16 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@,-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def integer_bounds(dtype: str, value_range: tuple[int, int] | None = None) -> tuple[int, int]:
    """[lo, hi) of the values an integer input takes: its dtype's range, narrowed by the declared one."""
    lo, hi = (0, 2) if dtype == "bool" else (INT_RANGES[dtype][0], INT_RANGES[dtype][1] + 1)
    if value_range is not None:
        lo, hi = max(lo, value_range[0]), min(hi, value_range[1])
    return lo, hi


def is_safe_name(name: object) -> bool:
    """One path segment of safe characters: not '', '.', '..', no separators, no leading '-' or '.'."""
    return isinstance(name, str) and bool(_SAFE_NAME.match(name)) and name not in (".", "..")


def safe_name(text: str, default: str = "model") -> str:
    """`text` reduced to a plain name (unsafe characters become '_'), for names made from file names."""
    name = re.sub(r"[^A-Za-z0-9_.+=@,-]", "_", str(text))[:200].lstrip(".-+=@,")
    return name if is_safe_name(name) else default


def check_name(name: object, what: str, where: str = "") -> str:
    if not is_safe_name(name):
        raise ArtifactError(f"{where}{what} {name!r} is not a plain name",
                            "names are one path segment of letters, digits and _.+=@,- (no '/', no '..')")
    return name  # type: ignore[return-value]


class _Reader:
    """Field access with one-line errors naming the field (`inputs[0].shape`)."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, path: str, what: str) -> ArtifactError:
        return ArtifactError(f"{self.where}: {path} {what}", "the manifest is damaged or was not written by edgekit convert; re-run edgekit convert")

    def obj(self, v: Any, path: str) -> dict:
        if not isinstance(v, dict):
            raise self.fail(path, f"must be an object, not {type(v).__name__}")
        return v

    def str_(self, v: Any, path: str, *, optional: bool = False, max_len: int = 4096) -> str | None:
        if v is None and optional:
            return None
        if not isinstance(v, str) or len(v) > max_len:
            raise self.fail(path, f"must be a string of at most {max_len} characters")
        return v

    def int_(self, v: Any, path: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(path, f"must be an integer from {lo} to {hi}")
        return v

    def num(self, v: Any, path: str, *, optional: bool = False) -> float | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(path, "must be a finite number")
        return float(v)

    def shape(self, v: Any, path: str) -> tuple[int, ...]:
        if not isinstance(v, list) or len(v) > MAX_RANK:
            raise self.fail(path, f"must be a list of at most {MAX_RANK} dimensions")
        dims = tuple(self.int_(d, f"{path}[{k}]", 0, MAX_ELEMENTS) for k, d in enumerate(v))
        n = 1
        for d in dims:
            n *= max(d, 1)
        if n > MAX_ELEMENTS:
            raise self.fail(path, f"has {n:,} elements, more than the {MAX_ELEMENTS:,} edgekit accepts")
        return dims  # type: ignore[return-value]


OUTPUT_KINDS = ("class", "embedding", "regression", "probability", "state", "tensor")


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: the model's name for it, the interpreter's, and how to feed it."""

    name: str
    shape: tuple[int, ...]  # as the interpreter takes it (layout applied)
    dtype: str
    runtime_name: str = ""
    layout: str | None = None
    source_layout: str | None = None
    source_shape: tuple[int, ...] = ()  # in the PyTorch model's layout
    quantization: Quantization | None = None
    batched: bool = True  # False: the first axis is not the batch (a recurrent state)
    value_range: tuple[int, int] | None = None  # integer inputs: valid values lo <= v < hi (token ids)
    kind: str | None = None  # outputs: class | embedding | regression | probability | state | tensor (edgekit.validate)

    @property
    def takes_integers(self) -> bool:
        """Ids, masks, indices: integer data fed as is (never through float, never quantized)."""
        return self.quantization is None and (self.dtype in INT_RANGES or self.dtype == "bool")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "runtime_name": self.runtime_name, "shape": list(self.shape), "dtype": self.dtype}
        if self.quantization is not None:
            d["quantization"] = self.quantization.to_dict()
        d.update({"layout": self.layout, "source_layout": self.source_layout, "source_shape": list(self.source_shape),
                  "batched": self.batched})
        if self.value_range is not None:
            d["value_range"] = list(self.value_range)
        if self.kind is not None:
            d["kind"] = self.kind
        return d

    @classmethod
    def read(cls, r: _Reader, v: Any, path: str) -> "TensorSpec":
        d = r.obj(v, path)
        name = r.str_(d.get("name"), f"{path}.name", max_len=512)
        dtype = d.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise r.fail(f"{path}.dtype", f"{dtype!r} is not a known dtype ({', '.join(sorted(DTYPES))})")
        shape = r.shape(d.get("shape"), f"{path}.shape")
        src = d.get("source_shape")
        source_shape = shape if src is None else r.shape(src, f"{path}.source_shape")
        layouts = []
        for key in ("layout", "source_layout"):
            lay = d.get(key)
            if lay is not None and (not isinstance(lay, str) or lay not in LAYOUTS):
                raise r.fail(f"{path}.{key}", f"{lay!r} is not one of {', '.join(sorted(LAYOUTS))} or null")
            layouts.append(lay)
        if (layouts[0] or layouts[1]) and layouts[0] != layouts[1] and (len(shape) != 4 or len(source_shape) != 4):
            raise r.fail(path, "changes layout but is not 4-D")
        q = d.get("quantization")
        quant = None
        if q is not None:
            qd = r.obj(q, f"{path}.quantization")
            if dtype not in INT_RANGES:
                raise r.fail(f"{path}.quantization", f"is set on a {dtype} tensor")
            scale = r.num(qd.get("scale"), f"{path}.quantization.scale")
            if not scale or scale <= 0:
                raise r.fail(f"{path}.quantization.scale", "must be positive")
            lo, hi = INT_RANGES[dtype]
            quant = Quantization(scale, r.int_(qd.get("zero_point"), f"{path}.quantization.zero_point", lo, hi))  # type: ignore[arg-type]
        batched = d.get("batched", True)
        if not isinstance(batched, bool):
            raise r.fail(f"{path}.batched", "must be true or false")
        vr = d.get("value_range")
        value_range = None
        if vr is not None:
            if not isinstance(vr, list) or len(vr) != 2:
                raise r.fail(f"{path}.value_range", "must be [lo, hi]")
            lo = r.int_(vr[0], f"{path}.value_range[0]", -(2 ** 63), 2 ** 63 - 1)
            hi = r.int_(vr[1], f"{path}.value_range[1]", -(2 ** 63), 2 ** 63)
            if hi <= lo:  # type: ignore[operator]
                raise r.fail(f"{path}.value_range", "must have lo < hi")
            value_range = (lo, hi)
        kind = d.get("kind")
        if kind is not None and kind not in OUTPUT_KINDS:
            raise r.fail(f"{path}.kind", f"{kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
        return cls(name, shape, dtype, r.str_(d.get("runtime_name", ""), f"{path}.runtime_name", max_len=512) or "",  # type: ignore[arg-type]
                   layouts[0], layouts[1], source_shape, quant, batched, value_range, kind)  # type: ignore[arg-type]


_WHERE_TEXT = ("device", "arch", "runtime", "runtime_version", "transport", "error")
_DEVICE_STATUS = ("ok", "warn", "fail", "inconclusive", "error")


def _read_where(r: "_Reader", figures: dict) -> None:
    """Where the verdict was measured (`measured_on`: the host) and the devices it was measured on (`devices`,
    edgekit.ondevice): checked field by field, since `edgekit report` prints and compares them."""
    entries = []
    if figures.get("measured_on") is not None:
        entries.append(("validation.measured_on", r.obj(figures["measured_on"], "validation.measured_on")))
    devices = figures.get("devices")
    if devices is not None:
        if not isinstance(devices, list) or len(devices) > MAX_TENSORS:
            raise r.fail("validation.devices", f"must be a list of at most {MAX_TENSORS} entries")
        for k, e in enumerate(devices):
            path = f"validation.devices[{k}]"
            e = r.obj(e, path)
            if e.get("status") not in _DEVICE_STATUS:
                raise r.fail(f"{path}.status", f"{e.get('status')!r} is not one of {', '.join(_DEVICE_STATUS)}")
            if not isinstance(e.get("device"), str):
                raise r.fail(f"{path}.device", "must be a string")
            if e["status"] != "error":
                r.obj(e.get("figures"), f"{path}.figures")
                r.obj(e.get("vs_host"), f"{path}.vs_host")
            entries.append((path, e))
    for path, e in entries:
        for key in _WHERE_TEXT:
            r.str_(e.get(key, ""), f"{path}.{key}", max_len=1024)
        top1 = e.get("top1")
        if top1 is not None and (not isinstance(top1, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in top1)):
            raise r.fail(f"{path}.top1", "must be a list of class indices")


@dataclass(frozen=True)
class Validation:
    """The convert's verdict and the figures behind it (figures are kept as measured)."""

    status: str
    reasons: tuple[str, ...] = ()
    inputs: str = ""
    synthetic_inputs: bool = False
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"status": self.status, "reasons": list(self.reasons), "inputs": self.inputs,
                "synthetic_inputs": self.synthetic_inputs, **self.figures}

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    @classmethod
    def read(cls, r: _Reader, v: Any) -> "Validation":
        d = r.obj(v, "validation")
        status = d.get("status")
        if status not in ("ok", "warn", "fail", "inconclusive"):
            raise r.fail("validation.status", f"{status!r} is not ok, warn, fail or inconclusive")
        reasons = d.get("reasons") or []
        if not isinstance(reasons, list) or not all(isinstance(x, str) for x in reasons):
            raise r.fail("validation.reasons", "must be a list of strings")
        figures = {k: x for k, x in d.items() if k not in ("status", "reasons", "inputs", "synthetic_inputs")}
        _read_where(r, figures)
        return cls(status, tuple(reasons), r.str_(d.get("inputs", ""), "validation.inputs") or "",
                   bool(d.get("synthetic_inputs", False)), figures)


@dataclass
class Manifest:
    """What `edgekit convert` knows about an artifact. `extra` keeps fields this version does not type."""

    file: str
    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = ""
    target: dict = field(default_factory=dict)  # Target.to_dict(); edgekit.targets types it when used as a target
    model: dict = field(default_factory=dict)  # source, weights, name, num_params, param_bytes_fp32 (informational)
    recipe: dict = field(default_factory=dict)
    calibration: dict | None = None
    validation: Validation | None = None
    size_bytes: int = 0
    sha256: str = ""
    schema: int = SCHEMA
    edgekit_version: str = ""
    created: str = ""
    tool_versions: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    preprocess: dict | None = None  # an image input's preprocessing (edgekit.runtime.preprocess.ImagePreprocess.to_dict() + "input")
    labels: list[str] | None = None  # the class output's labels, in index order
    extra: dict = field(default_factory=dict)  # stages, accuracy_budget, convert_seconds, ratios, ...

    # ------------------------------------------------------------------ convenience

    @property
    def target_name(self) -> str:
        return self.target.get("name") or Path(self.file).suffix.lstrip(".")

    @property
    def model_name(self) -> str:
        return self.model.get("name") or ""

    @property
    def param_bytes_fp32(self) -> int | None:
        v = self.model.get("param_bytes_fp32")
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    @property
    def status(self) -> str | None:
        return self.validation.status if self.validation else None

    def output_details(self) -> dict[str, dict]:
        """What convert recorded about each output beyond its kind, by output name (the validation figures'
        `outputs`: probs for a class output, threshold, the input a state output feeds). Entries are as read: a
        caller checks the types of the fields it uses."""
        rows = (self.validation.figures.get("outputs") if self.validation else None) or []
        return {x["name"]: x for x in rows if isinstance(x, dict) and isinstance(x.get("name"), str)}

    def state_feeds(self) -> dict[str, str]:
        """Each state output's name -> the input it is fed back into (declared at convert with --state OUT=IN)."""
        details, inputs = self.output_details(), {t.name for t in self.inputs}
        return {o.name: details[o.name]["feeds"] for o in self.outputs
                if o.kind == "state" and details.get(o.name, {}).get("kind") == "state" and details[o.name].get("feeds") in inputs}

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"schema": self.schema, "edgekit_version": self.edgekit_version, "created": self.created,
                             "file": self.file, "format": self.format, "precision": self.precision, "target": self.target,
                             "model": self.model, "inputs": [t.to_dict() for t in self.inputs],
                             "outputs": [t.to_dict() for t in self.outputs], "recipe": self.recipe,
                             "calibration": self.calibration, "size_bytes": self.size_bytes, "sha256": self.sha256,
                             "tool_versions": self.tool_versions}
        if self.preprocess is not None:
            d["preprocess"] = self.preprocess
        if self.labels is not None:
            d["labels"] = list(self.labels)
        d.update(self.extra)
        if self.validation is not None:
            d["validation"] = self.validation.to_dict()
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> "Manifest":
        """Validate and type a manifest's JSON; one ArtifactError line on anything unexpected."""
        r = _Reader(where)
        d = r.obj(data, "the manifest")
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise ArtifactError(f"{where}: schema {schema!r} is not one this edgekit reads ({SCHEMA})",
                                "re-convert with this edgekit, or use the edgekit version that wrote it")
        file = d.get("file")
        if not is_safe_name(file):
            raise r.fail("file", f"{file!r} is not a plain file name inside the artifact folder")
        fmt = MODEL_SUFFIXES.get(Path(file).suffix)
        if fmt is None:
            raise r.fail("file", f"{file!r} is not a .tflite or .onnx file")
        if d.get("format", fmt) != fmt:
            raise r.fail("format", f"{d.get('format')!r} does not match the file {file!r}")
        tensors = {}
        for key in ("inputs", "outputs"):
            v = d.get(key)
            if not isinstance(v, list) or not 1 <= len(v) <= MAX_TENSORS:
                raise r.fail(key, f"must be a list of 1 to {MAX_TENSORS} tensors")
            tensors[key] = [TensorSpec.read(r, t, f"{key}[{k}]") for k, t in enumerate(v)]
        target = r.obj(d.get("target", {}), "target")
        if "name" in target:
            check_name(target["name"], "target name", f"{where}: ")
        model = r.obj(d.get("model", {}), "model")
        if model.get("name") is not None:
            check_name(model["name"], "model name", f"{where}: ")
        calibration = d.get("calibration")
        if calibration is not None:
            r.obj(calibration, "calibration")
        validation = Validation.read(r, d["validation"]) if d.get("validation") is not None else None
        sha = d.get("sha256", "")
        if sha and not (isinstance(sha, str) and _SHA256.match(sha)):
            raise r.fail("sha256", "must be 64 lowercase hex digits")
        warnings = d.get("warnings") or []
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            raise r.fail("warnings", "must be a list of strings")
        preprocess = d.get("preprocess")
        if preprocess is not None:
            from edgekit.runtime.preprocess import ImagePreprocess

            pre = ImagePreprocess.from_dict(preprocess, where)
            names = [t.name for t in tensors["inputs"]]
            feeds = preprocess.get("input", names[0])
            if feeds not in names:
                raise r.fail("preprocess.input", f"{feeds!r} is not one of the inputs ({', '.join(names)})")
            preprocess = {**pre.to_dict(), "input": feeds}
        labels = d.get("labels")
        if labels is not None and (not isinstance(labels, list) or len(labels) > 1_000_000
                                   or not all(isinstance(x, str) and len(x) <= 512 for x in labels)):
            raise r.fail("labels", "must be a list of strings (at most 512 characters each)")
        known = {f.name for f in fields(cls)} - {"extra", "inputs", "outputs"}
        return cls(file=file, format=fmt, inputs=tensors["inputs"], outputs=tensors["outputs"],
                   precision=r.str_(d.get("precision", ""), "precision", max_len=64) or "", target=target, model=model,
                   recipe=r.obj(d.get("recipe") or {}, "recipe"), calibration=calibration, validation=validation,
                   size_bytes=r.int_(d.get("size_bytes", 0), "size_bytes", 0, 1 << 50) or 0, sha256=sha or "", schema=SCHEMA,
                   edgekit_version=r.str_(d.get("edgekit_version", ""), "edgekit_version", max_len=64) or "",
                   created=r.str_(d.get("created", ""), "created", max_len=64) or "",
                   tool_versions=r.obj(d.get("tool_versions") or {}, "tool_versions"), warnings=list(warnings),
                   preprocess=preprocess, labels=labels,
                   extra={k: v for k, v in d.items() if k not in known | {"inputs", "outputs"}})


def read_manifest(folder: str | Path) -> Manifest:
    """The folder's manifest, validated; ArtifactError (one line) for a missing, unreadable or malformed one."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder not found: {folder}", "give the folder written by `edgekit convert`")
    if path.is_symlink():
        raise ArtifactError(f"{path} is a link; an artifact's manifest must be inside its folder", "re-run edgekit convert")
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST}", "give the folder written by `edgekit convert`")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB", "this is not an edgekit manifest")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:160]}", "re-run edgekit convert") from None
    return Manifest.from_dict(data, str(path))


def model_file(folder: str | Path, manifest: Manifest) -> Path:
    """The artifact's model file, which must be a regular file directly inside the folder (no link out)."""
    folder = Path(folder)
    path = folder / manifest.file
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{folder} is missing its model file {manifest.file}" if not path.is_symlink()
                            else f"{folder}/{manifest.file} is a link; an artifact's model file must be inside its folder",
                            "re-run edgekit convert")
    return path


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest.to_dict(), indent=2, default=str) + "\n")
    return path


__all__ = ["Manifest", "TensorSpec", "Quantization", "Validation", "read_manifest", "write_manifest", "model_file", "integer_bounds",
           "is_safe_name", "safe_name", "check_name", "MANIFEST", "MAX_ELEMENTS"]
