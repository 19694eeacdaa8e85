"""edgekit.compress on real pretrained models (issue 15): any outputs, graphs from torch.export,
transformer students, black-box teachers.

- MTCNN's RNet (facenet-pytorch's weights): two outputs, box regression [N, 4] and face probabilities
  [N, 2]. Unlabelled training data: the even LFW crops and 256 crops of natural photos; held out: the
  odd LFW crops (50 faces, 50 non-faces, labelled).
- all-MiniLM-L6-v2: sentence embeddings; a 3-block student distilled on 480 unlabelled sentences,
  scored by cosine to the teacher's embeddings on 200 other sentences.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

import edgekit
from edgekit import compress, runtime
from edgekit.compress.data import Samples
from edgekit.compress.train import TrainConfig, predict
from edgekit.errors import CompressionError
from edgekit.validate import cosines

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parent.parent
RNET = f"{REPO}/tests/models/mtcnn_rnet.py:build"
SMALL_RNET = f"{REPO}/tests/models/mtcnn_rnet.py:small"
BOXES_ARE_REGRESSION = compress.OutputConfig(("output_0=regression",))
CLI_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def faces():
    """(unlabelled training pool, labelled held-out faces/non-faces): no crop in both."""
    import mtcnn_rnet

    x, y = mtcnn_rnet.lfw_subset()
    pool = np.concatenate([x[0::2], mtcnn_rnet.photo_crops(256)])
    return pool, Samples({"x": x[1::2]}, "lfw odd", y[1::2])


def face_accuracy(model, held: Samples) -> float:
    _boxes, probs = predict(model, held)
    return float(np.mean(probs.argmax(1) == held.labels))


class Checked(torch.nn.Module):
    """RNet behind the kind of input check real model code has: torch.fx's symbolic tracer cannot get past it."""

    example_input_shape = (1, 3, 24, 24)

    def __init__(self):
        super().__init__()
        import mtcnn_rnet

        self.net = mtcnn_rnet.build()

    def forward(self, x):
        if x.shape[-2:] != (24, 24):
            raise ValueError(f"RNet takes 24x24 crops, got {tuple(x.shape[-2:])}")
        return self.net(x)


# ---------------------------------------------------------------- graphs from torch.export

def test_structured_pruning_and_lowrank_get_past_an_input_check(faces):
    pool, held = faces
    model = Checked().eval()
    with pytest.raises(torch.fx.proxy.TraceError):  # what structured pruning used to trace with
        torch.fx.symbolic_trace(model)
    pruned = compress.prune(model, pool, config=compress.PruneConfig("structured", 0.5), train=TrainConfig(epochs=3, batch_size=32),
                            outputs=compress.OutputConfig(("output_0=regression",)))
    assert pruned.report["layers"] == {"net.conv1": "28 -> 14", "net.conv2": "48 -> 24", "net.dense4": "128 -> 64"}
    assert pruned.report["kept_whole"]["net.conv3"] == "its output reaches permute in net"
    assert pruned.report["param_ratio"] < 0.5
    low = compress.lowrank(model, pool, config=compress.LowRankConfig(energy=0.9), train=TrainConfig(epochs=3, batch_size=32),
                           outputs=compress.OutputConfig(("output_0=regression",)))
    assert low.report["ranks"]["net.dense4"].endswith("of 128") and low.report["param_ratio"] < 0.6
    for res in (pruned, low):
        assert face_accuracy(res.model, held) >= 0.97
        with pytest.raises(ValueError, match="24x24"):  # the check is still the model's own
            res.model(torch.zeros(1, 3, 32, 32))


def test_a_branch_on_values_is_one_line_with_the_fix(faces):
    class Gated(torch.nn.Module):
        example_input_shape = (1, 3, 24, 24)

        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8 * 22 * 22, 2)

        def forward(self, x):
            h = self.a(x)
            if h.mean() > 0:  # data-dependent: no exported graph holds this
                h = h * 2
            return self.b(h.flatten(1))

    with pytest.raises(CompressionError, match="torch.export cannot trace it") as err:
        compress.prune(Gated(), faces[0], config=compress.PruneConfig("structured", 0.5), train=TrainConfig(epochs=0))
    assert "torch.where" in err.value.hint and "\n" not in str(err.value)


def test_surgery_follows_real_architectures():
    """EfficientNet-Lite0's expansion channels (1x1 -> depthwise -> 1x1) and MiniLM's feed-forward width are cut;
    residual outputs and attention projections are kept, each with the reason."""
    import efficientnet_lite0
    import minilm

    from edgekit.compress import surgery

    net = efficientnet_lite0.build()
    x = torch.from_numpy(efficientnet_lite0.photos(2, split="calib"))
    plan = surgery.plan(net, (x[:1],), 0.5)
    assert plan.norms["_blocks.1._depthwise_conv"] == "_blocks.1._expand_conv"
    assert "reaches add" in plan.skipped["_blocks.2._project_conv"]
    small = surgery.apply(net, plan).eval()
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        assert small(x).shape == (2, 1000)
    bert = minilm.build()
    plan = surgery.plan(bert, minilm.build.example_inputs, 0.5)
    assert set(plan.keep_out) == {f"bert.encoder.layer.{i}.intermediate.dense" for i in range(6)}
    assert set(plan.keep_in) == {f"bert.encoder.layer.{i}.output.dense" for i in range(6)}
    assert "reaches view" in plan.skipped["bert.encoder.layer.0.attention.self.query"]


