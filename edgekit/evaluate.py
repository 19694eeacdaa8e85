"""edgekit eval: task accuracy of an artifact on labeled data, on the host or on a device.

On a device the outputs are produced there (edgekit's runtime, pushed with the artifact and the
inputs) and compared here, so on-device numeric differences show. Against a reference PyTorch
model: top-1 agreement, mean KL divergence of the softmax, SQNR and cosine.

A bare .onnx/.tflite file (no artifact folder) is fed as the file takes its inputs: dynamic dims
fixed by `input_shapes` (`[NAME=]DIMS`; a dynamic batch dim alone is 1), the data's samples must
match the fixed shapes and (for integer inputs) dtypes and `input_ranges`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgekit.calibration import CalibrationData, load_calibration
from edgekit.errors import UsageError
from edgekit.validate import LABELS_UNUSED, OutputKind, compare, infer_kinds

ProgressFn = Callable[[int, int], None]  # (samples done, total)


@dataclass
class EvalResult:
    artifact: str
    target: str
    device: str
    data: str
    samples: int
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    device_info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # bare files: the shapes assumed (batch 1)

    def to_json(self) -> dict:
        return asdict(self)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(p_ref || p_artifact) over samples, in nats."""
    p, q = softmax(ref_logits.astype(np.float64)), softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def task_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return {"top1": float(np.mean(logits.argmax(1) == labels)),
            "top5": float(np.mean((top5 == labels[:, None]).any(1))) if logits.shape[1] > 5 else None}


def _host_outputs(model, data: CalibrationData, names: Sequence[str], batch: int,
                  progress: ProgressFn | None) -> list[np.ndarray]:
    """`model`: a runtime.Model or a runner.BareModel (both split samples into their own batch)."""
    n, chunks = len(data), []
    for i in range(0, n, batch):
        chunks.append(model.run_batch(*(data.arrays[k][i:i + batch] for k in names)))
        if progress:
            progress(min(i + batch, n), n)
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def _device_outputs(model_path: Path, manifest, data: CalibrationData, names: Sequence[str], device, threads: int | None,
                    progress: ProgressFn | None, bare_args: Sequence[str] = ()) -> tuple[list[np.ndarray], dict]:
    """The outputs of every sample, made on the device by edgekit's runner and pulled back; with what ran them.
    No timing: a board may be emulated (qemu), and the eval's seconds are not a latency anyway."""
    from edgekit.devices.profiles import resolve
    from edgekit.measure import refuse_tensorless_runner, runner_on_device

    profile = resolve(device)
    refuse_tensorless_runner(profile, "accuracy on the device")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", **{k: data.arrays[k] for k in names})
        report = runner_on_device(profile, model_path, manifest, {"inputs.npz": tmp / "inputs.npz"},
                                  [*bare_args, "--eval", "{run}/inputs.npz", "{run}/outputs.npz"],
                                  {"outputs.npz": tmp / "outputs.npz"}, threads, "eval")
        with np.load(tmp / "outputs.npz") as z:
            outs = [z[f"output_{k}"] for k in range(len(z.files))]
    if progress:
        progress(len(data), len(data))
    return outs, {"device": profile.name, "machine": report.get("machine"), "runtime": report.get("runtime"),
                  "runtime_version": report.get("runtime_version"), "transport": report.get("transport")}


def input_specs(manifest) -> list:
    """What data an artifact takes, in the PyTorch model's terms: quantized and float inputs take float
    data (the runtime quantizes), integer inputs (ids, masks) integer data within their range."""
    from edgekit.inputs import InputSpec

    return [InputSpec(t.name, t.source_shape, t.dtype if t.takes_integers else "float32", t.batched, t.value_range)
            for t in manifest.inputs]


def bare_input_specs(model) -> list:
    """What data a bare file (a runner.BareModel) takes: its inputs at their fixed shapes, float data for float
    inputs, integer data of the file's dtype (within --input-range) for ids, masks and quantized inputs."""
    from edgekit.inputs import InputSpec

    return [InputSpec(t.name, tuple(t.shape), t.dtype if t.is_integer or t.quantized else "float32", True, t.value_range)
            for t in model.inputs]


