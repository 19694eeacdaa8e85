"""Accuracy-budget conversion: the smallest int8 artifact whose task accuracy stays within a budget.

Start from full int8. While the drop (points of top-1 accuracy on the user's labelled data, or of
top-1 agreement with the float model when there are no labels) exceeds the budget, ask diagnose
for the layer that adds the most error and move it: int8 layers go to int16 activations (with the
layers that read them, so the wide tensor is int16 on both sides), int16 layers go to float.
Re-quantize, re-measure, until the budget is met, nothing is left to move, or time runs out.
The moves are per-layer overrides in the target, kept in the manifest, so
`edgekit convert MODEL --target ARTIFACT_FOLDER` re-applies them without searching.

What is measured follows the output's kind (edgekit.validate): a class output counts top-1 accuracy (agreement
with the float model without labels); an embedding counts mean cosine with the float model, a point being 0.01 of
cosine (--max-accuracy-drop 2 keeps cosine >= 0.98); any other output counts 1 - its relative RMS error, a point
being 1% of error (--max-accuracy-drop 1 keeps SQNR >= 40 dB).

Latency counts too. LiteRT's int16x8 kernels are slow on CPUs (the Fashion-MNIST CNN's budgeted artifact ran at
2.77x fp32 with two int16 layers), so when the budget is met with int16 layers the same layers are tried float,
and that artifact is kept when it also meets the budget and runs faster on this host (both timed in turn).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np

from edgekit.calibration import CalibrationData
from edgekit.errors import UsageError
from edgekit.runtime.manifest import MANIFEST
from edgekit.targets import LayerOverride, Target

DIAGNOSE_SAMPLES = 32


@dataclass(frozen=True)
class AccuracyBudget:
    max_drop_points: float  # points of accuracy (or agreement) the artifact may lose against the float model
    data: CalibrationData  # labelled data to measure on; agreement with the float model when unlabelled
    budget_s: float = 600.0  # stop searching after this many seconds


POINT = {"accuracy": "1% of top-1 accuracy", "agreement": "1% of top-1 agreement with the float model",
         "cosine": "0.01 of mean cosine with the float model", "fidelity": "1% of relative RMS error against the float model"}


def scorer(kind: str, labels: np.ndarray | None, reference: np.ndarray) -> tuple[str, Callable[[np.ndarray], float]]:
    """(metric name, score(outputs)) for an output of this kind; the float model scores 1.0 on every metric but
    labelled accuracy. Scores are fractions; drops are counted in points (x100)."""
    ref = np.asarray(reference, np.float64)
    if kind == "class":
        if ref.ndim != 2 or ref.shape[1] < 2:
            raise UsageError("--max-accuracy-drop on a class output needs outputs of shape [N, classes]",
                             "declare the output's kind: --output NAME=embedding|tensors")
        truth = labels if labels is not None else ref.argmax(1)
        return ("accuracy" if labels is not None else "agreement"), lambda y: float(np.mean(np.asarray(y).argmax(1) == truth))
    flat = ref.reshape(len(ref), -1)
    if kind == "embedding":
        rn = np.linalg.norm(flat, axis=1)

        def cosine(y: np.ndarray) -> float:
            g = np.asarray(y, np.float64).reshape(len(y), -1)
            return float(np.mean(np.sum(g * flat, 1) / np.maximum(np.linalg.norm(g, axis=1) * rn, 1e-12)))
        return "cosine", cosine
    power = float(np.sum(flat ** 2)) or 1.0
    return "fidelity", lambda y: 1.0 - float(np.sqrt(np.sum((np.asarray(y, np.float64).reshape(flat.shape) - flat) ** 2) / power))


@dataclass
class Step:
    moved: list[dict]
    metric: float
    drop_points: float
    size_bytes: int
    seconds: float
    latency_ms: float | None = None  # median on this host, for the candidates timed against each other


@dataclass
class BudgetReport:
    metric: str  # accuracy | agreement | cosine | fidelity (see POINT)
    max_drop_points: float
    reference: float  # the float model's accuracy (1.0 for agreement)
    samples: int
    met: bool = False
    reason: str = ""
    steps: list[Step] = field(default_factory=list)
    chosen: int = 0  # index into steps
    seconds: float = 0.0

    def to_json(self) -> dict:
        best = self.steps[self.chosen]
        return {**dataclasses.asdict(self), "metric_value": best.metric, "drop_points": best.drop_points,
                "overrides": best.moved}


def _with_overrides(tgt: Target, overrides: list[LayerOverride]) -> Target:
    return dataclasses.replace(tgt, quant=dataclasses.replace(tgt.quant, overrides=tuple(overrides)))


def search(tgt: Target, budget: AccuracyBudget, reference: np.ndarray, fmt: str, float_path: Path,
           quantize: Callable[[Target], np.ndarray], model_file: Path, diag_samples: list[dict], work: Path,
           stages, kind: str = "class", latency: Callable[[list[Path]], list[float]] | None = None) -> tuple[Target, BudgetReport]:
    """Run the search; `quantize(target)` writes `model_file` and returns the budgeted output on `budget.data`.
    `kind` is that output's kind; `latency(folders)` times the artifacts in those folders against each other.

    Leaves the chosen candidate in `model_file` and returns its target (with the overrides) and the report."""
    from edgekit.diagnose import layer_errors, next_move

    metric_name, score = scorer(kind, budget.data.labels, reference)
    rep = BudgetReport(metric_name, budget.max_drop_points, score(reference), len(budget.data))
    t0 = time.perf_counter()
    overrides = list(tgt.quant.overrides)
    candidates: list[Path] = []

    def attempt(moves: list[LayerOverride]) -> float:
        metric = score(quantize(_with_overrides(tgt, moves)))
        keep = work / f"candidate-{len(candidates)}"
        keep.mkdir(exist_ok=True)
        for name in (model_file.name, MANIFEST, "recipe.json"):  # the model, its manifest, ai-edge-quantizer's recipe
            if (model_file.parent / name).exists():
                shutil.copyfile(model_file.parent / name, keep / name)
        candidates.append(keep)
        drop = round((rep.reference - metric) * 100, 3)
        rep.steps.append(Step([dataclasses.asdict(o) for o in moves], metric, drop, model_file.stat().st_size,
                              round(time.perf_counter() - t0, 2)))
        return drop

    while True:
        drop = attempt(overrides)
        if drop <= budget.max_drop_points:
            rep.met, rep.reason, rep.chosen = True, "within budget", len(rep.steps) - 1
            if latency is not None and any(o.precision == "int16" for o in overrides):
                _float_instead(rep, overrides, attempt, latency, candidates)
            break
        if time.perf_counter() - t0 > budget.budget_s:
            rep.reason = f"time budget of {budget.budget_s:.0f} s spent"
            break
        with stages.stage(f"diagnose ({drop:.2f} > {budget.max_drop_points} points)"):
            layers = layer_errors(fmt, float_path, model_file, diag_samples, work, tgt.quant.per_channel)
        by_name = {la.name: la for la in layers}
        taken = {o.layer for o in overrides}
        move = next((m for la in layers if la.added_noise > 0 and (m := next_move(la, by_name, fmt)) and m.layer not in taken), None)
        if move is None:
            rep.reason = "no layer left to move"
            break
        overrides.append(move)
    if not rep.met:
        rep.chosen = int(np.argmin([s.drop_points for s in rep.steps]))
    for f in candidates[rep.chosen].iterdir():
        shutil.copyfile(f, model_file.parent / f.name)
    rep.seconds = round(time.perf_counter() - t0, 2)
    chosen = [LayerOverride(**o) for o in rep.steps[rep.chosen].moved]
    return _with_overrides(tgt, chosen), rep


def _float_instead(rep: BudgetReport, overrides: list[LayerOverride], attempt, latency, candidates: list[Path]) -> None:
    """The budget was met with int16 layers: try the same layers float; keep whichever meets the budget faster."""
    wide = len(rep.steps) - 1
    floated = [dataclasses.replace(o, precision="float", note=(o.note + "; " if o.note else "") + "float: faster than int16 at the same budget")
               if o.precision == "int16" else o for o in overrides]
    drop = attempt(floated)
    if drop > rep.max_drop_points:
        rep.chosen = wide
        rep.reason = f"within budget; the int16 layers float lose {drop:.2f} points, so they stay int16"
        return
    ms = latency([candidates[wide], candidates[-1]])
    rep.steps[wide].latency_ms, rep.steps[-1].latency_ms = round(ms[0], 4), round(ms[1], 4)
    faster = ms[1] < ms[0]
    rep.chosen = len(rep.steps) - 1 if faster else wide
    rep.reason = (f"within budget; the int16 layers run {'float' if faster else 'int16'}: "
                  f"{ms[1]:.3f} ms float vs {ms[0]:.3f} ms int16 on this host")


def timed_in_turn(models: list, feed: list[np.ndarray], rounds: int = 40, warmup: int = 3) -> list[float]:
    """Median latency (ms) of each callable model on one sample, the models called in turn (one call each per round),
    so a slow spell of the host hits them alike."""
    import statistics

    times: list[list[float]] = [[] for _ in models]
    for _ in range(warmup):
        for m in models:
            m(*feed)
    for _ in range(rounds):
        for k, m in enumerate(models):
            t = time.perf_counter()
            m(*feed)
            times[k].append((time.perf_counter() - t) * 1e3)
    return [statistics.median(t) for t in times]
