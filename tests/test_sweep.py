"""edgekit sweep on this host (LocalExecutor): the lab file, content keys, the store, failure isolation and retries.
Fast tier: the lab file and the keys. Slow: real sweeps of the bundled digits CNN (ONNX fp32 converts in ~10 s)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError, UsageError
from edgekit.lab import Cell, LocalExecutor, content_digest, convert_key, read_lab, sweep
from conftest import run_cli


def lab(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "lab.toml"
    p.write_text(textwrap.dedent(body))
    return p


# ------------------------------------------------------------------ fast: the lab file and the keys


def test_lab_file_reads_models_targets_devices_and_paths(tmp_path):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "calib.npy", np.zeros((4, 1, 8, 8), np.float32))
    plan = read_lab(lab(tmp_path, """
        targets = ["onnx-fp32", "tflite-int8"]
        devices = ["local"]
        measure = ["convert", "bench", "eval"]
        [bench]
        runs = 5
        [[models]]
        name = "a"
        source = "nets/a.py:build"
        calib = "data/calib.npy"
        input_shape = "1,1,8,8"
        [[models]]
        name = "b"
        calib = "digits"
        eval_data = "digits"
        targets = ["onnx-fp32"]
    """))
    a, b = plan.models
    assert a.source == f"{tmp_path}/nets/a.py:build"  # relative to the lab file, not the working folder
    assert a.options.calib == str(tmp_path / "data" / "calib.npy") and a.options.input_shape == ("1,1,8,8",)
    assert b.source is None and b.options.calib == "digits" and b.eval.data == "digits"
    assert plan.out == str(tmp_path / "sweep") and plan.bench == {"runs": 5}
    ids = [c.id for c in plan.cells()]
    # a has no eval data: bench only; b has one target of its own
    assert ids == ["a/onnx-fp32", "a/onnx-fp32@local", "a/tflite-int8", "a/tflite-int8@local",
                   "b/onnx-fp32", "b/onnx-fp32@local", "b/onnx-fp32@local:eval"]


@pytest.mark.parametrize("body, message", [
    ('targets = ["onnx-fp32"]\n[[models]]\nname = "a"\ncalbi = "digits"\n', "unknown key 'calbi'; did you mean 'calib'?"),
    ('targets = ["onnx-fp32"]\ndevice = ["local"]\n[[models]]\nname = "a"\n', "unknown key 'device'; did you mean 'devices'?"),
    ('targets = ["onnx-fp32"]\n', "no models"),
    ('[[models]]\nname = "a"\n', "no targets"),
    ('targets = ["onnx-fp32"]\n[[models]]\nname = "a/b"\n', "name must be a plain name"),
    ('targets = ["onnx-fp32"]\n[[models]]\nname = "a"\n[[models]]\nname = "a"\n', "two models are named 'a'"),
    ('targets = ["onnx-fp32"]\nmeasure = ["convert", "latency"]\n[[models]]\nname = "a"\n', "measure must be"),
    ('targets = "onnx-fp32"\n[[models]]\nname = "a"\n', "targets must be a list of strings"),
    ('targets = ["onnx-fp32"\n', "not valid TOML"),
])
def test_a_bad_lab_file_is_one_line(tmp_path, body, message):
    with pytest.raises(UsageError) as e:
        read_lab(lab(tmp_path, body))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_targets_and_devices_fail_before_any_work(tmp_path):
    plan = read_lab(lab(tmp_path, '''
        targets = ["tflite-int9"]
        [[models]]
        name = "a"
    '''))
    with pytest.raises(EdgekitError, match="did you mean 'tflite-int8'"):
        sweep(plan, LocalExecutor(1))
    plan = read_lab(lab(tmp_path, '''
        targets = ["onnx-fp32"]
        devices = ["pixle"]
        [[models]]
        name = "a"
    '''))
    with pytest.raises(UsageError, match="unknown device 'pixle'"):
        sweep(plan, LocalExecutor(1))
    assert not Path(plan.out).exists()


def test_convert_key_follows_the_content_not_the_path(tmp_path):
    data = tmp_path / "calib.npy"
    np.save(data, np.zeros((4, 8), np.float32))
    body = f'targets = ["onnx-fp32"]\n[[models]]\nname = "a"\ncalib = "{data}"\n'
    key = lambda: convert_key(read_lab(lab(tmp_path, body)).models[0], "onnx-fp32", {"torch": "2.13.0"})  # noqa: E731
    k1 = key()
    assert key() == k1
    np.save(data, np.ones((4, 8), np.float32))  # same path, other bytes
    assert key() != k1
    other = convert_key(read_lab(lab(tmp_path, body)).models[0], "onnx-fp32", {"torch": "2.14.0"})
    assert other != key()  # tool versions are part of the key
    assert convert_key(read_lab(lab(tmp_path, body)).models[0], "onnx-int8", {"torch": "2.13.0"}) != key()
    src = tmp_path / "net.py"
    src.write_text("def build(): pass\n")
    d1 = content_digest(f"{src}:build")
    src.write_text("def build(): return 1\n")
    assert content_digest(f"{src}:build") != d1
    assert content_digest("digits") == content_digest("digits") != content_digest("fashion-mnist")


def test_a_foreign_folder_where_an_artifact_goes_is_refused_before_any_work(tmp_path):
    plan = read_lab(lab(tmp_path, 'targets = ["onnx-fp32"]\nmeasure = ["convert"]\n[[models]]\nname = "a"\n'))
    dest = Path(plan.out) / "artifacts" / "a-onnx-fp32"
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not an edgekit artifact"):
        sweep(plan, LocalExecutor(1))
    assert (dest / "notes.txt").read_text() == "mine" and not (Path(plan.out) / "results").exists()


def test_cell_ids():
    assert Cell("convert", "m", "t").id == "m/t"
    assert Cell("bench", "m", "t", "pixel").id == "m/t@pixel"
    assert Cell("eval", "m", "t", "pixel").id == "m/t@pixel:eval"


# ------------------------------------------------------------------ slow: real sweeps on this host

KILLER = '''
"""The digits CNN, but the first build in a fresh folder kills its own process (a worker dying mid-cell)."""
import os, signal
from pathlib import Path
from edgekit.examples.digits import build as _build

def build():
    mark = Path(__file__).with_name("killed-once")
    if not mark.exists():
        mark.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return _build()

build.example_input_shape = (1, 1, 8, 8)
'''


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep of 3 models x onnx-fp32 on the local CPU, bench and eval: digits, a model whose worker dies once
    (retried), and a model that does not exist (a failed cell). Then the same sweep again."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "killer.py").write_text(KILLER)
    (root / "lab.toml").write_text(textwrap.dedent('''
        out = "out"
        targets = ["onnx-fp32"]
        devices = ["local"]
        measure = ["convert", "bench", "eval"]
        [bench]
        runs = 5
        warmup = 1
        [[models]]
        name = "digits"
        calib = "digits"
        calib_samples = 64
        eval_data = "digits"
        eval_samples = 50
        [[models]]
        name = "killer"
        source = "killer.py:build"
        calib = "digits"
        calib_samples = 64
        [[models]]
        name = "missing"
        source = "nowhere.py:build"
        calib = "digits"
    '''))
    first = run_cli("sweep", str(root / "lab.toml"), "--workers", "2", "--json", str(root / "r1.json"), cwd=root)
    second = run_cli("sweep", str(root / "lab.toml"), "--json", str(root / "r2.json"), cwd=root)
    return root, first, second


def _cells(path: Path) -> dict:
    return {r["cell"]: r for r in json.loads(path.read_text())["results"]}


@pytest.mark.slow
def test_sweep_records_every_cell_and_isolates_failures(swept):
    root, first, _ = swept
    assert first.returncode == 4, first.stderr  # a failed cell: non-zero, after the table
    cells = _cells(root / "r1.json")
    assert set(cells) == {"digits/onnx-fp32", "digits/onnx-fp32@local", "digits/onnx-fp32@local:eval",
                          "killer/onnx-fp32", "killer/onnx-fp32@local", "missing/onnx-fp32", "missing/onnx-fp32@local"}
    assert cells["digits/onnx-fp32"]["status"] == "ok" and cells["digits/onnx-fp32"]["verdict"] == "ok"
    assert cells["digits/onnx-fp32@local"]["p50_ms"] > 0
    assert float(cells["digits/onnx-fp32@local:eval"]["metric"]) > 0.9  # top-1 of the digits CNN
    # the worker that died was an infrastructure failure: retried, then ok
    assert cells["killer/onnx-fp32"]["status"] == "ok" and cells["killer/onnx-fp32"]["attempts"] == 2
    assert cells["missing/onnx-fp32"]["status"] == "failed" and "nowhere.py" in cells["missing/onnx-fp32"]["error"]
    assert cells["missing/onnx-fp32@local"]["status"] == "skipped"
    assert "missing/onnx-fp32" in first.stdout and "Traceback" not in first.stderr
    # the store: artifacts, and bench records `edgekit report` reads
    assert (root / "out" / "artifacts" / "digits-onnx-fp32" / "manifest.json").is_file()
    rep = run_cli("report", str(root / "out"), "--json", str(root / "rep.json"), cwd=root)
    assert rep.returncode == 0, rep.stderr
    rows = json.loads((root / "rep.json").read_text())["rows"]
    assert any(r["target"] == "onnx-fp32" and r["device"] == "local" and r["latency_p50_ms"] and r["accuracy_source"] == "eval" for r in rows)


@pytest.mark.slow
def test_a_second_sweep_does_no_work_and_prints_the_same_table(swept):
    root, first, second = swept
    assert second.returncode == first.returncode
    again = _cells(root / "r2.json")
    assert all(r["cached"] for r in again.values())
    assert second.stdout == first.stdout  # the same table
    assert "0 run, 7 from the store" in second.stderr


@pytest.mark.slow
def test_force_redoes_only_the_matching_cells(swept, tmp_path):
    root, _, _ = swept
    res = run_cli("sweep", str(root / "lab.toml"), "--force", "digits/*@*", "--json", str(tmp_path / "r.json"), cwd=root)
    cells = _cells(tmp_path / "r.json")
    redone = sorted(c for c, r in cells.items() if not r["cached"])
    assert redone == ["digits/onnx-fp32@local", "digits/onnx-fp32@local:eval"], res.stderr


@pytest.mark.slow
def test_an_artifact_travels_packed_and_is_checked_by_sha256(digits_int8, tmp_path):
    """A node that does not see the driver's folder gets the packed copy, unpacked and checked; a copy whose bytes
    differ from the recorded sha256 is refused."""
    from edgekit.artifact import Artifact
    from edgekit.errors import ArtifactError
    from edgekit.lab import _local_artifact, _pack

    art = Artifact.load(digits_int8)
    packed, work = _pack(Path(digits_int8)), []
    assert _local_artifact(str(digits_int8), art.manifest.sha256, None, work) == Path(digits_int8)  # same host: used as is
    got = _local_artifact(str(tmp_path / "elsewhere" / "digits-int8"), art.manifest.sha256, packed, work)
    assert got != Path(digits_int8) and (got / art.manifest.file).read_bytes() == art.model_path.read_bytes()
    with pytest.raises(ArtifactError, match="expected"):
        _local_artifact(str(tmp_path / "elsewhere" / "x"), "0" * 64, packed, work)
    with pytest.raises(ArtifactError, match="not on this host"):
        _local_artifact(str(tmp_path / "nowhere"), art.manifest.sha256, None, work)
