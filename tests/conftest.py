import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "models"))
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small batches on a shared 2-core machine: one torch thread is several times faster than two (compression tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fashion():
    from edgekit.datasets import fashion_mnist

    return fashion_mnist()


@pytest.fixture(scope="session")
def fashion_model(fashion, tmp_path_factory):
    """A Fashion-MNIST CNN trained here (60k images, 1 epoch, ~20 s, ~85% test accuracy), saved as a state dict."""
    import fashion_cnn

    model = fashion_cnn.train(fashion.train.x, fashion.train.y, epochs=1, batch=64)
    path = tmp_path_factory.mktemp("fashion") / "fashion_cnn.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="session")
def fashion_calib(fashion, tmp_path_factory):
    """Calibration images from the train split, as a user would ship them: an .npy."""
    path = tmp_path_factory.mktemp("calib") / "fashion_calib.npy"
    np.save(path, fashion.train.x[-1000:])
    return path


@pytest.fixture(scope="session")
def digits_int8(tmp_path_factory):
    """The bundled model as a tflite-int8 artifact, in a folder whose path has a space."""
    import edgekit

    return edgekit.convert(target="tflite-int8", out_dir=tmp_path_factory.mktemp("shared-art") / "digits int8").path


def assert_healthy(validation) -> None:
    """ok, or warn for no other reason than that the validation data was a split of the calibration source
    (edgekit caps such verdicts at warn: the data is not independent)."""
    v = validation if isinstance(validation, dict) else validation.to_dict()
    reasons = [r for r in v.get("reasons", []) if "split of the calibration source" not in r]
    assert v["status"] in ("ok", "warn") and not reasons, v


def wait_until_measuring(workdir: str, timeout_s: float = 30.0) -> None:
    """Block until a bench run has staged its artifact under `workdir`, then give the runner time to start timing."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(Path(workdir).glob("edgekit-run.*/artifact/model.tflite")):
        time.sleep(0.2)
    time.sleep(2.0)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args, cwd=None, env=None):
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    e["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=600)


# ---------------------------------------------------------------- device doubles (shared)

REPO = HERE.parent
SETUP = REPO / "scripts" / "setup-arm64-rootfs.sh"
ROOTFS = Path(os.environ.get("EDGEKIT_ARM64_ROOTFS", "/var/cache/edgekit-tests/arm64-rootfs"))
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def _run_setup(*args: str) -> None:
    """Run the (idempotent) setup script; fail loudly, or skip locally when it cannot run at all."""
    if os.geteuid() != 0:
        reason = f"{SETUP.name} needs root (apt-get, binfmt_misc, debootstrap, chroot) and sshd needs root"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    result = subprocess.run([str(SETUP), *args], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"{SETUP.name} {' '.join(args)} failed: {result.stderr.strip()}")


@pytest.fixture(scope="session")
def ssh_packages() -> None:
    """openssh-server/-client on this host (no rootfs build)."""
    _run_setup("--packages-only")


@pytest.fixture(scope="session")
def arm64_rootfs(ssh_packages) -> Path:
    """The cached aarch64 userland with numpy and ai-edge-litert (built on first use)."""
    _run_setup(str(ROOTFS))
    return ROOTFS



from doubles.adbd import EMULATOR_PORTS, AdbdDouble  # noqa: E402


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in EMULATOR_PORTS:
            return port


class Adb:
    """The real adb client, bound to a private adb server."""

    def __init__(self, port: int, home: Path):
        self.port = port
        # A private HOME (adb keys) and TMPDIR (server log), so nothing is shared with other runs.
        self.env = dict(os.environ, HOME=str(home), TMPDIR=str(home))
        self.env.pop("ANDROID_SERIAL", None)

    def argv(self, *args: str) -> list[str]:
        return ["adb", "-P", str(self.port), *args]

    def __call__(self, *args: str, timeout: float = 30, check: bool = True,
                 **kwargs) -> subprocess.CompletedProcess:
        if "input" not in kwargs:
            kwargs["stdin"] = subprocess.DEVNULL
        result = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"adb {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stdout}{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def connect(self, dev: AdbdDouble) -> None:
        out = self("connect", dev.serial).stdout
        assert f"connected to {dev.serial}" in out, out
        self("-s", dev.serial, "wait-for-device", timeout=15)

    def disconnect(self, dev: AdbdDouble) -> None:
        self("disconnect", dev.serial, check=False, timeout=15)


@pytest.fixture(scope="session")
def adb(tmp_path_factory):
    client = Adb(_free_port(), tmp_path_factory.mktemp("adb-home"))
    client("start-server", timeout=30)
    try:
        yield client
    finally:
        client("kill-server", check=False, timeout=15)




@pytest.fixture(scope="module")
def bench_doc(digits_int8, tmp_path_factory):
    """A real `edgekit bench --json` result of a small artifact (the safety tests mutate it)."""
    import json

    root = tmp_path_factory.mktemp("bench-doc")
    r = run_cli("bench", digits_int8, "--device", "local", "--runs", "5", "--warmup", "1", "--json", "bench.json", cwd=root,
                env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return json.loads((root / "bench.json").read_text())
