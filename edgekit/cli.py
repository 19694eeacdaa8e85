"""The command line: a thin layer of click over the Python API (edgekit.convert & co).

Every command takes --json PATH; every user error is one line on stderr and a non-zero exit
(--debug shows the traceback).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekit.errors import EdgekitError, UsageError, ValidationFailed


def _consoles() -> tuple[Console, Console]:
    # Progress goes to a duplicate of stderr so it keeps working while the converters'
    # own output (fd 1 and 2) is captured into the artifact's convert.log.
    try:
        err = os.fdopen(os.dup(2), "w", buffering=1)
    except OSError:
        err = sys.stderr
    # markup and emoji codes off: a str printed by mistake instead of through text()/say() still prints as written.
    plain = {"markup": False, "emoji": False}
    out = Console(**plain) if sys.stdout.isatty() else Console(width=160, **plain)
    return out, Console(file=err, stderr=True, width=None if err.isatty() else 200, **plain)


OUT, ERR = _consoles()


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1048576:,.1f} MiB"


# ------------------------------------------------------------------ text: what reaches the terminal
# Everything printed goes through text()/line()/say()/table()/row(): strings become rich Text, which is never
# parsed for markup ("[b]", "[/x]") or emoji codes, so a path, a target or a layer name prints as given.
# Style is only ever attached to a piece by the code here, as a (text, style) pair.

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _visible(s: str, one_line: bool = False) -> str:
    """Control characters (a terminal's escape sequences) shown as \\xNN rather than sent to the terminal."""
    return (_CONTROL_OR_NEWLINE if one_line else _CONTROL).sub(lambda m: "\\n" if m.group() == "\n" else f"\\x{ord(m.group()):02x}", s)


def text(value, style: str = "", one_line: bool = False) -> Text:
    """`value` as plain text (a Text is kept as it is)."""
    return value if isinstance(value, Text) else Text(_visible(str(value), one_line), style=style)


def line(*parts, one_line: bool = False) -> Text:
    """One Text from pieces: plain strings and (string, style) pairs; none is parsed as markup."""
    out = Text()
    for p in parts:
        out.append(p if isinstance(p, Text) else text(*((p, "") if isinstance(p, str) else p), one_line=one_line))
    return out


def say(console: Console, *parts) -> None:
    """Print one line (errors, warnings, notes): newlines in the pieces are shown as \\n, long lines are not wrapped."""
    console.print(line(*parts, one_line=True), soft_wrap=True, highlight=False)


def table(title, columns) -> Table:
    """A table with a plain-text title; columns are names or (name, add_column keywords)."""
    t = Table(title=text(title, "table.title"), title_justify="left")
    for col in columns:
        name, kw = (col, {}) if isinstance(col, str) else col
        t.add_column(text(name), **kw)
    return t


def row(t: Table, *cells) -> None:
    """Add a row of plain-text cells (a styled cell is a Text, e.g. text("ok", "green"))."""
    t.add_row(*(text(c) for c in cells))


# ------------------------------------------------------------------ output paths: checked before any work


def check_output(path: str, option: str) -> None:
    """Refuse an output file that cannot be written (a folder, a device, a folder that is a file, no write
    permission, a read-only file system), before the command does any work; the message shows `path` as given."""
    hint = f"give {option} a file path in a folder you can write"
    p = Path(path)
    try:
        if p.is_dir() or path.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
            raise UsageError(f"{option} {path}: is a folder, not a file", hint)
        if p.exists() and not p.is_file():
            raise UsageError(f"{option} {path}: is not a regular file", hint)
        folder = Path(os.path.abspath(path)).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # missing folders are created when the file is written
        if not folder.is_dir():
            raise UsageError(f"cannot write {option} {path}: {folder} is not a folder", hint)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".edgekit-probe-")  # as root, os.access says yes on a read-only mount
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write {option} {path}: {exc.strerror or exc}", hint) from None
    except ValueError as exc:  # NUL in the path, unencodable characters
        raise UsageError(f"cannot write {option} {path}: {exc}", hint) from None


class OutputFile(click.ParamType):
    """An output file option (--json, --html, --markdown): check_output runs while the arguments are parsed,
    so a bad path is refused before anything is loaded, converted or measured."""

    name = "path"

    def convert(self, value, param, ctx):
        check_output(value, param.opts[-1] if param is not None else "the output")
        return value


OUTPUT_FILE = OutputFile()


def _write_json(path: str | None, data) -> None:
    if path:
        from edgekit.artifact import write_json_atomic

        try:
            write_json_atomic(Path(path), data)
        except OSError as exc:  # checked before the work; this is the folder changing meanwhile
            raise UsageError(f"cannot write --json {path}: {exc.strerror or exc}", "give --json a file path in a folder you can write") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="edgekit")
@click.option("--debug", is_flag=True, help="Show tracebacks and the converters' logs on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgekit: PyTorch to the edge (ONNX, TFLite/LiteRT), with the real costs measured."""
    ctx.obj = {"debug": debug}


class _Progress:
    """Stage lines: a spinner while a stage runs, then '✓ stage  1.23 s'."""

    def __init__(self, console: Console, header: Text):
        self.console = console
        self.header = header
        self.status = None

    def __call__(self, target: str, stage: str, event: str, seconds: float) -> None:
        if self.header:  # printed once the checks have passed and work starts
            self.console.print(self.header, soft_wrap=True, highlight=False)
            self.header = ""
        if event == "note":  # a step with no timing shown (work on a device, which may be emulated)
            self.stop()
            say(self.console, "  ", ("·", "dim"), " ", (f"{target:<18}", "bold"), f" {stage}")
            return
        if event == "start":
            self.status = self.console.status(line((target, "bold"), f"  {stage} …"))
            self.status.start()
        else:
            if self.status:
                self.status.stop()
                self.status = None
            say(self.console, "  ", ("✓", "green"), " ", (f"{target:<18}", "bold"), f" {stage:<20} {seconds:7.2f} s")

    def stop(self) -> None:
        if self.status:
            self.status.stop()
            self.status = None


@cli.command()
@click.argument("model", required=False)
@click.option("-t", "--target", "targets", multiple=True, metavar="NAME",
              help="Target from `edgekit targets` or a .toml file; repeat for several. [default: tflite-int8]")
@click.option("--calib", metavar="SRC", help="Calibration data: .npy, .npz, a folder (npy or images), digits, fashion-mnist, or random.")
@click.option("--calib-samples", type=click.IntRange(1), default=200, show_default=True, help="Samples used for calibration.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile", "distribution", "histogram", "moving-average"]),
              help="Override the target's calibration method (each backend supports some).")
