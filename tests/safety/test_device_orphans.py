"""Issue 9, class 6: a runner on a device dies with the bench.

Over the real sshd double and the adb daemon double (both run device commands as real processes on
this machine, so /proc shows them): a bench that times out, and an `edgekit bench` interrupted by
SIGINT while the runner measures, leave no runner process behind, and the device lock is released
only once the runner is gone. The adb double hangs up a closed stream's shell the way adbd does
(SIGHUP to the shell alone), so a runner that is only the shell's child would live on there too."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgekit.devices.profiles import DeviceProfile
from edgekit.errors import DeviceTimeout
from edgekit.measure import bench

from conftest import wait_until_measuring

REPO = Path(__file__).resolve().parents[2]


def runner_pids(workdir: Path) -> list[int]:
    """Live runner processes started from `workdir`: `PYTHON .../edgekit-runner.pyz ...`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and len(argv) > 1 and argv[1].endswith(b"/edgekit-runner.pyz") and str(workdir).encode() in argv[1]:
            found.append(int(entry.name))
    return found


class Watch:
    """Samples (lock present?, runners alive?) until stopped. The lock is read first: a runner seen
    after the lock was seen gone outlived the lock."""

    def __init__(self, workdir: Path):
        self.lock, self.workdir = workdir / ".edgekit-lock", workdir
        self.seen_runner = False
        self.violations: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            locked = self.lock.exists()
            pids = runner_pids(self.workdir)
            self.seen_runner |= bool(pids)
            if pids and not locked:
                self.violations.append((time.monotonic(), pids))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _kill_leftovers(workdir: Path) -> None:
    for pid in runner_pids(workdir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _check_after(watch: Watch, workdir: Path) -> None:
    try:
        left = runner_pids(workdir)
        watch.stop()
        assert watch.seen_runner, "the runner never started: the test measured nothing"
        assert not left, f"runner processes outlived the bench: {left}"
        assert not watch.violations, f"the lock was released while the runner still ran: {watch.violations[:3]}"
        assert not (workdir / ".edgekit-lock").exists()
        assert not [p.name for p in workdir.iterdir() if p.name.startswith(("run.", "edgekit-run."))]
    finally:
        _kill_leftovers(workdir)


def _interrupt_cli_bench(art: Path, toml: Path, workdir: Path, env: dict | None = None) -> None:
    """`edgekit bench` as a user runs it, Ctrl-C (SIGINT) once the runner measures."""
    watch = Watch(workdir)
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "bench", str(art), "--device", str(toml),
                             "--runs", "1", "--warmup", "0", "--min-seconds", "120"],
                            cwd=REPO, env={**os.environ, **(env or {}), "COLUMNS": "200"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_measuring(str(workdir))
        assert runner_pids(workdir), "the runner is not running"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, (proc.returncode, out, err)
    _check_after(watch, workdir)


def _time_out_bench(art: Path, prof: DeviceProfile, workdir: Path) -> None:
    watch = Watch(workdir)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match="did not finish within"):
        bench(art, prof, runs=1, warmup=0, min_seconds=120, timeout_s=8)
    assert time.monotonic() - t0 < 60
    _check_after(watch, workdir)


def _toml(path: Path, **fields) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    return path


# ---------------------------------------------------------------- SSH (the real sshd double)


@pytest.fixture
def board(ssh_packages, tmp_path):
    from doubles.sshd import SshdDouble

    with SshdDouble(tmp_path / "board") as b:
        yield b


def _ssh_fields(b, workdir: Path) -> dict:
    return dict(name="orphan-board", transport="ssh", host=b.host, port=b.port, user=b.user, key_file=str(b.key_path),
                known_hosts=str(b.known_hosts), python=sys.executable, workdir=str(workdir), timeout_s=20)


def test_ssh_timeout_leaves_no_runner(board, digits_int8, tmp_path):
    workdir = tmp_path / "ssh 'orphan' work"
    _time_out_bench(digits_int8, DeviceProfile(**_ssh_fields(board, workdir)), workdir)


def test_ssh_ctrl_c_leaves_no_runner(board, digits_int8, tmp_path):
    workdir = tmp_path / "ssh 'sigint' work"
    toml = _toml(tmp_path / "board.toml", **{k: v for k, v in _ssh_fields(board, workdir).items() if k != "name"})
    _interrupt_cli_bench(digits_int8, toml, workdir)


# ---------------------------------------------------------------- adb (the real adb client, the adbd double)


@pytest.fixture
def phone(adb, monkeypatch):
    from doubles.adbd import AdbdDouble

    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb.port))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    with AdbdDouble() as dev:
        adb.connect(dev)
        yield dev
        adb.disconnect(dev)


def _adb_fields(dev, workdir: Path) -> dict:
    return dict(name="orphan-phone", transport="adb", serial=dev.serial, runner="python", python=sys.executable,
                workdir=str(workdir), timeout_s=20)


def test_adb_timeout_leaves_no_runner(phone, digits_int8, tmp_path):
    workdir = tmp_path / "adb 'orphan' work"
    _time_out_bench(digits_int8, DeviceProfile(**_adb_fields(phone, workdir)), workdir)


def test_adb_ctrl_c_leaves_no_runner(phone, adb, digits_int8, tmp_path):
    workdir = tmp_path / "adb 'sigint' work"
    toml = _toml(tmp_path / "phone.toml", **{k: v for k, v in _adb_fields(phone, workdir).items() if k != "name"})
    _interrupt_cli_bench(digits_int8, toml, workdir, env={"ANDROID_ADB_SERVER_PORT": str(adb.port)})
