"""Cross-layer equalization, batch-norm folding and bias correction (edgekit.quantize.equalize; DFQ, Nagel et
al. 2019) on small hand-built nets (fast) and on EfficientNet-Lite0 with its real ImageNet weights (slow)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent / "models"))

from edgekit.quantize.equalize import (ChannelClip, correct_bias, equalize, fake_quantize_weight, fold_batchnorm,  # noqa: E402
                                       weight_range_ratios)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking batch norms: per-channel gammas over two decades make the folded ranges differ ~100x."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.exp(torch.randn(n, generator=g) * 1.5)
            m.bias.data = torch.randn(n, generator=g) * 0.5
            m.running_mean = torch.randn(n, generator=g) * 0.3
            m.running_var = torch.exp(torch.randn(n, generator=g))
    return model.eval()


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


class ConvNet(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-maxpool-conv, global mean, linear (no ReLU6): three equalizable pairs."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32)  # grouped: 4 input groups
        self.c3 = nn.Conv2d(32, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        x = self.c3(x).relu()
        return self.fc(x.mean((2, 3)))


class Triplet(nn.Module):
    """MobileNet/EfficientNet's inverted residual: 1x1 expand -> depthwise 3x3 -> 1x1 project, BN after each."""

    def __init__(self, act: type[nn.Module] = nn.ReLU, cin: int = 8, mid: int = 32):
        super().__init__()
        self.expand, self.bn0 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.dw, self.bn1 = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.project, self.bn2 = nn.Conv2d(mid, cin, 1, bias=False), nn.BatchNorm2d(cin)
        self.act = act()

    def forward(self, x):
        y = self.act(self.bn0(self.expand(x)))
        y = self.act(self.bn1(self.dw(y)))
        return x + self.bn2(self.project(y))


def test_fold_batchnorm_is_exact_and_replaces_bn():
    torch.manual_seed(0)
    model = _randomise_bn(ConvNet())
    x = torch.randn(4, 3, 16, 16)
    folded, n = fold_batchnorm(model)
    assert n == 2 and folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input is left alone
    with torch.no_grad():
        assert _rel_diff(folded(x), model(x)) < 1e-5


def test_linear_batchnorm1d_is_folded_only_when_the_inputs_show_it_is_2d():
    """On [N, L, C] BatchNorm1d normalises L, not the Linear's features: folding needs the shapes."""
    torch.manual_seed(5)
    mlp = _randomise_bn(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)))
    x = torch.randn(32, 8)
    res = fold_batchnorm(mlp)
    assert res.n_folded == 0 and res.model is mlp and res.reason
    folded, n = fold_batchnorm(mlp, example_inputs=(x,))
    assert n == 1
    rep = equalize(mlp, example_inputs=(x,))
    assert rep.pair_names == [("0", "3")] and rep.folded == 1
    with torch.no_grad():
        assert _rel_diff(folded(x), mlp(x)) < 1e-5 and _rel_diff(rep.model(x), mlp(x)) < 1e-4


def test_fold_batchnorm_refuses_training_mode_and_untraceable_models():
    model = _randomise_bn(ConvNet()).train()
    res = fold_batchnorm(model)
    assert res.model is model and res.n_folded == 0 and "training mode" in res.reason
    res = fold_batchnorm(Untraceable().eval())
    assert res.n_folded == 0 and "torch.fx cannot trace" in res.reason


def test_equalize_keeps_the_function_and_evens_the_ranges():
    torch.manual_seed(0)
    model = _randomise_bn(ConvNet())
    x = torch.randn(8, 3, 16, 16)
    rep = equalize(model)
    assert rep.reason == "" and rep.pairs == 3 and rep.folded == 2 and rep.relu6_replaced == 0
    assert set(rep.pair_names) == {("c1", "c2"), ("c2", "c3"), ("c3", "fc")}  # through relu, max-pool, mean
    with torch.no_grad():
        assert _rel_diff(rep.model(x), model(x)) < 1e-4
    assert rep.max_ratio_after < rep.max_ratio_before / 2, (rep.max_ratio_before, rep.max_ratio_after)
    assert type(rep.model) is ConvNet  # no graph rewrite needed: the user's class is kept


