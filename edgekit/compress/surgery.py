"""Structured channel removal: smaller Conv2d / BatchNorm / PReLU / Linear tensors, not masks.

The graph comes from torch.export (edgekit.compress.graph), so a forward with an input check or
other shape-only Python runs as written. For every Conv2d or Linear, the surgery follows where its
output channels go (axis 1 of a conv's output, the last axis of a Linear's): through BatchNorm,
PReLU and depthwise convolutions (sliced along), channel-wise ops (activations, dropout, scalar
arithmetic, spatial padding and pooling, a spatial mean) and at most one flatten, into the next
Conv2d or Linear, whose input channels (or the flattened features of each channel) are sliced. A
layer whose channels reach anything else (a residual add, a concatenation, a reshape into heads,
LayerNorm, the model output) keeps all of them, and the report says why. That covers CNN stacks,
MobileNet/EfficientNet expansion channels (1x1 expand -> depthwise -> 1x1 project) and a
transformer's feed-forward width (Linear -> GELU -> Linear). Which channels go is chosen by
torch.nn.utils.prune's L1 structured rule.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.utils import prune

from edgekit._util import first_line
from edgekit.compress.graph import Graph, aten, shape
from edgekit.errors import CompressionError


def _ops(*names: str) -> set:
    """aten overloads by name (`relu.default`), those this torch has."""
    out = set()
    for n in names:
        op, _, overload = n.partition(".")
        packet = getattr(aten, op, None)
        if packet is not None and hasattr(packet, overload or "default"):
            out.add(getattr(packet, overload or "default"))
    return out


ELEMENTWISE = _ops("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardswish",
                   "hardswish_", "hardsigmoid", "leaky_relu", "leaky_relu_", "elu", "mish", "dropout", "dropout_", "feature_dropout",
                   "clone", "contiguous", "alias", "detach", "abs")
SCALAR_ARITH = _ops("mul.Tensor", "mul.Scalar", "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "div.Tensor", "div.Scalar",
                    "pow.Tensor_Scalar", "clamp", "clamp_min", "clamp_max")
POOLING = _ops("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d_with_indices")
PADDING = _ops("pad", "constant_pad_nd")
BATCH_NORM = _ops("batch_norm", "_native_batch_norm_legit_no_training")
RESHAPE = _ops("view", "reshape", "_unsafe_view", "flatten.using_ints")
CONV, LINEAR, PRELU, MEAN = aten.conv2d.default, aten.linear.default, aten.prelu.default, aten.mean.dim


@dataclass
class Plan:
    """Which channels each layer keeps (out) and reads (in); what could not be pruned and why."""

    keep_out: dict[str, torch.Tensor] = field(default_factory=dict)
    keep_in: dict[str, torch.Tensor] = field(default_factory=dict)
    norms: dict[str, str] = field(default_factory=dict)  # channel-wise module (BN, PReLU, depthwise conv) -> the layer it follows
    skipped: dict[str, str] = field(default_factory=dict)


class _Unprunable(Exception):
    pass


def _describe(node: fx.Node, g: Graph) -> str:
    if node.op == "output":
        return "the model output"
    name = g.module_of(node)
    op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    if name:
        return f"{name} ({type(g.model.get_submodule(name)).__name__})"
    stack = list(node.meta.get("nn_module_stack", {}).values())
    where = f" in {stack[-1][0]}" if stack and stack[-1][0] else ""
    return f"{op}{where}"


def _others_are_constants(node: fx.Node, x: fx.Node) -> bool:
    return node.args and node.args[0] is x and not any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values()))


def _is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


class _Walk:
    """Where one layer's output channels flow: consumer layers (with features per channel) and channel-wise modules."""

    def __init__(self, g: Graph):
        self.g = g
        self.consumers: list[tuple[str, int]] = []
        self.channelwise: list[str] = []

    def module(self, node: fx.Node) -> tuple[str | None, nn.Module | None]:
        name = self.g.module_of(node)
        return name, (self.g.model.get_submodule(name) if name is not None else None)

    def follow(self, node: fx.Node, axis: int, per_channel: int | None) -> None:
        ndim = len(shape(node) or ())
        for user in node.users:
            self.one(node, user, axis, ndim, per_channel)

    def one(self, node: fx.Node, user: fx.Node, axis: int, ndim: int, per_channel: int | None) -> None:
        t = user.target
        first = bool(user.args) and user.args[0] is node
        if user.op == "output":
            raise _Unprunable("its output reaches the model output")
        if t is operator.getitem and user.args[1] == 0:
            return self.follow(user, axis, per_channel)
        if t in (CONV, LINEAR, PRELU) or t in BATCH_NORM:
            name, mod = self.module(user)
            if not first or name is None:
                raise _Unprunable(f"its output reaches {_describe(user, self.g)}")
            if t in (CONV, LINEAR) and self.g.calls.get(name, 0) > 1:
                raise _Unprunable(f"{name} is called more than once")
            if t is CONV and axis == 1 and per_channel is None:
                if mod.groups == 1:
                    self.consumers.append((name, 1))
                    return None
                if _is_depthwise(mod):
                    self.channelwise.append(name)
                    return self.follow(user, axis, None)
            if t is LINEAR and axis == ndim - 1:
                self.consumers.append((name, per_channel or 1))
                return None
            if t in BATCH_NORM and axis == 1 and per_channel is None:
                self.channelwise.append(name)
                return self.follow(user, axis, None)
            if t is PRELU and isinstance(mod, nn.PReLU):
                if mod.num_parameters == 1:
                    return self.follow(user, axis, per_channel)
                if axis == 1 and per_channel is None:
                    self.channelwise.append(name)
                    return self.follow(user, axis, None)
            raise _Unprunable(f"its output reaches {_describe(user, self.g)}")
        if first and (t in ELEMENTWISE or (t in SCALAR_ARITH and _others_are_constants(user, node))):
            return self.follow(user, axis, per_channel)
        if first and per_channel is None and axis == 1 and ndim == 4:
            if t in POOLING:
                return self.follow(user, axis, None)
            if t in PADDING and len(user.args) > 1 and len(user.args[1]) <= 4:  # (left, right, top, bottom): spatial only
                return self.follow(user, axis, None)
            if t is MEAN:
                dims = {d % ndim for d in user.args[1]}
                if dims <= {2, 3}:
                    return self.follow(user, axis, None)
        if first and t in RESHAPE and axis == 1 and per_channel is None:
            before, after = shape(node), shape(user)
            if before and after and len(after) == 2 and after[0] == before[0] and len(before) >= 2:
                rest = int(torch.tensor(before[2:]).prod()) if len(before) > 2 else 1
                if after[1] == before[1] * rest:  # (N, C, H, W) -> (N, C*H*W): each channel's H*W features in a row
                    return self.follow(user, 1, rest if len(before) > 2 else None)
        raise _Unprunable(f"its output reaches {_describe(user, self.g)}")


