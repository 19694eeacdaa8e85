"""What a converter put into an artifact file: a per-op census, and the size findings it backs.

`read(path)` parses a .tflite (LiteRT's own flatbuffer schema, `ai_edge_litert.schema_py_generated`) or a .onnx
(`onnx.load` + shape inference) and lists every operator with the dtype it computes in, and every stored
constant with its bytes, dtype and the ops that read it. `summary()` turns it into the JSON that goes into the
manifest; `explain()` into one-line warnings a user can act on, `flags()` into a few words for a table cell;
`report(path, ...)` gives (summary, warnings) and never raises, for the pipeline.

What counts as what:

- An op's *compute* class comes from its activation tensors (inputs/outputs that are not stored constants):
  float32/float16 if any is float, else int16, else int8 (uint8 too), else the integer/bool type it has.
  TFLite kernels dispatch on exactly these types, so a FULLY_CONNECTED with a float32 input and int8 weights
  (dynamic range) computes in float32. QUANTIZE/DEQUANTIZE/CAST (ONNX: QuantizeLinear, DequantizeLinear,
  DynamicQuantizeLinear, Cast) are `convert`: they change the representation, they do not compute.
- ONNX QDQ: an op is integer when every float input comes from a DequantizeLinear and every float output goes
  only to QuantizeLinear (ONNX Runtime's DQ -> op -> Q node unit); its class is the DequantizeLinear's source
  type (int32 bias sources aside). Any other op with float tensors computes in float. This judges the file: a
  runtime without an integer kernel for a wrapped op (LayerNormalization on ONNX Runtime's CPU provider) still
  runs it in float between the DQ and the Q.
- Duplicated constants: distinct stored buffers (TFLite buffers, ONNX initializers / Constant values) of at
  least MIN_DUP_BYTES with identical bytes, or whose values are exactly the negation of each other: litert-torch
  lowers Linear -> PReLU as relu(Wx+b) - a*relu(-(Wx+b)), i.e. two FULLY_CONNECTED ops, the second holding -W
  and -b, so the weight is stored twice. A buffer shared by several tensors is stored once and is not counted.
  Smaller buffers (shape vectors, scalars, zero points) repeat by nature and are ignored.

Thresholds in `explain` (all in this file, each with its reason):

- size: warn when file bytes > SIZE_TOLERANCE x EXPECTED_RATIO[precision] x fp32 parameter bytes +
  GRAPH_ALLOWANCE. EXPECTED_RATIO is what the stored weights should weigh against fp32: fp32 1.0, fp16 0.5,
  int8 / int16x8 / dynamic-int8 0.25 (int8 weights), int4 0.14 (4-bit weights 0.125 + one fp16 scale per block
  of 32: 2 / (32 x 4) = 0.016). SIZE_TOLERANCE 1.15 leaves room for what parameter bytes do not see and is not
  waste: int32 biases (4 bytes per output channel in an int8 model), per-channel scales and zero points, and
  the ~2-10 % of graph structure (op tables, tensor names, quantization parameters) of an ordinary model (the
  bundled digits CNN: 1.08 x of its int8 expectation, 1.01 x of fp32). GRAPH_ALLOWANCE (16 KiB) is the fixed
  part of that structure, which dominates a tiny model (the digits CNN's 8-op int8 graph takes ~11 KiB).
  The message names the causes, largest first: duplicated constants, float32 weights in a quantized target
  (ops left float), and graph structure above GRAPH_ALLOWANCE (an unrolled LSTM: one op group per time step).
- duplicated constants: also a warning of its own, when the size warning did not fire, once they are
  >= DUP_WARN_FRACTION (5 %) of the file: below that the saving is inside the size tolerance.
- not full-integer: any op computing in float in a target whose precision is FULL_INTEGER (int8, int16x8).
  There is no tolerance: one float op means the model cannot run on an integer-only accelerator (Edge TPU,
  NPU, Ethos-U), and a float island forces a dequantize/quantize pair on a CPU.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

EXPECTED_RATIO = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25, "int16x8": 0.25, "dynamic-int8": 0.25, "int4": 0.14}
SIZE_TOLERANCE = 1.15
GRAPH_ALLOWANCE = 16 * 1024
FULL_INTEGER = {"int8", "int16x8"}
MIN_DUP_BYTES = 256
DUP_WARN_FRACTION = 0.05
FLOAT = {"float32", "float16", "bfloat16", "float64"}
MAX_LISTED = 100  # float ops / duplicates kept in the summary (the counts are always complete)

_TFL_CONVERT = {"QUANTIZE", "DEQUANTIZE", "CAST"}
_ONNX_CONVERT = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"}
_NEGATABLE = {"float32", "float16", "float64", "int8", "int16", "int32", "int64"}


@dataclass
class Op:
    index: int  # position in its (sub)graph
    type: str  # FULLY_CONNECTED, Conv, ...
    compute: str  # float32 | float16 | int16 | int8 | int32 | ... | convert | none
    name: str  # TFLite: the first output tensor's name; ONNX: the node name
    inputs: list[str]  # dtypes of the activation (non-constant) inputs
    outputs: list[str]
    weights: list[str]  # dtypes of the constant inputs
    subgraph: int = 0

    @property
    def label(self) -> str:
        return f"{self.type}#{self.index}" if not self.subgraph else f"{self.type}#{self.subgraph}.{self.index}"


@dataclass
class Constant:
    key: str  # "buffer N" (TFLite) or the initializer's name (ONNX)
    dtype: str
    shape: tuple
    nbytes: int
    names: list[str]  # tensors stored in it
    users: list[str]  # labels of the ops reading it (through a DequantizeLinear for ONNX QDQ weights)
    digest: str = ""
    neg_digest: str = ""


@dataclass
class Duplicate:
    """One content stored several times: `copies` constants, `nbytes` stored beyond the first."""

    nbytes: int
    each: int
    kind: str  # identical | negated | identical+negated
    copies: list[str]
    names: list[str]
    users: list[str]


@dataclass
class Census:
    format: str  # tflite | onnx
    path: str
    file_bytes: int
    ops: list[Op]
    constants: list[Constant]
    duplicates: list[Duplicate] = field(default_factory=list)
    tensors: int = 0

    @property
    def constant_bytes(self) -> int:
        return sum(c.nbytes for c in self.constants)

    @property
    def graph_bytes(self) -> int:
        """What is not constant data: op and tensor tables, names, quantization parameters, metadata."""
        return max(0, self.file_bytes - self.constant_bytes)

    @property
    def duplicated_bytes(self) -> int:
        return sum(d.nbytes for d in self.duplicates)

    def op_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for op in self.ops:
            out.setdefault(op.type, {}).setdefault(op.compute, 0)
            out[op.type][op.compute] += 1
        return out

    def bytes_by_dtype(self) -> dict[str, int]:
        c: Counter = Counter()
        for k in self.constants:
            c[k.dtype] += k.nbytes
        return dict(c.most_common())

    def float_ops(self) -> list[Op]:
        return [op for op in self.ops if op.compute in FLOAT]

    def float_weights(self) -> list[Constant]:
        """float32 constants that an op computes with (not the scales a QuantizeLinear/DequantizeLinear reads)."""
        convert = {op.label for op in self.ops if op.compute == "convert"}
        return [k for k in self.constants if k.dtype == "float32" and set(k.users) - convert]

    def full_integer(self) -> bool:
        return not self.float_ops()


def read(path: str | Path) -> Census:
    """The census of a .tflite or .onnx file (told apart by content, not only by suffix)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3" or path.suffix == ".tflite":
        c = _read_tflite(path)
    elif path.suffix == ".onnx":
        c = _read_onnx(path)
    else:
        raise ValueError(f"{path}: neither a .tflite nor an .onnx file")
    c.duplicates = _duplicates(c.constants)
    return c


