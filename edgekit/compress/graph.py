"""The model's structure as torch.export sees it: which module each weight-carrying op belongs to.

Every compression step that needs the graph (structured channel surgery, low-rank placement, QAT
preparation) reads it from torch.export, never from torch.fx symbolic tracing of user code: export
runs `forward` on real example tensors, so an ordinary input check (`if x.shape[-2:] != (28, 28):
raise ValueError(...)`) is evaluated once and disappears, where fx's symbolic tracer stops with
"symbolically traced variables cannot be used as inputs to control flow". Data-dependent control
flow (a branch on a tensor's *values*) cannot be exported at all; that is one line with the fix.

The exported graph is ATen-level (`aten.conv2d`, `aten.linear`, `aten.batch_norm`, `aten.prelu`,
...); its parameter placeholders map to the module's own parameter names through the graph
signature, so each op is tied back to the nn.Module whose tensors the surgery then edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from edgekit._util import first_line
from edgekit.errors import CompressionError

aten = torch.ops.aten


def export_graph(model: nn.Module, example: tuple[torch.Tensor, ...], what: str = "this step") -> torch.export.ExportedProgram:
    """torch.export at the example's own shapes (static: shape checks in forward are evaluated, not traced)."""
    try:
        return torch.export.export(model, tuple(example))
    except Exception as exc:  # noqa: BLE001  (export raises many types; all mean "this forward cannot be exported")
        raise export_error(exc, what) from exc


def export_error(exc: BaseException, what: str) -> CompressionError:
    text = first_line(exc, 200)
    data_dependent = any(s in str(exc) for s in ("data-dependent", "data dependent", "GuardOnDataDependent", "Could not guard"))
    hint = ("forward() branches on a tensor's values, which no exported graph can hold: compute both sides and pick with "
            "torch.where, or use torch.cond" if data_dependent else
            "the model must be torch.export-able (what `edgekit convert` needs too); run with --debug for the traceback")
    return CompressionError(f"{what} needs the model's graph, and torch.export cannot trace it: {type(exc).__name__}: {text}", hint)


@dataclass
class Graph:
    """An exported graph with each node's module (by its parameters) and how often each module is called."""

    ep: torch.export.ExportedProgram
    model: nn.Module
    owner: dict[str, str] = field(default_factory=dict)  # placeholder node name -> module name ("conv1")
    calls: dict[str, int] = field(default_factory=dict)  # module name -> ops using its weight

    @classmethod
    def of(cls, model: nn.Module, example: tuple[torch.Tensor, ...], what: str = "this step") -> Graph:
        ep = export_graph(model, example, what)
        g = cls(ep, model)
        sig = ep.graph_signature
        for ph, fqn in {**sig.inputs_to_parameters, **sig.inputs_to_buffers}.items():
            g.owner[ph] = fqn.rpartition(".")[0]
        for node in ep.graph.nodes:
            if node.op == "call_function" and len(node.args) > 1 and isinstance(node.args[1], fx.Node):
                name = g.owner.get(node.args[1].name)
                if name is not None and node.target in (aten.conv2d.default, aten.linear.default):
                    g.calls[name] = g.calls.get(name, 0) + 1
        return g

    @property
    def nodes(self):
        return self.ep.graph.nodes

    def module_of(self, node: fx.Node) -> str | None:
        """The module whose weight a conv/linear/batch_norm/prelu node uses (its second argument)."""
        if node.op == "call_function" and len(node.args) > 1 and isinstance(node.args[1], fx.Node):
            return self.owner.get(node.args[1].name)
        return None

    def layers(self) -> list[tuple[str, fx.Node, nn.Module]]:
        """(module name, op node, module) for every Conv2d / Linear the forward really calls, in graph order."""
        out = []
        for node in self.nodes:
            if node.op == "call_function" and node.target in (aten.conv2d.default, aten.linear.default):
                name = self.module_of(node)
                mod = self.model.get_submodule(name) if name is not None else None
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    out.append((name, node, mod))
        return out


def shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    return tuple(int(d) for d in val.shape) if hasattr(val, "shape") else None
