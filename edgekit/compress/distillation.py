"""Knowledge distillation: a student learns from a frozen teacher's softened outputs.

loss = alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · cross-entropy(labels)
       + feature_weight · Σ MSE(projection(student layer), teacher layer)      (optional pairs)

The T² keeps the soft term's gradients at the hard term's scale (Hinton et al., 2015). Where a
matched pair's widths differ, a learned 1x1 conv (or linear) projection maps the student's
features to the teacher's; it is trained with the student and dropped afterwards. The student is
given (file.py:factory, …) or derived from the teacher by a width multiplier: the teacher with
that fraction of each layer's channels kept (edgekit.compress.surgery), starting from its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.compress import surgery
from edgekit.compress.data import DEFAULT_DATA, DataConfig
from edgekit.compress.result import CompressResult, num_classes, param_count, start
from edgekit.compress.train import TrainConfig, accuracy, fit, seed_everything
from edgekit.errors import ModelLoadError, UsageError

DISTILL_TRAIN = TrainConfig(epochs=3, lr=1e-3)


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the teacher's soft targets; 1 - alpha goes to the labels
    width: float | None = None  # no student given: the teacher keeping this fraction of its channels
    features: tuple[tuple[str, str], ...] = ()  # (student layer, teacher layer) pairs whose outputs are matched
    feature_weight: float = 1.0


def check(cfg: DistillConfig) -> None:
    if cfg.temperature <= 0:
        raise UsageError(f"the temperature must be positive, got {cfg.temperature}", "e.g. --temperature 4")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise UsageError(f"alpha must be in [0, 1], got {cfg.alpha}", "e.g. --alpha 0.7 (0 trains on the labels alone)")
    if cfg.width is not None and not 0.0 < cfg.width < 1.0:
        raise UsageError(f"the width multiplier must be in (0, 1), got {cfg.width}", "e.g. --width 0.5")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
            alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
                    log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


class FeatureMatch(nn.Module):
    """Forward hooks on the paired layers, and a projection per pair whose widths differ."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs, example: tuple[torch.Tensor, ...]):
        super().__init__()
        self.pairs = list(pairs)
        self.seen: dict[tuple[str, str], torch.Tensor] = {}
        self.handles = []
        for side, model in (("student", student), ("teacher", teacher)):
            for s_name, t_name in self.pairs:
                name = s_name if side == "student" else t_name
                try:
                    layer = model.get_submodule(name)
                except AttributeError:
                    some = ", ".join(n for n, _ in list(model.named_modules())[1:6])
                    raise UsageError(f"the {side} has no layer {name!r}", f"name a module, e.g. {some}") from None
                self.handles.append(layer.register_forward_hook(lambda _m, _i, out, key=(side, name): self.seen.__setitem__(key, out)))
        with torch.no_grad():
            student(*example)
            teacher(*example)
        self.proj = nn.ModuleDict()
        for i, (s_name, t_name) in enumerate(self.pairs):
            s, t = self.seen[("student", s_name)], self.seen[("teacher", t_name)]
            if s.ndim != t.ndim or s.ndim not in (2, 4):
                raise UsageError(f"cannot match {s_name} {tuple(s.shape)} to {t_name} {tuple(t.shape)}",
                                 "pair layers with (batch, features) or (batch, channels, h, w) outputs of the same rank")
            if s.shape[1] != t.shape[1]:
                self.proj[str(i)] = (nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False) if s.ndim == 4
                                     else nn.Linear(s.shape[1], t.shape[1], bias=False))

    def loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for i, (s_name, t_name) in enumerate(self.pairs):
            s, t = self.seen[("student", s_name)], self.seen[("teacher", t_name)].detach()
            if str(i) in self.proj:
                s = self.proj[str(i)](s)
            if s.ndim == 4 and s.shape[2:] != t.shape[2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[2:])
            total = total + F.mse_loss(s, t)
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def distill(teacher: Any, data: Any, *, student: Any = None, val: Any = None, config: DistillConfig = DistillConfig(),
            train: TrainConfig = DISTILL_TRAIN, data_cfg: DataConfig = DEFAULT_DATA, teacher_weights=None,
            student_weights=None, input_shapes=None, out=None, progress=None) -> CompressResult:
    """Train `student` (or the teacher narrowed to `config.width`) on the frozen teacher's soft targets and the labels."""
    from edgekit.sources import load_model

    check(config)
    if (student is None) == (config.width is None):
        raise UsageError("give a student or a width multiplier (not both)", "e.g. --student models/small.py:build, or --width 0.5")
    job = start(teacher, data, val, weights=teacher_weights, input_shapes=input_shapes, data_cfg=data_cfg, seed=train.seed,
                out=out, what="teacher")
    teacher_model = job.model
    teacher_model.requires_grad_(False)
    before = {"params": param_count(teacher_model), "accuracy": accuracy(teacher_model, job.val)}
    seed_everything(train.seed)  # the student's initial weights depend on the seed only
    if student is None:
        student_model, narrowed = surgery.shrink(teacher_model, job.spec.example_inputs, 1.0 - config.width)
        student_model.requires_grad_(True)
        student_desc = {"student": f"the teacher at width {config.width}", **narrowed}
    else:
        sspec = load_model(student, [job.spec.input_shapes[0]], student_weights)
        if num_classes(sspec, "student") != num_classes(job.spec, "teacher"):
            raise ModelLoadError(f"the student has {num_classes(sspec)} outputs, the teacher {num_classes(job.spec)}",
                                 "both must classify into the same classes")
        student_model, student_desc = sspec.module, {"student": sspec.source}
    match = FeatureMatch(student_model, teacher_model, config.features, job.spec.example_inputs) if config.features else None

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher_model(xb)
        loss = kd_loss(student_model(xb), t_logits, yb, config.temperature, config.alpha)
        return loss + config.feature_weight * match.loss() if match else loss

    params = list(student_model.parameters()) + (list(match.proj.parameters()) if match else [])
    try:
        history = fit(student_model, job.train, job.val, train, loss_fn=loss_fn, params=params, progress=progress, label="distill")
    finally:
        if match:
            match.remove()
    details = {**student_desc, "teacher": job.spec.source, "temperature": config.temperature, "alpha": config.alpha,
               "features": [list(p) for p in config.features], "feature_weight": config.feature_weight if config.features else None}
    ratio = param_count(student_model) / before["params"]
    notes = [(f"the student has {ratio:.0%} of the teacher's parameters ({1 / ratio:.1f}x fewer); its file size and multiply-adds "
             "scale with them on every runtime")]
    return job.result("distill", student_model, before, history, details, notes)
