"""PyTorch -> TFLite through litert-torch (no TensorFlow needed). With channels_last, 4-D
inputs and outputs are NHWC in the artifact (litert-torch's channel-last I/O wrapper)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgekit._util import first_line
from edgekit.errors import ConversionError
from edgekit.sources import ModelSpec


def prepare(spec: ModelSpec, channels_last: bool) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str | None], list[str | None]]:
    """The module and sample args litert-torch sees, and the artifact's input/output layouts."""
    module, args = spec.module, spec.example_inputs
    outs = spec.reference_outputs()
    in_layouts, out_layouts = spec.io_layouts()
    if channels_last:
        import litert_torch

        in_idx = [i for i, t in enumerate(args) if t.ndim == 4]
        out_idx = [i for i, o in enumerate(outs) if o.ndim == 4]
        if not in_idx:
            raise ConversionError("--channels-last needs a 4-D (image) input", "drop --channels-last for this model")
        module = litert_torch.to_channel_last_io(module, args=in_idx, outputs=out_idx).eval()
        args = tuple(t.permute(0, 2, 3, 1).contiguous() if i in in_idx else t for i, t in enumerate(args))
        in_layouts = ["NHWC" if i in in_idx else lay for i, lay in enumerate(in_layouts)]
        out_layouts = ["NHWC" if i in out_idx else lay for i, lay in enumerate(out_layouts)]
    return module, args, in_layouts, out_layouts


def convert(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, quant_config=None) -> dict:
    import litert_torch

    try:
        edge = litert_torch.convert(module, args, quant_config=quant_config)
        edge.export(str(path))
    except ConversionError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise ConversionError(f"litert-torch conversion failed: {type(exc).__name__}: {first}",
                              "run with --debug for the log; try the onnx-* targets if an op is unsupported") from exc
    return {"converter": "litert-torch", "quantizer": "pt2e" if quant_config is not None else None}
