"""Where a verdict was measured, and the verdict measured on the device (`edgekit convert --validate-on DEVICE`).

A verdict measured on this host is the host's: an int8 model's kernels round differently on ARM than on
x86, and the difference grows through the layers. EfficientNet-Lite0 at tflite-int8 on the tests' aarch64
userland (qemu-user) changed its top-1 class on 3 of 100 held-out photos against the same artifact on this
x86 host, its logits a median 1 and up to 10 int8 steps apart (top-1 agreement with PyTorch: host 0.93,
board 0.94), while its tflite-fp32 artifact matched the host to 2.7e-5.
So `--validate-on` runs the same held-out inputs on each device through the pushed runner, scores them
here against the same reference, and records per device: what ran it (name, arch, runtime and its
version, transport), its own verdict and figures, how far it is from the host (top-1 agreement, samples
whose top-1 differs, output steps) and the class output's top-1 per sample, from which `edgekit report`
shows agreement between devices. The manifest's verdict is the worst of the host's and the devices'.

No timing is taken on the device here: a board may be emulated (the tests' aarch64 board runs under
qemu-user), and accuracy does not need it. Latency is `edgekit bench`'s business.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.validate import compare, verdict

MAX_TOP1 = 10_000  # top-1 indices kept per device for cross-device agreement (one int each)
_ORDER = {"ok": 0, "inconclusive": 1, "warn": 2, "fail": 3}


def host_measurement(backend) -> dict:
    """Where a host verdict was measured: this machine's arch and the runtime that ran the artifact."""
    from edgekit.runner import runtime_version

    name = getattr(backend, "runtime_name", "")
    return {"where": "host", "device": "host", "arch": platform.machine(), "runtime": name, "runtime_version": runtime_version(name)}


def class_index(kinds) -> int | None:
    return next((k for k, kind in enumerate(kinds) if kind.kind == "class"), None)


def top1(outs: Sequence[np.ndarray], cls: int | None) -> list[int] | None:
    """The class output's top-1 per sample (last axis), for agreement between devices; None without a class output."""
    if cls is None:
        return None
    y = np.asarray(outs[cls])
    return [int(v) for v in y.reshape(len(y), -1, y.shape[-1]).argmax(-1)[:, 0][:MAX_TOP1]]


def versus_host(host: Sequence[np.ndarray], dev: Sequence[np.ndarray], manifest, cls: int | None) -> dict:
    """How far the device's outputs are from this host's on the same inputs: samples whose class output's top-1
    differs, and the outputs' distance in quantization steps (int8 outputs) or absolute units."""
    out: dict = {"samples": int(len(host[0])), "identical": all(np.array_equal(h, d) for h, d in zip(host, dev))}
    if cls is not None:
        a, b = top1(host, cls), top1(dev, cls)
        out["top1_agreement"] = float(np.mean(np.asarray(a) == np.asarray(b)))
        out["top1_differs"] = int(sum(x != y for x, y in zip(a, b)))
    for spec, h, d in zip(manifest.outputs, host, dev):
        q = spec.quantization
        diff = np.abs(np.asarray(h, np.float64) - np.asarray(d, np.float64))
        if q:
            steps = np.round(diff / q.scale)
            out.setdefault("outputs", []).append({"name": spec.name, "max_steps": int(steps.max()), "median_steps": float(np.median(steps)),
                                                  "differing": float(np.mean(steps > 0))})
        else:
            out.setdefault("outputs", []).append({"name": spec.name, "max_abs_diff": float(diff.max())})
    return out


def validate_on_devices(folder: Path, manifest, vset, reference, host_outs, kinds, names: Sequence[str], out_names: Sequence[str],
                        thresholds, held_out: bool, devices: Sequence, say: Callable[[str], None] | None = None) -> list[dict]:
    """One entry per device (see the module doc); a device that cannot run it is an entry with status "error"."""
    from edgekit.evaluate import _device_outputs
    from edgekit.runtime.manifest import model_file

    cls = class_index(kinds)
    entries = []
    for profile in devices:
        if say:
            say(f"validating on {profile.name}")
        try:
            outs, info = _device_outputs(model_file(folder, manifest), manifest, vset.data, names, profile, None, None)
        except EdgekitError as exc:
            entries.append({"where": "device", "device": profile.name, "status": "error", "error": str(exc)[:500]})
            continue
        figures = compare(reference, outs, vset.data.labels, kinds, out_names)
        status, reasons = verdict(figures, thresholds, held_out=held_out)
        entries.append({"where": "device", "device": profile.name, "arch": info.get("machine") or "", "runtime": info.get("runtime") or "",
                        "runtime_version": info.get("runtime_version") or "", "transport": info.get("transport") or profile.transport,
                        "status": status, "reasons": reasons, "figures": figures,
                        "vs_host": versus_host(host_outs, outs, manifest, cls), "top1": top1(outs, cls)})
    return entries


def combined(status: str, reasons: list[str], entries: list[dict]) -> tuple[str, list[str], list[str]]:
    """The manifest's verdict over the host and the devices (the worst decides; a device's reasons are prefixed with
    its name) and the warnings to print: a device that could not run it, a device whose top-1 differs from the host's."""
    warnings = []
    reasons = list(reasons)
    for e in entries:
        where = f"on {e['device']}"
        if e["status"] == "error":
            warnings.append(f"{where}: not validated: {e['error']}")
            continue
        where += f" ({e['arch']}, {e['runtime']} {e['runtime_version']})"
        if _ORDER[e["status"]] > _ORDER[status]:
            status = e["status"]
        reasons += [f"{where}: {r}" for r in e["reasons"]]
        vs = e["vs_host"]
        if vs.get("top1_differs"):
            steps = max((o.get("max_steps", 0) for o in vs.get("outputs", [])), default=0)
            warnings.append(f"{where}: top-1 differs from this host's on {vs['top1_differs']} of {vs['samples']} samples"
                            + (f", outputs up to {steps} int8 steps apart" if steps else "")
                            + "; the device's figures are in the manifest (validation.devices)")
    return status, reasons, warnings


def agreement_matrix(rows: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Top-1 agreement between every pair of places (host, devices) that ran the same samples."""
    out: dict[str, dict[str, float]] = {}
    for a, xa in rows.items():
        for b, xb in rows.items():
            if a < b and len(xa) == len(xb) and xa:
                v = float(np.mean(np.asarray(xa) == np.asarray(xb)))
                out.setdefault(a, {})[b] = v
                out.setdefault(b, {})[a] = v
    return out


__all__ = ["host_measurement", "validate_on_devices", "combined", "agreement_matrix", "versus_host"]
