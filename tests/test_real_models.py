"""The real models of tests/models (installed by scripts/setup-models.sh) load and behave: a
pretrained sentence embedder, a streaming keyword spotter trained here on espeak-ng speech, the
pretrained MTCNN stage nets and the pretrained EfficientNet-Lite0 ImageNet classifier. These check the
models themselves, not edgekit."""

import numpy as np
import pytest
import torch


# ------------------------------------------------------------------ MiniLM

PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The weather is cold and rainy today.", "It is a chilly, wet day."),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("How do I reset my password?", "What are the steps to change my login password?"),
    ("The stock market fell sharply this morning.", "Share prices dropped steeply early today."),
    ("She is cooking pasta in the kitchen.", "A woman is making spaghetti."),
]


@pytest.fixture(scope="session")
def minilm():
    import minilm

    return minilm, minilm.build()


def _embed(minilm, texts):
    mod, model = minilm
    enc = mod.encode(texts)
    with torch.no_grad():
        return model(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])).numpy()


def test_minilm_inputs_are_real_token_ids(minilm):
    mod, model = minilm
    ids, mask = mod.build.example_inputs
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape == (1, 128)
    enc = mod.encode(["Hello world.", "A much longer sentence, " * 40])
    assert enc["input_ids"].dtype == np.int64 and enc["input_ids"].shape == (2, 128)
    assert enc["input_ids"][0, 0] == 101 and 102 in enc["input_ids"][0]  # [CLS] ... [SEP]
    assert enc["attention_mask"][0].sum() == 5 and enc["attention_mask"][1].sum() == 128  # padded / truncated
    assert 0 <= enc["input_ids"].min() and enc["input_ids"].max() < 30522
    out = model(ids, mask)
    assert out.shape == (1, 384) and abs(float(out.norm()) - 1.0) < 1e-5


def test_minilm_paraphrases_are_closer_than_unrelated(minilm):
    a = _embed(minilm, [p for p, _ in PARAPHRASES])
    b = _embed(minilm, [q for _, q in PARAPHRASES])
    sim = a @ b.T  # unit vectors: cosine similarity
    for i in range(len(PARAPHRASES)):
        others = np.delete(sim[i], i)
        assert sim[i, i] > others.max() + 0.1, (PARAPHRASES[i], sim[i])
    assert np.diag(sim).mean() > 0.6
    assert sim[~np.eye(len(sim), dtype=bool)].mean() < 0.2


def test_minilm_separates_real_text_by_topic(minilm):
    """Real sentences: licence texts vs the Python reference. A sentence lies nearer its own source's
    centroid (centroids from other sentences)."""
    import minilm as mod

    lic, py = mod.sentences(("licenses",)), mod.sentences(("python",))
    assert len(lic) > 200 and len(py) > 200
    rng = np.random.default_rng(0)
    lic = [lic[i] for i in rng.choice(len(lic), 20, replace=False)]
    py = [py[i] for i in rng.choice(len(py), 20, replace=False)]
    e_lic, e_py = _embed(minilm, lic), _embed(minilm, py)
    c_lic, c_py = e_lic[:10].mean(0), e_py[:10].mean(0)  # centroids from the first half
    held = np.r_[e_lic[10:], e_py[10:]]
    truth = np.r_[np.zeros(10), np.ones(10)]
    pred = (held @ c_py > held @ c_lic).astype(float)
    assert (pred == truth).mean() >= 0.8  # measured 0.94 over 100 held-out sentences


# ------------------------------------------------------------------ keyword spotter (stateful)

@pytest.fixture(scope="session")
def kws():
    import kws_gru

    return kws_gru, kws_gru.build()


def test_kws_state_is_layers_first(kws):
    mod, model = kws
    frame, h = mod.build.example_inputs
    assert frame.shape == (1, 40) and frame.dtype == torch.float32
    assert h.shape == (2, 1, 64)  # (layers, batch, hidden): the leading axis is not the batch
    logits, h_new = model(frame, h)
    assert logits.shape == (1, len(mod.CLASSES)) and h_new.shape == h.shape
    # a batch of 3 streams: the batch is axis 1 of the state
    logits3, h3 = model(frame.repeat(3, 1), h.repeat(1, 3, 1))
    assert logits3.shape == (3, len(mod.CLASSES)) and h3.shape == (2, 3, 64)
    torch.testing.assert_close(logits3[1:2], logits)


def test_kws_held_out_accuracy(kws):
    mod, model = kws
    seqs = mod.sequences()
    labels = np.array([y for _, y in seqs])
    assert len(seqs) >= 100 and set(labels) == set(range(len(mod.CLASSES)))
    acc = mod.accuracy(model, seqs)
    majority = np.bincount(labels).max() / len(labels)
    assert acc > 0.85 and acc > majority + 0.4, acc  # chance 1/7, majority class ~0.36; measured 0.97


def test_kws_closed_loop_equals_whole_sequence(kws):
    mod, model = kws
    for frames, label in mod.sequences()[::23]:
        stream, states = mod.closed_loop(model, frames)
        with torch.no_grad():
            whole = model.forward_sequence(torch.from_numpy(frames)[None])[0]
        torch.testing.assert_close(stream, whole, atol=1e-4, rtol=1e-4)
        assert states.shape == (frames.shape[0] + 1, 2, 1, 64)
        assert int(stream[-1].argmax()) == int(whole[-1].argmax())


def test_kws_state_samples_are_real_states(kws):
    mod, model = kws
    frames, states = mod.state_samples(model, mod.sequences()[:4], every=10)
    assert frames.shape[1:] == (1, 40) and states.shape[1:] == (2, 1, 64)
    assert 0.1 < np.abs(states).max() <= 1.0  # GRU states live in (-1, 1); not all zero


