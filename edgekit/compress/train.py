"""A small seeded training loop shared by the compression methods: Adam with a cosine schedule, one rich
progress bar per epoch showing the running loss and the first output's validation figure."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgekit.compress.data import Samples

# (input batch tensors, indices of those samples in the training data) -> scalar loss
LossFn = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """How a model is (fine-)tuned. epochs=0 skips training."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


def seed_everything(seed: int) -> None:
    """torch's global generator: initial weights of a factory-built model, dropout."""
    torch.manual_seed(seed)


def outputs_of(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


@torch.no_grad()
def predict(model: nn.Module, data: Samples, batch: int = 256) -> list[np.ndarray]:
    """Every output of `model` (eval mode) on every sample, concatenated along the sample axis."""
    set_mode(model, training=False)
    chunks = []
    for i in range(0, len(data), batch):
        chunks.append([o.numpy() for o in outputs_of(model(*(torch.from_numpy(a[i:i + batch]) for a in data.arrays)))])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def accuracy(model: nn.Module, data: Samples, batch: int = 500) -> float:
    """Top-1 accuracy of a one-output classifier (in eval mode) on labelled data."""
    (logits,) = predict(model, data, batch)[:1]
    return float(np.mean(logits.argmax(1) == data.labels))


def set_mode(model: nn.Module, training: bool) -> None:
    """model.train()/eval(), also for modules torch.export produced (which refuse both)."""
    try:
        model.train(training)
    except NotImplementedError:
        pass


def fit(model: nn.Module, train: Samples, cfg: TrainConfig, loss_fn: LossFn, validate: Callable[[], dict[str, float]], *,
        params: Iterable[nn.Parameter] | None = None, progress=None, label: str = "train", show: Callable[[dict], str] = str) -> list[dict]:
    """Train in place; returns one {"epoch", "loss", "val", "seconds"} per epoch (`val`: validate()'s figures).

    `params` defaults to the model's trainable parameters; `progress` is a rich Console for the bars (None: none)."""
    if cfg.epochs <= 0:
        return []
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    xs = [torch.from_numpy(a) for a in train.arrays]
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(train)
    steps = n // cfg.batch_size + (n % cfg.batch_size > 1)  # a last batch of one sample is skipped
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    history = []
    bars = _bars(progress)
    with bars:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            task = bars.add_task(f"{label} {epoch}/{cfg.epochs}", total=steps, loss=float("nan"), val="…")
            set_mode(model, training=True)
            total, seen = 0.0, 0
            for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
                if len(idx) < 2:  # batch norm cannot train on one sample
                    continue
                opt.zero_grad()
                loss = loss_fn([x[idx] for x in xs], idx)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                seen += len(idx)
                bars.update(task, advance=1, loss=total / seen)
            val = validate()
            bars.update(task, val=show(val))
            history.append({"epoch": epoch, "loss": round(total / max(1, seen), 4), "val": {k: round(v, 4) for k, v in val.items()},
                            "seconds": round(time.perf_counter() - t0, 2)})
    set_mode(model, training=False)
    return history


def _bars(console):
    from rich import progress as rp

    return rp.Progress(rp.TextColumn("[bold]{task.description}[/]"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TextColumn("loss {task.fields[loss]:.4f}"), rp.TextColumn("val {task.fields[val]}"),
                       rp.TimeElapsedColumn(), console=console, disable=console is None)
