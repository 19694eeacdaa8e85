"""Structured channel removal: smaller Conv2d / BatchNorm / Linear tensors, not masks.

torch.fx traces the model to find, for every Conv2d or Linear, where its output channels go:
through BatchNorm (sliced along), channel-wise ops (activations, pooling, dropout) and at most
one flatten, into the next Conv2d or Linear (whose input channels, or the flattened features of
each channel, are sliced). A layer whose channels reach anything else (a residual add, a
concatenation, a grouped conv, a reshape, the model output) keeps all of them, and the report says
why. Which channels go is chosen by torch.nn.utils.prune's L1 structured rule.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import prune

from edgekit.errors import CompressionError

ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid,
                       nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
                         F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardtanh, F.dropout, F.dropout2d}
POOLING_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOLING_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}


@dataclass
class Plan:
    """Which channels each layer keeps (out) and reads (in); what could not be pruned and why."""

    keep_out: dict[str, torch.Tensor] = field(default_factory=dict)
    keep_in: dict[str, torch.Tensor] = field(default_factory=dict)
    norms: dict[str, str] = field(default_factory=dict)  # BatchNorm name -> the layer whose channels it follows
    skipped: dict[str, str] = field(default_factory=dict)


class _Unprunable(Exception):
    pass


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "output":
        return "the model output"
    return f"{getattr(node.target, '__name__', node.target)}"


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    if node.op == "call_function" and node.target is torch.flatten:
        return start == 1 and node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1) == -1
    if node.op == "call_method" and node.target == "flatten":
        return start == 1 and len(node.args) <= 2
    if node.op == "call_method" and node.target in ("view", "reshape"):  # x.view(x.size(0), -1)
        out = node.meta.get("tensor_meta")
        return out is not None and len(out.shape) == 2 and node.args[0].meta["tensor_meta"].shape[0] == out.shape[0]
    return False


def _kind(node: fx.Node, mod: nn.Module | None) -> str | None:
    """'elementwise' (keeps every value's place), 'pooling' (keeps channels), or None."""
    if isinstance(mod, ELEMENTWISE_MODULES) or (node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS) \
            or (node.op == "call_method" and node.target in ELEMENTWISE_METHODS):
        return "elementwise"
    if isinstance(mod, POOLING_MODULES) or (node.op == "call_function" and node.target in POOLING_FUNCTIONS):
        return "pooling"
    return None


def _reads_batch_size_only(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target == "size" and node.args[1:] == (0,)


def _consumers(node: fx.Node, modules, calls, norms: list[str], per_channel: int | None) -> list[tuple[str, int]]:
    """(consumer layer, features per channel) for everything `node`'s channels flow into."""
    found = []
    for user in node.users:
        if user.op == "call_module" and calls[user.target] > 1:
            raise _Unprunable(f"{user.target} is called more than once")
        mod = modules.get(user.target) if user.op == "call_module" else None
        if _reads_batch_size_only(user):
            continue
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and per_channel is None:
            norms.append(user.target)
            found += _consumers(user, modules, calls, norms, per_channel)
        elif user.args and user.args[0] is node and _kind(user, mod) in (("elementwise", "pooling") if per_channel is None else ("elementwise",)):
            found += _consumers(user, modules, calls, norms, per_channel)  # after a flatten, pooling would mix channels
        elif _is_flatten(user, modules) and per_channel is None:
            shape = node.meta["tensor_meta"].shape
            found += _consumers(user, modules, calls, norms, int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1)
        elif isinstance(mod, nn.Conv2d) and mod.groups == 1 and per_channel is None:
            found.append((user.target, 1))
        elif isinstance(mod, nn.Linear) and len(node.meta["tensor_meta"].shape) == 2:
            found.append((user.target, per_channel or 1))
        else:
            raise _Unprunable(f"its output reaches {_describe(user, modules)}")
    return found


def plan(model: nn.Module, example: tuple[torch.Tensor, ...], amount: float) -> Plan:
    """Remove `amount` of the output channels of every layer where that is possible."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.symbolic_trace(model)
        ShapeProp(gm).propagate(*example)
    except Exception as exc:
        raise CompressionError(f"structured pruning needs a model torch.fx can trace: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                           "remove data-dependent Python control flow from forward(), or use --unstructured") from exc
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    p = Plan()
    for node in gm.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        name = node.target
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            p.skipped[name] = "grouped or depthwise convolution"
            continue
        if calls[name] > 1:
            p.skipped[name] = "called more than once"
            continue
        if isinstance(mod, nn.Linear) and len(node.meta["tensor_meta"].shape) != 2:
            p.skipped[name] = "its output has more than two dimensions"
            continue
        norms: list[str] = []
        try:
            consumers = _consumers(node, modules, calls, norms, None)
        except _Unprunable as why:
            p.skipped[name] = str(why)
            continue
        if not consumers:
            p.skipped[name] = "its output is not used by another layer"
            continue
        weight = mod.weight.detach()
        mask = prune.LnStructured(amount, n=1, dim=0).compute_mask(weight, torch.ones_like(weight))
        keep = torch.nonzero(mask.flatten(1).any(1)).flatten()
        if len(keep) == 0:
            raise CompressionError(f"pruning {amount:.0%} of {name}'s channels leaves none", "use a smaller amount")
        p.keep_out[name] = keep
        for bn in norms:
            p.norms[bn] = name
        for consumer, per in consumers:
            p.keep_in[consumer] = (keep[:, None] * per + torch.arange(per)).flatten()
    if not p.keep_out:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(p.skipped.items())[:3])
        raise CompressionError(f"no layer's channels can be removed ({reasons})",
                           "structured pruning handles Conv2d/BatchNorm/Linear chains; use --unstructured for other graphs")
    return p


def _rebuilt(mod: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    w = mod.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    bias = None if mod.bias is None else mod.bias.detach()
    if bias is not None and out_idx is not None:
        bias = bias[out_idx]
    if isinstance(mod, nn.Conv2d):
        new = nn.Conv2d(w.shape[1], w.shape[0], mod.kernel_size, mod.stride, mod.padding, mod.dilation, 1,
                        bias is not None, mod.padding_mode)
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias is not None)
    new.weight.data.copy_(w)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def _rebuilt_norm(bn: nn.Module, idx: torch.Tensor) -> nn.Module:
    new = type(bn)(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for name in ("weight", "bias", "running_mean", "running_var"):
        src = getattr(bn, name)
        if src is not None:
            getattr(new, name).data.copy_(src.detach()[idx])
    if bn.track_running_stats:
        new.num_batches_tracked.data.copy_(bn.num_batches_tracked)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply(model: nn.Module, p: Plan) -> nn.Module:
    """A copy of `model` with the planned channels really removed."""
    model = copy.deepcopy(model)
    for name in sorted(set(p.keep_out) | set(p.keep_in)):
        _replace(model, name, _rebuilt(model.get_submodule(name), p.keep_out.get(name), p.keep_in.get(name)))
    for bn, layer in p.norms.items():
        _replace(model, bn, _rebuilt_norm(model.get_submodule(bn), p.keep_out[layer]))
    return model


def channel_report(before: nn.Module, after: nn.Module, p: Plan) -> dict:
    def width(m: nn.Module, name: str) -> int:
        layer = m.get_submodule(name)
        return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features

    return {"layers": {n: f"{width(before, n)} -> {width(after, n)}" for n in p.keep_out},
            "kept_whole": dict(p.skipped)}


def shrink(model: nn.Module, example: tuple[torch.Tensor, ...], amount: float) -> tuple[nn.Module, dict]:
    """Plan, apply and check: the smaller model and what happened to each layer."""
    p = plan(model, example, amount)
    small = apply(model, p).eval()
    try:
        with torch.no_grad():
            small(*example)
    except Exception as exc:  # a pattern the tracer misread: say so rather than hand back a broken model
        raise CompressionError(f"the pruned model does not run: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                           "this graph is beyond what structured pruning understands; use --unstructured") from exc
    return small, channel_report(model, small, p)


