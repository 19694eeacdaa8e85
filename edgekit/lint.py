"""Pre-conversion lint: patterns known to quantize badly, said before a conversion starts.

Checks the PyTorch model against each target: activations with wide, skewed output ranges
(SiLU, Hardswish, GELU, Mish) under int8 activations; per-tensor weights whose output channels
span very different ranges; very large average-pooling windows under int8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgekit.sources import ModelSpec
from edgekit.targets import Target

HOSTILE_ACTS = (nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish)
CHANNEL_SPREAD_WARN = 20.0  # max/median of per-output-channel |w| max
POOL_AREA_WARN = 64


@dataclass(frozen=True)
class Finding:
    target: str
    kind: str
    layers: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


def _names(layers: list[str], n: int = 3) -> str:
    return ", ".join(layers[:n]) + (f" and {len(layers) - n} more" if len(layers) > n else "")


def lint(spec: ModelSpec, target: Target) -> list[Finding]:
    q = target.quant
    int8_acts = q.mode == "static" and q.activation_bits == 8
    found: list[Finding] = []
    if getattr(spec, "kind", "torch") != "torch":  # the checks read PyTorch modules; the census covers converted files
        return found
    modules = [(n, m) for n, m in spec.module.named_modules() if n]
    if int8_acts:
        acts = [n for n, m in modules if isinstance(m, HOSTILE_ACTS)]
        if acts:
            found.append(Finding(target.name, "wide-activation", tuple(acts),
                                 f"{len(acts)} SiLU/Hardswish/GELU-type layer(s) ({_names(acts)}): their outputs are wide and skewed, "
                                 "and int8 activations clip or coarsen them; if accuracy drops, try tflite-int16x8"))
        pools = []
        for n, m in modules:
            if isinstance(m, nn.AvgPool2d):
                k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
                if k[0] * k[1] > POOL_AREA_WARN:
                    pools.append(n)
        if pools:
            found.append(Finding(target.name, "large-pool", tuple(pools),
                                 f"average pooling over more than {POOL_AREA_WARN} elements ({_names(pools)}) loses precision in int8"))
    if q.mode in ("static", "dynamic") and not q.per_channel:
        spread = []
        for n, m in modules:
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.shape[0] > 1:
                with torch.no_grad():
                    r = m.weight.detach().abs().reshape(m.weight.shape[0], -1).amax(1)
                med = float(r.median())
                if med > 0 and float(r.max()) / med > CHANNEL_SPREAD_WARN:
                    spread.append(n)
        if spread:
            found.append(Finding(target.name, "channel-spread", tuple(spread),
                                 f"per-tensor weights with output channels of very different ranges ({_names(spread)}): "
                                 "set per_channel = true in the target"))
    return found
