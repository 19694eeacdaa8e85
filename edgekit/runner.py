"""The device-side benchmark runner: `python3 edgekit-runner.pyz --artifact DIR ...`.

Stdlib-only at import time (numpy and the interpreters load inside measure()), so on a board
that lacks them it still answers, with what is missing. Pushed to the device as one zipapp
holding this module and edgekit.runtime (see `build_zipapp`). Prints one JSON object on
stdout: init (load) time, first inference, every timed sample, peak RSS, CPU temperature and
frequency before and after. Timed samples cover the interpreter call only (the inputs are
prepared once), like TFLite's benchmark_model. Exit codes: 0 ok, 3 a runtime is missing,
4 the artifact cannot be loaded, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import resource
import sys
import time
from pathlib import Path


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def thermal_snapshot() -> dict:
    """Hottest thermal zone (deg C) and mean current CPU frequency (MHz), where Linux exposes them."""
    temps = [t for t in (_read_int(p) for p in glob.glob("/sys/class/thermal/thermal_zone*/temp")) if t is not None]
    freqs = [f for f in (_read_int(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")) if f]
    return {"temp_c": round(max(temps) / 1000.0, 1) if temps else None,
            "freq_mhz": round(sum(freqs) / len(freqs) / 1000.0, 1) if freqs else None}


def _rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0


def _random_inputs(model):
    import numpy as np

    rng = np.random.default_rng(0)
    feed = []
    for i in model.inputs:
        if i.takes_integers:  # ids, masks: valid values, never the whole range
            lo, hi = i.value_range or (0, 2)
            feed.append(rng.integers(lo, hi, size=tuple(i.shape)).astype(i.dtype))
        else:
            feed.append(rng.random(tuple(i.source_shape), dtype=np.float32))
    return feed


def _bare_feed(backend):
    import numpy as np

    rng = np.random.default_rng(0)
    feed = []
    for t in backend.inputs:
        dt = np.dtype(t.dtype)
        if np.issubdtype(dt, np.integer) or dt == np.bool_:
            # a bare model says nothing of its ids' range: 0 and 1 are valid for any embedding and mask
            feed.append(rng.integers(0, 2, size=t.shape).astype(dt))
        else:
            feed.append(rng.random(t.shape).astype(dt))
    return feed


def measure(path: str, warmup: int, runs: int, min_seconds: float, threads: int | None) -> dict:
    import numpy  # noqa: F401 - imports are not model load time

    if (Path(path) / "model.onnx").is_file() or path.endswith(".onnx"):
        import onnxruntime  # noqa: F401
    else:
        from edgekit.runtime.backends import tflite_interpreter_class

        tflite_interpreter_class()
    before = thermal_snapshot()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    if Path(path).is_dir():
        from edgekit.runtime import Model

        model = Model(path, num_threads=threads)
        backend, feed = model.backend, model.encode(*_random_inputs(model))
    else:
        from edgekit.runtime.backends import open_backend

        backend = open_backend(path, threads)
        feed = _bare_feed(backend)
    init_ms = (time.perf_counter() - t0) * 1000
    t1 = time.perf_counter()
    backend.run(feed)
    first_ms = (time.perf_counter() - t1) * 1000
    for _ in range(warmup):
        backend.run(feed)
    samples = []
    start = time.perf_counter()
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter_ns()
        backend.run(feed)
        samples.append((time.perf_counter_ns() - t) / 1e6)
    return {"ok": True, "runtime": getattr(backend, "runtime_name", ""), "init_ms": init_ms, "first_ms": first_ms,
            "warmup_runs": warmup, "samples_ms": samples, "peak_rss_mb": _rss_mb(), "rss_before_load_mb": rss0,
            "thermal_before": before, "thermal_after": thermal_snapshot(),
            "machine": platform.machine(), "python": platform.python_version()}


def check_runtimes() -> dict:
    """Which interpreters this Python can import: what `edgekit doctor` reports."""
    found = {"python": platform.python_version(), "machine": platform.machine()}
    for mod in ("numpy", "ai_edge_litert", "tflite_runtime", "onnxruntime"):
        try:
            m = __import__(mod)
            found[mod] = getattr(m, "__version__", "yes")
        except Exception:  # noqa: BLE001 - an import can fail in many ways on a board (ABI, numpy 2, ...)
            found[mod] = None
    return found


def run_eval(artifact: str, inputs: str, outputs: str, threads: int | None) -> int:
    """Outputs of the artifact on the device, for `edgekit eval --device`: compared on the host."""
    try:
        import numpy as np

        from edgekit.runtime import Model

        model = Model(artifact, num_threads=threads)
        with np.load(inputs, allow_pickle=False) as z:
            arrays = [z[i.name] for i in model.inputs]
        t0 = time.perf_counter()
        outs = model.run_batch(*arrays)
        np.savez(outputs, **{f"output_{k}": o for k, o in enumerate(outs)})
    except Exception as exc:  # noqa: BLE001 - reported to the host as data
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "available": check_runtimes()}))
        return 4
    print(json.dumps({"ok": True, "seconds": time.perf_counter() - t0, "machine": platform.machine(),
                      "runtime": getattr(model.backend, "runtime_name", "")}))
    return 0


PAYLOAD = ("__init__.py", "errors.py", "runner.py", "runtime/__init__.py", "runtime/backends.py", "runtime/manifest.py")


def build_zipapp(dest: Path) -> Path:
    """Write the runner zipapp (edgekit.runtime + this module, ~20 KB) to `dest`."""
    import zipfile

    src = Path(__file__).resolve().parent
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in PAYLOAD:
            z.write(src / rel, f"edgekit/{rel}")
        z.writestr("__main__.py", "import sys\nfrom edgekit.runner import main\nsys.exit(main())\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgekit-runner")
    ap.add_argument("--artifact", help="artifact folder or .tflite/.onnx file")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--min-seconds", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="report the interpreters available, then exit")
    ap.add_argument("--eval", nargs=2, metavar=("INPUTS_NPZ", "OUTPUTS_NPZ"),
                    help="run every sample of INPUTS_NPZ (arrays named like the artifact's inputs) and save the outputs")
    args = ap.parse_args(argv)
    if args.check:
        print(json.dumps(check_runtimes()))
        return 0
    if args.eval:
        return run_eval(args.artifact, args.eval[0], args.eval[1], args.threads or None)
    if not args.artifact:
        ap.error("--artifact is required")
    try:
        result = measure(args.artifact, args.warmup, args.runs, args.min_seconds, args.threads or None)
    except ImportError as exc:
        print(json.dumps({"ok": False, "kind": "missing-runtime", "error": str(exc), "available": check_runtimes()}))
        return 3
    except Exception as exc:  # noqa: BLE001 - reported to the host as data, not a traceback
        from edgekit.errors import RuntimeMissing

        kind = "missing-runtime" if isinstance(exc, RuntimeMissing) else "load-or-run"
        print(json.dumps({"ok": False, "kind": kind, "error": f"{type(exc).__name__}: {exc}", "available": check_runtimes()}))
        return 3 if kind == "missing-runtime" else 4
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
