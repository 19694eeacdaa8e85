"""Sweep wall time, side by side in one run: the same plan (3 models x 4 targets, converted then benched on the
local CPU: 24 cells) with the local process pool at 1 and 2 workers, on a real local Ray cluster with 1 and 2
worker nodes (tests/doubles/ray_cluster.py: a head that runs nothing plus N nodes of 1 CPU, each declaring the
device `local`), and a fully cached re-run; then the per-task dispatch overhead of Ray against the pool (no-op
tasks, so only the executor is timed).

    python benchmarks/sweep.py                 # ~15 min on 2 cores
    python benchmarks/sweep.py --configs local1,cached --json sweep.json

Every configuration starts from an empty out folder (nothing cached) except `cached`, which re-runs the first
configuration's folder. Models: the bundled digits CNN, tests/models/fashion_small.py (Fashion-MNIST calibration)
and tests/models/mtcnn_rnet.py (MTCNN's R-Net, real weights, random calibration). Bench: 20 runs, 3 warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

LAB = '''
out = "{out}"
targets = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]
devices = ["local"]
measure = ["convert", "bench"]
[bench]
runs = 20
warmup = 3
[[models]]
name = "digits"
calib = "digits"
calib_samples = 128
[[models]]
name = "fashion-small"
source = "{root}/tests/models/fashion_small.py:build"
calib = "fashion-mnist"
calib_samples = 128
input_shape = ["1,1,28,28"]
[[models]]
name = "mtcnn-rnet"
source = "{root}/tests/models/mtcnn_rnet.py:build"
calib = "random"
calib_samples = 64
input_shape = ["1,3,24,24"]
'''

CONFIGS = ("local1", "local2", "ray1", "ray2", "cached")


def run_sweep(lab: Path, args: list[str], env: dict) -> dict:
    out_json = lab.parent / f"result-{time.monotonic_ns()}.json"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgekit.cli", "sweep", str(lab), *args, "--json", str(out_json)],
                       capture_output=True, text=True, env=env, cwd=lab.parent, timeout=3600)
    wall = time.perf_counter() - t0
    res = json.loads(out_json.read_text()) if out_json.is_file() else {"results": []}
    cells = res["results"]
    return {"wall_s": wall, "rc": p.returncode, "cells": len(cells), "ok": sum(c["status"] == "ok" for c in cells),
            "cached": sum(c["cached"] for c in cells), "error": "" if p.returncode in (0, 4) else p.stderr.strip().splitlines()[-1:]}


def dispatch_overhead(cluster_address: str | None, env: dict, n: int = 200) -> dict:
    """ms per no-op task: concurrent.futures spawn pool (the local executor) vs Ray tasks, both warm, submitted in
    bulk and one at a time."""
    code = r'''
import concurrent.futures as cf, multiprocessing as mp, sys, time, json
def noop(x): return x
def main():
  n = int(sys.argv[2]); out = {}
  with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
      list(pool.map(noop, range(20)))
      t = time.perf_counter(); list(pool.map(noop, range(n))); out["pool_bulk_ms"] = (time.perf_counter() - t) / n * 1e3
      t = time.perf_counter()
      for i in range(n): pool.submit(noop, i).result()
      out["pool_one_ms"] = (time.perf_counter() - t) / n * 1e3
  if sys.argv[1] != "-":
      import ray
      ray.init(address=sys.argv[1], log_to_driver=False)
      f = ray.remote(num_cpus=0)(noop)
      ray.get([f.remote(i) for i in range(20)])
      t = time.perf_counter(); ray.get([f.remote(i) for i in range(n)]); out["ray_bulk_ms"] = (time.perf_counter() - t) / n * 1e3
      t = time.perf_counter()
      for i in range(n): ray.get(f.remote(i))
      out["ray_one_ms"] = (time.perf_counter() - t) / n * 1e3
  print(json.dumps(out))
if __name__ == "__main__":
    main()
'''
    with tempfile.TemporaryDirectory() as tmp:  # a file, not -c: spawned pool workers re-import the script's functions
        script = Path(tmp) / "dispatch.py"
        script.write_text(code)
        p = subprocess.run([sys.executable, str(script), cluster_address or "-", str(n)], capture_output=True, text=True, env=env, timeout=600)
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr.strip().splitlines()[-1:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--keep", help="keep the sweep folders here")
    a = ap.parse_args()
    configs = [c for c in a.configs.split(",") if c]
    work = Path(a.keep or tempfile.mkdtemp(prefix="edgekit-sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    rows: dict[str, dict] = {}
    first_lab = None

    def lab_for(name: str) -> Path:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        lab = folder / "lab.toml"
        lab.write_text(LAB.format(out=folder / "out", root=ROOT))
        return lab

    for c in configs:
        if c.startswith("local"):
            lab = lab_for(c)
            first_lab = first_lab or lab
            rows[c] = run_sweep(lab, ["--workers", c[-1]], env)
        elif c == "cached":
            if first_lab is None:
                first_lab = lab_for("cached-base")
                run_sweep(first_lab, [], env)
            rows[c] = run_sweep(first_lab, [], env)
        if c.startswith("local") or c == "cached":
            print(f"{c:8s} {rows[c]}", file=sys.stderr, flush=True)
    ray_configs = [c for c in configs if c.startswith("ray")]
    overhead = {}
    if ray_configs:
        from doubles.ray_cluster import RayCluster

        for c in ray_configs:
            with RayCluster(work / f"{c}-cluster") as cluster:
                t0 = time.perf_counter()
                cluster.start_head(num_cpus=0)
                for _ in range(int(c[-1])):
                    cluster.add_node({"edgekit-device:local": 1}, num_cpus=1)
                cluster.wait_for_resources(["edgekit-device:local"])
                start_s = time.perf_counter() - t0
                denv = {**cluster.driver_env(), "PYTHONPATH": env["PYTHONPATH"]}
                lab = lab_for(c)
                first_lab = first_lab or lab
                rows[c] = {**run_sweep(lab, ["--ray", cluster.address], denv), "cluster_start_s": start_s}
                print(f"{c:8s} {rows[c]}", file=sys.stderr, flush=True)
                if not overhead:
                    overhead = dispatch_overhead(cluster.address, denv)
    else:
        overhead = dispatch_overhead(None, env)

    import platform

    print(f"# edgekit sweep, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; plan: 3 models x 4 targets, "
          "convert + bench on the local CPU")
    print("| executor | cells (ok / cached) | wall s | per cell s | exit |")
    print("|---|---|---|---|---|")
    names = {"local1": "local pool, 1 worker", "local2": "local pool, 2 workers", "ray1": "Ray, 1 worker node",
             "ray2": "Ray, 2 worker nodes", "cached": "re-run, everything in the store"}
    for c, r in rows.items():
        extra = f" (+{r['cluster_start_s']:.1f} s cluster start)" if "cluster_start_s" in r else ""
        per = r["wall_s"] / r["cells"] if r["cells"] else float("nan")
        print(f"| {names[c]} | {r['cells']} ({r['ok']} / {r['cached']}) | {r['wall_s']:.1f}{extra} | {per:.2f} | {r['rc']} |")
    if overhead and "error" not in overhead:
        print("\n| dispatch of a no-op task | bulk ms | one at a time ms |\n|---|---|---|")
        print(f"| local spawn pool (2) | {overhead['pool_bulk_ms']:.2f} | {overhead['pool_one_ms']:.2f} |")
        if "ray_bulk_ms" in overhead:
            print(f"| Ray | {overhead['ray_bulk_ms']:.2f} | {overhead['ray_one_ms']:.2f} |")
    if a.json_path:
        Path(a.json_path).write_text(json.dumps({"rows": rows, "dispatch": overhead}, indent=2))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