@pytest.mark.parametrize("relu6,exact", [("clip", True), ("relu", False)])
def test_equalize_handles_depthwise_triplets(relu6, exact):
    """expand -> dw -> project is two overlapping pairs; the depthwise conv is b of one and a of the other."""
    torch.manual_seed(1)
    model = _randomise_bn(Triplet(nn.ReLU6))
    before = weight_range_ratios(fold_batchnorm(model).model)
    rep = equalize(model, relu6=relu6)
    assert rep.pairs == 2 and rep.relu6_replaced == 2 and set(rep.pair_names) == {("expand", "dw"), ("dw", "project")}
    after = weight_range_ratios(rep.model)
    for name in ("expand", "dw"):  # the ranges these layers' channels span drop by well over half
        assert after[name] < before[name] / 3, (name, before[name], after[name])
    x = torch.randn(8, 8, 12, 12) * 3
    with torch.no_grad():
        diff = _rel_diff(rep.model(x), model(x))
    if exact:  # ReLU6 clips at 6/s per channel: the very same function
        assert diff < 1e-4 and sum(isinstance(m, ChannelClip) for m in rep.model.modules()) == 2
    else:  # ReLU6 -> ReLU (the paper's MobileNetV2 recipe) changes the function wherever ReLU6 clipped
        assert diff > 1e-3 and not any(isinstance(m, (nn.ReLU6, ChannelClip)) for m in rep.model.modules())


def test_equalize_relu6_skip_leaves_relu6_pairs_alone():
    torch.manual_seed(2)
    model = _randomise_bn(Triplet(nn.ReLU6))
    rep = equalize(model, relu6="skip")
    assert rep.pairs == 0 and rep.relu6_pairs_skipped == 2 and "ReLU6" in rep.reason and rep.model is model

    class Mixed(nn.Module):  # one ReLU pair, one ReLU6 pair
        def __init__(self):
            super().__init__()
            self.a, self.ba = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.b, self.bb = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(F.relu6(self.bb(self.b(F.relu(self.ba(self.a(x)))))))

    model = _randomise_bn(Mixed())
    rep = equalize(model, relu6="skip")
    assert rep.pair_names == [("a", "b")] and rep.relu6_pairs_skipped == 1 and rep.relu6_replaced == 0
    x = torch.randn(4, 3, 12, 12) * 4
    with torch.no_grad():
        assert _rel_diff(rep.model(x), model(x)) < 1e-4


def test_equalize_without_chains_returns_the_model_with_a_reason():
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).eval()  # GELU is not scale-equivariant
    rep = equalize(mlp)
    assert rep.model is mlp and rep.pairs == 0 and "no Conv-BN-ReLU chains found" in rep.reason
    single = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    rep = equalize(single)
    assert rep.model is single and "no Conv-BN-ReLU chains found" in rep.reason


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.b(F.relu(self.a(x)))


def test_equalize_untraceable_model_is_returned_with_a_reason():
    model = Untraceable().eval()
    state = copy.deepcopy(model.state_dict())
    rep = equalize(model)
    assert rep.model is model and rep.pairs == 0 and "torch.fx cannot trace" in rep.reason
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_fake_quantize_weight_per_channel_and_per_tensor():
    w = torch.tensor([[1.0, -0.5, 0.25], [0.003, 0.002, -0.001]])
    pc = fake_quantize_weight(w, 8, per_channel=True)
    pt = fake_quantize_weight(w, 8, per_channel=False)
    assert torch.allclose(pc, w, atol=1 / 254) and pc[1].abs().max() == pytest.approx(0.003)  # max|w| -> level 127
    assert torch.allclose(pt[0], w[0], atol=1 / 254)
    assert torch.equal(pt[1].abs(), torch.zeros(3))  # 333x narrower than row 0: below half a per-tensor step (1/254)
    asym = fake_quantize_weight(w, 8, per_channel=True, symmetric=False)
    assert (asym - w).abs().max() < 0.01


