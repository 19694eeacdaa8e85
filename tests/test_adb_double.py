"""The real `adb` client and server against the device-side daemon double (tests/doubles/adbd.py).

Everything on the host side is the real thing: Debian's `adb` (scripts/setup-adb.sh installs
it), a private adb server on its own port, `adb connect` over TCP on loopback. Only the phone
is a double, and it speaks the real wire protocol.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import _free_port
from doubles.adbd import TAG_VAR, AdbdDouble

pytestmark = pytest.mark.skipif(shutil.which("adb") is None and os.environ.get("CI") != "true",
                                reason="adb is not installed: run scripts/setup-adb.sh")


@pytest.fixture(scope="module")
def device(adb):
    with AdbdDouble(model="Pixel 7", abi="arm64-v8a") as dev:
        adb.connect(dev)
        try:
            yield dev
        finally:
            adb.disconnect(dev)


def _tagged_processes(tag: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"{TAG_VAR}={tag}".encode() in \
                    (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().split(") ")[-1][0] != "Z":  # zombies are dead
                    pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_connect_lists_the_device(adb, device):
    lines = adb("devices", "-l").stdout.splitlines()
    mine = [line for line in lines if line.startswith(device.serial)]
    assert len(mine) == 1, lines
    assert mine[0].split()[1] == "device"
    assert "model:Pixel_7" in mine[0]


def test_shell_separates_stdout_stderr_and_returns_exit_code(adb, device):
    r = adb("-s", device.serial, "shell", "echo out; echo err >&2; exit 3", check=False)
    assert (r.stdout, r.stderr, r.returncode) == ("out\n", "err\n", 3)


def test_getprop(adb, device):
    assert adb("-s", device.serial, "shell", "getprop", "ro.product.cpu.abi").stdout == "arm64-v8a\n"
    everything = adb("-s", device.serial, "shell", "getprop").stdout
    assert "[ro.product.model]: [Pixel 7]" in everything
    assert "[ro.build.version.sdk]: [34]" in everything


def test_shell_stdin_reaches_the_command(adb, device):
    r = adb("-s", device.serial, "shell", "cat; echo end", input="hello\n")
    assert r.stdout == "hello\nend\n"


def test_legacy_shell_and_exec_out(adb, device):
    # -x turns the shell protocol off: legacy `shell:`, one raw stream, no exit code.
    r = adb("-s", device.serial, "shell", "-x", "echo legacy; exit 4")
    assert (r.stdout, r.returncode) == ("legacy\n", 0)
    r = adb("-s", device.serial, "exec-out", "printf 'raw\\001bytes'")
    assert r.stdout == "raw\x01bytes"


def test_concurrent_streams(adb, device):
    start = time.monotonic()
    procs = [adb.popen("-s", device.serial, "shell", f"sleep 2; echo {i}") for i in range(4)]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert outs == [f"{i}\n" for i in range(4)]
    assert time.monotonic() - start < 6  # side by side; one after another takes 8 s


def test_push_pull_large_file(adb, device, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 123)
    local, remote = tmp_path / "big.bin", tmp_path / "device" / "sub" / "big.bin"
    local.write_bytes(data)
    adb("-s", device.serial, "push", str(local), str(remote), timeout=60)
    assert remote.read_bytes() == data
    back = tmp_path / "back.bin"
    adb("-s", device.serial, "pull", str(remote), str(back), timeout=60)
    assert back.read_bytes() == data


def test_push_pull_name_with_spaces_and_quotes(adb, device, tmp_path):
    name = "my model 'v2' \"final\".tflite"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / name).write_bytes(b"\x00weights\xff")
    remote_dir = tmp_path / "device"
    remote_dir.mkdir()
    adb("-s", device.serial, "push", str(tmp_path / "src" / name), f"{remote_dir}/")
    assert (remote_dir / name).read_bytes() == b"\x00weights\xff"
    listing = adb("-s", device.serial, "shell", f"ls {remote_dir}").stdout
    assert name in listing
    (tmp_path / "dst").mkdir()
    adb("-s", device.serial, "pull", str(remote_dir / name), str(tmp_path / "dst"))
    assert (tmp_path / "dst" / name).read_bytes() == b"\x00weights\xff"


def test_pull_missing_file_fails(adb, device, tmp_path):
    r = adb("-s", device.serial, "pull", str(tmp_path / "nope.bin"), str(tmp_path / "x"),
            check=False)
    assert r.returncode != 0
    assert "does not exist" in r.stdout + r.stderr  # adb 1.0.41 prints it on stdout
    assert not (tmp_path / "x").exists()


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def test_client_that_goes_away_hangs_up_the_shell(adb, device):
    """As adbd does: the shell it started gets SIGHUP (that pid alone), its children live on."""
    proc = adb.popen("-s", device.serial, "shell", "sleep 30; echo never")
    assert _wait_until(lambda: len(_tagged_processes(device.tag)) == 2, 10)  # the shell and its sleep
    proc.kill()  # the adb client dies: the server closes the stream, the daemon hangs up the shell
    proc.wait(timeout=10)
    try:
        assert _wait_until(lambda: [_cmdline(p) for p in _tagged_processes(device.tag)] == [["sleep", "30"]], 10)
    finally:
        for pid in _tagged_processes(device.tag):
            os.kill(pid, 9)


def test_device_killed_mid_command_fails_promptly(adb):
    dev = AdbdDouble()
    try:
        adb.connect(dev)
        proc = adb.popen("-s", dev.serial, "shell", "sleep 30; echo EXIT=$?")
        time.sleep(1)
        killed = time.monotonic()
        dev.kill()
        out, _ = proc.communicate(timeout=15)
        assert time.monotonic() - killed < 5
        # The command never finished, so its output never came.
        assert "EXIT=" not in out
        # The real client (adb 1.0.41, as newer ones) returns 0 when the stream ends without the
        # shell protocol's exit packet, so the exit code alone does not show a dead device; the
        # device is offline from then on, and the next command fails promptly.
        start = time.monotonic()
        r = adb("-s", dev.serial, "shell", "echo hi", check=False, timeout=15)
        assert r.returncode != 0 and "hi" not in r.stdout
        assert time.monotonic() - start < 5
        assert not _tagged_processes(dev.tag)
    finally:
        adb.disconnect(dev)
        dev.stop()


def test_daemon_cli_runs_standalone(tmp_path):
    """`python3 tests/doubles/adbd.py --port PORT` listens on that port."""
    port = _free_port()
    script = Path(__file__).parent / "doubles" / "adbd.py"
    proc = subprocess.Popen(["python3", str(script), "--port", str(port), "--serial-model", "X1",
                             "--tools-dir", str(tmp_path / "bin")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))
        reader.start()
        reader.join(10)
        assert line == [f"LISTENING {port}\n"]
        getprop = tmp_path / "bin" / "getprop"
        r = subprocess.run([str(getprop), "ro.product.model"], capture_output=True, text=True,
                           timeout=10)
        assert r.stdout == "X1\n"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
