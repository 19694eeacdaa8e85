"""edgekit.convert: model source + target -> validated artifact folder.

Stages: export -> simplify (ONNX) -> calibrate -> quantize -> validate, each timed and reported.
`convert_many` runs several targets over one loaded model; a failing target becomes a failed
row and the others go on.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgekit import __version__
from edgekit._util import ProgressFn, Stages, tool_versions
from edgekit.artifact import Artifact, Staging, sha256
from edgekit.calibration import CalibrationData, load_calibration, split_holdout
from edgekit.errors import CalibrationError, ConversionError, EdgekitError
from edgekit.runtime import MANIFEST, open_backend
from edgekit.sources import ModelSpec, load_model
from edgekit.targets import Target, load_target
from edgekit.validate import compare, verdict

DEFAULT_TARGET = "tflite-int8"


@dataclass
class ConvertResult:
    """One row of a convert run: the artifact, or the error that stopped it."""

    target: str
    artifact: Artifact | None = None
    error: EdgekitError | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.artifact is not None

    def to_json(self) -> dict:
        if self.artifact is None:
            return {"target": self.target, "status": "error", "error": str(self.error), "warnings": self.warnings}
        return {"target": self.target, "status": self.artifact.validation.get("status"), "warnings": self.warnings,
                "artifact": self.artifact.to_json()}


def _io_entries(spec: ModelSpec, backend, in_layouts, out_layouts) -> tuple[list[dict], list[dict]]:
    from edgekit.export.onnx import output_names

    ref = spec.reference_outputs()
    src_in, src_out = spec.io_layouts()
    if len(backend.inputs) != len(spec.input_names) or len(backend.outputs) != len(ref):
        raise ConversionError(f"the artifact has {len(backend.inputs)} inputs / {len(backend.outputs)} outputs, the model "
                              f"{len(spec.input_names)} / {len(ref)}", "the converter dropped or merged tensors; run with --debug")
    inputs = [{"name": spec.input_names[i], **t.to_dict(), "layout": in_layouts[i], "source_layout": src_in[i],
               "source_shape": list(spec.input_shapes[i])} for i, t in enumerate(backend.inputs)]
    outputs = [{"name": name, **t.to_dict(), "layout": out_layouts[i], "source_layout": src_out[i], "source_shape": list(ref[i].shape)}
               for i, (name, t) in enumerate(zip(output_names(spec), backend.outputs))]
    return inputs, outputs


def _resolve_data(spec: ModelSpec, targets: Sequence[Target], calibration, calib_spec, calib_samples, val_samples,
                  warnings: list[str], calib_warnings: list[str], validation=None) -> tuple[CalibrationData | None, CalibrationData]:
    """(calibration samples, held-out validation samples), read and checked once for every target.

    Warnings for every target go to `warnings`; those only calibrating targets need, to `calib_warnings`."""
    if validation is not None:  # the user's own validation set: calibration keeps all of --calib
        val = load_calibration(validation, spec.input_names, spec.input_shapes, spec_name=calib_spec)
        calib = None
        if calibration is not None or spec.default_calibration:
            calib = load_calibration(calibration if calibration is not None else spec.default_calibration,
                                     spec.input_names, spec.input_shapes, spec_name=calib_spec)
            calib = calib.take(slice(0, calib_samples))
        elif any(t.quant.needs_calibration for t in targets):
            raise CalibrationError("static int8 targets need calibration data besides --val-data", "pass --calib too")
        return calib, val.take(slice(0, val_samples))
    needing = [t.name for t in targets if t.quant.needs_calibration]
    source = calibration if calibration is not None else spec.default_calibration
    if source is None:
        if needing:
            raise CalibrationError(f"{', '.join(needing)} need{'s' if len(needing) == 1 else ''} calibration data",
                                   "pass --calib data.npy (or a folder, .npz, digits); --calib random calibrates on noise and is not recommended")
        data = load_calibration("random", spec.input_names, spec.input_shapes, random_samples=min(val_samples, 64))
        warnings.append("validated on random inputs (no --calib given): pass real data for figures you can trust")
        return None, data
    data = load_calibration(source, spec.input_names, spec.input_shapes, spec_name=calib_spec)
    if data.synthetic and needing:
        calib_warnings.append("calibrating on random data (--calib random): int8 ranges will not match real inputs; expect accuracy loss")
    warnings.extend(data.notes)
    if isinstance(source, str) and data.source.endswith(":train"):
        # a named dataset has a real test split: calibrate on train, validate on test
        val = load_calibration(source, spec.input_names, spec.input_shapes, split="test")
        return data.take(slice(0, calib_samples)), val.take(slice(0, val_samples))
    calib, val = split_holdout(data, calib_samples, val_samples)
    if val is None:
        warnings.append(f"only {len(data)} samples: none left to hold out, validating on the calibration samples")
        val = calib
    return calib, val


def _with_calib_method(tgt: Target, method: str | None) -> Target:
    if not method or not tgt.quant.needs_calibration or method == tgt.quant.calib_method:
        return tgt
    from edgekit.targets import parse_target

    d = tgt.to_dict()
    return parse_target({**{k: v for k, v in d.items() if k not in ("quant", "validation", "source")},
                         "quantize": {**d["quant"], "calib_method": method}, "validation": d["validation"]},
                        f"{tgt.source} (--calib-method {method})")


def default_dest(spec: ModelSpec, tgt: Target, root: str | Path = "out") -> Path:
    return Path(root) / f"{spec.name}-{tgt.name}"


def convert(model: str | nn.Module | ModelSpec | None = None, target: str | Target = DEFAULT_TARGET, *,
            calibration: str | Path | np.ndarray | CalibrationData | None = None, out_dir: str | Path | None = None,
            input_shapes: Sequence[Sequence[int]] | None = None, weights: str | Path | None = None,
            calib_samples: int = 200, val_samples: int = 200, calib_method: str | None = None,
            calib_spec: str | None = None, channels_last: bool = False, trust_pickle: bool = False,
            validation: str | Path | np.ndarray | CalibrationData | None = None,
            progress: ProgressFn | None = None, warnings: list[str] | None = None) -> Artifact:
    """Convert a PyTorch model to one target and validate it; returns the written Artifact.

    Bad input raises before any conversion starts; a failed conversion raises and leaves nothing behind.
    `warnings`, when given, receives the run's warnings.
    """
    (res,) = convert_many(model, [target], calibration=calibration, out_dir=out_dir, input_shapes=input_shapes,
                          weights=weights, calib_samples=calib_samples, val_samples=val_samples, calib_method=calib_method,
                          calib_spec=calib_spec, channels_last=channels_last, trust_pickle=trust_pickle, validation=validation,
                          progress=(lambda _t, stage, event, sec: progress(stage, event, sec)) if progress else None)
    if warnings is not None:
        warnings.extend(res.warnings)
    if res.error is not None:
        raise res.error
    return res.artifact


def _convert_one(spec: ModelSpec, tgt: Target, calib: CalibrationData | None, val: CalibrationData, dest: Path,
                 channels_last: bool, progress: ProgressFn | None, warnings: list[str]) -> Artifact:
    t_start = time.perf_counter()
    if channels_last and tgt.format != "tflite":
        warnings.append("--channels-last applies to TFLite only: this ONNX artifact keeps the PyTorch layout")
    staging = Staging(dest)
    work = Path(tempfile.mkdtemp(prefix="edgekit-"))
    stages = Stages(progress)
    try:
        model_file = staging.path / f"model{tgt.extension}"
        recipe, in_layouts, out_layouts = _build(spec, tgt, calib, channels_last, model_file, work, stages)
        backend = open_backend(model_file)
        inputs, outputs = _io_entries(spec, backend, in_layouts, out_layouts)
        manifest = {
            "schema": 1, "edgekit_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "file": model_file.name, "format": tgt.format, "precision": tgt.precision, "target": tgt.to_dict(),
            "model": {"source": spec.source, "name": spec.name, "num_params": spec.num_params, "param_bytes_fp32": spec.param_bytes_fp32},
            "inputs": inputs, "outputs": outputs, "recipe": recipe,
            "calibration": ({**calib.summary(), "method": tgt.quant.calib_method} if calib is not None and tgt.quant.needs_calibration else None),
            "size_bytes": model_file.stat().st_size, "sha256": sha256(model_file),
            "size_ratio_to_fp32_params": round(model_file.stat().st_size / max(1, spec.param_bytes_fp32), 4),
            "tool_versions": tool_versions(),
        }
        _write_manifest(staging.path, manifest)
        with stages.stage("validate"):
            from edgekit.runtime import Model

            outs = Model(staging.path).run_batch(*(val.arrays[n] for n in spec.input_names))
            figures = compare(spec.outputs_for(val), outs, val.labels)
            status, reasons = verdict(figures, tgt.validation)
        manifest["validation"] = {"status": status, "reasons": reasons, "inputs": val.source, "synthetic_inputs": val.synthetic, **figures}
        manifest["stages"] = stages.timings
        manifest["convert_seconds"] = round(time.perf_counter() - t_start, 3)
        manifest["warnings"] = list(warnings)
        _write_manifest(staging.path, manifest)
        (staging.path / "convert.log").write_text(stages.log.getvalue())
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Artifact(dest, manifest)


def _write_manifest(folder: Path, manifest: dict) -> None:
    import json

    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def _build(spec: ModelSpec, tgt: Target, calib: CalibrationData | None, channels_last: bool,
           model_file: Path, work: Path, stages: Stages) -> tuple[dict, list, list]:
    """Run the format's stages; returns (recipe, input layouts, output layouts)."""
    q = tgt.quant
    if tgt.format == "onnx":
        from edgekit.export import onnx as onnx_export
        from edgekit.quantize import onnx as onnx_quant

        raw, simple = work / "exported.onnx", work / "float.onnx"
        with stages.stage("export"):
            recipe = {"export": onnx_export.export(spec, raw)}
        with stages.stage("simplify"):
            recipe["simplify"] = onnx_export.simplify(raw, simple)
        if q.mode == "none":
            shutil.copyfile(simple, model_file)
        else:
            samples = list(calib.samples(spec.input_shapes[0][0])) if q.needs_calibration else None
            with stages.stage("quantize"):
                recipe["quantize"] = onnx_quant.quantize(simple, model_file, q, samples, work)
        return (recipe, *spec.io_layouts())

    from edgekit.export import tflite as tfl_export
    from edgekit.quantize import tflite as tfl_quant

    module, args, in_layouts, out_layouts = tfl_export.prepare(spec, channels_last)

    def batches():
        for s in calib.samples(spec.input_shapes[0][0]):
            yield tuple(torch.from_numpy(s[n].transpose(0, 2, 3, 1).copy() if lay == "NHWC" else s[n])
                        for n, lay in zip(spec.input_names, in_layouts))

    if q.backend == "pt2e":
        with stages.stage("calibrate+export"):
            recipe = {"quantize": tfl_quant.pt2e_convert(module, args, batches(), q, model_file)}
        return recipe, in_layouts, out_layouts
    float_file = work / "float.tflite" if q.mode != "none" else model_file
    with stages.stage("export"):
        recipe = {"export": tfl_export.convert(module, args, float_file)}
    if q.mode != "none":
        runtime_names = [t.name for t in open_backend(float_file).inputs]
        samples = [dict(zip(spec.input_names, (t.numpy() for t in b))) for b in batches()] if q.needs_calibration else None
        with stages.stage("calibrate+quantize" if q.needs_calibration else "quantize"):
            recipe["quantize"] = tfl_quant.quantize_aeq(float_file, model_file, q, samples, runtime_names)
        tfl_quant.write_recipe(recipe["quantize"]["recipe"], model_file.with_name("recipe.json"))
    return recipe, in_layouts, out_layouts