def test_espeak_is_deterministic():
    import kws_gru

    a, b = kws_gru.speak("left", "en-us+m3", 150, 50), kws_gru.speak("left", "en-us+m3", 150, 50)
    assert np.array_equal(a, b) and 0.2 < len(a) / kws_gru.SR < 1.0


# ------------------------------------------------------------------ MTCNN stage nets (several outputs)

def test_rnet_tells_faces_from_non_faces():
    import mtcnn_rnet

    model = mtcnn_rnet.build()
    x, y = mtcnn_rnet.lfw_subset()
    assert x.shape == (200, 3, 24, 24) and x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
    with torch.no_grad():
        boxes, probs = model(torch.from_numpy(x))
    assert boxes.shape == (200, 4) and probs.shape == (200, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(200))
    face = probs[:, 1].numpy()
    assert (face[y == 1] > 0.5).mean() >= 0.95  # measured: all 100 faces, min p 0.94
    assert (face[y == 0] > 0.5).mean() <= 0.05  # measured: no non-face above 0.10
    crops = mtcnn_rnet.photo_crops(64)
    with torch.no_grad():
        _, p = model(torch.from_numpy(crops))
    assert (p[:, 1] > 0.7).float().mean() <= 0.05  # MTCNN's RNet threshold; natural photos, no faces
    (ex,) = mtcnn_rnet.build.example_inputs
    assert ex.shape == (1, 3, 24, 24) and float(model(ex)[1][0, 1]) > 0.9


def test_onet_three_outputs():
    import mtcnn_onet

    model = mtcnn_onet.build()
    x, y = mtcnn_onet.lfw_subset(size=48)
    with torch.no_grad():
        boxes, landmarks, probs = model(torch.from_numpy(x))
    assert boxes.shape == (200, 4) and landmarks.shape == (200, 10) and probs.shape == (200, 2)
    face = probs[:, 1].numpy()
    assert (face[y == 1] > 0.5).mean() >= 0.9 and (face[y == 0] > 0.5).mean() <= 0.1
    lm = landmarks[y == 1].numpy()
    assert 0.0 < np.median(lm) < 1.0  # landmark coordinates fall inside the crop


# ------------------------------------------------------------------ EfficientNet-Lite0 (ImageNet classifier)

def test_efficientnet_lite0_is_the_pretrained_imagenet_model():
    """The published weights, and they recognise what is plainly in real photos, with the preprocessing
    they were trained with ((pixel - 127) / 128, not ImageNet's mean/std)."""
    import hashlib

    import efficientnet_lite0 as E

    assert hashlib.sha256(E.weights_path().read_bytes()).hexdigest() == E.SHA256
    model = E.build()
    (ex,) = E.build.example_inputs
    assert ex.shape == (1, 3, 224, 224) and ex.dtype == torch.float32 and -1.0 <= float(ex.min()) and float(ex.max()) <= 1.0
    names = list(E.LABELLED)
    x = np.stack([E.preprocess(E.load_photo(n)) for n in names])
    imagenet = (x * E.STD + E.MEAN) / 255.0  # the same pixels, normalised with ImageNet's mean/std instead
    imagenet = ((imagenet - np.array([0.485, 0.456, 0.406])[:, None, None]) / np.array([0.229, 0.224, 0.225])[:, None, None])
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(np.r_[x, imagenet.astype(np.float32)])), 1).numpy()
    p, p_imagenet = p[: len(names)], p[len(names):]
    top5 = {n: list(np.argsort(-row)[:5]) for n, row in zip(names, p)}
    assert all(281 <= c <= 285 for c in top5["chelsea"][:3]), top5["chelsea"]  # tiger cat .38, Egyptian .37, tabby .16
    assert top5["coffee"][:2] == [967, 968], top5["coffee"]  # espresso .96, cup
    right1 = sum(top5[n][0] in E.LABELLED[n] for n in names)
    right5 = sum(bool(set(top5[n]) & set(E.LABELLED[n])) for n in names)
    assert right1 >= 11 and right5 >= 12, (right1, right5)  # measured 12 and 13 of 15

    def loglik(q):
        return np.mean([np.log(q[i, list(E.LABELLED[n])].sum()) for i, n in enumerate(names)])

    assert loglik(p) > loglik(p_imagenet) + 0.2, (loglik(p), loglik(p_imagenet))  # measured -1.12 vs -1.52


def test_efficientnet_lite0_photos_are_deterministic_and_split():
    import efficientnet_lite0 as E

    assert not set(E.CALIB_PHOTOS) & set(E.VAL_PHOTOS) and set(E.CALIB_PHOTOS) | set(E.VAL_PHOTOS) == set(E.SOURCES)
    k = len(E.VAL_PHOTOS)
    a, b = E.photos(k + 3, split="val"), E.photos(k + 5, split="val")
    assert a.shape == (k + 3, 3, 224, 224) and a.dtype == np.float32 and -1.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b[: k + 3])  # a prefix, bit for bit
    assert E.photo_sources(k + 3)[k:] == list(E.VAL_PHOTOS[:3])
    for i in range(3):  # past the first round: random views of the same photos, not copies
        assert np.abs(a[k + i] - a[i]).mean() > 0.05
    other = E.photos(k + 3, seed=1, split="val")
    np.testing.assert_array_equal(other[:k], a[:k])
    assert np.abs(other[k:] - a[k:]).mean() > 0.05
    c = E.photos(len(E.CALIB_PHOTOS), split="calib")
    assert E.photo_sources(len(c), "calib") == list(E.CALIB_PHOTOS)
    assert not any(np.array_equal(ci, ai) for ci in c for ai in a)
