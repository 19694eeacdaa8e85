"""int8 post-training quantization: edgekit's targets next to the peers' own routes, on real models, in one run
(issue 12's table).

Per model, one table: each route's top-1 agreement with the float model (PyTorch) on held-out inputs that no
route calibrated on (and its confident-sample agreement; for a sentence embedding: mean and worst cosine with the
float embedding and nearest-neighbour agreement among the held-out sentences), the artifact's size over the fp32 parameter bytes, and
its latency over the fp32 artifact's in the same runtime on one thread (median of --runs calls, after warm-up; the
routes timed in turn, one call each per round).

Routes:
  ONNX Runtime   edgekit onnx-int8 (as shipped) and variants of it (--variants: calib_method / activation
                 symmetry written into a copy of the target file); ORT's quantize_static with its own
                 defaults, and with the setting the issue measured (per-channel, U8S8, percentile), both after
                 ORT's quant_pre_process, on edgekit's onnx-fp32 export.
  LiteRT         edgekit tflite-int8 and tflite-int8-pt2e (litert-torch's PT2E quantizer); ai-edge-quantizer's
                 default static recipe (static_wi8_ai8, its default calibration) on edgekit's tflite-fp32.
Every route calibrates on the same --calib samples.

    python benchmarks/ptq.py                                  # EfficientNet-Lite0 (ImageNet weights, photos), MiniLM
    python benchmarks/ptq.py --models efficientnet_lite0 --calib 64 --held 256 --keep /tmp/ptq
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_coverage():
    """benchmarks/coverage.py as a module, by path (it puts the checkout and tests/models on sys.path)."""
    import importlib.util

    name = "edgekit_bench_coverage"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("coverage.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


cov = _load_coverage()
machine, run_convert = cov.machine, cov.run_convert

CONFIDENT = 0.5


@dataclass
class Case:
    name: str
    source: str  # what `edgekit convert` takes
    about: str
    data: Callable[[int, int], tuple[dict, dict]]  # (calib, held): {input name: samples}, in the model's input order
    build: Callable  # the float PyTorch model (the reference)
    kind: str = "class"  # class | embedding: what the figures compare
    flags: tuple[str, ...] = ()


def _effnet_data(n: int, h: int):
    import efficientnet_lite0 as eff

    return {"image": eff.photos(n, split="calib")}, {"image": eff.photos(h, split="val")}


def _effnet_build():
    import efficientnet_lite0 as eff

    return eff.build()


def _minilm_data(n: int, h: int):
    import minilm

    sents = minilm.sentences()
    return minilm.encode(sents[:n]), minilm.encode(sents[n:n + h])


def _minilm_build():
    import minilm

    return minilm.build()


CASES = {
    "efficientnet_lite0": Case("efficientnet_lite0", f"{ROOT / 'tests/models/efficientnet_lite0.py'}:build",
                               "EfficientNet-Lite0, real ImageNet weights; calibration and held-out photos from disjoint source photos",
                               _effnet_data, _effnet_build),
    "minilm": Case("minilm", f"{ROOT / 'tests/models/minilm.py'}:build",
                   "all-MiniLM-L6-v2 sentence embeddings, real weights; int64 token ids; calibration and held-out sentences disjoint",
                   _minilm_data, _minilm_build, kind="embedding"),
}

VARIANTS = {  # name -> (base target, {quantize key: value}) written into a copy of the target file
    "onnx-int8 percentile(asym)": ("onnx-int8", {"calib_method": "percentile"}),
    "onnx-int8 minmax": ("onnx-int8", {"calib_method": "minmax"}),
    "onnx-int8 search": ("onnx-int8", {"calib_method": "search"}),
}


# ------------------------------------------------------------------ running any .onnx / .tflite on one thread

class Runner:
    """A bare .onnx or .tflite file on one thread, fed the model's inputs (a dict in the model's input order, one sample
    per call): float inputs quantized and outputs dequantized where the file takes integers (edgekit's tflite-int8 has
    int8 I/O), NCHW images made NHWC where the file takes NHWC, token ids cast to the file's integer type, so every
    route is fed the same samples."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".onnx":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            self.ins = [(i.name, np.int64 if "int64" in i.type else np.int32 if "int32" in i.type else np.float32, None)
                        for i in self.sess.get_inputs()]
        else:
            from ai_edge_litert.interpreter import Interpreter

            self.it = Interpreter(model_path=str(path), num_threads=1)
            self.it.allocate_tensors()
            sig = self.it.get_signature_list()
            self.runner = self.it.get_signature_runner(next(iter(sig)))
            details = self.runner.get_input_details()
            keys = sorted(details, key=lambda k: int(k.rsplit("_", 1)[1]) if k.rsplit("_", 1)[-1].isdigit() else k)
            self.ins = [(k, details[k]["dtype"], details[k]) for k in keys]
            (self.out_key, self.out), = list(self.runner.get_output_details().items())[:1]

    def _feed(self, xs: list[np.ndarray]) -> dict:
        feed = {}
        for (name, dtype, d), x in zip(self.ins, xs):
            if np.issubdtype(np.asarray(x).dtype, np.integer):
                feed[name] = np.asarray(x).astype(dtype)
                continue
            if d is not None and x.ndim == 4 and list(d["shape"]) != list(x.shape) and d["shape"][-1] == x.shape[1]:
                x = x.transpose(0, 2, 3, 1)
            if d is not None and dtype != np.float32:
                s, z = d["quantization"]
                info = np.iinfo(dtype)
                x = np.clip(np.round(x / s + z), info.min, info.max).astype(dtype)
            feed[name] = x
        return feed

    def __call__(self, xs: list[np.ndarray]) -> np.ndarray:
        if self.path.suffix == ".onnx":
            return self.sess.run(None, self._feed(xs))[0]
        y = self.runner(**self._feed(xs))[self.out_key]
        if self.out["dtype"] != np.float32:
            s, z = self.out["quantization"]
            y = (y.astype(np.float32) - z) * s
        return y

    def outputs(self, data) -> np.ndarray:
        arrays = list(data.values()) if isinstance(data, dict) else [data]
        return np.concatenate([self([a[i:i + 1] for a in arrays]) for i in range(len(arrays[0]))])