def plan(model: nn.Module, example: tuple[torch.Tensor, ...], amount: float) -> Plan:
    """Remove `amount` of the output channels of every layer where that is possible."""
    g = Graph.of(model, example, "structured pruning")
    p = Plan()
    for name, node, mod in g.layers():
        if name in p.keep_out or name in p.skipped:
            continue
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            p.skipped[name] = "grouped or depthwise convolution (its channels follow the layer before it)"
            continue
        if g.calls.get(name, 0) > 1:
            p.skipped[name] = "called more than once"
            continue
        axis = 1 if isinstance(mod, nn.Conv2d) else len(shape(node)) - 1
        walk = _Walk(g)
        try:
            walk.follow(node, axis, None)
        except _Unprunable as why:
            p.skipped[name] = str(why)
            continue
        if not walk.consumers:
            p.skipped[name] = "its output is not used by another layer"
            continue
        weight = mod.weight.detach()
        mask = prune.LnStructured(amount, n=1, dim=0).compute_mask(weight, torch.ones_like(weight))
        keep = torch.nonzero(mask.flatten(1).any(1)).flatten()
        if len(keep) == 0:
            raise CompressionError(f"pruning {amount:.0%} of {name}'s channels leaves none", "use a smaller amount")
        p.keep_out[name] = keep
        for cw in walk.channelwise:
            p.norms[cw] = name
        for consumer, per in walk.consumers:
            p.keep_in[consumer] = (keep[:, None] * per + torch.arange(per)).flatten()
    if not p.keep_out:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(p.skipped.items())[:3])
        raise CompressionError(f"no layer's channels can be removed ({reasons})",
                               "structured pruning follows Conv2d/BatchNorm/Linear chains; use --unstructured for other graphs")
    return p


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


def _rebuilt(mod: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    """A copy of the layer (its own class and forward, e.g. a conv with TensorFlow-style padding) with smaller tensors."""
    new = copy.deepcopy(mod)
    w = mod.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    new.weight = _param(w)
    if mod.bias is not None and out_idx is not None:
        new.bias = _param(mod.bias.detach()[out_idx])
    if isinstance(mod, nn.Conv2d):
        new.out_channels, new.in_channels = w.shape[0], w.shape[1] * mod.groups
    else:
        new.out_features, new.in_features = w.shape[0], w.shape[1]
    return new


def _rebuilt_channelwise(mod: nn.Module, idx: torch.Tensor) -> nn.Module:
    """BatchNorm, PReLU or a depthwise conv keeping the channels `idx`."""
    new = copy.deepcopy(mod)
    if _is_depthwise(mod):
        new.weight = _param(mod.weight.detach()[idx])
        if mod.bias is not None:
            new.bias = _param(mod.bias.detach()[idx])
        new.in_channels = new.out_channels = new.groups = len(idx)
        return new
    if isinstance(mod, nn.PReLU):
        new.weight = _param(mod.weight.detach()[idx])
        new.num_parameters = len(idx)
        return new
    for name in ("weight", "bias"):
        if getattr(mod, name, None) is not None:
            setattr(new, name, _param(getattr(mod, name).detach()[idx]))
    for name in ("running_mean", "running_var"):
        if getattr(mod, name, None) is not None:
            setattr(new, name, getattr(mod, name).detach()[idx].clone())
    new.num_features = len(idx)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply(model: nn.Module, p: Plan) -> nn.Module:
    """A copy of `model` with the planned channels really removed."""
    model = copy.deepcopy(model)
    for name in sorted(set(p.keep_out) | set(p.keep_in)):
        _replace(model, name, _rebuilt(model.get_submodule(name), p.keep_out.get(name), p.keep_in.get(name)))
    for cw, layer in p.norms.items():
        _replace(model, cw, _rebuilt_channelwise(model.get_submodule(cw), p.keep_out[layer]))
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
    except Exception as exc:  # a pattern the graph walk misread: say so rather than hand back a broken model
        raise CompressionError(f"the pruned model does not run: {type(exc).__name__}: {first_line(exc, 160)}",
                               "this graph is beyond what structured pruning understands; use --unstructured") from exc
    return small, channel_report(model, small, p)
