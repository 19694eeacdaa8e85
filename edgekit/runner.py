"""The device-side benchmark runner: `python3 edgekit-runner.pyz --artifact DIR ...`.

Stdlib-only at import time (numpy and the interpreters load inside measure()), so on a board
that lacks them it still answers, with what is missing. Pushed to the device as one zipapp
holding this module and edgekit.runtime (see `build_zipapp`). Prints one JSON object on
stdout: init (load) time, first inference, every timed sample, peak RSS, CPU temperature and
frequency before and after. Timed samples cover the interpreter call only (the inputs are
prepared once), like TFLite's benchmark_model. Exit codes: 0 ok, 3 a runtime is missing,
4 the artifact cannot be loaded, 2 bad arguments (or inputs a bare model file leaves open), 5 the
machine is emulated (`emulation()`: nothing is timed there).

A bare .onnx/.tflite file (no manifest) says only its inputs' names, dtypes and dims, some of them
dynamic: `--input-shape [NAME=]DIMS` fixes those (a dynamic batch dim alone defaults to 1), and
integer inputs are filled from `--input-range NAME=LO:HI`, else with zeros (ones for masks), never
from their dtype's whole range. The host plans the same inputs with `BareModel` before it pushes
anything, so a file that cannot run as asked is refused there, in one line.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import resource
import sys
import time
from dataclasses import dataclass
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


@dataclass
class BareInput:
    """One input of a bare model file: as the file declares it, then as it is fed."""

    name: str
    declared: tuple  # per axis: an int (fixed), a str (a named dynamic dim) or None (an unnamed one)
    dtype: str  # numpy name
    quantized: bool = False  # an int8/uint8 input with a scale: quantized float data, not ids
    shape: tuple = ()  # the concrete shape it is fed
    value_range: tuple | None = None  # integer inputs: lo <= v < hi, from --input-range
    fill: str = "random"  # random | range | zeros | ones

    @property
    def is_integer(self) -> bool:
        """Ids, masks, indices (a quantized input is float data in disguise)."""
        return not self.quantized and (self.dtype == "bool" or self.dtype.startswith(("int", "uint")))

    @property
    def dynamic(self) -> list[int]:
        return [k for k, d in enumerate(self.declared) if not isinstance(d, int)]

    def label(self, axis: int) -> str:
        d = self.declared[axis]
        return str(d) if isinstance(d, (int, str)) else f"d{axis}"

    def dims_text(self) -> str:
        return "[" + ",".join(self.label(k) for k in range(len(self.declared))) + "]"

    def to_dict(self) -> dict:
        return {"name": self.name, "declared": self.dims_text(), "shape": list(self.shape), "dtype": self.dtype,
                "fill": self.fill, "value_range": list(self.value_range) if self.value_range else None}


_ORT_DTYPES = {"float": "float32", "double": "float64"}


def _declared_dim(d) -> int | str | None:
    """A fixed dim as an int, a named dynamic one by its name, an unnamed one (0, -1, None, '') as None."""
    if isinstance(d, int):
        return d if d > 0 else None
    return d if isinstance(d, str) and d else None


def declared_inputs(backend) -> list[BareInput]:
    """The inputs of an opened bare file with the dims the file declares (the backends' own TensorInfo
    puts 1 where a dim is dynamic): ONNX Runtime's symbolic dims, LiteRT's shape_signature (-1)."""
    if backend.format == "onnx":
        out = []
        for v in backend._sess.get_inputs():
            kind = v.type[len("tensor("):-1] if v.type.startswith("tensor(") else v.type
            out.append(BareInput(v.name, tuple(_declared_dim(d) for d in (v.shape or ())), _ORT_DTYPES.get(kind, kind)))
        return out
    if backend._runner is not None:  # several subgraphs: the signature runner resizes to what it is given
        by_name = backend._runner.get_input_details()
        details = [by_name[t.name] for t in backend.inputs]
    else:
        by_index = {d["index"]: d for d in backend._it.get_input_details()}
        details = [by_index[i] for i in backend._in_idx]
    return [BareInput(t.name, tuple(_declared_dim(int(d)) for d in info.get("shape_signature", t.shape)), t.dtype,
                      quantized=t.scale is not None) for t, info in zip(backend.inputs, details)]


def plan_inputs(inputs: list[BareInput], where: str, shape_texts=(), range_texts=()) -> list[str]:
    """Fix each input's shape and fill from --input-shape / --input-range; returns notes on the shapes assumed.
    Raises UsageError (one line) for names the file lacks, shapes that do not fit, dims left dynamic."""
    from edgekit.errors import UsageError
    from edgekit.inputs import InputOptions, parse_shapes
    from edgekit.runtime.manifest import MAX_ELEMENTS

    positional, named = parse_shapes(shape_texts)
    ranges = InputOptions.from_cli(ranges=range_texts).ranges
    names = [i.name for i in inputs]
    listing = f"its inputs: {', '.join(f'{i.name} {i.dtype}{i.dims_text()}' for i in inputs)}"
    for given in (*named, *ranges):
        if given not in names:
            raise UsageError(f"{where} has no input named {given!r}", listing)
    if positional and len(positional) != len(inputs):
        raise UsageError(f"{where} has {len(inputs)} input(s) and --input-shape gave {len(positional)} unnamed shape(s)",
                         f"name them, e.g. --input-shape {names[0]}=...; {listing}")
    batch_one = []
    for k, t in enumerate(inputs):
        given = named.get(t.name) or (positional[k] if positional else None)
        if given is not None:
            fits = len(given) == len(t.declared) and all(not isinstance(d, int) or d == g for d, g in zip(t.declared, given))
            if not fits:
                raise UsageError(f"--input-shape {t.name}={','.join(map(str, given))} does not fit input {t.name!r} of {where}, "
                                 f"declared {t.dims_text()}", "give every axis, with the fixed ones as declared")
            t.shape = tuple(given)
        elif not t.dynamic:
            t.shape = tuple(t.declared)
        elif t.dynamic == [0] and len(t.declared) > 1:
            t.shape = (1, *t.declared[1:])
            batch_one.append(t.name)
        else:
            open_dims = [t.label(a) for a in t.dynamic if not (a == 0 and len(t.declared) > 1)]
            suggest = ",".join("1" if a == 0 and a in t.dynamic else t.label(a) for a in range(len(t.declared)))
            raise UsageError(f"input {t.name!r} of {where} has dynamic dims {t.dims_text()}",
                             f"pass --input-shape {t.name}={suggest} with sizes for {', '.join(open_dims)}")
        n = 1
        for d in t.shape:
            n *= d
        if n > MAX_ELEMENTS:
            raise UsageError(f"input {t.name!r} of {where} would hold {n:,} elements, more than the {MAX_ELEMENTS:,} edgekit feeds",
                             "give a smaller --input-shape")
        t.value_range, t.fill = ranges.get(t.name), "random"
        if t.value_range is not None:
            if t.dtype == "bool" or not t.dtype.startswith(("int", "uint")):
                raise UsageError(f"--input-range {t.name}: input {t.name!r} of {where} is {t.dtype}; ranges are for integer inputs",
                                 "drop it, or name an id/mask input")
            t.fill = "range"
        elif t.is_integer:
            t.fill = "ones" if t.dtype == "bool" or "mask" in t.name.lower() else "zeros"
    return [f"dynamic batch dim of {', '.join(map(repr, batch_one))} in {where}: fed batch 1 "
            "(--input-shape NAME=DIMS for another)"] if batch_one else []


def fill_notes(inputs: list[BareInput], where: str) -> list[str]:
    """What the made-up data of integer inputs without a range is, and how to get random values instead."""
    notes = []
    for t in inputs:
        if t.is_integer and t.fill in ("zeros", "ones"):
            what = "ones (a mask, every position on)" if t.fill == "ones" else "zeros (an id valid in any embedding)"
            notes.append(f"input {t.name!r} ({t.dtype}) is fed {what}: {where} does not say which values are valid; "
                         f"--input-range {t.name}=LO:HI feeds random values from LO to HI-1")
    return notes


def make_feed(inputs: list[BareInput], seed: int = 0) -> list:
    """Arrays for the planned inputs: floats uniform in [0, 1), quantized inputs over their dtype, integer
    inputs from their range (uniform in [lo, hi)) or zeros / ones: never the whole integer range."""
    import numpy as np

    from edgekit.runtime.manifest import integer_bounds

    rng = np.random.default_rng(seed)
    feed = []
    for t in inputs:
        dt = np.dtype(t.dtype)
        if t.fill == "range" or (t.fill == "random" and t.quantized):
            lo, hi = integer_bounds(t.dtype, t.value_range)
            feed.append(rng.integers(lo, hi, size=t.shape, dtype=dt))
        elif t.fill in ("zeros", "ones"):
            feed.append((np.zeros if t.fill == "zeros" else np.ones)(t.shape, dtype=dt))
        else:
            feed.append(rng.random(t.shape, dtype=np.float32).astype(dt))
    return feed


class BareModel:
    """A bare .onnx/.tflite file, its inputs fixed to concrete shapes (LiteRT's dynamic dims resized)."""

    def __init__(self, path: str | Path, num_threads: int | None = None, shape_texts=(), range_texts=()):
        from edgekit.runtime.backends import open_backend

        self.path = Path(path)
        self.backend = open_backend(self.path, num_threads)
        self.inputs = declared_inputs(self.backend)
        self.shape_notes = plan_inputs(self.inputs, self.path.name, shape_texts, range_texts)
        self.notes = self.shape_notes + fill_notes(self.inputs, self.path.name)  # what a benchmark's made-up data assumes
        if self.backend.format == "tflite" and self.backend._runner is None:
            it, resized = self.backend._it, False
            for t, index, info in zip(self.inputs, self.backend._in_idx, self.backend.inputs):
                if tuple(t.shape) != tuple(info.shape):
                    it.resize_tensor_input(index, list(t.shape))
                    resized = True
            if resized:
                it.allocate_tensors()

    def feed(self, seed: int = 0) -> list:
        return make_feed(self.inputs, seed)

    def run(self, arrays: list) -> list:
        """One call; quantized outputs come back as floats."""
        from edgekit.runtime import dequantize

        outs = self.backend.run([a.astype(t.dtype, copy=False) for t, a in zip(self.inputs, arrays)])
        return [dequantize(y, o.scale, o.zero_point) if o.scale is not None else y for o, y in zip(self.backend.outputs, outs)]

    @property
    def batch(self) -> int:
        return next((int(t.shape[0]) for t in self.inputs if t.shape), 1)

    def run_batch(self, *arrays) -> list:
        """N samples (each input's first axis counts them) in calls of the fixed batch."""
        from edgekit.errors import UsageError
        from edgekit.runtime import combine_calls

        b, n = self.batch, len(arrays[0])
        if n % b:
            raise UsageError(f"{n} samples do not divide into the batch of {b} that {self.path.name} is fed")
        return combine_calls([self.run([a[i:i + b] for a in arrays]) for i in range(0, n, b)], b)


X86_CPU = ("GenuineIntel", "AuthenticAMD")


def emulation(machine: str | None = None, cpuinfo: str | None = None, system: str | None = None) -> str | None:
    """Why this machine looks emulated, or None. A qemu-user userland (the tests' aarch64 "board") says aarch64
    but runs on another CPU: its /proc/cpuinfo is the host's x86 one, or (a chroot without /proc) missing, which no
    booted Linux board lacks. Timings there measure the emulator, so the runner refuses to time anything."""
    machine = machine or platform.machine()
    system = system or sys.platform
    if not system.startswith("linux"):
        return None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return f"{machine} userland without /proc/cpuinfo (a chroot or emulator, not a booted board)"
    x86 = machine.lower() in ("x86_64", "amd64", "i386", "i686")
    if not x86 and any(v in cpuinfo for v in X86_CPU):
        return f"an x86 CPU runs this {machine} userland (qemu-user)"
    return None


def measure(path: str, warmup: int, runs: int, min_seconds: float, threads: int | None,
            shape_texts=(), range_texts=()) -> dict:
    import numpy  # noqa: F401 - imports are not model load time

    if (Path(path) / "model.onnx").is_file() or path.endswith(".onnx"):
        import onnxruntime  # noqa: F401
    else:
        from edgekit.runtime.backends import tflite_interpreter_class

        tflite_interpreter_class()
    before = thermal_snapshot()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    bare = None
    if Path(path).is_dir():
        from edgekit.runtime import Model

        model = Model(path, num_threads=threads)
        backend, feed = model.backend, model.encode(*_random_inputs(model))
    else:
        bare = BareModel(path, threads, shape_texts, range_texts)
        backend, feed = bare.backend, bare.feed()
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
            "machine": platform.machine(), "python": platform.python_version(),
            "inputs": [t.to_dict() for t in bare.inputs] if bare else [], "notes": bare.notes if bare else []}


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


