"""Validation on every convert: the artifact against the source model on held-out inputs, judged per
output by what the output means.

Why per output, and why intervals (issue 11, measured on real models):
- A 2-D output is not a classifier because it is 2-D. A sentence embedding [1, 384] scored as a
  384-class classifier failed a healthy dynamic-int8 MiniLM (cosine 0.998); a face net's box
  regression scored as a classifier gave `warn: top-1 95.8%` while the face decisions agreed 100%.
  Each output has a kind: `class` (scores over an axis: logits, or probabilities), `embedding`,
  `regression`, `probability` (independent probabilities, a decision at a threshold), `state` (fed
  back by a streaming model) or `tensor` (nothing known). Kinds are declared (`--output NAME=KIND`,
  `output_spec` on the factory) or inferred only where the data proves it: rows that are probability
  distributions are class scores, rows of unit L2 norm are embeddings, integer labels that index the
  only 2-D output make it the class output; anything else is a `tensor`, judged by SQNR.
- SQNR of class scores does not tell healthy from broken: 1000-class logits of a healthy int8
  MobileNetV2 had 9.4 dB, a noise-calibrated one 13.1 dB with 0.275 agreement. Class outputs are judged
  by decision agreement, on the samples where the reference is confident (top-1 probability >= 0.5)
  when there are enough of them: near-ties flip under any rounding and say nothing about the artifact.
- Outputs with many decisions per sample (a text line's timesteps, a map's pixels, a detector's windows) are
  judged where either side decides something other than the background, and counted per sample (bootstrap
  interval over samples): counted element by element, a broken PP-OCR det int8 showed "99.3% of 14,745,600".
- Every agreement carries its sample count and a 95% Wilson interval. A figure fails only when even
  the interval's upper end is below the fail line; with too few samples to ever show it above the
  fail line (fewer than ~50 for a 0.93 line) the verdict is `inconclusive` (exit 0, said loudly),
  never a failure because one of 12 samples flipped. Float targets whose outputs match to >= 40 dB are
  not judged on decisions at all: at that precision a flip can only be a tie.
The worst output decides, and its name is in the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgekit.errors import UsageError
from edgekit.runtime.manifest import OUTPUT_KINDS
from edgekit.targets import Thresholds

SQNR_CAP_DB = 200.0  # identical outputs: reported as 200 dB rather than infinity (JSON has no inf)
IDENTICAL_DB = 40.0  # outputs this close are numerically the same model: decisions are not judged
CONFIDENT = 0.5  # class outputs: the reference's top-1 probability that makes a sample "confident"
Z95 = 1.959964
KINDS = OUTPUT_KINDS
LABELS_UNUSED = "the data has labels, but no output is a class output, so they are unused: declare it with --output NAME=class"
RANK = {"ok": 0, "warn": 1, "inconclusive": 2, "fail": 3}


@dataclass(frozen=True)
class OutputKind:
    """What one output means, and how edgekit knows."""

    kind: str = "tensor"
    inferred: bool = False  # True: edgekit concluded it from the reference outputs (and says why)
    why: str = ""
    probs: bool = False  # class: the scores are probabilities already (no softmax)
    threshold: float = 0.5  # probability: the decision threshold
    feeds: str = ""  # state: the input this output is fed back into

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "inferred": self.inferred}
        if self.why:
            d["why"] = self.why
        if self.kind == "class":
            d["probs"] = self.probs
        if self.kind == "probability":
            d["threshold"] = self.threshold
        if self.feeds:
            d["feeds"] = self.feeds
        return d

    def label(self) -> str:
        return f"{self.kind} (inferred)" if self.inferred else self.kind


def parse_output(text: str) -> tuple[str, OutputKind]:
    """`--output NAME=KIND[:OPTION]`: class, class:probs, embedding, regression, probability[:THRESHOLD], state, tensor."""
    name, sep, rest = text.partition("=")
    kind, _, opt = rest.partition(":")
    kind, opt = kind.strip(), opt.strip()
    if not sep or not name.strip() or kind not in KINDS:
        raise UsageError(f"bad --output {text!r}", f"write NAME=KIND with KIND one of {', '.join(KINDS)} "
                         "(class:probs for probabilities, probability:0.3 for a threshold)")
    if kind == "class":
        if opt not in ("", "probs", "logits"):
            raise UsageError(f"bad --output {text!r}: class takes :probs or :logits", "e.g. --output softmax=class:probs")
        return name.strip(), OutputKind("class", probs=opt == "probs")
    if kind == "probability" and opt:
        try:
            t = float(opt)
        except ValueError:
            t = -1.0
        if not 0.0 < t < 1.0:
            raise UsageError(f"bad --output {text!r}: the threshold must be between 0 and 1", "e.g. --output speech=probability:0.5")
        return name.strip(), OutputKind("probability", threshold=t)
    if opt:
        raise UsageError(f"bad --output {text!r}: {kind} takes no option", f"write {name.strip()}={kind}")
    return name.strip(), OutputKind(kind)


def parse_state(text: str) -> tuple[str, str]:
    """`--state OUT=IN`: output OUT is fed back into input IN on the next call."""
    out, sep, inp = text.partition("=")
    if not sep or not out.strip() or not inp.strip():
        raise UsageError(f"bad --state {text!r}", "write OUTPUT=INPUT, e.g. --state stateN=state")
    return out.strip(), inp.strip()


def declared_kinds(texts: Sequence[str] = (), states: Sequence[str] = (), spec_attr=None) -> dict[str, OutputKind]:
    """Kinds declared on the command line (`--output`, `--state`) over the model's own `output_spec`."""
    kinds: dict[str, OutputKind] = {}
    for d in spec_attr or ():
        if isinstance(d, dict) and "name" in d and "kind" in d:
            text = f"{d['name']}={d['kind']}" + (":probs" if d.get("probs") else "") + (f":{d['threshold']}" if "threshold" in d else "")
            n, k = parse_output(text)
            kinds[n] = k
    for text in texts:
        n, k = parse_output(text)
        kinds[n] = k
    for text in states:
        out, inp = parse_state(text)
        kinds[out] = OutputKind("state", feeds=inp)
    return kinds


