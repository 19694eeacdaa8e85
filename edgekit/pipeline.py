"""edgekit.convert: model source + target -> validated artifact folder.

Stages: export -> simplify (ONNX) -> calibrate -> quantize -> validate, each timed and reported.
`convert_many` runs several targets over one loaded model; a failing target becomes a failed
row and the others go on.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from edgekit import __version__
from edgekit._util import ProgressFn, Stages, check_terminated, tool_versions, work_dir
from edgekit.artifact import Artifact, Staging, sha256
from edgekit.build import as_model_dtypes, build, calib_samples, check_route, export_float, match_names, quantize_float  # noqa: F401 (as_model_dtypes: old import path)
from edgekit.calibration import CalibrationData, load_calibration, split_holdout
from edgekit.errors import CalibrationError, ConversionError, EdgekitError, UsageError
from edgekit.runtime import open_backend
from edgekit.runtime.manifest import Manifest, Quantization, TensorSpec, Validation, safe_name, write_manifest
from edgekit.inputs import InputOptions
from edgekit.sources import ModelSpec, is_loaded, is_torchscript_module, load_model
from edgekit.targets import Target, load_target
from edgekit.ondevice import class_index, combined, host_measurement, top1, validate_on_devices
from edgekit.validate import LABELS_UNUSED, OutputKind, closed_loop, compare, declared_kinds, infer_kinds, verdict

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


def _io_entries(spec: ModelSpec, backend, in_layouts, out_layouts) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The manifest's inputs and outputs, in the source model's order, each paired with the interpreter's
    tensor of the same name (or position)."""
    ref = spec.reference_outputs()
    src_in, src_out = spec.io_layouts()
    if len(backend.inputs) != len(spec.input_names) or len(backend.outputs) != len(ref):
        raise ConversionError(f"the artifact has {len(backend.inputs)} inputs / {len(backend.outputs)} outputs, the model "
                              f"{len(spec.input_names)} / {len(ref)}", "the converter dropped or merged tensors; run with --debug")
    names = spec.output_names
    b_in = [backend.inputs[k] for k in match_names(spec.input_names, backend.inputs)]
    b_out = [backend.outputs[k] for k in match_names(names, backend.outputs)]
    def tensor(name, t, layout, source_layout, source_shape, batched=True, value_range=None) -> TensorSpec:
        q = Quantization(t.scale, t.zero_point) if t.scale is not None else None
        return TensorSpec(name, tuple(t.shape), t.dtype, t.name, layout, source_layout, tuple(int(d) for d in source_shape), q,
                          batched, value_range)

    inputs = [tensor(s.name, t, in_layouts[i], src_in[i], s.shape, s.batched, s.value_range)
              for i, (s, t) in enumerate(zip(spec.inputs, b_in))]
    outputs = [tensor(name, t, out_layouts[i], src_out[i], ref[i].shape, ref[i].ndim > 0 and ref[i].shape[0] == spec.batch)
               for i, (name, t) in enumerate(zip(names, b_out))]
    return inputs, outputs


@dataclass
class ValidationSet:
    """The held-out samples every target is validated on, and where they came from."""

    data: CalibrationData
    origin: str  # val-data | test-split | calib-split | calib-reused | random
    reference: list | None = None  # the source model's outputs on `data`, computed once for every target

    @property
    def held_out(self) -> bool:
        """Independent of the calibration data (not a split of the same source)."""
        return self.origin in ("val-data", "test-split")

    def describe(self) -> str:
        return {"val-data": "--val-data", "test-split": "the dataset's test split",
                "calib-split": "a random split of the calibration source", "calib-reused": "the calibration samples themselves",
                "random": "random inputs"}[self.origin]