# ------------------------------------------------------------------ peers

def ort_peer(fp32: Path, dst: Path, calib, **kw) -> Path:
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnxruntime as ort

    pre = dst.with_name(dst.stem + "-pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    names = [i.name for i in ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()]
    arrays = list(calib.values()) if isinstance(calib, dict) else [calib]

    class Reader:
        def __init__(self):
            self.it = iter(range(len(arrays[0])))

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {n: a[i:i + 1] for n, a in zip(names, arrays)}

    quantize_static(str(pre), str(dst), Reader(), **kw)
    return dst


def aeq_peer(fp32: Path, dst: Path, calib) -> Path:
    """ai-edge-quantizer's default static int8 recipe with its default calibration, as its README shows it."""
    import ai_edge_quantizer as aeq
    from ai_edge_quantizer import recipe

    r = Runner(fp32)
    key = next(iter(r.it.get_signature_list()))
    arrays = list(calib.values()) if isinstance(calib, dict) else [calib]
    qz = aeq.Quantizer(str(fp32), recipe.static_wi8_ai8())
    feed = {key: [r._feed([a[i:i + 1] for a in arrays]) for i in range(len(arrays[0]))]}
    result = qz.quantize(qz.calibrate(feed))
    dst.write_bytes(bytes(result.quantized_model))
    return dst


# ------------------------------------------------------------------ one model

def variant_target(folder: Path, name: str) -> Path:
    import tomllib

    base, changes = VARIANTS[name]
    text = (ROOT / "targets" / f"{base}.toml").read_text()
    data = tomllib.loads(text)
    lines = []
    for ln in text.splitlines():
        key = ln.split("=", 1)[0].strip()
        if key in changes and "=" in ln:
            ln = f"{key} = {json.dumps(changes[key])}"
        lines.append(ln)
    missing = [k for k in changes if k not in data.get("quantize", {})]
    out = "\n".join(lines) + "\n"
    if missing:
        out = out.replace("[quantize]\n", "[quantize]\n" + "".join(f"{k} = {json.dumps(changes[k])}\n" for k in missing))
    path = folder / (name.replace(" ", "_").replace("(", "-").replace(")", "") + ".toml")
    path.write_text(out)
    return path


def figures(got: np.ndarray, ref: np.ndarray, kind: str = "class") -> dict:
    from edgekit.validate import softmax

    if kind == "embedding":
        g, r = got.reshape(len(got), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
        cos = np.sum(g * r, 1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1), 1e-12)

        def nearest(e):
            sim = e @ e.T
            np.fill_diagonal(sim, -np.inf)
            return sim.argmax(1)
        return {"cosine": float(cos.mean()), "min_cosine": float(cos.min()), "n": int(len(cos)),
                "agreement": float(np.mean(nearest(g) == nearest(r)))}

    same = got.argmax(1) == ref.argmax(1)
    conf = softmax(ref.astype(np.float64)).max(1) >= CONFIDENT
    return {"agreement": float(same.mean()), "n": int(len(same)), "confident_agreement": float(same[conf].mean()) if conf.any() else None,
            "confident_n": int(conf.sum())}


def _save(folder: Path, stem: str, data: dict, n: int | None = None) -> Path:
    """One input: a .npy (what `--calib` takes for a single-input model); several: an .npz keyed by input name."""
    if len(data) == 1:
        path = folder / f"{stem}.npy"
        np.save(path, next(iter(data.values()))[:n])
    else:
        path = folder / f"{stem}.npz"
        np.savez(path, **{k: v[:n] for k, v in data.items()})
    return path


def run_case(case: Case, args, folder: Path) -> dict:
    import torch

    calib, held = case.data(args.calib, args.held)
    cpath, vpath = _save(folder, "calib", calib), _save(folder, "val", held, 32)
    model = case.build()
    arrays = list(held.values())
    with torch.no_grad():
        ref = np.concatenate([model(*(torch.from_numpy(a[i:i + 16]) for a in arrays)).numpy() for i in range(0, len(arrays[0]), 16)])
    params = sum(p.numel() * 4 for p in model.parameters())
    variants = [v for v in args.variants.split(",") if v]
    targets = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "tflite-int8-pt2e"]
    tfiles = {v: str(variant_target(folder, v)) for v in variants}
    run = run_convert(case.source, targets + list(tfiles.values()),
                      ["--calib", str(cpath), "--val-data", str(vpath), *case.flags], folder, args.timeout)
    files: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for r in (run["result"] or {}).get("results", []):
        a = r.get("artifact") or {}
        t = r.get("target") or a.get("target", {}).get("name")
        label = next((v for v, p in tfiles.items() if Path(p).stem == t or p == t), t)
        if a.get("path"):
            files[f"edgekit {label}"] = next(Path(a["path"]).glob("model.*"))
        else:
            failed[f"edgekit {label}"] = str(r.get("error") or "failed")[:160]

    def peer(label: str, make) -> None:
        try:
            files[label] = make()
        except Exception as exc:  # a peer route that fails on this model is a row of the table, not the end of the run
            failed[label] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"

    if "edgekit onnx-fp32" in files:
        fp32 = files["edgekit onnx-fp32"]
        from onnxruntime.quantization import CalibrationMethod, QuantType

        peer("ORT quantize_static defaults", lambda: ort_peer(fp32, folder / "ort-default.onnx", calib))
        peer("ORT per-channel U8S8 percentile", lambda: ort_peer(
            fp32, folder / "ort-pc-percentile.onnx", calib, per_channel=True, activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.Percentile))
    if "edgekit tflite-fp32" in files:
        peer("ai-edge-quantizer static_wi8_ai8", lambda: aeq_peer(files["edgekit tflite-fp32"], folder / "aeq-default.tflite", calib))
    rows = {}
    runners = {}
    for label in sorted(files, key=lambda k: (files[k].suffix, "fp32" not in k, k)):
        try:
            runners[label] = r = Runner(files[label])
            rows[label] = {"runtime": "ONNX Runtime" if files[label].suffix == ".onnx" else "LiteRT",
                           **figures(r.outputs(held), ref, case.kind), "size_ratio": files[label].stat().st_size / params}
        except Exception as exc:
            runners.pop(label, None)
            failed[label] = f"runs, but not here: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    # latency: the routes timed in turn, one call each per round, so a slow spell of the machine hits them alike
    # (timed one route after another, two identical onnx-int8 artifacts differed by 30%)
    times: dict[str, list[float]] = {label: [] for label in runners}
    x = [a[:1] for a in arrays]
    for r in runners.values():
        for _ in range(3):
            r(x)
    for _ in range(args.runs):
        for label, r in runners.items():
            t0 = time.perf_counter()
            r(x)
            times[label].append((time.perf_counter() - t0) * 1e3)
    base = {files[k].suffix: statistics.median(v) for k, v in times.items() if "fp32" in k}
    for label, row in rows.items():
        lat = statistics.median(times[label])
        row["latency_ms"], row["latency_ratio"] = lat, lat / base.get(files[label].suffix, lat)
        print(f"  {label:38s} {_figs(row, case.kind)} size {row['size_ratio']:.3f} lat {lat:.2f} ms", flush=True)
    for label, why in failed.items():
        rows[label] = {"runtime": "ONNX Runtime" if "ORT" in label or "onnx" in label else "LiteRT", "error": why}
        print(f"  {label:38s} FAILED {why}", flush=True)
    return {"model": case.name, "about": case.about, "kind": case.kind, "calib": len(calib[next(iter(calib))]),
            "held": len(arrays[0]), "convert_rc": run["rc"], "convert_error": run.get("error"), "rows": rows}


