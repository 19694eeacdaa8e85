"""The device is the truth (issue 16): verdicts measured where the artifact runs, the three-way per-layer
diagnosis (float host / quantized host / quantized device) and agreement between devices in the report.

Fast tier: the bundled digits CNN on a local device and on the adb double (python runner; benchmark_model
refused with what it cannot do). Slow tier: the real EfficientNet-Lite0 at tflite-int8 on the aarch64 board
double (the real sshd, logins chrooted into a debootstrap arm64 userland run by qemu-user: correctness only,
no timing is taken or asserted), on held-out natural photos.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.devices.profiles import DeviceProfile
from edgekit.errors import ArtifactError, UsageError

from conftest import run_cli
import test_bench_adb
from test_bench_adb import profile as adb_profile
from test_bench_ssh import profile as ssh_profile

server, phone = test_bench_adb.server, test_bench_adb.phone  # fixtures: the adb double behind the real adb client

REPO = Path(__file__).resolve().parent.parent
EFFNET = f"{REPO / 'tests/models/efficientnet_lite0.py'}:build"


def local(tmp_path, name="local-dev") -> DeviceProfile:
    return DeviceProfile(name=name, transport="local", python=sys.executable, workdir=str(tmp_path / "w"))


# ------------------------------------------------------------------ the runner's tensor mode


def test_runner_returns_only_the_requested_tensors_compressed(digits_int8, tmp_path):
    """The probe lists the tensors as extra outputs; its own outputs stay the artifact's, bit for bit."""
    from edgekit.diagnose_device import _quant_tensors, probe_model
    from edgekit.datasets import digits
    from edgekit.runner import main
    from edgekit.runtime import Model
    from edgekit.runtime.manifest import read_manifest, write_manifest

    names = [t["name"] for t in _quant_tensors((digits_int8 / "model.tflite").read_bytes()).values()
             if t["dtype"] == "int8" and "Conv2d" in t["name"]][:3]
    assert len(names) == 3
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "model.tflite").write_bytes(probe_model((digits_int8 / "model.tflite").read_bytes(), names))
    write_manifest(probe, read_manifest(digits_int8))
    x = digits().test.x[:5]
    np.savez(tmp_path / "in.npz", input=x)
    (tmp_path / "names.json").write_text(json.dumps(names))
    assert main(["--artifact", str(probe), "--tensors", str(tmp_path / "in.npz"), str(tmp_path / "names.json"), str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as z:
        assert sorted(z.files) == sorted([f"s{s}_t{k}" for s in range(5) for k in range(3)] + [f"s{s}_out0" for s in range(5)])
        assert all(z[f"s0_t{k}"].dtype == np.int8 for k in range(3))
        finals = np.concatenate([z[f"s{s}_out0"] for s in range(5)])
    m = Model(digits_int8)
    np.testing.assert_array_equal(finals, np.concatenate([m.backend.run(m.encode(x[s:s + 1]))[0] for s in range(5)]))
    (tmp_path / "names.json").write_text(json.dumps(["no-such-tensor"]))
    assert main(["--artifact", str(probe), "--tensors", str(tmp_path / "in.npz"), str(tmp_path / "names.json"), str(tmp_path / "o2.npz")]) == 4


def test_diagnose_on_a_device_that_computes_as_the_host(digits_int8, tmp_path):
    from edgekit.diagnose_device import diagnose_on_device

    steps = []
    d = diagnose_on_device(digits_int8, local(tmp_path), data="digits", samples=3, progress=steps.append)
    assert d.output["identical"] and d.output["top1_agreement"] == 1.0 and d.first_departure is None
    assert d.layers and all(la.action == "same" and la.max_steps == 0 for la in d.layers)
    assert all(la.host_vs_float_db == la.device_vs_float_db for la in d.layers)
    assert any("pulled" in s for s in steps) and d.transfer_bytes > 0 and d.tensors >= len(d.layers)
    assert list((tmp_path / "w").iterdir()) == []  # the run folder is removed


def test_a_layer_the_device_computes_worse_gets_a_recipe_change_and_a_kernel_difference_is_accepted():
    from edgekit.diagnose import LayerError
    from edgekit.diagnose_device import _verdict

    def layer(db, name="features.4"):
        return LayerError(name, ["CONV_2D"], "Conv2d", "int8", 40.0, db, 40.0 - db, 10 ** (-db / 10), 1.0,
                          tensors=[f"pkg.Net/torch.nn.modules.conv.Conv2d_{name};1"])

    steps = {"pkg.Net/torch.nn.modules.conv.Conv2d_features.4;1": (6, 30, 1000)}
    worse = _verdict(layer(21.0), {"features.4": layer(24.0)}, {"features.4": layer(20.0)}, steps)
    assert worse.action == "recipe" and worse.override["precision"] == "int16" and "4.0 dB further" in worse.note
    assert worse.max_steps == 6 and worse.differ == 0.03
    same_distance = _verdict(layer(21.0), {"features.4": layer(24.0)}, {"features.4": layer(23.5)}, steps)
    assert same_distance.action == "accept" and same_distance.override is None and "kernel difference" in same_distance.note


# ------------------------------------------------------------------ convert --validate-on


def test_validate_on_records_where_each_verdict_was_measured(tmp_path):
    out = tmp_path / "art"
    r = run_cli("convert", "-t", "tflite-int8", "--validate-on", str(tmp_path / "nothing"), "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr  # a bad device name: one line, before converting
    dev_dir = tmp_path / "devices"
    dev_dir.mkdir()
    (dev_dir / "bench-pc.toml").write_text(f'transport = "local"\nrunner = "python"\npython = "{sys.executable}"\n'
                                          f'workdir = "{tmp_path / "w"}"\n')
    r = run_cli("convert", "-t", "tflite-int8", "--validate-on", "bench-pc", "--out", out, "--json", tmp_path / "r.json",
                env={"EDGEKIT_DEVICES": str(dev_dir)})
    assert r.returncode == 0, r.stderr[-2000:]
    v = json.loads((out / "manifest.json").read_text())["validation"]
    assert v["measured_on"]["where"] == "host" and v["measured_on"]["runtime"] == "ai-edge-litert" and v["measured_on"]["runtime_version"]
    (d,) = v["devices"]
    assert d["device"] == "bench-pc" and d["transport"] == "local" and d["status"] == v["host_status"] == v["status"]
    assert d["vs_host"]["identical"] and d["vs_host"]["top1_agreement"] == 1.0 and d["top1"] == v["measured_on"]["top1"]
    assert d["figures"]["top1_agreement"] == v["top1_agreement"]
    assert not any("seconds" in k or k.endswith("_ms") for k in d)  # no timing from a device (it may be emulated)
    assert "(host+bench-pc)" in r.stdout and "ok on bench-pc" in r.stdout
    plain = run_cli("convert", "-t", "tflite-int8", "--out", tmp_path / "plain")
    assert "measured on this host" in plain.stdout and "--validate-on DEVICE" in plain.stdout
    # the report shows the places side by side
    rep = run_cli("report", out, "--markdown", tmp_path / "r.md")
    assert rep.returncode == 0 and "on bench-pc (x86_64)" in rep.stdout and "as host (x86_64) 100.0%" in rep.stdout
    assert "Agreement between devices" in (tmp_path / "r.md").read_text()
    # a received manifest is data: its device entries are type-checked on read
    from edgekit.runtime.manifest import read_manifest

    m = json.loads((out / "manifest.json").read_text())
    m["validation"]["devices"][0]["status"] = "great"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"validation.devices\[0\].status"):
        read_manifest(out)


def test_agreement_between_devices_shows_the_one_that_computes_differently(digits_int8):
    from edgekit.ondevice import agreement_matrix

    m = agreement_matrix({"host": [1, 2, 3, 4], "pi": [1, 2, 3, 4], "phone": [1, 2, 0, 0]})
    assert m["host"]["pi"] == 1.0 and m["phone"]["host"] == 0.5 and m["pi"]["phone"] == 0.5 and "host" not in m["host"]


def test_bench_with_eval_data_puts_each_devices_accuracy_next_to_its_latency(digits_int8, tmp_path):
    dev_dir = tmp_path / "devices"
    dev_dir.mkdir()
    for name in ("pc-a", "pc-b"):
        (dev_dir / f"{name}.toml").write_text(f'transport = "local"\nrunner = "python"\npython = "{sys.executable}"\n'
                                              f'workdir = "{tmp_path / name}"\n')
    env = {"EDGEKIT_DEVICES": str(dev_dir)}
    r = run_cli("bench", digits_int8, "-d", "pc-a", "-d", "pc-b", "--runs", "5", "--warmup", "1", "--eval-data", "digits",
                "--eval-samples", "120", "--json", tmp_path / "b.json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [x["eval"]["samples"] for x in results] == [120, 120] and all(0.9 < x["eval"]["metrics"]["top1"] <= 1 for x in results)
    assert "top-1" in r.stdout
    rep = run_cli("report", tmp_path / "b.json", digits_int8, "--json", tmp_path / "rep.json", "--html", tmp_path / "r.html")
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = {x["device"]: x for x in json.loads((tmp_path / "rep.json").read_text())["rows"]}
    assert rows["pc-a"]["accuracy_source"] == rows["pc-b"]["accuracy_source"] == "eval"  # each row its own device's
    assert [rows[x["device"]]["accuracy"] for x in results] == [x["eval"]["metrics"]["top1"] for x in results]
    assert rows["pc-a"]["latency_p50_ms"] > 0
    r = run_cli("bench", digits_int8, "-d", "pc-b", "--runs", "3", "--warmup", "0", "--json", tmp_path / "b2.json", env=env)
    (tmp_path / "b.json").unlink()
    r = run_cli("eval", digits_int8, "--data", "digits", "--samples", "50", "--json", tmp_path / "e.json")
    rep = run_cli("report", tmp_path / "b2.json", tmp_path / "e.json", digits_int8, "--json", tmp_path / "rep2.json", "--html", tmp_path / "r.html")
    (row,) = [x for x in json.loads((tmp_path / "rep2.json").read_text())["rows"] if x["device"] == "pc-b"]
    assert row["accuracy_source"] == "eval on host"  # measured elsewhere: said so


# ------------------------------------------------------------------ Android (adb double)


def test_adb_python_runner_validates_and_benchmark_model_says_what_it_cannot(phone, digits_int8, tmp_path):
    from edgekit import convert
    from edgekit.diagnose_device import diagnose_on_device

    art = convert(target="tflite-int8", out_dir=tmp_path / "a", validate_on=[adb_profile(phone.serial)])
    (d,) = art.manifest.validation.figures["devices"]
    assert d["transport"] == "adb" and d["status"] == art.manifest.validation.figures["host_status"] and d["vs_host"]["identical"]
    bm = adb_profile(phone.serial, runner="benchmark_model")
    for call in (lambda: convert(target="tflite-int8", out_dir=tmp_path / "b", validate_on=[bm]),
                 lambda: diagnose_on_device(digits_int8, bm, data="digits")):
        with pytest.raises(UsageError, match="benchmark_model takes no input files and returns no outputs or intermediate tensors") as e:
            call()
        assert 'runner = "python"' in e.value.hint and "edgekit bench" in e.value.hint
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ the real board: EfficientNet-Lite0 at int8 on aarch64


@pytest.fixture(scope="module")
def effnet_board(arm64_rootfs, tmp_path_factory):
    """EfficientNet-Lite0 tflite-int8 converted with --validate-on the aarch64 board (64 calibration photos, 48 held-out
    photos from other source photos), and the board's profile while it is up."""
    import efficientnet_lite0 as eff

    from doubles.sshd import SshdDouble
    from edgekit.pipeline import convert_many

    root = tmp_path_factory.mktemp("effnet-board")
    np.save(root / "calib.npy", eff.photos(64, split="calib"))
    np.save(root / "val.npy", eff.photos(48, split="val"))
    with SshdDouble(root / "board", chroot=arm64_rootfs) as b:
        prof = ssh_profile(b, python="python3", workdir="/tmp/edgekit", timeout_s=600)
        (res,) = convert_many(EFFNET, ["tflite-int8"], calibration=str(root / "calib.npy"), validation=str(root / "val.npy"),
                              out_root=root / "out", validate_on=[prof])
        assert res.error is None, res.error
        yield res, prof, root


@pytest.mark.slow
def test_the_int8_verdict_is_measured_on_the_board_and_the_difference_is_reported(effnet_board):
    """Measured (48 photos): the board's int8 logits differ from the host's, up to tens of steps; the fp32 control
    matches to ~1e-5. The device's figures are the board's, not a copy of the host's."""
    from edgekit.evaluate import _device_outputs
    from edgekit.calibration import load_calibration
    from edgekit.runtime import Model

    res, prof, root = effnet_board
    v = res.artifact.manifest.validation
    (d,) = v.figures["devices"]
    assert v.figures["measured_on"]["arch"] == "x86_64" and d["arch"] == "aarch64" and d["transport"] == "ssh"
    assert d["runtime"] == "ai-edge-litert" and d["runtime_version"]
    vs = d["vs_host"]
    assert not vs["identical"] and vs["outputs"][0]["max_steps"] >= 2  # ARM's int8 kernels round differently
    host_top1 = v.figures["measured_on"]["top1"]
    assert vs["top1_agreement"] == np.mean(np.asarray(host_top1) == np.asarray(d["top1"]))
    assert vs["top1_differs"] == sum(a != b for a, b in zip(host_top1, d["top1"]))
    assert list(np.asarray(Model(res.artifact.path).run_batch(np.load(root / "val.npy"))[0]).argmax(1)) == host_top1
    assert d["figures"]["samples"] == v.figures["samples"] == 48
    if vs["top1_differs"]:  # where they part, the printed warning says so and the board's own figures are kept
        assert any("top-1 differs from this host's" in w for w in res.warnings)
        assert d["figures"]["outputs"][0] != v.figures["outputs"][0]
    # the fp32 control: the board computes as the host
    from edgekit import convert

    val = load_calibration(np.load(root / "val.npy")[:6], ["image"], [(1, 3, 224, 224)])
    control = convert(EFFNET, "tflite-fp32", calibration=str(root / "calib.npy"), validation=val, out_dir=root / "fp32")
    outs, info = _device_outputs(control.path / "model.tflite", control.manifest, val, ["image"], prof, None, None)
    host = Model(control.path).run_batch(val.arrays["image"])[0]
    assert info["machine"] == "aarch64" and np.abs(outs[0] - host).max() < 1e-3 and (outs[0].argmax(1) == host.argmax(1)).all()


@pytest.mark.slow
def test_three_way_diagnosis_names_where_the_board_parts_from_the_host(effnet_board):
    """The ranking is checked against an independent layer-by-layer run: the existing two-way diagnosis (reference
    kernels, every tensor) gives the host's per-layer SQNR against float; the three-way's host column must rank the
    layers the same way, and the board's departure must start no later than the top-ranked layer."""
    from edgekit.diagnose import layer_errors
    from edgekit.diagnose_device import diagnose_on_device

    res, prof, root = effnet_board
    d = diagnose_on_device(res.artifact.path, prof, model=EFFNET, data=str(root / "val.npy"), samples=3)
    assert d.device_info["arch"] == "aarch64" and d.host_info["arch"] == "x86_64" and d.samples == 3
    assert d.first_departure is not None and not d.output["identical"]
    departed = [la for la in d.layers if la.action != "same"]
    assert departed and departed[0].device_vs_host_db < 60 and departed[0].max_steps >= 1
    assert all(la.action in ("accept", "recipe") for la in departed)
    assert all((la.override is not None) == (la.action == "recipe" and la.precision == "int8") for la in departed if la.action == "recipe")
    order = [la.name for la in d.layers]
    assert d.first_departure in order
    # independent: float and int8 layer by layer on the host with the reference interpreter
    import shutil

    from edgekit._util import work_dir
    from edgekit.build import calib_samples
    from edgekit.diagnose import _float_twin, prepare

    art, spec, ds, q = prepare(res.artifact.path, EFFNET, None, str(root / "val.npy"), 3, None, False)
    work = Path(work_dir("test-diag"))
    try:
        fm = _float_twin(art, spec, work, ds)
        two_way = {la.name: la.sqnr_out_db for la in layer_errors("tflite", fm.path, art.model_path, calib_samples(spec, fm, ds), work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common = [la for la in d.layers if la.name in two_way]
    assert len(common) >= 0.8 * len(d.layers)
    a = np.argsort(np.argsort([la.host_vs_float_db for la in common]))
    b = np.argsort(np.argsort([two_way[la.name] for la in common]))
    rho = np.corrcoef(a, b)[0, 1]
    assert rho > 0.8, rho
