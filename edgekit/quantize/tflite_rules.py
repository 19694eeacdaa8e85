"""Per-op precision rules for a transformer's static int8 TFLite graph (ai-edge-quantizer), found from the float
.tflite's structure: op types and which op feeds which, never tensor names. The TFLite twin of
edgekit.quantize.onnx's `attention_float_nodes` / `transformer_wide_tensors`.

What stays wider than int8, and why (all-MiniLM-L6-v2 as litert-torch 0.10 lowers it, 372 ops):

- float: each attention SOFTMAX whose input comes from a score BATCH_MATMUL (through the scale MUL/DIV and the
  mask ADD) and whose output feeds a BATCH_MATMUL, with those scale/mask ops, and the ops computing the additive
  mask (SELECT_V2 from the int attention mask). The mask holds float32 min (-3.4e38); ai-edge-quantizer's min/max
  calibration skips values beyond +-3e38 (`min_max_calibrate(valid_range=(-3e38, 3e38))`), so the mask tensor
  calibrates to [0, 0] and at int8 every padding token is attended to. The huge values do not blow up the other
  ranges the way they did on ONNX Runtime; the mask is lost instead.
- float: the two BATCH_MATMULs of each attention block (Q.K^T before the scores, weights.V after the softmax).
  Not for accuracy (int8 they cost no cosine) but for speed: LiteRT's XNNPACK delegate takes no int8 BATCH_MATMUL
  whose two inputs are activations, so int8 ones run on the builtin kernel, between delegate partitions (MiniLM's
  graph: 21 partitions, 12 matmuls outside them; litert-torch's PT2E graph keeps half of them float). Float, they
  are delegated with the softmax around them: 1.38x -> 0.89x fp32 latency, cosine 0.9910 -> 0.9907 (one run,
  the variants timed in turn, 64 calibration / 32 held-out sentences).
- float: each feed-forward GELU, for the same reason (XNNPACK has no int8 GELU) and it is more accurate:
  MiniLM 9 -> 3 delegate partitions, 0.89x -> 0.88x fp32, cosine 0.9907 -> 0.9929.
- float: every layer-norm group. litert-torch lowers nn.LayerNorm to 14 ops (MEAN, RESHAPE, SQUARED_DIFFERENCE,
  MEAN, ADD eps, RSQRT, MUL, SUB, RESHAPE, MUL, RESHAPE, ADD, then MUL gamma, ADD beta; no fused op); an RMS norm
  (MEAN of x*x, ADD, RSQRT, MUL) is found the same way. Their inputs carry a few outlier channels 10-100x the
  rest (the variance reaches 5e4 in MiniLM's last FFN norms).
- float: the ADD producing each layer norm's input (the residual sum, the embeddings' sum).
- dynamic (int8 weights, activations quantized per call from their own range, float output): the FULLY_CONNECTED
  (through reshapes, a bias ADD) whose output goes into such a residual ADD, i.e. the attention output and FFN down
  projections, whose outputs carry the outliers. a16w8 ("int16") is as accurate but LiteRT's CPU path has no fast
  int16x8 FULLY_CONNECTED (XNNPACK takes none): 4.6x the all-int8 latency. Float keeps their weights float (+12.6 MiB).

Measured on all-MiniLM-L6-v2 (64 calibration / 64 held-out sentences, disjoint; min/max calibration; cosine of the
embedding against PyTorch, mean / min over the 64; size of the .tflite; latency: LiteRT 2.3 with its default XNNPACK
delegate, one thread, median of 30 calls, the variants timed interleaved; range over the 2-4 runs each was in, on a
shared 2-core x86 host; the mask's quantization seen in the int8 file: scale 3.9e-12, zero point -128):

    variant                                                    mean    min     MiB   x fp32     x all-int8
    tflite-fp32                                                1.000   1.000   85.9  1.00       0.63-0.67
    all int8 (tflite-int8 before)                              0.578   0.365   55.7  1.50-1.64  1.00
     + attention softmax, scale MUL, mask ADD, mask ops float  0.778   0.665   55.7
     + layer-norm groups float                                 0.840   0.771   55.8
     + residual ADDs float                                     0.944   0.913   55.9  1.28-1.52  0.80-0.93
     + projections dynamic = transformer_rules() default       0.9905  0.984   55.9  1.34-1.39  0.86-0.89
    projections int16 (a16w8) instead                          0.9908  0.981   55.9  7.0-8.1    4.5-5.0
    projections float instead                                  0.9906  0.977   68.5  1.40-1.63  0.91-0.99
    projections weight-only int8 (float compute) instead       0.9905  0.982   55.9  1.42       0.89
    default + GELU float (gelu="float")                        0.9939  0.988   55.9  1.30-1.40  0.84-0.88
    projections int16 + GELU int16                             0.9936  0.979   55.9  8.1        4.95
    projections int16 + attention int16, mask min floored -1e4 0.9906  0.986   55.9  7.7-9.3    5.1-5.7
    projections int16 + residual ADDs int16                    0.9904  0.982   55.9  6.7-8.0    4.5-4.9
    projections int16 + layer norms int16 (a16 config rejected
      for SQUARED_DIFFERENCE, so it stays int8)                0.893   0.773   56.0
    projections int16, attention int8 with the mask floored    0.601   0.236   55.9
    all int8 with the mask floored at -1e4                     0.550   0.294   55.7
    whole model a16w8                                          0.709   0.327   55.9
    default + EMBEDDING_LOOKUP int8 weights (hybrid)           0.9908  0.983   22.7  1.26-1.40  0.79-0.88
    that + attention BATCH_MATMULs float (the default now)     0.9907  0.986   22.7  0.89
      (only Q.K^T float: 1.07; only weights.V float: 1.22; one run of 32 held-out sentences, uncorrected biases)
    that + GELU float (the default now)                         0.9929  0.987   22.7  0.88

(the all-int8 model leaves the 44.7 MiB word-embedding table float: edgekit's static rule does not cover
EMBEDDING_LOOKUP; a dynamic int8 rule for it is what the last row adds.)

`transformer_rules(path)` returns [] for a graph without attention (a CNN's classifier SOFTMAX has no BATCH_MATMUL
on either side), so it can run on every model a static int8 target quantizes.
"""

