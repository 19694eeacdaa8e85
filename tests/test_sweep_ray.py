"""edgekit sweep on a real local Ray cluster (tests/doubles/ray_cluster.py): a head that converts, and a second node
(a "lab host") that declares the device `board`, a real OpenSSH sshd on loopback (tests/doubles/sshd.py) whose
profile only that node has. Benches must land on that node, one at a time; a killed node must leave every cell
retried or recorded; a second run must do no work; the same plan must give the same table on the local pool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from doubles.ray_cluster import RayCluster, ray_available
from doubles.sshd import SshdDouble

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.skipif(not ray_available(), reason="ray is not installed (pip install 'edgekit[ray]')")]

DEVICE = "board"
WORKDIR = "/tmp/edgekit-sweep-board"

LAB = '''
    out = "{out}"
    targets = ["onnx-fp32", "tflite-fp32"]
    devices = ["{device}"]
    measure = ["convert", "bench"]
    retries = 1
    [bench]
    runs = {runs}
    warmup = 1
    min_seconds = {min_seconds}
    [[models]]
    name = "digits"
    calib = "digits"
    calib_samples = 64
'''


@pytest.fixture(scope="module")
def lab_host(ssh_packages, tmp_path_factory):
    """(cluster, board node, the board's profile folder): the profile lives only on the node with the device."""
    root = tmp_path_factory.mktemp("raylab")
    shutil.rmtree(WORKDIR, ignore_errors=True)
    with SshdDouble(root / "sshd") as board:
        devices = root / "devices"
        devices.mkdir()
        (devices / f"{DEVICE}.toml").write_text(textwrap.dedent(f'''
            name = "{DEVICE}"
            transport = "ssh"
            host = "{board.host}"
            port = {board.port}
            user = "{board.user}"
            key_file = "{board.key_path}"
            known_hosts = "{board.known_hosts}"
            python = "{sys.executable}"
            workdir = "{WORKDIR}"
            timeout_s = 30
        '''))
        with RayCluster(root / "ray") as cluster:
            cluster.start_head(num_cpus=1)  # conversions; no device
            node = cluster.add_node({f"edgekit-device:{DEVICE}": 1}, num_cpus=1, env={"EDGEKIT_DEVICES": str(devices)})
            cluster.wait_for_resources([f"edgekit-device:{DEVICE}"])
            yield cluster, node, devices
    shutil.rmtree(WORKDIR, ignore_errors=True)


def write_lab(folder: Path, runs: int = 5, min_seconds: float = 0.0, device: str = DEVICE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lab = folder / "lab.toml"
    lab.write_text(textwrap.dedent(LAB.format(out=folder / "out", device=device, runs=runs, min_seconds=min_seconds)))
    return lab


def sweep_cli(cluster, lab: Path, *args, ray: bool = True, env: dict | None = None, timeout: float = 600):
    e = cluster.driver_env(env)
    e["COLUMNS"] = "200"
    cmd = [sys.executable, "-m", "edgekit.cli", "sweep", str(lab), *(["--ray", cluster.address] if ray else []), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=lab.parent, env=e, timeout=timeout)


def cells(path: Path) -> dict:
    return {r["cell"]: r for r in json.loads(path.read_text())["results"]}


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]


def node_id(cluster, resource: str) -> str:
    code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False)\n"
            f"f = ray.remote(num_cpus=0, resources={{{resource!r}: 1}})(lambda: ray.get_runtime_context().get_node_id())\n"
            "print(ray.get(f.remote(), timeout=60))")
    res = cluster.run_driver(code)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def first_run(lab_host, tmp_path_factory):
    cluster, _, _ = lab_host
    folder = tmp_path_factory.mktemp("sweep-ray")
    lab = write_lab(folder)
    first = sweep_cli(cluster, lab, "--json", folder / "r1.json")
    second = sweep_cli(cluster, lab, "--json", folder / "r2.json")
    return folder, lab, first, second


def test_benches_land_on_the_device_node_one_at_a_time(lab_host, first_run):
    cluster, _, _ = lab_host
    folder, _, first, _ = first_run
    assert first.returncode == 0, first.stderr
    got = cells(folder / "r1.json")
    assert {c: r["status"] for c, r in got.items()} == {
        "digits/onnx-fp32": "ok", "digits/onnx-fp32@board": "ok", "digits/tflite-fp32": "ok", "digits/tflite-fp32@board": "ok"}
    benches = [r for r in records(folder / "out") if r.get("command") == "bench"]
    assert len(benches) == 2
    board_node = node_id(cluster, f"edgekit-device:{DEVICE}")
    assert {b["ran"]["node"] for b in benches} == {board_node}  # never on the head
    assert all(b["results"][0]["device_info"]["transport"] == "ssh" for b in benches)
    (a0, a1), (b0, b1) = sorted((b["ran"]["started"], b["ran"]["ended"]) for b in benches)
    assert a1 <= b0, "two benches on one device overlapped"
    assert list(Path(WORKDIR).iterdir()) == []  # nothing left on the board


