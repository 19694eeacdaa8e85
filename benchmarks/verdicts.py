"""Verdicts against reality: for each real model and target, edgekit's verdict next to what the artifact
really does on a large held-out set (issue 11's "done means").

Rows: the models of benchmarks/coverage.py (its registry, data preparation, references and figure functions are
imported from it), EfficientNet-Lite0 (tests/models/efficientnet_lite0.py, real ImageNet weights), and
deliberately broken variants: the int8 targets of EfficientNet-Lite0, the digits CNN and MTCNN ONet (torch)
calibrated on noise (`--calib random`, rows `NAME+noise`). Some cells break by themselves (nudenet int8,
MiniLM tflite-int8, silero int8): the benchmark does not assume which, it measures.

Per row, three disjoint sets of real samples:
  calibration  (--calib-samples, 32)  `--calib` of the convert;
  small val    (--val-small, 48)      `--val-data`: what a user typically has; edgekit's verdict comes from it;
  large held   (--held, 256)          never seen by the convert: reality is measured on it, here.
Streaming models (silero_vad, kws_gru) are split by whole sequences instead: --val-seqs sequences (3) form the
small validation set (with an array `sequence` in the .npz, and `--state OUT=IN`, so edgekit validates them
closed-loop too); the large held-out set is the other sequences, and reality is measured closed-loop: the
artifact fed its own state over each sequence, as a streaming model runs.

Per row: ONE `edgekit convert MODEL -t T1 -t T2 ... --calib CALIB --val-data SMALL --output/--state ... --json`
subprocess, the output kinds declared as a user would (MTCNN boxes `regression`, ...). Per cell: edgekit's
verdict, its deciding figure with its 95% interval (from `results[i].artifact.validation`), then the artifact
run here (edgekit.runtime.Model) on the large held-out set next to the reference (PyTorch or ONNX Runtime on the
original file), and the cell called healthy or broken by the benchmark's OWN rule for the model (LEGEND; not
edgekit's thresholds). Then a confusion table (healthy / broken x ok / warn / fail / inconclusive / error) and
the disagreements.

    python benchmarks/verdicts.py                                    # the whole matrix (~30-45 min, 2 cores)
    python benchmarks/verdicts.py --models digits,digits+noise,silero_vad --targets onnx-int8,tflite-int8
    python benchmarks/verdicts.py --json /tmp/verdicts.json --keep /tmp/verdicts-artifacts
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


def _load_coverage():
    """benchmarks/coverage.py as a module (by path: `import coverage` could find the coverage.py package)."""
    name = "edgekit_bench_coverage"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("coverage.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before running it: its dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


cov = _load_coverage()  # also puts the checkout and tests/models on sys.path
Arrays = cov.Arrays
MODELS = cov.MODELS

DEFAULT_TARGETS = ("onnx-fp16", "onnx-int8", "tflite-fp16", "tflite-int8")
STATUSES = ("ok", "warn", "fail", "inconclusive", "error")
CONFIDENT = 0.5  # the benchmark's "confident" reference: top-1 probability >= 0.5
MIN_CONFIDENT = 30  # fewer confident samples than this: the class rule falls back to all samples
THREADS = 1  # references and artifacts run here on one thread: on 2 busy cores, 2 threads spin (MiniLM: 1 s a call, not 0.07)

LEGEND = {
    "class": "top-1 agreement with the reference on the held-out samples where the reference is confident "
             "(top-1 softmax probability >= 0.5; all samples when fewer than 30 are) >= 0.90",
    "decision": "two-way decisions (face / non-face, speech / pause at 0.5): at most 5% flip (agreement >= 0.95)",
    "rotate": "PP-OCR orientation: the pipeline's own decision, rotate a line when p(180 degrees) > 0.9 (rapidocr's "
              "config.yaml cls_thresh): at most 5% flip",
    "embedding": "mean cosine >= 0.98 and nearest-neighbour (retrieval within the held-out set) agreement >= 0.80",
    "boxes": "MTCNN box regression: mean cosine of the 4 box offsets on the reference's faces (face probability >= 0.5) >= 0.95",
    "map": "detector maps (PP-OCR text probability, MTCNN PNet face probability): mean cosine per sample >= 0.95",
    "nudenet": "nudenet's 18 class-score rows (output0 rows 4-21): mean cosine per sample >= 0.90",
    "ctc": "PP-OCR recogniser: CTC argmax agreement per timestep >= 0.95 (a few wrong characters per line at most)",
    "closed loop": "streaming models are measured closed-loop: the artifact fed its own state over each held-out sequence",
}


# ------------------------------------------------------------------ reality: the benchmark's own rules

@dataclass
class Rule:
    """A figure measured on the large held-out set (a coverage.py figure function, or one below) and the line
    the benchmark draws: healthy when fig[key] >= line (or <= line with below=True)."""

    figure: Callable[[list, list], dict]
    line: float
    key: str = "value"
    below: bool = False
    legend: str = "class"

    def apply(self, got: list, ref: list) -> dict:
        f = self.figure(got, ref)
        v = f[self.key]
        f["healthy"] = bool(v <= self.line if self.below else v >= self.line)
        f["rule"] = f"{self.key} {'<=' if self.below else '>='} {self.line:g} ({self.legend})"
        return f


def confident_top1(k: int, what: str, probs: bool = False) -> Callable:
    """Top-1 agreement of output k (rows over its last axis) on the samples where the reference is confident."""
    from edgekit.validate import softmax

    def fig(got: list, ref: list) -> dict:
        g, r = cov._same_size(got[k], ref[k], k), ref[k]
        g2, r2 = g.reshape(-1, r.shape[-1]).astype(np.float64), r.reshape(-1, r.shape[-1]).astype(np.float64)
        p = r2 if probs else softmax(r2)
        same = g2.argmax(1) == r2.argmax(1)
        conf = p.max(1) >= CONFIDENT
        on = conf if conf.sum() >= MIN_CONFIDENT else np.ones_like(conf)
        v = float(same[on].mean())
        where = "confident" if on is conf else "all (few confident)"
        return {"figure": "agr", "value": v, "n": int(on.sum()), "agreement_all": float(same.mean()), "of": what,
                "text": f"top-1 agr {v:.3f} on {int(on.sum())} {where}"}
    return fig


def decisions(k: int, what: str, column: int | None = None, threshold: float = 0.5) -> Callable:
    """Agreement of two-way decisions at `threshold`: output k's value, or its column `column` (a 2-way softmax)."""
    def fig(got: list, ref: list) -> dict:
        g, r = cov._same_size(got[k], ref[k], k), ref[k]
        if column is not None:
            g, r = g.reshape(-1, r.shape[-1])[:, column], r.reshape(-1, r.shape[-1])[:, column]
        p, q = g.reshape(-1), r.reshape(-1)
        flips = float(np.mean((p > threshold) != (q > threshold)))
        return {"figure": "decisions", "value": 1 - flips, "flip_share": flips, "n": int(q.size), "of": what,
                "max_abs_error": float(np.abs(p - q).max()), "text": f"{flips:.1%} of {q.size} decisions flip"}
    return fig


