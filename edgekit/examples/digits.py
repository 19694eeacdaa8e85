"""The bundled example: a small CNN trained on scikit-learn's digits (8x8 grayscale, 10 classes).

`build()` returns the trained network (weights shipped beside this file, loaded with
weights_only=True). `python -m edgekit.examples.digits --retrain` retrains it reproducibly
(about 10 s on a laptop CPU) and rewrites the weights file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_cnn.pt")
example_input_shape = (1, 1, 8, 8)


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    model = DigitsCNN()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


build.example_input_shape = example_input_shape  # type: ignore[attr-defined]


def train(epochs: int = 12, seed: int = 0, log=print) -> tuple[nn.Module, float]:
    """Train from scratch, deterministically; returns the model and its test accuracy."""
    from edgekit.datasets import digits

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    data = digits()
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(data.test.x)).argmax(1).numpy() == data.test.y).mean()
    return model, float(acc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--retrain", action="store_true", help="train and overwrite the shipped weights")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.retrain:
        ap.error("nothing to do: pass --retrain")
    t0 = time.perf_counter()
    model, acc = train(args.epochs, args.seed)
    tmp = WEIGHTS.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(WEIGHTS)
    print(f"test accuracy {acc:.4f} in {time.perf_counter() - t0:.1f} s; weights written to {WEIGHTS}")


if __name__ == "__main__":
    main()
