"""edgekit.bench (this module: edgekit.measure): measure artifacts where they will run.

Protocol: push the artifact and a runner to a fresh folder on the device (under its lock), load
(init time), one first inference, warm-up runs, then N timed runs (or a minimum duration); every
raw sample comes back, with p50/p90/p99, mean, std, min, max, coefficient of variation, peak
memory, and CPU temperature/frequency before and after. The folder is removed afterwards, even
when the run fails. Two runners: edgekit's Python runtime (any device with python3 + numpy + an
interpreter) and TFLite's benchmark_model binary (Android; the user brings it).

A bare .onnx/.tflite file has no manifest to say its input shapes and valid ids: `input_shapes` /
`input_ranges` (the CLI's --input-shape / --input-range) go to the runner as its own arguments, and
the host plans the same inputs first (edgekit.runner.BareModel), so a dynamic dim left open or a
misnamed input is one UsageError before any device is touched.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from edgekit.devices.base import Device
from edgekit.devices.profiles import DeviceProfile, open_device, resolve
from edgekit.errors import ArtifactError, DeviceError, EdgekitError, RuntimeMissing, UsageError

if TYPE_CHECKING:
    from edgekit.runtime.manifest import Manifest

CV_WARN = 0.05
TEMP_RISE_WARN_C = 5.0
FREQ_DROP_WARN = 0.10

# Thermal zones and cpufreq through the device's shell (used around benchmark_model runs).
THERMAL_SCRIPT = (
    "t=0; for f in /sys/class/thermal/thermal_zone*/temp; do v=$(cat \"$f\" 2>/dev/null) || continue; "
    "case $v in ''|*[!0-9]*) continue;; esac; [ \"$v\" -gt \"$t\" ] && t=$v; done; echo temp $t; "
    "s=0; n=0; for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq; do v=$(cat \"$f\" 2>/dev/null) || continue; "
    "s=$((s+v)); n=$((n+1)); done; echo freq $s $n"
)


@dataclass
class BenchOptions:
    warmup: int = 10
    runs: int = 100
    min_seconds: float = 0.0
    threads: int | None = None  # None: the profile's threads, else the runtime's default
    cooldown_s: float = 0.0
    timeout_s: float | None = None  # the whole measurement step; None: the profile's timeout x 5
    benchmark_binary: str | None = None
    runner: str | None = None  # override the profile's runner
    input_shapes: Sequence[str] = ()  # bare files: --input-shape [NAME=]DIMS
    input_ranges: Sequence[str] = ()  # bare files: --input-range NAME=LO:HI


@dataclass
class BenchResult:
    artifact: str
    device: str
    target: str = ""
    runner: str = ""
    status: str = "ok"  # ok | error
    error: str = ""
    size_bytes: int = 0
    threads: int | None = None
    samples_ms: list[float] | None = None
    stats: dict = field(default_factory=dict)  # p50_ms p90_ms p99_ms mean_ms std_ms min_ms max_ms cv runs
    init_ms: float | None = None
    first_ms: float | None = None
    peak_mem_mb: float | None = None
    thermal_before: dict = field(default_factory=dict)
    thermal_after: dict = field(default_factory=dict)
    device_info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)  # bare files: each input's declared dims, shape fed and fill
    notes: list[str] = field(default_factory=list)  # bare files: what was assumed (batch 1, zero ids)
    eval: dict = field(default_factory=dict)  # with eval data: the accuracy measured on this device (edgekit.evaluate)

    def to_json(self) -> dict:
        return asdict(self)


def summarize(samples_ms: Sequence[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {"runs": int(len(a)), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean, "std_ms": std,
            "min_ms": float(a.min()), "max_ms": float(a.max()), "cv": std / mean if mean > 0 else 0.0}


def _thermal_warnings(before: dict, after: dict) -> list[str]:
    out = []
    tb, ta = before.get("temp_c"), after.get("temp_c")
    if tb is not None and ta is not None and ta - tb >= TEMP_RISE_WARN_C:
        out.append(f"CPU temperature rose {tb:.0f} -> {ta:.0f} C during the run: throttling likely; use --cooldown")
    fb, fa = before.get("freq_mhz"), after.get("freq_mhz")
    if fb and fa and fa < fb * (1 - FREQ_DROP_WARN):
        out.append(f"CPU frequency fell {fb:.0f} -> {fa:.0f} MHz during the run: throttling likely")
    return out


def _artifact_files(path: Path) -> tuple[Path, "Manifest | None"]:
    """(model file, manifest or None) for an artifact folder or a bare model file."""
    from edgekit.runtime.manifest import model_file, read_manifest

    if path.is_dir():
        manifest = read_manifest(path)
        return model_file(path, manifest), manifest
    if not path.is_file():
        raise UsageError(f"artifact not found: {path}", "give an artifact folder from `edgekit convert` or a .tflite/.onnx file")
    if path.suffix not in (".tflite", ".onnx"):
        raise UsageError(f"{path} is not a .tflite or .onnx model", "give an artifact folder or a model file")
    return path, None


def bare_input_args(shapes: Sequence[str], ranges: Sequence[str]) -> list[str]:
    """--input-shape / --input-range for the runner's command line, one argument each (`--opt=value`, so a
    value never reads as an option; remote transports quote every argument with shlex)."""
    return [f"--input-shape={t}" for t in shapes] + [f"--input-range={t}" for t in ranges]


def check_bare_inputs(artifacts: Sequence[str | Path], shapes: Sequence[str] = (), ranges: Sequence[str] = ()) -> None:
    """Plan each bare file's inputs on this host (same code as the runner): a dynamic dim left open, a shape or
    range naming no input, is one UsageError now. A file this host cannot open is left to the device's runner."""
    from edgekit.runner import BareModel

    bare = [Path(a) for a in artifacts if _artifact_files(Path(a))[1] is None]
    if (shapes or ranges) and not bare:
        raise UsageError("--input-shape / --input-range are for bare .onnx/.tflite files",
                         "an artifact folder's manifest fixes its inputs already")
    for model in bare:
        try:
            BareModel(model, 1, shapes, ranges)
        except (ArtifactError, RuntimeMissing):
            pass