def cosine_on(k: int, what: str, view=None, blank=None, mask: Callable | None = None) -> Callable:
    """coverage.py's cosine figure, with the sample count, optionally only on the samples mask(ref) selects."""
    def fig(got: list, ref: list) -> dict:
        keep = np.ones(len(ref[k]), bool) if mask is None else mask(ref)
        sub = lambda outs: [o[keep] if j == k else o for j, o in enumerate(outs)]  # noqa: E731
        f = cov.cosine(k, what, view, blank)(sub(got), sub(ref)) if keep.any() else {"figure": "cos", "value": float("nan"), "text": "cos -"}
        return {**f, "n": int(keep.sum()), "text": f"{f['text']} on {int(keep.sum())}"}
    return fig


def nn_agreement(k: int) -> Callable:
    """Share of held-out samples whose nearest neighbour (cosine, among the others) is the same for the artifact
    as for the reference: what retrieval with the embedding returns."""
    def nn(e: np.ndarray) -> np.ndarray:
        e = cov._flat(e, len(e))
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    def fig(got: list, ref: list) -> dict:
        g, r = cov._same_size(got[k], ref[k], k), ref[k]
        v = float(np.mean(nn(g) == nn(r)))
        return {"figure": "nn", "value": v, "n": len(r), "text": f"NN agr {v:.3f}"}
    return fig


