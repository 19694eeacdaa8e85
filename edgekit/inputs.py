"""What a model's inputs are: name, shape, dtype, whether the first axis is the batch, and for
integer inputs (token ids, masks, class indices) the range of valid values.

Field models are not all float images: a BERT encoder takes int64 `input_ids` and `attention_mask`,
a streaming recurrent net takes a state shaped (layers, batch, hidden) whose first axis is not the
batch, a VAD's TorchScript `forward(x, sr)` takes a plain int. These specs say so, once, and every
stage (example inputs, calibration and validation data, the artifact's I/O, the runtime) follows.

Declared by the model (a factory attribute `input_spec = [{"name": "input_ids", "dtype": "int64",
"range": [0, 30522]}, ...]`, or the dtypes of its `example_inputs`) or on the command line
(`--input-dtype`, `--input-range`, `--state-input`, `--bind`). Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from edgekit.errors import UsageError

FLOAT_DTYPES = ("float32", "float16", "float64", "bfloat16")
INT_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "bool")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]  # one model call's tensor, batch axis included when batched
    dtype: str = "float32"  # numpy name
    batched: bool = True  # False: the first axis is not the batch (recurrent state (layers, 1, hidden))
    value_range: tuple[int, int] | None = None  # integer inputs: valid values lo <= v < hi

    @property
    def is_integer(self) -> bool:
        return self.dtype in INT_DTYPES

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape in a dataset whose first axis counts samples."""
        return self.shape[1:] if self.batched else self.shape

    def describe(self) -> str:
        extra = "" if self.batched else ", no batch axis"
        rng = f", values {self.value_range[0]}..{self.value_range[1] - 1}" if self.value_range else ""
        return f"{self.name} {self.dtype}{list(self.shape)}{extra}{rng}"


class HasInputs:
    """What every loaded model (a PyTorch ModelSpec, an ONNX file's OnnxSpec) says about its inputs."""

    inputs: list[InputSpec]

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(s.shape) for s in self.inputs]

    @property
    def batch(self) -> int:
        """The batch the model was exported with (1 when no input has a batch axis)."""
        return next((int(s.shape[0]) for s in self.inputs if s.batched and s.shape), 1)


@dataclass
class InputOptions:
    """What the user declares about the inputs on top of what the model says (all optional)."""

    shapes: list[tuple[int, ...]] | None = None  # --input-shape DIMS, in input order
    named_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --input-shape NAME=DIMS
    dtypes: dict[str, str] = field(default_factory=dict)  # name (or "#i" for the i-th input) -> dtype
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # --input-range NAME=LO:HI
    state: tuple[str, ...] = ()  # --state-input NAME: no batch axis
    bind: dict[str, Any] = field(default_factory=dict)  # --bind NAME=VALUE: non-tensor forward arguments

    @classmethod
    def from_cli(cls, shapes: Sequence[tuple[int, ...]] | None = None, dtypes: Sequence[str] = (), ranges: Sequence[str] = (),
                 state: Sequence[str] = (), bind: Sequence[str] = (), named_shapes: dict | None = None) -> "InputOptions":
        d: dict[str, str] = {}
        for k, text in enumerate(dtypes):
            name, _, dt = text.rpartition("=")
            dt = dt.strip()
            if dt not in FLOAT_DTYPES + INT_DTYPES:
                raise UsageError(f"bad --input-dtype {text!r}: {dt!r} is not a dtype",
                                 f"write [NAME=]DTYPE with DTYPE one of {', '.join(FLOAT_DTYPES[:2] + INT_DTYPES)}")
            d[name.strip() or f"#{k}"] = dt
        r = {}
        for text in ranges:
            name, sep, span = text.partition("=")
            lo, colon, hi = span.partition(":")
            try:
                lo_i, hi_i = int(lo), int(hi)
            except ValueError:
                lo_i = hi_i = 0
            if not sep or not colon or not name.strip() or hi_i <= lo_i:
                raise UsageError(f"bad --input-range {text!r}", "write NAME=LO:HI with LO < HI, e.g. input_ids=0:30522 (HI is excluded)")
            r[name.strip()] = (lo_i, hi_i)
        b = {}
        for text in bind:
            name, sep, value = text.partition("=")
            if not sep or not name.strip().isidentifier():
                raise UsageError(f"bad --bind {text!r}", "write NAME=VALUE, e.g. --bind sr=16000")
            b[name.strip()] = parse_value(value)
        return cls([tuple(s) for s in shapes] if shapes else None, dict(named_shapes or {}), d, r, tuple(state), b)


