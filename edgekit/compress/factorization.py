"""Low-rank factorization: each Linear / Conv2d weight W (out x in·kh·kw) becomes U·V from its SVD,
two thinner layers (a kh x kw conv to `rank` channels, then a 1x1 conv; or two Linears), wherever
that holds at least a quarter fewer parameters. The rank keeps a share of the singular values'
energy (sum of s²), or one energy threshold for all layers is searched so the model fits a
parameter count. Then fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgekit.compress.data import DEFAULT_DATA, DataConfig
from edgekit.compress.graph import Graph
from edgekit.compress.result import CompressResult, OutputConfig, layers_of, param_count, start
from edgekit.compress.train import TrainConfig
from edgekit.errors import CompressionError, UsageError

LOWRANK_TRAIN = TrainConfig(epochs=1, lr=5e-4)
MIN_SAVING = 0.25  # factor a layer only if that removes at least this share of its weights (it adds a layer)


@dataclass(frozen=True)
class LowRankConfig:
    energy: float | None = 0.95  # keep the smallest rank whose singular values hold this share of sum(s^2)
    target_params: int | None = None  # instead: the highest energy (same for every layer) that fits this many parameters


@dataclass
class _Layer:
    name: str
    module: nn.Module
    s: torch.Tensor  # singular values, descending
    u: torch.Tensor
    vh: torch.Tensor

    @property
    def dense_params(self) -> int:
        return self.module.weight.numel()

    def rank_for(self, energy: float) -> int:
        share = torch.cumsum(self.s ** 2, 0) / torch.sum(self.s ** 2)
        return min(len(self.s), int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype))) + 1)

    def factored_params(self, rank: int) -> int:
        out, k = self.u.shape[0], self.vh.shape[1]
        return rank * (out + k)


def _svd_layers(model: nn.Module, source: str, example: tuple[torch.Tensor, ...]) -> list[_Layer]:
    """The Conv2d/Linear layers the exported forward really calls, each once (a shared layer stays whole)."""
    layers_of(model, source)
    g = Graph.of(model, example, "low-rank factorization")
    found = []
    for name, _node, m in g.layers():
        if (isinstance(m, nn.Conv2d) and m.groups != 1) or g.calls.get(name, 0) != 1 or any(la.name == name for la in found):
            continue
        u, s, vh = torch.linalg.svd(m.weight.detach().flatten(1), full_matrices=False)
        found.append(_Layer(name, m, s, u, vh))
    return found


def _ranks(layers: list[_Layer], energy: float) -> dict[str, int]:
    """Per layer: its rank at `energy`, or 0 (stays dense) when factoring would save too little."""
    ranks = {}
    for layer in layers:
        r = layer.rank_for(energy)
        ranks[layer.name] = r if layer.factored_params(r) <= (1 - MIN_SAVING) * layer.dense_params else 0
    return ranks


def _params_at(total: int, layers: list[_Layer], ranks: dict[str, int]) -> int:
    return total - sum(la.dense_params - la.factored_params(ranks[la.name]) for la in layers if ranks[la.name])


def _energy_for(total: int, layers: list[_Layer], target: int) -> float:
    """The highest shared energy threshold whose factored model has at most `target` parameters."""
    lo, hi = 0.0, 1.0
    if _params_at(total, layers, _ranks(layers, lo)) > target:
        smallest = _params_at(total, layers, _ranks(layers, lo))
        raise CompressionError(f"{target:,} parameters are out of reach: rank-1 factors still leave {smallest:,}",
                               "ask for more parameters, or prune channels first (edgekit prune --structured)")
    for _ in range(40):
        mid = (lo + hi) / 2
        if _params_at(total, layers, _ranks(layers, mid)) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def factor(layer: _Layer, rank: int) -> nn.Sequential:
    """Two layers whose product is the rank-`rank` SVD truncation of the layer's weight (bias on the second)."""
    module = layer.module
    root = layer.s[:rank].sqrt()
    first_w = root[:, None] * layer.vh[:rank]  # (rank, in·kh·kw)
    second_w = layer.u[:, :rank] * root[None, :]  # (out, rank)
    has_bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        first = copy.deepcopy(module)  # its own class and forward (e.g. TensorFlow-style "SAME" padding), fewer filters
        first.weight = nn.Parameter(first_w.reshape(rank, *module.weight.shape[1:]).clone())
        first.bias, first.out_channels = None, rank
        second = nn.Conv2d(rank, module.out_channels, 1, bias=has_bias)
        second.weight.data.copy_(second_w[:, :, None, None])
    else:
        first, second = nn.Linear(module.in_features, rank, bias=False), nn.Linear(rank, module.out_features, bias=has_bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    if has_bias:
        second.bias.data.copy_(module.bias.detach())
    return nn.Sequential(first, second)


def lowrank(model: Any, data: Any, *, val: Any = None, config: LowRankConfig = LowRankConfig(), train: TrainConfig = LOWRANK_TRAIN,
            data_cfg: DataConfig = DEFAULT_DATA, weights=None, input_shapes=None, out=None, progress=None,
            outputs: OutputConfig = OutputConfig()) -> CompressResult:
    """Factor `model`'s layers by SVD and fine-tune (toward labels/targets, else the unfactored model's outputs);
    the report lists each layer's rank."""
    if (config.energy is None) == (config.target_params is None):
        raise UsageError("give either an energy share or a target parameter count", "e.g. --energy 0.95 or --target-params 50000")
    if config.energy is not None and not 0.0 < config.energy <= 1.0:
        raise UsageError(f"the energy share must be in (0, 1], got {config.energy}", "e.g. --energy 0.95")
    job = start(model, data, val, weights=weights, input_shapes=input_shapes, data_cfg=data_cfg, seed=train.seed, out=out,
                outputs=outputs)
    before = job.before()
    small = copy.deepcopy(job.model)
    layers = _svd_layers(small, job.spec.source, job.spec.example_inputs)
    energy = config.energy if config.energy is not None else _energy_for(before["params"], layers, config.target_params)
    ranks = _ranks(layers, energy)
    if not any(ranks.values()):
        raise CompressionError(f"at {energy:.1%} energy no layer gets smaller when factored", "lower --energy")
    for layer in layers:
        if ranks[layer.name]:
            parent, _, child = layer.name.rpartition(".")
            setattr(small.get_submodule(parent) if parent else small, child, factor(layer, ranks[layer.name]))
    small.eval()
    factored = job.validate(small)
    history = job.fit(small, train, progress=progress)
    details = {"energy": round(energy, 4), "target_params": config.target_params,
               "ranks": {la.name: (f"{ranks[la.name]} of {len(la.s)}" if ranks[la.name] else "dense") for la in layers},
               "factored_before_finetune": {k: round(v, 4) for k, v in factored.items()}}
    notes = [(f"{param_count(small) / before['params']:.0%} of the parameters remain, as dense layers: file size and multiply-adds "
             "shrink with them on every runtime, at the cost of one more (thin) layer per factored one")]
    return job.result("lowrank", small, before, history, details, notes)