@click.option("--calib-spec", metavar="NAME", help="Preprocessing spec for image folders (calibration/*.toml name or path).")
@click.option("--val-data", metavar="SRC", help="Validation data (same forms as --calib). [default: held out from --calib]")
@click.option("--val-samples", type=click.IntRange(1), help="Use at most this many validation samples. [default: all of --val-data, or a random quarter of --calib]")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME=]SHAPE", help="e.g. 1,3,224,224 or x=1,3,480,640; repeat per input.")
@click.option("--input-dtype", "input_dtypes", multiple=True, metavar="[NAME=]DTYPE",
              help="An input's dtype, e.g. input_ids=int64 (ids and masks stay integer end to end); repeat per input.")
@click.option("--input-range", "input_ranges", multiple=True, metavar="NAME=LO:HI",
              help="Valid values of an integer input (HI excluded), e.g. input_ids=0:30522: the only way random ids are drawn.")
@click.option("--state-input", "state_inputs", multiple=True, metavar="NAME",
              help="An input whose first axis is not the batch (a recurrent state shaped (layers, 1, hidden)).")
@click.option("--bind", "binds", multiple=True, metavar="NAME=VALUE",
              help="Bind a non-tensor forward() argument once, e.g. --bind sr=16000.")
@click.option("--output", "output_kinds", multiple=True, metavar="NAME=KIND",
              help="What an output means: class[:probs], embedding, regression, probability[:THRESHOLD], state, tensor (judged accordingly). Repeatable.")
@click.option("--state", "states", multiple=True, metavar="OUT=IN",
              help="Output OUT is the recurrent state fed back into input IN: validation then also runs closed-loop over sequences. Repeatable.")
@click.option("--weights", type=click.Path(), help="State dict to load into the model built by a factory.")
@click.option("--trust-pickle", is_flag=True, help="Allow Python pickle in the model file (a whole-model .pt, or a .pt2 whose members need it): it runs code from "
                   "the file, so only for files you trust. TorchScript .pt files need no flag (their graph holds torch ops only).")
@click.option("--channels-last", is_flag=True, help="TFLite: NHWC inputs/outputs for image models.")
@click.option("--max-accuracy-drop", type=float, metavar="POINTS",
              help="Search per-layer int16/float moves until accuracy on --data is within POINTS of the float model (static int8 targets). "
                   "A point is 1% of top-1 for a class output, 0.01 of cosine for an embedding, 1% of relative error otherwise.")
@click.option("--data", "budget_data", metavar="SRC", help="Labelled data the accuracy budget is measured on (.npz, class folders, digits, fashion-mnist). [default: the validation samples]")
@click.option("--labels-key", metavar="KEY", help="Name of the labels array in the --data .npz.")
@click.option("--budget-s", type=click.FloatRange(1), default=600, show_default=True, help="Stop the accuracy-budget search after this many seconds.")
@click.option("--preprocess", metavar="SPEC", help="The image preprocessing apps must apply (calibration/*.toml name or path), kept in the manifest "
                   "for runtime Model.preprocess / classify. [default: --calib-spec when calibrating on an image folder]")
@click.option("--labels", metavar="FILE", help="Class labels, one per line in index order, kept in the manifest. [default: the class folders' names]")
@click.option("--validate-on", "validate_on", multiple=True, metavar="DEVICE",
              help="Also run the held-out inputs on DEVICE (a profile, ssh://..., adb://... with the python runner) and record its verdict "
                   "beside the host's; repeatable.")
