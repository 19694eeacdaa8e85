"""What each output of a model learns while it is compressed, and the figure that scores it.

A compressed model is trained toward, per output: the labels (a class output, with `y` class
indices in the data), target arrays (an .npz array named after the output), or the reference's
outputs: the model before compression (pruning, low-rank, QAT: self-distillation, so no labels are
needed) or the teacher (distillation). The output kinds are those of the verdicts (edgekit.validate:
declared with `--output NAME=KIND` or the factory's `output_spec`, else inferred where the outputs
prove it), and each kind has its loss and its figure:

    kind         loss toward the reference           loss toward labels/targets   figure (validation, each epoch)
    class        KL at temperature T (x T^2)         cross-entropy               accuracy (labels) / top-1 agreement
    probability  binary cross-entropy, soft targets  binary cross-entropy        decision agreement at the threshold
    embedding    1 - cosine                          1 - cosine                  mean cosine
    regression   smooth-L1 (in units of the reference's std)                     mean absolute error, in output units
    state/tensor MSE (in units of the reference's std)                           SQNR in dB

Class scores that are probabilities already (rows summing to one, e.g. a face net's softmax) are
compared as log-probabilities. Losses are summed with per-output weights (`--output-weight NAME=W`,
default 1); the std scaling keeps a box regression in pixels from drowning a probability in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.compress.data import Samples
from edgekit.errors import CalibrationError, UsageError
from edgekit.validate import OutputKind, cosines, infer_kinds, sqnr_db

@dataclass(frozen=True)
class Head:
    """One output: what it means, what it learns from, and how much it counts."""

    name: str
    index: int
    kind: OutputKind
    target: str  # "labels", "targets" or "reference"
    weight: float = 1.0
    scale: float = 1.0  # regression/state/tensor: the reference's std over the training data

    @property
    def figure(self) -> str:
        k = self.kind.kind
        if k == "class":
            return "accuracy" if self.target == "labels" else "top1_agreement"
        return {"probability": "decision_agreement", "embedding": "cosine", "regression": "mae"}.get(k, "sqnr_db")

    def to_json(self) -> dict:
        d = {"kind": self.kind.label(), "learns": self.target, "weight": self.weight, "figure": self.figure}
        if self.figure in ("mae", "sqnr_db"):
            d["reference_std"] = round(self.scale, 6)  # what an error in output units is measured against
        return d


def parse_weights(texts, names: list[str]) -> dict[str, float]:
    out = {}
    for text in texts or ():
        name, sep, value = str(text).partition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if not sep or w < 0:
            raise UsageError(f"bad --output-weight {text!r}", "write NAME=WEIGHT with a weight >= 0, e.g. boxes=0.5")
        if name not in names:
            raise UsageError(f"--output-weight names {name!r}, which is not an output of the model", f"its outputs: {', '.join(names)}")
        out[name] = w
    return out


def heads_for(names: list[str], ref: list[np.ndarray], data: Samples, declared: dict[str, OutputKind] | None = None,
              weights: dict[str, float] | None = None, own: list[np.ndarray] | None = None) -> list[Head]:
    """Each output's head. `ref`: the reference's outputs on (some of) the training data; `own`: the model's own
    outputs there, which the kinds are inferred from (a black-box int8 teacher's dequantized softmax rows do not
    sum to one exactly; the PyTorch model's do)."""
    declared = declared or {}
    kinds = infer_kinds(names, ref if own is None else own, data.labels, declared)
    labelled = None
    if data.labels is not None:
        classes = [i for i, k in enumerate(kinds) if k.kind == "class" and names[i] not in data.targets]
        two_d = [r for r in ref if r.ndim == 2 and r.shape[1] >= 2]
        if not classes and len(two_d) == 1 and int(data.labels.max()) >= two_d[0].shape[1]:
            raise CalibrationError(f"labels run up to {int(data.labels.max())} but the model has {two_d[0].shape[1]} outputs",
                                   "the labels must be class indices 0 .. outputs-1 of the model")
        if not classes:
            raise CalibrationError(f"{data.source} has labels, but no output of the model is a class output",
                                   "declare the one they index with --output NAME=class (or drop the labels to learn the model's own outputs)")
        if len(classes) > 1:
            raise CalibrationError(f"{data.source} has labels, and {len(classes)} outputs are class outputs",
                                   "say which one the labels index: declare the others with --output NAME=KIND")
        labelled = classes[0]
        n_classes = ref[labelled].shape[-1]
        top = int(data.labels.max()) if len(data.labels) else 0
        if data.labels.min() < 0 or top >= n_classes:
            raise CalibrationError(f"labels run up to {top} but the model has {n_classes} outputs",
                                   "the labels must be class indices 0 .. outputs-1 of the model")
    heads = []
    for i, (name, kind) in enumerate(zip(names, kinds)):
        target = "targets" if name in data.targets else "labels" if i == labelled else "reference"
        std = float(np.std(ref[i])) if ref[i].size else 1.0
        heads.append(Head(name, i, kind, target, (weights or {}).get(name, 1.0), max(std, 1e-6)))
    if not any(h.weight > 0 for h in heads):
        raise UsageError("every output has weight 0: nothing would be learned", "give at least one output a weight above 0")
    return heads


def _logits(x: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    return torch.log(x.clamp_min(1e-8)) if kind.probs else x


def _toward(head: Head, out: torch.Tensor, want: torch.Tensor, soft: bool, temperature: float) -> torch.Tensor:
    """The loss of one output toward a reference output (soft) or toward labels/targets."""
    k = head.kind.kind
    if k == "class":
        s = _logits(out, head.kind)
        if not soft:
            return F.cross_entropy(s, want.reshape(-1))
        t = temperature
        return F.kl_div(F.log_softmax(s / t, 1), F.log_softmax(_logits(want, head.kind) / t, 1), reduction="batchmean",
                        log_target=True) * (t * t)
    if k == "probability":
        return F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), want.to(out.dtype).clamp(0, 1))
    if k == "embedding":
        return (1 - F.cosine_similarity(out.reshape(len(out), -1), want.reshape(len(want), -1).to(out.dtype), dim=1)).mean()
    if k == "regression":
        return F.smooth_l1_loss(out / head.scale, want.to(out.dtype) / head.scale)
    return F.mse_loss(out / head.scale, want.to(out.dtype) / head.scale)


