"""Activation ranges chosen per tensor by measurement: the range whose int8 grid loses least of the tensor's
calibration distribution (expected squared error over its histogram), among min/max, tail percentiles and a
grid of clipped ranges (Nagel et al. 2021, "A White Paper on Neural Network Quantization", section 3.4: MSE-based
range setting for activations).

Why a search and not one rule: min/max keeps rare outliers and wastes the grid on them; one fixed percentile
clips tensors that are bounded anyway (ReLU6 outputs) and keeps tails that matter elsewhere. The calibrators of
ONNX Runtime give one rule for every tensor; this picks per tensor, from the histograms ONNX Runtime's own
histogram collector gathers, and hands the ranges back to `quantize_static` as its calibration table.

Pure numpy: the histogram in, (lo, hi, rule) out, so the rules are tested on distributions whose answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 2048  # histogram bins ONNX Runtime's collector starts with (over [-|x|max, |x|max])
TAILS = (1e-3, 1e-4, 1e-5)  # tail mass clipped on each side by the percentile candidates
GRID = 24  # clip fractions tried on each side: 1, then 24 steps down to 5% of the range
SOFTMAX_SPAN = 30.0  # a softmax input's values more than this below its max contribute < e^-30 after softmax


@dataclass(frozen=True)
class Grid:
    """The integer grid activations are stored in: uint8 asymmetric (ONNX Runtime's default for QDQ activations)
    unless said otherwise. The range always includes 0, as the quantizers make it."""

    qmin: int = 0
    qmax: int = 255
    symmetric: bool = False

    def params(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        if self.symmetric:
            m = np.maximum(np.abs(lo), np.abs(hi))
            scale = 2 * m / (self.qmax - self.qmin)
            zp = np.full_like(scale, (self.qmax + self.qmin + 1) // 2, dtype=np.float64)
        else:
            scale = (hi - lo) / (self.qmax - self.qmin)
            zp = np.round(self.qmin - lo / np.where(scale > 0, scale, 1.0))
        return np.where(scale > 0, scale, 1.0), zp


def expected_error(hist: np.ndarray, edges: np.ndarray, lo: np.ndarray, hi: np.ndarray, grid: Grid = Grid()) -> np.ndarray:
    """Mean squared quantization error of the histogram's values (its bin centres, weighted by count) under each
    candidate range (lo[i], hi[i]): clipped outside, rounded to the grid inside."""
    centres = (edges[:-1] + edges[1:]) / 2.0
    w = hist / max(float(hist.sum()), 1.0)
    scale, zp = grid.params(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    s, z = scale[:, None], zp[:, None]
    q = np.clip(np.round(centres[None, :] / s) + z, grid.qmin, grid.qmax)
    err = (centres[None, :] - (q - z) * s) ** 2
    return err @ w


def percentile(hist: np.ndarray, edges: np.ndarray, tail: float) -> tuple[float, float]:
    cdf = np.cumsum(hist) / max(float(hist.sum()), 1.0)
    lo_i = int(np.searchsorted(cdf, tail, side="left"))
    hi_i = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return float(edges[lo_i]), float(edges[min(hi_i + 1, len(edges) - 1)])


def candidates(hist: np.ndarray, edges: np.ndarray) -> list[tuple[float, float, str]]:
    """(lo, hi, rule) for min/max, the tail percentiles and a grid of clips of either side."""
    lo, hi = float(edges[0]), float(edges[-1])
    out = [(lo, hi, "minmax")]
    out += [(*percentile(hist, edges, t), f"percentile {100 * (1 - t):g}") for t in TAILS]
    fracs = np.linspace(1.0, 0.05, GRID)
    out += [(lo * a, hi * b, "mse") for a in fracs for b in fracs if (a, b) != (1.0, 1.0)]
    return out


def choose(hist: np.ndarray, edges: np.ndarray, grid: Grid = Grid(), feeds_softmax: bool = False) -> tuple[float, float, str]:
    """The range with the least expected error. A softmax input's range starts at most SOFTMAX_SPAN below its max:
    what lies further down is zero after the softmax however it is rounded (an attention mask's -1e4 entries
    would otherwise take the whole grid)."""
    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    if hist.sum() <= 0 or not np.all(np.isfinite(edges)):
        return float(edges[0]), float(edges[-1]), "minmax"
    used = np.flatnonzero(hist)  # ONNX Runtime's histograms span [-|x|max, |x|max]: trim to where the values are
    hist, edges = hist[used[0]:used[-1] + 1], edges[used[0]:used[-1] + 2]
    floor = None
    if feeds_softmax and edges[-1] - edges[0] > SOFTMAX_SPAN:
        floor = float(edges[-1] - SOFTMAX_SPAN)
        keep = edges[1:] > floor
        below = hist[~keep].sum()
        hist = hist[keep].copy()
        hist[0] += below  # the masked entries are clipped to the floor: they still count, at the floor
        edges = np.concatenate([[floor], edges[1:][keep]])
    cands = candidates(hist, edges)
    lo = np.array([c[0] for c in cands])
    hi = np.array([c[1] for c in cands])
    err = expected_error(hist, edges, lo, hi, grid)
    best = int(np.argmin(err))
    # ties (bounded tensors where clipping gains nothing): keep the widest, min/max first
    best = int(np.flatnonzero(err <= err[best] * (1 + 1e-9))[0])
    rule = cands[best][2] + (f", floored {SOFTMAX_SPAN:g} below the max (softmax input)" if floor is not None else "")
    return float(lo[best]), float(hi[best]), rule
