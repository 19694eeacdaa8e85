"""Compression before conversion: quantization-aware training, pruning, distillation, low-rank factorization.

Each method returns a CompressResult (the model and a short report); `result.save("net.pt2")` writes a
torch.export program that `edgekit convert` takes. Loaded lazily: `import edgekit.compress` (and the CLI
that registers its commands) does not import torch.

    from edgekit import compress
    r = compress.qat("models/net.py:build", "train.npz", weights="net.pt", val="val.npz")
    r.report["outputs"]; r.save("net-qat.pt2")     # each output's figure before and after

Any model compresses, not only classifiers: each output learns by its kind (class scores, embedding,
regression, probability, state; edgekit.compress.objective), toward its labels or target arrays where
the data has them, else toward the uncompressed model's (or the teacher's) outputs, so unlabelled
data is enough. Model structure comes from torch.export (edgekit.compress.graph), never torch.fx
tracing of user code.
"""

from __future__ import annotations

_LAZY = {
    "qat": ("edgekit.compress.quantization", "qat"),
    "prune": ("edgekit.compress.pruning", "prune"),
    "distill": ("edgekit.compress.distillation", "distill"),
    "lowrank": ("edgekit.compress.factorization", "lowrank"),
    "transformer_student": ("edgekit.compress.transformer", "student"),
    "CompressResult": ("edgekit.compress.result", "CompressResult"),
    "TrainConfig": ("edgekit.compress.train", "TrainConfig"),
    "DataConfig": ("edgekit.compress.data", "DataConfig"),
    "OutputConfig": ("edgekit.compress.result", "OutputConfig"),
    "Samples": ("edgekit.compress.data", "Samples"),
    "QATConfig": ("edgekit.compress.quantization", "QATConfig"),
    "PruneConfig": ("edgekit.compress.pruning", "PruneConfig"),
    "DistillConfig": ("edgekit.compress.distillation", "DistillConfig"),
    "LowRankConfig": ("edgekit.compress.factorization", "LowRankConfig"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgekit.compress' has no attribute {name!r}")
