"""Activation ranges chosen per tensor (edgekit.quantize.ranges), fast tier: distributions whose best range is
known. The effect on real models is measured by benchmarks/ptq.py and tests/test_ptq_real.py."""

from __future__ import annotations

import numpy as np

from edgekit.quantize.ranges import BINS, SOFTMAX_SPAN, Grid, candidates, choose, expected_error


def hist_of(x: np.ndarray):
    """As ONNX Runtime's histogram collector makes it: BINS bins over [-|x|max, |x|max]."""
    t = float(np.abs(x).max())
    return np.histogram(x, BINS, range=(-t, t))


def test_a_bounded_tensor_keeps_its_whole_range():
    """ReLU6 outputs: clipping gains nothing, so min/max (0..6) is kept, not a percentile that cuts the 6s off."""
    x = np.clip(np.random.default_rng(0).normal(1.5, 2.0, 100_000), 0, 6)
    lo, hi, rule = choose(*hist_of(x))
    assert rule == "minmax" and lo == 0.0 and abs(hi - 6.0) < 0.01


def test_a_heavy_tail_is_clipped_where_the_error_is_least():
    """Laplace-distributed activations (b = 1): min/max spends the grid on rare tails. The chosen range sits at the
    analytic MSE optimum for 8 bits, about +-9.89 b (Banner et al. 2019, ACIQ), its expected error is the least of
    every candidate and clearly below min/max's."""
    x = np.random.default_rng(1).laplace(0, 1, 2_000_000)
    h, e = hist_of(x)
    lo, hi, rule = choose(h, e)
    assert rule == "mse" and 8.9 < -lo < 10.9 and 8.9 < hi < 10.9 and x.max() > 13
    used = np.flatnonzero(h)
    h2, e2 = h[used[0]:used[-1] + 1], e[used[0]:used[-1] + 2]
    cands = candidates(h2, e2)
    errs = expected_error(h2, e2, np.array([c[0] for c in cands]), np.array([c[1] for c in cands]))
    mine = expected_error(h2, e2, np.array([lo]), np.array([hi]))[0]
    assert mine <= errs.min() * (1 + 1e-9) and mine < 0.85 * errs[0]  # errs[0]: min/max


def test_a_softmax_input_is_not_spent_on_its_mask():
    """Attention scores with a -1e4 mask on a quarter of the entries: the mask values are zero after the softmax
    however they round, so the range starts at most SOFTMAX_SPAN below the max instead of at -1e4."""
    rng = np.random.default_rng(2)
    scores = rng.normal(0, 3, 100_000)
    scores[::4] = -1e4
    lo, hi, rule = choose(*hist_of(scores), feeds_softmax=True)
    assert lo >= hi - SOFTMAX_SPAN - 1e-6 and "softmax" in rule
    lo2, _, _ = choose(*hist_of(scores))  # the same tensor not feeding a softmax keeps the mask in range
    assert lo2 < -1000


def test_grids_include_zero_and_match_the_quantizers():
    scale, zp = Grid(0, 255).params(np.array([0.0, -1.0]), np.array([6.0, 3.0]))
    assert np.allclose(scale, [6 / 255, 4 / 255]) and np.allclose(zp, [0, 64])
    scale, zp = Grid(-128, 127, symmetric=True).params(np.array([-2.0]), np.array([1.0]))
    assert np.allclose(scale, [4 / 255]) and zp[0] == 0
    # a range that excludes zero is widened to include it, as ONNX Runtime does
    scale, zp = Grid(0, 255).params(np.array([2.0]), np.array([4.0]))
    assert np.allclose(scale, [4 / 255]) and zp[0] == 0
