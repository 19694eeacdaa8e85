"""The runtime inside an app (issue 14): an image classifier converted from a folder of real Fashion-MNIST PNGs
(one folder per class, the grayscale-28 spec) keeps its preprocessing and labels in the manifest, and
`runtime.load(folder).classify(path)` gives the same top-1 as `edgekit eval` on real image files, with no torch.
Bad images and non-classifiers are one line each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def write_class_folders(root: Path, x: np.ndarray, y: np.ndarray, classes, per_class: int, offset: int = 0) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for c, name in enumerate(classes):
        d = root / f"{c}-{name.replace('/', '-')}"  # sorted folder names = class indices (as ImageFolder reads them)
        d.mkdir()
        for k, i in enumerate(np.flatnonzero(y == c)[offset:offset + per_class]):
            Image.fromarray(np.round(x[i, 0] * 255).astype(np.uint8), mode="L").save(d / f"{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def classifier(fashion, fashion_model, tmp_path_factory):
    """tflite-int8 Fashion CNN calibrated on class folders of PNGs (train split), plus held-out PNGs (test split)."""
    root = tmp_path_factory.mktemp("app")
    names = [f"{c}-{n.replace('/', '-')}" for c, n in enumerate(fashion.classes)]
    calib = write_class_folders(root / "calib", fashion.train.x, fashion.train.y, fashion.classes, 20)
    held = write_class_folders(root / "held", fashion.test.x, fashion.test.y, fashion.classes, 8)
    _, weights = fashion_model
    res = run_cli("convert", f"{Path(__file__).parent / 'models' / 'fashion_cnn.py'}:build", "--weights", weights,
                  "--target", "tflite-int8", "--calib", calib, "--calib-spec", "grayscale-28", "--val-data", held,
                  "--out", root / "art", cwd=root)
    assert res.returncode in (0, 4), res.stderr
    return root / "art", held, names


def test_the_manifest_keeps_the_preprocessing_and_the_labels(classifier):
    art, _, names = classifier
    m = json.loads((art / "manifest.json").read_text())
    assert m["preprocess"] == {"color": "L", "resize": 28, "crop": [28, 28], "scale": 1 / 255, "mean": [0.0], "std": [1.0],
                               "layout": "NCHW", "spec": "grayscale-28", "input": m["inputs"][0]["name"]}
    assert m["labels"] == names  # the class folders' names, in index order


def test_classify_matches_edgekit_eval_on_real_image_files(classifier, tmp_path):
    from edgekit import runtime
    from edgekit.calibration import _read_images, load_spec

    art, held, names = classifier
    model = runtime.load(art)
    files = sorted(held.glob("*/*.png"))
    # the runtime's preprocessing is calibration's, bit for bit
    ref = _read_images(held, files[:5], load_spec("grayscale-28"))
    assert np.array_equal(np.concatenate([model.preprocess(f) for f in files[:5]]), ref)
    top1 = [model.classify(f, top_k=3) for f in files]
    assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] and 0 < sum(p for _, p in t) <= 1 + 1e-6 for t in top1)
    acc = np.mean([t[0][0] == f.parent.name for t, f in zip(top1, files)])
    res = run_cli("eval", art, "--data", held, "--data-spec", "grayscale-28", "--json", tmp_path / "e.json")
    assert res.returncode == 0, res.stderr
    assert acc == pytest.approx(json.loads((tmp_path / "e.json").read_text())["metrics"]["top1"], abs=1e-9)
    assert acc > 0.6  # 80 held-out photos of clothes, 10 classes


def test_the_runtime_classifies_without_torch(classifier):
    art, held, _ = classifier
    f = sorted(held.glob("*/*.png"))[0]
    code = ("import sys; from edgekit import runtime; m = runtime.load(sys.argv[1]); print(m.classify(sys.argv[2], 1)[0][0]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    res = subprocess.run([sys.executable, "-c", code, str(art), str(f)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() in {p.name for p in held.iterdir()}


@pytest.mark.parametrize("make, message", [
    (lambda d: _img(d, "RGB"), "the image is RGB, the model takes L"),
    (lambda d: _img(d, "LA"), "drop the alpha channel first"),
    (lambda d: (d / "broken.png").write_bytes(b"\x89PNG not really") and d / "broken.png", "cannot read image"),
    (lambda d: d / "missing.png", "cannot read image"),
    (lambda d: np.zeros((28, 28, 3), np.uint8), "the image has 3 channel(s), the model takes L"),
    (lambda d: np.zeros((28, 28), np.float32), "must be HxWxC or HxW uint8"),
])
def test_a_bad_image_is_one_line(classifier, tmp_path, make, message):
    from edgekit import runtime
    from edgekit.errors import UsageError

    model = runtime.load(classifier[0])
    with pytest.raises(UsageError) as e:
        model.classify(make(tmp_path))
    assert message in str(e.value) and "\n" not in str(e.value)


def _img(d: Path, mode: str) -> Path:
    from PIL import Image

    p = d / f"{mode}.png"
    Image.new(mode, (28, 28)).save(p)
    return p


def test_a_tampered_preprocessing_is_refused(classifier, tmp_path):
    import shutil

    from edgekit import runtime
    from edgekit.errors import ArtifactError

    art = tmp_path / "art"
    shutil.copytree(classifier[0], art)
    m = json.loads((art / "manifest.json").read_text())
    m["preprocess"]["std"] = [0.0]
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="preprocess std"):
        runtime.load(art)


def test_classify_on_a_model_without_a_class_output_is_one_line(digits_int8, tmp_path):
    """An artifact whose outputs are not a classifier's (here the digits CNN's manifest says regression)."""
    import shutil

    from edgekit import runtime
    from edgekit.errors import UsageError

    art = tmp_path / "art"
    shutil.copytree(digits_int8, art)
    m = json.loads((art / "manifest.json").read_text())
    m["outputs"][0]["kind"] = "regression"
    m["preprocess"] = {"color": "L", "resize": 8, "crop": 8, "scale": 1 / 16, "layout": "NCHW"}
    (art / "manifest.json").write_text(json.dumps(m))
    model = runtime.load(art)
    with pytest.raises(UsageError, match="is not a classifier: no class output"):
        model.classify(np.zeros((8, 8), np.uint8))
    with pytest.raises(UsageError, match="no state output to stream"):
        model.stream()


def test_preprocess_check_passes_and_catches_a_wrong_mean(classifier, tmp_path):
    """eval --preprocess-check: the runtime's tensors against calibration's on real PNGs; a manifest whose mean/std
    were edited (an app that normalises differently) fails in one line, exit 4."""
    import shutil

    art, held, _ = classifier
    ok = run_cli("eval", art, "--data", held, "--preprocess-check", "--json", tmp_path / "ok.json")
    assert ok.returncode == 0, ok.stderr
    check = json.loads((tmp_path / "ok.json").read_text())["preprocess_check"]
    assert check["status"] == "ok" and check["images"] == 32 and check["max_abs_diff"] == 0.0 and check["spec"] == "grayscale-28"
    bad = tmp_path / "bad"
    shutil.copytree(art, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["preprocess"].update(mean=[0.5], std=[0.5])
    (bad / "manifest.json").write_text(json.dumps(m))
    res = run_cli("eval", bad, "--data", held, "--preprocess-check")
    assert res.returncode == 4
    err = res.stderr.strip()
    assert "preprocessing parity failed on 32 images" in err and "mean: artifact [0.5] vs spec [0.0]" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_the_exported_app_runs_alone_and_prints_the_predictions(classifier, tmp_path):
    """export-app writes the artifact, a copy of the runtime, main.py and requirements.txt; run from its own folder
    with no edgekit on the path, it prints classify's labels for real image files."""
    from edgekit import runtime

    art, held, names = classifier
    app = tmp_path / "app"
    res = run_cli("export-app", art, "--kind", "classify", "--out", app)
    assert res.returncode == 0, res.stderr
    assert {p.name for p in app.iterdir()} >= {"artifact", "edgekit", "main.py", "requirements.txt"}
    assert "pillow" in (app / "requirements.txt").read_text() and "torch" not in (app / "requirements.txt").read_text()
    files = sorted(held.glob("*/*.png"))[::16]
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "main.py", *map(str, files)], capture_output=True, text=True, cwd=app, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    model = runtime.load(art)
    assert lines == [f"{f}: {model.classify(f, 1)[0][0]} {model.classify(f, 1)[0][1]:.3f}" for f in files]
    # the app used its own copy of the runtime, not this checkout's
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); import edgekit; print(edgekit.__file__)"],
                           capture_output=True, text=True, cwd=app, env=env, timeout=60)
    assert Path(probe.stdout.strip()).resolve().is_relative_to(app.resolve())
    # a classify app for an artifact that cannot classify: one line, nothing written
    bad = run_cli("export-app", art, "--kind", "stream", "--out", tmp_path / "app2")
    assert bad.returncode == 2 and "no state output to stream" in bad.stderr and not (tmp_path / "app2").exists()


