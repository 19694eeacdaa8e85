"""Transformer students and attention maps, for distillation (MiniLM / TinyBERT style).

- A student with fewer layers is derived from the teacher: the teacher's own stack of identical
  blocks (the longest nn.ModuleList of one block type, e.g. BERT's `encoder.layer`) keeps N of its
  blocks, evenly spaced and always the last (6 -> 3 keeps 1, 3, 5), with their weights; embeddings
  and everything else are the teacher's. Student block j is then matched to the teacher block it
  came from.
- Attention maps are recorded without touching the model's code: a TorchFunctionMode sees every
  softmax whose input is (batch, heads, queries, keys) with as many queries as keys (eager
  attention) and every scaled_dot_product_attention call (whose weights it recomputes from q, k and
  the mask). Map i is block i's attention. The loss is MiniLM's: KL(teacher || student) per
  attention row, averaged over rows, heads and the matched blocks; with different head counts both
  sides are averaged over heads first.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from edgekit.errors import CompressionError


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest nn.ModuleList whose children are all one block type."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise CompressionError("the teacher has no stack of identical blocks (an nn.ModuleList) to take layers from",
                               "give the student with --student, or use --width for a CNN")
    return best


def kept_layers(total: int, keep: int) -> list[int]:
    """`keep` of `total` block indices, evenly spaced, the last always kept."""
    if not 1 <= keep < total:
        raise CompressionError(f"the teacher has {total} blocks; a student keeps between 1 and {total - 1}", f"e.g. --layers {max(1, total // 2)}")
    step = total / keep
    return sorted({min(total - 1, int(math.ceil((j + 1) * step)) - 1) for j in range(keep)})


def fewer_layers(model: nn.Module, keep: int) -> tuple[nn.Module, dict]:
    """A copy of `model` keeping `keep` of its blocks; returns it and what was kept."""
    name, stack = layer_stack(model)
    idx = kept_layers(len(stack), keep)
    student = copy.deepcopy(model)  # its config objects are the copy's own, so they are edited in place
    own = student.get_submodule(name)
    parent, _, child = name.rpartition(".")
    setattr(student.get_submodule(parent) if parent else student, child, nn.ModuleList([own[i] for i in idx]))
    for m in student.modules():  # transformers keeps the depth in its config too
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "num_hidden_layers", None) == len(stack):
            cfg.num_hidden_layers = len(idx)
    return student, {"stack": name, "teacher_layers": len(stack), "kept_layers": idx}


def student(model: nn.Module, layers: int) -> nn.Module:
    """The teacher keeping `layers` of its blocks (see fewer_layers), not yet trained: a distillation's starting point."""
    return fewer_layers(model, layers)[0]


def _sdpa_weights(q, k, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        L, S = s.shape[-2:]
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    return s.softmax(-1)


class AttentionRecorder(TorchFunctionMode):
    """Collects each attention map computed while active (see the module docstring)."""

    SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}

    def __init__(self):
        super().__init__()
        self.maps: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self.SOFTMAX and isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] == out.shape[-2]:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (-1, 3):
                self.maps.append(out)
        elif func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            rest = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:]), **kwargs)
            # inside its own handler the mode is switched off, so these ops are not recorded again
            self.maps.append(_sdpa_weights(q, k, rest.get("attn_mask"), is_causal=rest.get("is_causal", False), scale=rest.get("scale")))
        return out


def mapping(student_layers: int, teacher_layers: int, kept: list[int] | None = None) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs: the blocks a derived student kept, else evenly spaced, last to last."""
    if kept is not None:
        return list(enumerate(kept))
    return [(j, kept_layers(teacher_layers, student_layers)[j]) for j in range(student_layers)] if student_layers < teacher_layers \
        else [(j, j) for j in range(min(student_layers, teacher_layers))]


def attention_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], pairs: list[tuple[int, int]]) -> torch.Tensor:
    total = torch.zeros(())
    for s_i, t_i in pairs:
        s, t = student_maps[s_i], teacher_maps[t_i].detach()
        if s.shape != t.shape:
            if s.shape[-2:] != t.shape[-2:]:
                raise CompressionError(f"student attention {tuple(s.shape)} and teacher attention {tuple(t.shape)} differ in length",
                                       "student and teacher must read the same sequence")
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        total = total + (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1).mean()
    return total / max(1, len(pairs))
