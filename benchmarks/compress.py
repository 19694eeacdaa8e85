"""Compression benchmark: each edgekit.compress method, converted and measured, in one table.

On Fashion-MNIST: a FashionCNN baseline (tests/models/fashion_cnn.py, trained on the 60k training
images, cached under ~/.cache/edgekit/), then PTQ int8, QAT int8, structured pruning + int8, a
distilled student (tests/models/fashion_small.py, 1/6 of the parameters) in fp32 and int8 next
to the same student trained on the labels alone, low-rank + int8, and int4 weights. QAT's row has
a control: the baseline trained in float for the same extra epochs, then PTQ int8. Every
compressed model goes through `.save()` and `edgekit.convert` as a `.pt2`, like `edgekit convert
net.pt2`. Test accuracy on the full 10,000-image test split through edgekit's runtime; size from
the artifact; latency ratio to the same runtime's fp32 baseline, all artifacts measured
interleaved in one run (benchmarks/convert.py's latency_ms).

    python benchmarks/compress.py                   # ~10 min on 1 thread, the baseline cached afterwards
    python benchmarks/compress.py --threads 2 --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "models"))

from convert import latency_ms

import edgekit
from edgekit import compress, runtime
from edgekit.calibration import CalibrationData
from edgekit.compress.train import TrainConfig
from edgekit.sources import load_model

BASELINE = f"{HERE.parent}/tests/models/fashion_cnn.py:build"
STUDENT = f"{HERE.parent}/tests/models/fashion_small.py:build"
CACHE = Path.home() / ".cache" / "edgekit"


def baseline_weights(ds, epochs: int) -> Path:
    import fashion_cnn

    path = CACHE / f"fashion-cnn-{epochs}ep.pt"
    if not path.is_file():
        print(f"training the FashionCNN baseline ({epochs} epochs on 60k images, cached in {path}) ...", flush=True)
        model = fashion_cnn.train(ds.train.x, ds.train.y, epochs=epochs, batch=64)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


def compressed(ds, weights: Path, root: Path, epochs: int, samples: int) -> tuple[dict[str, str], dict[str, str]]:
    """Run every method once; returns (name -> .pt2 path, name -> what it cost)."""
    from rich.console import Console

    train = (ds.train.x[:samples], ds.train.y[:samples])
    val = (ds.test.x[:2000], ds.test.y[:2000])  # for the per-epoch progress only: nothing is selected on it
    tune = TrainConfig(epochs=epochs, lr=5e-4)
    student = {"student": STUDENT, "train": TrainConfig(epochs=2 * epochs, lr=2e-3)}
    runs = {
        "QAT": (compress.qat, {"weights": weights, "train": TrainConfig(epochs=epochs, lr=1e-4)}),
        "pruned": (compress.prune, {"weights": weights, "train": tune, "config": compress.PruneConfig("structured", 0.5)}),
        "distilled": (compress.distill, {"teacher_weights": weights, "config": compress.DistillConfig(temperature=2.0, alpha=0.9), **student}),
        "labels only": (compress.distill, {"teacher_weights": weights, "config": compress.DistillConfig(alpha=0.0), **student}),
        "low-rank": (compress.lowrank, {"weights": weights, "train": tune, "config": compress.LowRankConfig(energy=0.8)}),
    }
    paths, how = {}, {}
    for name, (method, kwargs) in runs.items():
        res = method(BASELINE, train, val=val, progress=Console(stderr=True), **kwargs)
        paths[name] = str(res.save(root / f"{name.replace(' ', '-')}.pt2"))
        how[name] = f"{res.report['params_after']:,} params, {res.report['seconds']:.0f} s"
    return paths, how


def fine_tuned(ds, weights: Path, epochs: int, samples: int):
    """QAT's control: the baseline trained for the same extra epoch(s) at QAT's rate, in float."""
    from rich.console import Console

    from edgekit.compress.data import Labelled
    from edgekit.compress.train import fit

    spec = load_model(BASELINE, weights=weights)
    fit(spec.module, Labelled(ds.train.x[:samples], ds.train.y[:samples], "train"), Labelled(ds.test.x[:2000], ds.test.y[:2000], "test"),
        TrainConfig(epochs=epochs, lr=1e-4), progress=Console(stderr=True), label="fp32 fine-tune")
    return spec


def labelled(spec, x: np.ndarray, y: np.ndarray, source: str) -> CalibrationData:
    return CalibrationData(source, {spec.input_names[0]: x}, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch training threads and interpreter threads")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs over the 60k images (distillation: twice this)")
    ap.add_argument("--baseline-epochs", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=60000, help="training images the compression steps use")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from edgekit.datasets import fashion_mnist

    ds = fashion_mnist()
    root = Path(tempfile.mkdtemp(prefix="edgekit-bench-compress-"))
    weights = baseline_weights(ds, args.baseline_epochs)
    print(f"compressing (threads={args.threads}, {args.epochs} epoch(s) of fine-tuning) ...", flush=True)
    pt2, how = compressed(ds, weights, root, args.epochs, args.train_samples)
    specs = {"baseline": load_model(BASELINE, weights=weights), "fine-tuned": fine_tuned(ds, weights, args.epochs, args.train_samples),
             **{k: load_model(v) for k, v in pt2.items()}}
    rows = [  # (row, model, target, the same runtime's fp32 baseline row)
        ("fp32 baseline", "baseline", "tflite-fp32", "fp32 baseline"),
        ("PTQ int8", "baseline", "tflite-int8", "fp32 baseline"),
        ("QAT int8", "QAT", "tflite-int8", "fp32 baseline"),
        ("fp32 + QAT's epochs, PTQ int8", "fine-tuned", "tflite-int8", "fp32 baseline"),
        ("pruned 50% channels + int8", "pruned", "tflite-int8", "fp32 baseline"),
        ("distilled student fp32", "distilled", "tflite-fp32", "fp32 baseline"),
        ("distilled student int8", "distilled", "tflite-int8", "fp32 baseline"),
        ("student, labels only, fp32", "labels only", "tflite-fp32", "fp32 baseline"),
        ("low-rank (energy 0.8) + int8", "low-rank", "tflite-int8", "fp32 baseline"),
        ("int4 weights", "baseline", "tflite-int4", "fp32 baseline"),
        ("fp32 baseline (ONNX)", "baseline", "onnx-fp32", "fp32 baseline (ONNX)"),
        ("int4 weights (ONNX)", "baseline", "onnx-int4", "fp32 baseline (ONNX)"),
    ]
    arts, missing = {}, {}
    for i, (name, model, target, _) in enumerate(rows):
        spec = specs[model]
        try:
            edgekit.load_target(target)
        except edgekit.EdgekitError:
            missing[name] = "target missing"
            continue
        try:
            arts[name] = edgekit.convert(spec, target, out_dir=root / f"art{i}",
                                         calibration=labelled(spec, ds.train.x[-500:], ds.train.y[-500:], "fashion-mnist:train"),
                                         validation=labelled(spec, ds.test.x[-200:], ds.test.y[-200:], "fashion-mnist:test"))
        except edgekit.EdgekitError as exc:
            missing[name] = f"failed: {str(exc)[:80]}"
    acc = {n: float(np.mean(runtime.load(a.path, num_threads=args.threads).run_batch(ds.test.x)[0].argmax(1) == ds.test.y))
           for n, a in arts.items()}
    lat = latency_ms({n: a.path for n, a in arts.items()}, ds.test.x[:1], args.threads, args.rounds, 200)
    print_table(rows, arts, missing, acc, lat, args.threads)
    print("compression runs: " + "; ".join(f"{k}: {v}" for k, v in how.items()))


def print_table(rows, arts, missing, acc, lat, threads) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Fashion-MNIST, FashionCNN baseline; accuracy on the 10,000 test images; latency interleaved, {threads} thread(s)",
              title_justify="left")
    for col in ("variant", "target", "params", "test acc", "size KiB", "size / fp32", "latency / fp32 (p50)"):
        t.add_column(col, justify="left" if col in ("variant", "target") else "right")
    for name, _, target, ref in rows:
        if name in missing:
            t.add_row(name, target, "-", "-", "-", "-", missing[name])
            continue
        a, ref_art = arts[name], arts.get(ref)
        t.add_row(name, target, f"{a.manifest.model['num_params']:,}", f"{acc[name]:.2%}", f"{a.size_bytes / 1024:,.1f}",
                  f"{a.size_bytes / ref_art.size_bytes:.3f}" if ref_art else "-",
                  f"{lat[name] / lat[ref]:.2f} ({lat[name]:.3f} ms)" if ref_art else "-")
    Console(width=200).print(t)


if __name__ == "__main__":
    main()
