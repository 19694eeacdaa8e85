"""A small seeded training loop shared by the compression methods: Adam with a cosine schedule,
one rich progress bar per epoch showing the running loss and the validation accuracy."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from edgekit.compress.data import Labelled

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input batch, label batch) -> scalar loss


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


@torch.no_grad()
def accuracy(model: nn.Module, data: Labelled, batch: int = 500) -> float:
    """Top-1 accuracy of `model` (in eval mode) on labelled data."""
    set_mode(model, training=False)
    correct = 0
    for i in range(0, len(data), batch):
        out = model(torch.from_numpy(data.x[i:i + batch]))
        correct += int((out.argmax(1).numpy() == data.y[i:i + batch]).sum())
    return correct / max(1, len(data))


def set_mode(model: nn.Module, training: bool) -> None:
    """model.train()/eval(), also for modules torch.export produced (which refuse both)."""
    try:
        model.train(training)
    except NotImplementedError:
        pass


def fit(model: nn.Module, train: Labelled, val: Labelled, cfg: TrainConfig, *, loss_fn: LossFn | None = None,
        params: Iterable[nn.Parameter] | None = None, progress=None, label: str = "train") -> list[dict]:
    """Train in place; returns one {"epoch", "loss", "val_accuracy", "seconds"} per epoch.

    `loss_fn` defaults to cross-entropy on the model's logits; `params` to the model's trainable
    parameters. `progress` is a rich Console for the bars (None: no bars)."""
    if cfg.epochs <= 0:
        return []
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    loss_fn = loss_fn or (lambda xb, yb: nn.functional.cross_entropy(model(xb), yb))
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = len(x) // cfg.batch_size + (len(x) % cfg.batch_size > 1)  # a last batch of one sample is skipped
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    history = []
    bars = _bars(progress)
    with bars:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            task = bars.add_task(f"{label} {epoch}/{cfg.epochs}", total=steps, loss=float("nan"), val="…")
            set_mode(model, training=True)
            total, seen = 0.0, 0
            for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
                if len(idx) < 2:  # batch norm cannot train on one sample
                    continue
                opt.zero_grad()
                loss = loss_fn(x[idx], y[idx])
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                seen += len(idx)
                bars.update(task, advance=1, loss=total / seen)
            acc = accuracy(model, val)
            bars.update(task, val=f"{acc:.1%}")
            history.append({"epoch": epoch, "loss": round(total / max(1, seen), 4), "val_accuracy": round(acc, 4),
                            "seconds": round(time.perf_counter() - t0, 2)})
    set_mode(model, training=False)
    return history


def _bars(console):
    from rich import progress as rp

    return rp.Progress(rp.TextColumn("[bold]{task.description}[/]"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TextColumn("loss {task.fields[loss]:.4f}"), rp.TextColumn("val acc {task.fields[val]}"),
                       rp.TimeElapsedColumn(), console=console, disable=console is None)