def test_a_second_run_does_no_work_and_prints_the_same_table(first_run):
    folder, _, first, second = first_run
    assert second.returncode == 0, second.stderr
    assert all(r["cached"] for r in cells(folder / "r2.json").values())
    assert second.stdout == first.stdout
    assert "0 run, 4 from the store" in second.stderr


def test_the_local_pool_gives_the_same_table(lab_host, first_run, tmp_path):
    """The same plan on this host's process pool (the board's profile given to it directly): the same cells, statuses,
    verdicts and sizes (latency is measured anew, so it is compared only as present)."""
    cluster, _, devices = lab_host
    folder, _, _, _ = first_run
    lab = write_lab(tmp_path)
    local = sweep_cli(cluster, lab, "--json", tmp_path / "local.json", ray=False, env={"EDGEKIT_DEVICES": str(devices)})
    assert local.returncode == 0, local.stderr
    ray_cells, local_cells = cells(folder / "r1.json"), cells(tmp_path / "local.json")
    same = lambda r: (r["status"], r["verdict"], r["size_bytes"], r["p50_ms"] is not None)  # noqa: E731
    assert {c: same(r) for c, r in ray_cells.items()} == {c: same(r) for c, r in local_cells.items()}


def test_a_device_no_node_declares_fails_before_any_work(lab_host, tmp_path):
    cluster, _, _ = lab_host
    lab = write_lab(tmp_path, device="pixel")
    res = sweep_cli(cluster, lab, timeout=120)
    assert res.returncode == 2
    assert "no node of the Ray cluster declares device(s) pixel" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_dead_address_is_one_line_at_once(lab_host, tmp_path):
    from conftest import _free_port

    cluster, _, _ = lab_host
    lab = write_lab(tmp_path)
    t0 = time.monotonic()
    e = cluster.driver_env()
    res = subprocess.run([sys.executable, "-m", "edgekit.cli", "sweep", str(lab), "--ray", f"127.0.0.1:{_free_port()}"],
                         capture_output=True, text=True, env=e, timeout=120)
    assert res.returncode == 2 and "no Ray cluster at 127.0.0.1:" in res.stderr
    assert time.monotonic() - t0 < 30


def test_killing_the_device_node_mid_sweep_loses_no_cell(lab_host, tmp_path):
    """The lab host dies during a bench: the bench is retried (retries = 1), its device is gone, so it is recorded as
    an infrastructure error; every cell is in the table, the exit is 5. With the host back, the same sweep again does
    only the benches (the conversions are in the store; an infrastructure error is not a result) and they pass."""
    cluster, node, devices = lab_host
    lab = write_lab(tmp_path, runs=20, min_seconds=8)
    e = cluster.driver_env()
    e["COLUMNS"] = "200"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "sweep", str(lab), "--ray", cluster.address, "--json",
                             str(tmp_path / "r.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(Path(WORKDIR).glob("edgekit-run.*/artifact")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        time.sleep(2)
        node.kill()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 5, err
    got = cells(tmp_path / "r.json")
    assert set(got) == {"digits/onnx-fp32", "digits/onnx-fp32@board", "digits/tflite-fp32", "digits/tflite-fp32@board"}
    assert got["digits/onnx-fp32"]["status"] == got["digits/tflite-fp32"]["status"] == "ok"
    lost = [r for c, r in got.items() if "@" in c]
    assert all(r["status"] == "error" for r in lost), lost
    assert all(r["attempts"] == 2 for r in lost)
    assert "Traceback" not in err
    # the host comes back: only the benches run again
    cluster.add_node({f"edgekit-device:{DEVICE}": 1}, num_cpus=1, env={"EDGEKIT_DEVICES": str(devices)})
    cluster.wait_for_resources([f"edgekit-device:{DEVICE}"])
    again = sweep_cli(cluster, lab, "--json", tmp_path / "r2.json")
    assert again.returncode == 0, again.stderr
    got = cells(tmp_path / "r2.json")
    assert [c for c, r in got.items() if not r["cached"]] == ["digits/onnx-fp32@board", "digits/tflite-fp32@board"]
