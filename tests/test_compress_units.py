"""Fast checks of the compression building blocks (no real model, no training)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.compress import objective, teacher, transformer
from edgekit.compress.data import Samples
from edgekit.errors import CalibrationError, CompressionError, UsageError
from edgekit.validate import OutputKind


def test_kept_layers_are_evenly_spaced_and_keep_the_last():
    assert transformer.kept_layers(6, 3) == [1, 3, 5]
    assert transformer.kept_layers(12, 4) == [2, 5, 8, 11]
    assert transformer.kept_layers(6, 1) == [5]
    with pytest.raises(CompressionError, match="between 1 and 5"):
        transformer.kept_layers(6, 6)
    assert transformer.mapping(3, 6, [1, 3, 5]) == [(0, 1), (1, 3), (2, 5)]
    assert transformer.mapping(2, 4) == [(0, 1), (1, 3)]


class TinyAttention(torch.nn.Module):
    def __init__(self, sdpa: bool):
        super().__init__()
        self.sdpa = sdpa
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 24) for _ in range(3)])

    def forward(self, x):
        for lin in self.blocks:
            q, k, v = lin(x).reshape(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
            if self.sdpa:
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1) @ v
            x = x + o.transpose(1, 2).reshape(x.shape)
        return x


def test_attention_recorder_sees_eager_and_sdpa_attention_alike():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    eager, fused = TinyAttention(False), TinyAttention(True)
    fused.load_state_dict(eager.state_dict())
    maps = {}
    for name, m in (("eager", eager), ("sdpa", fused)):
        rec = transformer.AttentionRecorder()
        with rec:
            out = m(x)
        maps[name] = (out, rec.maps)
    assert len(maps["eager"][1]) == len(maps["sdpa"][1]) == 3
    for a, b in zip(maps["eager"][1], maps["sdpa"][1]):
        assert a.shape == (2, 2, 5, 5)
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(maps["eager"][0], maps["sdpa"][0])
    assert transformer.attention_loss(maps["eager"][1], maps["sdpa"][1], [(0, 0), (2, 2)]).abs() < 1e-6
    assert transformer.attention_loss(maps["eager"][1], maps["sdpa"][1], [(0, 2)]) > 0


def test_fewer_layers_keeps_the_teachers_blocks():
    model = TinyAttention(False)
    student, kept = transformer.fewer_layers(model, 2)
    assert kept == {"stack": "blocks", "teacher_layers": 3, "kept_layers": [1, 2]}
    assert torch.equal(student.blocks[0].weight, model.blocks[1].weight) and student.blocks[0].weight is not model.blocks[1].weight
    with pytest.raises(CompressionError, match="no stack of identical blocks"):
        transformer.layer_stack(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def _head(kind: str, target: str = "reference", **kw) -> objective.Head:
    return objective.Head("o", 0, OutputKind(kind, **kw), target)


def test_each_kind_has_its_loss_zero_at_the_target():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    probs = logits.softmax(1)
    emb = F.normalize(torch.randn(4, 8), dim=1)
    box = torch.randn(4, 4)
    cases = [(_head("class"), logits), (_head("class", probs=True), probs), (_head("embedding"), emb), (_head("regression"), box),
             (_head("tensor"), box), (_head("probability"), torch.rand(4, 1))]
    for h, t in cases:
        same = objective._toward(h, t, t, True, 2.0)
        other = objective._toward(h, t.flip(0), t, True, 2.0)
        if h.kind.kind == "probability":  # BCE toward soft targets is their entropy at best, not 0
            assert same < other
        else:
            assert abs(float(same)) < 1e-5 and float(other) > 1e-3, h.kind
    assert objective._toward(_head("class", "labels"), logits, torch.tensor([0, 1, 2, 0]), False, 1.0) > 0


def test_heads_follow_the_data():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(2), 20).astype(np.float32)
    boxes = rng.normal(0, 3, (20, 4)).astype(np.float32)
    unlabelled = Samples({"x": np.zeros((20, 1))}, "s")
    heads = objective.heads_for(["boxes", "probs"], [boxes, probs], unlabelled, {"boxes": OutputKind("regression")})
    assert [(h.kind.kind, h.target, h.figure) for h in heads] == [("regression", "reference", "mae"), ("class", "reference", "top1_agreement")]
    assert heads[0].scale == pytest.approx(float(np.std(boxes)))
    labelled = Samples({"x": np.zeros((20, 1))}, "s", rng.integers(0, 2, 20))
    heads = objective.heads_for(["boxes", "probs"], [boxes, probs], labelled, {"boxes": OutputKind("regression")})
    assert heads[1].target == "labels" and heads[1].figure == "accuracy"
    with pytest.raises(CalibrationError, match="no output of the model is a class output"):
        objective.heads_for(["boxes"], [boxes], labelled, {"boxes": OutputKind("regression")})
    # undeclared, the only 2-D output the labels can index is taken for their class output, as verdicts do
    assert objective.heads_for(["boxes"], [boxes], labelled)[0].target == "labels"
    with pytest.raises(UsageError, match="not an output"):
        objective.parse_weights(["box=2"], ["boxes", "probs"])
    with pytest.raises(UsageError, match="nothing would be learned"):
        objective.heads_for(["boxes", "probs"], [boxes, probs], unlabelled, weights={"boxes": 0.0, "probs": 0.0})


def test_augmentation_is_seeded_and_leaves_integers_alone():
    x, ids = torch.rand(4, 3, 12, 12), torch.arange(8).reshape(4, 2)
    a = teacher.augment([x, ids], ("crop", "mixup", "noise"), torch.Generator().manual_seed(1))
    b = teacher.augment([x, ids], ("crop", "mixup", "noise"), torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and a[0].shape == x.shape and not torch.equal(a[0], x)
    assert a[1] is ids
    with pytest.raises(UsageError, match="only integer inputs"):
        teacher.check_augment(("noise",), (ids,))
    with pytest.raises(UsageError, match="unknown augmentation 'flip'"):
        teacher.check_augment(("flip",))