# ---------------------------------------------------------------------------- inference

def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).astype(np.float64)


def infer_kinds(names: Sequence[str], ref: Sequence[np.ndarray], labels: np.ndarray | None,
                declared: dict[str, OutputKind] | None = None) -> list[OutputKind]:
    """Each output's kind: declared, else inferred where the reference outputs prove it, else tensor."""
    declared = declared or {}
    unknown = [n for n in declared if n not in names]
    if unknown:
        raise UsageError(f"--output/--state name {unknown[0]!r} is not an output of the model", f"its outputs: {', '.join(names)}")
    kinds: list[OutputKind | None] = [declared.get(n) for n in names]
    for i, r in enumerate(ref):
        if kinds[i] is not None or r.ndim < 2 or r.shape[-1] < 2 or not r.size or r.dtype.kind != "f":
            continue
        rows = _rows(r)
        if np.all(rows >= -1e-6) and np.all(rows <= 1 + 1e-6) and np.allclose(rows.sum(1), 1.0, atol=1e-3):
            kinds[i] = OutputKind("class", True, "every row is a probability distribution", probs=True)
        elif r.ndim == 2 and r.shape[-1] >= 8 and np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-3):
            kinds[i] = OutputKind("embedding", True, "every row has unit L2 norm")
    if labels is not None and not any(k is not None and k.kind == "class" for k in kinds) and np.issubdtype(np.asarray(labels).dtype, np.integer):
        fits = [i for i, r in enumerate(ref) if kinds[i] is None and r.ndim == 2 and r.shape[1] > int(np.max(labels)) and r.shape[1] >= 2]
        if len(fits) == 1:
            kinds[fits[0]] = OutputKind("class", True, "the only 2-D output the labels index")
    return [k or OutputKind("tensor") for k in kinds]


# ---------------------------------------------------------------------------- figures

def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))


def cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.where(np.all(a == b, axis=1), 1.0, 0.0))


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean(cosines(ref, out))) if len(ref) else 1.0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (exact enough at small n, never outside [0, 1])."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def proportion(hits: np.ndarray) -> dict:
    n, k = int(hits.size), int(np.sum(hits))
    lo, hi = wilson(k, n)
    return {"value": k / n if n else None, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def confident_line(classes: int) -> float:
    """The reference's top-1 probability that makes a decision "confident": 0.5 (more likely than all the others
    together), and 0.75 for a two-way output, where every decision is >= 0.5. With 0.5 there, MTCNN PNet's int8
    face windows "disagreed" on 15% (every flip a window the reference scored 0.5-0.75) and PP-OCR's orientation
    classifier on 8-10% (all below 0.75; the OCR pipeline itself acts only above 0.9)."""
    return 0.75 if classes == 2 else CONFIDENT


def _per_sample(r: np.ndarray) -> int:
    """Decisions per sample: the rows over the last axis in one sample (timesteps, pixels, windows; 1 for [N, C])."""
    return int(r[0].size // r.shape[-1]) if len(r) and r.ndim >= 2 and r.shape[-1] else 1


def positional(same: np.ndarray, on: np.ndarray, resamples: int = 1000) -> dict:
    """Agreement over the positions `on` of each sample ([samples, positions] masks), counted per SAMPLE: the
    value pools the positions, the 95% interval is a bootstrap over the samples that have any, and `n` is that
    number of samples. Positions of one image or one text line are not independent trials: counted one by one,
    PP-OCR det int8 had "99.3% of 14,745,600 (CI 99.3-99.3%)" while its text regions overlapped the
    reference's by 0.63-0.69."""
    k = np.sum(same & on, axis=1)
    m = np.sum(on, axis=1)
    keep = m > 0
    k, m = k[keep], m[keep]
    n = int(keep.sum())
    if n == 0:
        return {"value": None, "n": 0, "positions": 0, "ci95": [0.0, 1.0]}
    value = float(k.sum() / m.sum())
    idx = np.random.default_rng(0).integers(0, n, size=(resamples, n))
    boot = k[idx].sum(1) / m[idx].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    per = k / m
    return {"value": value, "n": n, "positions": int(m.sum()), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "per_sample_min": float(per.min()), "interval": "bootstrap over samples"}


def _class_figures(r: np.ndarray, o: np.ndarray, kind: OutputKind, labels) -> dict:
    classes, per = r.shape[-1], _per_sample(r)
    r2, o2 = _rows(r), _rows(o)
    p = r2 if kind.probs else softmax(r2)
    q = np.clip(o2, 0, None) / np.maximum(np.clip(o2, 0, None).sum(1, keepdims=True), 1e-12) if kind.probs else softmax(o2)
    same = r2.argmax(1) == o2.argmax(1)
    confident = p.max(1) >= confident_line(classes)
    f = {"agreement": proportion(same), "confident_agreement": proportion(same[confident]),
         "confident_line": confident_line(classes),
         "kl": float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))}
    if per > 1:
        # several decisions per sample (timesteps, pixels, windows): agreement where either side decides something
        # other than the background class (the reference's most common decision, when it is most of them: CTC's
        # blank, "no face"), counted per sample. PP-OCR rec int8 agreed on 92% of confident timesteps (blanks
        # mostly) but on 76-80% of the others, 13% of lines identical.
        ra, oa = r2.argmax(1), o2.argmax(1)
        counts = np.bincount(ra, minlength=classes)
        background = int(counts.argmax()) if counts.max() > 0.5 * len(ra) else -1
        fg = (ra != background) | (oa != background)
        f["background_class"] = background
        f["foreground_agreement"] = positional(same.reshape(len(r), per), (confident & fg).reshape(len(r), per))
        f["samples_identical"] = proportion(np.all((same | ~confident).reshape(len(r), per), axis=1))
    if labels is not None and len(labels) == len(r2):
        f["accuracy"] = proportion(o2.argmax(1) == labels)
        f["reference_accuracy"] = proportion(r2.argmax(1) == labels)
    return f