@click.option("--out", "out", type=click.Path(), help="Artifact folder (one target). [default: out/<model>-<target>]")
@click.option("--out-dir", type=click.Path(), default="out", show_default=True, help="Parent folder for artifacts.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write the machine-readable result here.")
@click.pass_context
def convert(ctx, model, targets, calib, calib_samples, calib_method, calib_spec, val_data, val_samples, input_shapes, input_dtypes,
            input_ranges, state_inputs, binds, output_kinds, states, weights, trust_pickle, channels_last, max_accuracy_drop, budget_data, labels_key, budget_s,
            preprocess, labels, validate_on, out, out_dir, json_path):
    """Convert MODEL (file.py:factory, pkg.module:attr, TorchScript .pt/.jit/.ts, .pt2; default: the bundled digits CNN)."""
    from edgekit.options import ConvertOptions
    from edgekit.pipeline import DEFAULT_TARGET, convert_many

    targets = list(targets) or [DEFAULT_TARGET]
    if out and len(targets) > 1:
        raise EdgekitError("--out names one artifact folder but several targets were given", "use --out-dir for several targets")
    opts = ConvertOptions(calib=calib, calib_samples=calib_samples, calib_method=calib_method, calib_spec=calib_spec, val_data=val_data,
                          val_samples=val_samples, input_shape=input_shapes, input_dtype=input_dtypes, input_range=input_ranges,
                          state_input=state_inputs, bind=binds, output=output_kinds, state=states, weights=weights,
                          trust_pickle=trust_pickle, channels_last=channels_last, max_accuracy_drop=max_accuracy_drop,
                          data=budget_data, labels_key=labels_key, budget_s=budget_s, preprocess=preprocess, labels=labels)
    kwargs = opts.convert_kwargs()  # --output / --state are checked before the model loads
    spec = opts.load(model)
    progress = _Progress(ERR, header=line((spec.source, "bold"), f" ({spec.num_params:,} parameters, inputs {'; '.join(i.describe() for i in spec.inputs)})"))
    try:
        results = convert_many(spec, targets, out_dir=out, out_root=out_dir, progress=progress, lint_report=_print_lint,
                               validate_on=validate_on, **kwargs)
    finally:
        progress.stop()
    if len(results) == 1 and results[0].error is not None:
        raise results[0].error  # one target: one line, no table
    _convert_table(results, spec.param_bytes_fp32)
    for r in results:
        if r.artifact is not None and "accuracy_budget" in r.artifact.manifest.extra:
            _print_budget(r.target, r.artifact.manifest.extra["accuracy_budget"])
    for r in results:
        for w in r.warnings:
            say(ERR, ("warning", "yellow"), f" {r.target}: {w}")
    for r in results:  # a verdict the samples cannot decide is said loudly (exit 0: nothing is known to be wrong)
        if r.artifact is not None and r.artifact.validation.get("status") == "inconclusive":
            say(ERR, ("INCONCLUSIVE", "bold magenta"), f" {r.target}: {'; '.join(r.artifact.validation['reasons'])}; "
                "pass --val-data with more samples for a verdict")
    _write_json(json_path, {"command": "convert", "model": spec.source, "results": [r.to_json() for r in results]})
    errors = [r for r in results if r.error is not None]
    failed = [r for r in results if r.artifact is not None and r.artifact.validation.get("status") == "fail"]
    if errors:
        if ctx.obj["debug"]:
            raise errors[0].error
        for r in errors:
            say(ERR, ("error", "red"), f" {r.target}: {r.error}")
        sys.exit(errors[0].error.exit_code)
    missed = [r for r in results if r.artifact is not None and not r.artifact.manifest.extra.get("accuracy_budget", {"met": True})["met"]]
    problems = [f"validation failed for {r.target} ({'; '.join(r.artifact.validation['reasons'])})" for r in failed]
    for r in missed:
        b = r.artifact.manifest.extra["accuracy_budget"]
        problems.append(f"accuracy budget not met for {r.target}: {b['drop_points']:.2f} > {b['max_drop_points']} points ({b['reason']}); "
                        f"the closest artifact is in {r.artifact.path}")
    if problems:
        raise ValidationFailed("; ".join(problems), "see the artifact's manifest.json; raise --budget-s or --max-accuracy-drop, "
                               "or try another target or calibration method" if missed else
                               "see the artifact's manifest.json; try another target or calibration method")


def _print_budget(target: str, b: dict) -> None:
    timed = any(st.get("latency_ms") is not None for st in b["steps"])
    from edgekit.budget import POINT

    t = table(f"{target}: accuracy budget {b['max_drop_points']} points of {b['metric']} (a point: {POINT.get(b['metric'], 'of 1.0')}) "
              f"on {b['samples']} samples (float model {b['reference']:.2%})",
              [(col, {"justify": "left" if col.startswith("moved") else "right"})
               for col in ("step", "moved to int16 / float", b["metric"], "drop (points)", "size", "s", *(("latency (ms)",) if timed else ()))])
    for i, st in enumerate(b["steps"]):
        moved = ", ".join(f"{o['note'].split(':')[0]}→{o['precision']}" for o in st["moved"]) or "- (full int8)"
        step = line(str(i), (" ✓ chosen", "green")) if i == b["chosen"] else str(i)
        lat = (f"{st['latency_ms']:.3f}" if st.get("latency_ms") is not None else "-",) if timed else ()
        row(t, step, moved, f"{st['metric']:.2%}", f"{st['drop_points']:.2f}", _kib(st["size_bytes"]), f"{st['seconds']:.1f}", *lat)
    OUT.print(t)
    verdict = ("met", "green") if b["met"] else ("not met", "red")
    say(OUT, "budget ", verdict, f" ({b['reason']})" if b["reason"] != "within budget" else "",
        "; re-apply these moves without searching: edgekit convert MODEL --target <this artifact folder>")


def _print_lint(findings: dict[str, list[str]]) -> None:
    for target, items in findings.items():
        for f in items:
            say(ERR, ("lint", "yellow"), f" {target}: {f}")


def _convert_table(results, param_bytes: int) -> None:
    has_acc = any(r.artifact and "accuracy" in r.artifact.validation for r in results)
    right = {"justify": "right"}
    from edgekit.validate import headline, kinds_line

    t = table("edgekit convert", [("target", {}), ("size", right), ("× fp32 params", right), ("SQNR dB", right), ("judged on", right),
                                  *([("accuracy (ref)", right)] if has_acc else []), ("time s", right), "validation", "size note", "artifact"])
    colors = {"ok": "green", "warn": "yellow", "fail": "red", "inconclusive": "magenta"}
    judged = ""
    for r in results:
        if r.artifact is None:
            cells = [r.target, "-", "-", "-", "-"] + (["-"] if has_acc else []) + ["-", text("error", "red"), "-", str(r.error)[:60]]
        else:
            m, v = r.artifact.manifest, r.artifact.validation
            figures = m.validation.figures if m.validation else {}
            judged = judged or kinds_line(figures)
            ratio = f"{m.size_bytes / param_bytes:.2f}" if param_bytes else "-"
            cells = [r.target, _kib(m.size_bytes), ratio, f"{v['sqnr_db']:.1f}", headline(figures)]
            if has_acc:
                cells.append(f"{v['accuracy']:.1%} ({v['reference_accuracy']:.1%})" if "accuracy" in v else "-")
            flags = (m.extra.get("census") or {}).get("flags") or []
            measured = "+".join(["host", *(e["device"] for e in figures.get("devices") or [] if e["status"] != "error")])
            cells += [f"{m.extra.get('convert_seconds', 0.0):.1f}", line((v["status"], colors.get(v["status"], "")), f" ({measured})"),
                      text("; ".join(flags), "yellow") if flags else "", str(r.artifact.path)]
        row(t, *cells)
    OUT.print(t)
    vdata = next((r.artifact.manifest.validation.figures.get("validation_data") for r in results
                  if r.artifact is not None and r.artifact.manifest.validation), None)
    if judged:
        say(OUT, ("outputs", "bold"), f" {judged}")
    if vdata:
        say(OUT, ("validated on", "bold"), f" {vdata['samples']} samples of {vdata['described']}")
    for r in results:
        if r.artifact is not None and r.artifact.manifest.validation:
            for text_line in _where_lines(r.target, r.artifact.manifest.validation.figures):
                say(OUT, text_line)


