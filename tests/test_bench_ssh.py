"""edgekit bench over SSH against a real OpenSSH sshd on loopback (tests/doubles/sshd.py):
host-key verification, quoting, cleanup, a board that dies mid-run, and a real aarch64 userland
(debootstrap arm64 + qemu-user) running edgekit's runtime on a real .tflite, for correctness."""

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit import runtime
from edgekit.measure import bench
from edgekit.devices.profiles import DeviceProfile, open_device
from edgekit.errors import DeviceError

from conftest import wait_until_measuring
from doubles.sshd import SshdDouble

WORKDIR = "/tmp/edgekit ssh 'board' test"


@pytest.fixture
def art(digits_int8):
    return digits_int8


@pytest.fixture
def board(ssh_packages, tmp_path):
    shutil.rmtree(WORKDIR, ignore_errors=True)
    with SshdDouble(tmp_path / "board") as b:
        yield b
    shutil.rmtree(WORKDIR, ignore_errors=True)


def profile(b, **kw) -> DeviceProfile:
    base = dict(name="test-board", transport="ssh", host=b.host, port=b.port, user=b.user, key_file=str(b.key_path),
                known_hosts=str(b.known_hosts), python=sys.executable, workdir=WORKDIR, timeout_s=20)
    base.update(kw)
    return DeviceProfile(**base)


def test_bench_over_ssh_with_awkward_paths(board, art):
    r = bench(art, profile(board), runs=20, warmup=2)
    assert r.status == "ok" and len(r.samples_ms) == 20 and r.stats["p50_ms"] > 0
    assert r.device_info["transport"] == "ssh" and r.device_info["runtime"] == "ai-edge-litert"
    assert list(Path(WORKDIR).iterdir()) == []  # run folder and lock removed on the board


def test_unknown_host_key_is_refused(board, art, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DeviceError, match="not in known_hosts"):
        open_device(profile(board, known_hosts=str(empty)))


def test_changed_host_key_is_refused(board, tmp_path):
    with SshdDouble(tmp_path / "other") as other:  # another host key, presented at board's address
        wrong = tmp_path / "wrong_known_hosts"
        wrong.write_text(other.known_hosts.read_text().replace(f"[{other.host}]:{other.port}", f"[{board.host}]:{board.port}"))
        with pytest.raises(DeviceError, match="does not match known_hosts"):
            open_device(profile(board, known_hosts=str(wrong)))


def test_unreachable_board_is_a_clear_error(ssh_packages, tmp_path):
    from conftest import _free_port

    p = DeviceProfile(name="gone", transport="ssh", host="127.0.0.1", port=_free_port(), user="root", workdir=WORKDIR)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="cannot reach|SSH to"):
        open_device(p)
    assert time.monotonic() - t0 < 20


def test_board_killed_mid_run_fails_fast_and_the_next_run_is_clean(board, art, tmp_path):
    errors = {}

    def run():
        try:
            bench(art, profile(board), runs=1, warmup=0, min_seconds=60)
        except DeviceError as exc:
            errors["e"] = exc

    th = threading.Thread(target=run)
    th.start()
    wait_until_measuring(WORKDIR)
    t_kill = time.monotonic()
    board.kill()
    th.join(30)
    assert not th.is_alive(), "bench hung after the board died"
    assert time.monotonic() - t_kill < 20
    assert "lost the SSH connection" in str(errors.get("e")), errors
    assert list(Path(WORKDIR).glob("edgekit-run.*")), "the dead run should have left its folder (nobody could clean it)"
    with SshdDouble(tmp_path / "board") as again:  # the board comes back (same host key)
        r = bench(art, profile(again), runs=5, warmup=1)
        assert r.status == "ok"
    assert list(Path(WORKDIR).iterdir()) == []  # the leftovers and the dead lock are gone


