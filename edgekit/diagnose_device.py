"""edgekit diagnose --device: where the device departs from the host, layer by layer, and what to do about it.

Three runs of the same few inputs: the float model (host, the reference), the quantized artifact on the
host and the same artifact on the device. ARM's int8 kernels round some products differently from
x86's, and a difference of one step in an early layer can grow through fifty (EfficientNet-Lite0 at
tflite-int8 on the tests' aarch64 userland: 3 of 100 held-out photos change their top-1 class, logits up to
10 steps apart, while the fp32 artifact matches the host to 2.7e-5). Host-only tools cannot show this.
Measured there on 4 photos: the board departs from the host at the first layer (_conv_stem); the largest
step differences are in 2._expand_conv (105 steps on a few values), as an independent run of the same
int8 model with LiteRT's reference kernels on both machines also found; every layer stays within 0.6 dB
of the host's distance to the float model, so the verdict is "accept".

How the device's tensors are obtained: the host writes a probe copy of the artifact whose model lists the
layer-boundary tensors (what one layer hands the next, plus the input) as extra graph outputs, and the
device's runner (`--tensors`) runs it through edgekit's runtime as in production (LiteRT with its default
XNNPACK delegate: a debugging interpreter with preserve-all-tensors would run the reference kernels, which
are not the ones the device ships with) and returns only those tensors, as int8, compressed. The host runs
the same probe the same way. A few samples (4 by default) are enough to rank layers: each contributes a
whole feature map per tensor.

Each layer is scored as `edgekit diagnose` scores quantization (edgekit.diagnose: the median over channels
of the SQNR, and the noise-to-signal a layer adds over its inputs), here of the device against the host;
beside it, host and device each against the float model. Per layer, the verdict:
- accept: the device rounds differently here but stays as close to the float model as the host (within
  KERNEL_DB): a kernel difference, not a recipe problem;
- recipe: the device is further from the float model than the host here: more precision for this layer
  (int16 activations, the suggested override) shrinks every rounding step 256-fold, the device's too.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit._util import work_dir
from edgekit.diagnose import _float_twin, _layers, _Stats, _tflite_graph, _unrooted, next_move, prepare
from edgekit.errors import DeviceError, UsageError
from edgekit.validate import SQNR_CAP_DB

SAMPLES = 4
KERNEL_DB = 1.0  # the device within this many dB of the host's SQNR against float: a kernel difference to accept


@dataclass
class DeviceLayer:
    name: str
    ops: list[str]
    modules: str
    precision: str
    device_vs_host_db: float  # SQNR of the device's output against the host's (median over channels)
    added: float  # noise-to-signal power the layer adds, device against host (output minus inputs): the ranking key
    max_steps: int  # largest difference between device and host in the layer's outputs, in quantization steps
    differ: float  # share of the layer's output values that differ
    host_vs_float_db: float
    device_vs_float_db: float
    action: str  # same | accept | recipe
    note: str
    override: dict | None = None


@dataclass
class DeviceDiagnosis:
    artifact: str
    target: str
    device: str
    device_info: dict
    host_info: dict
    samples: int
    tensors: int
    transfer_bytes: int
    output: dict  # device against host at the model's output: top-1 agreement, steps
    first_departure: str | None  # the first layer (graph order) where the device's values differ from the host's
    layers: list[DeviceLayer]  # ranked: the largest departure first
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _boundary_tensors(ops, graph_inputs: list[str]) -> list[str]:
    """What one layer hands another (or the model's output), plus the graph inputs: the tensors a layer ranking needs."""
    read_by: dict[str, set[str]] = {}
    for op in ops:
        for t in op.inputs:
            read_by.setdefault(t, set()).add(op.layer)
    out = list(graph_inputs)
    groups: dict[str, list] = {}
    for op in ops:
        groups.setdefault(op.layer, []).append(op)
    for name, members in groups.items():
        outs = [t for o in members for t in o.outputs]
        out += [t for t in outs if read_by.get(t, set()) - {name}] or outs[-1:]
    return list(dict.fromkeys(out))


def _quant_tensors(model: bytes) -> dict[str, dict]:
    """Unrooted tensor name -> name, scale, zero point, dtype in the quantized model."""
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tu

    it = tu.create_tfl_interpreter(model, use_xnnpack=False, preserve_all_tensors=False, num_threads=1)
    return {_unrooted(d["name"]): {"name": d["name"], "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1]),
                                   "dtype": np.dtype(d["dtype"]).name} for d in it.get_tensor_details()}


def probe_model(model: bytes, names: list[str]) -> bytes:
    """The model with `names` appended to its main subgraph's outputs (its signature unchanged, so the runtime
    feeds and reads it as the artifact), so every kernel writes them and the interpreter keeps them."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    m = fb.convert_bytearray_to_object(bytearray(model))
    for b in m.buffers:  # constants stored after the flatbuffer (offset, size) move inline: the flatbuffer's size changes
        if b.offset and b.offset > 1:
            b.data = np.frombuffer(model[b.offset:b.offset + b.size], np.uint8)
            b.offset = b.size = 0
    sg = m.subgraphs[0]
    index = {(t.name.decode() if isinstance(t.name, bytes) else t.name): k for k, t in enumerate(sg.tensors)}
    outs = [int(i) for i in sg.outputs]
    sg.outputs = outs + [index[n] for n in names if index[n] not in outs]
    return bytes(fb.convert_object_to_bytearray(m))


def _host_tensors(folder: Path, inputs: Path, names: Path, dest: Path, threads: int | None) -> dict:
    """The runner's --tensors mode, run here: the host's side of the comparison, the same code as the device's."""
    from edgekit.runner import run_tensors

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = run_tensors(str(folder), str(inputs), str(names), str(dest), threads)
    report = json.loads(buf.getvalue().strip().splitlines()[-1])
    if code != 0:
        raise DeviceError(f"the probe did not run on this host: {report.get('error')}")
    return report


def _dequant(raw: np.ndarray, q: dict) -> np.ndarray:
    if q["scale"] and raw.dtype.kind in "iu":
        return (raw.astype(np.float64) - q["zero_point"]) * q["scale"]
    return raw.astype(np.float64)


def diagnose_on_device(artifact: str | Path, device, *, model=None, weights=None, data=None, samples: int = SAMPLES,
                       data_spec: str | None = None, trust_pickle: bool = False, threads: int | None = None,
                       progress: Callable[[str], None] | None = None) -> DeviceDiagnosis:
    """Float (host), quantized (host) and quantized (device), layer by layer, on the first `samples` inputs."""
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tu

    from edgekit.build import by_runtime_name, calib_samples
    from edgekit.devices.profiles import resolve
    from edgekit.measure import refuse_tensorless_runner, runner_on_device
    from edgekit.runner import runtime_version
    from edgekit.runtime import open_backend
    from edgekit.runtime.manifest import write_manifest

    profile = resolve(device)
    refuse_tensorless_runner(profile, "a per-layer diagnosis on the device")
    if not 1 <= samples <= 64:
        raise UsageError(f"--samples {samples}: a device diagnosis takes 1 to 64 samples", "4 are enough to rank layers")
    art, spec, ds, q = prepare(artifact, model, weights, data, samples, data_spec, trust_pickle)
    if art.manifest.format != "tflite":
        raise UsageError(f"diagnose --device compares TFLite artifacts layer by layer; {art.target} is {art.manifest.format}",
                         "diagnose the tflite-int8 artifact, or run `edgekit eval --device` for this one's outputs")
    say = progress or (lambda _m: None)
    work = Path(work_dir("diagnose"))
    try:
        say("rebuilding the float model")
        fm = _float_twin(art, spec, work, ds)
        ops, graph_inputs, produced = _tflite_graph(fm.path.read_bytes())
        qinfo = _quant_tensors(art.model_path.read_bytes())
        pairs = [(f, qinfo[_unrooted(f)]) for f in _boundary_tensors(ops, graph_inputs) if _unrooted(f) in qinfo]
        names = [qt["name"] for _, qt in pairs]
        probe = work / "probe"
        probe.mkdir()
        (probe / art.manifest.file).write_bytes(probe_model(art.model_path.read_bytes(), names))
        write_manifest(probe, art.manifest)
        np.savez(work / "inputs.npz", **{k: ds.arrays[k] for k in spec.input_names})
        (work / "names.json").write_text(json.dumps(names))
        say(f"host: {len(names)} layer-boundary tensors x {len(ds)} samples")
        host_report = _host_tensors(probe, work / "inputs.npz", work / "names.json", work / "host.npz", threads)
        report = runner_on_device(profile, probe / art.manifest.file, art.manifest,
                                  {"inputs.npz": work / "inputs.npz", "names.json": work / "names.json"},
                                  ["--tensors", "{run}/inputs.npz", "{run}/names.json", "{run}/tensors.npz"],
                                  {"tensors.npz": work / "device.npz"}, threads, "the diagnosis", say)
        say("comparing layer by layer")
        ref_it = tu.create_tfl_interpreter(fm.path.read_bytes(), use_xnnpack=False, preserve_all_tensors=True, num_threads=1)
        float_inputs = open_backend(fm.path).inputs
        dev_host: dict[str, _Stats] = {}
        h_float: dict[str, _Stats] = {}
        d_float: dict[str, _Stats] = {}
        steps: dict[str, tuple[int, int, int]] = {}  # tensor -> (max steps, values differing, values)
        with np.load(work / "host.npz") as hz, np.load(work / "device.npz") as dz:
            for s, sample in enumerate(calib_samples(spec, fm, ds)):
                tu.invoke_interpreter_signature(ref_it, by_runtime_name(sample, float_inputs))
                ref = tu.get_tensor_name_to_content_map(ref_it, dequantize=True)
                for k, (fname, qt) in enumerate(pairs):
                    hr, dr = hz[f"s{s}_t{k}"], dz[f"s{s}_t{k}"]
                    r = ref.get(fname)
                    if hr.shape != dr.shape or r is None or r.shape != hr.shape or r.ndim == 0:
                        continue
                    h, d = _dequant(hr, qt), _dequant(dr, qt)
                    dev_host.setdefault(fname, _Stats()).add(h, d, -1)
                    h_float.setdefault(fname, _Stats()).add(r, h, -1)
                    d_float.setdefault(fname, _Stats()).add(r, d, -1)
                    diff = np.abs(hr.astype(np.int64) - dr.astype(np.int64)) if hr.dtype.kind in "iu" else np.abs(h - d) / (qt["scale"] or 1)
                    m, c, n = steps.get(fname, (0, 0, 0))
                    steps[fname] = (max(m, int(np.ceil(diff.max()))), c + int((diff > 0).sum()), n + diff.size)
            outs_h = [hz[f"s{s}_out0"] for s in range(len(ds))]
            outs_d = [dz[f"s{s}_out0"] for s in range(len(ds))]
        transfer = (work / "device.npz").stat().st_size
        dtypes = {f: qt["dtype"] for f, qt in pairs}
        per_channel = q.get("per_channel", True)
        ranked = _layers(ops, graph_inputs, produced, dev_host, dtypes, per_channel)
        host_layers = {la.name: la for la in _layers(ops, graph_inputs, produced, h_float, dtypes, per_channel)}
        dev_float = {la.name: la for la in _layers(ops, graph_inputs, produced, d_float, dtypes, per_channel)}
        order = list(dict.fromkeys(op.layer for op in ops))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    layers = [_verdict(la, host_layers, dev_float, steps) for la in ranked]
    departed = {la.name for la in layers if la.action != "same"}
    first = next((n for n in order if n in departed), None)
    out_q = art.manifest.outputs[0].quantization
    o_h, o_d = np.concatenate(outs_h).astype(np.int64), np.concatenate(outs_d).astype(np.int64)
    diff = np.abs(o_h - o_d)
    output = {"samples": len(ds), "top1_agreement": float(np.mean(o_h.reshape(len(ds), -1).argmax(1) == o_d.reshape(len(ds), -1).argmax(1))),
              "max_steps": int(diff.max()) if out_q else None, "median_steps": float(np.median(diff)) if out_q else None,
              "identical": bool((diff == 0).all())}
    notes = [f"{len(names)} layer-boundary tensors on {len(ds)} samples, {transfer / 1024:.0f} KiB moved compressed",
             f"both sides ran the artifact through edgekit's runtime ({host_report.get('runtime')}, default kernels) with those tensors "
             "as extra outputs; a layer's figures are its output tensors'"]
    if not departed:
        notes.append(f"the device computed every tensor exactly as this host on these {len(ds)} samples")
    host_info = {"arch": host_report.get("machine"), "runtime": host_report.get("runtime"),
                 "runtime_version": runtime_version(host_report.get("runtime") or "")}
    device_info = {"arch": report.get("machine"), "runtime": report.get("runtime"), "runtime_version": report.get("runtime_version"),
                   "transport": report.get("transport")}
    return DeviceDiagnosis(str(artifact), art.target, profile.name, device_info, host_info, len(ds), len(names), transfer,
                           output, first, layers, notes)


def _verdict(la, host_layers: dict, dev_float: dict, steps: dict) -> DeviceLayer:
    """Same, a kernel difference to accept, or a recipe change, from the layer's distance to the float model on each side."""
    h = host_layers.get(la.name)
    d = dev_float.get(la.name)
    h_db = h.sqnr_out_db if h else SQNR_CAP_DB
    d_db = d.sqnr_out_db if d else SQNR_CAP_DB
    m = max((steps[t][0] for t in la.tensors if t in steps), default=0)
    c = sum(steps[t][1] for t in la.tensors if t in steps)
    n = sum(steps[t][2] for t in la.tensors if t in steps)
    override = None
    if la.sqnr_out_db >= SQNR_CAP_DB and m == 0:
        action, note = "same", "the device's values equal the host's"
    elif d_db >= h_db - KERNEL_DB:
        action = "accept"
        note = (f"kernel difference: the device rounds {c / max(n, 1):.1%} of the values differently (up to {m} steps) and stays as "
                f"close to the float model as the host ({d_db:.1f} vs {h_db:.1f} dB): nothing to change in the recipe")
    else:
        action = "recipe"
        move = next_move(h, host_layers, "tflite") if h else None
        override = asdict(move) if move else None
        note = (f"the device is {h_db - d_db:.1f} dB further from the float model than the host here ({d_db:.1f} vs {h_db:.1f} dB; "
                f"{c / max(n, 1):.1%} of the values differ, up to {m} steps): "
                + ("int16 activations for this layer shrink every rounding step 256-fold, the device's too (override below)"
                   if override else "it is float already: accept the kernel difference"))
    return DeviceLayer(la.name, la.ops, la.modules, la.precision, la.sqnr_out_db, la.added_noise, m,
                       round(c / max(n, 1), 4), h_db, d_db, action, note, override)