def _where_lines(target: str, figures: dict) -> list[str]:
    """Where each verdict was measured: this host only (and how to measure it on the device), or each device's figures."""
    host = figures.get("measured_on") or {}
    where = f"this host ({host.get('arch', '?')}, {host.get('runtime', '?')} {host.get('runtime_version', '')})".replace(" )", ")")
    devices = figures.get("devices") or []
    if not devices:
        return [f"{target}: verdict measured on {where} only; --validate-on DEVICE measures it where the artifact will run"]
    host_fig = f", top-1 agreement {figures['top1_agreement']:.3f}" if "top1_agreement" in figures else ""
    out = [f"{target}: {figures.get('host_status', '?')} on {where}{host_fig}"]
    for e in devices:
        if e["status"] == "error":
            out.append(f"{target}: not validated on {e['device']}: {e['error']}")
            continue
        f, vs = e["figures"], e["vs_host"]
        agree = f", top-1 agreement {f['top1_agreement']:.3f}" if "top1_agreement" in f else ""
        diff = "; outputs identical to this host's" if vs.get("identical") else (
            f"; top-1 as this host on {vs['top1_agreement']:.3f} of {vs['samples']}" if "top1_agreement" in vs else "; outputs differ from this host's")
        out.append(f"{target}: {e['status']} on {e['device']} ({e['arch']}, {e['runtime']} {e['runtime_version']}, over {e['transport']}){agree}{diff}")
    return out


@cli.command("targets")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write the catalogue as JSON here.")
def targets_cmd(json_path):
    """List the conversion targets (shipped, $EDGEKIT_TARGETS, ./targets)."""
    from edgekit.targets import list_targets

    ts = list_targets()
    t = table("edgekit targets", [(col, {"overflow": "fold"})
                                  for col in ("target", "format", "precision", "quantizer", "calibration", "I/O", "description")])
    for x in ts:
        q = x.quant
        row(t, x.name, x.format, x.precision, "-" if q.backend == "none" else f"{q.backend} {q.mode}",
                  q.calib_method if q.needs_calibration else "-", x.io_dtype, x.description)
    OUT.print(t)
    _write_json(json_path, {"command": "targets", "targets": [x.to_dict() for x in ts]})


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT...")
@click.option("-d", "--device", "devices", multiple=True, metavar="NAME",
              help="Profile from `edgekit devices`, a .toml, ssh://user@host[:port] or adb://SERIAL; repeat for several. [default: local]")