def test_correct_bias_reduces_the_error_of_the_weight_quantized_model():
    """A small trained-looking CNN with 4-bit per-tensor weights: rounding shifts every layer's output mean;
    correcting the biases on 64 calibration images must cut the mean output error on 64 held-out ones."""
    torch.manual_seed(3)
    model = _randomise_bn(ConvNet())
    calib, held = torch.randn(64, 3, 16, 16) + 0.5, torch.randn(64, 3, 16, 16) + 0.5
    rep = correct_bias(model, [(calib[i:i + 16],) for i in range(0, 64, 16)], weight_bits=4, per_channel=False)
    assert rep.layers_changed == 4 and rep.folded == 2 and rep.passes == 2 and rep.mean_abs_shift > 0
    assert any(isinstance(m, nn.Identity) for m in rep.model.modules())  # BN folded first
    for m in rep.model.modules():  # the float weights are kept (only biases changed)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert not torch.equal(m.weight, fake_quantize_weight(m.weight, 4, per_channel=False))

    def quantized(m):
        return _weights_quantized(m, per_channel=False, bits=4)

    with torch.no_grad():
        ref = model(held)
        err_plain = (quantized(model)(held) - ref).mean(0).abs().mean()  # mean (bias) error per output
        err_corr = (quantized(rep.model)(held) - ref).mean(0).abs().mean()
        mse_plain = ((quantized(model)(held) - ref) ** 2).mean()
        mse_corr = ((quantized(rep.model)(held) - ref) ** 2).mean()
    assert err_corr < 0.5 * err_plain, (float(err_plain), float(err_corr))
    assert mse_corr < mse_plain, (float(mse_plain), float(mse_corr))


def test_correct_bias_in_chunks_matches_one_batch():
    """batch_size bounds memory with one early-stopped pass per layer; same corrections as the single pass."""
    torch.manual_seed(4)
    model = _randomise_bn(Triplet(nn.ReLU))
    samples = [(torch.randn(8, 8, 10, 10),) for _ in range(4)]
    one = correct_bias(model, samples, weight_bits=4)
    chunked = correct_bias(model, samples, weight_bits=4, batch_size=8)
    assert one.passes == 2 and chunked.passes == 1 + 3
    for name in one.layers:
        assert torch.allclose(one.model.get_submodule(name).bias, chunked.model.get_submodule(name).bias, atol=1e-5)


# ---------------------------------------------------------------- EfficientNet-Lite0 (real ImageNet weights)

def _efficientnet():
    import efficientnet_lite0 as E

    try:
        E.weights_path()
        E.photo_path(E.VAL_PHOTOS[0])
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"EfficientNet-Lite0 weights or photos missing: {exc}")
    return E


def _weights_quantized(model: nn.Module, per_channel: bool, bits: int = 8) -> nn.Module:
    """A copy with every Conv2d/Linear weight rounded as the quantizer will (activations stay float)."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        for m in q.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(fake_quantize_weight(m.weight, bits, per_channel=per_channel))
    return q


@pytest.mark.slow
def test_efficientnet_lite0_per_tensor_weights_need_cle():
    """The published DFQ effect, on real weights and 64 held-out photos. Per-tensor int8 weights (activations
    float, fake-quantized in torch), top-1 agreement with the float model (measured, 1 thread, ~60 s):

        BN folded, rounded:        0.59    (folded depthwise ranges: up to 134x per tensor, median 12x)
        CLE (relu6="clip"):        0.89    (max 5.2x, median 3.1x; the float function is kept, diff ~2e-6)
        CLE + bias correction:     0.92    (32 calibration photos; ~10 s)

    ReLU6 -> ReLU, the paper's MobileNetV2 recipe, is no option here: EfficientNet-Lite0 relies on the clip,
    the float model alone keeps only 31% of its top-1 with ReLU.

    Through edgekit's real int8 routes (activations int8 too, 256 held-out photos) CLE pays only with
    per-tensor weights (tflite-int8 per_channel=false: 0.535 -> 0.793) and costs with per-channel ones, the
    default (tflite-int8: 0.902 -> 0.777): see equalize's docstring. Not asserted here (minutes per route)."""
    E = _efficientnet()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_efficientnet(E)
    finally:
        torch.set_num_threads(threads)


