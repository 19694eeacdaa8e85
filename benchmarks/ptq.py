"""int8 post-training quantization: edgekit's targets next to the peers' own routes, on real models, in one run
(issue 12's table).

Per model, one table: each route's top-1 agreement with the float model (PyTorch) on held-out inputs that no
route calibrated on (and its confident-sample agreement), the artifact's size over the fp32 parameter bytes, and
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

    python benchmarks/ptq.py                                  # EfficientNet-Lite0 (ImageNet weights, photos)
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
    data: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (calib, held) inputs
    build: Callable  # the float PyTorch model (the reference)
    flags: tuple[str, ...] = ()


def _effnet_data(n: int, h: int):
    import efficientnet_lite0 as eff

    return eff.photos(n, split="calib"), eff.photos(h, split="val")


def _effnet_build():
    import efficientnet_lite0 as eff

    return eff.build()


CASES = {
    "efficientnet_lite0": Case("efficientnet_lite0", f"{ROOT / 'tests/models/efficientnet_lite0.py'}:build",
                               "EfficientNet-Lite0, real ImageNet weights; calibration and held-out photos from disjoint source photos",
                               _effnet_data, _effnet_build),
}

VARIANTS = {  # name -> (base target, {quantize key: value}) written into a copy of the target file
    "onnx-int8 percentile(asym)": ("onnx-int8", {"calib_method": "percentile"}),
    "onnx-int8 minmax": ("onnx-int8", {"calib_method": "minmax"}),
    "onnx-int8 search": ("onnx-int8", {"calib_method": "search"}),
}


# ------------------------------------------------------------------ running any .onnx / .tflite on one thread

class Runner:
    """A bare .onnx or .tflite file on one thread; float inputs quantized and outputs dequantized where the file
    takes integers (edgekit's tflite-int8 has int8 I/O), so every route is fed the same float samples."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".onnx":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            self.name = self.sess.get_inputs()[0].name
        else:
            from ai_edge_litert.interpreter import Interpreter

            self.it = Interpreter(model_path=str(path), num_threads=1)
            self.it.allocate_tensors()
            self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]

    def nhwc(self) -> bool:
        return self.path.suffix == ".tflite" and self.inp["shape"][-1] == 3

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.path.suffix == ".onnx":
            return self.sess.run(None, {self.name: x})[0]
        if self.nhwc():
            x = x.transpose(0, 2, 3, 1)
        d = self.inp
        if d["dtype"] != np.float32:
            s, z = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / s + z), info.min, info.max).astype(d["dtype"])
        self.it.set_tensor(d["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] != np.float32:
            s, z = self.out["quantization"]
            y = (y.astype(np.float32) - z) * s
        return y

    def outputs(self, xs: np.ndarray) -> np.ndarray:
        return np.concatenate([self(xs[i:i + 1]) for i in range(len(xs))])


# ------------------------------------------------------------------ peers

def ort_peer(fp32: Path, dst: Path, calib: np.ndarray, **kw) -> Path:
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnxruntime as ort

    pre = dst.with_name(dst.stem + "-pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    inp = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader:
        def __init__(self):
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {inp: x}

    quantize_static(str(pre), str(dst), Reader(), **kw)
    return dst


def aeq_peer(fp32: Path, dst: Path, calib: np.ndarray) -> Path:
    """ai-edge-quantizer's default static int8 recipe with its default calibration, as its README shows it."""
    import ai_edge_quantizer as aeq
    from ai_edge_quantizer import recipe
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(fp32))
    sig = it.get_signature_list()
    key = next(iter(sig))
    name = sig[key]["inputs"][0]
    nhwc = it.get_input_details()[0]["shape"][-1] == 3
    qz = aeq.Quantizer(str(fp32), recipe.static_wi8_ai8())
    feed = {key: [{name: (calib[i:i + 1].transpose(0, 2, 3, 1) if nhwc else calib[i:i + 1])} for i in range(len(calib))]}
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


def figures(got: np.ndarray, ref: np.ndarray) -> dict:
    from edgekit.validate import softmax

    same = got.argmax(1) == ref.argmax(1)
    conf = softmax(ref.astype(np.float64)).max(1) >= CONFIDENT
    return {"agreement": float(same.mean()), "n": int(len(same)), "confident_agreement": float(same[conf].mean()) if conf.any() else None,
            "confident_n": int(conf.sum())}


def run_case(case: Case, args, folder: Path) -> dict:
    import torch

    calib, held = case.data(args.calib, args.held)
    np.save(folder / "calib.npy", calib)
    np.save(folder / "val.npy", held[:32])
    model = case.build()
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(held[i:i + 16])).numpy() for i in range(0, len(held), 16)])
    params = sum(p.numel() * 4 for p in model.parameters())
    variants = [v for v in args.variants.split(",") if v]
    targets = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8", "tflite-int8-pt2e"]
    tfiles = {v: str(variant_target(folder, v)) for v in variants}
    run = run_convert(case.source, targets + list(tfiles.values()),
                      ["--calib", str(folder / "calib.npy"), "--val-data", str(folder / "val.npy"), *case.flags], folder, args.timeout)
    files: dict[str, Path] = {}
    for r in (run["result"] or {}).get("results", []):
        a = r.get("artifact") or {}
        t = r.get("target") or a.get("target", {}).get("name")
        label = next((v for v, p in tfiles.items() if Path(p).stem == t or p == t), t)
        if a.get("path"):
            f = next(Path(a["path"]).glob("model.*"))
            files[f"edgekit {label}"] = f
    if "edgekit onnx-fp32" in files:
        fp32 = files["edgekit onnx-fp32"]
        from onnxruntime.quantization import CalibrationMethod, QuantType

        files["ORT quantize_static defaults"] = ort_peer(fp32, folder / "ort-default.onnx", calib)
        files["ORT per-channel U8S8 percentile"] = ort_peer(
            fp32, folder / "ort-pc-percentile.onnx", calib, per_channel=True, activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.Percentile)
    if "edgekit tflite-fp32" in files:
        files["ai-edge-quantizer static_wi8_ai8"] = aeq_peer(files["edgekit tflite-fp32"], folder / "aeq-default.tflite", calib)
    rows = {}
    runners = {label: Runner(files[label]) for label in sorted(files, key=lambda k: (files[k].suffix, "fp32" not in k, k))}
    for label, r in runners.items():
        rows[label] = {"runtime": "ONNX Runtime" if files[label].suffix == ".onnx" else "LiteRT", **figures(r.outputs(held), ref),
                       "size_ratio": files[label].stat().st_size / params}
    # latency: the routes timed in turn, one call each per round, so a slow spell of the machine hits them alike
    # (timed one route after another, two identical onnx-int8 artifacts differed by 30%)
    times: dict[str, list[float]] = {label: [] for label in runners}
    x = held[:1]
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
        print(f"  {label:38s} agr {row['agreement']:.3f} conf {row['confident_agreement'] or 0:.3f} "
              f"(n {row['confident_n']}) size {row['size_ratio']:.3f} lat {lat:.2f} ms", flush=True)
    return {"model": case.name, "about": case.about, "calib": len(calib), "held": len(held), "convert_rc": run["rc"],
            "convert_error": run.get("error"), "rows": rows}


def table(res: dict) -> str:
    out = [f"### {res['model']}: {res['about']}", f"calibration {res['calib']}, held out {res['held']}", "",
           "| route | runtime | agreement | confident agreement (n) | size / fp32 params | int8 ÷ fp32 latency (1 thread) |",
           "|---|---|---|---|---|---|"]
    for label, r in res["rows"].items():
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