# --- TFLite ------------------------------------------------------------------------------------------------

def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


_NP = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int8": np.int8, "int16": np.int16,
       "int32": np.int32, "int64": np.int64, "uint8": np.uint8}


def _read_tflite(path: Path) -> Census:
    from ai_edge_litert import schema_py_generated as fb

    data = path.read_bytes()
    model = fb.Model.GetRootAs(data, 0)
    op_names, type_names = _enum_names(fb.BuiltinOperator), _enum_names(fb.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # the schema's rule for the two fields
        name = op_names.get(code, f"OP_{code}")
        if name == "CUSTOM" and oc.CustomCode():
            name = f"CUSTOM:{oc.CustomCode().decode(errors='replace')}"
        codes.append(name)

    def buffer_bytes(idx: int):
        """The buffer's bytes as a uint8 view of the file, or None for an empty buffer (activations)."""
        if idx <= 0 or idx >= model.BuffersLength():
            return None
        b = model.Buffers(idx)
        if b.Offset() > 1:  # stored after the flatbuffer (models > 2 GiB, and ai-edge-quantizer's fp16 output)
            return np.frombuffer(data, np.uint8, count=b.Size(), offset=b.Offset())
        return b.DataAsNumpy() if b.DataLength() else None

    ops: list[Op] = []
    consts: dict[int, Constant] = {}
    n_tensors = 0
    for si in range(model.SubgraphsLength()):
        g = model.Subgraphs(si)
        n_tensors += g.TensorsLength()
        tdtype, tconst, tname = {}, {}, {}
        for ti in range(g.TensorsLength()):
            t = g.Tensors(ti)
            tdtype[ti] = type_names.get(t.Type(), f"type{t.Type()}").lower()
            tname[ti] = (t.Name() or b"").decode(errors="replace")
            raw = buffer_bytes(t.Buffer())
            if raw is not None:
                tconst[ti] = t.Buffer()
                k = consts.get(t.Buffer())
                if k is None:
                    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
                    k = consts[t.Buffer()] = Constant(f"buffer {t.Buffer()}", tdtype[ti], shape, len(raw), [], [])
                    k.digest, k.neg_digest = _digests(raw, tdtype[ti])
                if tname[ti] not in k.names:
                    k.names.append(tname[ti])
        for oi in range(g.OperatorsLength()):
            o = g.Operators(oi)
            ins = [o.Inputs(j) for j in range(o.InputsLength()) if o.Inputs(j) >= 0]
            outs = [o.Outputs(j) for j in range(o.OutputsLength()) if o.Outputs(j) >= 0]
            kind = codes[o.OpcodeIndex()]
            act_in = [tdtype[t] for t in ins if t not in tconst]
            act_out = [tdtype[t] for t in outs if t not in tconst]
            op = Op(oi, kind, _compute_class(kind in _TFL_CONVERT, act_in + act_out),
                    tname[outs[0]] if outs else kind, act_in, act_out, [tdtype[t] for t in ins if t in tconst], si)
            ops.append(op)
            for t in ins:
                if t in tconst and op.label not in consts[tconst[t]].users:
                    consts[tconst[t]].users.append(op.label)
    return Census("tflite", str(path), len(data), ops, list(consts.values()), tensors=n_tensors)


def _compute_class(convert: bool, dtypes: list[str]) -> str:
    if convert:
        return "convert"
    s = set(dtypes)
    for cls in ("float32", "float64", "float16", "bfloat16", "int16", "uint16"):
        if cls in s:
            return "int16" if cls == "uint16" else cls
    if s & {"int8", "uint8"}:
        return "int8"
    if s & {"int4", "uint4"}:
        return "int4"
    return sorted(s)[0] if s else "none"


def _digests(raw, dtype: str) -> tuple[str, str]:
    """sha1 of the bytes, and of the negated values when the dtype can be negated (else '')."""
    raw = np.ascontiguousarray(np.frombuffer(raw, np.uint8) if not isinstance(raw, np.ndarray) else raw.view(np.uint8))
    d = hashlib.sha1(raw).hexdigest()
    neg = ""
    if raw.size >= MIN_DUP_BYTES and dtype in _NEGATABLE and raw.size % np.dtype(_NP[dtype]).itemsize == 0:
        a = raw.view(_NP[dtype])
        if a.any():
            with np.errstate(over="ignore"):
                neg = hashlib.sha1(np.negative(a)).hexdigest()
    return d, neg


def _duplicates(consts: list[Constant]) -> list[Duplicate]:
    """Constants whose bytes another constant of the same dtype already stores (or stores negated)."""
    groups: dict[tuple, list[Constant]] = {}
    for k in consts:
        if k.nbytes < MIN_DUP_BYTES:
            continue
        # keyed by the smaller of the two digests, so that W and -W meet
        canon = min(k.digest, k.neg_digest) if k.neg_digest else k.digest
        groups.setdefault((k.dtype, k.nbytes, canon), []).append(k)
    out = []
    for (_, size, _), members in groups.items():
        if len(members) < 2:
            continue
        kinds = {"identical" if k.digest == members[0].digest else "negated" for k in members[1:]}
        out.append(Duplicate(size * (len(members) - 1), size, "+".join(sorted(kinds)), [k.key for k in members],
                             [n for k in members for n in k.names], [u for k in members for u in k.users]))
    return sorted(out, key=lambda d: -d.nbytes)


# --- ONNX --------------------------------------------------------------------------------------------------

def _onnx_dtype(elem_type: int) -> str:
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "?"
    return {"float": "float32", "double": "float64"}.get(name, name)


def _graphs(graph):
    """The graph and every graph nested in its nodes' attributes (If/Loop/Scan bodies)."""
    import onnx

    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _graphs(sub)


def node_links(nodes) -> tuple[dict, dict]:
    """An ONNX graph's (producer, consumers): the node writing each tensor, and the nodes reading it."""
    producer: dict = {}
    consumers: dict[str, list] = {}
    for n in nodes:
        for o in n.output:
            if o:
                producer[o] = n
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n)
    return producer, consumers


