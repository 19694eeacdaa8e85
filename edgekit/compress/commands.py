"""`edgekit qat | prune | distill | lowrank`: thin click commands over edgekit.compress.

Imported by edgekit.cli at start-up, so nothing here imports torch until a command runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from edgekit.errors import UsageError


def _data_options(f):
    """The options every compression command shares: data, training, output."""
    options = [
        click.option("--data", required=True, metavar="SRC",
                     help="Training data: .npz (inputs; optional y labels and arrays named after outputs), .npy, image folders "
                          "(class-named: labels), digits, fashion-mnist. Outputs without labels learn the uncompressed model's (or teacher's) outputs."),
        click.option("--val", metavar="SRC", help="Validation data, same forms. [default: 10% held out from --data]"),
        click.option("--data-spec", metavar="NAME", help="Preprocessing spec for image folders (calibration/*.toml name or path)."),
        click.option("--labels-key", metavar="KEY", help="Labels array in the .npz. [default: y, labels, label or targets]"),
        click.option("--samples", type=click.IntRange(1), help="Train on at most N samples (a seeded random subset)."),
        click.option("--batch-size", type=click.IntRange(2), default=64, show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), help="Learning rate. [default: the method's]"),
        click.option("--seed", type=int, default=0, show_default=True, help="Seeds initial weights, shuffling and the hold-out."),
        click.option("--input-shape", "input_shapes", multiple=True, metavar="SHAPE", help="e.g. 1,1,28,28 (if the model does not say)."),
        click.option("--output", "output_kinds", multiple=True, metavar="NAME=KIND",
                     help="What an output is (class, class:probs, embedding, regression, probability[:T], state, tensor): picks its loss and figure."),
        click.option("--output-weight", "output_weights", multiple=True, metavar="NAME=W", help="Weight of an output's loss. [default: 1 each]"),
        click.option("--out", required=True, type=click.Path(), help="The compressed model, a torch.export .pt2 for `edgekit convert`."),
        click.option("--json", "json_path", type=click.Path(), help="Write the report here."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _common(data_spec, labels_key, samples, batch_size, lr, seed, input_shapes, output_kinds, output_weights, epochs, default_train):
    from edgekit.compress.data import DataConfig
    from edgekit.compress.result import OutputConfig
    from edgekit.sources import parse_shape

    train = dataclasses.replace(default_train, epochs=epochs, batch_size=batch_size, seed=seed, lr=lr or default_train.lr)
    data_cfg = DataConfig(data_spec=data_spec, labels_key=labels_key, max_samples=samples)
    return {"train": train, "data_cfg": data_cfg, "input_shapes": [parse_shape(s) for s in input_shapes] or None,
            "outputs": OutputConfig(tuple(output_kinds), tuple(output_weights))}


def _finish(command: str, result, out: str, json_path: str | None, next_step: str) -> None:
    """Save, print the report, write the JSON."""
    from edgekit.artifact import write_json_atomic
    from edgekit.cli import ERR, OUT, _kib, row, say, table
    from edgekit.compress.objective import show

    path = result.save(out)
    r = result.report
    # User text (the model's source, layer names, paths) goes through the CLI's plain-text table and line printers.
    t = table(f"edgekit {command}: {r['source']}", ["", ("before", {"justify": "right"}), ("after", {"justify": "right"})])
    row(t, "parameters", f"{r['params_before']:,}", f"{r['params_after']:,} ({r['param_ratio']:.1%})")
    n = r["val"]["samples"]
    for name, o in r["outputs"].items():  # each output's figure on the held-out samples: against labels/targets, or the reference
        before = show(o["figure"], o["before"]) if o["before"] is not None else "(reference)"
        row(t, f"{name} [{o['kind']}] {o['figure'].replace('_', ' ')} vs {o['learns']}, {n} held out", before, show(o["figure"], o["after"]))
    for key, value in r.items():
        if key in ("source", "params_before", "params_after", "param_ratio", "val_accuracy_before", "val_accuracy_after",
                   "history", "notes", "val", "outputs") or value is None or value in ({}, []):
            continue
        if isinstance(value, dict):
            shown = ", ".join(f"{k}: {v}" for k, v in value.items())
        else:
            shown = str(value)
        row(t, key.replace("_", " "), "", shown)
    OUT.print(t)
    for note in r["notes"]:
        say(ERR, ("note", "cyan"), f" {note}")
    say(ERR, ("✓", "green"), f" wrote {path} ({_kib(path.stat().st_size)}); next: {next_step.replace('{out}', str(path))}")
    if json_path:
        write_json_atomic(Path(json_path), {"command": command, "out": str(path), **result.to_json()})


def _err_console():
    from edgekit.cli import ERR

    return ERR


@click.command("qat")
@click.argument("model")
@click.option("--weights", type=click.Path(), help="State dict to load into the model built by a factory.")
@click.option("--target", default="tflite-int8", show_default=True, help="The static int8 TFLite target whose scheme is trained for.")
@click.option("--epochs", type=click.IntRange(0), default=3, show_default=True, help="Fake-quantized fine-tuning epochs.")
@_data_options
def qat_cmd(model, weights, target, epochs, data, val, data_spec, labels_key, samples, batch_size, lr, seed, input_shapes, output_kinds, output_weights, out, json_path):
    """Quantization-aware training of MODEL (PT2E fake-quant); the .pt2 converts to a real int8 TFLite model."""
    from edgekit.compress.quantization import QAT_TRAIN, QATConfig, qat

    res = qat(model, data, val=val, config=QATConfig(target=target), weights=weights, out=out, progress=_err_console(),
              **_common(data_spec, labels_key, samples, batch_size, lr, seed, input_shapes, output_kinds, output_weights, epochs, QAT_TRAIN))
    _finish("qat", res, out, json_path, "edgekit convert {out} --target " + target)  # no format(): a target may hold braces


@click.command("prune")
@click.argument("model")
@click.option("--weights", type=click.Path(), help="State dict to load into the model built by a factory.")
@click.option("--structured", type=click.FloatRange(0, 1, min_open=True, max_open=True), metavar="FRACTION",
              help="Remove this fraction of each layer's channels (smaller tensors).")
@click.option("--unstructured", type=click.FloatRange(0, 1, min_open=True, max_open=True), metavar="FRACTION",
              help="Zero this fraction of the weights (smallest magnitudes).")
@click.option("--semi-structured", is_flag=True, help="2:4 sparsity: two of every four consecutive weights zeroed.")
@click.option("--per-layer", is_flag=True, help="--unstructured: the same fraction in every layer. [default: one global threshold]")
@click.option("--finetune-epochs", type=click.IntRange(0), default=2, show_default=True)
@_data_options
def prune_cmd(model, weights, structured, unstructured, semi_structured, per_layer, finetune_epochs, data, val, data_spec, labels_key,
              samples, batch_size, lr, seed, input_shapes, output_kinds, output_weights, out, json_path):
    """Magnitude-prune MODEL (structured channels, unstructured weights or 2:4) and fine-tune it."""
    from edgekit.compress.pruning import PRUNE_TRAIN, PruneConfig, prune

    chosen = [(m, a) for m, a in (("structured", structured), ("unstructured", unstructured), ("2:4", 0.5 if semi_structured else None))
              if a is not None]
    if len(chosen) != 1:
        raise UsageError("give one of --structured FRACTION, --unstructured FRACTION or --semi-structured", "e.g. --structured 0.5")
    (mode, amount), = chosen
    cfg = PruneConfig(mode=mode, amount=amount, scope="layer" if per_layer else "global")
    res = prune(model, data, val=val, config=cfg, weights=weights, out=out, progress=_err_console(),
                **_common(data_spec, labels_key, samples, batch_size, lr, seed, input_shapes, output_kinds, output_weights, finetune_epochs, PRUNE_TRAIN))
    _finish("prune", res, out, json_path, "edgekit convert {out} --target tflite-int8")


def _pair(text: str) -> tuple[str, str]:
    student, sep, teacher = text.partition(":")
    if not sep or not student or not teacher:
        raise UsageError(f"bad --feature {text!r}", "write STUDENT_LAYER:TEACHER_LAYER, e.g. features.3:features.6")
    return student, teacher


@click.command("distill")
@click.option("--teacher", required=True, metavar="MODEL",
              help="The trained teacher: file.py:factory, pkg.module:attr, .pt, .pt2; or a black box only run: an artifact folder, .tflite or .onnx.")
@click.option("--teacher-weights", type=click.Path(), help="State dict for the teacher's factory.")
@click.option("--student", metavar="MODEL", help="The student to train (file.py:factory, ...).")
@click.option("--student-weights", type=click.Path(), help="State dict to start the student from.")
@click.option("--width", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="No --student: the teacher with this fraction of its channels.")
@click.option("--layers", type=click.IntRange(1), help="No --student: the teacher (a transformer) keeping this many of its blocks.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True, help="Softens both models' class scores.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="Weight of the teacher where there are labels too (1 - alpha: the labels).")
@click.option("--feature", "features", multiple=True, metavar="S:T", help="Also match student layer S to teacher layer T (repeatable).")
@click.option("--feature-weight", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--attention-weight", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Also match attention maps block to block (transformers; MiniLM-style KL).")
@click.option("--augment", metavar="KINDS", default="", help="New inputs each epoch for the teacher to label: noise, mixup, crop (comma-separated).")
@click.option("--epochs", type=click.IntRange(0), default=3, show_default=True)
@_data_options
def distill_cmd(teacher, teacher_weights, student, student_weights, width, layers, temperature, alpha, features, feature_weight,
                attention_weight, augment, epochs, data, val, data_spec, labels_key, samples, batch_size, lr, seed, input_shapes,
                output_kinds, output_weights, out, json_path):
    """Distil a frozen teacher into a smaller student (given, or the teacher at --width / with --layers), on labelled or unlabelled data."""
    from edgekit.compress.distillation import DISTILL_TRAIN, DistillConfig, distill

    cfg = DistillConfig(temperature=temperature, alpha=alpha, width=width, layers=layers, features=tuple(_pair(f) for f in features),
                        feature_weight=feature_weight, attention_weight=attention_weight,
                        augment=tuple(a.strip() for a in augment.split(",") if a.strip()))
    res = distill(teacher, data, student=student, val=val, config=cfg, teacher_weights=teacher_weights, student_weights=student_weights,
                  out=out, progress=_err_console(),
                  **_common(data_spec, labels_key, samples, batch_size, lr, seed, input_shapes, output_kinds, output_weights, epochs, DISTILL_TRAIN))
    _finish("distill", res, out, json_path, "edgekit convert {out} --target tflite-int8")


@click.command("lowrank")
@click.argument("model")
@click.option("--weights", type=click.Path(), help="State dict to load into the model built by a factory.")
@click.option("--energy", type=click.FloatRange(0, 1, min_open=True), help="Keep this share of each layer's singular-value energy. [default: 0.95]")
@click.option("--target-params", type=click.IntRange(1), help="Instead: fit the model into this many parameters.")
@click.option("--finetune-epochs", type=click.IntRange(0), default=1, show_default=True)
@_data_options
def lowrank_cmd(model, weights, energy, target_params, finetune_epochs, data, val, data_spec, labels_key, samples, batch_size, lr, seed,
                input_shapes, output_kinds, output_weights, out, json_path):
    """Factor MODEL's Linear/Conv2d layers by SVD into thinner pairs, then fine-tune."""
    from edgekit.compress.factorization import LOWRANK_TRAIN, LowRankConfig, lowrank

    if energy is not None and target_params is not None:
        raise UsageError("give --energy or --target-params, not both", "e.g. --energy 0.95")
    cfg = LowRankConfig(energy=None if target_params else (energy or 0.95), target_params=target_params)
    res = lowrank(model, data, val=val, config=cfg, weights=weights, out=out, progress=_err_console(),
                  **_common(data_spec, labels_key, samples, batch_size, lr, seed, input_shapes, output_kinds, output_weights, finetune_epochs, LOWRANK_TRAIN))
    _finish("lowrank", res, out, json_path, "edgekit convert {out} --target tflite-int8")


COMMANDS = [qat_cmd, prune_cmd, distill_cmd, lowrank_cmd]
