"""Issue 9, class 4: edgekit removes on a device only what it wrote there.

A bench removes its own run folder (a unique mktemp name, marked with `.edgekit-run`) and, under the
lock, earlier marked run folders whose owner is dead; the user's files in the workdir, `run.*`
included, and unmarked folders stay. A workdir that is `/`, a home or a system folder is refused
with one line, through the CLI and when a device is opened."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.devices.profiles import DeviceProfile, open_device
from edgekit.errors import UsageError
from edgekit.measure import bench

from conftest import _free_port, run_cli

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _mark(folder: Path, pid: int, since: float | None = None) -> Path:
    """A run folder as edgekit makes it: the marker holds the owner token and the creation time."""
    folder.mkdir()
    (folder / ".edgekit-run").write_text(f"{socket.gethostname()} {pid} {os.urandom(8).hex()}\n{int(since or time.time())}\n")
    return folder


def _user_files(workdir: Path) -> dict[str, str]:
    """The user's own things in the workdir, some named like edgekit's old run folders."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.sh").write_text("#!/bin/sh\necho mine\n")
    (workdir / "run.log").write_text("my log\n")
    (workdir / "run.x").mkdir()
    (workdir / "run.x" / "data.bin").write_text("my data\n")
    (workdir / "edgekit-run.nomark").mkdir()  # edgekit's name pattern, but not edgekit's marker
    (workdir / "edgekit-run.nomark" / "keep.txt").write_text("keep\n")
    (workdir / "notes.txt").write_text("notes\n")
    return {str(p.relative_to(workdir)): p.read_text() for p in sorted(workdir.rglob("*")) if p.is_file()}


def _assert_user_files_intact(workdir: Path, before: dict[str, str]) -> None:
    lost = [name for name, text in before.items() if not (workdir / name).is_file() or (workdir / name).read_text() != text]
    assert not lost, f"edgekit removed or changed files it did not write: {lost}"


def _assert_only_user_files_left(workdir: Path, before: dict[str, str]) -> None:
    after = {str(p.relative_to(workdir)): p.read_text() for p in sorted(workdir.rglob("*")) if p.is_file()}
    assert after == before, "edgekit removed or changed files it did not write"
    assert sorted(p.name for p in workdir.iterdir()) == sorted({k.split("/")[0] for k in before})


def _stale_with_runner(workdir: Path) -> tuple[Path, subprocess.Popen, subprocess.Popen]:
    """A dead run's marked folder whose runner still runs (its own group, naming the folder), and
    a marked folder whose recorded group id now belongs to an unrelated process (pid reuse)."""
    stale = _mark(workdir / "edgekit-run.st4le1", _dead_pid())
    runner = subprocess.Popen(["sh", "-c", 'sleep 60; : "$0"', str(stale / "edgekit-runner.pyz")], start_new_session=True)
    (stale / ".edgekit-pgid").write_text(f"{runner.pid}\n")
    reused = _mark(workdir / "edgekit-run.r3used", _dead_pid())
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (reused / ".edgekit-pgid").write_text(f"{bystander.pid}\n")
    return stale, runner, bystander


def _check_stale_collected(workdir: Path, runner: subprocess.Popen, bystander: subprocess.Popen) -> None:
    try:
        assert not (workdir / "edgekit-run.st4le1").exists(), "a marked run folder of a dead owner was not collected"
        assert not (workdir / "edgekit-run.r3used").exists()
        assert runner.wait(timeout=10) is not None  # the dead run's runner was stopped
        assert bystander.poll() is None, "a process that merely reuses a recorded group id was killed"
    finally:
        for p in (runner, bystander):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


# ---------------------------------------------------------------- (a) user files survive, stale runs go


def test_local_bench_keeps_user_files_and_collects_only_marked_stale_runs(digits_int8, tmp_path):
    workdir = tmp_path / "work dir"
    before = _user_files(workdir)
    stale, runner, bystander = _stale_with_runner(workdir)
    prof = DeviceProfile(name="local-safety", transport="local", python=sys.executable, workdir=str(workdir))
    r = bench(digits_int8, prof, runs=3, warmup=0)
    assert r.status == "ok"
    _assert_user_files_intact(workdir, before)
    _check_stale_collected(workdir, runner, bystander)
    _assert_only_user_files_left(workdir, before)


