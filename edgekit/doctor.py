"""edgekit doctor: what a device lacks for `edgekit bench`, and the line that fixes it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.devices.profiles import DeviceProfile, open_device, resolve
from edgekit.errors import EdgekitError

ABI_ALIASES = {"arm64-v8a": "aarch64", "aarch64": "aarch64", "armeabi-v7a": "armv7l", "x86_64": "x86_64"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def diagnose(device: str | DeviceProfile, benchmark_binary: str | None = None) -> tuple[DeviceProfile, list[Check]]:
    profile = resolve(device)
    checks: list[Check] = []
    try:
        dev = open_device(profile)
    except EdgekitError as exc:
        return profile, [Check("reachable", False, str(exc), _reach_fix(profile))]
    with dev:
        try:
            info = dev.info()
        except EdgekitError as exc:
            return profile, [Check("reachable", False, str(exc), _reach_fix(profile))]
        checks.append(Check("reachable", True, f"{info.arch} {info.os} {info.model}".strip()))
        if profile.abi:
            want = ABI_ALIASES.get(profile.abi, profile.abi)
            checks.append(Check("architecture", info.arch == want, f"device {info.arch}, profile expects {profile.abi}",
                                "" if info.arch == want else f"set abi = \"{info.arch}\" in the profile, or check you reached the right device"))
        try:
            with dev.session() as remote:
                probe = f"{remote}/probe"
                r = dev.run(["sh", "-c", 'echo ok > "$1" && cat "$1"', "sh", probe], 30)
                checks.append(Check("workdir writable", r.ok and r.stdout.strip() == "ok", profile.workdir or dev.workdir,
                                    "" if r.ok else f"set workdir to a writable folder (error: {(r.stderr or r.stdout).strip()[:120]})"))
                if profile.cpu_mask:
                    t = dev.run(["taskset", profile.cpu_mask, "true"], 30)
                    checks.append(Check("core pinning", t.ok, f"taskset {profile.cpu_mask}",
                                        "" if t.ok else "the device has no taskset or rejects the mask: fix cpu_mask or clear it"))
                runner = profile.runner
                if runner == "python":
                    checks += _python_checks(dev, profile, remote)
                else:
                    checks.append(_binary_check(profile, benchmark_binary))
        except EdgekitError as exc:
            checks.append(Check("workdir writable", False, str(exc), f"set workdir in {profile.source or 'the profile'} to a writable folder"))
    return profile, checks


def _reach_fix(p: DeviceProfile) -> str:
    if p.transport == "ssh":
        return f"check `ssh {p.user + '@' if p.user else ''}{p.host}` works (host key in known_hosts, key in your agent)"
    if p.transport == "adb":
        return "check `adb devices` lists it as 'device' (authorize the computer on the phone)"
    return ""


def _python_checks(dev, profile: DeviceProfile, remote: str) -> list[Check]:
    from edgekit.measure import PythonRunner, push_runner, runner_report

    python = PythonRunner().python(dev, profile)
    r = dev.run([python, push_runner(dev, remote), "--check"], 120)
    if not r.ok:
        return [Check("python", False, f"{python}: {(r.stderr or r.stdout).strip()[-160:] or 'not found'}",
                      f"install Python 3.8+ on the device, or set python = \"/path/to/python3\" in {profile.source or 'the profile'}")]
    found = runner_report(r.stdout)
    if found is None:
        return [Check("python", False, f"{python}: the runner printed no report: {r.stdout.strip()[-160:]}", "check that this python runs Python 3.8+ on the device")]
    out = [Check("python", True, f"{python} {found['python']} ({found['machine']})")]
    pip = f"{python} -m pip install"
    out.append(Check("numpy", bool(found.get("numpy")), found.get("numpy") or "missing", "" if found.get("numpy") else f"{pip} numpy"))
    tfl = found.get("ai_edge_litert") or found.get("tflite_runtime")
    out.append(Check("TFLite interpreter", bool(tfl), f"ai-edge-litert {found['ai_edge_litert']}" if found.get("ai_edge_litert")
                     else (f"tflite-runtime {found['tflite_runtime']} (fallback)" if found.get("tflite_runtime") else "missing"),
                     "" if tfl else f"{pip} ai-edge-litert   (old boards with numpy<2: {pip} tflite-runtime)"))
    out.append(Check("ONNX Runtime (for .onnx)", bool(found.get("onnxruntime")), found.get("onnxruntime") or "missing (only needed for ONNX artifacts)",
                     "" if found.get("onnxruntime") else f"{pip} onnxruntime"))
    return out


def _binary_check(profile: DeviceProfile, benchmark_binary: str | None) -> Check:
    b = benchmark_binary or profile.benchmark_binary or os.environ.get("EDGEKIT_BENCHMARK_MODEL")
    if not b:
        return Check("benchmark_model", False, "no binary given",
                     "get TFLite's benchmark_model for the device's ABI (android_aarch64) and pass --benchmark-binary PATH or set $EDGEKIT_BENCHMARK_MODEL")
    if not Path(b).is_file():
        return Check("benchmark_model", False, f"{b} not found", "check the path")
    return Check("benchmark_model", True, b)


def healthy(checks: list[Check]) -> bool:
    """Everything needed passed (ONNX Runtime is optional: only .onnx artifacts need it)."""
    return all(c.ok for c in checks if not c.name.startswith("ONNX Runtime"))