from __future__ import annotations

import mmap
import re
from collections import defaultdict
from dataclasses import dataclass, field

FLOAT, INT16, DYNAMIC = "float", "int16", "dynamic"
PRECISIONS = (FLOAT, INT16, DYNAMIC)

# why each rule exists (the manifest keeps it)
WHY_SOFTMAX = "attention softmax (its input spans the mask, its output 0..1 keeps its information near 0)"
WHY_SCORES = "attention scores (scale / additive mask) feeding a softmax"
WHY_MASK = ("attention mask (float32 min, which ai-edge-quantizer's calibration skips: quantized, the mask "
            "calibrates to [0, 0] and padding is attended to)")
WHY_NORM = "layer norm in a transformer (outlier channels of the residual stream; variance up to 5e4)"
WHY_RESIDUAL = "residual sum feeding a layer norm (its outlier channels)"
WHY_PROJECTION = "a projection writing into the residual stream (outlier channels in its output)"
WHY_MATMULS = ("attention matmuls (Q.K^T, weights.V): LiteRT's XNNPACK delegate takes no int8 BATCH_MATMUL of two "
               "activations, so int8 they run on the builtin kernel and split the delegated graph (MiniLM: 1.38x -> "
               "0.89x fp32 latency float, cosine 0.9910 -> 0.9907)")
WHY_GELU = ("GELU of a transformer's feed-forward block: XNNPACK takes no int8 GELU, so int8 it runs on the "
            "builtin kernel between delegate partitions (MiniLM float: 9 -> 3 partitions, 0.89x -> 0.88x fp32 "
            "latency, cosine 0.9907 -> 0.9929)")

_MATMULS = ("BATCH_MATMUL", "FULLY_CONNECTED")
_SCORE_OPS = ("ADD", "MUL", "DIV", "SUB", "SELECT_V2", "SELECT", "RESHAPE", "MAXIMUM", "MINIMUM")
_PASS = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CAST")
_MASK_OPS = ("SELECT_V2", "SELECT", "MUL", "SUB", "ADD", "CAST", "RESHAPE", "EXPAND_DIMS", "BROADCAST_TO", "TILE",
             "MINIMUM", "MAXIMUM", "LOGICAL_NOT")
