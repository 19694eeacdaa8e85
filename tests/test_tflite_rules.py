"""Graph rules of the TFLite static int8 route (edgekit.quantize.tflite_rules): which ops of a transformer stay wider
than int8, found from the float .tflite's op types and connectivity. Fast tier: a tiny hand-built transformer block
and a small CNN, converted with litert-torch as edgekit does. Slow: all-MiniLM-L6-v2 through ai-edge-quantizer with
the rules, judged on held-out sentences."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.export.tflite import convert
from edgekit.quantize.tflite_rules import (DYNAMIC, FLOAT, WHY_GELU, WHY_MASK, WHY_NORM, WHY_PROJECTION, WHY_RESIDUAL,
                                           read_graph, recipe_rules, summary, transformer_rules)
from edgekit.targets import QuantSpec

T, D, H = 8, 16, 2


class Block(nn.Module):
    """Post-LN encoder layer, BERT-style: int mask -> (1 - m) * finfo.min added to the scaled scores."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.ff1, self.ff2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x, mask):
        b = x.shape[0]
        split = lambda t: t.view(b, T, H, D // H).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) * (D // H) ** -0.5
        scores = scores + (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(torch.float32).min
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, T, D)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10), nn.Softmax(-1))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def block_tflite(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rules") / "block.tflite"
    mask = torch.ones(1, T, dtype=torch.int64)
    mask[0, -2:] = 0
    convert(Block().eval(), (torch.randn(1, T, D), mask), path)
    return path


def run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    """One call of a (possibly int8-I/O) .tflite: inputs by signature name, quantized if the model wants; the first
    output, dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    for d in it.get_input_details():
        x = feed[d["name"].removeprefix("serving_default_")]
        scale, zero = d["quantization"]
        if scale and np.issubdtype(d["dtype"], np.integer) and np.issubdtype(x.dtype, np.floating):
            x = np.clip(np.round(x / scale) + zero, np.iinfo(d["dtype"]).min, np.iinfo(d["dtype"]).max)
        it.set_tensor(d["index"], x.astype(d["dtype"]))
    it.invoke()
    d = it.get_output_details()[0]
    y = it.get_tensor(d["index"]).astype(np.float32)
    scale, zero = d["quantization"]
    return (y - zero) * scale if scale else y


def undelegated(path: Path) -> dict[str, int]:
    """Op types LiteRT runs outside its default XNNPACK delegate (one thread), counted.

    The interpreter lists every node, the replaced ones too, then one DELEGATE node per partition. A tensor a DELEGATE
    node produces had its producer replaced; a node is replaced, too, when all its outputs go only to replaced nodes and
    no DELEGATE node or graph output takes them (fixed point). What is left runs on the builtin kernels."""
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    nodes = [o for o in ops if o["op_name"] != "DELEGATE"]
    made = {t for d in delegates for t in d["outputs"]}
    kept = {t for d in delegates for t in d["inputs"]} | {d["index"] for d in it.get_output_details()}
    takers: dict[int, list[int]] = {}
    for o in nodes:
        for t in o["inputs"]:
            takers.setdefault(t, []).append(o["index"])
    replaced = {o["index"] for o in nodes if set(o["outputs"]) & made}
    grew = True
    while grew:
        grew = False
        for o in nodes:
            if o["index"] in replaced or set(o["outputs"]) & kept:
                continue
            if all(takers.get(t) and set(takers[t]) <= replaced for t in o["outputs"]):
                replaced.add(o["index"])
                grew = True
    return dict(Counter(o["op_name"] for o in nodes if o["index"] not in replaced))


def aeq_scopes(path: Path) -> list[str]:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    sg = fu.read_model(path).subgraphs[0]
    return [fu.get_op_scope(op, sg.tensors) for op in sg.operators]


def test_block_rules_find_softmax_layer_norms_residuals_and_projections(block_tflite):
    g = read_graph(block_tflite)
    rules = transformer_rules(block_tflite)
    kinds = {r.reason: [] for r in rules}
    for r in rules:
        kinds[r.reason].append(r)
    types = lambda rs: sorted(o.split("#")[0] for r in rs for o in r.ops)  # noqa: E731

    attn = [r for r in rules if r.reason.startswith("attention softmax")]
    assert len(attn) == 1 and attn[0].precision == FLOAT
    assert "SOFTMAX" in types(attn) and "ADD" in types(attn) and "MUL" in types(attn)  # the mask ADD, the scale MUL
    assert types(attn).count("BATCH_MATMUL") == 2  # Q.K^T and weights.V: XNNPACK takes no int8 BATCH_MATMUL
    assert set(types(kinds[WHY_MASK])) <= {"SUB", "MUL", "CAST", "SELECT_V2", "RESHAPE", "ADD"}  # (1 - m) * finfo.min
    norms = kinds[WHY_NORM]
    assert len(norms) == 2 and all(r.precision == FLOAT for r in norms)
    for r in norms:  # litert-torch's decomposed LayerNorm: MEAN, SQUARED_DIFFERENCE, RSQRT, ... (no FC, no GELU)
        assert {"MEAN", "SQUARED_DIFFERENCE", "RSQRT"} <= set(types([r])) <= {"MEAN", "SQUARED_DIFFERENCE", "RSQRT", "ADD",
                                                                             "MUL", "SUB", "RESHAPE"}
    assert types(kinds[WHY_RESIDUAL]) == ["ADD", "ADD"]
    proj = kinds[WHY_PROJECTION]  # o and ff2 write into the residual stream; q, k, v and ff1 do not
    assert types(proj) == ["FULLY_CONNECTED", "FULLY_CONNECTED"] and all(r.precision == DYNAMIC for r in proj)
    fcs = [o for o in g.ops if o.type == "FULLY_CONNECTED"]
    assert len(fcs) == 6
    assert types(kinds[WHY_GELU]) == ["GELU"] and kinds[WHY_GELU][0].precision == FLOAT
    # every op in one rule at most; every FC keeps int8 weights (q, k, v, ff1 static, o and ff2 dynamic)
    covered = [o for r in rules for o in r.ops]
    assert len(covered) == len(set(covered))
    assert "FULLY_CONNECTED" not in {o.split("#")[0] for r in rules if r.precision == FLOAT for o in r.ops}
    assert transformer_rules(block_tflite, gelu="") == [r for r in rules if r.reason != WHY_GELU]
    # each regex matches exactly its ops' scopes, as ai-edge-quantizer computes them
    scopes = aeq_scopes(block_tflite)
    assert scopes == [o.scope for o in g.ops]
    for r in rules:
        assert [f"{g.ops[i].type}#{i}" for i, s in enumerate(scopes) if re.search(r.regex, s)] == list(r.ops), r
    assert set(summary(rules)) == {FLOAT, DYNAMIC}


def test_block_quantizes_with_the_rules(block_tflite, tmp_path):
    """The rules as recipe entries: the softmax, attention matmuls, GELU and layer norms run float, the projections
    hybrid, the rest int8; and LiteRT's XNNPACK delegate takes every FULLY_CONNECTED, BATCH_MATMUL and GELU (an int8
    BATCH_MATMUL of two activations, or an int8 GELU, would run outside it: with gelu="" the GELU does)."""
    import ai_edge_quantizer as aeq
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.quantize.tflite import aeq_recipe

    q = QuantSpec(mode="static", backend="aeq")
    rules = transformer_rules(block_tflite)
    recipe = aeq_recipe(q)
    recipe = recipe[:1] + recipe_rules(rules, q) + recipe[1:]
    qz = aeq.Quantizer(str(block_tflite), recipe)
    rng = np.random.default_rng(0)
    masks = [np.array([[1] * (T - n) + [0] * n], np.int32) for n in range(4)]
    feed = [{"args_0": rng.standard_normal((1, T, D)).astype(np.float32), "args_1": masks[i % 4]} for i in range(16)]
    out = qz.quantize(qz.calibrate({"serving_default": feed}), enable_progress_bar=False, enable_progress_report=False)
    path = tmp_path / "block-int8.tflite"
    path.write_bytes(bytes(out.quantized_model))
    it = Interpreter(model_path=str(path), num_threads=1)
    dtypes = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    by_type: dict[str, set] = {}
    for op in it._get_ops_details():
        by_type.setdefault(op["op_name"], set()).add(np.dtype(dtypes[op["outputs"][0]]).name)
    assert by_type["SOFTMAX"] == {"float32"} and by_type["RSQRT"] == {"float32"}
    assert by_type["FULLY_CONNECTED"] == {"int8", "float32"}  # q, k, v, ff1 int8; o, ff2 hybrid (float output)
    assert by_type["BATCH_MATMUL"] == {"float32"} and by_type["GELU"] == {"float32"}
    assert not set(undelegated(path)) & {"FULLY_CONNECTED", "BATCH_MATMUL", "GELU", "SOFTMAX"}, undelegated(path)
    y, ref = run(path, feed[1]), run(block_tflite, feed[1])
    assert np.isfinite(y).all() and _cosine(y.reshape(1, -1), ref.reshape(1, -1))[0] > 0.9
    # the check can fail: the int8 GELU of a recipe without the GELU rule runs on the builtin kernel
    int8_gelu = aeq.Quantizer(str(block_tflite), recipe[:1] + recipe_rules(transformer_rules(block_tflite, gelu=""), q))
    out = int8_gelu.quantize(int8_gelu.calibrate({"serving_default": feed}), enable_progress_bar=False,
                             enable_progress_report=False)
    (tmp_path / "gelu-int8.tflite").write_bytes(bytes(out.quantized_model))
    assert undelegated(tmp_path / "gelu-int8.tflite").get("GELU") == 1


def test_a_cnn_gets_no_rules(tmp_path):
    """A classifier's SOFTMAX has no BATCH_MATMUL on either side: no attention, no rules."""
    path = tmp_path / "cnn.tflite"
    convert(SmallCNN().eval(), (torch.randn(1, 1, 12, 12),), path)
    assert "SOFTMAX" in {o.type for o in read_graph(path).ops}
    assert transformer_rules(path) == []


# ---------------------------------------------------------------------------- MiniLM, slow


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# MiniLM through the whole tflite-int8 target (rules found, applied, recorded, cosine held): tests/test_real_models_convert.py