def _probability_figures(r: np.ndarray, o: np.ndarray, kind: OutputKind) -> dict:
    rd, od = r.reshape(len(r), -1) >= kind.threshold, o.reshape(len(o), -1) >= kind.threshold
    if rd.shape[1] == 1:  # one decision per sample (a VAD's speech probability)
        return {"decision_agreement": proportion((rd == od).reshape(-1))}
    # a map of decisions (text pixels): agreement where either side says yes, i.e. the overlap (IoU) of the two
    # positive regions, per sample; counted element by element the background made a broken map look perfect
    return {"elements_agreement": float(np.mean(rd == od)), "elements": int(rd.size),
            "foreground_agreement": positional(rd == od, rd | od)}


def _embedding_figures(r: np.ndarray, o: np.ndarray) -> dict:
    c = cosines(r, o)
    f: dict = {"cosine_mean": float(np.mean(c)), "cosine_min": float(np.min(c))}
    if len(r) >= 3:  # nearest neighbour of each sample among the others, as the reference retrieves it
        def nn(e):
            e = e.reshape(len(e), -1).astype(np.float64)
            e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            s = e @ e.T
            np.fill_diagonal(s, -np.inf)
            return s.argmax(1)
        f["retrieval_agreement"] = proportion(nn(r) == nn(o))
    return f


def output_figures(r: np.ndarray, o: np.ndarray, kind: OutputKind, labels=None) -> dict:
    r, o = np.asarray(r), np.asarray(o)
    r64 = r.astype(np.float64)
    norm = float(np.linalg.norm(r64))
    f: dict = {"samples": int(len(r)), "sqnr_db": sqnr_db(r, o), "cosine": cosine(r, o),
               "max_abs_error": float(np.max(np.abs(r64 - o))) if r.size else 0.0,
               "relative_error": float(np.linalg.norm(r64 - o) / norm) if norm else float(np.linalg.norm(o))}
    if kind.kind == "class" and r.ndim >= 2 and r.shape[-1] >= 2:
        f.update(_class_figures(r, o, kind, labels))
    elif kind.kind == "embedding":
        f.update(_embedding_figures(r, o))
    elif kind.kind == "probability" and len(r):
        f.update(_probability_figures(r, o, kind))
    elif r.ndim >= 2 and 1 < r.shape[1] <= 4096:  # tensors: the worst channel, which the overall SQNR can hide
        f.update(_worst_channel(r, o))
    return f


def _worst_channel(r: np.ndarray, o: np.ndarray) -> dict:
    """SQNR per channel (axis 1) of channels that carry signal, the worst 64 kept. A YOLO head concatenates
    boxes in pixels (hundreds) with class scores (0..1) in one [1, 4+C, anchors] tensor: int8 that zeroes
    every score still has 30 dB overall (nudenet's 320n: class-score cosine 0.02 at an overall SQNR that passed)."""
    rc = np.moveaxis(r.astype(np.float64), 1, 0).reshape(r.shape[1], -1)
    oc = np.moveaxis(o.astype(np.float64), 1, 0).reshape(o.shape[1], -1)
    per = sorted((sqnr_db(rc[c], oc[c]), c) for c in range(len(rc)) if np.any(rc[c]))
    if not per:
        return {}
    return {"worst_channel_sqnr_db": per[0][0], "worst_channel": per[0][1], "channels": len(per),
            "channel_sqnr_db": [round(v, 1) for v, _ in per[:64]]}