def test_aarch64_board_runs_the_artifact_correctly(arm64_rootfs, art, tmp_path_factory):
    """Emulated aarch64: correctness only. The board's own python3 runs edgekit.runtime on real digits
    inputs; its outputs must match the host's LiteRT run of the same artifact."""
    from edgekit.datasets import digits
    from edgekit.runner import build_zipapp

    x = digits().test.x[:16]
    host_out = runtime.load(art).run_batch(x)[0]
    local = tmp_path_factory.mktemp("arm-io")
    np.save(local / "x.npy", x)
    build_zipapp(local / "runner.pyz")
    with SshdDouble(tmp_path_factory.mktemp("arm-board"), chroot=arm64_rootfs) as b:
        prof = profile(b, python="python3", workdir="/tmp/edgekit", timeout_s=300)
        with open_device(prof) as dev:
            info = dev.info()
            assert info.arch == "aarch64"
            with dev.session() as remote:
                dev.run(["mkdir", "-p", f"{remote}/art"], 30).check("mkdir")
                for f in ("manifest.json", "model.tflite"):
                    dev.push(art / f, f"{remote}/art/{f}")
                dev.push(local / "x.npy", f"{remote}/x.npy")
                dev.push(local / "runner.pyz", f"{remote}/runner.pyz")
                code = ("import sys; sys.path.insert(0, sys.argv[1]); import numpy as np; from edgekit import runtime; "
                        "m = runtime.load(sys.argv[2]); np.save(sys.argv[4], m.run_batch(np.load(sys.argv[3]))[0]); "
                        "import platform; print(platform.machine(), m.backend.runtime_name)")
                r = dev.run(["python3", "-c", code, f"{remote}/runner.pyz", f"{remote}/art", f"{remote}/x.npy", f"{remote}/y.npy"], 300)
                r.check("running the artifact on the board")
                assert r.stdout.split() == ["aarch64", "ai-edge-litert"]
                dev.pull(f"{remote}/y.npy", local / "y.npy")
            board_out = np.load(local / "y.npy")
            scale = json.loads((art / "manifest.json").read_text())["outputs"][0]["quantization"]["scale"]
            np.testing.assert_allclose(board_out, host_out, atol=scale * 1.01)  # at most one int8 step apart
            assert (board_out.argmax(1) == host_out.argmax(1)).all()
            # no bench here: the board is emulated, and bench refuses to time an emulator (test_the_emulated_board_is_never_timed)
            from edgekit.evaluate import evaluate  # edgekit eval: outputs made on the board, scored here

            on_board = evaluate(art, "digits", samples=16, device=prof, reference="edgekit.examples.digits:build")
            on_host = evaluate(art, "digits", samples=16, reference="edgekit.examples.digits:build")
            assert on_board.device_info["machine"] == "aarch64"
            assert on_board.metrics["top1"] == on_host.metrics["top1"]
            assert on_board.metrics["top1_agreement"] == on_host.metrics["top1_agreement"]


def test_the_emulated_board_is_never_timed(arm64_rootfs, art, tmp_path_factory):
    """qemu-user timings measure the emulator: bench on the aarch64 userland is refused in one line, and leaves nothing
    on the board."""
    with SshdDouble(tmp_path_factory.mktemp("arm-bench"), chroot=arm64_rootfs) as b:
        prof = profile(b, python="python3", workdir="/tmp/edgekit-bench", timeout_s=300)
        with pytest.raises(DeviceError, match="is emulated .*without /proc/cpuinfo|is emulated .*x86 CPU") as err:
            bench(art, prof, runs=2, warmup=0)
        assert "\n" not in str(err.value)
        assert not (arm64_rootfs / "tmp" / "edgekit-bench").exists() or not any((arm64_rootfs / "tmp" / "edgekit-bench").iterdir())


def test_emulation_is_told_from_real_boards():
    from edgekit.runner import emulation

    arm = "processor\t: 0\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n"
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse2 avx2\n"
    assert emulation("aarch64", arm, "linux") is None
    assert emulation("x86_64", x86, "linux") is None
    assert "qemu-user" in emulation("aarch64", x86, "linux")
    assert emulation("arm64", None, "darwin") is None  # no /proc on macOS boards: nothing to tell from