_NORM_OPS = ("MEAN", "SUM", "SQUARED_DIFFERENCE", "SQUARE", "POW", "SUB", "ADD", "MUL", "DIV", "RSQRT", "SQRT",
             "RESHAPE", "EXPAND_DIMS", "SQUEEZE")
_PROJ_PATH = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "ADD")
_PROJECTIONS = ("FULLY_CONNECTED", "CONV_2D", "BATCH_MATMUL")


@dataclass(frozen=True)
class Rule:
    """One group of ops given another precision: `regex` matches each op's scope as ai-edge-quantizer computes it
    (its output tensor names joined by ';', plus ';'), anchored, so it matches those ops and no other."""

    regex: str
    precision: str  # "float" | "int16" (a16w8) | "dynamic" (int8 weights, activations quantized per call, float output)
    reason: str
    ops: tuple[str, ...]  # "SOFTMAX#37" (op type, index in the subgraph), in graph order
    scopes: tuple[str, ...] = field(default=(), repr=False)


@dataclass
class _Op:
    index: int
    type: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    scope: str

    @property
    def name(self) -> str:
        return f"{self.type}#{self.index}"


class Graph:
    """Ops, producers and consumers of one subgraph of a .tflite, read lazily from the flatbuffer."""

    def __init__(self, model, subgraph: int = 0):
        from ai_edge_litert import schema_py_generated as schema

        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        codes = []
        for i in range(model.OperatorCodesLength()):
            c = model.OperatorCodes(i)
            code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
            custom = c.CustomCode()
            codes.append(custom.decode() if code == schema.BuiltinOperator.CUSTOM and custom else names.get(code, str(code)))
        sg = model.Subgraphs(subgraph)
        self.tensor_names = [sg.Tensors(t).Name().decode("utf-8") for t in range(sg.TensorsLength())]
        self.float_tensor = [sg.Tensors(t).Type() in (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16)
                             for t in range(sg.TensorsLength())]
        self.graph_inputs = set(sg.InputsAsNumpy().tolist()) if sg.InputsLength() else set()
        self.ops: list[_Op] = []
        for i in range(sg.OperatorsLength()):
            o = sg.Operators(i)
            ins = tuple(int(t) for t in o.InputsAsNumpy()) if o.InputsLength() else ()
            outs = tuple(int(t) for t in o.OutputsAsNumpy()) if o.OutputsLength() else ()
            self.ops.append(_Op(i, codes[o.OpcodeIndex()], ins, outs, self._scope(ins, outs)))
        self.producer: dict[int, _Op] = {t: op for op in self.ops for t in op.outputs if t >= 0}
        self.consumers: dict[int, list[_Op]] = defaultdict(list)
        for op in self.ops:
            for t in op.inputs:
                if t >= 0:
                    self.consumers[t].append(op)

    def _scope(self, ins, outs) -> str:
        """ai_edge_quantizer.utils.tfl_flatbuffer_utils.get_op_scope: output names (else input names), ';'-joined, ';'."""
        names = [self.tensor_names[t] for t in outs if t != -1 and self.tensor_names[t]]
        if not names:
            names = [self.tensor_names[t] for t in ins if t != -1 and self.tensor_names[t]]
        return ";".join(names) + ";" if names else ""

    def is_const(self, t: int) -> bool:
        """Weights and other constants: produced by no op and not a graph input."""
        return t >= 0 and t not in self.producer and t not in self.graph_inputs

    def live(self, op: _Op) -> list[int]:
        """The op's non-constant inputs."""
        return [t for t in op.inputs if t >= 0 and not self.is_const(t)]