def _resolve_data(spec: ModelSpec, targets: Sequence[Target], calibration, calib_spec, calib_samples, val_samples,
                  warnings: list[str], calib_warnings: list[str], validation=None) -> tuple[CalibrationData | None, ValidationSet]:
    """(calibration samples, held-out validation samples), read and checked once for every target.

    Warnings for every target go to `warnings`; those only calibrating targets need, to `calib_warnings`.
    `val_samples` None: every sample of --val-data, or a random quarter of the calibration source."""
    def first(data: CalibrationData, n: int | None) -> CalibrationData:
        return data if n is None else data.take(slice(0, n))

    if validation is not None:  # the user's own validation set: calibration keeps all of --calib
        val = load_calibration(validation, spec.input_names, spec.input_shapes, spec_name=calib_spec, inputs=spec.inputs)
        calib = None
        if calibration is not None or spec.default_calibration:
            calib = load_calibration(calibration if calibration is not None else spec.default_calibration,
                                     spec.input_names, spec.input_shapes, spec_name=calib_spec, inputs=spec.inputs)
            calib = calib.take(slice(0, calib_samples))
            if calib.synthetic and any(t.quant.needs_calibration for t in targets):
                calib_warnings.append("calibrating on random data (--calib random): int8 ranges will not match real inputs; expect accuracy loss")
        elif any(t.quant.needs_calibration for t in targets):
            raise CalibrationError("static int8 targets need calibration data besides --val-data", "pass --calib too")
        return calib, ValidationSet(first(val, val_samples), "val-data")
    needing = [t.name for t in targets if t.quant.needs_calibration]
    source = calibration if calibration is not None else spec.default_calibration
    if source is None:
        if needing:
            raise CalibrationError(f"{', '.join(needing)} need{'s' if len(needing) == 1 else ''} calibration data",
                                   "pass --calib data.npy (or a folder, .npz, digits); --calib random calibrates on noise and is not recommended")
        data = load_calibration("random", spec.input_names, spec.input_shapes, random_samples=min(val_samples or 64, 64), inputs=spec.inputs)
        warnings.append("validated on random inputs (no --calib given): pass real data for figures you can trust")
        return None, ValidationSet(data, "random")
    data = load_calibration(source, spec.input_names, spec.input_shapes, spec_name=calib_spec, inputs=spec.inputs)
    if data.synthetic and needing:
        calib_warnings.append("calibrating on random data (--calib random): int8 ranges will not match real inputs; expect accuracy loss")
    warnings.extend(data.notes)
    if isinstance(source, str) and data.source.endswith(":train"):
        # a named dataset has a real test split: calibrate on train, validate on test
        val = load_calibration(source, spec.input_names, spec.input_shapes, split="test", inputs=spec.inputs)
        return data.take(slice(0, calib_samples)), ValidationSet(first(val, val_samples), "test-split")
    calib, val = split_holdout(data, calib_samples, val_samples)
    if val is None:
        warnings.append(f"only {len(data)} samples: none left to hold out, validating on the calibration samples; pass --val-data")
        return calib, ValidationSet(calib, "calib-reused")
    warnings.append(f"validated on {len(val)} samples held out at random from {data.source} (the same source as the calibration, "
                    "so the verdict is capped at warn): pass --val-data with independent data")
    return calib, ValidationSet(val, "calib-split")


def _budget(spec: ModelSpec, tgts: Sequence[Target], val: CalibrationData, max_drop: float | None, data, labels_key,
            calib_spec, budget_s: float, warnings: list[str]):
    if max_drop is None:
        if data is not None:
            raise UsageError("budget data was given without a budget", "add --max-accuracy-drop POINTS")
        return None
    from edgekit.budget import AccuracyBudget

    bad = [t.name for t in tgts if t.quant.mode != "static" or t.quant.backend not in ("aeq", "ort")]
    if bad:
        raise UsageError(f"--max-accuracy-drop searches per-layer int16/float moves of static int8 targets; {', '.join(bad)} "
                         f"{'is' if len(bad) == 1 else 'are'} not one", "use tflite-int8, tflite-int16x8 or onnx-int8")
    if max_drop < 0:
        raise UsageError(f"--max-accuracy-drop must be at least 0 points, not {max_drop}", "e.g. --max-accuracy-drop 0.5")
    ds = val if data is None else load_calibration(data, spec.input_names, spec.input_shapes, split="test", spec_name=calib_spec,
                                                    labels_key=labels_key, inputs=spec.inputs)
    if ds.labels is None:
        warnings.append(f"{ds.source} has no labels: the accuracy budget is measured against the float model (top-1 agreement for a class output)")
    if len(ds) < 500:
        warnings.append(f"the accuracy budget is measured on {len(ds)} samples: one sample is {100 / len(ds):.2f} points; "
                        "pass --data with more labelled samples for a budget you can trust")
    return AccuracyBudget(float(max_drop), ds, budget_s)


