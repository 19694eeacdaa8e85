"""The accuracy budget's decisions, fast tier: what it measures for each output kind, and the latency-aware choice
between int16 and float layers. The search itself on a real model (diagnose, re-quantize) is
tests/test_accuracy_budget.py; here the quantizer is a function whose outputs are known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgekit.budget import AccuracyBudget, scorer, search, timed_in_turn
from edgekit.calibration import CalibrationData
from edgekit.errors import UsageError
from edgekit.targets import LayerOverride, load_target

rng = np.random.default_rng(0)


def test_embeddings_count_cosine_and_tensors_their_relative_error():
    ref = rng.normal(size=(50, 16))
    name, score = scorer("embedding", None, ref)
    assert name == "cosine" and score(ref) == pytest.approx(1.0) and score(3 * ref) == pytest.approx(1.0)  # scale-free
    noisy = ref + 0.2 * rng.normal(size=ref.shape)
    expect = np.mean(np.sum(noisy * ref, 1) / (np.linalg.norm(noisy, axis=1) * np.linalg.norm(ref, axis=1)))
    assert score(noisy) == pytest.approx(expect) and score(noisy) < 0.99
    name, score = scorer("tensors", None, ref)
    assert name == "fidelity" and score(ref) == pytest.approx(1.0)
    assert score(ref * 1.01) == pytest.approx(0.99)  # 1% relative error = one point = SQNR 40 dB
    name, score = scorer("class", None, ref)
    assert name == "agreement" and score(ref) == 1.0
    with pytest.raises(UsageError):
        scorer("class", None, rng.normal(size=(50,)))


class FakeQuantizer:
    """Writes a file the size of its precision and returns outputs whose error each override removes: int16 and
    float layers both bring the embedding within 0.5 points, an int8 one loses 5."""

    def __init__(self, model_file, ref, float_error=0.0):
        self.model_file, self.ref, self.float_error, self.calls = model_file, ref, float_error, []

    def __call__(self, tgt):
        precisions = [o.precision for o in tgt.quant.overrides]
        self.calls.append(precisions)
        self.model_file.write_bytes(b"x" * (100 + 50 * precisions.count("int16") + 100 * precisions.count("float")))
        (self.model_file.parent / "manifest.json").write_text("{}")
        noise = 0.3 if not precisions else (self.float_error if "float" in precisions else 0.02)
        return self.ref + noise * np.abs(self.ref).mean() * rng.normal(size=self.ref.shape)


def _search(tmp_path, ref, fake, latency, max_drop=0.5):
    tgt = load_target("tflite-int8")
    tgt = dataclasses.replace(tgt, quant=dataclasses.replace(tgt.quant, overrides=(LayerOverride("conv3", "int16", "conv3: outlier"),)))
    budget = AccuracyBudget(max_drop, CalibrationData("test", {"x": np.zeros((len(ref), 1), np.float32)}))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return search(tgt, budget, ref, "tflite", tmp_path / "float.tflite", fake, fake.model_file, [], work, None,
                  kind="embedding", latency=latency)


def test_float_layers_replace_int16_when_they_are_faster_at_the_same_budget(tmp_path):
    ref = rng.normal(size=(64, 32))
    (tmp_path / "art").mkdir()
    fake = FakeQuantizer(tmp_path / "art" / "model.tflite", ref)
    final, rep = _search(tmp_path, ref, fake, latency=lambda folders: [2.8, 1.1])
    assert fake.calls == [["int16"], ["float"]]
    assert rep.met and rep.metric == "cosine" and rep.chosen == 1
    assert [o.precision for o in final.quant.overrides] == ["float"] and "faster than int16" in final.quant.overrides[0].note
    assert rep.steps[0].latency_ms == 2.8 and rep.steps[1].latency_ms == 1.1 and "1.100 ms float vs 2.800 ms int16" in rep.reason
    assert fake.model_file.stat().st_size == 200  # the chosen candidate is the one left in place

    fake = FakeQuantizer(tmp_path / "art" / "model.tflite", ref)
    final, rep = _search(tmp_path, ref, fake, latency=lambda folders: [1.0, 1.3])  # float slower: int16 stays
    assert rep.chosen == 0 and [o.precision for o in final.quant.overrides] == ["int16"] and fake.model_file.stat().st_size == 150


def test_float_layers_that_lose_the_budget_are_not_taken(tmp_path):
    ref = rng.normal(size=(64, 32))
    (tmp_path / "art").mkdir()
    fake = FakeQuantizer(tmp_path / "art" / "model.tflite", ref, float_error=0.3)

    def never(folders):
        raise AssertionError("timed although the float layers lose the budget")
    final, rep = _search(tmp_path, ref, fake, latency=never)
    assert rep.met and rep.chosen == 0 and "stay int16" in rep.reason
    assert [o.precision for o in final.quant.overrides] == ["int16"] and fake.model_file.stat().st_size == 150


def test_models_are_timed_in_turn():
    order = []
    a, b = (lambda *x: order.append("a")), (lambda *x: order.append("b"))
    ms = timed_in_turn([a, b], [np.zeros(1)], rounds=5, warmup=1)
    assert order == ["a", "b"] * 6 and len(ms) == 2 and all(m >= 0 for m in ms)
