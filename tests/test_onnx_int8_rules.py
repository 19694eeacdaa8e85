"""Graph rules of the ONNX static int8 route (edgekit.quantize.onnx), fast tier, on small graphs built with
onnx.helper: additive-mask constants made finite, attention blocks' softmax / mask / layer norm kept float, and a
CNN classifier's final softmax left alone. Their effect on a real transformer is in tests/test_real_models_convert.py."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.quantize.onnx import MASK_VALUE, WHY_PROJECTION, attention_float_nodes, dynamic_projections, finite_masks, residual_projections
from edgekit.targets import load_target


def attention_graph() -> onnx.ModelProto:
    """x [1, 4, 8] -> scores = x @ x^T / sqrt(8) + (1 - m) * finfo.min -> softmax -> @ x -> projection + bias
    -> residual + x -> LayerNorm."""
    fmin = np.finfo(np.float32).min
    inits = [numpy_helper.from_array(np.array(8 ** 0.5, np.float32), "scale"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(fmin, np.float32), "fmin"),
             numpy_helper.from_array(np.ones(8, np.float32), "gamma"), numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
             numpy_helper.from_array(np.eye(8, dtype=np.float32), "w_o"), numpy_helper.from_array(np.zeros(8, np.float32), "b_o")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1], name="t"),
             helper.make_node("MatMul", ["x", "xt"], ["s"], name="qk"),
             helper.make_node("Div", ["s", "scale"], ["s2"], name="scale_div"),
             helper.make_node("Sub", ["one", "m"], ["inv"], name="inv"),
             helper.make_node("Mul", ["inv", "fmin"], ["mask"], name="mask_mul"),
             helper.make_node("Add", ["s2", "mask"], ["s3"], name="mask_add"),
             helper.make_node("Softmax", ["s3"], ["p"], axis=-1),  # no name: the rule names it
             helper.make_node("MatMul", ["p", "x"], ["ctx"], name="pv"),
             helper.make_node("MatMul", ["ctx", "w_o"], ["o"], name="proj"),
             helper.make_node("Add", ["o", "b_o"], ["ob"], name="proj_bias"),
             helper.make_node("Add", ["ob", "x"], ["r"], name="residual"),
             helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], axis=-1, name="ln")]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8]),
                                          helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def run(model: onnx.ModelProto, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x, "m": m})[0]


def test_mask_constants_become_finite_and_the_output_stays():
    model = attention_graph()
    rng = np.random.default_rng(0)
    x, m = rng.standard_normal((1, 4, 8)).astype(np.float32), np.array([[[1, 1, 1, 0]]], np.float32)
    before = run(model, x, m)
    assert finite_masks(model) == 1
    fmin = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "fmin")
    assert fmin == np.float32(MASK_VALUE)
    assert np.allclose(run(model, x, m), before, atol=1e-6)
    assert finite_masks(model) == 0  # nothing left to change


def test_attention_softmax_mask_and_layer_norm_stay_float():
    keep = attention_float_nodes(attention_graph())
    softmax = next(n for n in keep if "Softmax" in n)
    assert keep[softmax] == "attention softmax"
    assert {"mask_add", "scale_div", "ln", "residual"} <= set(keep) and not {"qk", "pv", "proj", "proj_bias"} & set(keep)


def test_projections_into_the_residual_stream_are_quantized_dynamically(tmp_path):
    """The projection the residual Add takes (through its bias Add) is found, and only it; ONNX Runtime's dynamic pass
    makes it DynamicQuantizeLinear -> MatMulInteger, and its bias Add is handed back with it, so the static pass leaves
    both alone. The graph still computes what it did."""
    model = attention_graph()
    assert residual_projections(model) == {"proj": WHY_PROJECTION}
    x = np.random.default_rng(0).normal(size=(1, 4, 8)).astype(np.float32)
    m = np.array([[[1, 1, 1, 0]]], np.float32)
    before = run(model, x, m)
    out, made = dynamic_projections(model, residual_projections(model), load_target("onnx-int8").quant, False, tmp_path)
    types = {n.name: n.op_type for n in out.graph.node}
    assert "MatMulInteger" in {types[n] for n in made} and "proj_bias" in made and "qk" not in made and "pv" not in made
    assert set(made.values()) == {WHY_PROJECTION}
    assert np.abs(run(out, x, m) - before).max() < 0.05


def test_a_classifier_softmax_is_not_attention():
    """Gemm -> Softmax (a CNN's probabilities) has no MatMul downstream: nothing kept float, LayerNorm-free."""
    w = numpy_helper.from_array(np.ones((8, 3), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"], name="fc"), helper.make_node("Softmax", ["z"], ["p"], name="sm")]
    g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3])], [w])
    assert attention_float_nodes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])) == {}
