"""What every compression method shares: loading the model and its data, the result (a model plus a
short report), and saving it as a torch.export `.pt2` that `edgekit convert` reads."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.compress import data as datalib
from edgekit.compress import objective
from edgekit.compress.data import DEFAULT_DATA, DataConfig, Samples
from edgekit.compress.objective import Objective
from edgekit.compress.train import TrainConfig, fit, outputs_of, predict, seed_everything, set_mode
from edgekit.errors import ModelLoadError, UsageError
from edgekit.sources import ModelSpec, load_model

META_FILE = "edgekit.json"  # extra file inside the .pt2: how the model was made, and on what data


@dataclass
class CompressResult:
    """A compressed model (eval mode) and its report; `save()` writes the `.pt2` for `edgekit convert`."""

    method: str
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    report: dict
    data_source: str | None = None  # recorded in the .pt2: convert calibrates/validates on it by default

    @property
    def num_params(self) -> int:
        return param_count(self.model)

    def to_json(self) -> dict:
        return {"method": self.method, **self.report}

    def save(self, path: str | Path) -> Path:
        """torch.export the model (batch dimension dynamic where the model allows) and write it atomically."""
        path = check_out(path)
        ep = export(self.model, self.example_inputs)
        meta = {"method": self.method, "data": self.data_source, "report": {k: v for k, v in self.report.items() if k != "history"}}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.pt2")  # torch wants .pt2
        os.close(fd)
        try:
            torch.export.save(ep, tmp, extra_files={META_FILE: json.dumps(meta, default=str)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def check_out(path: str | Path) -> Path:
    """Checked before any training, so a bad --out does not cost an epoch."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise UsageError(f"the output {path} must end in .pt2 (a torch.export program)", "e.g. --out net-small.pt2")
    if path.is_dir():
        raise UsageError(f"the output {path} is a folder", "give a file name ending in .pt2")
    return path


def batch_dynamic(model: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension: traced at batch 2 (torch specialises a batch of 1),
    the example inputs kept as given so `edgekit convert` exports at the model's own batch."""
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, tuple(t[:1].expand(2, *t.shape[1:]).contiguous() for t in example),
                             dynamic_shapes=tuple({0: batch} for _ in example))
    ep.example_inputs = (tuple(example), {})
    return ep