@click.option("--runs", type=click.IntRange(1), default=100, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True, help="Warm-up runs before timing.")
@click.option("--min-seconds", type=click.FloatRange(0), default=0.0, show_default=True, help="Keep running until this much time has passed.")
@click.option("--threads", type=click.IntRange(0), help="Interpreter threads. [default: the profile's]")
@click.option("--cooldown", "cooldown_s", type=click.FloatRange(0), default=0.0, show_default=True, help="Seconds to wait between artifacts on one device.")
@click.option("--runner", type=click.Choice(["python", "benchmark_model"]), help="Override the profile's runner.")
@click.option("--benchmark-binary", type=click.Path(), help="TFLite benchmark_model binary for the device (Android).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), help="Seconds the measurement may take per artifact. [default: 5x the profile's step timeout]")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME=]SHAPE",
              help="A bare .onnx/.tflite file's input shape, fixing its dynamic dims, e.g. x=1,3,480,640; repeat per input.")
@click.option("--input-range", "input_ranges", multiple=True, metavar="NAME=LO:HI",
              help="A bare file's integer input takes random values LO..HI-1 (e.g. input_ids=0:30522). [default: zeros; ones for masks]")
@click.option("--eval-data", metavar="SRC", help="Also measure accuracy on each device on this labelled data (as `edgekit eval --device`), "
                   "shown next to the latency (python runner).")
@click.option("--eval-samples", type=click.IntRange(1), help="Use at most this many --eval-data samples.")
@click.option("--labels-key", metavar="KEY", help="Name of the labels array in the --eval-data .npz.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write every result, raw samples included, here.")
def bench(artifacts, devices, runs, warmup, min_seconds, threads, cooldown_s, runner, benchmark_binary, timeout_s,
          input_shapes, input_ranges, eval_data, eval_samples, labels_key, json_path):
    """Measure ARTIFACT (folders from `edgekit convert`, or .tflite/.onnx files) on devices."""
    from edgekit.measure import BenchOptions, bench_many

    opts = BenchOptions(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads, cooldown_s=cooldown_s,
                        timeout_s=timeout_s, benchmark_binary=benchmark_binary, runner=runner,
                        input_shapes=input_shapes, input_ranges=input_ranges)
    status = {"s": None}

    def progress(device: str, artifact: str, event: str) -> None:
        if event == "start":
            status["s"] = ERR.status(line((device, "bold"), f"  {artifact} …"))
            status["s"].start()
        elif status["s"]:
            status["s"].stop()
            say(ERR, "  ", ("✓", "green") if event == "done" else ("✗", "red"), " ", (f"{device:<14}", "bold"), f" {artifact}")

    try:
        results = bench_many(list(artifacts), list(devices) or ["local"], opts, progress)
    finally:
        if status["s"]:
            status["s"].stop()
    if eval_data:
        from edgekit.measure import attach_eval

        with ERR.status(text("measuring accuracy on each device …")):
            attach_eval(results, list(devices) or ["local"], eval_data, labels_key=labels_key, samples=eval_samples)
    acc = ("top-1",) if eval_data else ()
    t = table("edgekit bench", [(col, {"justify": "right" if col not in ("artifact", "device", "status") else "left", "overflow": "fold"})
                                for col in ("artifact", "device", "size", "p50 ms", "p90 ms", "CV", "init ms", "peak MB", *acc, "status")])
    for r in results:
        st = r.stats
        top1 = (r.eval.get("metrics", {}).get("top1", r.eval.get("metrics", {}).get("top1_agreement")),) if eval_data else ()
        if r.status == "ok":
            cv = "-" if st.get("cv") is None else f"{st['cv']:.1%}"
            state = text("ok*", "yellow") if r.warnings else text("ok", "green")
            row(t, r.target or r.artifact, r.device, _kib(r.size_bytes), _ms(st.get("p50_ms")), _ms(st.get("p90_ms")), cv,
                      _ms(r.init_ms), "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}",
                      *("-" if v is None else f"{v:.1%}" for v in top1), state)
        else:
            row(t, r.artifact, r.device, "-", "-", "-", "-", "-", "-", *("-" for _ in acc), text("failed", "red"))
    OUT.print(t)
    for r in results:
        for n in r.notes:
            say(ERR, ("note", "cyan"), f" {r.device} {r.target or r.artifact}: {n}")
        for w in r.warnings:
            say(ERR, ("warning", "yellow"), f" {r.device} {r.target or r.artifact}: {w}")
        if r.status != "ok":
            say(ERR, ("error", "red"), f" {r.device} {r.artifact}: {r.error}")
    _write_json(json_path, {"command": "bench", "results": [r.to_json() for r in results]})
    if any(r.status != "ok" for r in results):
        sys.exit(5)


@cli.command("eval")
@click.argument("artifact")
@click.option("--data", required=True, metavar="SRC", help="Labelled data: .npz (inputs + labels), class-named image folders, digits, fashion-mnist.")
@click.option("--labels-key", metavar="KEY", help="Name of the labels array in the .npz. [default: y, labels, label or targets]")
@click.option("--data-spec", metavar="NAME", help="Preprocessing spec for image folders (calibration/*.toml).")
@click.option("-d", "--device", help="Produce the outputs on this device (profile, ssh://…, adb://…). [default: this host]")
@click.option("--reference", metavar="MODEL", help="PyTorch model to compare with (file.py:factory, .pt, .pt2).")
@click.option("--weights", type=click.Path(), help="State dict for the reference factory.")
@click.option("--samples", type=click.IntRange(1), help="Use only the first N samples.")
@click.option("--threads", type=click.IntRange(0), help="Interpreter threads.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME=]SHAPE",
              help="A bare .onnx/.tflite file's input shape, fixing its dynamic dims, e.g. x=1,3,480,640; repeat per input.")
@click.option("--input-range", "input_ranges", multiple=True, metavar="NAME=LO:HI",
              help="A bare file's integer input: the data's values must lie in LO..HI-1.")
@click.option("--output", "output_kinds", multiple=True, metavar="NAME=KIND",
              help="What an output means (class, embedding, regression, probability, state, tensor). [default: the artifact's manifest]")
@click.option("--state", "states", multiple=True, metavar="OUT=IN",
              help="Output OUT is the state fed back into input IN: with --reference, also compare closed-loop over the data's sequences.")
@click.option("--preprocess-check", is_flag=True,
              help="First check that the artifact's own image preprocessing (what apps run) makes the tensors calibration makes "
                   "from --data's images with --data-spec (default: the spec the manifest names); exit 4 if they differ.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write the result here.")
def eval_cmd(artifact, data, labels_key, data_spec, device, reference, weights, samples, threads, input_shapes, input_ranges, output_kinds,
             states, preprocess_check, json_path):
    """Task accuracy of ARTIFACT on labelled data, on this host or on a device."""
    parity = None
    if preprocess_check:
        from edgekit.evaluate import preprocess_check as check_parity

        parity = check_parity(artifact, data, data_spec)
        say(ERR, ("preprocessing", "bold"), f" matches spec {parity['spec']} on {parity['images']} images "
            f"(max difference {parity['max_abs_diff']:.2g})")
        data_spec = data_spec or parity["spec"]
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from edgekit.evaluate import evaluate
    from edgekit.validate import declared_kinds

    # Not on a terminal the bar would only leave an empty line (before the one-line error, if any).
    with Progress(TextColumn("eval", style="bold"), BarColumn(), "{task.completed}/{task.total}", TimeRemainingColumn(), console=ERR, transient=True,
                  disable=not ERR.is_terminal) as bar:
        task = bar.add_task("eval", total=None)
        res = evaluate(artifact, data, labels_key=labels_key, data_spec=data_spec, device=device, reference=reference,
                       reference_weights=weights, threads=threads, samples=samples, input_shapes=input_shapes, input_ranges=input_ranges,
                       progress=lambda done, total: bar.update(task, completed=done, total=total), outputs=declared_kinds(output_kinds, states))
    for n in res.notes:
        say(ERR, ("note", "cyan"), f" {res.target}: {n}")
    t = table(f"edgekit eval: {res.target} on {res.device} ({res.samples} samples of {res.data})", ["metric", ("value", {"justify": "right"})])
    labels = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "reference_accuracy": "reference top-1 accuracy",
              "top1_agreement": "top-1 agreement with reference", "mean_kl": "mean KL(ref || artifact)",
              "sqnr_db": "SQNR dB", "cosine": "cosine", "max_abs_error": "max abs error"}
    for key, label in labels.items():
        v = res.metrics.get(key)
        if v is not None:
            row(t, label, f"{v:.2%}" if key in ("top1", "top5", "reference_accuracy", "top1_agreement") else f"{v:.4g}")
    OUT.print(t)
    _write_json(json_path, {"command": "eval", **res.to_json(), **({"preprocess_check": parity} if parity else {})})


