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

Real pretrained models (`--suite real`; tests/models, installed by scripts/setup-models.sh), no labels used
for training anywhere: MTCNN's RNet (two outputs: boxes, face probability) pruned, factored and QAT'd
toward its own outputs on unlabelled crops, and a small student taught by RNet's int8 .tflite artifact
alone (black box) next to the same student trained on 10 labels; all-MiniLM-L6-v2 with its feed-forward
width pruned, and a 3-block student distilled by embeddings + attention maps on 480 unlabelled sentences
next to the same student untaught. Figures on held-out data: RNet face accuracy on the odd LFW crops
(labelled) and box MAE against fp32 RNet; MiniLM mean cosine to the fp32 teacher on 200 other sentences.

    python benchmarks/compress.py                   # ~10 min on 1 thread (fashion) + ~10 min (real)
    python benchmarks/compress.py --suite real --threads 2
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
    from edgekit.compress.train import accuracy, fit

    spec = load_model(BASELINE, weights=weights)
    train, test = Labelled(ds.train.x[:samples], ds.train.y[:samples], "train"), Labelled(ds.test.x[:2000], ds.test.y[:2000], "test")
    model, xy = spec.module, torch.from_numpy(train.labels)

    def loss(xb, idx):
        return torch.nn.functional.cross_entropy(model(*xb), xy[idx])

    fit(model, train, TrainConfig(epochs=epochs, lr=1e-4), loss, lambda: {"accuracy": accuracy(model, test)},
        progress=Console(stderr=True), label="fp32 fine-tune")
    return spec


def labelled(spec, x: np.ndarray, y: np.ndarray, source: str) -> CalibrationData:
    return CalibrationData(source, {spec.input_names[0]: x}, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("fashion", "real", "all"), default="all")
    ap.add_argument("--threads", type=int, default=1, help="torch training threads and interpreter threads")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs over the 60k images (distillation: twice this)")
    ap.add_argument("--baseline-epochs", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=60000, help="training images the compression steps use")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.suite in ("real", "all"):
        real_models(args.threads, args.rounds)
    if args.suite in ("fashion", "all"):
        fashion(args)


def fashion(args) -> None:
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


# ---------------------------------------------------------------------------- real pretrained models

def _table(title: str, cols: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i < 2 else "right")
    for r in rows:
        t.add_row(*r)
    Console(width=220).print(t)


def _measure(variants: dict, root: Path, calib, threads: int, rounds: int, example, score) -> list[list[str]]:
    """variants: row -> (spec or path, target, how it was made). Converts each, scores it on held-out data through
    the runtime, and times every artifact interleaved in one run."""
    arts, rows = {}, []
    for i, (name, (model, target, _)) in enumerate(variants.items()):
        arts[name] = model if isinstance(model, Path) else edgekit.convert(model, target, out_dir=root / f"r{i}", calibration=calib).path
    lat = latency_ms(arts, example, threads, rounds, 50)
    base = next(iter(variants))
    base_size = runtime.read_manifest(arts[base]).size_bytes
    for name, (_, target, how) in variants.items():
        art = runtime.load(arts[name], num_threads=threads)
        size = art.manifest.size_bytes
        rows.append([name, target, f"{art.manifest.model.get('num_params') or 0:,}", *score(art), f"{size / 1024:,.0f}",
                     f"{size / base_size:.3f}", f"{lat[name] / lat[base]:.2f}", how])
    return rows


