"""The Ray cluster double (tests/doubles/ray_cluster.py), checked with real Ray drivers in subprocesses.

One head ({"edgekit-device:host": 1}) plus one node ({"edgekit-device:pixel": 1}) for the whole module:
~15 s to start on this machine, each driver ~2 s to connect. The last test closes the cluster and checks
that none of its processes survive, so the tests run in file order.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from doubles.ray_cluster import RayCluster, ray_available

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not ray_available(), reason="ray is not installed")]

HOST, PIXEL = "edgekit-device:host", "edgekit-device:pixel"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RayCluster(tmp_path_factory.mktemp("ray-cluster")) as c:
        c.start_head({HOST: 1})
        c.pixel = c.add_node({PIXEL: 1}, env={"EDGEKIT_TEST_NODE": "pixel"})
        c.wait_for_resources([HOST, PIXEL], timeout=30)
        yield c


def driver_json(cluster: RayCluster, code: str, timeout: float = 90) -> dict:
    result = cluster.run_driver(textwrap.dedent(code), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_driver_sees_both_custom_resources(cluster):
    out = driver_json(cluster, """
        import json, sys, ray
        ray.init(address=sys.argv[1], log_to_driver=False)
        print(json.dumps({"total": ray.cluster_resources(),
                          "nodes": [n["Resources"] for n in ray.nodes() if n["Alive"]]}))
    """)
    assert out["total"][HOST] == 1 and out["total"][PIXEL] == 1
    assert len(out["nodes"]) == 2
    assert out["total"]["object_store_memory"] <= 2 * 100_000_000  # not 30 % of RAM per node


def test_pinned_tasks_run_on_the_device_node_one_at_a_time(cluster):
    out = driver_json(cluster, """
        import importlib.util, json, os, sys, time, ray
        ray.init(address=sys.argv[1], log_to_driver=False)

        @ray.remote(num_cpus=0, max_retries=0)
        def where(pause):
            start = time.time(); time.sleep(pause)
            return {"node": ray.get_runtime_context().get_node_id(), "start": start, "end": time.time(),
                    "env": os.environ.get("EDGEKIT_TEST_NODE"), "edgekit": bool(importlib.util.find_spec("edgekit"))}

        pixel = [where.options(resources={"%s": 1}).remote(0.5) for _ in range(2)]
        host = where.options(resources={"%s": 1}).remote(0)
        owner = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "%s" in n["Resources"]]
        print(json.dumps({"pixel": ray.get(pixel, timeout=60), "host": ray.get(host, timeout=60), "owner": owner}))
    """ % (PIXEL, HOST, PIXEL))
    a, b = sorted(out["pixel"], key=lambda r: r["start"])
    assert out["owner"] and a["node"] == b["node"] == out["owner"][0]
    assert out["host"]["node"] != a["node"]
    assert b["start"] >= a["end"], (a, b)  # the resource is the device mutex: no overlap
    assert a["env"] == "pixel" and out["host"]["env"] is None  # add_node(env=...) reaches that node's tasks only
    assert a["edgekit"]  # nodes have the repo on PYTHONPATH, whatever the driver's cwd


def test_driver_without_the_token_is_refused(cluster):
    # Ray retries the GCS handshake ~1/s for 20 tries by default (~21 s); 2 tries keep this at ~3 s.
    code = textwrap.dedent("""
        import sys, ray
        try:
            ray.init(address=sys.argv[1], log_to_driver=False)
        except ConnectionError as e:
            print("refused:", e); sys.exit(3)
        print("connected")
    """)
    started = time.monotonic()
    result = cluster.run_driver(code, timeout=60, env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": None,
                                                      "RAY_gcs_server_port_wait_time_s": "2"})
    assert result.returncode == 3, (result.stdout, result.stderr[-2000:])
    assert "InvalidAuthToken" in result.stderr
    assert time.monotonic() - started < 25


def test_close_leaves_no_process_behind(cluster):
    temp_dir = cluster.temp_dir
    before = cluster.processes()  # by session of each node, and by the temp dir on the command line
    assert any("raylet" in cmd for cmd in before.values()), before
    assert any(str(temp_dir) in cmd for cmd in before.values())

    cluster.close()

    assert cluster.processes() == {}  # nothing names the temp dir any more
    assert [pid for pid in before if alive(pid)] == []  # nor survives from the sessions (workers, agents)
    assert not temp_dir.exists()
    cluster.close()  # idempotent (the fixture closes again)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