def recorded_kinds(manifest) -> dict:
    """The output kinds the artifact was validated with (the manifest's validation figures keep the details:
    probabilities, thresholds, which input a state feeds), else the kind each output entry records."""
    kinds = {o.name: OutputKind(o.kind) for o in manifest.outputs if o.kind}
    for x in manifest.output_details().values():
        if x["name"] in kinds and x.get("kind") == kinds[x["name"]].kind:  # a received file: types checked
            t = x.get("threshold", 0.5)
            kinds[x["name"]] = OutputKind(x["kind"], x.get("inferred") is True, str(x.get("why", ""))[:200], x.get("probs") is True,
                                          float(t) if isinstance(t, (int, float)) and 0 < t < 1 else 0.5, str(x.get("feeds", ""))[:512])
    return kinds


PARITY_TOLERANCE = 1e-6  # max abs difference allowed between the runtime's tensors and calibration's (float rounding)


def preprocess_check(artifact: str | Path, folder: str | Path, spec_name: str | None = None, samples: int = 32) -> dict:
    """Whether the artifact's own preprocessing (its manifest, run by the runtime) makes the tensors calibration makes
    from the same image files with the spec `spec_name` (default: the spec the manifest names). Raises
    ValidationFailed (one line: the worst file, the difference, the fields that differ) when they drift apart."""
    from edgekit.calibration import IMAGE_SUFFIXES, _read_images, image_preprocess, load_spec
    from edgekit.errors import ValidationFailed
    from edgekit.runtime import read_manifest
    from edgekit.runtime.preprocess import ImagePreprocess

    manifest = read_manifest(artifact)  # the manifest is all it needs: no interpreter
    pre = ImagePreprocess.from_dict(manifest.preprocess, str(artifact)) if manifest.preprocess else None
    if pre is None:
        raise UsageError(f"{artifact} records no image preprocessing to check", "convert with --preprocess SPEC or an image-folder --calib")
    name = spec_name or pre.spec
    if not name:
        raise UsageError(f"{artifact}'s preprocessing names no spec to check it against", "pass --data-spec NAME")
    spec = load_spec(name)
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--preprocess-check needs a folder of images, got {folder}", "give --data a folder (class folders or flat)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:samples]
    if not files:
        raise UsageError(f"no images in {folder} to check the preprocessing on", "give --data a folder of images")
    ref = _read_images(root, files, spec)
    from PIL import Image

    got = []
    for f in files:
        with Image.open(f) as im:
            got.append(pre.array(im.convert(pre.color)))
    got = np.stack(got)
    if got.shape != ref.shape:
        raise ValidationFailed(f"preprocessing parity failed: the artifact's preprocessing makes {got.shape[1:]} tensors, spec {name} "
                               f"makes {ref.shape[1:]}", "re-convert with the spec the app will use (--preprocess)")
    diff = np.abs(got - ref).reshape(len(files), -1).max(axis=1)
    worst = int(diff.argmax())
    result = {"spec": name, "images": len(files), "max_abs_diff": float(diff.max()), "tolerance": PARITY_TOLERANCE,
              "status": "ok" if diff.max() <= PARITY_TOLERANCE else "fail"}
    if result["status"] == "fail":
        theirs = image_preprocess(spec).to_dict()
        differ = [k for k, v in pre.to_dict().items() if k != "spec" and theirs.get(k) != v]
        shown = "; ".join(f"{k}: artifact {pre.to_dict()[k]} vs spec {theirs[k]}" for k in differ) or "same fields, different pixels"
        raise ValidationFailed(f"preprocessing parity failed on {len(files)} images: max difference {diff.max():.4g} on {files[worst].name} "
                               f"({shown})", "the app would feed other tensors than calibration saw: re-convert with the right --preprocess")
    return result


