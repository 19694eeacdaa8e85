"""What every compression method shares: loading the model and its data, the result (a model plus a
short report), and saving it as a torch.export `.pt2` that `edgekit convert` reads."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.compress import data as datalib
from edgekit.compress.data import DEFAULT_DATA, DataConfig, Labelled
from edgekit.compress.train import accuracy, seed_everything, set_mode
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


@dataclass
class Job:
    """A model, its data and the bookkeeping of one compression run."""

    spec: ModelSpec
    train: Labelled
    val: Labelled
    data_source: str | None
    seed: int
    started: float = field(default_factory=time.perf_counter)

    @property
    def model(self) -> nn.Module:
        return self.spec.module

    def result(self, method: str, model: nn.Module, before: dict, history: list[dict], details: dict,
               notes: Sequence[str] = (), after_accuracy: float | None = None) -> CompressResult:
        params = param_count(model)
        acc = accuracy(model, self.val) if after_accuracy is None else after_accuracy
        report = {
            "source": self.spec.source, "data": self.train.summary(), "val": self.val.summary(), "seed": self.seed,
            "params_before": before["params"], "params_after": params, "param_ratio": round(params / max(1, before["params"]), 4),
            "val_accuracy_before": round(before["accuracy"], 4), "val_accuracy_after": round(acc, 4),
            **details, "history": history, "notes": list(notes), "seconds": round(time.perf_counter() - self.started, 2),
        }
        return CompressResult(method, model, self.spec.example_inputs, report, self.data_source)


def start(model: Any, data: Any, val: Any = None, *, weights=None, input_shapes=None, data_cfg: DataConfig = DEFAULT_DATA,
          seed: int = 0, out: str | Path | None = None, what: str = "model") -> Job:
    """Seed, load the model (a factory builds its initial weights under the seed) and its data, and check both."""
    if out is not None:
        check_out(out)
    seed_everything(seed)
    spec = model if isinstance(model, ModelSpec) else load_model(model, input_shapes, weights)
    train, held = datalib.train_val(data, val, spec.input_names, spec.input_shapes, data_cfg, seed)
    datalib.check_classes(train, held, num_classes(spec, what))
    return Job(spec, train, held, datalib.describe(data), seed)


def num_classes(spec: ModelSpec, what: str = "model") -> int:
    outs = spec.reference_outputs()
    if len(outs) != 1 or outs[0].ndim != 2:
        raise ModelLoadError(f"the {what} {spec.source} does not return one (batch, classes) tensor of logits",
                             "compression trains classifiers; wrap the model so it returns the logits")
    return int(outs[0].shape[1])


def layers_of(model: nn.Module, source: str, kinds=(nn.Conv2d, nn.Linear)) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    if not found:
        raise ModelLoadError(f"{source} has no {' / '.join(k.__name__ for k in kinds)} modules to compress",
                             "a torch.export or TorchScript file keeps only the graph: give the Python model as file.py:factory (with --weights)")
    return found


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
