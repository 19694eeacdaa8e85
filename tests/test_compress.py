"""edgekit.compress on Fashion-MNIST: each method's claim, measured on the 10,000-image test split.

The trained model is conftest's fashion_model (FashionCNN, 156k parameters, one epoch on the 60k
training images). Compression steps train on 4,000 of those images for one epoch.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

import edgekit
from edgekit import compress, runtime
from edgekit.compress.data import Labelled
from edgekit.compress.train import TrainConfig, accuracy
from edgekit.errors import CalibrationError, CompressionError, ConversionError
from edgekit.pipeline import convert_many
from edgekit.sources import load_model

REPO = Path(__file__).resolve().parent.parent
MODEL = f"{REPO}/tests/models/fashion_cnn.py:build"
SMALL = f"{REPO}/tests/models/fashion_small.py:build"
ONE_EPOCH = TrainConfig(epochs=1, lr=5e-4)
CLI_ENV = {"OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(one_torch_thread, request):
    """conftest's fashion_model weights; trained here, after one_thread, unless another module already did."""
    return request.getfixturevalue("fashion_model")[1]


@pytest.fixture(scope="module")
def train_data(fashion):
    return fashion.train.x[20000:24000], fashion.train.y[20000:24000]


@pytest.fixture(scope="module")
def test_split(fashion):
    return Labelled(fashion.test.x, fashion.test.y, "fashion-mnist:test")


@pytest.fixture(scope="module")
def base_accuracy(weights, test_split):
    return accuracy(load_model(MODEL, weights=weights).module, test_split)


def artifact_accuracy(art, split: Labelled) -> float:
    (logits,) = runtime.load(art.path).run_batch(split.x)
    return float(np.mean(logits.argmax(1) == split.y))


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error"), proc.stderr
    return lines[0]


# ---------------------------------------------------------------- QAT

@pytest.fixture(scope="module")
def qat_case(weights, train_data, fashion_calib, test_split, tmp_path_factory):
    """FashionCNN with one outlier channel (float function unchanged): PTQ int8 vs QAT int8 on it."""
    import fashion_cnn

    root = tmp_path_factory.mktemp("qat")
    spec = load_model(MODEL, weights=weights)
    spec.module = fashion_cnn.with_outlier_channel(spec.module)
    ptq = edgekit.convert(spec, "tflite-int8", calibration=str(fashion_calib), out_dir=root / "ptq")
    res = compress.qat(spec, train_data, train=TrainConfig(epochs=1, lr=1e-4))
    qat_art = edgekit.convert(str(res.save(root / "net-qat.pt2")), "tflite-int8", calibration=str(fashion_calib), out_dir=root / "qat")
    (logits,) = runtime.load(qat_art.path).run_batch(test_split.x)
    return {"fp32": accuracy(spec.module, test_split), "ptq": artifact_accuracy(ptq, test_split),
            "qat": float(np.mean(logits.argmax(1) == test_split.y)), "logits": logits, "result": res, "artifact": qat_art}


def test_ptq_int8_really_loses_on_this_network(qat_case):
    assert qat_case["fp32"] > 0.83
    assert qat_case["fp32"] - qat_case["ptq"] >= 0.05, (qat_case["fp32"], qat_case["ptq"])


def test_qat_int8_recovers_what_ptq_lost(qat_case):
    assert qat_case["qat"] >= qat_case["ptq"] + 0.05, (qat_case["ptq"], qat_case["qat"])
    assert qat_case["qat"] >= qat_case["fp32"] - 0.015, (qat_case["fp32"], qat_case["qat"])


def test_int8_artifact_matches_the_fake_quant_model(qat_case, test_split):
    art = qat_case["artifact"]
    quant = art.manifest.recipe["quantize"]
    assert quant["prequantized"] is True and "no calibration" in quant["quantization_parameters"]
    out = art.manifest.outputs[0]
    assert out.dtype == "int8" and art.manifest.inputs[0].dtype == "int8"
    logits = qat_case["logits"]
    with torch.no_grad():
        ref = torch.cat([qat_case["result"].model(torch.from_numpy(x)) for x in np.array_split(test_split.x, 20)]).numpy()
    assert np.mean(logits.argmax(1) == ref.argmax(1)) >= 0.99
    steps = np.round(np.abs(logits - ref) / out.quantization.scale)  # both sit on the output's int8 grid
    # integer kernels requantize after every layer where fake-quant rounds once: a step here and there, compounding
    # rarely; the tail depends on the trained weights (max 4 or 5 steps over these 100,000 logits between runs)
    tail = float(np.quantile(steps, 0.999))
    assert tail <= 3 and steps.max() <= 6 and steps.mean() <= 0.3 and np.mean(steps == 0) >= 0.75, (tail, steps.max(), steps.mean())


