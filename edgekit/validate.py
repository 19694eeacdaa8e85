"""Validation on every convert: the artifact against the PyTorch model on held-out inputs.

Figures: max/mean abs error, SQNR (dB), cosine similarity, top-1 agreement (classifier-shaped
outputs), task accuracy when labels are known. Target thresholds turn them into ok/warn/fail.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edgekit.targets import Thresholds

SQNR_CAP_DB = 200.0  # identical outputs: reported as 200 dB rather than infinity (JSON has no inf)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, num / den, np.where(np.all(a == b, axis=1), 1.0, 0.0))
    return float(np.mean(c))


def is_classifier(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] > 1


def compare(ref: Sequence[np.ndarray], out: Sequence[np.ndarray], labels: np.ndarray | None = None) -> dict:
    """Figures over all outputs (worst output decides), plus top-1 figures on the first output."""
    m = {
        "samples": int(len(ref[0])),
        "max_abs_error": float(max(np.max(np.abs(r - o)) for r, o in zip(ref, out))),
        "mean_abs_error": float(np.mean([np.mean(np.abs(r - o)) for r, o in zip(ref, out)])),
        "sqnr_db": float(min(sqnr_db(r, o) for r, o in zip(ref, out))),
        "cosine": float(min(cosine(r, o) for r, o in zip(ref, out))),
    }
    if is_classifier(ref[0]):
        m["top1_agreement"] = float(np.mean(ref[0].argmax(1) == out[0].argmax(1)))
        if labels is not None:
            m["accuracy"] = float(np.mean(out[0].argmax(1) == labels))
            m["reference_accuracy"] = float(np.mean(ref[0].argmax(1) == labels))
    return m


def verdict(m: dict, t: Thresholds) -> tuple[str, list[str]]:
    """ok when every figure meets its ok threshold; fail when any misses its warn threshold."""
    status, reasons = "ok", []
    checks = [("sqnr_db", m.get("sqnr_db"), t.ok_sqnr_db, t.warn_sqnr_db, "SQNR {v:.1f} dB"),
              ("top1_agreement", m.get("top1_agreement"), t.ok_top1_agreement, t.warn_top1_agreement, "top-1 agreement {v:.1%}")]
    for _, v, ok, warn, fmt in checks:
        if v is None:
            continue
        if v < warn:
            status = "fail"
            reasons.append(fmt.format(v=v) + f" < {warn:g} (fail threshold)")
        elif v < ok:
            status = "warn" if status == "ok" else status
            reasons.append(fmt.format(v=v) + f" < {ok:g} (ok threshold)")
    return status, reasons
