"""Accuracy-budget conversion: the smallest int8 artifact whose task accuracy stays within a budget.

Start from full int8. While the drop (points of top-1 accuracy on the user's labelled data, or of
top-1 agreement with the float model when there are no labels) exceeds the budget, ask diagnose
for the layer that adds the most error and move it: int8 layers go to int16 activations (with the
layers that read them, so the wide tensor is int16 on both sides), int16 layers go to float.
Re-quantize, re-measure, until the budget is met, nothing is left to move, or time runs out.
The moves are per-layer overrides in the target, kept in the manifest, so
`edgekit convert MODEL --target ARTIFACT_FOLDER` re-applies them without searching.
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
from edgekit.targets import LayerOverride, Target

DIAGNOSE_SAMPLES = 32


@dataclass(frozen=True)
class AccuracyBudget:
    max_drop_points: float  # points of accuracy (or agreement) the artifact may lose against the float model
    data: CalibrationData  # labelled data to measure on; agreement with the float model when unlabelled
    budget_s: float = 600.0  # stop searching after this many seconds


@dataclass
class Step:
    moved: list[dict]
    metric: float
    drop_points: float
    size_bytes: int
    seconds: float


@dataclass
class BudgetReport:
    metric: str  # accuracy | agreement
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


def search(tgt: Target, budget: AccuracyBudget, reference_logits: np.ndarray, fmt: str, float_path: Path,
           quantize: Callable[[Target], np.ndarray], model_file: Path, diag_samples: list[dict], work: Path,
           stages) -> tuple[Target, BudgetReport]:
    """Run the search; `quantize(target)` writes `model_file` and returns its logits on `budget.data`.

    Leaves the chosen candidate in `model_file` and returns its target (with the overrides) and the report."""
    from edgekit.diagnose import layer_errors, next_move

    labels = budget.data.labels
    if reference_logits.ndim != 2 or reference_logits.shape[1] < 2:
        raise UsageError("--max-accuracy-drop needs a classifier (outputs of shape [N, classes])",
                         "use the validation thresholds in the target for other models")

    def score(logits: np.ndarray) -> float:
        ref = labels if labels is not None else reference_logits.argmax(1)
        return float(np.mean(logits.argmax(1) == ref))

    rep = BudgetReport("accuracy" if labels is not None else "agreement", budget.max_drop_points,
                       score(reference_logits), len(budget.data))
    t0 = time.perf_counter()
    overrides = list(tgt.quant.overrides)
    candidates: list[Path] = []
    while True:
        current = _with_overrides(tgt, overrides)
        metric = score(quantize(current))
        keep = work / f"candidate-{len(candidates)}{model_file.suffix}"
        shutil.copyfile(model_file, keep)
        if model_file.with_name("recipe.json").exists():  # ai-edge-quantizer writes its recipe beside the model
            shutil.copyfile(model_file.with_name("recipe.json"), keep.with_suffix(".recipe.json"))
        candidates.append(keep)
        drop = round((rep.reference - metric) * 100, 3)
        rep.steps.append(Step([dataclasses.asdict(o) for o in overrides], metric, drop, model_file.stat().st_size,
                              round(time.perf_counter() - t0, 2)))
        if drop <= budget.max_drop_points:
            rep.met, rep.reason = True, "within budget"
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
    rep.chosen = len(rep.steps) - 1 if rep.met else int(np.argmin([s.drop_points for s in rep.steps]))
    shutil.copyfile(candidates[rep.chosen], model_file)
    if candidates[rep.chosen].with_suffix(".recipe.json").exists():
        shutil.copyfile(candidates[rep.chosen].with_suffix(".recipe.json"), model_file.with_name("recipe.json"))
    rep.seconds = round(time.perf_counter() - t0, 2)
    chosen = [LayerOverride(**o) for o in rep.steps[rep.chosen].moved]
    return _with_overrides(tgt, chosen), rep