def real_models(threads: int, rounds: int) -> None:
    sys.path.insert(0, str(HERE.parent / "tests" / "models"))
    import minilm
    import mtcnn_rnet

    from edgekit.compress.data import Samples
    from edgekit.compress.train import predict
    from edgekit.sources import ModelSpec
    from edgekit.validate import cosines

    root = Path(tempfile.mkdtemp(prefix="edgekit-bench-compress-real-"))
    rnet = f"{HERE.parent}/tests/models/mtcnn_rnet.py:build"
    small = f"{HERE.parent}/tests/models/mtcnn_rnet.py:small"
    x, y = mtcnn_rnet.lfw_subset()
    held = Samples({"x": x[1::2]}, "lfw odd", y[1::2])
    pool = np.concatenate([x[0::2], mtcnn_rnet.photo_crops(256)])
    np.save(root / "calib.npy", pool[:128])
    boxes = compress.OutputConfig(("output_0=regression",))
    tune = TrainConfig(epochs=4, batch_size=32, lr=1e-3)
    print("RNet: compressing on unlabelled crops ...", flush=True)
    made = {}
    for name, fn, kw in (("pruned 50% channels", compress.prune, {"config": compress.PruneConfig("structured", 0.5), "train": tune}),
                         ("low-rank (energy 0.9)", compress.lowrank, {"config": compress.LowRankConfig(energy=0.9), "train": tune}),
                         ("QAT", compress.qat, {"train": TrainConfig(epochs=2, batch_size=32, lr=1e-4)})):
        res = fn(rnet, pool, outputs=boxes, **kw)
        made[name] = (str(res.save(root / f"{len(made)}.pt2")), f"{res.report['seconds']:.0f} s, reference ran on {res.report['reference_calls']}")
    int8 = edgekit.convert(rnet, "tflite-int8", calibration=str(root / "calib.npy"), out_dir=root / "rnet-int8")
    few = np.r_[np.arange(0, 100, 2)[:5], np.arange(100, 200, 2)[:5]]
    res = compress.distill(int8.path, (x[few], y[few]), student=small, config=compress.DistillConfig(alpha=0.0),
                           outputs=compress.OutputConfig(weights=("output_0=0",)), train=TrainConfig(epochs=30, batch_size=32, lr=2e-3))
    made["student, 10 labels only"] = (str(res.save(root / "s-labels.pt2")), f"{res.report['seconds']:.0f} s")
    unlabelled = np.concatenate([x[0::2], mtcnn_rnet.photo_crops(100)])
    res = compress.distill(int8.path, unlabelled, student=small, config=compress.DistillConfig(augment=("crop", "noise"), temperature=2.0),
                           outputs=boxes, train=TrainConfig(epochs=20, batch_size=32, lr=2e-3))
    made["student of the int8 .tflite (black box)"] = (str(res.save(root / "s-bb.pt2")),
                                                        f"{res.report['seconds']:.0f} s, {res.report['reference_calls']:,} teacher calls")
    ref_boxes, _ = mtcnn_rnet.build()(torch.from_numpy(held.x))
    ref_boxes = ref_boxes.detach().numpy()

    def rnet_score(art):
        b, p = art.run_batch(held.x)
        return [f"{np.mean(p.argmax(1) == held.labels):.2%}", f"{np.mean(np.abs(b - ref_boxes)):.4f}"]

    variants = {"RNet fp32": (rnet, "tflite-fp32", "pretrained"), "RNet PTQ int8": (int8.path, "tflite-int8", "calibrated on 128 crops")}
    for name in ("pruned 50% channels", "low-rank (energy 0.9)"):
        variants[f"{name} fp32"] = (made[name][0], "tflite-fp32", made[name][1])
        variants[f"{name} int8"] = (made[name][0], "tflite-int8", made[name][1])
    variants["QAT int8"] = (made["QAT"][0], "tflite-int8", made["QAT"][1])
    variants["student, 10 labels only fp32"] = (made["student, 10 labels only"][0], "tflite-fp32", made["student, 10 labels only"][1])
    for target in ("tflite-fp32", "tflite-int8"):
        name = "student of the int8 .tflite (black box)"
        variants[f"{name} {target[7:]}"] = (made[name][0], target, made[name][1])
    rows = _measure(variants, root / "rnet", str(root / "calib.npy"), threads, rounds, held.x[:1], rnet_score)
    _table(f"MTCNN RNet (pretrained), face accuracy on 100 held-out LFW crops, box MAE vs fp32 RNet; {threads} thread(s), interleaved",
           ["variant", "target", "params", "face acc", "box MAE", "KiB", "size/fp32", "latency/fp32", "how"], rows)

    print("MiniLM: distilling on unlabelled sentences ...", flush=True)
    s = minilm.sentences()
    cut = 64
    enc = {k: v[:, :cut] for k, v in minilm.encode(s[:480]).items()}
    held_t = Samples({k: v[:, :cut] for k, v in minilm.encode(s[-200:]).items()}, "held")
    teacher = ModelSpec(minilm.build(), tuple(torch.from_numpy(v[:1]) for v in held_t.arrays), ["input_ids", "attention_mask"],
                        "minilm", "all-MiniLM-L6-v2")
    budget = TrainConfig(epochs=2, batch_size=16, lr=2e-4)
    made = {}
    for name, cfg in (("3 blocks, untaught", None), ("3 blocks, embeddings", compress.DistillConfig(layers=3)),
                      ("3 blocks, embeddings + attention", compress.DistillConfig(layers=3, attention_weight=1.0))):
        if cfg is None:
            model = compress.transformer_student(teacher.module, 3)
            made[name] = (ModelSpec(model, teacher.example_inputs, teacher.input_names, "s", "untaught"), "the teacher's blocks 1, 3, 5")
            continue
        res = compress.distill(teacher, enc, config=cfg, train=budget)
        made[name] = (str(res.save(root / f"m{len(made)}.pt2")), f"{res.report['seconds']:.0f} s")
    res = compress.prune(teacher, enc, config=compress.PruneConfig("structured", 0.5), train=budget)
    made["feed-forward width 50%"] = (str(res.save(root / "m-pruned.pt2")), f"{res.report['seconds']:.0f} s")
    np.savez(root / "sent.npz", **{k: v[:64] for k, v in enc.items()})
    ref = predict(teacher.module, held_t, 50)[0]

    def minilm_score(art):
        out = art.run_batch(*held_t.arrays)[0]
        return [f"{np.mean(cosines(ref, out)):.4f}", f"{np.min(cosines(ref, out)):.4f}"]

    variants = {"MiniLM-L6 fp32": (teacher, "tflite-fp32", "pretrained"), "MiniLM-L6 int8": (teacher, "tflite-int8", "64 sentences")}
    for name, (model, how) in made.items():
        variants[f"{name} fp32"] = (model, "tflite-fp32", how)
    for name in ("3 blocks, embeddings + attention", "feed-forward width 50%"):
        variants[f"{name} int8"] = (made[name][0], "tflite-int8", made[name][1])
    rows = _measure(variants, root / "minilm", str(root / "sent.npz"), threads, rounds, [a[:1] for a in held_t.arrays], minilm_score)
    _table(f"all-MiniLM-L6-v2 (pretrained), cosine to the fp32 teacher on 200 held-out sentences (64 tokens); {threads} thread(s), interleaved",
           ["variant", "target", "params", "cosine mean", "cosine min", "KiB", "size/fp32", "latency/fp32", "how"], rows)


if __name__ == "__main__":
    main()