def convert_many(model: str | nn.Module | ModelSpec | None, targets: Sequence[str | Target], *,
                 calibration=None, out_dir: str | Path | None = None, out_root: str | Path = "out",
                 calib_samples: int = 200, val_samples: int = 200, calib_method: str | None = None,
                 calib_spec: str | None = None, channels_last: bool = False,
                 input_shapes=None, weights=None, trust_pickle: bool = False, validation=None,
                 progress=None, lint_report=None) -> list[ConvertResult]:
    """Several targets over one loaded model and one checked dataset.

    Bad input (model, target names, calibration data, output folders) raises before any conversion;
    after that each target becomes a ConvertResult, a failing one included, and the others go on.
    `progress(target, stage, event, seconds)` is called around every stage; `lint_report({target:
    [finding, ...]})` once, before any conversion, with the pre-conversion lint's findings.
    """
    spec = model if isinstance(model, ModelSpec) else load_model(model, input_shapes, weights, trust_pickle)
    if out_dir and len(targets) > 1:
        raise EdgekitError("out_dir names one artifact folder but several targets were given", "use out_root (--out-dir) for several targets")
    tgts = [_with_calib_method(load_target(t), calib_method) for t in targets]
    dests = [Path(out_dir) if out_dir else default_dest(spec, t, out_root) for t in tgts]
    for d in dests:
        Staging.check(d)
    shared: list[str] = []
    calib_only: list[str] = []
    calib, val = _resolve_data(spec, tgts, calibration, calib_spec, calib_samples, val_samples, shared, calib_only, validation)
    from edgekit.lint import lint

    findings = {t.name: [str(f) for f in lint(spec, t)] for t in tgts}
    if lint_report:
        lint_report({k: v for k, v in findings.items() if v})
    results = []
    for tgt, dest in zip(tgts, dests):
        res = ConvertResult(tgt.name, warnings=shared + (calib_only if tgt.quant.needs_calibration else []) + findings[tgt.name])
        cb = (lambda s, e, sec, _n=tgt.name: progress(_n, s, e, sec)) if progress else None
        try:
            res.artifact = _convert_one(spec, tgt, calib, val, dest, channels_last, cb, res.warnings)
        except EdgekitError as exc:
            res.error = exc
        results.append(res)
    return results


__all__ = ["convert", "convert_many", "ConvertResult", "DEFAULT_TARGET"]