def push_runner(device: Device, remote: str) -> str:
    """Put the runner zipapp in the remote folder; returns its remote path."""
    from edgekit.runner import build_zipapp

    with tempfile.TemporaryDirectory() as tmp:
        target = f"{remote}/edgekit-runner.pyz"
        device.push(build_zipapp(Path(tmp) / "edgekit-runner.pyz"), target)
    return target


def push_artifact(device: Device, remote: str, model: Path, manifest: "Manifest | None") -> str:
    """Put an artifact (folder: manifest + model) or a bare model file in the remote folder."""
    if manifest is None:
        device.push(model, f"{remote}/{model.name}")
        return f"{remote}/{model.name}"
    target = f"{remote}/artifact"
    device.run(["mkdir", "-p", target], 30).check("creating the artifact folder")
    from edgekit.runtime.manifest import MANIFEST, model_file

    model = model_file(model.parent, manifest)  # the manifest's own file, inside the folder, never a path it names elsewhere
    device.push(model.parent / MANIFEST, f"{target}/{MANIFEST}")
    device.push(model, f"{target}/{model.name}")
    return target


def runner_on_device(profile: DeviceProfile, model: Path, manifest: "Manifest | None", uploads: dict[str, Path],
                     args: Sequence[str], fetch: dict[str, Path], threads: int | None = None, what: str = "the runner",
                     progress: Callable[[str], None] | None = None) -> dict:
    """One run of edgekit's python runner on a device: the runner, the artifact and `uploads` (remote file name ->
    local file) pushed to a fresh run folder, the runner run with `args` (each "{run}" in them becomes the run folder),
    `fetch` (remote name -> local path) pulled back, the folder removed. Returns the runner's JSON report; raises
    DeviceError when it fails. Used by `eval --device`, `convert --validate-on` and `diagnose --device`."""
    with open_device(profile) as dev, dev.session() as remote:
        if progress:
            progress(f"pushing the runner, the artifact and {len(uploads)} file(s) to {dev.name}")
        pyz = push_runner(dev, remote)
        target = push_artifact(dev, remote, model, manifest)
        for name, local in uploads.items():
            dev.push(local, f"{remote}/{name}")
        argv = [PythonRunner().python(dev, profile), pyz, "--artifact", target,
                "--threads", str(threads or profile.threads or 0), *(a.replace("{run}", remote) for a in args)]
        if progress:
            progress(f"running on {dev.name}")
        r = dev.run_in_group(argv, remote, max(profile.timeout_s * 5, 600))  # stopped as a whole on timeout or Ctrl-C
        report = runner_report(r.stdout) or {"ok": False, "error": _tail(r.stderr or r.stdout)}
        if not report.get("ok"):
            raise DeviceError(f"{what} on {dev.name} failed: {report.get('error')}", f"run `edgekit doctor --device {profile.name}`")
        for name, local in fetch.items():
            dev.pull(f"{remote}/{name}", local)
        if progress:
            progress(f"pulled {sum(p.stat().st_size for p in fetch.values()) / 1024:.0f} KiB from {dev.name}")
        report["transport"] = dev.transport
    return report