def _read_onnx(path: Path) -> Census:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    file_bytes = path.stat().st_size + _external_bytes(model, path)
    if file_bytes > path.stat().st_size:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot take (custom ops, > 2 GiB): types from what is declared
        pass
    graphs = list(_graphs(model.graph))
    types: dict[str, str] = {}
    tensors: dict[str, object] = {}
    for g in graphs:
        for v in [*g.input, *g.output, *g.value_info]:
            if v.type.HasField("tensor_type"):
                types[v.name] = _onnx_dtype(v.type.tensor_type.elem_type)
        for init in g.initializer:
            tensors[init.name] = init
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        tensors[n.output[0]] = a.t
    consts: dict[str, Constant] = {}
    for name, t in tensors.items():
        dtype = _onnx_dtype(t.data_type)
        types[name] = dtype
        if t.raw_data:
            raw = t.raw_data
        else:
            try:
                raw = numpy_helper.to_array(t).tobytes()
            except Exception:
                raw = t.SerializeToString()
        k = consts[name] = Constant(name, dtype, tuple(int(d) for d in t.dims), len(raw), [name], [])
        k.digest, k.neg_digest = _digests(raw, dtype)

    nodes = [(gi, n) for gi, g in enumerate(graphs) for n in g.node]
    producer, consumers = node_links(n for _, n in nodes)
    graph_outputs = {o.name for g in graphs for o in g.output}

    def dq_source(name: str) -> str | None:
        """The quantized dtype behind `name` when a DequantizeLinear produces it."""
        p = producer.get(name)
        if p is None or p.op_type != "DequantizeLinear":
            return None
        return types.get(p.input[0], "?")

    # custom-domain ops (MatMulNBits, ...) have no inferred output type: take their first float input's
    for _, n in nodes:
        for o in n.output:
            if o and types.get(o, "?") == "?":
                guess = next((types[i] for i in n.input if types.get(i) in FLOAT), None)
                if guess:
                    types[o] = guess

    ops: list[Op] = []
    index = Counter()
    for gi, n in nodes:
        if n.op_type == "Constant":
            continue
        ins = [i for i in n.input if i]
        outs = [o for o in n.output if o]
        act_in = [i for i in ins if i not in consts]
        label_index = index[gi]
        index[gi] += 1
        compute = _onnx_compute(n, ins, outs, types, dq_source, consumers, graph_outputs, consts)
        op = Op(label_index, n.op_type, compute, n.name or (outs[0] if outs else n.op_type),
                [types.get(i, "?") for i in act_in], [types.get(o, "?") for o in outs],
                [types.get(i, "?") for i in ins if i in consts], gi)
        ops.append(op)
        for i in ins:
            if i in consts and op.label not in consts[i].users:
                consts[i].users.append(op.label)
    # a QDQ weight is read by a DequantizeLinear; name the op behind it as a user too
    by_name = {o.name: o for o in ops}
    for _, n in nodes:
        if n.op_type == "DequantizeLinear" and n.input and n.input[0] in consts:
            for c in consumers.get(n.output[0], []):
                u = by_name.get(c.name or c.output[0])
                if u is not None and u.label not in consts[n.input[0]].users:
                    consts[n.input[0]].users.append(u.label)
    return Census("onnx", str(path), file_bytes, ops, list(consts.values()), tensors=len(types))