# ---------------------------------------------------------------- pruning

@pytest.fixture(scope="module")
def float_size(weights, fashion_calib, tmp_path_factory):
    return edgekit.convert(load_model(MODEL, weights=weights), "tflite-fp32", calibration=str(fashion_calib),
                           out_dir=tmp_path_factory.mktemp("fp32") / "a").size_bytes


def test_structured_pruning_shrinks_parameters_and_the_exported_file(weights, train_data, test_split, fashion_calib, float_size,
                                                                     base_accuracy, tmp_path):
    res = compress.prune(load_model(MODEL, weights=weights), train_data, config=compress.PruneConfig("structured", 0.5), train=ONE_EPOCH)
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]  # really smaller tensors, not masks
    assert res.report["params_after"] <= 0.3 * res.report["params_before"]
    art = edgekit.convert(str(res.save(tmp_path / "pruned.pt2")), "tflite-fp32", calibration=str(fashion_calib), out_dir=tmp_path / "a")
    assert art.size_bytes <= 0.35 * float_size, (art.size_bytes, float_size)
    assert accuracy(res.model, test_split) >= base_accuracy - 0.06


def test_unstructured_zeros_do_not_shrink_the_dense_file(weights, train_data, fashion_calib, float_size, tmp_path):
    res = compress.prune(load_model(MODEL, weights=weights), train_data,
                         config=compress.PruneConfig("unstructured", 0.6), train=ONE_EPOCH)
    weights = [m.weight for m in res.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(zeros - 0.6) < 0.01 and res.report["sparsity"] == pytest.approx(zeros, abs=1e-3)
    assert res.report["params_after"] == res.report["params_before"]
    art = edgekit.convert(str(res.save(tmp_path / "sparse.pt2")), "tflite-fp32", calibration=str(fashion_calib), out_dir=tmp_path / "a")
    assert abs(art.size_bytes / float_size - 1) < 0.02  # what the report says: same size on a dense runtime
    assert "same size" in res.report["notes"][0] and res.report["weights_zlib_ratio"] < 0.8


def test_two_four_sparsity_pattern(weights, train_data):
    res = compress.prune(load_model(MODEL, weights=weights), train_data, config=compress.PruneConfig("2:4"),
                         train=TrainConfig(epochs=0))
    assert set(res.report["kept_whole"]) == {"features.0"}  # 9 inputs per output: no groups of four
    for name, m in res.model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and name != "features.0":
            groups = m.weight.detach().reshape(m.weight.shape[0], -1, 4)
            assert ((groups == 0).sum(-1) >= 2).all(), name


def test_channel_surgery_equals_zeroing_those_channels():
    """Without batch norm, removing a channel is the same function as zeroing its filter and bias: checks the
    slicing through functional ops, a view-flatten and the flattened Linear inputs."""
    import copy

    import torch.nn.functional as F

    from edgekit.compress import surgery

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 6, 3, padding=1)
            self.fc1, self.fc2 = torch.nn.Linear(6 * 7 * 7, 20), torch.nn.Linear(20, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.a(x)), 2)
            x = F.max_pool2d(torch.relu(self.b(x)), 2)
            return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))

    torch.manual_seed(0)
    net, x = Net().eval(), torch.rand(4, 1, 28, 28)
    plan = surgery.plan(net, (x[:1],), 0.5)
    assert set(plan.keep_out) == {"a", "b", "fc1"} and plan.skipped == {"fc2": "its output reaches the model output"}
    zeroed = copy.deepcopy(net)
    with torch.no_grad():
        for name, keep in plan.keep_out.items():
            layer = zeroed.get_submodule(name)
            dropped = torch.ones(layer.weight.shape[0], dtype=torch.bool)
            dropped[keep] = False
            layer.weight[dropped] = 0
            layer.bias[dropped] = 0
        torch.testing.assert_close(surgery.apply(net, plan)(x), zeroed(x))


