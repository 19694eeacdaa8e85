"""edgekit replaces only what it wrote, atomically, and cleans up after any interruption
(issue 9, classes 3, 7 and the concurrent commit of class 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _common import REPO, assert_one_line_error, cli, env_with

FAST = "onnx-fp32"  # the bundled digits CNN to ONNX fp32: a real conversion in a few seconds


def _complete(folder: Path) -> set[str]:
    """The files of a complete artifact: manifest, model and ownership record all present and consistent."""
    record = json.loads((folder / ".edgekit-files").read_text())
    files = set(record["files"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["file"] in files and all((folder / f).is_file() for f in files)
    return files


# ---------------------------------------------------------------------------- class 3: --out

@pytest.mark.parametrize("kind", ["browser-extension", "model-folder-with-old-artifact"])
def test_out_never_replaces_a_folder_edgekit_did_not_write(tmp_path, kind):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "manifest.json").write_text('{"manifest_version": 3, "name": "my extension"}')
    mine = {"background.js": "chrome.runtime.onInstalled.addListener(() => {});"} if kind == "browser-extension" else \
        {"net.py": "def build(): ...", "calib.npy": "data", "model.onnx": "old"}
    for name, text in mine.items():
        (dest / name).write_text(text)
    before = {p.name: p.read_text() for p in dest.iterdir()}
    code, out = cli("convert", "--target", FAST, "--out", dest, cwd=tmp_path)
    assert_one_line_error(code, out, 2, str(dest))
    assert {p.name: p.read_text() for p in dest.iterdir()} == before


def test_out_replaces_its_own_artifact_and_refuses_once_a_user_file_is_added(tmp_path):
    dest = tmp_path / "art"
    assert cli("convert", "--target", FAST, "--out", dest, cwd=tmp_path)[0] == 0
    first = _complete(dest)
    assert cli("convert", "--target", FAST, "--out", dest, cwd=tmp_path)[0] == 0
    assert _complete(dest) == first and set(os.listdir(dest)) == first | {".edgekit-files"}
    (dest / "notes.txt").write_text("mine")
    code, out = cli("convert", "--target", FAST, "--out", dest, cwd=tmp_path)
    assert_one_line_error(code, out, 2, "notes.txt")
    assert (dest / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", [".", ".."])
def test_out_dot_is_refused_before_converting(tmp_path, out):
    work = tmp_path / "empty"
    work.mkdir()
    code, text = cli("convert", "--target", FAST, "--out", out, cwd=work)
    assert_one_line_error(code, text, 2, "--out")
    assert "export" not in text and os.listdir(work) == []  # refused before any stage ran


# ---------------------------------------------------------------------------- class 7: signals, kills

def _start_convert(tmp_path: Path, dest: Path) -> tuple[subprocess.Popen, Path]:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = env_with(TMPDIR=tmpdir, PYTHONPATH=REPO)
    # tflite-fp32: the export takes ~10 s, long enough to be interrupted mid-way
    # default dispositions, as in a terminal (a background job of a script inherits SIGINT ignored)
    p = subprocess.Popen([sys.executable, "-m", "edgekit", "convert", "--target", "tflite-fp32", "--out", str(dest)],
                         cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(dest.parent.glob(f".{dest.name}.*")):
        assert p.poll() is None, p.stdout.read().decode()
        time.sleep(0.05)
    assert list(dest.parent.glob(f".{dest.name}.*")), "no staging folder appeared"
    while time.monotonic() < deadline and not any(tmpdir.glob("edgekit-*")):
        time.sleep(0.05)
    time.sleep(1.0)  # inside the export
    return p, tmpdir


def _leftovers(dest: Path, tmpdir: Path) -> list[str]:
    return sorted([p.name for p in dest.parent.glob(f".{dest.name}.*")] + [p.name for p in tmpdir.glob("edgekit-*")])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_clean_up_like_ctrl_c(tmp_path, sig):
    dest = tmp_path / "out" / "art"
    dest.parent.mkdir()
    p, tmpdir = _start_convert(tmp_path, dest)
    p.send_signal(sig)
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode != 0 and "Traceback" not in out, out
    assert _leftovers(dest, tmpdir) == [] and not dest.exists()


def test_what_a_sigkill_leaves_is_swept_by_the_next_run(tmp_path):
    dest = tmp_path / "out" / "art"
    dest.parent.mkdir()
    p, tmpdir = _start_convert(tmp_path, dest)
    p.kill()
    p.wait(timeout=30)
    left = _leftovers(dest, tmpdir)
    assert left, "a SIGKILL cannot clean up: something must be left for the sweep to find"
    other = tmp_path / "out" / "other"
    env = env_with(TMPDIR=tmpdir, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "edgekit", "convert", "--target", FAST, "--out", str(other)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _leftovers(dest, tmpdir) == [], "the dead run's staging and work folders are still there"
    _complete(other)


def test_a_foreign_hidden_folder_that_looks_like_staging_is_not_swept(tmp_path):
    """Only folders carrying edgekit's marker and a dead owner's pid are swept."""
    from edgekit._util import HOST
    from edgekit.artifact import sweep_stale

    fake = tmp_path / f".art.edgekit-staging-{HOST}-999999-abc"
    fake.mkdir()
    (fake / "precious").write_text("x")
    sweep_stale(tmp_path)
    assert (fake / "precious").exists()


COMMIT_CHILD = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from edgekit import artifact

    dest, version, stop_at, fallback = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    if fallback:  # a filesystem without renameat2: the two-rename path
        import errno
        artifact._renameat2 = lambda *a: errno.ENOSYS

    def hook(step):
        if step == stop_at:
            print("at", step, flush=True)
            time.sleep(600)

    artifact._STEP_HOOK = hook
    st = artifact.Staging(dest)
    (st.path / "model.onnx").write_text(version * 1000)
    (st.path / "manifest.json").write_text('{"file": "model.onnx", "version": "%s"}' % version)
    st.commit()
    print("done", flush=True)
''')


def _commit(dest: Path, version: str, stop_at: str = "", fallback: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COMMIT_CHILD, str(dest), version, stop_at, "1" if fallback else "0"],
                            env=env_with(PYTHONPATH=REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


SWAP_STEPS = [(s, False) for s in ("recorded", "exchanged", "old-removed")] + \
             [(s, True) for s in ("recorded", "old-aside", "moved", "old-removed")]  # True: no renameat2 here


@pytest.mark.parametrize("step,fallback", SWAP_STEPS, ids=[f"{s}-{'two-renames' if f else 'exchange'}" for s, f in SWAP_STEPS])
def test_sigkill_at_every_step_of_the_swap_leaves_a_complete_artifact(tmp_path, step, fallback):
    from edgekit.artifact import sweep_stale

    dest = tmp_path / "art"
    p = _commit(dest, "A")
    assert p.wait(timeout=60) == 0, p.stdout.read()
    p = _commit(dest, "B", step, fallback)
    line = p.stdout.readline()
    assert line.startswith("at"), line + p.stdout.read()
    p.kill()
    p.wait()
    sweep_stale(tmp_path)  # what the next run does first
    version = json.loads((dest / "manifest.json").read_text())["version"]
    assert version in ("A", "B")
    assert (dest / "model.onnx").read_text() == version * 1000
    _complete(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["art"], "leftovers after the sweep"


def test_concurrent_commits_to_one_out_all_land_cleanly(tmp_path):
    dest = tmp_path / "art"
    for round_ in range(3):
        procs = [_commit(dest, f"{round_}{k}") for k in range(4)]
        outs = [(p.wait(timeout=120), p.stdout.read()) for p in procs]
        assert all(code == 0 for code, _ in outs), outs
        version = json.loads((dest / "manifest.json").read_text())["version"]
        assert (dest / "model.onnx").read_text() == version * 1000
        _complete(dest)
        assert [p.name for p in tmp_path.iterdir()] == ["art"]
