"""edgekit bench on the local device: protocol, statistics, cleanup, locking, faults."""

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit import benchmark_model
from edgekit.measure import BenchOptions, bench, bench_many, summarize
from edgekit.devices.local import LocalDevice
from edgekit.devices.profiles import DeviceProfile
from edgekit.errors import DeviceBusy, DeviceError, DeviceTimeout, UsageError

from conftest import run_cli

DATA = Path(__file__).parent / "data" / "benchmark_model"


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-arts")
    return {t: edgekit.convert(target=t, out_dir=root / t).path for t in ("tflite-int8", "onnx-fp32")}


def local(workdir, **kw):
    return DeviceProfile(name="local-test", transport="local", python=sys.executable, workdir=str(workdir), **kw)


# ---------------------------------------------------------------- benchmark_model output

@pytest.mark.parametrize("name,fmt,avg,init,first,runs,median,peak", [
    ("old_format.txt", "old", 137.722, 4.452, None, 50, None, None),
    ("old_format_inference.txt", "old", 79.7609, 38.467, None, 50, None, None),
    ("new_format.txt", "new", 63.7432, 119.515, 87.112, 1000, 51.891, 55.4961),
    ("new_format_peak.txt", "new", 249.684, 16.242, 360.262, 50, None, 138.809),
    ("new_format_sci.txt", "new", 2950.34, 17.187, 3512.391, 50, None, 46.0859),
    ("logcat.txt", "new", 145.528, 92.318, 187.533, 25, 145.1, 40.25),
])
def test_benchmark_model_parser_on_real_outputs(name, fmt, avg, init, first, runs, median, peak):
    r = benchmark_model.parse((DATA / name).read_text())
    assert r.format == fmt
    assert r.avg_ms == pytest.approx(avg) and r.init_ms == pytest.approx(init)
    assert (r.first_ms is None) == (first is None) and (first is None or r.first_ms == pytest.approx(first))
    assert r.runs == runs
    assert (r.median_ms is None) == (median is None) and (median is None or r.median_ms == pytest.approx(median))
    assert (r.peak_mem_mb is None) == (peak is None) and (peak is None or r.peak_mem_mb == pytest.approx(peak))


def test_benchmark_model_parser_rejects_output_without_summary():
    with pytest.raises(DeviceError, match="no timing summary"):
        benchmark_model.parse("ERROR: Failed to load model model.tflite\n")