# ---------------------------------------------------------------- any outputs

@pytest.fixture(scope="module")
def rnet_qat(faces, tmp_path_factory):
    pool, held = faces
    root = tmp_path_factory.mktemp("rnet-qat")
    res = compress.qat(RNET, pool, train=TrainConfig(epochs=2, batch_size=32, lr=1e-4), outputs=BOXES_ARE_REGRESSION)
    np.savez(root / "held.npz", x=held.x, y=held.labels)
    art = edgekit.convert(str(res.save(root / "rnet-qat.pt2")), "tflite-int8", calibration=str(root / "held.npz"), out_dir=root / "art")
    return res, art


def test_qat_of_a_two_output_model_reports_each_output(rnet_qat, faces):
    res, art = rnet_qat
    outs = res.report["outputs"]
    assert outs["output_0"]["kind"] == "regression" and outs["output_0"]["figure"] == "mae" and outs["output_0"]["learns"] == "reference"
    assert outs["output_1"]["kind"] == "class (inferred)" and outs["output_1"]["figure"] == "top1_agreement"
    # the box offsets of the fake-quantized model stay within a tenth of their own spread of the float model's
    assert 0 < outs["output_0"]["after"] < 0.1 * outs["output_0"]["reference_std"]
    assert outs["output_1"]["after"] >= 0.97
    _held_pool, held = faces
    boxes, probs = runtime.load(art.path).run_batch(held.x)
    assert art.manifest.recipe["quantize"]["prequantized"] is True
    assert np.mean(probs.argmax(1) == held.labels) >= 0.97  # the int8 artifact still tells faces from non-faces
    ref_boxes, _ = predict(res.model, held)
    assert np.mean(np.abs(boxes - ref_boxes)) < 0.5 * outs["output_0"]["reference_std"]