def read_graph(tflite_path) -> Graph:
    from ai_edge_litert import schema_py_generated as schema

    with open(tflite_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return Graph(schema.Model.GetRootAs(mm, 0))


# ------------------------------------------------------------------ attention


def _reaches_matmul(g: Graph, t: int, depth: int = 6) -> bool:
    """Tensor t is a matmul of two activations (attention scores), through score ops."""
    op = g.producer.get(t)
    if op is None or depth == 0:
        return False
    if op.type in _MATMULS and len(g.live(op)) >= 2:
        return True
    return op.type in _SCORE_OPS and any(_reaches_matmul(g, x, depth - 1) for x in g.live(op))


def _feeds_matmul(g: Graph, t: int, depth: int = 4) -> bool:
    for c in g.consumers.get(t, []):
        if c.type in _MATMULS and len(g.live(c)) >= 2:
            return True
        if depth and c.type in _PASS and any(_feeds_matmul(g, o, depth - 1) for o in c.outputs):
            return True
    return False


def _mask_ops(g: Graph, t: int, seen: set[int], depth: int = 6) -> list[_Op]:
    """The float ops computing an additive mask tensor t from non-float inputs (ids, a bool/int mask) or constants."""
    op = g.producer.get(t)
    if op is None or depth == 0 or op.index in seen or op.type not in _MASK_OPS or not g.float_tensor[t]:
        return []
    seen.add(op.index)
    out = [op]
    for x in g.live(op):
        out += _mask_ops(g, x, seen, depth - 1)
    return out


def _matmuls_after(g: Graph, t: int, depth: int = 4) -> list[_Op]:
    """The BATCH_MATMULs consuming t, looking through reshapes / transposes."""
    out = []
    for c in g.consumers.get(t, []):
        if c.type == "BATCH_MATMUL":
            out.append(c)
        elif depth and c.type in _PASS:
            out += [m for o in c.outputs for m in _matmuls_after(g, o, depth - 1)]
    return out


def attention_blocks(g: Graph) -> list[dict]:
    """Each attention softmax: {"softmax": op, "scores": [scale / mask ops between it and the scores' matmul],
    "mask": [ops computing the additive mask], "matmuls": [the scores' BATCH_MATMUL (Q.K^T) and the one taking
    the softmax (weights.V)]}."""
    blocks, mask_seen = [], set()
    for sm in (o for o in g.ops if o.type == "SOFTMAX"):
        x = sm.inputs[0]
        if not _reaches_matmul(g, x) or not any(_feeds_matmul(g, t) for t in sm.outputs):
            continue
        scores, mask, cur = [], [], g.producer.get(x)
        while cur is not None and cur.type in _SCORE_OPS and len(scores) < 6:
            scores.append(cur)
            live = g.live(cur)
            toward = [t for t in live if _reaches_matmul(g, t)]
            for t in live:
                if t not in toward:
                    mask += _mask_ops(g, t, mask_seen)
            cur = g.producer.get(toward[0]) if toward else None
        while cur is not None and cur.type in _PASS and g.live(cur):
            cur = g.producer.get(g.live(cur)[0])
        matmuls = [cur] if cur is not None and cur.type == "BATCH_MATMUL" else []
        matmuls += [m for t in sm.outputs for m in _matmuls_after(g, t)]
        blocks.append({"softmax": sm, "scores": scores, "mask": mask, "matmuls": matmuls})
    return blocks


# ------------------------------------------------------------------ layer norms


def _strip(g: Graph, t: int) -> _Op | None:
    """The producer of t, looking through reshapes."""
    op = g.producer.get(t)
    while op is not None and op.type in ("RESHAPE", "EXPAND_DIMS", "SQUEEZE") and g.live(op):
        op = g.producer.get(g.live(op)[0])
    return op


def _is_mean_of(g: Graph, t: int, x: int) -> bool:
    op = _strip(g, t)
    return op is not None and op.type == "MEAN" and op.inputs[0] == x


def _norm_source(g: Graph, r: _Op) -> int | None:
    """The tensor a norm's RSQRT normalises: rsqrt(MEAN(squared deviation or x*x) [+ eps]), the squared deviation
    being SQUARED_DIFFERENCE(x, MEAN x) or (x - MEAN x)^2 (layer norm), or x*x / x^2 (RMS norm)."""
    cur = _strip(g, r.inputs[0])
    for _ in range(4):  # ADD eps, a scale (x / N), reshapes
        if cur is None or cur.type in ("MEAN", "SUM"):
            break
        live = g.live(cur)
        cur = _strip(g, live[0]) if cur.type in ("ADD", "MUL", "DIV") and len(live) == 1 else None
    if cur is None or cur.type not in ("MEAN", "SUM"):
        return None
    sq = _strip(g, cur.inputs[0])
    if sq is None:
        return None
    if sq.type == "SQUARED_DIFFERENCE":
        a, b = sq.inputs[:2]
        return a if _is_mean_of(g, b, a) else b if _is_mean_of(g, a, b) else None
    live = g.live(sq)
    if sq.type in ("SQUARE", "POW") or (sq.type == "MUL" and len(sq.inputs) == 2 and sq.inputs[0] == sq.inputs[1]):
        if not live:
            return None
        d = live[0]
        sub = g.producer.get(d)
        if sub is not None and sub.type == "SUB" and _is_mean_of(g, sub.inputs[1], sub.inputs[0]):
            return sub.inputs[0]
        return d
    return None


def norm_groups(g: Graph) -> list[tuple[int, list[_Op]]]:
    """(input tensor, ops) of each decomposed layer norm / RMS norm: the ops of norm types reachable from the
    input whose activations all come from the input or the group, on a path through the RSQRT."""
    groups = []
    for r in (o for o in g.ops if o.type == "RSQRT"):
        x = _norm_source(g, r)
        if x is None:
            continue
        group: dict[int, _Op] = {}
        have = {x}
        frontier = [x]
        while frontier:
            t = frontier.pop()
            for c in g.consumers.get(t, []):
                if c.index in group or c.type not in _NORM_OPS or not all(i in have for i in g.live(c)):
                    continue
                group[c.index] = c
                have.update(c.outputs)
                frontier += list(c.outputs)
        # keep the ops on a path through r: its ancestors and descendants within the group
        def walk(start: _Op, up: bool) -> set[int]:
            out, stack = set(), [start]
            while stack:
                op = stack.pop()
                if op.index in out:
                    continue
                out.add(op.index)
                nxt = ([g.producer.get(t) for t in g.live(op)] if up
                       else [c for t in op.outputs for c in g.consumers.get(t, [])])
                stack += [n for n in nxt if n is not None and n.index in group]
            return out

        keep = walk(r, True) | walk(r, False)
        # ops computing only from x and the kept ones (x * rstd, x - mean)
        changed = True
        while changed:
            changed = False
            for op in group.values():
                if op.index not in keep and any(c.index in keep for t in op.outputs for c in g.consumers.get(t, [])):
                    keep.add(op.index)
                    changed = True
        groups.append((x, sorted((group[i] for i in keep if i in group), key=lambda o: o.index)))
    return groups


# ------------------------------------------------------------------ residual stream


def _projection_path(g: Graph, t: int) -> list[_Op]:
    """A Linear / conv with constant weights writing t (through reshapes and a bias ADD): those ops, else []."""
    path, cur = [], g.producer.get(t)
    while cur is not None and len(path) < 5:
        path.append(cur)
        if cur.type in _PROJECTIONS and len(cur.inputs) > 1 and g.is_const(cur.inputs[1]):
            return path
        live = g.live(cur)
        if cur.type not in _PROJ_PATH or len(live) != 1:
            return []
        cur = g.producer.get(live[0])
    return []


def _regex(ops) -> str:
    scopes = list(dict.fromkeys(o.scope for o in ops))
    body = "|".join(re.escape(s) for s in scopes)
    return f"^(?:{body})$" if len(scopes) > 1 else f"^{body}$"


def _rule(ops, precision: str, reason: str) -> Rule:
    ops = sorted({o.index: o for o in ops}.values(), key=lambda o: o.index)
    return Rule(_regex(ops), precision, reason, tuple(o.name for o in ops), tuple(o.scope for o in ops))


def transformer_rules(tflite_path, projections: str = DYNAMIC, gelu: str = FLOAT, graph: Graph | None = None) -> list[Rule]:
    """Rules for the float .tflite at `tflite_path` (subgraph 0), in graph order of kind; [] without attention.

    One rule per group: the attention mask's ops, each attention block (softmax + its scale / mask ops), each norm
    group, each residual ADD, each projection into the residual stream; every op is in at most one rule.
    `projections`: "dynamic" (default: measured as accurate as "int16" and 5x faster on LiteRT's CPU kernels),
    "int16", "float", or "" to leave them at the target's precision. `gelu`: "float" (default), "int16" or "" (int8)."""
    for value in (projections, gelu):
        if value and value not in PRECISIONS:
            raise ValueError(f"precision {value!r}: use one of {PRECISIONS}")
    g = graph or read_graph(tflite_path)
    blocks = attention_blocks(g)
    if not blocks:
        return []
    rules: list[Rule] = []
    taken: set[int] = set()

    def add(ops, precision, reason):
        ops = [o for o in ops if o.index not in taken and o.scope]
        if ops:
            taken.update(o.index for o in ops)
            rules.append(_rule(ops, precision, reason))

    add([o for b in blocks for o in b["mask"]], FLOAT, WHY_MASK)
    for b in blocks:
        add([b["softmax"], *b["scores"], *b["matmuls"]], FLOAT, f"{WHY_SOFTMAX}; {WHY_SCORES}; {WHY_MATMULS}")
    norms = norm_groups(g)
    for _, ops in norms:
        add(ops, FLOAT, WHY_NORM)
    for x, _ in norms:
        res = g.producer.get(x)
        if res is None or res.type != "ADD":
            continue
        add([res], FLOAT, WHY_RESIDUAL)
        if projections:
            for t in g.live(res):
                add(_projection_path(g, t), projections, WHY_PROJECTION)
    if gelu:
        for o in g.ops:
            if o.type == "GELU":
                add([o], gelu, WHY_GELU)
    return rules


WHY_EMBEDDING = ("embedding table: int8 weights, the looked-up rows dequantized (a static int8 recipe leaves "
                 "EMBEDDING_LOOKUP float: MiniLM's 44.7 MiB word table; with this rule 55.9 -> 22.7 MiB, cosine 0.9908)")


def embedding_rules(tflite_path, graph: Graph | None = None) -> list[Rule]:
    """EMBEDDING_LOOKUP ops (any model): their tables stored int8 (dynamic: the rows they return are float)."""
    g = graph or read_graph(tflite_path)
    ops = [o for o in g.ops if o.type == "EMBEDDING_LOOKUP" and o.scope]
    return [_rule(ops, DYNAMIC, WHY_EMBEDDING)] if ops else []


def static_rules(tflite_path) -> list[Rule]:
    """Every rule a static int8 target applies to this float .tflite (transformer_rules, then embedding_rules),
    from one read of the file."""
    g = read_graph(tflite_path)
    return transformer_rules(tflite_path, graph=g) + embedding_rules(tflite_path, graph=g)


def recipe_rules(rules: list[Rule], q) -> list[dict]:
    """The rules as ai-edge-quantizer recipe entries for a static QuantSpec `q` (edgekit.targets.QuantSpec), to go
    after the recipe's global rule (the last matching rule wins, so the target's own overrides, later, still win)."""
    from edgekit.quantize.tflite import _rule as aeq_rule
    from edgekit.quantize.tflite import _static, _weights

    out = []
    for r in rules:
        if r.precision == FLOAT:
            out.append(aeq_rule(r.regex, None))
        elif r.precision == INT16:
            out.append(aeq_rule(r.regex, _static(q, 16)))
        elif r.precision == DYNAMIC:
            out.append(aeq_rule(r.regex, {"weight_tensor_config": _weights(q), "compute_precision": "INTEGER",
                                          "explicit_dequantize": False}))
        else:
            raise ValueError(f"rule precision {r.precision!r}: use one of {PRECISIONS}")
    return out


def summary(rules: list[Rule]) -> dict:
    """What the manifest keeps: per precision, each group's ops and why."""
    out: dict = {}
    for r in rules:
        out.setdefault(r.precision, []).append({"ops": list(r.ops), "reason": r.reason})
    return out
