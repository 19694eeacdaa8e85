"""Quantization-aware training with PyTorch's PT2E flow (torchao): export, insert fake-quantizers
with litert-torch's PT2EQuantizer (the int8 scheme the TFLite targets use: per-channel symmetric
int8 weights, per-tensor affine int8 activations), fine-tune, convert to a quantize/dequantize
graph. `edgekit convert` lowers that graph's own scales to an int8 TFLite model
(edgekit.quantize.prequantized) instead of calibrating again."""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgekit._util import captured_output, first_line
from edgekit.compress.data import DEFAULT_DATA, DataConfig
from edgekit.compress.graph import export_error
from edgekit.compress.result import CompressResult, OutputConfig, batch_dynamic, start
from edgekit.compress.train import TrainConfig, predict
from edgekit.errors import CompressionError, UsageError


@dataclass(frozen=True)
class QATConfig:
    target: str = "tflite-int8"  # the int8 target whose scheme the fake-quantizers follow


QAT_TRAIN = TrainConfig(epochs=3, lr=1e-4)


def scheme_for(target: str) -> bool:
    """Per-channel weights? Raises unless the target is a static int8 TFLite target QAT can feed."""
    from edgekit.targets import load_target

    t = load_target(target)
    q = t.quant
    if not (t.format == "tflite" and q.mode == "static" and q.activation_bits == 8 and q.weight_bits == 8):
        raise UsageError(f"QAT trains for static int8 TFLite targets, not {t.name}",
                         "use --target tflite-int8 (an ONNX export of the QAT graph keeps float weights and ONNX Runtime's "
                         "x86 int8 kernels disagree with it)")
    return q.per_channel


@contextlib.contextmanager
def _litert_qat_patterns():
    """litert-torch 0.10's conv+BN QAT annotator passes torch.export a bare function, which torch 2.13
    refuses ("Expected `mod` to be an instance of `torch.nn.Module`", google-ai-edge/litert-torch#801);
    wrap the pattern in torchao's WrapperModule while prepare_qat_pt2e runs."""
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    original = utils._get_aten_graph_module_for_pattern

    def wrapped(pattern, *args, **kwargs):
        return original(pattern if isinstance(pattern, torch.nn.Module) else WrapperModule(pattern), *args, **kwargs)

    utils._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def prepare(model: torch.nn.Module, example: tuple[torch.Tensor, ...], per_channel: bool) -> torch.fx.GraphModule:
    """Export (dynamic batch) and insert fake-quantizers; conv+BN pairs are fused for QAT (BN folded at convert)."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True))
    # the exported graph shares the module's parameters: train a copy, never the caller's model
    try:
        graph = batch_dynamic(copy.deepcopy(model), example).module()
    except Exception as exc:  # noqa: BLE001
        raise export_error(exc, "QAT") from exc
    with _litert_qat_patterns():
        prepared = prepare_qat_pt2e(graph, quantizer)
    return allow_exported_model_train_eval(prepared)  # .train()/.eval() switch BN and dropout


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared.eval()
    return convert_pt2e(prepared, fold_quantize=False)


def qat(model: Any, data: Any, *, val: Any = None, config: QATConfig = QATConfig(), train: TrainConfig = QAT_TRAIN,
        data_cfg: DataConfig = DEFAULT_DATA, weights=None, input_shapes=None, out=None, progress=None,
        outputs: OutputConfig = OutputConfig()) -> CompressResult:
    """Fine-tune `model` with int8 fake-quantization (each output toward its labels/targets, else the float
    model's outputs); the result holds quantize/dequantize ops with the learned scales, and its validation
    figures are what the int8 artifact should reach."""
    per_channel = scheme_for(config.target)
    job = start(model, data, val, weights=weights, input_shapes=input_shapes, data_cfg=data_cfg, seed=train.seed, out=out,
                outputs=outputs)
    before = job.before()
    log = io.StringIO()
    try:
        with captured_output(log):  # torchao / litert-torch print while importing and tracing
            prepared = prepare(job.model, job.spec.example_inputs, per_channel)
    except CompressionError:
        raise
    except Exception as exc:
        first = first_line(exc, 200)
        raise CompressionError(f"preparing {job.spec.source} for QAT failed: {type(exc).__name__}: {first}",
                               "the model must be torch.export-able; run with --debug for the traceback") from exc

    def validate() -> dict[str, float]:
        """Held-out figures without the observers seeing the held-out data (in eval mode they still update the
        moving-average ranges, so validating would tune the int8 scales to the validation batches)."""
        from torchao.quantization.pt2e import disable_observer, enable_observer

        prepared.apply(disable_observer)
        try:
            return job.validate(prepared)
        finally:
            prepared.apply(enable_observer)

    if train.epochs == 0:  # no training batch will set the observers' ranges: calibrate them on training samples
        predict(prepared, job.train.take(np.arange(min(len(job.train), 512))))
    history = job.fit(prepared, train, progress=progress, label="qat", validate=validate)
    with captured_output(log):
        quantized = convert(prepared)
    after = job.validate(quantized)
    details = {"target": config.target, "scheme": {"weights": f"int8 symmetric {'per-channel' if per_channel else 'per-tensor'}",
                                                   "activations": "int8 affine per-tensor", "quantizer": "litert-torch PT2EQuantizer (is_qat)"}}
    notes = [(f"the validation figures are the fake-quantized model's: `edgekit convert` to {config.target} lowers these "
             "quantization parameters as they are, so the int8 artifact should match them"),
             "size and latency are those of an int8 model (about 1/4 of fp32 weights); the .pt2 itself stores fp32 weights"]
    return job.result("qat", quantized, before, history, details, notes, after=after)