def test_the_exported_app_classifies_on_the_aarch64_board(classifier, arm64_rootfs, tmp_path_factory):
    """The app folder pushed to the emulated aarch64 board (the real sshd, logins chrooted into the arm64 userland with
    numpy, ai-edge-litert and Pillow): the board's python3 prints the host's classify results. Correctness only."""
    import sys as _sys

    from doubles.sshd import SshdDouble
    from edgekit import runtime
    from edgekit.app import export_app
    from edgekit.devices.profiles import DeviceProfile, open_device

    art, held, _ = classifier
    app = export_app(art, "classify", tmp_path_factory.mktemp("arm-app") / "app")
    files = sorted(held.glob("*/*.png"))[::20]
    model = runtime.load(art)
    remote_name = lambda f: f"{f.parent.name}-{f.name}"  # noqa: E731 (the class folders reuse file names)
    want = [f"{remote_name(f)}: {model.classify(f, 1)[0][0]} {model.classify(f, 1)[0][1]:.3f}" for f in files]
    with SshdDouble(tmp_path_factory.mktemp("arm-app-board"), chroot=arm64_rootfs) as b:
        prof = DeviceProfile(name="arm-app", transport="ssh", host=b.host, port=b.port, user=b.user, key_file=str(b.key_path),
                             known_hosts=str(b.known_hosts), python="python3", workdir="/tmp/edgekit", timeout_s=300)
        with open_device(prof) as dev:
            with dev.session() as remote:
                for p in sorted(app.rglob("*")):
                    if p.is_dir():
                        dev.run(["mkdir", "-p", f"{remote}/app/{p.relative_to(app)}"], 30).check("mkdir")
                    elif not p.name.startswith("."):
                        dev.push(p, f"{remote}/app/{p.relative_to(app)}")
                for f in files:
                    dev.push(f, f"{remote}/{remote_name(f)}")
                r = dev.run(["sh", "-c", 'cd "$1" && shift && python3 main.py "$@"', "sh", f"{remote}/app",
                             *(f"{remote}/{remote_name(f)}" for f in files)], 300)
                r.check("running the app on the board")
                got = [ln.replace(f"{remote}/", "") for ln in r.stdout.strip().splitlines()]
    assert got == want, (got, want, _sys.platform)