def _with_calib_method(tgt: Target, method: str | None) -> Target:
    if not method or not tgt.quant.needs_calibration or method == tgt.quant.calib_method:
        return tgt
    from edgekit.targets import target_from_dict

    d = tgt.to_dict()
    return target_from_dict({**d, "quant": {**d["quant"], "calib_method": method}}, f"{tgt.source} (--calib-method {method})")


def default_dest(spec: ModelSpec, tgt: Target, root: str | Path = "out") -> Path:
    """out/<model>-<target>: both parts are plain names (targets are checked on load; the model's name
    comes from a file name and is reduced to safe characters), so the folder never lands outside `root`."""
    return Path(root) / f"{safe_name(spec.name)}-{tgt.name}"


def convert(model: str | nn.Module | ModelSpec | None = None, target: str | Target = DEFAULT_TARGET, *,
            calibration: str | Path | np.ndarray | CalibrationData | None = None, out_dir: str | Path | None = None,
            input_shapes: Sequence[Sequence[int]] | None = None, weights: str | Path | None = None,
            calib_samples: int = 200, val_samples: int | None = None, calib_method: str | None = None,
            calib_spec: str | None = None, channels_last: bool = False, trust_pickle: bool = False,
            validation: str | Path | np.ndarray | CalibrationData | None = None,
            progress: ProgressFn | None = None, warnings: list[str] | None = None,
            max_accuracy_drop: float | None = None, budget_data=None, labels_key: str | None = None,
            budget_s: float = 600.0, inputs: InputOptions | None = None, outputs: dict | None = None,
            validate_on: Sequence = ()) -> Artifact:
    """Convert a PyTorch model to one target and validate it; returns the written Artifact.

    Bad input raises before any conversion starts; a failed conversion raises and leaves nothing behind.
    `warnings`, when given, receives the run's warnings.
    """
    (res,) = convert_many(model, [target], calibration=calibration, out_dir=out_dir, input_shapes=input_shapes,
                          weights=weights, calib_samples=calib_samples, val_samples=val_samples, calib_method=calib_method,
                          calib_spec=calib_spec, channels_last=channels_last, trust_pickle=trust_pickle, validation=validation,
                          progress=(lambda _t, stage, event, sec: progress(stage, event, sec)) if progress else None,
                          max_accuracy_drop=max_accuracy_drop, budget_data=budget_data, labels_key=labels_key, budget_s=budget_s,
                          inputs=inputs, outputs=outputs, validate_on=validate_on)
    if warnings is not None:
        warnings.extend(res.warnings)
    if res.error is not None:
        raise res.error
    return res.artifact