def test_cli_prune_two_outputs_without_labels(in_tmp, faces):
    np.save(in_tmp / "pool.npy", faces[0])
    p = run_cli("prune", RNET, "--structured", "0.5", "--data", "pool.npy",
                "--output", "output_0=regression", "--output-weight", "output_0=2", "--finetune-epochs", "2",
                "--out", "rnet-small.pt2", "--json", "p.json", cwd=in_tmp, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    assert "output_0 [regression] mae vs reference" in p.stdout and "output_1 [class (inferred)] top1 agreement" in p.stdout
    rep = json.loads((in_tmp / "p.json").read_text())
    assert rep["outputs"]["output_0"]["weight"] == 2.0 and rep["outputs"]["output_1"]["after"] >= 0.95
    assert rep["reference_calls"] == len(faces[0])  # the unpruned model labelled each sample once (train + held out)
    bad = run_cli("prune", RNET, "--structured", "0.5", "--data", "pool.npy",
                  "--output-weight", "boxes=2", "--out", "x.pt2", cwd=in_tmp, env=CLI_ENV)
    assert bad.returncode == 2 and "not an output of the model" in bad.stderr and "Traceback" not in bad.stderr
    assert not (in_tmp / "x.pt2").exists()


# ---------------------------------------------------------------- transformer student

@pytest.fixture(scope="module")
def sentences():
    import minilm

    s = minilm.sentences()
    train, held = s[:480], s[-200:]
    assert not set(train) & set(held)
    cut = 64  # tokens: every sentence here fits (checked below); shorter sequences make the test 2x faster

    def enc(texts):
        e = minilm.encode(texts)
        assert (e["attention_mask"][:, cut:] == 0).all()
        return {k: v[:, :cut] for k, v in e.items()}

    return enc(train), enc(held)


def test_transformer_student_with_half_the_layers_learns_from_embeddings_and_attention(sentences):
    import minilm

    from edgekit.sources import ModelSpec

    train, held = sentences
    teacher = ModelSpec(minilm.build(), tuple(torch.from_numpy(v[:1]) for v in held.values()), ["input_ids", "attention_mask"],
                        "minilm", "all-MiniLM-L6-v2")
    budget = TrainConfig(epochs=2, batch_size=16, lr=2e-4)
    res = compress.distill(teacher, train, config=compress.DistillConfig(layers=3, attention_weight=1.0), train=budget)
    assert res.report["kept_layers"] == [1, 3, 5] and res.report["attention_pairs"] == [(0, 1), (1, 3), (2, 5)]
    assert res.report["outputs"]["output"]["kind"] == "embedding (inferred)"
    assert 0.6 < res.report["param_ratio"] < 0.8  # half the blocks; the embedding tables stay
    held_s = Samples(dict(held), "held")
    ref = predict(teacher.module, held_s, 50)[0]
    distilled = float(np.mean(cosines(ref, predict(res.model, held_s, 50)[0])))
    untaught = float(np.mean(cosines(ref, predict(compress.transformer_student(teacher.module, 3), held_s, 50)[0])))
    # the same 3-block student without the teacher: no labels exist for sentence embeddings, so nothing else teaches it
    assert res.report["student_start"]["output"] == pytest.approx(untaught, abs=0.02)
    assert distilled >= untaught + 0.15, (untaught, distilled)
    assert distilled >= 0.75, distilled


# ---------------------------------------------------------------- black-box teacher

@pytest.fixture(scope="module")
def int8_teacher(faces, tmp_path_factory):
    """RNet at tflite-int8: the teacher is this artifact alone (the student never sees RNet's weights)."""
    root = tmp_path_factory.mktemp("teacher")
    np.save(root / "calib.npy", faces[0][:128])
    return edgekit.convert(RNET, "tflite-int8", calibration=str(root / "calib.npy"), out_dir=root / "rnet-int8")


def test_student_of_an_int8_tflite_teacher_beats_the_few_labels(int8_teacher, faces):
    """The same small student (18 k parameters, random start), same seed: trained on 10 labelled crops alone, or
    taught by the int8 artifact on 200 unlabelled ones (LFW's training half and natural-photo crops, new crops
    and noise each epoch). Scored on the held-out LFW half against its labels."""
    import mtcnn_rnet

    _pool, held = faces
    x, y = mtcnn_rnet.lfw_subset()
    few = np.r_[np.arange(0, 100, 2)[:5], np.arange(100, 200, 2)[:5]]  # 5 faces, 5 non-faces, from the training half
    labels_only = compress.distill(int8_teacher.path, (x[few], y[few]), student=SMALL_RNET,
                                   config=compress.DistillConfig(alpha=0.0), outputs=compress.OutputConfig(weights=("output_0=0",)),
                                   train=TrainConfig(epochs=30, batch_size=32, lr=2e-3))
    unlabelled = np.concatenate([x[0::2], mtcnn_rnet.photo_crops(100)])
    epochs = 20
    taught = compress.distill(int8_teacher.path, unlabelled, student=SMALL_RNET, config=compress.DistillConfig(augment=("crop", "noise"), temperature=2.0),
                              outputs=BOXES_ARE_REGRESSION, train=TrainConfig(epochs=epochs, batch_size=32, lr=2e-3))
    acc_labels, acc_taught = face_accuracy(labels_only.model, held), face_accuracy(taught.model, held)
    assert acc_labels >= 0.8  # a fair baseline: the labels alone do teach it
    assert acc_taught >= acc_labels + 0.03 and acc_taught >= 0.97, (acc_labels, acc_taught)
    assert taught.report["teacher_kind"].startswith("black box")
    n_val = int(len(unlabelled) * 0.1)
    # every augmented batch of every epoch, plus the held-out part once
    assert taught.report["reference_calls"] == epochs * (len(unlabelled) - n_val) + n_val
    assert any("ran on" in n for n in taught.report["notes"])


def test_bare_tflite_teacher_file(int8_teacher, faces, tmp_path):
    tfl = next(int8_teacher.path.glob("*.tflite"))
    res = compress.distill(str(tfl), faces[0][:200], student=SMALL_RNET, outputs=BOXES_ARE_REGRESSION,
                           train=TrainConfig(epochs=1, batch_size=32))
    assert res.report["teacher"] == str(tfl) and res.report["reference_calls"] == 200
    with pytest.raises(edgekit.EdgekitError, match="black box"):
        compress.distill(str(tfl), faces[0][:200], config=compress.DistillConfig(width=0.5))


def test_cli_distill_from_a_black_box(in_tmp, int8_teacher, faces):
    np.save(in_tmp / "crops.npy", faces[0][:120])
    p = run_cli("distill", "--teacher", str(int8_teacher.path), "--student", SMALL_RNET, "--data", "crops.npy", "--augment", "crop",
                "--output", "output_0=regression", "--epochs", "2", "--out", "student.pt2", "--json", "d.json", cwd=in_tmp, env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    rep = json.loads((in_tmp / "d.json").read_text())
    assert rep["teacher_kind"].startswith("black box") and rep["augment"] == ["crop"]
    assert rep["params_before"] == 100_178  # the artifact's manifest says what the teacher had
    assert rep["reference_calls"] == 2 * 108 + 12 and "ran on 228 samples" in p.stderr
    assert "XNNPACK" not in p.stderr
    bad = run_cli("distill", "--teacher", str(int8_teacher.path), "--width", "0.5", "--data", "crops.npy", "--out", "s2.pt2",
                  cwd=in_tmp, env=CLI_ENV)
    assert bad.returncode == 2 and "black box" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    gone = run_cli("distill", "--teacher", "gone.tflite", "--student", SMALL_RNET, "--data", "crops.npy", "--out", "s3.pt2",
                   cwd=in_tmp, env=CLI_ENV)
    assert gone.returncode != 0 and "teacher file not found" in gone.stderr and "Traceback" not in gone.stderr
    assert not (in_tmp / "s2.pt2").exists() and not (in_tmp / "s3.pt2").exists()
