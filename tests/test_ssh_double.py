"""The SSH board doubles, checked with REAL clients: OpenSSH's `ssh`/`scp`/`sftp` binaries and paramiko.

The server is always a real OpenSSH sshd on loopback (tests/doubles/sshd.py). Two boards:
* `board`: sessions run on this host (fast; exit codes, streams, SFTP, host key checks, a daemon killed
  mid-command);
* `arm_board`: sessions land in a cached aarch64 Debian rootfs (scripts/setup-arm64-rootfs.sh), so the
  board's own aarch64 python3 runs under qemu-user-static: a real .tflite model is run there with
  ai_edge_litert and checked against torch on the host. Emulated CPU: correctness only, no timing.

Under CI (CI=true) nothing here skips: the rootfs is built (about 4 minutes, then cached) if missing.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import paramiko
import pytest

from doubles.sshd import SshdDouble

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "setup-arm64-rootfs.sh"
ROOTFS = Path(os.environ.get("EDGEKIT_ARM64_ROOTFS", "/var/cache/edgekit-tests/arm64-rootfs"))
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
AWKWARD_NAME = "it's a \"model\" file.bin"  # spaces, single and double quotes


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture
def board(ssh_packages, tmp_path):
    with SshdDouble(tmp_path / "board") as sshd:
        yield sshd


@pytest.fixture(scope="module")
def arm_board(arm64_rootfs, tmp_path_factory):
    with SshdDouble(tmp_path_factory.mktemp("arm-board"), chroot=arm64_rootfs) as sshd:
        yield sshd


def ssh(board: SshdDouble, command: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run `command` on the board with the OpenSSH client binary."""
    return subprocess.run(["ssh", *board.client_options, board.destination, command],
                          capture_output=True, text=True, timeout=timeout, **kw)


def connect(board: SshdDouble, known_hosts: Path | None = None) -> paramiko.SSHClient:
    """A paramiko client as edgekit will use it: known_hosts loaded, unknown hosts rejected."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or board.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(board.host, port=board.port, username=board.user, key_filename=str(board.key_path),
                   look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client


def other_host_key_line(board: SshdDouble, tmp_path: Path) -> str:
    """A known_hosts line for the board's address carrying a different (impostor) ed25519 key."""
    key = tmp_path / "impostor_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    key_type, blob = Path(f"{key}.pub").read_text().split()[:2]
    return f"[{board.host}]:{board.port} {key_type} {blob}\n"