def parse_shape(text: str) -> tuple[int, ...]:
    """`1,3,224,224` (or `1x3x224x224`) -> (1, 3, 224, 224); every dimension a positive integer."""
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise UsageError(f"bad --input-shape {text!r}", "write it as comma-separated integers, e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"bad --input-shape {text!r}", "every dimension must be a positive integer, e.g. 1,3,224,224")
    return dims


def parse_shapes(texts: Sequence[str]) -> tuple[list[tuple[int, ...]] | None, dict[str, tuple[int, ...]]]:
    """Repeated `--input-shape [NAME=]DIMS`: (shapes in input order, or None; shapes by input name).

    An ONNX or TFLite file names its inputs, so `x=1,3,480,640` says which one; a PyTorch factory's
    inputs may have no names, so plain DIMS in input order stay accepted. Mixing both is refused."""
    positional: list[tuple[int, ...]] = []
    named: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, sep, dims = text.rpartition("=")
        if sep and not name.strip():
            raise UsageError(f"bad --input-shape {text!r}", "write [NAME=]DIMS, e.g. x=1,3,480,640 or 1,3,480,640")
        if sep:
            if name.strip() in named:
                raise UsageError(f"--input-shape names {name.strip()!r} twice", "give each input's shape once")
            named[name.strip()] = parse_shape(dims)
        else:
            positional.append(parse_shape(dims))
    if positional and named:
        raise UsageError("--input-shape mixes named (NAME=DIMS) and unnamed shapes", "name every input's shape, or none")
    return positional or None, named


def parse_value(text: str) -> Any:
    """A --bind value: int, float, true/false/none, else the string itself."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def apply_declared(specs: list[InputSpec], declared: Any, where: str) -> list[InputSpec]:
    """Merge a model's `input_spec` attribute (a list of dicts, in input order) into the specs."""
    if declared is None:
        return specs
    if not isinstance(declared, (list, tuple)) or len(declared) != len(specs) or not all(isinstance(d, dict) for d in declared):
        raise UsageError(f"{where}.input_spec must be a list of {len(specs)} dicts (one per input)",
                         'e.g. input_spec = [{"name": "input_ids", "dtype": "int64", "range": [0, 30522]}, ...]')
    out = []
    for s, d in zip(specs, declared):
        unknown = set(d) - {"name", "dtype", "range", "batched", "state"}
        if unknown:
            raise UsageError(f"{where}.input_spec has unknown key(s) {', '.join(sorted(unknown))}", "known: name, dtype, range, batched, state")
        rng = d.get("range")
        if rng is not None and (not isinstance(rng, (list, tuple)) or len(rng) != 2 or int(rng[1]) <= int(rng[0])):
            raise UsageError(f"{where}.input_spec range {rng!r} of {d.get('name', s.name)!r} is not [lo, hi) with lo < hi", "e.g. [0, 30522]")
        out.append(replace(s, name=str(d.get("name", s.name)), value_range=(int(rng[0]), int(rng[1])) if rng is not None else s.value_range,
                           batched=bool(d.get("batched", not d.get("state", not s.batched)))))
    return out


def apply_options(specs: list[InputSpec], opts: InputOptions) -> list[InputSpec]:
    """Names in --input-range / --state-input must be inputs of the model (typos are errors, not no-ops)."""
    names = [s.name for s in specs]
    for given in (*opts.ranges, *opts.state, *(k for k in opts.dtypes if not k.startswith("#"))):
        if given not in names:
            raise UsageError(f"the model has no input named {given!r}", f"its inputs: {', '.join(names)}")
    out = []
    for s in specs:
        rng = opts.ranges.get(s.name, s.value_range)
        out.append(replace(s, value_range=rng, batched=s.batched and s.name not in opts.state))
    for s in out:
        if s.value_range is not None and not s.is_integer:
            raise UsageError(f"--input-range {s.name}: the input is {s.dtype}, ranges are for integer inputs",
                             f"declare its dtype too (--input-dtype {s.name}=int64) if the model takes ids")
    return out


__all__ = ["InputSpec", "InputOptions", "HasInputs", "parse_shape", "parse_shapes", "apply_declared", "apply_options", "parse_value", "FLOAT_DTYPES", "INT_DTYPES"]