def refuse_tensorless_runner(profile: DeviceProfile, what: str) -> None:
    """benchmark_model (the Android runner) times a model and prints a summary: it cannot take inputs from a file
    nor return outputs or intermediate tensors, so accuracy cannot be measured through it."""
    if profile.runner != "python":
        raise UsageError(f"{what} needs outputs from {profile.name}, and its runner ({profile.runner}) only times the model: "
                         "benchmark_model takes no input files and returns no outputs or intermediate tensors",
                         f"use a device profile with runner = \"python\" (python3, numpy and ai-edge-litert on the device) for {what}; "
                         "`edgekit bench` still measures its latency with benchmark_model")


class PythonRunner:
    """edgekit's own minimal runtime, pushed as one zipapp with the artifact."""

    name = "python"

    def python(self, device: Device, profile: DeviceProfile) -> str:
        if profile.python:
            return profile.python
        return sys.executable if device.transport == "local" else "python3"

    def bench(self, device: Device, profile: DeviceProfile, model: Path, manifest,
              opts: BenchOptions, threads: int | None, timeout_s: float) -> BenchResult:
        res = BenchResult(str(model.parent if manifest else model), device.name, runner=self.name)
        with device.session() as remote:
            pyz = push_runner(device, remote)
            target = push_artifact(device, remote, model, manifest)
            argv = [self.python(device, profile), pyz, "--artifact", target,
                    "--warmup", str(opts.warmup), "--runs", str(opts.runs), "--min-seconds", str(opts.min_seconds),
                    "--threads", str(threads or 0)]
            if manifest is None:
                argv += bare_input_args(opts.input_shapes, opts.input_ranges)
            if profile.cpu_mask:
                argv = ["taskset", profile.cpu_mask, *argv]
            r = device.run_in_group(argv, remote, timeout_s)  # stopped as a whole on timeout or Ctrl-C
        data = runner_report(r.stdout)
        if data is None:
            raise DeviceError(f"the runner on {device.name} failed (exit {r.exit_code}): {_tail(r.stderr or r.stdout)}",
                              f"run `edgekit doctor --device {profile.name}`")
        if not data.get("ok"):
            if data.get("kind") == "usage":
                raise UsageError(str(data.get("error")))
            if data.get("kind") == "emulated":
                raise DeviceError(f"{device.name} is emulated ({data['error']}): its timings would time the emulator, not a board",
                                  "bench on real hardware; an emulated board is for correctness: edgekit eval --device, "
                                  "convert --validate-on, diagnose --device")
            if data.get("kind") == "missing-runtime":
                raise DeviceError(f"{device.name} lacks a runtime: {data.get('error')}", f"run `edgekit doctor --device {profile.name}` for the pip line that fixes it")
            raise DeviceError(f"the model did not run on {device.name}: {data.get('error')}")
        res.samples_ms = data["samples_ms"]
        res.stats = summarize(res.samples_ms)
        res.init_ms, res.first_ms, res.peak_mem_mb = data["init_ms"], data["first_ms"], data["peak_rss_mb"]
        res.thermal_before, res.thermal_after = data.get("thermal_before", {}), data.get("thermal_after", {})
        res.device_info.update({"runtime": data.get("runtime"), "machine": data.get("machine"), "python": data.get("python")})
        res.inputs, res.notes = data.get("inputs") or [], data.get("notes") or []
        return res


