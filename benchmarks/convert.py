"""Convert benchmark: every target for the bundled digits CNN and a MobileNetV2 (plain torch).

Per target: conversion seconds, size and size ratio to the same format's fp32 file, in-process
latency ratio to fp32 (same runtime, same threads, measured interleaved in one run), validation.

    python benchmarks/convert.py                       # both models, every target
    python benchmarks/convert.py --models digits --threads 1 --rounds 30

MobileNetV2 has no pretrained weights here (nothing can be downloaded): it is randomly initialised,
then its BatchNorm statistics are re-estimated on real images (Fashion-MNIST, upscaled to 224x224
RGB, ImageNet-normalised) so activation ranges are those of a network seeing real data. Its
agreement figures therefore measure numerical fidelity, not ImageNet accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import edgekit  # noqa: E402
from edgekit import runtime  # noqa: E402
from edgekit.calibration import CalibrationData  # noqa: E402
from edgekit.sources import load_model  # noqa: E402
from edgekit.targets import list_targets  # noqa: E402


def mobilenet_data(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    from edgekit.datasets import fashion_mnist

    ds = fashion_mnist()
    x = np.concatenate([ds.train.x[: n // 2], ds.test.x[: n // 2]])
    x = np.repeat(np.repeat(x, 8, axis=2), 8, axis=3)  # 28 -> 224, nearest
    x = np.repeat(x, 3, axis=1)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32), np.concatenate([ds.train.y[: n // 2], ds.test.y[: n // 2]])


def mobilenet_spec(x: np.ndarray):
    spec = load_model("mobilenetv2:build")
    m = spec.module
    for mod in m.modules():  # re-estimate BatchNorm statistics on real images
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for i in range(0, 128, 16):
            m(torch.from_numpy(x[i:i + 16]))
    m.eval()
    spec.name = "mobilenetv2"
    return spec


def latency_ms(folders: dict[str, Path], x: np.ndarray, threads: int, rounds: int, per_round: int) -> dict[str, float]:
    """Median per-call latency; artifacts measured interleaved, round by round, so drift hits all alike."""
    models = {k: runtime.load(f, num_threads=threads) for k, f in folders.items()}
    samples: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        for _ in range(5):
            m(x)
    for _ in range(rounds):
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                m(x)
            samples[k].append((time.perf_counter() - t0) * 1000 / per_round)
    return {k: statistics.median(v) for k, v in samples.items()}


def run(model_name: str, targets: list[str], threads: int, rounds: int, calib_samples: int) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"edgekit-bench-{model_name}-"))
    if model_name == "digits":
        spec, calib = load_model(), "digits"
        per_round = 200
    else:
        x, y = mobilenet_data()
        spec = mobilenet_spec(x)
        calib = CalibrationData("fashion-mnist@224 (train 200, test 200)", {"input": x}, y)
        per_round = 3
    print(f"\n## {spec.source}: {spec.num_params:,} parameters, input {spec.input_shapes[0]}, threads={threads}")
    arts, errors = {}, {}
    for t in targets:
        try:
            t0 = time.perf_counter()
            arts[t] = edgekit.convert(spec, t, calibration=calib, out_dir=root / t, calib_samples=calib_samples)
            arts[t].manifest["bench_convert_s"] = time.perf_counter() - t0
        except edgekit.EdgekitError as exc:
            errors[t] = str(exc)
    if calib == "digits":
        from edgekit.datasets import digits

        x1 = digits().test.x[:1]
    else:
        x1 = x[-1:]
    lat = latency_ms({t: a.path for t, a in arts.items()}, x1, threads, rounds, per_round)
    hdr = f"{'target':<18}{'convert s':>10}{'size KiB':>11}{'size/fp32':>10}{'p50 ms':>9}{'lat/fp32':>9}{'SQNR dB':>9}{'agree':>8}{'acc':>8}  verdict"
    print(hdr)
    print("-" * len(hdr))
    for t in targets:
        if t in errors:
            print(f"{t:<18}  FAILED: {errors[t]}")
            continue
        m = arts[t].manifest
        fmt = m["format"]
        fp32 = arts.get(f"{fmt}-fp32")
        size_ratio = m["size_bytes"] / fp32.size_bytes if fp32 else float("nan")
        lat_ratio = lat[t] / lat[f"{fmt}-fp32"] if fp32 else float("nan")
        v = m["validation"]
        acc = f"{v['accuracy']:.3f}" if "accuracy" in v and model_name == "digits" else "-"
        print(f"{t:<18}{m['bench_convert_s']:>10.1f}{m['size_bytes'] / 1024:>11.1f}{size_ratio:>10.3f}{lat[t]:>9.3f}{lat_ratio:>9.2f}"
              f"{v['sqnr_db']:>9.1f}{v.get('top1_agreement', float('nan')):>8.3f}{acc:>8}  {v['status']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,mobilenetv2")
    ap.add_argument("--targets", default=",".join(sorted(t.name for t in list_targets())))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calib-samples", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    targets = args.targets.split(",")
    for name in args.models.split(","):
        run(name, targets, args.threads, args.rounds, args.calib_samples)


if __name__ == "__main__":
    main()