class Objective:
    """The weighted sum of every output's loss. `alpha`: where an output has labels or targets and a teacher too
    (distillation), the teacher's share; compression without a teacher trains on the labels/targets alone."""

    def __init__(self, heads: list[Head], temperature: float = 1.0, alpha: float | None = None):
        self.heads, self.temperature, self.alpha = heads, temperature, alpha

    def loss(self, outs: list[torch.Tensor], ref: list[torch.Tensor] | None, labels: torch.Tensor | None,
             targets: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(())
        for h in self.heads:
            if h.weight == 0:
                continue
            out = outs[h.index]
            if h.target == "reference":
                term = _toward(h, out, ref[h.index], True, self.temperature)
            else:
                hard = _toward(h, out, labels if h.target == "labels" else targets[h.name], h.target == "targets" and h.kind.kind == "class",
                               self.temperature)
                term = hard if self.alpha is None or ref is None else \
                    self.alpha * _toward(h, out, ref[h.index], True, self.temperature) + (1 - self.alpha) * hard
            total = total + h.weight * term
        return total

    def scores(self, outs: list[np.ndarray], ref: list[np.ndarray] | None, data: Samples) -> dict[str, float]:
        """Each output's figure on `data`: against its labels/targets, else against the reference's outputs."""
        return {h.name: score(h, outs[h.index], ref[h.index] if ref is not None else None, data) for h in self.heads}

    def describe(self) -> dict:
        return {h.name: h.to_json() for h in self.heads}


def score(h: Head, out: np.ndarray, ref: np.ndarray | None, data: Samples) -> float:
    want = data.labels if h.target == "labels" else data.targets.get(h.name) if h.target == "targets" else ref
    k = h.kind.kind
    if k == "class":
        o = out.reshape(-1, out.shape[-1]).argmax(1)
        w = np.asarray(want).reshape(-1) if h.target == "labels" else np.asarray(want).reshape(-1, out.shape[-1]).argmax(1)
        return float(np.mean(o == w))
    if k == "probability":
        t = h.kind.threshold
        return float(np.mean((out >= t) == (np.asarray(want) >= t)))
    if k == "embedding":
        return float(np.mean(cosines(np.asarray(want, dtype=np.float64), out)))
    if k == "regression":
        return float(np.mean(np.abs(np.asarray(want, dtype=np.float64) - out)))
    return float(sqnr_db(np.asarray(want), out))


def show(figure: str, value: float | None) -> str:
    if value is None:
        return "—"
    if figure in ("accuracy", "top1_agreement", "decision_agreement"):
        return f"{value:.2%}"
    if figure == "sqnr_db":
        return f"{value:.1f} dB"
    return f"{value:.4f}"