@cli.command("diagnose")
@click.argument("artifact")
@click.option("--data", "--calib", "data", metavar="SRC", help="Inputs to compare on (.npy, .npz, folder, digits, fashion-mnist). [default: the artifact's calibration data]")
@click.option("--samples", type=click.IntRange(1), help="Samples to run. [default: 64; 4 with --device]")
@click.option("--device", metavar="DEVICE", help="Compare float (host), quantized (host) and quantized (DEVICE) layer by layer: the layers "
                   "where the device departs from the host, and whether to accept it or change the recipe (TFLite, python runner).")
@click.option("--model", metavar="MODEL", help="The float PyTorch model (required: edgekit never imports the model an artifact's manifest names; "
                   "only edgekit's bundled example needs none).")
@click.option("--weights", type=click.Path(), help="State dict for the --model factory.")
@click.option("--data-spec", metavar="NAME", help="Preprocessing spec for image folders.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="Layers to show.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write every layer's figures here.")
def diagnose_cmd(artifact, data, samples, device, model, weights, data_spec, top, json_path):
    """Rank ARTIFACT's layers by the error they add against the float model, with the likely cause and the fix."""
    from edgekit.diagnose import diagnose

    if device:
        return _diagnose_device(artifact, device, data, samples or 4, model, weights, data_spec, top, json_path)
    with ERR.status(text("running the float and quantized models with every tensor kept …")):
        d = diagnose(artifact, model=model, weights=weights, data=data, samples=samples or 64, data_spec=data_spec)
    t = table(f"edgekit diagnose: {d.target} on {d.samples} samples (output SQNR {d.output_sqnr_db:.1f} dB, median over channels)",
              [(col, {"overflow": "fold", "justify": "right" if col in ("#", "loss dB", "added noise") else "left"})
               for col in ("#", "layer", "ops", "now", "SQNR in→out dB", "loss dB", "added noise", "likely cause", "fix")])
    for i, la in enumerate(d.layers[:top], 1):
        row(t, str(i), line(la.name, "\n", (la.modules, "dim")) if la.modules else la.name, ",".join(la.ops)[:40], la.precision,
                  f"{la.sqnr_in_db:.1f}→{la.sqnr_out_db:.1f}", f"{la.loss_db:.1f}", f"{la.added_noise:.2e}", la.cause, la.fix_note)
    OUT.print(t)
    fix = d.suggestion()
    if fix is not None:
        OUT.print(text(f"suggested recipe change ({fix.note.split(':')[0]} -> {fix.precision}): add to the target's .toml\n"
                       f"  [[quantize.overrides]]\n  layer = '{fix.layer}'\n  precision = \"{fix.precision}\"\n"
                       f"or let edgekit search: edgekit convert MODEL --target {d.target} --max-accuracy-drop 0.5 --data VAL.npz"),
                  soft_wrap=True, highlight=False)
    elif d.layers and d.layers[0].fix == "per_channel":
        say(OUT, "suggested recipe change: set per_channel = true under [quantize] in the target")
    elif d.layers:
        say(OUT, f"no layer stands out: the worst keeps {d.layers[0].sqnr_out_db:.1f} dB with no known cause; nothing to change")
    _write_json(json_path, {"command": "diagnose", **d.to_json()})


def _diagnose_device(artifact, device, data, samples, model, weights, data_spec, top, json_path):
    from edgekit.diagnose_device import diagnose_on_device

    d = diagnose_on_device(artifact, device, model=model, weights=weights, data=data, samples=samples, data_spec=data_spec,
                           progress=lambda m: say(ERR, ("·", "dim"), f" {m}"))
    o = d.output
    t = table(f"edgekit diagnose: {d.target} on {d.device} ({d.device_info['arch']}, {d.device_info['runtime']} {d.device_info['runtime_version']}) "
              f"against this host ({d.host_info['arch']}) and the float model, {d.samples} samples",
              [(col, {"overflow": "fold", "justify": "right" if col in ("#", "max steps", "differ") or "dB" in col else "left"})
               for col in ("#", "layer", "now", "device vs host dB", "max steps", "differ", "host vs float dB", "device vs float dB", "verdict")])
    shown = [la for la in d.layers if la.action != "same"][:top]
    for i, la in enumerate(shown, 1):
        row(t, str(i), line(la.name, "\n", (la.modules, "dim")) if la.modules else la.name, la.precision, f"{la.device_vs_host_db:.1f}",
            str(la.max_steps), f"{la.differ:.1%}", f"{la.host_vs_float_db:.1f}", f"{la.device_vs_float_db:.1f}", la.note)
    if shown:
        OUT.print(t)
    steps = f", up to {o['max_steps']} steps apart (median {o['median_steps']:.0f})" if o.get("max_steps") is not None else ""
    say(OUT, ("output", "bold"), f" top-1 as this host on {o['top1_agreement']:.0%} of {o['samples']} samples{steps}"
        + ("; identical" if o["identical"] else ""))
    if d.first_departure:
        say(OUT, ("first departure", "bold"), f" {d.first_departure}")
    for n in d.notes:
        say(OUT, ("note", "dim"), f" {n}")
    fix = next((la for la in shown if la.action == "recipe" and la.override), None)
    if fix is not None:
        OUT.print(text(f"suggested recipe change ({fix.name} -> {fix.override['precision']}): add to the target's .toml\n"
                       f"  [[quantize.overrides]]\n  layer = '{fix.override['layer']}'\n  precision = \"{fix.override['precision']}\""),
                  soft_wrap=True, highlight=False)
    elif shown:
        say(OUT, "every departure is a kernel difference to accept: the device stays as close to the float model as this host")
    _write_json(json_path, {"command": "diagnose", **d.to_json()})


@cli.command("export-app")
@click.argument("artifact")
@click.option("--kind", type=click.Choice(["classify", "stream"]), required=True, help="classify: images -> labels; stream: a recurrent model fed frame by frame.")
@click.option("--out", "out", required=True, type=click.Path(), help="The app folder to write (replaced whole only if edgekit wrote it).")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write what was written here.")
def export_app_cmd(artifact, kind, out, json_path):
    """Write a small self-contained Python app for ARTIFACT: the artifact, edgekit's torch-free runtime, main.py and a
    requirements.txt for the board (python3 main.py ... there)."""
    from edgekit.app import export_app

    path = export_app(artifact, kind, out)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    say(OUT, ("wrote", "green"), f" {path} ({len(files)} files): on the board, pip install -r requirements.txt, then python3 main.py "
        + ("IMAGE_OR_FOLDER..." if kind == "classify" else "FRAMES.npy"))
    _write_json(json_path, {"command": "export-app", "artifact": str(artifact), "kind": kind, "out": str(path), "files": files})


@cli.command("sweep")
@click.argument("lab", metavar="LAB.toml")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run on a Ray cluster: HOST:PORT, ray://HOST:10001 or auto (RAY_ADDRESS, else the head on this host). "
                   "[default: a process pool on this host]")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Local pool: cells run at once.")
