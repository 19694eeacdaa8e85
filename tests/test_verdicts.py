"""Verdicts (edgekit.validate), fast tier: the figures, intervals and rules on arrays whose truth is known.
The same rules on real models and data are in tests/test_verdicts_real.py."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.calibration import CalibrationData, split_holdout
from edgekit.errors import UsageError
from edgekit.targets import load_target
from edgekit.validate import (OutputKind, closed_loop, compare, declared_kinds, infer_kinds, judge, parse_output, proportion,
                              verdict, wilson)

INT8 = load_target("tflite-int8").validation
FP16 = load_target("tflite-fp16").validation


def test_wilson_interval_matches_the_textbook():
    lo, hi = wilson(11, 12)  # Wilson 1927 / Newcombe 1998, 95%: 0.646 .. 0.985
    assert abs(lo - 0.6461) < 1e-3 and abs(hi - 0.9851) < 1e-3
    assert wilson(0, 0) == (0.0, 1.0) and wilson(50, 50)[1] == 1.0


@pytest.mark.parametrize("k, n, want", [
    (11, 12, "inconclusive"),  # one flip in 12: the false failure of a healthy MobileNetV2
    (12, 12, "inconclusive"),  # even all 12 agreeing cannot show >= 0.90
    (3, 12, "fail"),  # a broken model fails on few samples too: the whole interval is below 0.90
    (199, 200, "ok"),
    (186, 200, "warn"),  # 93%: straddles the ok line
    (150, 200, "fail"),
])
def test_agreement_judged_with_its_interval(k, n, want):
    fig = proportion(np.array([True] * k + [False] * (n - k)))
    assert judge(fig, INT8.ok_top1_agreement, INT8.warn_top1_agreement) == want


def _logits(n, classes=10, seed=0, margin=4.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, classes))
    x[np.arange(n), rng.integers(0, classes, n)] += margin
    return x.astype(np.float32)


def test_kinds_are_inferred_only_where_the_data_proves_them():
    n = 40
    probs = np.exp(_logits(n)) / np.exp(_logits(n)).sum(1, keepdims=True)
    emb = np.random.default_rng(1).standard_normal((n, 384)).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    boxes = np.random.default_rng(2).standard_normal((n, 4)).astype(np.float32)
    kinds = infer_kinds(["p", "e", "raw", "b"], [probs, unit, emb, boxes], None)
    assert [k.kind for k in kinds] == ["class", "embedding", "tensor", "tensor"]  # a [N,384] output is not a 384-class classifier
    assert all(k.inferred for k in kinds[:2]) and kinds[0].probs
    labels = np.random.default_rng(3).integers(0, 10, n)
    assert [k.kind for k in infer_kinds(["b", "logits"], [boxes, _logits(n)], labels)] == ["tensor", "class"]  # 4 columns cannot hold label 9
    # two outputs the labels could index: no guess
    assert [k.kind for k in infer_kinds(["a", "b"], [_logits(n), _logits(n, seed=5)], labels)] == ["tensor", "tensor"]
    assert infer_kinds(["b"], [boxes], None, {"b": OutputKind("regression")})[0].kind == "regression"
    with pytest.raises(UsageError, match="not an output"):
        infer_kinds(["b"], [boxes], None, {"x": OutputKind("class")})


def test_the_worst_output_decides_and_is_named():
    """A face net: box regression first, face probabilities second. Boxes moved a little (int8-like, ~20 dB),
    every face decision kept: judged per output, not 'top-1 of the boxes'."""
    n = 300
    rng = np.random.default_rng(0)
    boxes = rng.standard_normal((n, 4)).astype(np.float32)
    logits = _logits(n, classes=2, margin=6)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref, out = [boxes, probs], [boxes + 0.1 * rng.standard_normal(boxes.shape).astype(np.float32), probs]
    kinds = infer_kinds(["boxes", "face"], ref, None, {"boxes": OutputKind("regression")})
    m = compare(ref, out, None, kinds, ["boxes", "face"])
    status, reasons = verdict(m, INT8)
    assert status == "ok", reasons
    out[0] = boxes + 1.0 * rng.standard_normal(boxes.shape).astype(np.float32)  # boxes now ~0 dB: broken
    status, reasons = verdict(compare(ref, out, None, kinds, ["boxes", "face"]), INT8)
    assert status == "fail" and reasons[0].startswith("boxes: SQNR"), reasons


def test_embeddings_are_judged_by_cosine_and_retrieval():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((64, 384)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    noisy = e + 0.002 * rng.standard_normal(e.shape).astype(np.float32)
    dyn = load_target("tflite-dynamic").validation
    m = compare([e], [noisy], None, names=["embedding"])
    assert m["outputs"][0]["kind"] == "embedding" and "top1_agreement" not in m
    assert verdict(m, dyn)[0] == "ok", verdict(m, dyn)
    broken = compare([e], [rng.standard_normal(e.shape).astype(np.float32)], None, names=["embedding"])
    assert verdict(broken, dyn)[0] == "fail"


def test_identical_outputs_are_not_judged_on_decisions():
    """fp16 of a classifier: 12 samples could not decide an agreement, but outputs that match to > 40 dB can."""
    ref = _logits(12)
    m = compare([ref], [ref * (1 + 1e-4)], np.arange(12) % 10, names=["logits"])
    assert verdict(m, FP16)[0] == "ok"
    m = compare([ref], [ref + 0.5 * np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)], None,
                [OutputKind("class")], ["logits"])
    assert verdict(m, INT8)[0] == "inconclusive"


def test_a_split_of_the_calibration_source_caps_the_verdict():
    ref = _logits(500)
    m = compare([ref], [ref], None, [OutputKind("class")], ["logits"])
    assert verdict(m, INT8, held_out=True)[0] == "ok"
    status, reasons = verdict(m, INT8, held_out=False)
    assert status == "warn" and "--val-data" in reasons[-1]


def test_holdout_is_random_not_the_tail_and_keeps_sequences_whole():
    x = np.arange(100, dtype=np.float32)[:, None]
    calib, val = split_holdout(CalibrationData("d", {"x": x}), 1000, None)
    assert len(val) == 25 and len(calib) == 75
    assert not set(val.arrays["x"][:, 0]) & set(calib.arrays["x"][:, 0])
    assert sorted(val.arrays["x"][:, 0]) != list(range(75, 100))  # not the tail
    seq = np.repeat(np.arange(10), 10)
    calib, val = split_holdout(CalibrationData("s", {"x": x}, sequence=seq), 1000, None)
    for ids in (set(val.sequence), set(calib.sequence)):
        for i in ids:  # every sequence wholly on one side, in time order
            assert list(np.sort(x[seq == i, 0])) == list((val if i in set(val.sequence) else calib).arrays["x"][(val if i in set(val.sequence) else calib).sequence == i, 0])
    assert not set(val.sequence) & set(calib.sequence)


def test_closed_loop_catches_drift_that_one_step_misses():
    """A leaky integrator: y = s + x, s' = s + x. The 'artifact' adds a tiny bias to the state each step:
    one step from the true state is off by 0.001 (fine), fed its own state the error grows every step."""
    def ref_step(a):
        x, s = a
        return [s + x, s + x]

    def art_step(a):
        x, s = a
        return [s + x, s + x + 0.001]

    T = 400
    x = np.random.default_rng(0).standard_normal((T, 1)).astype(np.float32) * 0.01
    s = np.concatenate([[0.0], np.cumsum(x[:-1, 0])]).astype(np.float32)[:, None, None]
    data = CalibrationData("stream", {"x": x, "s": s}, unbatched=frozenset({"s"}), sequence=np.repeat(np.arange(4), T // 4))
    kinds = [OutputKind("regression"), OutputKind("state", feeds="s")]
    one_step = compare([np.stack([ref_step([x[t:t + 1], s[t]])[0] for t in range(T)])],
                       [np.stack([art_step([x[t:t + 1], s[t]])[0] for t in range(T)])], None, kinds[:1], ["y"])
    loop = closed_loop(ref_step, art_step, data, ["x", "s"], ["y", "s_next"], kinds)
    assert loop[0]["steps"] == T and loop[0]["sequences"] == 4
    assert loop[0]["drift_max_abs_error"] > 50 * one_step["max_abs_error"]
    status, reasons = verdict({**one_step, "closed_loop": loop}, INT8)
    assert verdict(one_step, INT8)[0] == "ok" and status == "fail" and "closed loop" in reasons[0], reasons


@pytest.mark.parametrize("text, match", [("x", "bad --output"), ("x=klass", "bad --output"), ("x=probability:2", "between 0 and 1"),
                                         ("x=class:maybe", ":probs"), ("x=embedding:1", "no option")])
def test_output_declarations_are_checked(text, match):
    with pytest.raises(UsageError, match=match):
        parse_output(text)


def test_declarations_merge_factory_then_flags():
    kinds = declared_kinds(["logits=class"], ["h_new=h"], [{"name": "logits", "kind": "tensor"}, {"name": "p", "kind": "probability", "threshold": 0.3}])
    assert kinds["logits"].kind == "class" and kinds["p"].threshold == 0.3 and kinds["h_new"].feeds == "h"


def test_a_channel_the_overall_sqnr_hides_is_flagged():
    """A YOLO-style head: 4 box rows in pixels over 18 class-score rows in 0..1. Zeroing every score keeps
    the overall SQNR high; the channels show it (one lost channel is a warning, a quarter of them a failure)."""
    rng = np.random.default_rng(0)
    head = np.concatenate([rng.uniform(0, 320, (8, 4, 100)), rng.uniform(0, 1, (8, 18, 100))], axis=1).astype(np.float32)
    broken = head.copy()
    broken[:, 4:] = 0.0
    m = compare([head], [broken], None, [OutputKind("tensor")], ["output0"])
    assert m["sqnr_db"] > 30 and m["outputs"][0]["worst_channel_sqnr_db"] < 1
    status, reasons = verdict(m, INT8)
    assert status == "fail" and reasons[0].startswith("output0: 18 of 22 channels") and "hides it" in reasons[0], reasons
    one = head.copy()
    one[:, 21] = 0.0  # one faint channel lost: a warning only
    status, reasons = verdict(compare([head], [one], None, [OutputKind("tensor")], ["output0"]), INT8)
    assert status == "warn" and "1 of 22" in reasons[0], reasons
    assert verdict(compare([head], [head * 1.001], None, [OutputKind("tensor")], ["output0"]), INT8)[0] == "ok"


def test_class_outputs_are_judged_on_confident_samples_only():
    """1000-class logits where the reference is unsure on most samples: the unsure ones flip under rounding and
    must not fail a healthy artifact; too few confident samples is inconclusive, a broken confident set fails."""
    rng = np.random.default_rng(0)
    n = 48
    ref = rng.standard_normal((n, 1000)).astype(np.float32)
    ref[:10, 7] += 12.0  # 10 confident samples
    out = ref + 1.0 * rng.standard_normal(ref.shape).astype(np.float32)  # unsure samples flip, confident ones hold
    m = compare([ref], [out], None, [OutputKind("class")], ["logits"])
    assert m["outputs"][0]["agreement"]["value"] < 0.5 and m["outputs"][0]["confident_agreement"]["n"] == 10
    status, reasons = verdict(m, INT8)
    assert status == "inconclusive" and "only 10 of 48 samples are confident" in reasons[0], reasons
    broken = ref.copy()
    broken[:10] = rng.standard_normal((10, 1000))  # the confident decisions lost
    assert verdict(compare([ref], [broken], None, [OutputKind("class")], ["logits"]), INT8)[0] == "fail"


def _text_map(n, h=48, w=64, seed=0):
    """Probability maps [n, 1, h, w]: mostly background (0.02) with one text-like box per sample at 0.9."""
    rng = np.random.default_rng(seed)
    m = np.full((n, 1, h, w), 0.02, np.float32)
    for i in range(n):
        y, x = rng.integers(0, h - 12), rng.integers(0, w - 24)
        m[i, 0, y:y + 8, x:x + 20] = 0.9
    return m


def test_a_map_is_judged_by_the_overlap_of_its_regions_counted_per_sample():
    """A probability map whose text regions are half lost agrees on 97% of its pixels; judged by pixels (one
    sample each) it passed with a hair-thin interval. Judged as the overlap (IoU) of the positive regions, counted
    per sample, it fails; a healthy map (regions kept, noise on the background) is ok; and the count is samples."""
    n = 60
    ref = _text_map(n)
    broken = ref.copy()
    broken[..., :, ::2] = np.minimum(broken[..., :, ::2], 0.1)  # every other column of each region lost
    kind = [OutputKind("probability", threshold=0.3)]
    m = compare([ref], [broken], None, kind, ["map"])
    x = m["outputs"][0]
    assert x["elements_agreement"] > 0.96 and x["elements"] == n * 48 * 64
    fg = x["foreground_agreement"]
    assert fg["n"] == n and abs(fg["value"] - 0.5) < 0.01 and fg["ci95"][1] < 0.6
    status, reasons = verdict(m, INT8)
    assert status == "fail" and "IoU" in reasons[0] and f"in {n} samples" in reasons[0], reasons
    healthy = ref + np.random.default_rng(1).normal(0, 0.02, ref.shape).astype(np.float32)
    assert verdict(compare([ref], [healthy], None, kind, ["map"]), INT8)[0] == "ok"
    # samples that show nothing on either side say nothing: too few that do is inconclusive, not ok
    blank = np.full((n, 1, 48, 64), 0.02, np.float32)
    blank[:5] = ref[:5]
    status, reasons = verdict(compare([blank], [blank + 0.01], None, kind, ["map"]), INT8)
    assert status == "inconclusive" and "5 samples" in reasons[0], reasons


def test_a_sequence_is_judged_off_its_background_class():
    """CTC-like [n, T, C] outputs mostly blank (class 0): an artifact that garbles a third of the characters still
    agrees on ~85% of timesteps; judged where either side decides a character it fails. Full agreement is ok."""
    rng = np.random.default_rng(0)
    n, steps, classes = 50, 40, 30
    ids = np.where(rng.random((n, steps)) < 0.6, 0, rng.integers(1, classes, (n, steps)))
    ref = np.full((n, steps, classes), -4.0, np.float32)
    ref[np.arange(n)[:, None], np.arange(steps)[None], ids] = 4.0
    out = ref.copy()
    garble = (ids > 0) & (rng.random((n, steps)) < 0.35)
    out[garble] = np.roll(out[garble], 1, axis=-1)
    kind = [OutputKind("class")]
    m = compare([ref], [out], None, kind, ["ctc"])
    x = m["outputs"][0]
    assert x["confident_agreement"]["value"] > 0.8 and x["background_class"] == 0
    assert x["foreground_agreement"]["n"] == n and x["foreground_agreement"]["value"] < 0.75
    assert verdict(m, INT8)[0] == "fail"
    assert verdict(compare([ref], [ref + 0.01], None, kind, ["ctc"]), INT8)[0] == "ok"


def test_two_way_near_ties_are_not_confident():
    """A two-way softmax: every decision has p >= 0.5, so "confident" there is p >= 0.75. Flips of near-ties
    (a PP-OCR orientation net's int8 flipped 9-11% of lines, all below 0.75; the OCR pipeline acts above 0.9)
    do not fail it; flips of confident decisions do."""
    rng = np.random.default_rng(0)
    n = 100
    p1 = np.where(np.arange(n) < 20, rng.uniform(0.45, 0.55, n), rng.choice([0.02, 0.98], n))
    ref = np.stack([1 - p1, p1], 1).astype(np.float32)
    out = ref.copy()
    out[:20] = out[:20, ::-1]  # every near-tie flips
    kind = [OutputKind("class", probs=True)]
    m = compare([ref], [out], None, kind, ["orientation"])
    assert m["outputs"][0]["agreement"]["value"] <= 0.8 and m["outputs"][0]["confident_agreement"]["n"] == 80
    assert verdict(m, INT8)[0] == "ok"
    out[20:40] = out[20:40, ::-1]
    assert verdict(compare([ref], [out], None, kind, ["orientation"]), INT8)[0] == "fail"