def ctc_n(k: int, classes: int, what: str) -> Callable:
    def fig(got: list, ref: list) -> dict:
        f = cov.ctc(k, classes, what)(got, ref)
        return {**f, "n": int(np.size(ref[k]) // classes), "text": f"{f['text']} ({f['lines_identical']:.0%} lines identical)"}
    return fig


def faces(k: int) -> Callable[[list], np.ndarray]:
    """The samples where the reference's face probability (column 1 of output k) is >= 0.5."""
    return lambda ref: ref[k].reshape(len(ref[k]), -1)[:, 1] >= 0.5


# ------------------------------------------------------------------ data: three disjoint sets per row

@dataclass
class Split:
    calib: Arrays
    val: Arrays  # the small validation set (--val-data)
    held: Arrays  # the large held-out set (reality)
    val_seq: np.ndarray | None = None  # streaming: sequence id per sample, samples in time order
    held_seq: np.ndarray | None = None
    about: str = ""


def _take(a: Arrays, lo: int, hi: int | None = None) -> Arrays:
    return {k: v[lo:hi] for k, v in a.items()}


def split_after(case_data: Callable[[int, int], tuple[Arrays, Arrays]], about: str = "") -> Callable[[int, int, int], Split]:
    """A coverage.py data function (calibration, held-out), its held-out part cut in two: the first v samples
    are the small validation set, the next h the large held-out set."""
    def data(n: int, v: int, h: int) -> Split:
        calib, rest = case_data(n, v + h)
        return Split(calib, _take(rest, 0, v), _take(rest, v, v + h), about=about)
    return data


def _effnet_data(n: int, v: int, h: int) -> Split:
    import efficientnet_lite0 as eff

    rest = {"image": eff.photos(v + h, split="val")}
    return Split({"image": eff.photos(n, split="calib")}, _take(rest, 0, v), _take(rest, v),
                 about=f"calibration: {len(eff.CALIB_PHOTOS)} photos and views of them; validation and held-out: other views "
                       f"of the {len(eff.VAL_PHOTOS)} other photos")


def _face_data(size: int) -> Callable[[int, int, int], Split]:
    """MTCNN (torch) inputs: LFW faces, LFW backgrounds and colour photo crops (1:1:2), in turn; the first n
    calibrate, the next v validate, the next h are held out (coverage.py's split holds only 150 out)."""
    def data(n: int, v: int, h: int) -> Split:
        from mtcnn_rnet import lfw_subset, photo_crops

        x, y = lfw_subset(size=size)
        crops = photo_crops(200, size=size)
        pool = np.stack([x[y == 1], x[y == 0], crops[0::2], crops[1::2]], 1).reshape(-1, 3, size, size)
        if n + v + h > len(pool):
            raise ValueError(f"{n} + {v} + {h} samples asked, the pool has {len(pool)}")
        return Split({"x": pool[:n]}, {"x": pool[n:n + v]}, {"x": pool[n + v:n + v + h]})
    return data


def _silero_data(n: int, seqs: int, _h: int) -> Split:
    """One stream of speech and pauses through ONNX Runtime (onnx_files._silero_stream, states fed back), cut
    into sequences of 100 calls: calibration from the first quarter (every 4th call), `seqs` sequences of
    small validation from the middle, the held-out set = all later sequences."""
    import onnx_files as of

    x, states, _ = of._silero_stream(2400)
    seg = 100
    count = len(x) // seg
    x, states, ids = x[:count * seg, 0], states[:count * seg], np.repeat(np.arange(count), seg)
    q = (count // 4) * seg
    pick = np.linspace(0, q // 4 - 1, n).round().astype(int) * 4
    first, last = q, q + seqs * seg
    every = {"input": x, "state": states}
    return Split({k: a[pick] for k, a in every.items()}, _take(every, first, last), _take(every, last),
                 ids[first:last], ids[last:], about=f"{count} sequences of {seg} calls (3.2 s each)")


def _kws_data(n: int, seqs: int, _h: int) -> Split:
    """Calibration as coverage.py's (every 5th closed-loop step of every other held-out utterance); validation
    = `seqs` whole other utterances (every step, its state from the reference's closed loop), spread over
    keywords and other words; held out = the remaining other utterances."""
    import kws_gru

    calib, _ = cov._kws_data(n, 1)
    model, others = kws_gru.build(), kws_gru.sequences()[1::2]
    val_idx = set(np.linspace(0, len(others) - 1, seqs + 2).round().astype(int)[1:-1].tolist())

    def steps(part):
        f, s = kws_gru.state_samples(model, part, every=1)
        return {"frame_features": f[:, 0], "h": s}, np.repeat(np.arange(len(part)), kws_gru.T)

    val, vs = steps([others[i] for i in sorted(val_idx)])
    held, hs = steps([s for i, s in enumerate(others) if i not in val_idx])
    return Split(calib, val, held, vs, hs, about=f"{kws_gru.T} frames per utterance")


# ------------------------------------------------------------------ the rows

@dataclass
class Row:
    name: str
    case: "cov.Case"  # source, about, reference, input flags (coverage.py's registry)
    data: Callable[[int, int, int], Split]
    rules: list[Rule]
    declare: list[str] = field(default_factory=list)  # --output / --state, as a user would declare them
    calib: str = "data"  # or "random": the broken variant
    stream: dict[str, int] = field(default_factory=dict)  # state input -> output index fed back into it
    held_max: int | None = None  # a cap on the large held-out set where running it is slow (said in the output)

    @property
    def streaming(self) -> bool:
        return bool(self.stream)


def rows() -> dict[str, Row]:
    c = cov.cases()
    effnet = cov.Case("efficientnet_lite0", f"{MODELS / 'efficientnet_lite0.py'}:build",
                      "EfficientNet-Lite0, real ImageNet weights, logits [1, 1000] (declared class by its factory); natural photos",
                      None, cov._torch_reference(_effnet_build), None)
    dec = "decision"
    out = [
        Row("digits", c["digits"], split_after(c["digits"].data), [Rule(confident_top1(0, "logits"), 0.9)],
            ["--output", "output=class"]),
        Row("efficientnet_lite0", effnet, _effnet_data, [Rule(confident_top1(0, "logits"), 0.9)]),
        Row("minilm", c["minilm"], split_after(c["minilm"].data),
            [Rule(cosine_on(0, "sentence embedding"), 0.98, legend="embedding"), Rule(nn_agreement(0), 0.8, legend="embedding")],
            ["--output", "output=embedding"]),
        Row("kws_gru", c["kws_gru"], _kws_data, [Rule(confident_top1(0, "keyword logits, closed loop"), 0.9)],
            ["--output", "output_0=class", "--state", "output_1=h"], stream={"h": 1}),
        Row("mtcnn_rnet_torch", c["mtcnn_rnet_torch"], _face_data(24),
            [Rule(decisions(1, "face decisions", column=1), 0.95, legend=dec),
             Rule(cosine_on(0, "boxes on faces", mask=faces(1)), 0.95, legend="boxes")],
            ["--output", "output_0=regression", "--output", "output_1=class:probs"]),
        Row("mtcnn_onet_torch", c["mtcnn_onet_torch"], _face_data(48),
            [Rule(decisions(2, "face decisions", column=1), 0.95, legend=dec),
             Rule(cosine_on(0, "boxes on faces", mask=faces(2)), 0.95, legend="boxes")],
            ["--output", "output_0=regression", "--output", "output_1=regression", "--output", "output_2=class:probs"]),
        Row("nudenet_320n", c["nudenet_320n"], split_after(c["nudenet_320n"].data),
            [Rule(cosine_on(0, "class scores (output0 rows 4-21)", lambda a: a.reshape(len(a), 22, -1)[:, 4:]), 0.9, legend="nudenet")]),
        Row("rapidocr_det", c["rapidocr_det"], split_after(c["rapidocr_det"].data),
            [Rule(cosine_on(0, "text probability map (both blank counts 1.0)", blank=0.05), 0.95, legend="map")],
            ["--output", "sigmoid_0.tmp_0=probability:0.3"], held_max=96),
        Row("rapidocr_rec", c["rapidocr_rec"], split_after(c["rapidocr_rec"].data),
            [Rule(ctc_n(0, 6625, "CTC characters per timestep"), 0.95, legend="ctc")],
            ["--output", "softmax_11.tmp_0=class:probs"]),
        Row("rapidocr_cls", c["rapidocr_cls"], split_after(c["rapidocr_cls"].data),
            [Rule(decisions(0, "rotations (p(180) > 0.9)", column=1, threshold=0.9), 0.95, legend="rotate")],
            ["--output", "save_infer_model/scale_0.tmp_1=class:probs"]),
        Row("mtcnn_pnet", c["mtcnn_pnet"], split_after(c["mtcnn_pnet"].data),
            [Rule(cosine_on(1, "face-probability map", lambda a: a.reshape(len(a), 55, 75, 2)[..., 1]), 0.95, legend="map")],
            ["--output", "conv2d_4=regression", "--output", "softmax=class:probs"]),
        Row("mtcnn_onet", c["mtcnn_onet"], split_after(c["mtcnn_onet"].data),
            [Rule(decisions(2, "face decisions", column=1), 0.95, legend=dec),
             Rule(cosine_on(0, "boxes on faces", mask=faces(2)), 0.95, legend="boxes")],
            ["--output", "dense_5=regression", "--output", "dense_6=regression", "--output", "softmax_2=class:probs"]),
        Row("silero_vad", c["silero_vad"], _silero_data, [Rule(decisions(0, "speech decisions, closed loop"), 0.95, legend=dec)],
            ["--output", "output=probability", "--state", "stateN=state"], stream={"state": 1}),
    ]
    for base in ("efficientnet_lite0", "digits", "mtcnn_onet_torch"):  # broken on purpose: int8 calibrated on noise
        r = next(x for x in out if x.name == base)
        out.insert(out.index(r) + 1, Row(f"{base}+noise", r.case, r.data, r.rules, r.declare, calib="random"))
    return {r.name: r for r in out}


def _effnet_build():
    import efficientnet_lite0 as eff

    return eff.build()


# ------------------------------------------------------------------ one row: one convert, then reality per cell

def closed_loop(path: str, held: Arrays, seq: np.ndarray, stream: dict[str, int]) -> list[np.ndarray]:
    """The artifact run as a streaming model runs: over each sequence in time order, starting from the data's
    state at the sequence's first sample, each call fed the state the artifact itself returned."""
    from edgekit.runtime import Model, combine_calls

    m = Model(path, THREADS)
    names = [i.name for i in m.inputs]
    chunks = []
    for s in dict.fromkeys(seq.tolist()):
        idx = np.flatnonzero(seq == s)
        state = {k: held[k][idx[0]] for k in stream}
        for t in idx:
            outs = m(*[state[k] if k in state else held[k][t:t + 1] for k in names])
            state = {k: outs[j] for k, j in stream.items()}
            chunks.append(outs)
    return combine_calls(chunks, 1)


def _validation_file(path: Path, arrays: Arrays, seq: np.ndarray | None) -> Path:
    if seq is None:
        return cov._save(arrays, path)
    np.savez(path.with_suffix(".npz"), **arrays, sequence=seq)
    return path.with_suffix(".npz")


RETRYABLE = ("ImportError", "SyntaxError", "cannot import name", "IndentationError", "NameError")


def convert(row: Row, targets: list[str], args: list[str], folder: Path, timeout: float, retries: int = 2) -> dict:
    """coverage.run_convert, retried after a minute when the run died on a half-edited edgekit file."""
    source = row.case.model()
    for attempt in range(retries + 1):
        run = cov.run_convert(source, targets, args, folder, timeout)
        said = (folder / "convert.stderr").read_text() if run["result"] is None else \
            " ".join(str(r.get("error") or "") for r in run["result"]["results"])  # one target's build can die too
        if attempt == retries or not any(w in said for w in RETRYABLE):
            return {**run, "attempts": attempt + 1}
        print(f"   ({row.name}: the convert died on {run['error'][:100]!r}; retrying in 60 s)", flush=True)
        time.sleep(60)
    return run


def deciding(v: dict, target: dict) -> dict:
    """The check that decided the verdict: edgekit's own per-output checks (edgekit.validate._checks with the
    target's thresholds, closed-loop figures included), the worst status first; among equals one with an
    interval. Falls back to edgekit's reasons / headline when those internals move."""
    try:
        from edgekit.targets import target_from_dict
        from edgekit.validate import RANK, _checks

        t = target_from_dict(target, "manifest").validation
        found = [c for x in v.get("outputs") or [] for c in _checks(x, t)]
        found += [c for x in v.get("closed_loop") or [] for c in _checks({**x, "name": f"{x['name']} (closed loop)"}, t)]
        if found:
            s, why = max(found, key=lambda c: (RANK[c[0]], "95% CI" in c[1]))
            return {"status": s, "text": why}
    except Exception as exc:  # noqa: BLE001  (edgekit is being edited meanwhile)
        if v.get("reasons"):
            return {"status": v.get("status"), "text": v["reasons"][0], "note": f"{type(exc).__name__}: {exc}"}
    from edgekit.validate import headline

    return {"status": v.get("status"), "text": headline(v)}


def run_row(row: Row, targets: list[str], n: int, v: int, h: int, seqs: int, work: Path, timeout: float) -> dict:
    targets = [t for t in targets if "int8" in t] if row.calib == "random" else targets
    folder = work / row.name
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"model": row.name, "about": row.case.about, "calib": row.calib, "declared": row.declare, "cells": {}}
    if not targets:
        return out
    capped = row.held_max is not None and h > row.held_max
    h = min(h, row.held_max or h)
    t0 = time.perf_counter()
    try:
        d = row.data(n, seqs if row.streaming else v, h)
        ref = row.case.reference(d.held)
    except Exception as exc:  # the data or reference could not be made: the whole row errors
        return cov.failed_row(out, targets, f"data/reference: {type(exc).__name__}: {exc}")
    count = lambda a: len(next(iter(a.values())))  # noqa: E731
    split = "; ".join(x for x in (d.about, f"held-out set capped at {h} (slow to run)" if capped else "") if x)
    out.update(prep_s=time.perf_counter() - t0, split=split,
               samples={"calib": n if row.calib == "random" else count(d.calib), "val": count(d.val), "held": count(d.held)})
    if row.streaming:
        out["samples"].update(val_sequences=len(set(d.val_seq.tolist())), held_sequences=len(set(d.held_seq.tolist())))
    calib = "random" if row.calib == "random" else str(cov._save(d.calib, folder / "calib"))
    val = _validation_file(folder / "val", d.val, d.val_seq)
    run = convert(row, targets, [*row.case.flags, *row.declare, "--calib", calib, "--calib-samples", str(n),
                                 "--val-data", str(val)], folder, timeout)
    out.update(command=run["command"], rc=run["rc"], wall_s=run["wall_s"], attempts=run["attempts"])
    if run["result"] is None:
        return cov.failed_row(out, targets, run["error"])

    def describe(a: dict, path: str) -> dict:
        v = a.get("validation") or {}
        return dict(path=path, reasons=v.get("reasons") or [], deciding=deciding(v, a["target"]),
                    validation_data=v.get("validation_data"), validation=v)

    def measure(path: str) -> dict:
        got = closed_loop(path, d.held, d.held_seq, row.stream) if row.streaming else cov.run_artifact(path, d.held, THREADS)
        figs = [rule.apply(got, ref) for rule in row.rules]
        return {"reality": figs, "healthy": all(f["healthy"] for f in figs)}

    out["cells"] = cov.artifact_cells(run["result"], targets, folder, describe, measure, "reality_error")
    return out


# ------------------------------------------------------------------ printing

def truth(c: dict) -> str:
    return {True: "healthy", False: "broken"}.get(c.get("healthy"), "n/a")


def match(c: dict) -> str:
    """= verdict and reality agree (ok & healthy, fail & broken); X they contradict (ok & broken, fail & healthy);
    ~ neither (warn, inconclusive, or no measure)."""
    s, t = c["status"], truth(c)
    if (s, t) in (("ok", "healthy"), ("fail", "broken")):
        return "="
    if (s, t) in (("ok", "broken"), ("fail", "healthy")):
        return "X"
    return "~"


def print_row(row: dict) -> None:
    n = row.get("samples") or {}
    size = f"; calib {'noise ' if row['calib'] == 'random' else ''}{n['calib']}, val {n['val']}, held {n['held']}" if n else ""
    if "val_sequences" in n:
        size += f" (sequences: val {n['val_sequences']}, held {n['held_sequences']})"
    print(f"\n## {row['model']}: {row['about']}" + (" [calibrated on noise: --calib random]" if row["calib"] == "random" else ""))
    print(f"   declared: {' '.join(row['declared']) or '-'}{size}" + (f"; {row['split']}" if row.get("split") else ""))
    if row.get("command"):
        print(f"   exit {row['rc']}, {row['wall_s']:.0f} s wall (data + reference {row.get('prep_s', 0):.0f} s)"
              + (f", {row['attempts']} attempts" if row.get("attempts", 1) > 1 else ""))
    elif row.get("error"):
        print(f"   {row['error']}")
    for t, c in row["cells"].items():
        if "deciding" not in c:  # no artifact
            print(f"   {t:<12} {c['status']:<5} [{cov._short(c.get('error', ''), 14)}] | reality n/a", flush=True)
            continue
        several = len(c.get("reality", [])) > 1  # then say which rule broke
        real = "; ".join(f"{f['text']} (n={f.get('n', '?')}){' BROKEN' if several and not f['healthy'] else ''}" for f in c.get("reality", [])) \
            or f"reality error: {c.get('reality_error', '')}"
        print(f"   {t:<12} {c['status']:<5} [{c['deciding']['text']}] | {real} | {truth(c)} {match(c)}", flush=True)


def matrix(rows: list[dict], targets: list[str]) -> str:
    """Markdown: a row per model, a column per target; each cell `verdict mark reality`."""
    out = ["| model | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for r in rows:
        cells = [f"{c['status']} {match(c)} {truth(c)}" if (c := r["cells"].get(t)) else "" for t in targets]
        out.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def confusion(rows: list[dict]) -> dict[str, dict[str, list[str]]]:
    """reality (healthy / broken / n/a) -> verdict -> the cells, named MODEL/TARGET."""
    cells = [(f"{r['model']}/{t}", c) for r in rows for t, c in r["cells"].items()]
    cols = [*STATUSES, *sorted({c["status"] for _, c in cells} - set(STATUSES))]
    kinds = [k for k in ("healthy", "broken", "n/a") if any(truth(c) == k for _, c in cells)]
    return {k: {s: [name for name, c in cells if truth(c) == k and c["status"] == s] for s in cols} for k in kinds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_rows = rows()

    def more(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--val-small", type=int, default=48, help="small validation set (--val-data), as users typically have")
        ap.add_argument("--held", type=int, default=256, help="large held-out set reality is measured on (never seen by the convert)")
        ap.add_argument("--val-seqs", type=int, default=3, help="streaming models: whole sequences in the small validation set")

    args, names, targets = cov.matrix_args(ap, list(all_rows), DEFAULT_TARGETS, more,
                                           "comma-separated (NAME+noise rows keep the int8 ones)")
    import torch

    torch.set_num_threads(THREADS)  # the PyTorch references (the convert subprocesses keep their defaults)
    host = cov.machine()
    print(f"# edgekit verdicts vs reality: {len(names)} rows x {len(targets)} targets ({', '.join(targets)}); per row "
          f"{args.calib_samples} calibration, {args.val_small} small-validation (--val-data), {args.held} held-out samples, "
          f"disjoint (streaming: {args.val_seqs} validation sequences, the others held out)\n# {host}", flush=True)
    results, total, digests = cov.run_matrix(
        names, lambda name, work: run_row(all_rows[name], targets, args.calib_samples, args.val_small, args.held, args.val_seqs,
                                          work, args.timeout), print_row, args.keep, "edgekit-verdicts-")

    print("\nPer cell: target | edgekit's verdict [the check that decided it, as edgekit states it: figure, samples, 95% interval] "
          "| reality: the artifact on the large held-out set against the reference (figure, n) | healthy / broken by the rule "
          "below, then `=` verdict and reality agree (ok & healthy, fail & broken), `X` they contradict (ok & broken, "
          "fail & healthy), `~` neither (warn, inconclusive, error).")
    print("Reality rules: the benchmark's OWN lines, fixed in this script per kind of output (not edgekit's thresholds):")
    for k, v in LEGEND.items():
        print(f"- {k}: {v}")
    print()
    print(matrix(results, targets))
    table = confusion(results)
    cols = list(next(iter(table.values()), {s: [] for s in STATUSES}))
    print("\n| reality \\ verdict | " + " | ".join(cols) + " | total |\n|---|" + "---|" * (len(cols) + 1))
    for k, per in table.items():
        print(f"| {k} | " + " | ".join(str(len(per[s])) for s in cols) + f" | {sum(map(len, per.values()))} |")
    dis = {"broken but ok (false pass)": table.get("broken", {}).get("ok", []),
           "healthy but fail (false fail)": table.get("healthy", {}).get("fail", []),
           "broken but only warn / inconclusive": table.get("broken", {}).get("warn", []) + table.get("broken", {}).get("inconclusive", []),
           "healthy but warn / inconclusive": table.get("healthy", {}).get("warn", []) + table.get("healthy", {}).get("inconclusive", [])}
    print("\nDisagreements:")
    for k, v in dis.items():
        print(f"- {k}: {', '.join(v) if v else 'none'}")
    cells = [c for r in results for c in r["cells"].values()]
    counts = {s: sum(c["status"] == s for c in cells) for s in cols}
    agree = sum(match(c) == "=" for c in cells)
    print(f"\ncells: {len(cells)} ({' / '.join(f'{v} {k}' for k, v in counts.items())}); "
          f"{sum(truth(c) == 'healthy' for c in cells)} healthy, {sum(truth(c) == 'broken' for c in cells)} broken; "
          f"verdict and reality agree outright on {agree}, contradict on {sum(match(c) == 'X' for c in cells)}; "
          f"total {total / 60:.1f} min; machine: {host}")
    print(cov.digest_line(digests))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "machine": host, "targets": targets, "calib_samples": args.calib_samples, "val_small": args.val_small,
            "held": args.held, "val_seqs": args.val_seqs, "total_seconds": total, "source_digest": list(digests),
            "legend": LEGEND, "counts": counts, "confusion": table, "disagreements": dis, "rows": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