def compare(ref: Sequence[np.ndarray], out: Sequence[np.ndarray], labels: np.ndarray | None = None,
            kinds: Sequence[OutputKind] | None = None, names: Sequence[str] | None = None) -> dict:
    """Figures per output (by kind) and the summary figures the tables show: the worst SQNR and cosine,
    and the class output's agreement and accuracy."""
    names = list(names) if names is not None else [f"output_{i}" for i in range(len(ref))]
    kinds = list(kinds) if kinds is not None else infer_kinds(names, ref, labels)
    outs = []
    for name, r, o, k in zip(names, ref, out, kinds):
        outs.append({"name": name, **k.to_dict(), **output_figures(r, o, k, labels)})
    m: dict = {
        "samples": int(len(ref[0])) if len(ref) else 0,
        "max_abs_error": float(max(x["max_abs_error"] for x in outs)),
        "mean_abs_error": float(np.mean([np.mean(np.abs(np.asarray(r, np.float64) - o)) for r, o in zip(ref, out)])),
        "sqnr_db": float(min(x["sqnr_db"] for x in outs)),
        "cosine": float(min(x["cosine"] for x in outs)),
        "outputs": outs,
    }
    cls = next((x for x in outs if x["kind"] == "class" and "agreement" in x), None)
    if cls is not None:
        m["top1_agreement"] = cls["agreement"]["value"]
        if "accuracy" in cls:
            m["accuracy"] = cls["accuracy"]["value"]
            m["reference_accuracy"] = cls["reference_accuracy"]["value"]
    elif labels is not None:
        m["labels_unused"] = LABELS_UNUSED
    return m


# ---------------------------------------------------------------------------- streaming

def closed_loop(step_ref, step_art, data, input_names: Sequence[str], output_names: Sequence[str],
                kinds: Sequence[OutputKind]) -> list[dict]:
    """Run the reference and the artifact as a streaming model runs: over each sequence of `data` in time
    order, each fed its own state outputs (starting from the data's state at the sequence's first sample),
    and compare the other outputs over time. One-step validation feeds the true state every call and
    misses drift: a tflite-dynamic VAD passed one-step at 37 dB while, fed back, its speech probability
    was off by up to 0.85."""
    feeds = {k.feeds: j for j, k in enumerate(kinds) if k.kind == "state"}
    watched = [j for j, k in enumerate(kinds) if k.kind != "state"]
    ref_seq: dict[int, list] = {j: [] for j in watched}
    art_seq: dict[int, list] = {j: [] for j in watched}
    per_step: dict[int, list] = {j: [] for j in watched}
    for idx in data.sequences():
        ref_state = {n: data.arrays[n][idx[0]] for n in feeds}
        art_state = {n: a.copy() for n, a in ref_state.items()}
        for t in idx:
            def feed(state):
                return [state[n] if n in state else (data.arrays[n][t] if n in data.unbatched else data.arrays[n][t:t + 1])
                        for n in input_names]
            r, a = step_ref(feed(ref_state)), step_art(feed(art_state))
            for n, j in feeds.items():
                ref_state[n], art_state[n] = np.asarray(r[j]), np.asarray(a[j])
            for j in watched:
                ref_seq[j].append(np.asarray(r[j]))
                art_seq[j].append(np.asarray(a[j]))
                per_step[j].append(float(np.max(np.abs(np.asarray(r[j], np.float64) - a[j]))) if np.size(r[j]) else 0.0)
    out = []
    for j in watched:
        r, a = np.concatenate(ref_seq[j]), np.concatenate(art_seq[j])
        f = output_figures(r, a, kinds[j])
        f.update({"name": output_names[j], **kinds[j].to_dict(), "sequences": len(data.sequences()), "steps": len(per_step[j]),
                  "drift_max_abs_error": max(per_step[j], default=0.0), "drift_mean_abs_error": float(np.mean(per_step[j])) if per_step[j] else 0.0})
        out.append(f)
    return out


# ---------------------------------------------------------------------------- verdict

def min_samples(warn: float) -> int:
    """The fewest samples whose interval can lie wholly above `warn` when every one agrees."""
    n = 1
    while wilson(n, n)[0] < warn and n < 100_000:
        n += 1
    return n


def judge(fig: dict, ok: float, warn: float) -> str:
    """One proportion with its interval against the ok and fail lines."""
    lo, hi = fig["ci95"]
    if fig["n"] == 0:
        return "inconclusive"
    if hi < warn:
        return "fail"
    if wilson(fig["n"], fig["n"])[0] < warn:
        return "inconclusive"  # too few samples: even full agreement could not show it above the fail line
    if fig["value"] >= ok and lo >= warn:
        return "ok"
    return "warn"


def judge_value(v: float, ok: float, warn: float) -> str:
    return "fail" if v < warn else ("warn" if v < ok else "ok")