def _convert_one(spec: ModelSpec, tgt: Target, calib: CalibrationData | None, vset: ValidationSet, kinds: list[OutputKind],
                 dest: Path, channels_last: bool, progress: ProgressFn | None, warnings: list[str], budget=None,
                 app: dict | None = None, validate_on: Sequence = ()) -> Artifact:
    t_start = time.perf_counter()
    if channels_last and tgt.format != "tflite":
        warnings.append("--channels-last applies to TFLite only: this ONNX artifact keeps the PyTorch layout")
    staging = work = None
    stages = Stages(progress)
    try:  # created inside the try: a signal between creating them and entering it would orphan them
        staging = Staging(dest)
        work = Path(work_dir("convert"))
        model_file = staging.path / f"model{tgt.extension}"
        budget_report = None
        if budget is not None:
            recipe, in_layouts, out_layouts, tgt, budget_report = _build_within(spec, tgt, calib, channels_last, model_file, work, stages,
                                                                                budget, *_budget_output(kinds))
        else:
            recipe, in_layouts, out_layouts = build(spec, tgt, calib, channels_last, model_file, work, stages)
        backend = open_backend(model_file)
        inputs, outputs = _io_entries(spec, backend, in_layouts, out_layouts)
        outputs = [dataclasses.replace(o, kind=k.kind) for o, k in zip(outputs, kinds)]
        manifest = Manifest(
            file=model_file.name, format=tgt.format, inputs=inputs, outputs=outputs, precision=tgt.precision,
            target=tgt.to_dict(), recipe=recipe, edgekit_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            model={"source": spec.source, "weights": spec.weights, "name": safe_name(spec.name), "num_params": spec.num_params,
                   "param_bytes_fp32": spec.param_bytes_fp32},
            calibration=({**calib.summary(), "method": tgt.quant.calib_method} if calib is not None and tgt.quant.needs_calibration else None),
            size_bytes=model_file.stat().st_size, sha256=sha256(model_file), tool_versions=tool_versions(),
            extra={"size_ratio_to_fp32_params": round(model_file.stat().st_size / max(1, spec.param_bytes_fp32), 4)},
            **(app or {}))
        write_manifest(staging.path, manifest)
        with stages.stage("validate"):
            from edgekit.runtime import Model

            model = Model(staging.path)
            outs = model.run_batch(*(vset.data.arrays[n] for n in spec.input_names))
            figures = compare(vset.reference, outs, vset.data.labels, kinds, spec.output_names)
            if any(k.kind == "state" for k in kinds):  # streaming: both run closed-loop, each fed its own state
                figures["closed_loop"] = closed_loop(spec.run_reference, lambda arrays: model(*arrays), vset.data,
                                                     spec.input_names, spec.output_names, kinds)
            figures["validation_data"] = {"origin": vset.origin, "described": vset.describe(), "samples": len(vset.data)}
            held_out = vset.held_out or vset.origin == "random"
            status, reasons = verdict(figures, tgt.validation, held_out=held_out)
            figures["measured_on"] = host_measurement(model.backend)
        if validate_on:  # the same held-out inputs on each device, scored here (no timing: a board may be emulated)
            cls = class_index(kinds)
            figures["measured_on"]["top1"] = top1(outs, cls)
            figures["devices"] = validate_on_devices(staging.path, manifest, vset, vset.reference, outs, kinds, spec.input_names,
                                                     spec.output_names, tgt.validation, held_out, validate_on,
                                                     (lambda m: progress(m, "note", 0.0)) if progress else None)
            figures["host_status"] = status
            status, reasons, found = combined(status, list(reasons), figures["devices"])
            warnings.extend(found)
        manifest.validation = Validation(status, tuple(reasons), str(vset.data.source), bool(vset.data.synthetic), figures)
        if budget_report is not None:
            manifest.extra["accuracy_budget"] = budget_report.to_json()
            if not budget_report.met:
                warnings.append(f"accuracy budget not met: {budget_report.metric} drop {budget_report.to_json()['drop_points']:.2f} points "
                                f"> {budget_report.max_drop_points} ({budget_report.reason}); kept the closest artifact")
        from edgekit import census

        # what the converter did to size and precision: ops left float, duplicated constants (issue 10)
        manifest.extra["census"], found = census.report(model_file, spec.param_bytes_fp32, tgt.precision)
        warnings.extend(found)
        manifest.extra["stages"] = stages.timings
        manifest.extra["convert_seconds"] = round(time.perf_counter() - t_start, 3)
        manifest.warnings = list(warnings)
        write_manifest(staging.path, manifest)
        (staging.path / "convert.log").write_text(stages.log.getvalue())
        staging.commit()
    except BaseException:
        if staging is not None:
            staging.abort()
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return Artifact(dest, manifest)