def export(model: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """The eval-mode model with a dynamic batch, or with static shapes when its code fixes the batch."""
    set_mode(model, training=False)
    try:
        return batch_dynamic(model, example)
    except Exception:  # noqa: BLE001  (any export failure: try again without the dynamic batch)
        return torch.export.export(model, tuple(example))


@dataclass(frozen=True)
class OutputConfig:
    """What the outputs mean and how much each counts (`--output NAME=KIND`, `--output-weight NAME=W`)."""

    kinds: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()


@dataclass
class Job:
    """A model, its data, what each output learns, and the bookkeeping of one compression run."""

    spec: ModelSpec
    train: Samples
    val: Samples
    data_source: str | None
    seed: int
    reference: Any  # TorchReference / RuntimeReference: the model before compression, or the teacher
    objective: Objective
    started: float = field(default_factory=time.perf_counter)
    _ref_train: list[np.ndarray] | None = None
    _ref_val: list[np.ndarray] | None = None

    @property
    def model(self) -> nn.Module:
        return self.spec.module

    @property
    def ref_train(self) -> list[np.ndarray]:
        if self._ref_train is None:
            self._ref_train = self.reference.run(self.train.arrays)
        return self._ref_train

    @property
    def ref_val(self) -> list[np.ndarray]:
        if self._ref_val is None:
            self._ref_val = self.reference.run(self.val.arrays)
        return self._ref_val

    def needs_reference(self) -> bool:
        return any(h.target == "reference" for h in self.objective.heads) or self.objective.alpha is not None

    def loss_fn(self, student: nn.Module, augment: tuple[str, ...] = (), extra=None, live: bool = False):
        """The training loss of `student` on a batch: every output toward what it learns, plus `extra()` (feature or
        attention matching, read after both forward passes). The reference's outputs on the training data are computed
        once, unless it must run on each batch: on augmented inputs, or (`live`) for its features/attention maps."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        labels = None if self.train.labels is None else torch.from_numpy(self.train.labels)
        targets = {k: torch.from_numpy(v) for k, v in self.train.targets.items()}
        cached = None if augment or live or not self.needs_reference() else [torch.from_numpy(r) for r in self.ref_train]

        def fn(xb: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
            ref = None
            if augment:
                from edgekit.compress.teacher import augment as augmented

                xb = augmented(xb, augment, gen)
            if augment or live:
                ref = self.reference.tensors(xb)
            elif cached is not None:
                ref = [r[idx] for r in cached]
            outs = outputs_of(student(*xb))
            loss = self.objective.loss(outs, ref, None if labels is None else labels[idx], {k: v[idx] for k, v in targets.items()})
            return loss + extra() if extra is not None else loss

        return fn

    def validate(self, model: nn.Module) -> dict[str, float]:
        return self.objective.scores(predict(model, self.val), self.ref_val if self.needs_reference() else None, self.val)

    def show(self, val: dict[str, float]) -> str:
        h = self.objective.heads[0]
        return f"{h.figure.replace('_', ' ')} {objective.show(h.figure, val.get(h.name))}"

    def before(self) -> dict:
        """Parameters and figures of the model before compression (the teacher, for distillation): against labels or
        targets; an output learning the reference is the reference itself there, so it has no before figure."""
        scores = self.validate(self.model)
        return {"params": param_count(self.model),
                "scores": {h.name: (None if h.target == "reference" else scores[h.name]) for h in self.objective.heads}}

    def fit(self, student: nn.Module, train: TrainConfig, *, params=None, progress=None, label: str = "fine-tune", augment=(), extra=None,
            live: bool = False, validate=None):
        validate = validate or (lambda: self.validate(student))
        return fit(student, self.train, train, self.loss_fn(student, augment, extra, live), validate, params=params,
                   progress=progress, label=label, show=self.show)

    def result(self, method: str, model: nn.Module, before: dict, history: list[dict], details: dict,
               notes: Sequence[str] = (), after: dict[str, float] | None = None) -> CompressResult:
        params = param_count(model)
        after = self.validate(model) if after is None else after
        outputs = {h.name: {**h.to_json(), "before": _round(before["scores"].get(h.name)), "after": _round(after[h.name])}
                   for h in self.objective.heads}
        report = {
            "source": self.spec.source, "data": self.train.summary(), "val": self.val.summary(), "seed": self.seed,
            "params_before": before["params"], "params_after": params, "param_ratio": round(params / max(1, before["params"]), 4),
            "outputs": outputs,
        }
        labelled = next((h for h in self.objective.heads if h.figure == "accuracy"), None)
        if labelled is not None:  # the one-classifier figures earlier versions reported, kept under their names
            report["val_accuracy_before"] = outputs[labelled.name]["before"]
            report["val_accuracy_after"] = outputs[labelled.name]["after"]
        if self.needs_reference():
            report["reference"] = self.reference.source
            report["reference_calls"] = self.reference.calls
        notes = list(notes) + [f"{h.name}: its kind is unknown, so it learned by MSE and is scored by SQNR; declare it with "
                               f"--output {h.name}=KIND (class, embedding, regression, probability, state) for its own loss and figure"
                               for h in self.objective.heads if h.kind.kind == "tensor"]
        report.update({**details, "history": history, "notes": notes, "seconds": round(time.perf_counter() - self.started, 2)})
        return CompressResult(method, model, self.spec.example_inputs, report, self.data_source)


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def start(model: Any, data: Any, val: Any = None, *, weights=None, input_shapes=None, data_cfg: DataConfig = DEFAULT_DATA,
          seed: int = 0, out: str | Path | None = None, what: str = "model", outputs: OutputConfig = OutputConfig(),
          reference=None, alpha: float | None = None, temperature: float = 1.0) -> Job:
    """Seed, load the model (a factory builds its initial weights under the seed) and its data, decide what each
    output learns. `reference`: what the outputs without labels learn from (default: the model itself, frozen)."""
    from edgekit.compress.teacher import TorchReference
    from edgekit.validate import declared_kinds

    if out is not None:
        check_out(out)
    seed_everything(seed)
    spec = model if isinstance(model, ModelSpec) else load_model(model, input_shapes, weights)
    if not isinstance(spec, ModelSpec):
        raise ModelLoadError(f"the {what} {spec.source} is not a PyTorch model",
                             "compression trains PyTorch models: give file.py:factory, a .pt2 or a .pt (an ONNX or TFLite file can be a teacher)")
    train, held = datalib.train_val(data, val, spec, data_cfg, seed)
    self_reference = reference is None
    if self_reference:
        reference = TorchReference(copy.deepcopy(spec.module), spec.source)
    names = spec.output_names
    probe = train.take(np.arange(min(len(train), 256)))
    ref = reference.run(probe.arrays)
    own = ref if self_reference else predict(spec.module, probe)
    same_outputs(own, ref, what, reference.source)
    declared = declared_kinds(outputs.kinds, spec_attr=spec.output_spec)
    heads = objective.heads_for(names, ref, probe, declared, objective.parse_weights(outputs.weights, names), own)
    reference.calls = 0  # the probe is not part of what training costs
    return Job(spec, train, held, datalib.describe(data), seed, reference, objective.Objective(heads, temperature, alpha))


def same_outputs(mine, theirs, what: str, source: str) -> None:
    """The model learning and the reference it learns from give the same outputs (count, and shapes past the batch)."""
    a, b = [tuple(o.shape[1:]) for o in mine], [tuple(o.shape[1:]) for o in theirs]
    if a != b:
        raise ModelLoadError(f"the {what}'s outputs {a} differ from those of {source} {b}",
                             "teacher and student must give the same outputs, in the same order (e.g. the same classes)")


def layers_of(model: nn.Module, source: str, kinds=(nn.Conv2d, nn.Linear)) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    if not found:
        raise ModelLoadError(f"{source} has no {' / '.join(k.__name__ for k in kinds)} modules to compress",
                             "a torch.export or TorchScript file keeps only the graph: give the Python model as file.py:factory (with --weights)")
    return found


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