def evaluate(artifact: str | Path, data: str | Path | CalibrationData, *, labels_key: str | None = None,
             data_spec: str | None = None, device=None, reference=None, reference_weights: str | Path | None = None,
             threads: int | None = None, samples: int | None = None, batch: int = 256,
             progress: ProgressFn | None = None, input_shapes: Sequence[str] = (), input_ranges: Sequence[str] = (),
             outputs: dict | None = None) -> EvalResult:
    """input_shapes / input_ranges: for a bare .onnx/.tflite file, `[NAME=]DIMS` and `NAME=LO:HI` as on the command line.
    outputs: what outputs mean ({name: OutputKind}; default: the artifact's manifest, else inferred): accuracy is
    measured on the class output, never on a box or embedding output that happens to be 2-D."""
    from edgekit.measure import _artifact_files, bare_input_args, check_bare_inputs

    model_path, manifest = _artifact_files(Path(artifact))
    notes: list[str] = []
    if manifest is not None:
        check_bare_inputs([artifact], input_shapes, input_ranges)  # refuses them for an artifact folder
        specs, target = input_specs(manifest), manifest.target_name
    else:
        from edgekit.runner import BareModel

        host_model = BareModel(model_path, threads, input_shapes, input_ranges)  # one-line errors for shapes left open
        specs, target, notes = bare_input_specs(host_model), model_path.suffix.lstrip("."), host_model.shape_notes
    names, shapes = [i.name for i in specs], [i.shape for i in specs]
    ds = load_calibration(data, names, shapes, split="test", spec_name=data_spec, labels_key=labels_key, inputs=specs)
    if samples:
        ds = ds.take(slice(0, samples))
    t0 = time.perf_counter()
    info: dict = {}
    if device is None or device == "host":
        if manifest is not None:
            from edgekit.runtime import Model

            host_model = Model(Path(artifact), num_threads=threads)
        outs = _host_outputs(host_model, ds, names, batch, progress)
        where = "host"
    else:
        outs, info = _device_outputs(model_path, manifest, ds, names, device, threads, progress,
                                     bare_input_args(input_shapes, input_ranges) if manifest is None else ())
        where = info["device"]
    res = EvalResult(str(artifact), target, where, ds.source, len(ds), seconds=time.perf_counter() - t0, device_info=info, notes=notes)
    out_names = [o.name for o in manifest.outputs] if manifest is not None else [f"output_{k}" for k in range(len(outs))]
    # what convert learnt about the outputs; a plain "tensor" there only means nothing was known then
    recorded = {k: v for k, v in (recorded_kinds(manifest) if manifest is not None else {}).items() if v.kind != "tensor"}
    kinds = infer_kinds(out_names, outs, ds.labels, {**recorded, **(outputs or {})})
    cls = next((k for k, kind in enumerate(kinds) if kind.kind == "class"), None)
    if ds.labels is not None and cls is not None:
        res.metrics.update(task_metrics(outs[cls], ds.labels))
        if len(out_names) > 1:
            res.notes.append(f"accuracy is measured on output {out_names[cls]!r} ({kinds[cls].label()})")
    elif ds.labels is not None:
        res.notes.append(LABELS_UNUSED)
    if reference is not None:
        from edgekit.sources import load_model

        spec = load_model(reference, [tuple(s) for s in shapes], reference_weights)
        ref = spec.outputs_for(ds)
        cmp = compare(ref, outs, ds.labels, kinds, out_names)
        if any(k.kind == "state" and k.feeds in names for k in kinds):
            if device not in (None, "host") or manifest is None:
                res.notes.append("closed-loop figures are measured on this host, for artifact folders: run without --device for them")
            else:  # streaming: both fed their own state over the data's sequences
                from edgekit.runtime import Model
                from edgekit.validate import closed_loop

                art = Model(Path(artifact), num_threads=threads)
                cmp["closed_loop"] = closed_loop(spec.run_reference, lambda arrays: art(*arrays), ds, names, out_names, kinds)
        res.metrics.update({k: v for k, v in cmp.items() if k != "samples"})
        if cls is not None:
            res.metrics["mean_kl"] = mean_kl(ref[cls], outs[cls])
    if not res.metrics:
        if ds.labels is not None:
            raise UsageError(f"{ds.source} has labels, but no output of the artifact is a class output to score them on",
                             "declare it: --output NAME=class (or pass --reference MODEL)")
        raise UsageError(f"{ds.source} has no labels and no --reference was given: nothing to score",
                         "give labelled data (an .npz with y, class folders, digits) or --reference MODEL")
    return res