def _onnx_compute(n, ins, outs, types, dq_source, consumers, graph_outputs, consts) -> str:
    if n.op_type in _ONNX_CONVERT:
        return "convert"
    float_in = [i for i in ins if types.get(i) in FLOAT]
    float_out = [o for o in outs if types.get(o) in FLOAT]
    if not float_in and not float_out:
        return _compute_class(False, [types.get(t, "?") for t in ins + outs if types.get(t, "?") != "?"])
    sources = [dq_source(i) for i in float_in]
    quant_out = all(o not in graph_outputs and consumers.get(o) and all(c.op_type == "QuantizeLinear" for c in consumers[o])
                    for o in float_out)
    if float_in and all(s is not None for s in sources) and quant_out:
        real = [s for s in sources if s not in ("int32", "uint32")] or sources
        return _compute_class(False, real)
    act = [types[t] for t in float_in + float_out if t not in consts] or [types[t] for t in float_in + float_out]
    return _compute_class(False, act)


def _external_bytes(model, path: Path) -> int:
    """Bytes of external-data files beside an .onnx (the artifact is the .onnx and those)."""
    import onnx

    files = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in init.external_data if e.key == "location")
    return sum((path.parent / f).stat().st_size for f in files if (path.parent / f).exists())


# --- summary and warnings ----------------------------------------------------------------------------------

