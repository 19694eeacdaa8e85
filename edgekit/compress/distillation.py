"""Knowledge distillation: a student learns from a frozen teacher's outputs, and optionally its insides.

Per output, by kind (edgekit.compress.objective): class scores by KL at temperature T (x T², Hinton et
al. 2015) mixed with cross-entropy on labels where there are labels (alpha: the teacher's share),
embeddings by cosine, regression by smooth-L1, probabilities by BCE. On top of that, optionally:
- named intermediate features (`--feature S:T`): MSE after a learned 1x1 conv / linear projection where
  the widths differ (trained with the student, dropped afterwards);
- attention maps (`--attention-weight W`, transformers): MiniLM-style KL between the student's and
  the teacher's attention distributions, block to block (edgekit.compress.transformer).

The student is given (file.py:factory, ...), or derived from the teacher: `--width F` keeps that
fraction of a CNN's channels (edgekit.compress.surgery), `--layers N` keeps N of a transformer's
blocks; both start from the teacher's weights. The teacher may be a black box (an artifact folder or
a bare .tflite/.onnx file): it is only run, through edgekit's runtime, on the (unlabelled) data and,
with `--augment`, on new views of it each epoch; the report counts its calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.compress import surgery, transformer
from edgekit.compress.data import DEFAULT_DATA, DataConfig
from edgekit.compress.result import CompressResult, OutputConfig, param_count, same_outputs, start
from edgekit.compress.teacher import TorchReference, check_augment, is_black_box, load_black_box
from edgekit.compress.train import TrainConfig, outputs_of, seed_everything
from edgekit.errors import ModelLoadError, UsageError

DISTILL_TRAIN = TrainConfig(epochs=3, lr=1e-3)


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the teacher where labels/targets exist too; 1 - alpha goes to them
    width: float | None = None  # no student given: the teacher keeping this fraction of its channels
    layers: int | None = None  # no student given: the teacher (a transformer) keeping this many of its blocks
    features: tuple[tuple[str, str], ...] = ()  # (student layer, teacher layer) pairs whose outputs are matched
    feature_weight: float = 1.0
    attention_weight: float = 0.0  # > 0: match attention maps block to block (transformers)
    augment: tuple[str, ...] = ()  # new inputs each epoch: noise, mixup, crop


def check(cfg: DistillConfig) -> None:
    if cfg.temperature <= 0:
        raise UsageError(f"the temperature must be positive, got {cfg.temperature}", "e.g. --temperature 4")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise UsageError(f"alpha must be in [0, 1], got {cfg.alpha}", "e.g. --alpha 0.7 (0 trains on the labels alone)")
    if cfg.width is not None and not 0.0 < cfg.width < 1.0:
        raise UsageError(f"the width multiplier must be in (0, 1), got {cfg.width}", "e.g. --width 0.5")
    if cfg.layers is not None and cfg.layers < 1:
        raise UsageError(f"a student keeps at least one block, got --layers {cfg.layers}", "e.g. --layers 3")
    if cfg.attention_weight < 0 or cfg.feature_weight < 0:
        raise UsageError("matching weights must be >= 0", "e.g. --attention-weight 1")


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
            if s.ndim != t.ndim or s.ndim not in (2, 3, 4):
                raise UsageError(f"cannot match {s_name} {tuple(s.shape)} to {t_name} {tuple(t.shape)}",
                                 "pair layers with outputs of the same rank: (batch, features), (batch, tokens, features) or (batch, channels, h, w)")
            axis = 1 if s.ndim == 4 else -1
            if s.shape[axis] != t.shape[axis]:
                self.proj[str(i)] = (nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False) if s.ndim == 4
                                     else nn.Linear(s.shape[-1], t.shape[-1], bias=False))

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


class Recording(nn.Module):
    """Runs a model with an AttentionRecorder active; `maps` holds the last forward's attention maps."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.maps: list[torch.Tensor] = []

    def forward(self, *args):
        rec = transformer.AttentionRecorder()
        with rec:
            out = self.inner(*args)
        self.maps = rec.maps
        return out


def _derived(teacher_model: nn.Module, example, config: DistillConfig) -> tuple[nn.Module, dict, list[int] | None]:
    if config.width is not None:
        student, narrowed = surgery.shrink(teacher_model, example, 1.0 - config.width)
        return student, {"student": f"the teacher at width {config.width}", **narrowed}, None
    student, kept = transformer.fewer_layers(teacher_model, config.layers)
    return student, {"student": f"the teacher with {len(kept['kept_layers'])} of its {kept['teacher_layers']} blocks", **kept}, kept["kept_layers"]