def test_structured_pruning_refuses_what_it_cannot_cut(train_data):
    class Residual(torch.nn.Module):
        example_input_shape = (1, 1, 28, 28)

        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            y = self.a(x)
            return self.fc(torch.flatten(self.b(y) + y, 1))

    with pytest.raises(CompressionError, match="no layer's channels can be removed"):
        compress.prune(Residual(), train_data, config=compress.PruneConfig("structured", 0.5), train=ONE_EPOCH)


# ---------------------------------------------------------------- distillation

def test_distilled_student_beats_the_same_student_on_labels_alone(weights, fashion):
    """Five labelled images per class, 100 epochs, same student, same seed: with the teacher (trained on all
    60k images) and without it."""
    teacher = load_model(MODEL, weights=weights)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(fashion.train.y == c), 5, replace=False) for c in range(10)])
    data, val = (fashion.train.x[idx], fashion.train.y[idx]), (fashion.train.x[:300], fashion.train.y[:300])
    budget = TrainConfig(epochs=100, batch_size=32, lr=2e-3)
    test = Labelled(fashion.test.x, fashion.test.y, "test")
    acc = {}
    for alpha in (0.0, 0.9):
        res = compress.distill(teacher, data, student=SMALL, val=val, train=budget,
                               config=compress.DistillConfig(temperature=2.0, alpha=alpha))
        acc[alpha] = accuracy(res.model, test)
    assert res.report["params_after"] * 4 <= res.report["params_before"]
    assert acc[0.9] >= acc[0.0] + 0.02, acc


# ---------------------------------------------------------------- low-rank

def test_lowrank_cuts_parameters_with_bounded_accuracy_loss(weights, train_data, test_split, base_accuracy):
    res = compress.lowrank(load_model(MODEL, weights=weights), train_data, config=compress.LowRankConfig(energy=0.8), train=ONE_EPOCH)
    assert res.report["params_after"] <= 0.5 * res.report["params_before"]
    assert accuracy(res.model, test_split) >= base_accuracy - 0.02
    first, second = res.model.get_submodule("classifier.1")  # the 1024x128 layer as two thinner ones
    assert first.out_features == second.in_features < 64


def test_lowrank_meets_a_parameter_target(weights, train_data):
    res = compress.lowrank(load_model(MODEL, weights=weights), train_data,
                           config=compress.LowRankConfig(energy=None, target_params=60_000), train=TrainConfig(epochs=0))
    assert 50_000 < res.report["params_after"] <= 60_000


# ---------------------------------------------------------------- data, determinism

def test_same_seed_same_model_other_seed_other_model(weights, train_data):
    def run(seed):
        res = compress.lowrank(load_model(MODEL, weights=weights), (train_data[0][:1000], train_data[1][:1000]),
                               train=TrainConfig(epochs=1, seed=seed))
        return torch.cat([p.detach().flatten() for p in res.model.parameters()])

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unlabelled_data_learns_the_model_itself_and_labels_must_fit(tmp_path):
    from edgekit.datasets import digits

    x = digits().train.x[:500]  # real digits, their labels left out
    np.savez(tmp_path / "x.npz", x=x)
    res = compress.lowrank("edgekit.examples.digits:build", str(tmp_path / "x.npz"), config=compress.LowRankConfig(energy=0.8),
                           train=TrainConfig(epochs=1))
    out = res.report["outputs"]["output"]
    # without labels nothing proves the logits are class scores: a tensor, matched by MSE and scored by SQNR, and a note
    assert out["learns"] == "reference" and out["figure"] == "sqnr_db" and "val_accuracy_after" not in res.report
    assert any("--output output=KIND" in n for n in res.report["notes"])
    assert res.report["reference_calls"] == 500  # the unfactored model's outputs on each sample, once
    res = compress.lowrank("edgekit.examples.digits:build", str(tmp_path / "x.npz"), config=compress.LowRankConfig(energy=0.8),
                           train=TrainConfig(epochs=1), outputs=compress.OutputConfig(("output=class",)))
    assert res.report["outputs"]["output"]["figure"] == "top1_agreement" and res.report["outputs"]["output"]["after"] >= 0.9
    np.savez(tmp_path / "y.npz", x=x, y=np.full(500, 12))
    with pytest.raises(CalibrationError, match="labels run up to 12"):
        compress.lowrank("edgekit.examples.digits:build", str(tmp_path / "y.npz"))