def _human(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1048576:,.1f} MiB"


def _counted(types: list[str], limit: int = 6) -> str:
    c = Counter(types).most_common()
    s = ", ".join(f"{t} ×{k}" for t, k in c[:limit])
    return s + (f", {len(c) - limit} more kinds" if len(c) > limit else "")


def _where(name: str) -> str:
    """'pkg.Net/torch.nn.modules.rnn.LSTM_lstm;30' -> 'LSTM_lstm' (litert-torch's module scope); ONNX names as they are."""
    core = name.split(";")[0]
    parts = core.split("/")[1:] if "/" in core else [core]
    return "/".join(p.rsplit(".", 1)[-1] for p in parts) or core


def _as_census(c) -> Census:
    return c if isinstance(c, Census) else read(c)


def summary(census: Census | str | Path, param_bytes_fp32: int | None, precision: str | None) -> dict:
    """The census as JSON for the manifest (`manifest.extra["census"]`)."""
    c = _as_census(census)
    floats = c.float_ops()
    integer_target = precision in FULL_INTEGER
    expected = EXPECTED_RATIO.get(precision or "")
    return {
        "format": c.format,
        "file_bytes": c.file_bytes,
        "param_bytes_fp32": param_bytes_fp32,
        "size_ratio": round(c.file_bytes / param_bytes_fp32, 4) if param_bytes_fp32 else None,
        "expected_ratio": expected,
        "precision": precision,
        "ops": len(c.ops),
        "tensors": c.tensors,
        "op_counts": c.op_counts(),
        "constant_bytes": c.constant_bytes,
        "graph_bytes": c.graph_bytes,
        "bytes_by_dtype": c.bytes_by_dtype(),
        "float_weight_bytes": sum(k.nbytes for k in c.float_weights()),
        "full_integer": not floats,
        "float_ops": len(floats),
        "float_ops_in_integer_model": [{"op": o.type, "compute": o.compute, "name": o.name} for o in floats[:MAX_LISTED]]
        if integer_target else [],
        "duplicated_constant_bytes": c.duplicated_bytes,
        "duplicates": [asdict(d) for d in c.duplicates[:MAX_LISTED]],
        "warnings": explain(c, param_bytes_fp32, precision),
        "flags": flags(c, param_bytes_fp32, precision),
    }