def distill(teacher: Any, data: Any, *, student: Any = None, val: Any = None, config: DistillConfig = DistillConfig(),
            train: TrainConfig = DISTILL_TRAIN, data_cfg: DataConfig = DEFAULT_DATA, teacher_weights=None,
            student_weights=None, input_shapes=None, out=None, progress=None, outputs: OutputConfig = OutputConfig()) -> CompressResult:
    """Train `student` (or one derived from the teacher) on the frozen teacher's outputs, and labels where given."""
    from edgekit.sources import load_model

    check(config)
    derive = [x for x in (config.width, config.layers) if x is not None]
    if len(derive) + (student is not None) != 1:
        raise UsageError("give a student, or derive one from the teacher with --width (a CNN) or --layers (a transformer): one of them",
                         "e.g. --student models/small.py:build, --width 0.5 or --layers 3")
    black = is_black_box(teacher)
    if isinstance(teacher, (str, Path)) and str(teacher).endswith((".tflite", ".onnx")) and not black:
        raise ModelLoadError(f"teacher file not found: {teacher}", "give the path of a .tflite/.onnx file or an artifact folder")
    if black:
        if derive:
            raise UsageError(f"the teacher {teacher} is a black box (only runnable): no student can be derived from its weights",
                             "give the student with --student file.py:factory")
        if config.features or config.attention_weight:
            raise UsageError("feature and attention matching need the teacher's PyTorch model; a black box gives only its outputs",
                             "leave out --feature / --attention-weight, or give the teacher as file.py:factory")
    check_augment(config.augment)  # names only; the inputs are checked once the model is loaded
    if black:
        ref = load_black_box(teacher)
        job = start(student, data, val, weights=student_weights, input_shapes=input_shapes, data_cfg=data_cfg, seed=train.seed,
                    out=out, what="student", outputs=outputs, reference=ref, alpha=config.alpha, temperature=config.temperature)
        check_augment(config.augment, job.spec.example_inputs)
        student_model, student_desc, kept = job.model, {"student": job.spec.source}, None
        before = job.before()
        if isinstance(ref.num_params, int) and ref.num_params > 0:  # the artifact's manifest says what the teacher had
            before["params"] = ref.num_params
        else:
            before["params"] = param_count(student_model)
        teacher_desc = {"teacher": ref.source, "teacher_kind": "black box (run through edgekit's runtime)"}
    else:
        job = start(teacher, data, val, weights=teacher_weights, input_shapes=input_shapes, data_cfg=data_cfg, seed=train.seed,
                    out=out, what="teacher", outputs=outputs, alpha=config.alpha, temperature=config.temperature)
        check_augment(config.augment, job.spec.example_inputs)
        teacher_model = job.model
        before = job.before()
        seed_everything(train.seed)  # the student's initial weights depend on the seed only
        if derive:
            student_model, student_desc, kept = _derived(teacher_model, job.spec.example_inputs, config)
        else:
            shapes = [job.spec.input_shapes[0]] if len(job.spec.inputs) == 1 else input_shapes
            sspec = load_model(student, shapes, student_weights)
            with torch.no_grad():
                same_outputs(sspec.reference_outputs(), outputs_of(teacher_model(*job.spec.example_inputs)), "student", job.spec.source)
            student_model, student_desc, kept = sspec.module, {"student": sspec.source}, None
        student_model.requires_grad_(True)
        teacher_desc = {"teacher": job.spec.source}
    student_start = job.validate(student_model)

    trained, extra, params, cleanup = student_model, None, list(student_model.parameters()), []
    live = False
    if config.features:
        match = FeatureMatch(student_model, job.reference.module, config.features, job.spec.example_inputs)
        params += list(match.proj.parameters())
        cleanup.append(match.remove)
        extra, live = (lambda: config.feature_weight * match.loss()), True
    pairs = None
    if config.attention_weight:
        trained = Recording(student_model)
        recording_teacher = Recording(job.reference.module)
        job.reference = TorchReference(recording_teacher, job.reference.source)
        with torch.no_grad():
            trained(*job.spec.example_inputs)
            recording_teacher(*job.spec.example_inputs)
        n_s, n_t = len(trained.maps), len(recording_teacher.maps)
        if not n_s or not n_t:
            raise UsageError("no attention maps found in the " + ("student" if not n_s else "teacher"),
                             "attention matching is for transformers (softmax or scaled_dot_product_attention over keys)")
        pairs = transformer.mapping(n_s, n_t, kept)
        feature_extra = extra

        def extra():
            loss = config.attention_weight * transformer.attention_loss(trained.maps, recording_teacher.maps, pairs)
            return loss + feature_extra() if feature_extra is not None else loss
        live = True
    try:
        history = job.fit(trained, train, params=params, progress=progress, label="distill", augment=config.augment, extra=extra, live=live)
    finally:
        for f in cleanup:
            f()
    details = {**student_desc, **teacher_desc, "temperature": config.temperature, "alpha": config.alpha,
               "features": [list(p) for p in config.features], "feature_weight": config.feature_weight if config.features else None,
               "attention_weight": config.attention_weight or None, "attention_pairs": pairs, "augment": list(config.augment) or None,
               "student_start": {k: round(v, 4) for k, v in student_start.items()}}
    ratio = param_count(student_model) / before["params"]
    notes = [] if black and ratio == 1 else [(f"the student has {ratio:.0%} of the teacher's parameters ({1 / ratio:.1f}x fewer); its file size and "
                               "multiply-adds scale with them on every runtime")]
    if black:
        notes.append(f"the teacher ran on {job.reference.calls:,} samples through edgekit's runtime; its weights were never read")
    return job.result("distill", student_model, before, history, details, notes)