@pytest.fixture
def board(ssh_packages, tmp_path):
    from doubles.sshd import SshdDouble

    with SshdDouble(tmp_path / "board") as b:
        yield b


def test_ssh_bench_keeps_user_files_and_collects_only_marked_stale_runs(board, digits_int8, tmp_path):
    workdir = tmp_path / "board 'work' dir"
    before = _user_files(workdir)
    stale, runner, bystander = _stale_with_runner(workdir)
    prof = DeviceProfile(name="ssh-safety", transport="ssh", host=board.host, port=board.port, user=board.user,
                         key_file=str(board.key_path), known_hosts=str(board.known_hosts), python=sys.executable,
                         workdir=str(workdir), timeout_s=20)
    r = bench(digits_int8, prof, runs=3, warmup=0)
    assert r.status == "ok"
    _assert_user_files_intact(workdir, before)
    _check_stale_collected(workdir, runner, bystander)
    _assert_only_user_files_left(workdir, before)


# ---------------------------------------------------------------- (b) workdirs edgekit must not use


def _one_line_refusal(p: subprocess.CompletedProcess, what: str) -> None:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "workdir" in lines[0] and what in lines[0], p.stderr


@pytest.mark.parametrize("workdir, what", [("/", "root folder"), ("/root", "home folder"), ("/usr", "system folder"),
                                           ("~", "home folder"), ("/tmp/../etc/", "system folder")])
def test_cli_refuses_a_profile_workdir(digits_int8, tmp_path, workdir, what):
    toml = tmp_path / "board.toml"  # an unreachable board: nothing may be tried before the refusal
    toml.write_text(f'transport = "ssh"\nhost = "127.0.0.1"\nport = {_free_port()}\nuser = "root"\n'
                    f"workdir = {json.dumps(workdir)}\n")
    _one_line_refusal(run_cli("bench", digits_int8, "--device", toml, cwd=REPO), what)


@pytest.mark.parametrize("path, what", [("/", "root folder"), ("/usr", "system folder"), ("/home/pi", "home folder")])
def test_cli_refuses_an_address_workdir(digits_int8, path, what):
    _one_line_refusal(run_cli("bench", digits_int8, "--device", f"ssh://root@127.0.0.1:{_free_port()}{path}", cwd=REPO), what)


@pytest.mark.parametrize("workdir", ["/", "/root", "/usr", "/etc/edgekit", "/system", "/data", "~", "relative/dir"])
def test_opening_a_device_refuses_the_workdir(workdir):
    from edgekit.devices.local import LocalDevice

    with pytest.raises(UsageError, match="workdir"):
        open_device(DeviceProfile(name="x", transport="local", workdir=workdir))
    with pytest.raises(UsageError, match="workdir"):
        LocalDevice("x", workdir)


@pytest.mark.parametrize("workdir", ["/tmp", "/tmp/x", "/data/local/tmp/edgekit", "/var/tmp/edgekit", "/dev/shm/edgekit",
                                     "/root/edgekit", "/home/pi/edgekit"])
def test_scratch_workdirs_are_accepted(workdir):
    from edgekit.devices.base import check_workdir

    assert check_workdir(workdir) == workdir


def test_a_workdir_that_links_to_a_system_folder_is_refused(board, digits_int8, tmp_path):
    """Checked here for a local workdir, and on the device (`pwd -P`) for a remote one. (/proc, so
    that code without the check fails harmlessly: nothing can be created there.)"""
    from edgekit.devices.local import LocalDevice

    link = tmp_path / "innocent"
    link.symlink_to("/proc")
    with pytest.raises(UsageError, match="resolves to /proc"):
        LocalDevice("x", str(link))
    prof = DeviceProfile(name="ssh-link", transport="ssh", host=board.host, port=board.port, user=board.user,
                         key_file=str(board.key_path), known_hosts=str(board.known_hosts), python=sys.executable,
                         workdir=str(link), timeout_s=20)
    with pytest.raises(UsageError, match="resolves to /proc on the device"):
        bench(digits_int8, prof, runs=1, warmup=0)