def wait_for_line(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def refuses_connections(board: SshdDouble) -> bool:
    try:
        socket.create_connection((board.host, board.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# -- commands -------------------------------------------------------------------------------------

def test_openssh_command_exit_code_and_streams(board):
    result = ssh(board, "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_paramiko_command_exit_code_and_streams(board):
    with connect(board) as client:
        _, stdout, stderr = client.exec_command("echo out; echo err >&2; exit 3", timeout=15)
        assert stdout.read() == b"out\n"
        assert stderr.read() == b"err\n"
        assert stdout.channel.recv_exit_status() == 3


# -- file transfer --------------------------------------------------------------------------------

def sftp_quote(path: Path) -> str:
    """A path as one argument of an sftp batch command (double quotes, backslash escapes)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_openssh_sftp_and_scp_roundtrip_awkward_name(board, tmp_path):
    payload = os.urandom(200_000) + b"\0end"
    local = tmp_path / AWKWARD_NAME
    local.write_bytes(payload)
    remote = tmp_path / "remote dir" / AWKWARD_NAME  # the host board's file system is this host's
    remote.parent.mkdir()
    back = tmp_path / f"back {AWKWARD_NAME}"
    batch = f"put {sftp_quote(local)} {sftp_quote(remote)}\nget {sftp_quote(remote)} {sftp_quote(back)}\n"
    result = subprocess.run(["sftp", *board.client_options, "-b", "-", board.destination],
                            input=batch, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert remote.read_bytes() == payload
    assert back.read_bytes() == payload

    # scp (SFTP protocol underneath since OpenSSH 9.0): remote paths are not shell-interpreted.
    scp_remote = remote.with_name(f"scp {AWKWARD_NAME}")
    scp_back = tmp_path / f"scp back {AWKWARD_NAME}"
    for src, dst in ((str(local), f"{board.destination}:{scp_remote}"), (f"{board.destination}:{scp_remote}", str(scp_back))):
        result = subprocess.run(["scp", *board.client_options, src, dst], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    assert scp_back.read_bytes() == payload


def test_paramiko_sftp_roundtrip_awkward_name(board, tmp_path):
    payload = os.urandom(200_000) + b"\0end"
    local = tmp_path / AWKWARD_NAME
    local.write_bytes(payload)
    remote = tmp_path / "remote dir" / AWKWARD_NAME
    back = tmp_path / f"back {AWKWARD_NAME}"
    with connect(board) as client, client.open_sftp() as sftp:
        sftp.mkdir(str(remote.parent))
        sftp.put(str(local), str(remote))
        assert sftp.stat(str(remote)).st_size == len(payload)
        sftp.get(str(remote), str(back))
        # the name survives a shell round trip too, when quoted
        _, stdout, _ = client.exec_command(f"cat {shlex.quote(str(remote))} | wc -c", timeout=15)
        assert int(stdout.read()) == len(payload)
    assert back.read_bytes() == payload


# -- host key verification ------------------------------------------------------------------------

def test_openssh_refuses_a_wrong_host_key(board, tmp_path):
    board.known_hosts.write_text(other_host_key_line(board, tmp_path))
    witness = tmp_path / "command ran"
    result = ssh(board, f"touch {shlex.quote(str(witness))}")
    assert result.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert "Host key verification failed" in result.stderr
    assert not witness.exists()


def test_paramiko_refuses_a_wrong_or_unknown_host_key(board, tmp_path):
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(other_host_key_line(board, tmp_path))
    with pytest.raises(paramiko.BadHostKeyException):
        connect(board, known_hosts=wrong)

    unknown = tmp_path / "unknown_known_hosts"  # the right key, but for another port: an unknown host
    unknown.write_text(board.known_hosts.read_text().replace(f"]:{board.port} ", f"]:{board.port + 1} "))
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(board, known_hosts=unknown)


# -- a board that disappears ----------------------------------------------------------------------

def test_openssh_client_fails_fast_when_the_board_dies(board):
    proc = subprocess.Popen(["ssh", *board.client_options, board.destination, "echo started; exec sleep 30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_line(proc.stdout, timeout=15) == "started\n"
        start = time.monotonic()
        board.kill()
        returncode = proc.wait(timeout=10)
        assert time.monotonic() - start < 5
        assert returncode == 255  # ssh's own failure, not the command's status
        assert refuses_connections(board)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_paramiko_client_fails_fast_when_the_board_dies(board):
    with connect(board) as client:
        _, stdout, _ = client.exec_command("echo started; exec sleep 30", timeout=15)
        assert stdout.readline() == "started\n"
        start = time.monotonic()
        board.kill()
        channel = stdout.channel
        while not channel.exit_status_ready() and time.monotonic() - start < 5:
            time.sleep(0.05)
        assert channel.exit_status_ready(), "the client did not notice the board was gone"
        assert channel.recv_exit_status() == -1  # no status came: the connection dropped
        assert not client.get_transport().is_active()
    assert refuses_connections(board)


def test_stop_ends_open_sessions(ssh_packages, tmp_path):
    sshd = SshdDouble(tmp_path / "board").start()
    proc = subprocess.Popen(["ssh", *sshd.client_options, sshd.destination, "echo started; exec sleep 30"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert wait_for_line(proc.stdout, timeout=15) == "started\n"
        sshd.stop()
        assert proc.wait(timeout=10) != 0
        assert refuses_connections(sshd)
    finally:
        sshd.stop()
        proc.kill()
        proc.wait()
        proc.stdout.close()


# -- the aarch64 board ----------------------------------------------------------------------------

BOARD_SCRIPT = """\
import json, platform, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

interpreter = Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
x = np.array(json.loads(sys.argv[2]), dtype=inp["dtype"]).reshape(inp["shape"])
interpreter.set_tensor(inp["index"], x)
interpreter.invoke()
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "output": interpreter.get_tensor(out["index"]).tolist()}))
"""


@pytest.fixture(scope="module")
def linear_tflite(tmp_path_factory):
    """A real, tiny .tflite: torch.nn.Linear(4, 2) converted on the host with litert_torch."""
    import litert_torch
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).eval()
    path = tmp_path_factory.mktemp("tflite") / "linear.tflite"
    litert_torch.convert(model, (torch.ones(1, 4),)).export(str(path))
    assert path.read_bytes()[4:8] == b"TFL3"
    return model, path


def test_arm_board_is_aarch64(arm_board):
    result = ssh(arm_board, "uname -m; python3 -c 'import platform; print(platform.machine())'")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["aarch64", "aarch64"]
    assert result.stderr == ""


def test_arm_board_runs_a_tflite_model(arm_board, linear_tflite):
    import torch

    model, model_path = linear_tflite
    x = [[0.5, -1.0, 2.0, 3.25]]
    with torch.no_grad():
        expected = model(torch.tensor(x)).numpy()

    with connect(arm_board) as client:
        _, stdout, _ = client.exec_command("mktemp -d /tmp/edgekit-test.XXXXXX", timeout=30)
        workdir = stdout.read().decode().strip()
        assert workdir.startswith("/tmp/edgekit-test.")
        try:
            with client.open_sftp() as sftp:
                sftp.put(str(model_path), f"{workdir}/{AWKWARD_NAME}")
                with sftp.open(f"{workdir}/run.py", "w") as f:
                    f.write(BOARD_SCRIPT)
            command = shlex.join(["python3", f"{workdir}/run.py", f"{workdir}/{AWKWARD_NAME}", json.dumps(x)])
            _, stdout, stderr = client.exec_command(command, timeout=180)  # qemu: imports take seconds
            out, err = stdout.read().decode(), stderr.read().decode()
            assert stdout.channel.recv_exit_status() == 0, err
        finally:
            client.exec_command(f"rm -rf {shlex.quote(workdir)}", timeout=30)[1].channel.recv_exit_status()

    report = json.loads(out.strip().splitlines()[-1])
    assert report["machine"] == "aarch64"
    assert report["python"].startswith("3.11.")
    np.testing.assert_allclose(np.array(report["output"]), expected, rtol=1e-5, atol=1e-6)