class BenchmarkModelRunner:
    """TFLite's benchmark_model binary, supplied by the user; its summary output is parsed."""

    name = "benchmark_model"

    def bench(self, device: Device, profile: DeviceProfile, model: Path, manifest,
              opts: BenchOptions, threads: int | None, timeout_s: float) -> BenchResult:
        from edgekit import benchmark_model

        binary = opts.benchmark_binary or profile.benchmark_binary or os.environ.get("EDGEKIT_BENCHMARK_MODEL")
        if not binary:
            raise UsageError(f"{profile.name} uses TFLite's benchmark_model, and none was given",
                             "pass --benchmark-binary PATH, set $EDGEKIT_BENCHMARK_MODEL, or use a profile with runner = \"python\"")
        if not Path(binary).is_file():
            raise UsageError(f"benchmark_model binary not found: {binary}", "check --benchmark-binary / $EDGEKIT_BENCHMARK_MODEL")
        if model.suffix != ".tflite":
            raise UsageError(f"benchmark_model runs .tflite models, not {model.name}", "use a python-runner device for ONNX")
        if manifest is None and (opts.input_shapes or opts.input_ranges):
            raise UsageError("--input-shape / --input-range go to edgekit's python runner, not to benchmark_model",
                             "use --runner python, or the binary's own --input_layer_shape")
        res = BenchResult(str(model.parent if manifest else model), device.name, runner=self.name)
        with device.session() as remote:
            exe, graph = f"{remote}/benchmark_model", f"{remote}/model.tflite"
            device.push(Path(binary), exe)
            device.run(["chmod", "755", exe], 30).check("chmod benchmark_model")
            device.push(model, graph)
            res.thermal_before = _shell_thermal(device)
            argv = [exe, f"--graph={graph}", f"--warmup_runs={opts.warmup}", f"--num_runs={opts.runs}",
                    f"--min_secs={opts.min_seconds}", "--report_peak_memory_footprint=true"]
            if threads:
                argv.append(f"--num_threads={threads}")
            if profile.cpu_mask:
                argv = ["taskset", profile.cpu_mask, *argv]
            r = device.run_in_group(argv, remote, timeout_s)  # stopped as a whole on timeout or Ctrl-C
            res.thermal_after = _shell_thermal(device)
        if r.exit_code != 0:
            raise DeviceError(f"benchmark_model failed on {device.name} (exit {r.exit_code}): {_tail(r.stderr or r.stdout)}")
        parsed = benchmark_model.parse(r.stdout + "\n" + r.stderr)
        res.init_ms, res.first_ms, res.peak_mem_mb = parsed.init_ms, parsed.first_ms, parsed.peak_mem_mb
        res.stats = {"runs": parsed.runs, "p50_ms": parsed.median_ms, "p90_ms": None, "p99_ms": None,
                     "mean_ms": parsed.avg_ms, "std_ms": parsed.std_ms, "min_ms": parsed.min_ms, "max_ms": parsed.max_ms,
                     "cv": (parsed.std_ms / parsed.avg_ms) if parsed.std_ms is not None and parsed.avg_ms else None,
                     "p5_ms": parsed.p5_ms, "p95_ms": parsed.p95_ms}
        res.warnings.append("benchmark_model reports a summary, not raw samples; p50 is its median where it prints one")
        return res


RUNNERS = {"python": PythonRunner, "benchmark_model": BenchmarkModelRunner}


