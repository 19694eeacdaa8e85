"""The reference a compressed model learns from: a PyTorch model run in-process, or a black box.

A black-box teacher is something you can only run: an edgekit artifact folder or a bare `.tflite` /
`.onnx` file, run through edgekit's own torch-free runtime (edgekit.runtime; a bare file through the
benchmark runner's BareModel). Its files are read as data, never executed as code. The student
learns from its outputs on unlabelled inputs; every sample it runs on is counted (`calls`), so the
report says what the teacher's knowledge cost. Augmentation (`noise`, `mixup`, `crop`) stretches a
small unlabelled set: each epoch's inputs are new, so the teacher runs on every augmented batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit._util import first_line
from edgekit.compress.train import outputs_of
from edgekit.errors import EdgekitError, ModelLoadError, UsageError

AUGMENTS = ("noise", "mixup", "crop")


class TorchReference:
    """A frozen PyTorch model (eval mode): the model before compression, or a teacher you have the weights of."""

    def __init__(self, module: nn.Module, source: str):
        self.module, self.source, self.calls = module, source, 0
        module.requires_grad_(False)

    def tensors(self, xb: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            self.module.eval()
            self.calls += len(xb[0])
            return outputs_of(self.module(*xb))

    def run(self, arrays: list[np.ndarray], batch: int = 256) -> list[np.ndarray]:
        chunks = [[o.numpy() for o in self.tensors([torch.from_numpy(a[i:i + batch]) for a in arrays])]
                  for i in range(0, len(arrays[0]), batch)]
        return [np.concatenate(c) for c in zip(*chunks)]


class RuntimeReference:
    """An artifact folder or a bare .tflite/.onnx file, run through edgekit's runtime on float (or integer) inputs."""

    module = None
    num_params = None  # known when an artifact's manifest records it

    def __init__(self, path: Path):
        import io

        from edgekit import runtime
        from edgekit._util import captured_output

        self.source, self.calls = str(path), 0
        try:
            with captured_output(io.StringIO()):  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
                self._open(path, runtime)
        except EdgekitError:
            raise
        except Exception as exc:  # noqa: BLE001  (a damaged file: any runtime error)
            raise ModelLoadError(f"cannot run the teacher {path}: {type(exc).__name__}: {first_line(exc, 160)}",
                                 "give an edgekit artifact folder or a .tflite/.onnx file that edgekit bench runs") from None

    def _open(self, path: Path, runtime) -> None:
        if path.is_dir():
            self.model, self.bare = runtime.load(path), False
            self.num_params = self.model.manifest.model.get("num_params")
        else:
            from edgekit.runner import BareModel

            self.model, self.bare = BareModel(path), True

    def _bare_feed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feed = []
        for spec, info, a in zip(self.model.inputs, self.model.backend.inputs, arrays):
            want = tuple(spec.shape[1:])
            if a.ndim == 4 and tuple(a.shape[1:]) != want and tuple(a.shape[1:]) == (want[2], want[0], want[1]):
                a = a.transpose(0, 2, 3, 1)  # the student's NCHW images into a TFLite file's NHWC
            if info.scale is not None and np.dtype(spec.dtype).kind in "iu" and a.dtype.kind == "f":
                from edgekit.runtime import quantize

                a = quantize(a, spec.dtype, info.scale, info.zero_point)
            feed.append(a)
        return feed

    def run(self, arrays: list[np.ndarray], batch: int = 0) -> list[np.ndarray]:
        self.calls += len(arrays[0])
        if not self.bare:
            return self.model.run_batch(*arrays)
        return [o.astype(np.float32) for o in self.model.run_batch(*self._bare_feed(arrays))]

    def tensors(self, xb: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(o, dtype=np.float32)) for o in self.run([x.numpy() for x in xb])]


def is_black_box(source: Any) -> bool:
    if not isinstance(source, (str, Path)):
        return False
    p = Path(source)
    from edgekit.runtime.manifest import MANIFEST

    return (p.is_dir() and (p / MANIFEST).is_file()) or (p.is_file() and p.suffix in (".tflite", ".onnx"))


def load_black_box(source: str | Path) -> RuntimeReference:
    return RuntimeReference(Path(source))


def check_augment(kinds: tuple[str, ...], example: tuple[torch.Tensor, ...] | None = None) -> None:
    """The names (always), and that the model has inputs they apply to (once it is loaded: `example`)."""
    bad = [k for k in kinds if k not in AUGMENTS]
    if bad:
        raise UsageError(f"unknown augmentation {bad[0]!r}", f"one or more of: {', '.join(AUGMENTS)} (comma-separated)")
    if example is None:
        return
    if kinds and not any(t.is_floating_point() for t in example):
        raise UsageError("augmentation changes float inputs, and this model has only integer inputs (ids, masks)",
                         "leave out --augment, or give more unlabelled data")
    if "crop" in kinds and not any(t.is_floating_point() and t.ndim == 4 for t in example):
        raise UsageError("crop augmentation is for image inputs (N, C, H, W)", "use noise or mixup")


def augment(xb: list[torch.Tensor], kinds: tuple[str, ...], gen: torch.Generator) -> list[torch.Tensor]:
    """New float inputs from a batch: Gaussian noise at 10% of the batch's std, mixup of pairs (weight 0.6-1 on
    the first), random crops (60-100% of each side, resized back) with horizontal flips. Integer inputs are untouched."""
    out = []
    for x in xb:
        if not x.is_floating_point():
            out.append(x)
            continue
        n, dtype = len(x), x.dtype
        if "crop" in kinds and x.ndim == 4:
            h, w = x.shape[2:]
            views = []
            for i in range(n):
                f = 0.6 + 0.4 * float(torch.rand((), generator=gen))
                ch, cw = max(1, round(h * f)), max(1, round(w * f))
                top = int(torch.randint(0, h - ch + 1, (), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (), generator=gen))
                v = F.interpolate(x[i:i + 1, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear", align_corners=False)
                views.append(v.flip(-1) if float(torch.rand((), generator=gen)) < 0.5 else v)
            x = torch.cat(views)
        if "mixup" in kinds and n > 1:
            lam = (0.6 + 0.4 * torch.rand(n, generator=gen)).reshape(n, *([1] * (x.ndim - 1)))
            x = lam * x + (1 - lam) * x[torch.randperm(n, generator=gen)]
        if "noise" in kinds:
            x = x + 0.1 * x.std() * torch.randn(x.shape, generator=gen)
        out.append(x.to(dtype))
    return out