def explain(census: Census | str | Path, param_bytes_fp32: int | None, precision: str | None) -> list[str]:
    """One-line findings a user understands; empty when the file is what its precision suggests."""
    return [long for long, _ in _findings(_as_census(census), param_bytes_fp32, precision)]


def flags(census: Census | str | Path, param_bytes_fp32: int | None, precision: str | None) -> list[str]:
    """The same findings as a few words each, for a table cell: 'dup 65.0 KiB', '169 float ops', ..."""
    return [short for _, short in _findings(_as_census(census), param_bytes_fp32, precision)]


def report(path: str | Path, param_bytes_fp32: int | None, precision: str | None) -> tuple[dict, list[str]]:
    """(summary, warnings) for a manifest; never raises: a file the census cannot read gives {"error": ...}, []."""
    try:
        c = read(path)
        return summary(c, param_bytes_fp32, precision), explain(c, param_bytes_fp32, precision)
    except Exception as exc:  # the census describes an artifact; it must never fail a conversion
        return {"error": f"{type(exc).__name__}: {exc}"}, []


def _findings(c: Census, param_bytes_fp32: int | None, precision: str | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    expected = EXPECTED_RATIO.get(precision or "")
    size_fired = False
    if param_bytes_fp32 and expected is not None:
        limit = SIZE_TOLERANCE * expected * param_bytes_fp32 + GRAPH_ALLOWANCE
        if c.file_bytes > limit:
            size_fired = True
            causes = _size_causes(c, precision)
            ratio = c.file_bytes / param_bytes_fp32
            out.append((f"file is {ratio:.2f}× the fp32 parameter bytes where {precision} suggests about "
                        f"{expected:g}× ({_human(c.file_bytes)} against {_human(expected * param_bytes_fp32)}): "
                        + ("; ".join(text for text, _ in causes) if causes else
                           f"no single cause: constants {_human(c.constant_bytes)} "
                           f"({', '.join(f'{k} {_human(v)}' for k, v in c.bytes_by_dtype().items())})"),
                        f"{ratio:.2f}× (expected {expected:g}×): " + (", ".join(tag for _, tag in causes) or "constants")))
    if not size_fired and c.duplicated_bytes >= DUP_WARN_FRACTION * c.file_bytes and c.duplicates:
        out.append((f"duplicated constants are {c.duplicated_bytes / c.file_bytes:.0%} of the file: {_dup_text(c)}",
                    f"dup {_human(c.duplicated_bytes)}"))
    if precision in FULL_INTEGER:
        floats = c.float_ops()
        if floats:
            kinds = sorted({o.compute for o in floats})
            places = list(dict.fromkeys(_where(o.name) for o in floats))
            fw = sum(k.nbytes for k in c.float_weights())
            out.append((f"{precision} target is not full-integer: {len(floats)} of {len(c.ops)} ops compute in {'/'.join(kinds)} "
                        f"({_counted([o.type for o in floats], limit=20)})"
                        + (f" in {', '.join(places[:4])}{' …' if len(places) > 4 else ''}" if places else "")
                        + (f"; {_human(fw)} of weights stay float32" if fw else ""),
                        f"not full-integer: {len(floats)} float ops"))
    return out


def _ops_phrase(labels: list[str]) -> str:
    """'2 FULLY_CONNECTED ops' or '3 ops (FULLY_CONNECTED ×2, ADD ×1)' for distinct op labels."""
    types = [u.split("#")[0] for u in dict.fromkeys(labels)]
    if len(set(types)) == 1:
        return f"{len(types)} {types[0]} op{'s' if len(types) > 1 else ''}"
    return f"{len(types)} ops ({_counted(types)})"


def _dup_text(c: Census) -> str:
    d = c.duplicates[0]
    convert = {op.label for op in c.ops if op.compute == "convert"}
    users = [u for u in d.users if u not in convert] or d.users  # ONNX QDQ: the Conv, not its DequantizeLinear
    copy = "a negated copy" if d.kind == "negated" else "identical bytes" if d.kind == "identical" else "identical and negated copies"
    head = (f"{_ops_phrase(users)} carry a duplicated {_human(d.each)} weight" if users
            else f"a {_human(d.each)} constant is stored {len(d.copies)} times")
    head += f" ({copy}, stored {len(d.copies)}×: {', '.join(d.names[:len(d.copies)][:3])})"
    if len(c.duplicates) > 1:
        head += f"; {_human(c.duplicated_bytes)} of duplicated constants in {len(c.duplicates)} groups"
    return head


def _float_weight_holders(c: Census, fw: list[Constant], total: int) -> str:
    """'CONV_2D ×1 (72.0 KiB), …': op types by the float32 weight bytes they read; under 5 % (a float bias) left out."""
    convert = {op.label for op in c.ops if op.compute == "convert"}
    by_type: dict[str, list] = {}
    for k in fw:
        holder = next(u for u in k.users if u not in convert)  # a constant shared by several ops counts once
        entry = by_type.setdefault(holder.split("#")[0], [set(), 0])
        entry[0].add(holder)
        entry[1] += k.nbytes
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1][1])
    shown = [(t, ops, b) for t, (ops, b) in ranked if b >= DUP_WARN_FRACTION * total] or [(t, o, b) for t, (o, b) in ranked[:1]]
    return ", ".join(f"{t} ×{len(ops)} ({_human(b)})" for t, ops, b in shown)