def _app_data(spec: ModelSpec, calib: CalibrationData | None, vset: ValidationSet, kinds: list[OutputKind], preprocess,
              labels, warnings: list[str]) -> dict:
    """The manifest's `preprocess` and `labels` (what an app needs besides the model), checked before any conversion."""
    from edgekit.calibration import image_preprocess, load_spec

    out: dict = {}
    val = vset.data
    pre = image_preprocess(load_spec(preprocess)).to_dict() if preprocess else (calib.preprocess if calib is not None else None) or val.preprocess
    if pre is not None:
        first = spec.inputs[0]
        chw = tuple(first.shape[1:])
        made = None
        if pre["crop"]:
            c = 1 if pre["color"] == "L" else 3
            made = (c, *pre["crop"]) if pre["layout"] == "NCHW" else (*pre["crop"], c)
        if made is not None and made != chw:
            if preprocess:
                raise UsageError(f"--preprocess {preprocess} makes {made} tensors, input {first.name!r} takes {chw}",
                                 "give the spec the model was trained with")
        else:
            out["preprocess"] = {**pre, "input": first.name}
    names = None
    if labels is not None:
        if isinstance(labels, (str, Path)):
            try:
                names = [ln.strip() for ln in Path(labels).read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read --labels {labels}: {getattr(exc, 'strerror', None) or exc}", "give a text file, one label per line") from None
            while names and not names[-1]:
                names.pop()
        else:
            names = [str(x) for x in labels]
    classes = next((k for k in kinds if k.kind == "class"), None)
    width = None
    if classes is not None:
        width = int(np.asarray(vset.reference[kinds.index(classes)]).shape[-1])
    if names is not None:
        if classes is None:
            raise UsageError("--labels names classes, but no output is a class output", "declare one with --output NAME=class")
        if width is not None and len(names) != width:
            raise UsageError(f"--labels {labels} has {len(names)} labels, the class output has {width} scores", "one label per line, in index order")
        out["labels"] = names
    elif classes is not None:
        found = (calib.classes if calib is not None else None) or val.classes
        if found and (width is None or len(found) == width):
            out["labels"] = list(found)
        elif found:
            warnings.append(f"the data's {len(found)} class folders do not match the class output's {width} scores: labels not kept")
    return out


def _budget_output(kinds: list[OutputKind]) -> tuple[int, str]:
    """The output the accuracy budget is measured on, and its kind: the class output (declared or inferred), else
    the embedding, else the only output (measured by its relative error; see edgekit.budget)."""
    for kind in ("class", "embedding"):
        found = [i for i, k in enumerate(kinds) if k.kind == kind]
        if len(found) == 1:
            return found[0], kind
        if found:
            raise UsageError(f"--max-accuracy-drop is measured on one output; the model has {len(found)} {kind} outputs",
                             f"declare one of them: --output NAME={kind} and the others --output NAME=tensors")
    if len(kinds) != 1:
        raise UsageError(f"--max-accuracy-drop is measured on one output; the model has {len(kinds)} and none is a class or embedding output",
                         "declare the one to budget: --output NAME=class|embedding")
    return 0, "tensors"


def _build_within(spec: ModelSpec, tgt: Target, calib: CalibrationData, channels_last: bool, model_file: Path,
                  work: Path, stages: Stages, budget, out_index: int = 0, kind: str = "class") -> tuple:
    """_build under an accuracy budget (see edgekit.budget); also returns the target with its layer moves and the report."""
    from edgekit import budget as budget_search
    from edgekit.runtime import Model

    fm = export_float(spec, tgt, channels_last, work, stages, calib)
    data = budget.data
    with stages.stage("reference outputs"):
        ref = spec.outputs_for(data)[out_index]

    infos: list[dict] = []

    def quantize(t: Target) -> np.ndarray:
        infos.append(quantize_float(fm, spec, t, calib, model_file, work, stages))
        inputs, outputs = _io_entries(spec, open_backend(model_file), fm.in_layouts, fm.out_layouts)
        write_manifest(model_file.parent, Manifest(model_file.name, t.format, inputs, outputs))
        with stages.stage("measure"):
            return Model(model_file.parent).run_batch(*(data.arrays[n] for n in spec.input_names))[out_index]

    diag = calib_samples(spec, fm, calib.take(slice(0, budget_search.DIAGNOSE_SAMPLES)))
    feed = [a[:1] for a in (data.arrays[n] for n in spec.input_names)]

    def latency(folders: list[Path]) -> list[float]:
        return budget_search.timed_in_turn([Model(f).run_batch for f in folders], feed)

    final, report = budget_search.search(tgt, budget, ref, tgt.format, fm.path, quantize, model_file, diag, work, stages,
                                         kind=kind, latency=latency)
    return ({**fm.recipe, "quantize": infos[report.chosen]}, fm.in_layouts, fm.out_layouts, final, report)


def _validation_devices(validate_on: Sequence) -> list:
    """The devices of --validate-on, resolved before any conversion: a mistyped name or a runner that cannot return
    outputs (benchmark_model) is one line now, not after the conversions."""
    from edgekit.devices.profiles import resolve
    from edgekit.measure import refuse_tensorless_runner

    profiles = [resolve(d) for d in validate_on]
    for p in profiles:
        refuse_tensorless_runner(p, "--validate-on")
    return profiles


def convert_many(model: str | nn.Module | ModelSpec | None, targets: Sequence[str | Target], *,
                 calibration=None, out_dir: str | Path | None = None, out_root: str | Path = "out",
                 calib_samples: int = 200, val_samples: int | None = None, calib_method: str | None = None,
                 calib_spec: str | None = None, channels_last: bool = False,
                 input_shapes=None, weights=None, trust_pickle: bool = False, validation=None,
                 progress=None, lint_report=None, max_accuracy_drop: float | None = None, budget_data=None,
                 labels_key: str | None = None, budget_s: float = 600.0, inputs: InputOptions | None = None,
                 outputs: dict[str, OutputKind] | None = None, preprocess: str | None = None,
                 labels: str | Path | Sequence[str] | None = None, validate_on: Sequence = ()) -> list[ConvertResult]:
    """Several targets over one loaded model and one checked dataset.

    Bad input (model, target names, calibration data, output folders) raises before any conversion;
    after that each target becomes a ConvertResult, a failing one included, and the others go on.
    With `max_accuracy_drop` (points), static int8 targets search for per-layer int16/float moves until the
    accuracy on `budget_data` (labelled; default: the validation samples) is within budget (see edgekit.budget).
    `outputs` declares what outputs mean ({name: OutputKind}, see edgekit.validate; --output / --state): the
    verdict judges each output by its kind, and state outputs make validation run closed-loop.
    `preprocess` (a calibration spec name or .toml) and `labels` (a file, one label per line, or a list) go into the
    manifest for apps (runtime Model.preprocess / classify); by default an image-folder calibration's spec and class
    folder names are kept.
    `validate_on` (device profiles, names or ssh:// / adb:// addresses) runs the held-out inputs on each device too
    (edgekit.ondevice): the manifest records each device's verdict beside the host's, and keeps the worse.
    `progress(target, stage, event, seconds)` is called around every stage; `lint_report({target:
    [finding, ...]})` once, before any conversion, with the pre-conversion lint's findings.
    """
    spec = model if is_loaded(model) else load_model(model, input_shapes, weights, trust_pickle, inputs)
    if is_torchscript_module(spec):  # torch.export cannot trace TorchScript: it converts through its ONNX export
        from edgekit.onnx_source import from_torchscript

        spec = from_torchscript(spec)
    if out_dir and len(targets) > 1:
        raise EdgekitError("out_dir names one artifact folder but several targets were given", "use out_root (--out-dir) for several targets")
    tgts = [_with_calib_method(load_target(t), calib_method) for t in targets]
    for t in tgts:
        check_route(spec, t)
    dests = [Path(out_dir) if out_dir else default_dest(spec, t, out_root) for t in tgts]
    for d in dests:
        Staging.check(d)
    devices = _validation_devices(validate_on)
    shared: list[str] = []
    calib_only: list[str] = []
    calib, vset = _resolve_data(spec, tgts, calibration, calib_spec, calib_samples, val_samples, shared, calib_only, validation)
    vset.reference = spec.outputs_for(vset.data)
    budget = _budget(spec, tgts, vset.data, max_accuracy_drop, budget_data, labels_key, calib_spec, budget_s, shared)
    declared = {**declared_kinds(spec_attr=getattr(spec, "output_spec", None)), **(outputs or {})}
    truth = vset.data.labels if vset.data.labels is not None else (budget.data.labels if budget is not None else None)
    kinds = infer_kinds(spec.output_names, vset.reference, truth, declared)
    for k in kinds:
        if k.kind == "state" and k.feeds not in spec.input_names:
            raise UsageError(f"--state feeds input {k.feeds!r}, which the model does not have", f"its inputs: {', '.join(spec.input_names)}")
    if vset.data.labels is not None and not any(k.kind == "class" for k in kinds):
        shared.append(LABELS_UNUSED)
    if budget is not None:
        _budget_output(kinds)  # before any conversion: the budget needs one output to measure
    app = _app_data(spec, calib, vset, kinds, preprocess, labels, shared)
    from edgekit.lint import lint

    findings = {t.name: [str(f) for f in lint(spec, t)] for t in tgts}
    if lint_report:
        lint_report({k: v for k, v in findings.items() if v})
    results = []
    for tgt, dest in zip(tgts, dests):
        res = ConvertResult(tgt.name, warnings=shared + (calib_only if tgt.quant.needs_calibration else []) + findings[tgt.name])
        cb = (lambda s, e, sec, _n=tgt.name: progress(_n, s, e, sec)) if progress else None
        try:
            res.artifact = _convert_one(spec, tgt, calib, vset, kinds, dest, channels_last, cb, res.warnings, budget, app, devices)
        except EdgekitError as exc:
            check_terminated()  # a signal a library turned into an ordinary error still ends the run
            res.error = exc
        results.append(res)
    return results


__all__ = ["convert", "convert_many", "ConvertResult", "DEFAULT_TARGET"]