def run_eval(artifact: str, inputs: str, outputs: str, threads: int | None, shape_texts=(), range_texts=()) -> int:
    """Outputs of the artifact on the device, for `edgekit eval --device`: compared on the host."""
    try:
        import numpy as np

        from edgekit.runtime import Model

        model = Model(artifact, num_threads=threads) if Path(artifact).is_dir() else BareModel(artifact, threads, shape_texts, range_texts)
        with np.load(inputs, allow_pickle=False) as z:
            arrays = [z[i.name] for i in model.inputs]
        t0 = time.perf_counter()
        outs = model.run_batch(*arrays)
        np.savez(outputs, **{f"output_{k}": o for k, o in enumerate(outs)})
    except Exception as exc:  # noqa: BLE001 - reported to the host as data
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "available": check_runtimes()}))
        return 4
    name = getattr(model.backend, "runtime_name", "")
    print(json.dumps({"ok": True, "seconds": time.perf_counter() - t0, "machine": platform.machine(),
                      "runtime": name, "runtime_version": runtime_version(name)}))
    return 0


def runtime_version(name: str) -> str:
    """The installed version of a runtime the runner reports by name (ai-edge-litert, tflite-runtime, onnxruntime)."""
    try:
        mod = __import__({"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}.get(name, name))
        return str(getattr(mod, "__version__", ""))
    except Exception:  # noqa: BLE001 - a version is informational
        return ""


def run_tensors(artifact: str, inputs: str, names_file: str, outputs: str, threads: int | None) -> int:
    """Intermediate tensors of a TFLite artifact on the device, for `edgekit diagnose --device`: every sample of
    INPUTS run one at a time, and only the tensors named in NAMES_FILE (a JSON list) saved, as the interpreter
    holds them (int8 stays int8: 4x less to move than floats), compressed. The host sends a probe copy of the
    artifact whose model lists those tensors as extra subgraph outputs, so every kernel (the XNNPACK delegate's
    included) writes them as it does in production: the run here is the production run, not a debugging
    interpreter with other kernels. Output keys: s{sample}_t{k} (k indexes NAMES_FILE) and s{sample}_out{k}
    (the artifact's own outputs); a name the model lacks is reported, not guessed."""
    try:
        import numpy as np

        from edgekit.runtime import Model

        with open(names_file) as f:
            names = json.load(f)
        model = Model(artifact, num_threads=threads)
        backend = model.backend
        if backend.format != "tflite":
            raise ValueError("intermediate tensors are returned for TFLite artifacts")
        with np.load(inputs, allow_pickle=False) as z:
            arrays = [z[i.name] for i in model.inputs]
        index = {d["name"]: d["index"] for d in backend._it.get_tensor_details()}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"{len(missing)} requested tensor(s) are not in the model, e.g. {missing[0]!r}")
        got = {}
        for s in range(len(arrays[0])):
            outs = backend.run(model.encode(*(a[s:s + 1] for a in arrays)))
            got.update({f"s{s}_t{k}": np.asarray(backend._it.get_tensor(index[n])) for k, n in enumerate(names)})
            got.update({f"s{s}_out{k}": np.asarray(v) for k, v in enumerate(outs)})
        np.savez_compressed(outputs, **got)
    except Exception as exc:  # noqa: BLE001 - reported to the host as data
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "available": check_runtimes()}))
        return 4
    name = getattr(backend, "runtime_name", "")
    print(json.dumps({"ok": True, "samples": len(arrays[0]), "tensors": len(names), "machine": platform.machine(),
                      "runtime": name, "runtime_version": runtime_version(name)}))
    return 0