@click.option("--force", "force", multiple=True, metavar="PATTERN",
              help="Redo the cells whose id matches, e.g. 'digits/*' or '*@pixel' (ids: MODEL/TARGET[@DEVICE[:eval]]); repeatable.")
@click.option("--html", "html_path", type=OUTPUT_FILE, help="Also write the report card (edgekit report) of the sweep here.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write every cell's result here.")
def sweep_cmd(lab, ray_address, workers, force, html_path, json_path):
    """Run LAB.toml's models x targets x devices: convert, then bench / eval each artifact on each device.

    Results are kept in the lab's out folder by content: a re-run does only cells whose inputs changed (or --force);
    `edgekit report OUT` reads them. Exit 0 when every cell is ok, 4 when a cell failed or an artifact's verdict is
    fail, 5 when the infrastructure failed a cell after its retries.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgekit.lab import LocalExecutor, RayExecutor, read_lab, sweep

    plan = read_lab(lab)
    executor = RayExecutor(ray_address) if ray_address else LocalExecutor(workers)
    marks = {"ok": ("✓", "green"), "failed": ("✗", "red"), "error": ("✗", "red"), "skipped": ("-", "yellow")}
    with Progress(TextColumn("sweep", style="bold"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=ERR, transient=True, disable=not ERR.is_terminal) as bar:
        task = bar.add_task("", total=len(plan.cells()))

        def progress(event, item, counts):
            on = "; ".join(f"{d}: {c}" for d, c in sorted(counts["devices"].items()))
            bar.update(task, completed=counts["done"], description=f"{counts['running']} running, {counts['cached']} cached, "
                                                                   f"{counts['failed']} failed" + (f" | {on}" if on else ""))
            if event == "done" and not item.cached:
                mark = marks.get(item.status, ("?", ""))
                if item.verdict == "fail":
                    mark = ("✗", "red")
                bar.console.print(line("  ", mark, " ", (f"{item.cell.id:<40}", "bold"), f" {item.seconds:7.1f} s",
                                       f"  {item.status}" + (f": {item.error}" if item.error else ""), one_line=True),
                                  soft_wrap=True, highlight=False)

        results = sweep(plan, executor, tuple(force), progress)
    t = table(f"edgekit sweep: {lab}", [(col, {"justify": "right" if col in ("size", "p50 ms", "metric") else "left", "overflow": "fold"})
                                        for col in ("cell", "status", "verdict", "size", "p50 ms", "metric", "error")])
    for r in results:
        status = text(r.status, "green" if r.status == "ok" else "red" if r.status in ("failed", "error") else "yellow")
        row(t, r.cell.id, status, r.verdict or "-", _kib(r.size_bytes) if r.size_bytes else "-", _ms(r.p50_ms), r.metric or "-",
            r.error[:80] if r.error else "")
    OUT.print(t)
    cached = sum(r.cached for r in results)
    say(ERR, f"{len(results)} cells: {len(results) - cached} run, {cached} from the store ({plan.out})")
    _write_json(json_path, {"command": "sweep", "lab": str(lab), "out": plan.out, "executor": executor.name,
                            "results": [r.to_json() for r in results]})
    if html_path:
        from edgekit.report import collect

        collect([plan.out]).write(html=html_path, markdown=None)
        say(ERR, f"wrote {html_path}")
    if any(r.status == "error" for r in results):
        sys.exit(5)
    if any(r.bad for r in results):
        sys.exit(4)


@cli.command()
@click.option("--no-probe", is_flag=True, help="Only list the profiles; do not try to reach them.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write the profiles (and what answered) here.")
def devices(no_probe, json_path):
    """List device profiles (shipped, $EDGEKIT_DEVICES, ./devices) and whether each answers now."""
    from edgekit.devices.profiles import list_profiles, open_device

    t = table("edgekit devices", [(col, {"overflow": "fold"}) for col in ("device", "transport", "address", "runner", "answers", "description")])
    rows = []
    for p in list_profiles():
        answer, shown = "-", "-"
        if not no_probe:
            try:
                with open_device(p) as dev:
                    info = dev.info()
                answer, shown = f"yes ({info.arch})", line(("yes", "green"), f" ({info.arch})")
            except EdgekitError as exc:
                answer = f"no: {str(exc)[:70]}"
                shown = line(("no", "red"), answer[2:])
        address = {"ssh": f"{p.user + '@' if p.user else ''}{p.host}{':' + str(p.port) if p.port else ''}",
                   "adb": p.serial or "(only device)", "local": "-"}[p.transport]
        row(t, p.name, p.transport, address, p.runner, shown, p.description)
        rows.append({**p.to_dict(), "answers": answer})
    OUT.print(t)
    _write_json(json_path, {"command": "devices", "devices": rows})


@cli.command()
@click.option("-d", "--device", default="local", show_default=True, help="Profile name, .toml, ssh://… or adb://….")
@click.option("--benchmark-binary", type=click.Path(), help="TFLite benchmark_model binary to check for.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write the checks here.")
def doctor(device, benchmark_binary, json_path):
    """Check what DEVICE lacks for `edgekit bench`, with the command that fixes each gap."""
    from edgekit.doctor import diagnose, healthy

    profile, checks = diagnose(device, benchmark_binary)
    t = table(f"edgekit doctor: {profile.name} ({profile.transport}, {profile.runner} runner)",
              [(col, {"overflow": "fold"}) for col in ("check", "", "detail", "fix")])
    for c in checks:
        row(t, c.name, text("✓", "green") if c.ok else text("✗", "red"), c.detail, c.fix)
    OUT.print(t)
    _write_json(json_path, {"command": "doctor", "device": profile.to_dict(), "checks": [c.to_json() for c in checks]})
    if not healthy(checks):
        sys.exit(5)


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--html", "html_path", type=OUTPUT_FILE, help="Write the self-contained HTML page (table and plots) here.")
@click.option("--markdown", "md_path", type=OUTPUT_FILE, help="Write the Markdown table here.")
@click.option("--json", "json_path", type=OUTPUT_FILE, help="Write the rows as JSON here.")
def report(paths, html_path, md_path, json_path):
    """Report card over PATH...: artifact folders (or folders holding them) and `edgekit bench/eval --json` files.

    One row per artifact and device: size, accuracy, agreement, SQNR, latency p50/p90/p99. The HTML page has the
    table and plots (accuracy vs latency, latency distributions) inline and opens from disk. With neither --html nor
    --markdown the page is written to report.html in the first PATH (beside it when PATH is a file).
    """
    from edgekit.report import COLUMNS, collect, default_output

    page = html_path or (None if md_path else default_output(paths[0]))
    if page is not None and not html_path and Path(paths[0]).exists():
        check_output(str(page), "the report page (--html)")
    rep = collect(paths)
    cells_all = rep.table()
    keep = ("model", "target", "verdict")  # what a row is and how it was judged: never folded mid-word

    def style(k: int, col: str) -> dict:
        d = {"justify": "left" if col in ("model", "target", "verdict", "device", "accuracy from", "artifact") else "right", "overflow": "fold"}
        if col in keep:
            d.update(no_wrap=True, min_width=max([len(col)] + [len(str(c[k])) for c in cells_all]))
        return d

    t = table("edgekit report", [(col, style(k, col)) for k, col in enumerate(COLUMNS)])
    for cells in cells_all:
        row(t, *cells)
    OUT.print(t)
    for x in rep.consistency_lines():  # the same artifact on several devices: where one computes differently
        say(OUT, ("agreement", "bold"), f" {x}")
    for note in rep.notes:
        say(ERR, ("note", "yellow"), f" {note}")
    for path in rep.write(html=page, markdown=md_path):
        say(ERR, f"wrote {path}")
    _write_json(json_path, {"command": "report", **rep.to_json()})


def main(argv: list[str] | None = None) -> None:
    from edgekit._util import Terminated, first_line, install_signal_handlers

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    install_signal_handlers()  # SIGTERM / SIGHUP clean up like Ctrl-C
    try:
        cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except EdgekitError as exc:
        if debug:
            raise
        say(ERR, ("error:", "red"), f" {exc}")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (and so Terminated) into Abort
        if isinstance(exc.__cause__, Terminated) and exc.__cause__.signum != signal.SIGINT:
            say(ERR, ("terminated", "red"), f" by signal {exc.__cause__.signum}")
            sys.exit(128 + exc.__cause__.signum)
        say(ERR, ("interrupted", "red"))
        sys.exit(130)
    except click.ClickException as exc:
        say(ERR, ("error:", "red"), f" {exc.format_message()}; see `edgekit --help`")
        sys.exit(exc.exit_code)
    except Terminated as exc:
        if exc.signum == signal.SIGINT:
            say(ERR, ("interrupted", "red"))
            sys.exit(130)
        say(ERR, ("terminated", "red"), f" by signal {exc.signum}")
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        say(ERR, ("interrupted", "red"))
        sys.exit(130)
    except Exception as exc:  # a bug, or a library failing in a way we did not foresee
        if debug:
            raise
        first = first_line(exc, 300)
        say(ERR, ("error:", "red"), f" internal error: {type(exc).__name__}: {first} (re-run with --debug for the traceback)")
        sys.exit(1)


from edgekit.compress.commands import COMMANDS as _COMPRESS  # noqa: E402

for _c in _COMPRESS:
    for _p in _c.params:  # their --json is checked before the work, like every other command's
        if _p.name == "json_path":
            _p.type = OUTPUT_FILE
    cli.add_command(_c)


if __name__ == "__main__":
    main()
