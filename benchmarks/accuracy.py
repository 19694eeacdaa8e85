"""Accuracy benchmark: fp32 / int8 / accuracy-budgeted int8, side by side, on real labelled test data.

Models:
  digits   the bundled digits CNN, scored on the digits test split (360 images);
  fashion  the Fashion-MNIST CNN (tests/models/fashion_cnn.py) trained here for one epoch, with a
           quantization-hostile outlier channel in features.4 (float outputs unchanged), scored on
           the full Fashion-MNIST test split (10,000 images).

Per row: task accuracy (edgekit's runtime on the host), size, size ratio to the fp32 artifact, and
in-process latency ratio to fp32 (measured interleaved in one run, same threads). The budgeted row
is `convert --max-accuracy-drop 0.5 --data <test split>`; fp16 is there for the size comparison.

    python benchmarks/accuracy.py                      # both models
    python benchmarks/accuracy.py --models digits --budget 0.2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "models"))

import edgekit  # noqa: E402
from convert import latency_ms  # noqa: E402
from edgekit.evaluate import evaluate  # noqa: E402


def fashion_model(tmp: Path) -> tuple[str, Path, str, str]:
    import fashion_cnn

    from edgekit.datasets import fashion_mnist

    ds = fashion_mnist()
    t0 = time.perf_counter()
    model = fashion_cnn.with_outlier_channel(fashion_cnn.train(ds.train.x, ds.train.y, epochs=1, batch=64))
    print(f"trained the Fashion-MNIST CNN in {time.perf_counter() - t0:.0f} s", flush=True)
    weights = tmp / "fashion_outlier.pt"
    torch.save(model.state_dict(), weights)
    calib = tmp / "calib.npy"
    np.save(calib, ds.train.x[-1000:])
    return f"{HERE.parent / 'tests' / 'models' / 'fashion_cnn.py'}:build", weights, str(calib), "fashion-mnist"


def run(name: str, budget: float, threads: int, rounds: int, tmp: Path, console: Console) -> None:
    if name == "digits":
        model, weights, calib, data = None, None, "digits", "digits"
    else:
        model, weights, calib, data = fashion_model(tmp)
    arts: dict[str, edgekit.Artifact] = {}
    for target in ("tflite-fp32", "tflite-fp16", "tflite-int8"):
        arts[target] = edgekit.convert(model, target, weights=weights, calibration=calib, out_dir=tmp / f"{name}-{target}")
    t0 = time.perf_counter()
    arts["int8 budgeted"] = edgekit.convert(model, "tflite-int8", weights=weights, calibration=calib, out_dir=tmp / f"{name}-budget",
                                            max_accuracy_drop=budget, budget_data=data)
    search_s = time.perf_counter() - t0
    from edgekit.calibration import load_calibration

    ds = load_calibration(data, [i.name for i in arts["tflite-fp32"].manifest.inputs],
                          [i.source_shape for i in arts["tflite-fp32"].manifest.inputs], split="test")
    x = ds.arrays[next(iter(ds.arrays))][:1]
    lat = latency_ms({k: a.path for k, a in arts.items()}, x, threads, rounds, 50)
    fp32 = arts["tflite-fp32"]
    t = Table(title=f"{name}: test accuracy on {len(ds)} labelled images, budget {budget} points", title_justify="left")
    for col in ("artifact", "accuracy", "drop (points)", "size", "size/fp32", "latency p50", "latency/fp32", "layers moved"):
        t.add_column(col, justify="left" if col in ("artifact", "layers moved") else "right")
    acc = {k: evaluate(a.path, data).metrics["top1"] for k, a in arts.items()}
    for k, a in arts.items():
        b = a.manifest.extra.get("accuracy_budget")
        moved = ", ".join(f"{o['note'].split(':')[0]}→{o['precision']}" for o in b["overrides"]) if b else ""
        if b:
            moved += f" ({'met' if b['met'] else 'NOT met'}, {len(b['steps'])} candidate(s), {search_s:.0f} s)"
        t.add_row(k, f"{acc[k]:.2%}", f"{(acc['tflite-fp32'] - acc[k]) * 100:.2f}", f"{a.size_bytes / 1024:.1f} KiB",
                  f"{a.size_bytes / fp32.size_bytes:.3f}", f"{lat[k]:.3f} ms", f"{lat[k] / lat['tflite-fp32']:.2f}", moved)
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "fashion"], choices=["digits", "fashion"])
    ap.add_argument("--budget", type=float, default=0.5, help="--max-accuracy-drop, in points")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    console = Console(width=160)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            run(name, args.budget, args.threads, args.rounds, Path(tmp), console)


if __name__ == "__main__":
    main()