def _check_efficientnet(E) -> None:
    model = E.build()
    val = torch.from_numpy(E.photos(64, split="val"))
    calib = torch.from_numpy(E.photos(32, split="calib"))
    with torch.no_grad():
        ref = model(val).argmax(1)

    def agreement(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(val).argmax(1) == ref).float().mean())

    rep = equalize(model)
    assert rep.pairs == 35 and rep.relu6_replaced == 33 and rep.folded == 49
    assert rep.max_ratio_before > 100 and rep.max_ratio_after < 10 and rep.median_ratio_after < rep.median_ratio_before / 2
    assert agreement(rep.model) == 1.0  # exact: clipped per channel, not ReLU

    plain = agreement(_weights_quantized(fold_batchnorm(model).model, per_channel=False))
    cle = agreement(_weights_quantized(rep.model, per_channel=False))
    bc = correct_bias(rep.model, [(calib,)], per_channel=False)
    assert bc.layers_changed == 50 and bc.passes == 2
    cle_bc = agreement(_weights_quantized(bc.model, per_channel=False))
    assert plain <= 0.75, plain  # measured 0.59
    assert cle >= plain + 0.15 and cle >= 0.8, (plain, cle)  # measured 0.89
    assert cle_bc >= cle - 2 / 64, (cle, cle_bc)  # measured 0.92: not worse (within 2 photos of 64)


def test_target_fields_prepare_the_exported_copy_only(tmp_path):
    """`equalize` / `bias_correction` in a target's [quantize] reach the export (recorded in the recipe), the artifact
    is validated against the model as given, and a per-tensor int8 target of the bundled digits CNN stays healthy."""
    import edgekit
    from edgekit.targets import load_target

    base = (Path(__file__).parents[1] / "targets" / "tflite-int8.toml").read_text()
    toml = tmp_path / "tflite-int8-pt-cle.toml"
    toml.write_text(base.replace("per_channel = true", "per_channel = false").replace("bias_correction = true", "bias_correction = true\nequalize = true"))
    assert load_target(toml).quant.equalize and not load_target(toml).quant.per_channel
    art = edgekit.convert(target=str(toml), out_dir=tmp_path / "art")
    w = art.manifest.recipe["weights"]
    assert w["equalize"]["pairs"] >= 1 and w["equalize"]["folded"] == 2 and not w["equalize"]["reason"]
    assert w["equalize"]["max_ratio_after"] < w["equalize"]["max_ratio_before"]
    assert w["bias_correction"]["layers_changed"] >= 3 and w["bias_correction"]["samples"] == 64
    assert art.validation["status"] == "ok", art.validation


def test_recipe_fields_are_refused_where_they_mean_nothing(tmp_path):
    from edgekit.errors import TargetError
    from edgekit.targets import load_target

    base = (Path(__file__).parents[1] / "targets" / "tflite-fp16.toml").read_text()
    toml = tmp_path / "fp16-bc.toml"
    toml.write_text(base.replace("[quantize]", "[quantize]\nbias_correction = true"))
    with pytest.raises(TargetError, match="bias_correction"):
        load_target(toml)