def test_summarize_matches_numpy():
    x = [1.0, 2.0, 3.0, 4.0, 100.0]
    s = summarize(x)
    assert s["p50_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 100.0 and s["runs"] == 5
    assert s["std_ms"] == pytest.approx(np.std(x, ddof=1)) and s["cv"] == pytest.approx(np.std(x, ddof=1) / np.mean(x))
    assert s["p99_ms"] == pytest.approx(np.percentile(x, 99))


# ---------------------------------------------------------------- the protocol, locally

@pytest.mark.parametrize("which", ["tflite-int8", "onnx-fp32"])
def test_local_bench_keeps_every_sample_and_cleans_up(arts, tmp_path, which):
    work = tmp_path / "work dir 'q'"
    r = bench(arts[which], local(work), runs=30, warmup=3)
    assert r.status == "ok" and r.target == which and r.runner == "python"
    assert len(r.samples_ms) == 30 and all(s > 0 for s in r.samples_ms)
    assert r.stats["p50_ms"] == pytest.approx(float(np.median(r.samples_ms)))
    assert r.init_ms > 0 and r.first_ms > 0 and r.peak_mem_mb > 10
    assert r.size_bytes == (arts[which] / json.loads((arts[which] / "manifest.json").read_text())["file"]).stat().st_size
    assert sorted(p.name for p in work.iterdir()) == []  # run folder and lock removed


def test_min_seconds_extends_the_run(arts, tmp_path):
    r = bench(arts["tflite-int8"], local(tmp_path), runs=1, warmup=0, min_seconds=0.3)
    assert len(r.samples_ms) > 1 and sum(r.samples_ms) > 0.2


def test_bare_model_file(arts, tmp_path):
    r = bench(arts["tflite-int8"] / "model.tflite", local(tmp_path), runs=5)
    assert r.status == "ok" and len(r.samples_ms) == 5


def test_many_artifacts_one_failing_row_does_not_stop_the_rest(arts, tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"not a flatbuffer")
    rows = bench_many([arts["tflite-int8"], bad, arts["onnx-fp32"]], [local(tmp_path / "w")], BenchOptions(runs=5, warmup=1))
    assert [r.status for r in rows] == ["ok", "error", "ok"]
    assert "did not run" in rows[1].error


def test_unknown_artifact_fails_before_touching_devices(tmp_path):
    with pytest.raises(UsageError, match="artifact not found"):
        bench_many([tmp_path / "nope"], ["local"])


# ---------------------------------------------------------------- faults

def test_missing_runtime_on_the_device_is_reported_with_the_fix(arts, tmp_path):
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    prof = DeviceProfile(name="bare", transport="local", python=str(venv / "bin" / "python"), workdir=str(tmp_path / "w"))
    with pytest.raises(DeviceError, match="lacks a runtime.*edgekit doctor"):
        bench(arts["tflite-int8"], prof, runs=3)
    from edgekit.doctor import diagnose, healthy

    _, checks = diagnose(prof)
    by = {c.name: c for c in checks}
    assert not by["numpy"].ok and by["numpy"].fix.endswith("-m pip install numpy")
    assert not by["TFLite interpreter"].ok and "ai-edge-litert" in by["TFLite interpreter"].fix
    assert not healthy(checks)
    assert list((tmp_path / "w").iterdir()) == []


def test_unwritable_workdir(arts, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DeviceError, match="creating"):
        bench(arts["tflite-int8"], local(tmp_path / "afile" / "sub"), runs=3)


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` for the test (needs root), unmounted afterwards."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_full_remote_folder(arts, tmp_path):
    with tmpfs(tmp_path / "tiny", "size=64k") as mnt:
        with pytest.raises(DeviceError, match="No space left|cannot copy"):
            bench(arts["tflite-int8"], local(mnt), runs=3)
        assert [p.name for p in mnt.iterdir()] == []  # the partial run folder and the lock are gone


def test_read_only_remote_folder(arts, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        with pytest.raises(DeviceError, match="Read-only file system"):
            bench(arts["tflite-int8"], local(mnt), runs=3)


def test_step_timeout():
    dev = LocalDevice("t", "/tmp/edgekit-timeout-test")
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout):
        dev.run(["sleep", "10"], timeout_s=0.5)
    assert time.monotonic() - t0 < 5


def test_two_benches_on_one_device_are_serialised(tmp_path):
    dev = LocalDevice("lock-test", str(tmp_path))
    token = dev.acquire_lock()
    other = LocalDevice("lock-test", str(tmp_path))
    with pytest.raises(DeviceBusy):
        other.acquire_lock(timeout_s=1.0)
    got = {}
    th = threading.Thread(target=lambda: got.setdefault("token", other.acquire_lock(timeout_s=10)))
    th.start()
    time.sleep(0.8)
    assert "token" not in got  # still waiting
    dev.release_lock(token)
    th.join(10)
    assert got.get("token") and got["token"] != token
    other.release_lock(got["token"])


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".edgekit-lock"
    lock.mkdir()
    (lock / "token").write_text(f"{socket.gethostname()} {dead.pid} abc\n")
    (lock / "since").write_text(f"{int(time.time())}\n")
    left = tmp_path / "edgekit-run.left0v"  # a folder a killed run left behind, with edgekit's marker
    left.mkdir()
    (left / ".edgekit-run").write_text(f"{socket.gethostname()} {dead.pid} abc\n{int(time.time())}\n")
    (tmp_path / "run.mine").mkdir()  # the user's own: never touched
    dev = LocalDevice("stale", str(tmp_path))
    with dev.session() as folder:
        assert Path(folder).is_dir()
        assert not left.exists() and (tmp_path / "run.mine").is_dir()


# ---------------------------------------------------------------- CLI

def test_cli_bench_table_json_and_exit_code(arts, tmp_path):
    out = tmp_path / "b.json"
    p = run_cli("bench", arts["tflite-int8"], arts["onnx-fp32"], "--runs", "10", "--warmup", "2", "--json", out)
    assert p.returncode == 0, p.stderr
    assert "tflite-int8" in p.stdout and "onnx-fp32" in p.stdout and "p50 ms" in p.stdout
    rows = json.loads(out.read_text())["results"]
    assert [len(r["samples_ms"]) for r in rows] == [10, 10]
    p = run_cli("bench", arts["tflite-int8"], tmp_path / "missing")
    assert p.returncode == 2 and p.stderr.strip().startswith("error") and "Traceback" not in p.stderr


def test_cli_devices_and_doctor(tmp_path):
    p = run_cli("devices", "--no-probe", "--json", tmp_path / "d.json")
    assert p.returncode == 0
    names = {d["name"] for d in json.loads((tmp_path / "d.json").read_text())["devices"]}
    assert {"local", "pixel", "android", "rpi4", "rpi5", "jetson-orin"} <= names
    p = run_cli("doctor", "--device", "local")
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_cli("bench", "x", "--device", "pixle")
    assert "did you mean 'pixel'" in p.stderr or "artifact not found" in p.stderr


def test_android_dumpsys_thermal_parser():
    from edgekit.measure import parse_dumpsys_thermal

    assert parse_dumpsys_thermal((DATA / "dumpsys_thermalservice.txt").read_text()) == 41.0  # current HAL, hottest CPU
    assert parse_dumpsys_thermal("Thermal Status: 0\n\tTemperature{mValue=31.5, mType=3, mName=SKIN, mStatus=0}\n") == 31.5
    assert parse_dumpsys_thermal("no sensors") is None


def test_thermal_warnings():
    from edgekit.measure import _thermal_warnings

    assert _thermal_warnings({"temp_c": 40.0, "freq_mhz": 2000.0}, {"temp_c": 41.0, "freq_mhz": 1990.0}) == []
    w = _thermal_warnings({"temp_c": 40.0, "freq_mhz": 2000.0}, {"temp_c": 52.0, "freq_mhz": 1500.0})
    assert len(w) == 2 and "throttling" in w[0] and "1500" in w[1]