def test_qat_is_for_static_int8_tflite_only(train_data, fashion_calib, tmp_path):
    with pytest.raises(edgekit.EdgekitError, match="static int8 TFLite"):
        compress.qat("edgekit.examples.digits:build", "digits", config=compress.QATConfig(target="onnx-int8"))
    res = compress.qat(SMALL, (train_data[0][:500], train_data[1][:500]), train=TrainConfig(epochs=0))
    rows = convert_many(str(res.save(tmp_path / "q.pt2")), ["onnx-int8", "tflite-fp32"], out_root=tmp_path, calibration=str(fashion_calib))
    assert all(isinstance(r.error, ConversionError) and "already quantized" in str(r.error) for r in rows)


# ---------------------------------------------------------------- command line

def test_cli_qat_then_convert(in_tmp, fashion):
    np.savez(in_tmp / "train.npz", x=fashion.train.x[:1500], y=fashion.train.y[:1500])
    p = run_cli("qat", SMALL, "--data", "train.npz", "--epochs", "1", "--lr", "1e-3", "--out", "net-qat.pt2", "--json", "qat.json", cwd=in_tmp, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    assert "qat 1/1" in p.stderr and "val acc" in p.stderr
    rep = json.loads((in_tmp / "qat.json").read_text())
    assert rep["command"] == "qat" and len(rep["history"]) == 1
    # the second line: no --calib needed, the .pt2 names its data
    c = run_cli("convert", "net-qat.pt2", "--target", "tflite-int8", "--json", "c.json", cwd=in_tmp, env=CLI_ENV)
    assert c.returncode == 0, c.stderr
    (row,) = json.loads((in_tmp / "c.json").read_text())["results"]
    assert row["artifact"]["recipe"]["quantize"]["prequantized"] is True
    assert row["artifact"]["validation"]["top1_agreement"] >= 0.97


def test_cli_prune_structured(in_tmp, weights):
    p = run_cli("prune", MODEL, "--weights", weights, "--structured", "0.5", "--data", "fashion-mnist",
                "--samples", "1000", "--finetune-epochs", "1", "--out", "net-pruned.pt2", "--json", "p.json", cwd=in_tmp, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    rep = json.loads((in_tmp / "p.json").read_text())
    assert rep["param_ratio"] <= 0.3 and rep["data"]["samples"] == 1000
    assert load_model(str(in_tmp / "net-pruned.pt2")).num_params == rep["params_after"]


def test_cli_distill_from_image_folders(in_tmp, weights, fashion):
    from PIL import Image

    for i in range(200):
        folder = in_tmp / "imgs" / f"class{fashion.train.y[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((fashion.train.x[i, 0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    # the folder names sort as the classes do only if every class is present
    assert len(list((in_tmp / "imgs").iterdir())) == 10
    p = run_cli("distill", "--teacher", MODEL, "--teacher-weights", weights, "--width", "0.5",
                "--feature", "features.6:features.6", "--data", "imgs", "--data-spec", "grayscale-28", "--epochs", "1",
                "--out", "small.pt2", "--json", "d.json", cwd=in_tmp, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    rep = json.loads((in_tmp / "d.json").read_text())
    assert rep["data"]["samples"] == 180 and rep["layers"]["features.4"] == "32 -> 16"
    assert rep["params_after"] * 3.5 <= rep["params_before"]


def test_cli_lowrank_bundled_digits(in_tmp):
    p = run_cli("lowrank", "edgekit.examples.digits:build", "--target-params", "100000", "--data", "digits", "--out", "lr.pt2",
                "--json", "l.json", cwd=in_tmp, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    rep = json.loads((in_tmp / "l.json").read_text())
    assert 90_000 < rep["params_after"] <= 100_000 < rep["params_before"] and rep["val_accuracy_after"] >= 0.95
    assert (in_tmp / "lr.pt2").is_file() and not list(in_tmp.glob(".*tmp*"))


@pytest.mark.parametrize("args,needle", [
    (["qat", "nowhere.py:build", "--data", "digits", "--out", "x.pt2"], "model file not found"),
    (["prune", "edgekit.examples.digits:build", "--structured", "0.5", "--data", "missing.npz", "--out", "x.pt2"],
     "training data not found"),
    (["prune", "edgekit.examples.digits:build", "--data", "digits", "--out", "x.pt2"], "give one of --structured"),
    (["lowrank", "edgekit.examples.digits:build", "--data", "digits", "--out", "x.onnx"], "must end in .pt2"),
])
def test_cli_bad_input_is_one_line(in_tmp, args, needle):
    assert needle in one_line_error(run_cli(*args, cwd=in_tmp, env=CLI_ENV))
    assert not list(in_tmp.glob("*.pt2"))