def runner_report(text: str) -> dict | None:
    """The JSON object the device-side runner prints last, or None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


_DUMPSYS_TEMP = re.compile(r"Temperature\{mValue=([-0-9.]+), mType=(\d+)")


def parse_dumpsys_thermal(text: str) -> float | None:
    """Hottest CPU sensor (mType=0) in Android's `dumpsys thermalservice`, from the HAL's current
    readings when present (the cached ones lag); any sensor when no CPU one is listed."""
    section = text.split("Current temperatures from HAL:", 1)[1].split("Current cooling devices", 1)[0] \
        if "Current temperatures from HAL:" in text else text
    readings = [(float(v), int(t)) for v, t in _DUMPSYS_TEMP.findall(section)]
    cpu = [v for v, t in readings if t == 0]
    pick = cpu or [v for v, _ in readings]
    return max(pick) if pick else None


def _shell_thermal(device: Device) -> dict:
    r = device.sh(THERMAL_SCRIPT, 30)
    out: dict = {"temp_c": None, "freq_mhz": None}
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["temp"] and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > 0:
            out["temp_c"] = round(int(parts[1]) / 1000.0, 1)
        if parts[:1] == ["freq"] and len(parts) == 3 and parts[2] != "0":
            out["freq_mhz"] = round(int(parts[1]) / int(parts[2]) / 1000.0, 1)
    if out["temp_c"] is None and device.transport == "adb":  # thermal zones are often unreadable on phones
        d = device.run(["dumpsys", "thermalservice"], 30)
        if d.ok:
            out["temp_c"] = parse_dumpsys_thermal(d.stdout)
    return out


def _bench_one(device: Device, profile: DeviceProfile, artifact: Path, opts: BenchOptions) -> BenchResult:
    model, manifest = _artifact_files(artifact)
    runner = RUNNERS[opts.runner or profile.runner]()
    threads = opts.threads if opts.threads is not None else (profile.threads or None)
    timeout_s = opts.timeout_s or profile.timeout_s * 5
    res = runner.bench(device, profile, model, manifest, opts, threads, timeout_s)
    res.artifact = str(artifact)
    res.target = manifest.target_name if manifest is not None else model.suffix.lstrip(".")
    res.size_bytes = model.stat().st_size
    res.threads = threads
    cv = res.stats.get("cv")
    if cv is not None and cv > CV_WARN:
        res.warnings.append(f"noisy: CV {cv:.1%} > {CV_WARN:.0%}; close other apps, add --runs, or pin cores")
    res.warnings += _thermal_warnings(res.thermal_before, res.thermal_after)
    return res


def bench(artifact: str | Path, device: str | DeviceProfile = "local", *, runs: int = 100, warmup: int = 10,
          min_seconds: float = 0.0, threads: int | None = None, benchmark_binary: str | None = None,
          runner: str | None = None, timeout_s: float | None = None,
          input_shapes: Sequence[str] = (), input_ranges: Sequence[str] = ()) -> BenchResult:
    """Benchmark one artifact (folder or model file) on one device; raises EdgekitError on failure.
    input_shapes / input_ranges: for a bare file, `[NAME=]DIMS` and `NAME=LO:HI` as on the command line."""
    opts = BenchOptions(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads,
                        benchmark_binary=benchmark_binary, runner=runner, timeout_s=timeout_s,
                        input_shapes=tuple(input_shapes), input_ranges=tuple(input_ranges))
    profile = resolve(device)
    _artifact_files(Path(artifact))
    _check_before_devices([artifact], [profile], opts)
    with open_device(profile) as dev:
        res = _bench_one(dev, profile, Path(artifact), opts)
        res.device_info = {**_safe_info(dev), **res.device_info}
    return res


def _safe_info(dev: Device) -> dict:
    try:
        return dev.info().to_dict()
    except EdgekitError:
        return {}


def _check_before_devices(artifacts: Sequence[str | Path], profiles: Sequence[DeviceProfile], opts: BenchOptions) -> None:
    """Bare files' inputs, where edgekit's python runner will feed them, fail before any device is touched."""
    if any((opts.runner or p.runner) == "python" for p in profiles):
        check_bare_inputs(artifacts, opts.input_shapes, opts.input_ranges)


ProgressFn = Callable[[str, str, str], None]  # (device, artifact, "start" | "done" | "error")


def bench_many(artifacts: Sequence[str | Path], devices: Sequence[str | DeviceProfile], opts: BenchOptions | None = None,
               progress: ProgressFn | None = None) -> list[BenchResult]:
    """Every artifact on every device; a failing row is recorded as failed and the others go on."""
    opts = opts or BenchOptions()
    for a in artifacts:
        _artifact_files(Path(a))  # bad paths fail before any device is touched
    profiles = [resolve(d) for d in devices]
    _check_before_devices(artifacts, profiles, opts)
    results: list[BenchResult] = []
    for profile in profiles:
        try:
            dev = open_device(profile)
        except EdgekitError as exc:
            results += [BenchResult(str(a), profile.name, status="error", error=str(exc)) for a in artifacts]
            continue
        with dev:
            info = _safe_info(dev)
            for i, a in enumerate(artifacts):
                if i and opts.cooldown_s:
                    time.sleep(opts.cooldown_s)
                if progress:
                    progress(profile.name, str(a), "start")
                try:
                    res = _bench_one(dev, profile, Path(a), opts)
                    res.device_info = {**info, **res.device_info}
                    if progress:
                        progress(profile.name, str(a), "done")
                except EdgekitError as exc:
                    res = BenchResult(str(a), profile.name, status="error", error=str(exc), device_info=info)
                    if progress:
                        progress(profile.name, str(a), "error")
                results.append(res)
    return results


def attach_eval(results: Sequence[BenchResult], devices: Sequence[str | DeviceProfile], data, *, labels_key: str | None = None,
                data_spec: str | None = None, samples: int | None = None) -> None:
    """The accuracy of each benched artifact on the device that benched it (`bench --eval-data`), so the device's
    accuracy sits next to its latency: outputs made there, scored here (edgekit.evaluate). A device whose runner
    cannot return outputs (benchmark_model) or an eval that fails gets a warning; the latency stays."""
    from edgekit.evaluate import evaluate

    profiles = {p.name: p for p in map(resolve, devices)}
    for r in results:
        if r.status != "ok" or r.device not in profiles:
            continue
        try:
            ev = evaluate(r.artifact, data, labels_key=labels_key, data_spec=data_spec, device=profiles[r.device], samples=samples)
        except EdgekitError as exc:
            r.warnings.append(f"no accuracy on {r.device}: {exc}")
            continue
        r.eval = {"data": ev.data, "samples": ev.samples, "metrics": ev.metrics, "device_info": ev.device_info}


__all__ = ["bench", "bench_many", "BenchOptions", "BenchResult", "summarize"]
