"""How much does `edgekit bench` add to what it measures?

On the local CPU, for each artifact: edgekit's p50 (the full path: push to a fresh folder, runner
subprocess, edgekit.runtime) against a direct in-process timing of the same model file with the
raw interpreter (ai_edge_litert.Interpreter / onnxruntime.InferenceSession), same threads. The two
are measured alternately, round after round, in one run; the ratio is per round, and the CV of
each method's p50 over the rounds says how repeatable it is.

    python benchmarks/bench_overhead.py [--rounds 7] [--runs 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import edgekit  # noqa: E402
from edgekit.measure import bench  # noqa: E402


def direct_p50(model: Path, threads: int, runs: int, warmup: int) -> float:
    """The baseline: the interpreter called in this process, nothing of edgekit's in the loop."""
    if model.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(model), num_threads=threads)
        it.allocate_tensors()
        feeds = []
        for d in it.get_input_details():
            dt = np.dtype(d["dtype"])
            x = np.random.default_rng(0).integers(-128, 127, size=d["shape"]).astype(dt) if dt.kind == "i" else \
                np.random.default_rng(0).random(d["shape"]).astype(dt)
            feeds.append((d["index"], x))

        def call():
            for i, x in feeds:
                it.set_tensor(i, x)
            it.invoke()
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        feed = {i.name: np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
                for i in sess.get_inputs()}

        def call():
            sess.run(None, feed)
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t) / 1e6)
    return float(np.median(samples))


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgekit-overhead-"))
    arts = {"digits tflite-int8": edgekit.convert(target="tflite-int8", out_dir=root / "d8").path,
            "digits onnx-int8": edgekit.convert(target="onnx-int8", out_dir=root / "o8").path}
    spec = edgekit.sources.load_model("mobilenetv2:build", input_shapes=[(1, 3, 96, 96)])
    spec.name = "mobilenetv2-96"
    arts["mobilenetv2@96 tflite-fp32"] = edgekit.convert(spec, "tflite-fp32", calibration="random", out_dir=root / "m32").path
    print(f"threads={args.threads} runs={args.runs} warmup={args.warmup} rounds={args.rounds}; local CPU, edgekit vs direct, alternating")
    hdr = f"{'artifact':<28}{'edgekit p50 ms':>15}{'direct p50 ms':>15}{'ratio':>8}{'ratio min..max':>17}{'CV edgekit':>12}{'CV direct':>11}"
    print(hdr)
    print("-" * len(hdr))
    for name, art in arts.items():
        model = art / edgekit.Artifact.load(art).manifest.file
        ek, dr = [], []
        for _ in range(args.rounds):
            ek.append(bench(art, "local", runs=args.runs, warmup=args.warmup, threads=args.threads).stats["p50_ms"])
            dr.append(direct_p50(model, args.threads, args.runs, args.warmup))
        ratios = [a / b for a, b in zip(ek, dr)]
        print(f"{name:<28}{statistics.median(ek):>15.4f}{statistics.median(dr):>15.4f}{statistics.median(ratios):>8.3f}"
              f"{min(ratios):>8.3f}..{max(ratios):<7.3f}{cv(ek):>12.1%}{cv(dr):>11.1%}", flush=True)


if __name__ == "__main__":
    main()
