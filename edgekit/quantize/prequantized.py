"""Models that arrive quantized: a PT2E quantize/dequantize graph, e.g. from `edgekit qat`.

Their int8 parameters were learned in quantization-aware training, so they are lowered as they are
(litert-torch converts a PT2E-quantized graph to a full-integer TFLite model) rather than
calibrated and quantized again. Only static int8 TFLite targets can take such a graph: an ONNX
export keeps the weights in float and ONNX Runtime's x86 int8 kernels disagree with it (measured:
95% top-1 agreement, max logit error 3.3 on a Fashion-MNIST CNN), and float or int16 targets would
have to undo the training's quantization."""

from __future__ import annotations

from pathlib import Path

from edgekit._util import Stages
from edgekit.errors import ConversionError
from edgekit.sources import ModelSpec
from edgekit.targets import Target


def accepts(tgt: Target) -> bool:
    q = tgt.quant
    return tgt.format == "tflite" and q.mode == "static" and q.activation_bits == 8 and q.weight_bits == 8


def build(spec: ModelSpec, tgt: Target, channels_last: bool, model_file: Path, stages: Stages) -> tuple[dict, list, list]:
    """Lower the graph's own quantization to `model_file`; returns (recipe, input layouts, output layouts)."""
    if not accepts(tgt):
        raise ConversionError(f"{spec.source} is already quantized (quantize/dequantize ops, e.g. from edgekit qat); "
                              f"{tgt.name} cannot take it", "convert it with --target tflite-int8")
    from edgekit.export import tflite as tfl_export

    module, args, in_layouts, out_layouts = tfl_export.prepare(spec, channels_last)
    with stages.stage("export"):
        from litert_torch.quantize import pt2e_quantizer as pq
        from litert_torch.quantize.quant_config import QuantConfig

        # The quantizer only tells litert-torch to lower q/dq pairs as static int8 ops; it annotates
        # nothing here: the scales and zero points are the graph's own.
        static = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
        info = tfl_export.convert(module, args, model_file, quant_config=QuantConfig(pt2e_quantizer=static))
    recipe = {"export": info, "quantize": {"tool": "litert-torch (PT2E q/dq lowering)", "prequantized": True,
                                           "quantization_parameters": "the model's own (quantization-aware training); no calibration"}}
    return recipe, in_layouts, out_layouts
