"""edgekit bench over the REAL adb client against a device-side adb daemon double that speaks the
adb wire protocol (tests/doubles/adbd.py): device selection, the python and benchmark_model
runners, quoting, cleanup, and a device that dies mid-run."""

import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from edgekit.measure import bench
from edgekit.devices.profiles import DeviceProfile, open_device
from edgekit.errors import DeviceError, UsageError

from conftest import wait_until_measuring
from doubles.adbd import AdbdDouble

DATA = Path(__file__).parent / "data" / "benchmark_model"
WORKDIR = "/tmp/edgekit adb 'phone' test"


@pytest.fixture
def art(digits_int8):
    return digits_int8


@pytest.fixture
def server(adb, monkeypatch):
    """edgekit's AdbDevice talks to the test's private adb server."""
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb.port))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    yield adb
    shutil.rmtree(WORKDIR, ignore_errors=True)


@pytest.fixture
def phone(server):
    with AdbdDouble(model="Pixel 8", abi="arm64-v8a") as dev:
        yield dev
        server.disconnect(dev)


def profile(serial: str, **kw) -> DeviceProfile:
    base = dict(name="test-phone", transport="adb", serial=serial, runner="python", python=sys.executable,
                workdir=WORKDIR, timeout_s=20)
    base.update(kw)
    return DeviceProfile(**base)


def test_python_runner_over_adb(phone, art):
    r = bench(art, profile(phone.serial), runs=15, warmup=2)
    assert r.status == "ok" and len(r.samples_ms) == 15
    assert r.device_info["model"] == "Pixel 8" and r.device_info["abi"] == "arm64-v8a"
    assert list(Path(WORKDIR).iterdir()) == []


def test_benchmark_model_runner_pushes_runs_and_parses(phone, art, tmp_path):
    """The binary is the user's and runs on the device: here a stand-in that records its argv and
    prints a real benchmark_model output."""
    record = tmp_path / "argv.txt"
    fake = tmp_path / "benchmark_model"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\n"
                    f"test -f \"$(echo \"$1\" | sed 's/^--graph=//')\" || exit 9\ncat '{DATA / 'new_format_peak.txt'}'\n")
    fake.chmod(0o644)  # the runner must chmod it on the device
    r = bench(art, profile(phone.serial, runner="benchmark_model", threads=4), runs=50, warmup=5, benchmark_binary=str(fake))
    assert r.status == "ok" and r.runner == "benchmark_model"
    assert r.stats["mean_ms"] == pytest.approx(249.684) and r.init_ms == pytest.approx(16.242)
    assert r.first_ms == pytest.approx(360.262) and r.peak_mem_mb == pytest.approx(138.809)
    args = record.read_text().splitlines()
    assert args[0].startswith("--graph=") and args[0].endswith("/model.tflite")
    assert {"--warmup_runs=5", "--num_runs=50", "--num_threads=4", "--report_peak_memory_footprint=true"} <= set(args)
    assert list(Path(WORKDIR).iterdir()) == []


def test_benchmark_model_runner_needs_a_binary(phone, art, monkeypatch):
    monkeypatch.delenv("EDGEKIT_BENCHMARK_MODEL", raising=False)
    with pytest.raises(UsageError, match="--benchmark-binary"):
        bench(art, profile(phone.serial, runner="benchmark_model"))


def test_device_selection(server):
    with pytest.raises(DeviceError, match="no Android device is attached"):
        open_device(profile(""))
    with AdbdDouble() as a, AdbdDouble() as b:
        server.connect(a)
        server.connect(b)
        with pytest.raises(DeviceError, match="several Android devices"):
            open_device(profile(""))
        server.disconnect(b)
        with open_device(profile("")) as dev:  # exactly one left: chosen without a serial
            assert dev.serial == a.serial
        server.disconnect(a)
    with pytest.raises(DeviceError, match="no adb device"):
        open_device(profile("emulator-5554"))


def test_missing_adb_client(phone, monkeypatch):
    monkeypatch.setenv("EDGEKIT_ADB", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DeviceError, match="adb client is not installed"):
        open_device(profile(phone.serial))


def test_device_killed_mid_run_fails_fast_and_next_run_is_clean(server, art):
    errors = {}
    with AdbdDouble() as dev:
        def run():
            try:
                bench(art, profile(dev.serial), runs=1, warmup=0, min_seconds=60)
            except DeviceError as exc:
                errors["e"] = exc

        th = threading.Thread(target=run)
        th.start()
        wait_until_measuring(WORKDIR)
        t_kill = time.monotonic()
        dev.kill()
        th.join(40)
        assert not th.is_alive(), "bench hung after the device died"
        assert time.monotonic() - t_kill < 30
        assert "lost adb device" in str(errors.get("e")), errors
        server.disconnect(dev)
    with AdbdDouble() as again:
        r = bench(art, profile(again.serial), runs=3, warmup=0)
        assert r.status == "ok"
        server.disconnect(again)
    assert list(Path(WORKDIR).iterdir()) == []


def test_unauthorized_device_is_a_clear_error(server):
    with AdbdDouble(unauthorized=True) as dev:
        server("connect", dev.serial, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "unauthorized" not in server("devices").stdout:
            time.sleep(0.2)
        with pytest.raises(DeviceError, match="unauthorized.*Allow USB debugging"):
            open_device(profile(dev.serial))
        with pytest.raises(DeviceError, match="unauthorized"):
            open_device(profile(""))  # the only device, but not usable
        server.disconnect(dev)