def _checks(x: dict, t: Thresholds) -> list[tuple[str, str]]:
    """(status, reason) for one output's figures."""
    kind, name = x["kind"], x["name"]
    found: list[tuple[str, str]] = []
    # float targets whose outputs match to >= 40 dB are the same model: a flip there can only be a near-tie.
    # Quantized targets are judged on their decisions: saturated probabilities keep a high SQNR regardless.
    decided_numerically = t.sqnr_for_every_output and x["sqnr_db"] >= IDENTICAL_DB

    def prop(key: str, label: str, ok: float, warn: float):
        fig = x.get(key)
        if fig and fig["n"] == 0 and "positions" in fig and not decided_numerically:
            found.append(("inconclusive", f"{name}: no sample has a non-background decision on either side, so {label} cannot be "
                                          "measured: pass --val-data with what the model detects"))
            return
        if not fig or fig["n"] == 0:
            return
        s = "ok" if decided_numerically else judge(fig, ok, warn)
        lo, hi = fig["ci95"]
        of = f"{fig['positions']:,} positions in {fig['n']} samples" if "positions" in fig else f"{fig['n']}"
        found.append((s, f"{name}: {label} {fig['value']:.1%} of {of} (95% CI {lo:.1%}-{hi:.1%}) "
                         + {"fail": f"< {warn:g} (fail threshold)",
                            "warn": (f"< {ok:g} (ok threshold)" if fig["value"] < ok else
                                     f"not clearly >= {warn:g}: the interval reaches below the fail threshold (more samples would decide)"),
                            "inconclusive": f"too few samples to show >= {warn:g} (need {min_samples(warn)})",
                            "ok": "ok"}[s]))

    def value(v: float | None, label: str, ok: float, warn: float, fmt: str):
        if v is None:
            return
        s = judge_value(v, ok, warn)
        found.append((s, f"{name}: {label} {fmt.format(v)} " + {"fail": f"< {warn:g} (fail threshold)", "warn": f"< {ok:g} (ok threshold)", "ok": "ok"}[s]))

    if kind == "class" and "foreground_agreement" in x:  # several decisions per sample, counted per sample
        prop("foreground_agreement", "top-1 agreement on confident non-background positions", t.ok_top1_agreement, t.warn_top1_agreement)
    elif kind == "class" and "agreement" in x:
        # judged on the confident samples only: on 1000 classes the others flip under any rounding (a healthy
        # EfficientNet-Lite0 onnx-int8 agreed on 81% of 48 photos overall, 94% of its confident ones on 256)
        conf, need = x["confident_agreement"], min_samples(t.warn_top1_agreement)
        if conf["n"] >= need or decided_numerically or (conf["n"] and judge(conf, t.ok_top1_agreement, t.warn_top1_agreement) == "fail"):
            prop("confident_agreement", "top-1 agreement on confident samples", t.ok_top1_agreement, t.warn_top1_agreement)
        else:
            found.append(("inconclusive", f"{name}: only {conf['n']} of {x['agreement']['n']} samples are confident (reference top-1 "
                                          f"probability >= {x.get('confident_line', CONFIDENT):g}): too few to judge top-1 agreement "
                                          f"(need {need}); overall agreement {x['agreement']['value']:.1%}"))
    elif kind == "embedding":
        value(x.get("cosine_mean"), "mean cosine", t.ok_cosine, t.warn_cosine, "{:.4f}")
        prop("retrieval_agreement", "nearest-neighbour agreement", t.ok_retrieval_agreement, t.warn_retrieval_agreement)
    elif kind == "probability" and "foreground_agreement" in x:  # a map: the overlap of the positive regions, per sample
        prop("foreground_agreement", "overlap (IoU) of the positive decisions", t.ok_decision_agreement, t.warn_decision_agreement)
    elif kind == "probability":
        prop("decision_agreement", "decision agreement", t.ok_decision_agreement, t.warn_decision_agreement)
    if kind in ("regression", "state", "tensor") or t.sqnr_for_every_output:  # how much of the signal is noise
        value(x["sqnr_db"], "SQNR", t.ok_sqnr_db, t.warn_sqnr_db, "{:.1f} dB")
        worst = x.get("worst_channel_sqnr_db")
        if worst is not None and worst < t.warn_sqnr_db <= x["sqnr_db"]:
            # one faint channel may be legitimately noisy (a warning); a quarter of them below the fail line is a
            # broken output whatever the overall figure says (nudenet int8: 18 of 22 rows at 0 dB)
            bad = sum(v < t.warn_sqnr_db for v in x.get("channel_sqnr_db", [worst]))
            total = int(x.get("channels", 1))
            s = "fail" if bad >= max(2, 0.25 * total) else "warn"
            found.append((s, f"{name}: {bad} of {total} channels below {t.warn_sqnr_db:g} dB SQNR (worst: channel {x['worst_channel']}, "
                             f"{worst:.1f} dB; the output's overall {x['sqnr_db']:.1f} dB hides it)"))
    return found