def _figs(r: dict, kind: str) -> str:
    if kind == "embedding":
        return f"cos {r['cosine']:.4f} (min {r['min_cosine']:.3f}) nn {r['agreement']:.3f}"
    return f"agr {r['agreement']:.3f} conf {r['confident_agreement'] or 0:.3f} (n {r['confident_n']})"


def table(res: dict) -> str:
    emb = res.get("kind") == "embedding"
    head = ("| route | runtime | mean cosine (min) | nearest-neighbour agreement | size / fp32 params | int8 ÷ fp32 latency (1 thread) |"
            if emb else "| route | runtime | agreement | confident agreement (n) | size / fp32 params | int8 ÷ fp32 latency (1 thread) |")
    out = [f"### {res['model']}: {res['about']}", f"calibration {res['calib']}, held out {res['held']}", "", head, "|---|---|---|---|---|---|"]
    for label, r in res["rows"].items():
        if "error" in r:
            out.append(f"| {label} | {r['runtime']} | failed: {r['error']} | | | |")
        elif emb:
            out.append(f"| {label} | {r['runtime']} | {r['cosine']:.4f} ({r['min_cosine']:.3f}) | {r['agreement']:.3f} | "
                       f"{r['size_ratio']:.3f} | {r['latency_ratio']:.2f} |")
        else:
            conf = f"{r['confident_agreement']:.3f} ({r['confident_n']})" if r["confident_agreement"] is not None else "-"
            out.append(f"| {label} | {r['runtime']} | {r['agreement']:.3f} | {conf} | {r['size_ratio']:.3f} | {r['latency_ratio']:.2f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--calib", type=int, default=64, help="calibration samples (every route)")
    ap.add_argument("--held", type=int, default=256, help="held-out samples the agreement is measured on")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="edgekit target variants (comma-separated names)")
    ap.add_argument("--runs", type=int, default=50, help="timed calls per route (in rounds over the routes)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--keep")
    args = ap.parse_args()
    print(f"# int8 PTQ routes, {machine()}", flush=True)
    results = []
    for name in args.models.split(","):
        folder = Path(args.keep) / name if args.keep else Path(tempfile.mkdtemp(prefix=f"ptq-{name}-"))
        folder.mkdir(parents=True, exist_ok=True)
        print(f"## {name}", flush=True)
        res = run_case(CASES[name], args, folder)
        results.append(res)
        print(table(res), flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
