"""ONNX file -> float TFLite through onnx2tf's `flatbuffer_direct` backend (no TensorFlow).

Chosen by measurement (docs/research/onnx-to-tflite.md): on 9 ONNX files that PyPI packages ship it
converted 6 plus silero-vad once its sample rate is bound, more than onnx2tf through TensorFlow (5, and
2.6 GB of TensorFlow pinning older onnx/onnxruntime/numpy) or onnx2torch/onnx2pytorch -> litert-torch (0-2
as shipped; both need a torchvision that cannot be installed beside CPU torch), all matching ONNX
Runtime to cosine >= 0.999999. It is an optional extra installed with --no-deps (its metadata asks for
Python 3.12 and exact older pins it does not need on these paths):

    pip install --no-deps --ignore-requires-python onnx2tf==2.6.9 psutil onnxoptimizer sne4onnx sng4onnx

Guards for what onnx2tf does on its own: it rewrites its input file in place (it gets a private copy),
leaves temporary files in the working directory (it runs in the work folder), calls the `onnxsim`
command it finds on PATH (this interpreter's comes first), may call sys.exit, "succeeds" on graphs it
cannot express (CUSTOM ops are refused; the result is run once and compared with ONNX Runtime), and
reads NHWC-native image inputs as NCHW (such inputs, and every input that is not a 4-D image, keep
their shape exactly). 4-D NCHW image inputs become NHWC, TFLite's own layout, with no TRANSPOSE.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError, RuntimeMissing

PINNED = "2.6.9"
INSTALL = "pip install --no-deps --ignore-requires-python onnx2tf==2.6.9 psutil onnxoptimizer sne4onnx sng4onnx"
_LOCK = threading.Lock()  # onnx2tf needs the process's working directory and PATH


def _import():
    try:
        import onnx2tf
    except ImportError:
        raise RuntimeMissing("tflite-* targets from an ONNX file need onnx2tf, which is not installed",
                             f"install it with: {INSTALL} (or convert to onnx-* targets)") from None
    return onnx2tf


@contextlib.contextmanager
def _private_process_state(cwd: Path, log: io.StringIO):
    old_cwd, old_path = os.getcwd(), os.environ.get("PATH", "")
    with _LOCK:
        os.chdir(cwd)
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + old_path
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            os.chdir(old_cwd)
            os.environ["PATH"] = old_path


def _layout(src_shape: tuple, src_layout: str | None, got: tuple) -> str | None:
    """The artifact tensor's layout, from its shape against the source's."""
    if tuple(got) == tuple(src_shape):
        return src_layout
    if len(src_shape) == 4 and tuple(got) == (src_shape[0], src_shape[2], src_shape[3], src_shape[1]):
        return "NHWC"
    return "?"


def _custom_ops(path: Path) -> list[str]:
    from edgekit.runtime import tflite_interpreter_class

    cls, _ = tflite_interpreter_class()
    it = cls(model_path=str(path))
    return sorted({d.get("op_name", "") for d in it._get_ops_details() if "CUSTOM" in str(d.get("op_name", "")).upper()})


def convert(spec, work: Path, channels_last: bool = False) -> tuple[Path, dict, list, list]:
    """Convert the spec's prepared graph; returns (float .tflite, recipe entry, input layouts, output layouts)."""
    onnx2tf = _import()
    from edgekit.build import by_runtime_name, match_names
    from edgekit.runtime import open_backend

    folder = work / "onnx2tf"
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "model.onnx"
    src.write_bytes(spec.prepared)
    src_in, src_out = spec.io_layouts()
    keep = [s.name for s, lay in zip(spec.inputs, src_in) if lay != "NCHW"]
    log = io.StringIO()
    try:
        with _private_process_state(folder, log):
            onnx2tf.convert(input_onnx_file_path=str(src), output_folder_path=str(folder / "out"),
                            keep_shape_absolutely_input_names=keep or None, copy_onnx_input_output_names_to_tflite=True,
                            output_signaturedefs=True, non_verbose=True)
    except (Exception, SystemExit) as exc:
        sys.stdout.write(log.getvalue())  # into the stage's log (convert.log; --debug shows it)
        last = [ln for ln in log.getvalue().splitlines() if ln.strip()][-1:] or [""]
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else last[0][:200]
        raise ConversionError(f"onnx2tf could not convert {spec.path.name}: {type(exc).__name__}: {why}",
                              "try the onnx-* targets; run with --debug for onnx2tf's log") from None
    sys.stdout.write(log.getvalue())  # into the stage's log: convert.log keeps what onnx2tf said
    out = folder / "out" / "model_float32.tflite"
    if not out.is_file():
        raise ConversionError(f"onnx2tf wrote no float32 TFLite file for {spec.path.name}", "try the onnx-* targets; run with --debug")
    custom = _custom_ops(out)
    if custom:
        raise ConversionError(f"onnx2tf left ops LiteRT cannot run in {spec.path.name}: {', '.join(custom)}",
                              "use the onnx-* targets for this model")
    backend = open_backend(out)
    ins = [backend.inputs[k] for k in match_names(spec.input_names, backend.inputs)]
    outs = [backend.outputs[k] for k in match_names(spec.output_names, backend.outputs)]
    ref = spec.reference_outputs()
    in_layouts = [_layout(s.shape, lay, t.shape) for s, lay, t in zip(spec.inputs, src_in, ins)]
    out_layouts = [_layout(r.shape, lay, t.shape) for r, lay, t in zip(ref, src_out, outs)]
    if "?" in in_layouts + out_layouts:
        bad = [f"{n} {tuple(a)} -> {tuple(t.shape)}" for n, a, t, lay in
               zip(spec.input_names + spec.output_names, [s.shape for s in spec.inputs] + [r.shape for r in ref], ins + outs,
                   in_layouts + out_layouts) if lay == "?"]
        raise ConversionError(f"onnx2tf changed tensor shapes in a way edgekit cannot map back: {'; '.join(bad[:3])}",
                              "use the onnx-* targets for this model")
    feed = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if lay == "NHWC" and src != "NHWC" else x
            for x, lay, src in zip(spec.example_inputs, in_layouts, src_in)]
    arrays = list(by_runtime_name(dict(zip(spec.input_names, feed)), backend.inputs).values())  # the interpreter's order and dtypes
    try:
        got = backend.run(arrays)
    except Exception as exc:
        raise ConversionError(f"onnx2tf's TFLite file for {spec.path.name} does not run: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                              "use the onnx-* targets for this model") from None
    got = [got[k] for k in match_names(spec.output_names, backend.outputs)]
    errors = []
    for r, g, lay, src in zip(ref, got, out_layouts, src_out):
        g = np.asarray(g)
        if lay == "NHWC" and src != "NHWC":
            g = g.transpose(0, 3, 1, 2)
        if r.dtype.kind == "f":
            errors.append(float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0)
    version = getattr(onnx2tf, "__version__", "?")
    recipe = {"converter": "onnx2tf (flatbuffer_direct)", "onnx2tf_version": version,
              "kept_input_shapes": keep, "max_abs_error_vs_onnxruntime": max(errors, default=0.0)}
    if version != PINNED:
        recipe["note"] = f"onnx2tf {version}; edgekit was measured with {PINNED}"
    return out, recipe, in_layouts, out_layouts
