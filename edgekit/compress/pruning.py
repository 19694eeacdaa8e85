"""Magnitude pruning with torch.nn.utils.prune, then fine-tuning with the masks held.

- structured: whole output channels of Conv2d/Linear layers go (L1 norm), and the tensors really
  shrink (edgekit.compress.surgery), so the exported file and its compute shrink with them.
- unstructured: the smallest |w| go, over all layers at once (global) or the same fraction per layer.
- 2:4: two of every four consecutive weights along each output's inputs (semi-structured sparsity).

Unstructured and 2:4 zeros stay inside dense tensors: TFLite (XNNPACK) and ONNX Runtime on CPU store
and multiply them like any other weight. The report says so, with what a compressor makes of them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from edgekit.compress import surgery
from edgekit.compress.data import DEFAULT_DATA, DataConfig
from edgekit.compress.result import CompressResult, OutputConfig, layers_of, param_count, start
from edgekit.compress.train import TrainConfig
from edgekit.errors import CompressionError, UsageError

MODES = ("structured", "unstructured", "2:4")
SCOPES = ("global", "layer")
PRUNE_TRAIN = TrainConfig(epochs=2, lr=5e-4)
DENSE_RUNTIMES = "TFLite (XNNPACK) and ONNX Runtime on CPU store and multiply zeros like any weight"


@dataclass(frozen=True)
class PruneConfig:
    mode: str = "structured"
    amount: float = 0.5  # fraction of channels (structured) or weights (unstructured) removed; 2:4 is always 0.5
    scope: str = "global"  # unstructured only: one magnitude threshold over all layers, or per layer


def check(cfg: PruneConfig) -> None:
    if cfg.mode not in MODES:
        raise UsageError(f"unknown pruning mode {cfg.mode!r}", f"one of: {', '.join(MODES)}")
    if cfg.scope not in SCOPES:
        raise UsageError(f"unknown pruning scope {cfg.scope!r}", f"one of: {', '.join(SCOPES)}")
    if cfg.mode != "2:4" and not 0.0 < cfg.amount < 1.0:
        raise UsageError(f"the pruning amount must be between 0 and 1 (exclusive), got {cfg.amount}", "e.g. 0.5 removes half")


def n_m_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n largest |w| of every m consecutive weights along the reduction (input x kernel) axis.

    torch.ao.pruning's WeightNormSparsifier does this for Linear only (its blocks run along the
    last two dimensions, which for a Conv2d are the kernel's height and width)."""
    rows = weight.detach().reshape(weight.shape[0], -1, m).abs()
    keep = torch.zeros_like(rows).scatter_(-1, rows.topk(n, dim=-1).indices, 1.0)
    return keep.reshape(weight.shape)


def _masked_layers(model: nn.Module, cfg: PruneConfig, source: str) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    layers = layers_of(model, source)
    skipped = {}
    if cfg.mode == "2:4":
        for n, m in list(layers):
            if m.weight[0].numel() % 4:
                skipped[n] = f"{m.weight[0].numel()} inputs per output is not a multiple of 4"
                layers.remove((n, m))
        if not layers:
            raise CompressionError("no layer has a multiple of 4 inputs per output for 2:4 sparsity", "use --unstructured")
        for _, m in layers:
            tprune.custom_from_mask(m, "weight", n_m_mask(m.weight))
    elif cfg.scope == "global":
        tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured, amount=cfg.amount)
    else:
        for _, m in layers:
            tprune.l1_unstructured(m, "weight", amount=cfg.amount)
    return layers, skipped


def _zlib_bytes(model: nn.Module) -> int:
    return sum(len(zlib.compress(m.weight.detach().numpy().tobytes(), 6)) for _, m in layers_of(model, "model"))


def prune(model: Any, data: Any, *, val: Any = None, config: PruneConfig = PruneConfig(), train: TrainConfig = PRUNE_TRAIN,
          data_cfg: DataConfig = DEFAULT_DATA, weights=None, input_shapes=None, out=None, progress=None,
          outputs: OutputConfig = OutputConfig()) -> CompressResult:
    """Prune `model` as configured and fine-tune it (each output toward its labels/targets, else toward the
    unpruned model's outputs); the report says what that buys on dense runtimes."""
    check(config)
    job = start(model, data, val, weights=weights, input_shapes=input_shapes, data_cfg=data_cfg, seed=train.seed, out=out,
                outputs=outputs)
    layers_of(job.model, job.spec.source)
    before = job.before()
    if config.mode == "structured":
        pruned, details = surgery.shrink(job.model, job.spec.example_inputs, config.amount)
        history = job.fit(pruned, train, progress=progress)
        details = {"mode": "structured", "amount": config.amount, **details}
        notes = [(f"{param_count(pruned) / before['params']:.0%} of the parameters remain, in smaller tensors: the exported file and "
                 "the multiply-adds shrink with them on any runtime (measure with edgekit convert / edgekit bench)")]
        return job.result("prune", pruned, before, history, details, notes)
    import copy

    pruned = copy.deepcopy(job.model)
    zlib_before = _zlib_bytes(pruned)
    layers, skipped = _masked_layers(pruned, config, job.spec.source)
    history = job.fit(pruned, train, progress=progress)
    for _, m in layers:  # make the zeros permanent: plain weight tensors again
        tprune.remove(m, "weight")
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    total = sum(m.weight.numel() for _, m in layers)
    details = {"mode": config.mode, "amount": 0.5 if config.mode == "2:4" else config.amount,
               "scope": config.scope if config.mode == "unstructured" else None, "sparsity": round(zeros / total, 4),
               "layers": {n: round(float((m.weight == 0).float().mean()), 4) for n, m in layers}, "kept_whole": skipped,
               "weights_zlib_ratio": round(_zlib_bytes(pruned) / zlib_before, 4)}
    what = "2:4 semi-structured zeros" if config.mode == "2:4" else "zeros"
    notes = [(f"{zeros / total:.0%} of the pruned layers' weights are {what}, but {DENSE_RUNTIMES}: the exported file has the same size "
             "and the same latency as the dense model"),
             f"only a compressor gains: the zeros make the weights zlib-compress to {details['weights_zlib_ratio']:.0%} of the dense weights' compressed size"]
    if config.mode == "2:4":
        notes.append("2:4 pays off on NVIDIA sparse tensor cores (Ampere and later, torch.sparse.to_sparse_semi_structured), not on these CPU runtimes")
    return job.result("prune", pruned, before, history, details, notes)
