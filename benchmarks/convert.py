"""Convert benchmark: every target for the bundled digits CNN and a MobileNetV2 (plain torch).

Per target: conversion seconds, size and size ratio to the same format's fp32 file, in-process
latency ratio to fp32 (same runtime, same threads, measured interleaved in one run), validation.

    python benchmarks/convert.py                       # both models, every target
    python benchmarks/convert.py --models digits --threads 1 --rounds 30

MobileNetV2 has no pretrained weights here (nothing can be downloaded), and a randomly initialised
one is useless for fidelity figures (its logits are near-ties, so even fp16 "disagrees"). So the
benchmark trains one: the full MobileNetV2 architecture (width 1.0, 10 classes) on Fashion-MNIST
upscaled to 64x64 RGB, 600 SGD steps (~3 min on 2 cores), cached under ~/.cache/edgekit/. Latency
is measured at that 64x64 input (about 1/12 of the 224x224 compute).
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


MNV2_RES = 64
CACHE = Path.home() / ".cache" / "edgekit" / f"mobilenetv2-fashion{MNV2_RES}.pt"


def mobilenet_images(x: np.ndarray) -> np.ndarray:
    """Fashion-MNIST (N,1,28,28) in [0,1] -> (N,3,64,64) ImageNet-normalised RGB."""
    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(MNV2_RES, MNV2_RES), mode="bilinear", align_corners=False)
    t = t.repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return ((t - mean) / std).numpy().astype(np.float32)


def mobilenet_spec(ds, steps: int = 600, batch: int = 32):
    from mobilenetv2 import MobileNetV2

    model = MobileNetV2(num_classes=10)
    if CACHE.is_file():
        model.load_state_dict(torch.load(CACHE, map_location="cpu", weights_only=True))
    else:
        print(f"training MobileNetV2 on Fashion-MNIST at {MNV2_RES}x{MNV2_RES} ({steps} steps, cached in {CACHE}) ...", flush=True)
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
        idx = torch.randperm(len(ds.train.x), generator=torch.Generator().manual_seed(0))[: steps * batch].split(batch)
        model.train()
        for i, b in enumerate(idx):
            xb = torch.from_numpy(mobilenet_images(ds.train.x[b.numpy()]))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), torch.from_numpy(ds.train.y[b.numpy()])).backward()
            opt.step()
            sched.step()
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), CACHE)
    model.eval()
    model.example_input_shape = (1, 3, MNV2_RES, MNV2_RES)
    spec = load_model(model)
    spec.name, spec.source = "mobilenetv2", f"MobileNetV2 (plain torch, trained on Fashion-MNIST {MNV2_RES}x{MNV2_RES})"
    return spec


def latency_ms(folders: dict[str, Path], x, threads: int, rounds: int, per_round: int) -> dict[str, float]:
    """Median per-call latency; artifacts measured interleaved, round by round, so drift hits all alike.

    Blocks last ~0.25 s each. Between blocks the loop sleeps briefly: ONNX Runtime's and XNNPACK's worker threads spin-wait
    after a run, and without a pause they steal the cores from the next artifact's block (measured:
    onnx-fp32 MobileNetV2 at 3.5 ms interleaved without the pause, 1.1 ms alone)."""
    loaded = {k: runtime.load(f, num_threads=threads) for k, f in folders.items()}
    feed = tuple(x) if isinstance(x, (list, tuple)) else (x,)  # one array per model input
    models = {k: (lambda m=m: m(*feed)) for k, m in loaded.items()}
    samples: dict[str, list[float]] = {k: [] for k in models}
    calls: dict[str, int] = {}
    for k, m in models.items():  # warm up, and size each block to ~0.25 s so wake-up costs vanish
        for _ in range(5):
            m()
        t0 = time.perf_counter()
        for _ in range(5):
            m()
        calls[k] = max(per_round, int(0.25 / max((time.perf_counter() - t0) / 5, 1e-6)))
    for _ in range(rounds):
        for k, m in models.items():
            time.sleep(0.02)
            for _ in range(3):  # re-warm after the pause
                m()
            t0 = time.perf_counter()
            for _ in range(calls[k]):
                m()
            samples[k].append((time.perf_counter() - t0) * 1000 / calls[k])
    return {k: statistics.median(v) for k, v in samples.items()}


def run(model_name: str, targets: list[str], threads: int, rounds: int, calib_samples: int, eval_samples: int) -> None:
    from edgekit.datasets import digits, fashion_mnist

    root = Path(tempfile.mkdtemp(prefix=f"edgekit-bench-{model_name}-"))
    if model_name == "digits":
        spec, ds = load_model(), digits()
        calib = CalibrationData("digits:train", {"input": ds.train.x}, ds.train.y)
        val = CalibrationData("digits:test", {"input": ds.test.x[:200]}, ds.test.y[:200])
        test_x, test_y, per_round = ds.test.x, ds.test.y, 200
    else:
        ds = fashion_mnist()
        spec = mobilenet_spec(ds)
        calib = CalibrationData("fashion-mnist@64:train", {"input": mobilenet_images(ds.train.x[-calib_samples:])}, ds.train.y[-calib_samples:])
        val = CalibrationData("fashion-mnist@64:test", {"input": mobilenet_images(ds.test.x[-200:])}, ds.test.y[-200:])
        test_x, test_y, per_round = mobilenet_images(ds.test.x[:eval_samples]), ds.test.y[:eval_samples], 10
    print(f"\n## {spec.source}: {spec.num_params:,} parameters, input {spec.input_shapes[0]}, threads={threads}", flush=True)
    arts, errors = {}, {}
    for t in targets:
        try:
            t0 = time.perf_counter()
            arts[t] = edgekit.convert(spec, t, calibration=calib, validation=val, out_dir=root / t, calib_samples=calib_samples)
            arts[t].manifest.extra["bench_convert_s"] = time.perf_counter() - t0
        except edgekit.EdgekitError as exc:
            errors[t] = str(exc)
    acc = {t: float(np.mean(runtime.load(a.path, num_threads=threads).run_batch(test_x)[0].argmax(1) == test_y)) for t, a in arts.items()}
    lat = latency_ms({t: a.path for t, a in arts.items()}, test_x[:1], threads, rounds, per_round)
    hdr = (f"{'target':<18}{'convert s':>10}{'size KiB':>11}{'size/fp32':>10}{'p50 ms':>9}{'lat/fp32':>9}"
           f"{'SQNR dB':>9}{'agree':>8}{'acc':>8}  verdict")
    print(f"accuracy on {len(test_y)} labeled test images; SQNR/agreement on 200 held-out images vs PyTorch")
    print(hdr)
    print("-" * len(hdr))
    for t in targets:
        if t in errors:
            print(f"{t:<18}  FAILED: {errors[t]}")
            continue
        m = arts[t].manifest.to_dict()
        fmt = m["format"]
        fp32 = arts.get(f"{fmt}-fp32")
        size_ratio = m["size_bytes"] / fp32.size_bytes if fp32 else float("nan")
        lat_ratio = lat[t] / lat[f"{fmt}-fp32"] if fp32 else float("nan")
        v = m["validation"]
        print(f"{t:<18}{m['bench_convert_s']:>10.1f}{m['size_bytes'] / 1024:>11.1f}{size_ratio:>10.3f}{lat[t]:>9.3f}{lat_ratio:>9.2f}"
              f"{v['sqnr_db']:>9.1f}{v.get('top1_agreement', float('nan')):>8.3f}{acc[t]:>8.3f}  {v['status']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,mobilenetv2")
    ap.add_argument("--targets", default=",".join(sorted(t.name for t in list_targets())))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calib-samples", type=int, default=200)
    ap.add_argument("--eval-samples", type=int, default=1000, help="MobileNetV2 test images for accuracy")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    targets = args.targets.split(",")
    for name in args.models.split(","):
        run(name, targets, args.threads, args.rounds, args.calib_samples, args.eval_samples)


if __name__ == "__main__":
    main()