PAYLOAD = ("__init__.py", "errors.py", "inputs.py", "runner.py", "runtime/__init__.py", "runtime/backends.py", "runtime/manifest.py",
           "runtime/preprocess.py")


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
    ap.add_argument("--input-shape", action="append", default=[], metavar="[NAME=]DIMS", help="a bare file's input shape")
    ap.add_argument("--input-range", action="append", default=[], metavar="NAME=LO:HI", help="a bare file's integer input values")
    ap.add_argument("--check", action="store_true", help="report the interpreters available, then exit")
    ap.add_argument("--eval", nargs=2, metavar=("INPUTS_NPZ", "OUTPUTS_NPZ"),
                    help="run every sample of INPUTS_NPZ (arrays named like the artifact's inputs) and save the outputs")
    ap.add_argument("--tensors", nargs=3, metavar=("INPUTS_NPZ", "NAMES_JSON", "OUTPUTS_NPZ"),
                    help="run each sample of INPUTS_NPZ and save the tensors NAMES_JSON lists (compressed)")
    args = ap.parse_args(argv)
    if args.check:
        print(json.dumps(check_runtimes()))
        return 0
    if args.tensors:
        return run_tensors(args.artifact, *args.tensors, args.threads or None)
    if args.eval:
        return run_eval(args.artifact, args.eval[0], args.eval[1], args.threads or None, args.input_shape, args.input_range)
    if not args.artifact:
        ap.error("--artifact is required")
    why = emulation()
    if why:  # refused before anything is timed: an emulator's timings say nothing about a board
        print(json.dumps({"ok": False, "kind": "emulated", "error": why}))
        return 5
    try:
        result = measure(args.artifact, args.warmup, args.runs, args.min_seconds, args.threads or None,
                         args.input_shape, args.input_range)
    except ImportError as exc:
        print(json.dumps({"ok": False, "kind": "missing-runtime", "error": str(exc), "available": check_runtimes()}))
        return 3
    except Exception as exc:  # noqa: BLE001 - reported to the host as data, not a traceback
        from edgekit.errors import RuntimeMissing, UsageError

        if isinstance(exc, UsageError):  # a bare file's inputs left open or misnamed: the user's to fix
            print(json.dumps({"ok": False, "kind": "usage", "error": str(exc)}))
            return 2
        kind = "missing-runtime" if isinstance(exc, RuntimeMissing) else "load-or-run"
        print(json.dumps({"ok": False, "kind": kind, "error": f"{type(exc).__name__}: {exc}", "available": check_runtimes()}))
        return 3 if kind == "missing-runtime" else 4
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