def verdict(m: dict, t: Thresholds, held_out: bool = True) -> tuple[str, list[str]]:
    """The worst output decides: fail > inconclusive > warn > ok. Reasons name the output and figure.

    `held_out=False` (validation data is a split of the calibration source) caps ok at warn: the figures
    came from the same distribution, often the same speakers or images, as the calibration."""
    status, reasons = "ok", []
    outputs = m.get("outputs") or [{"name": "output", "kind": "tensor", "sqnr_db": m.get("sqnr_db", SQNR_CAP_DB)}]
    for x in outputs:
        for s, why in _checks(x, t):
            if s != "ok":
                reasons.append(why)
            if RANK[s] > RANK[status]:
                status = s
    for x in m.get("closed_loop") or []:  # streaming: the artifact fed its own state over whole sequences
        for s, why in _checks({**x, "name": f"{x['name']} (closed loop)"}, t):
            if s != "ok":
                reasons.append(why)
            if RANK[s] > RANK[status]:
                status = s
    if not held_out and status == "ok":
        status = "warn"
        reasons.append("validated on a split of the calibration source, not independent data: pass --val-data")
    return status, reasons


def headline(m: dict) -> str:
    """The figure a table shows for a verdict: the first judged output's decision figure, with its sample
    count and interval (or its cosine or SQNR)."""
    for x in m.get("outputs") or []:
        if "foreground_agreement" in x and x["foreground_agreement"]["n"]:
            f = x["foreground_agreement"]
            what = "agree (foreground)" if x["kind"] == "class" else "IoU"
        elif x["kind"] == "class" and "agreement" in x:
            f = x["confident_agreement"] if x["confident_agreement"]["n"] >= 30 else x["agreement"]
            what = "agree (confident)" if f is x["confident_agreement"] else "agree"
        elif x["kind"] == "embedding" and "retrieval_agreement" in x:
            return f"cos {x['cosine_mean']:.4f}, NN {x['retrieval_agreement']['value']:.1%} of {x['retrieval_agreement']['n']}"
        elif x["kind"] == "probability" and "decision_agreement" in x:
            f, what = x["decision_agreement"], "decisions"
        else:
            continue
        lo, hi = f["ci95"]
        return f"{what} {f['value']:.1%} of {f['n']} [{lo:.0%}-{hi:.0%}]"
    return f"SQNR {m.get('sqnr_db', 0.0):.1f} dB"


def kinds_line(m: dict) -> str:
    """`name: kind` for each output, saying which kinds were inferred and why."""
    return ", ".join(f"{x['name']}: {x['kind']}" + (f" (inferred: {x['why']})" if x.get("inferred") else "")
                     for x in m.get("outputs") or [])


def is_classifier(out: np.ndarray) -> bool:
    """Shape test kept for callers without kinds (eval of a bare file): 2-D with at least two columns."""
    return out.ndim == 2 and out.shape[1] > 1


__all__ = ["LABELS_UNUSED", "OutputKind", "closed_loop", "parse_output", "parse_state", "declared_kinds", "infer_kinds", "compare", "verdict", "wilson",
           "judge", "sqnr_db", "cosine", "softmax", "SQNR_CAP_DB", "KINDS"]
