"""edgekit: take a trained PyTorch model to the edge and tell the truth about what it costs there.

The heavy parts (torch, converters) load only when used, so `import edgekit.runtime` stays
torch-free on a board.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "convert": ("edgekit.pipeline", "convert"),
    "ConvertResult": ("edgekit.pipeline", "ConvertResult"),
    "Artifact": ("edgekit.artifact", "Artifact"),
    "load_target": ("edgekit.targets", "load_target"),
    "list_targets": ("edgekit.targets", "list_targets"),
    "Target": ("edgekit.targets", "Target"),
    "EdgekitError": ("edgekit.errors", "EdgekitError"),
    "bench": ("edgekit.measure", "bench"),
    "bench_many": ("edgekit.measure", "bench_many"),
    "BenchResult": ("edgekit.measure", "BenchResult"),
    "sweep": ("edgekit.lab", "sweep"),
    "read_lab": ("edgekit.lab", "read_lab"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in ("sources", "runtime", "devices", "datasets", "calibration", "targets", "lab"):
        import importlib

        return importlib.import_module(f"edgekit.{name}")
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