def _size_causes(c: Census, precision: str | None) -> list[tuple[str, str]]:
    """(sentence, tag) for each cause worth naming, largest first."""
    causes: list[tuple[int, str, str]] = []
    if c.duplicates and c.duplicated_bytes >= DUP_WARN_FRACTION * c.file_bytes:
        causes.append((c.duplicated_bytes, _dup_text(c), f"dup {_human(c.duplicated_bytes)}"))
    if precision != "fp32":
        fw = c.float_weights()
        fbytes = sum(k.nbytes for k in fw)
        if fbytes >= DUP_WARN_FRACTION * c.file_bytes:
            causes.append((fbytes, f"ops left float: {_float_weight_holders(c, fw, fbytes)} keep {_human(fbytes)} of float32 weights",
                           f"float weights {_human(fbytes)}"))
    if c.graph_bytes > GRAPH_ALLOWANCE:
        unrolled = _unrolled(c)
        causes.append((c.graph_bytes, f"graph structure is {_human(c.graph_bytes)} ({len(c.ops)} ops, {c.tensors} tensors"
                                      f"{': recurrent layers unrolled per time step' if unrolled else ''})",
                       f"graph {_human(c.graph_bytes)}{' (unrolled)' if unrolled else ''}"))
    return [(text, tag) for _, text, tag in sorted(causes, key=lambda t: -t[0])]


def _unrolled(c: Census) -> bool:
    """LSTM/GRU lowered to one op group per time step (the same weight read by many FULLY_CONNECTED ops)."""
    return any(len(k.users) >= 4 and all(u.startswith("FULLY_CONNECTED") for u in k.users) for k in c.constants)


__all__ = ["Census", "Op", "Constant", "Duplicate", "read", "summary", "explain", "flags", "report", "EXPECTED_RATIO", "FULL_INTEGER"]
