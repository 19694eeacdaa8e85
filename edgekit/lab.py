"""Sweeps: models x targets x devices from one lab file, as cells on a local process pool or a Ray cluster, with a
content-keyed results store so a re-run does only what changed.

A plan is data (Plan: models with their ConvertOptions, targets, devices, BenchOptions, what to measure); each
convert cell (model x target) and each measure cell (artifact x device, a bench or an eval) is one task. The
driver (`sweep(plan)`) keeps the store, orders the work (a measure cell waits for its artifact), allows one measure
cell per device at a time, retries infrastructure failures a bounded number of times and records everything else
as the cell's result. Executors only run functions: LocalExecutor (concurrent.futures, spawned processes) and
RayExecutor (conversions anywhere; benches pinned by the custom resource `edgekit-device:<name>` that the lab host
with that device declares).

The store (`<out>/results/<key>.json`) is keyed by content: a convert cell by the model's bytes (the source file,
or the module a `pkg.mod:fn` names, and the weights), the target's recipe, the calibration / validation data's
bytes, the options and the tool versions; a measure cell by the artifact's sha256, the device profile and the
bench or eval options. Bench records are written as `edgekit bench --json` results and artifacts land in
`<out>/artifacts/`, so `edgekit report <out>` reads a sweep directly.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import fnmatch
import functools
import hashlib
import io
import json
import os
import socket
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit._util import first_line
from edgekit.errors import ArtifactError, DeviceError, EdgekitError, UsageError
from edgekit.options import ConvertOptions, EvalOptions

MEASURES = ("convert", "bench", "eval")
DEVICE_RESOURCE = "edgekit-device:"  # + device name: the Ray custom resource a lab host declares per device
RETRIES = 2


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str | None  # what `edgekit convert` takes; None: the bundled digits CNN
    options: ConvertOptions = ConvertOptions()
    eval: EvalOptions | None = None
    targets: tuple[str, ...] = ()  # () : the plan's
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    models: tuple[ModelEntry, ...]
    targets: tuple[str, ...]
    devices: tuple[str, ...] = ("local",)
    measure: tuple[str, ...] = ("convert", "bench")
    bench: dict = field(default_factory=dict)  # BenchOptions fields
    out: str = "sweep"
    retries: int = RETRIES

    def convert_cells(self) -> list["Cell"]:
        return [Cell("convert", m.name, t) for m in self.models for t in (m.targets or self.targets)]

    def measure_cells(self, model: str, target: str) -> list["Cell"]:
        m = self.model(model)
        kinds = [k for k in ("bench", "eval") if k in self.measure and (k != "eval" or m.eval is not None)]
        return [Cell(k, model, target, d) for d in (m.devices or self.devices) for k in kinds]

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)

    def cells(self) -> list["Cell"]:
        return [c for cc in self.convert_cells() for c in [cc, *self.measure_cells(cc.model, cc.target)]]


@dataclass(frozen=True)
class Cell:
    kind: str  # convert | bench | eval
    model: str
    target: str
    device: str = ""

    @property
    def id(self) -> str:
        base = f"{self.model}/{self.target}"
        return base if self.kind == "convert" else f"{base}@{self.device}" + ("" if self.kind == "bench" else ":eval")


_LAB_KEYS = {"out", "targets", "devices", "measure", "bench", "models", "retries"}
_MODEL_KEYS = {"name", "source", "targets", "devices", "eval_data", "eval_labels_key", "eval_data_spec", "eval_samples"}
_LIST_OPTIONS = {f.name for f in dataclasses.fields(ConvertOptions) if f.type.startswith("tuple")}
_PATH_OPTIONS = {"calib", "val_data", "weights", "data", "labels", "preprocess"}


def _unknown(keys, known, where: str) -> None:
    import difflib

    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6)
            raise UsageError(f"{where}: unknown key {k!r}", f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}")


def _path(value: str, base: Path) -> str:
    """A lab file's path, relative to the lab file's folder; a named dataset (digits, random, ...) stays as it is."""
    p = Path(value).expanduser()
    cand = p if p.is_absolute() else base / p
    return str(cand) if cand.exists() or "/" in value or value.endswith((".npz", ".npy", ".pt", ".pt2", ".onnx", ".py")) else value


def _source(value: str | None, base: Path) -> str | None:
    if not value:
        return None
    head, _, attr = value.rpartition(":") if value.count(":") == 1 and not value.startswith(("ssh:", "adb:")) else ("", "", "")
    if head and (head.endswith(".py") or "/" in head):
        return f"{_path(head, base)}:{attr}"
    return _path(value, base) if (base / value).exists() or Path(value).exists() else value


def read_lab(path: str | Path) -> Plan:
    """A lab file (TOML) as a Plan; every problem is one UsageError line naming the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"lab file not found: {path}", "give the path of a lab .toml (see the README's Sweeps section)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read lab file {path}: {getattr(exc, 'strerror', None) or exc}", "check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})", "fix the file") from None
    base = path.resolve().parent
    _unknown(data, _LAB_KEYS, str(path))
    strings = lambda v, key, where: tuple(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else _bad(where, key, "a list of strings")  # noqa: E731
    targets = tuple(_path(t, base) if t.endswith(".toml") else t for t in strings(data.get("targets", []), "targets", str(path)))
    devices = strings(data.get("devices", ["local"]), "devices", str(path))
    measure = strings(data.get("measure", ["convert", "bench"]), "measure", str(path))
    for m in measure:
        if m not in MEASURES:
            _bad(str(path), "measure", f"some of {', '.join(MEASURES)}")
    from edgekit.measure import BenchOptions

    bench = data.get("bench", {})
    if not isinstance(bench, dict):
        _bad(str(path), "bench", "a table ([bench])")
    _unknown(bench, {f.name for f in dataclasses.fields(BenchOptions)} - {"input_shapes", "input_ranges"}, f"{path} [bench]")
    models = []
    opt_keys = {f.name for f in dataclasses.fields(ConvertOptions)}
    raw = data.get("models", [])
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{path}: no models", "add at least one [[models]] table with a name (and a source; none: the bundled digits CNN)")
    for i, m in enumerate(raw):
        where = f"{path} [[models]] #{i + 1}"
        if not isinstance(m, dict):
            _bad(where, "models", "tables ([[models]])")
        _unknown(m, _MODEL_KEYS | opt_keys, where)
        name = m.get("name")
        if not isinstance(name, str) or not name or any(c in name for c in "/@:*?[] "):
            _bad(where, "name", "a plain name (no / @ : * ? [ ] or spaces)")
        opts = {}
        for k in opt_keys & set(m):
            v = m[k]
            if k in _LIST_OPTIONS:
                v = strings(v if isinstance(v, list) else [v], k, where)
            elif k in _PATH_OPTIONS and isinstance(v, str):
                v = _path(v, base)
            opts[k] = v
        try:
            options = ConvertOptions(**opts)
        except TypeError as exc:
            raise UsageError(f"{where}: {exc}", "check the model's keys") from None
        ev = None
        if "eval_data" in m:
            ev = EvalOptions(_path(m["eval_data"], base), m.get("eval_labels_key"), m.get("eval_data_spec"), m.get("eval_samples"))
        models.append(ModelEntry(name, _source(m.get("source"), base), options, ev,
                                 strings(m.get("targets", []), "targets", where), strings(m.get("devices", []), "devices", where)))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: two models are named {next(n for n in names if names.count(n) > 1)!r}", "give every model its own name")
    if not targets and not all(m.targets for m in models):
        raise UsageError(f"{path}: no targets", 'add targets = ["tflite-int8", ...] (see `edgekit targets`)')
    retries = data.get("retries", RETRIES)
    if not isinstance(retries, int) or retries < 0:
        _bad(str(path), "retries", "a whole number >= 0")
    out = data.get("out", "sweep")
    out = str(base / out) if not Path(out).is_absolute() else out
    return Plan(tuple(models), targets, devices, measure, dict(bench), out, retries)


def _bad(where: str, key: str, want: str):
    raise UsageError(f"{where}: {key} must be {want}", "fix the lab file")


# ------------------------------------------------------------------ content keys


def _hash_path(p: Path, h) -> None:
    if p.is_dir():
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for f in sorted(files):
                fp = Path(root) / f
                h.update(str(fp.relative_to(p)).encode() + b"\0")
                _hash_path(fp, h)
    elif p.is_file():
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)


def content_digest(value: str | None) -> str:
    """sha256 of a data / weights / model source: a file's or folder's bytes; a `file.py:fn` or `pkg.mod:fn` source
    hashes the file that defines it (the module is found, not imported); anything else (digits, random) is its name."""
    h = hashlib.sha256((value or "<bundled>").encode() + b"\0")
    if value is None:
        from edgekit.examples import digits

        _hash_path(Path(digits.__file__).parent, h)
        return h.hexdigest()
    p = Path(value)
    if p.exists():
        _hash_path(p, h)
        return h.hexdigest()
    head, _, _ = value.rpartition(":")
    if head and Path(head).is_file():
        _hash_path(Path(head), h)
    elif head:
        import importlib.util

        try:
            spec = importlib.util.find_spec(head)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            _hash_path(Path(spec.origin), h)
    return h.hexdigest()


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def convert_key(m: ModelEntry, target, versions: dict, digest: Callable[[str | None], str] = content_digest) -> str:
    """`target`: a name, a .toml path or a loaded Target. `digest`: content_digest, or a memo of it (a sweep hashes
    each data folder once, not once per target)."""
    from edgekit.targets import load_target

    recipe = load_target(target).to_dict()
    recipe.pop("source", None)
    data = {k: digest(v) for k, v in m.options.data_sources().items()}
    return _key({"cell": "convert", "model": digest(m.source), "target": recipe, "options": m.options.to_dict(),
                 "data": data, "tools": versions})


def measure_key(cell: Cell, artifact_sha: str, plan: Plan, profile: dict,
                digest: Callable[[str | None], str] = content_digest) -> str:
    """`profile`: the device profile as the host that has the device resolves it (DeviceProfile.to_dict())."""
    profile = {k: v for k, v in profile.items() if k != "source"}
    ev = plan.model(cell.model).eval
    opts = plan.bench if cell.kind == "bench" else {**ev.to_dict(), "data_digest": digest(ev.data)}
    # the cell's name too: two models whose artifacts have the same bytes still get a record (and a report row) each
    return _key({"cell": cell.kind, "id": f"{cell.model}/{cell.target}", "artifact": artifact_sha, "device": profile, "options": opts})


# ------------------------------------------------------------------ the work (runs in a worker process or Ray task)


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                tar.add(f, arcname=f.name)
    return buf.getvalue()


def _unpack(blob: bytes, folder: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(folder, filter="data")


def run_convert(source: str | None, options: ConvertOptions, target, dest: str | None) -> dict:
    """One convert cell. dest: write the artifact there (same file system as the driver); None: into a temporary
    folder, returned as tar bytes under "packed" (a Ray node that shares no disk with the driver)."""
    from edgekit.pipeline import convert_many

    t0 = time.perf_counter()
    tmp = None if dest else tempfile.mkdtemp(prefix="edgekit-sweep-")
    try:
        out = Path(dest) if dest else Path(tmp) / "artifact"
        try:
            spec = options.load(source)
            (res,) = convert_many(spec, [target], out_dir=out, **options.convert_kwargs())
        except EdgekitError as exc:
            return {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - t0}
        if res.error is not None:
            return {"status": "failed", "error": str(res.error), "warnings": res.warnings, "seconds": time.perf_counter() - t0}
        art = res.artifact
        rec = {"status": "ok", "verdict": art.validation.get("status", ""), "sha256": art.manifest.sha256,
               "size_bytes": art.size_bytes, "validation": art.validation, "warnings": res.warnings,
               "seconds": time.perf_counter() - t0}
        if tmp:
            rec["packed"] = _pack(out)
        return rec
    finally:
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _model_sha(folder: Path) -> str | None:
    """sha256 of the model file of the artifact at `folder`, None when there is no readable artifact there."""
    from edgekit.artifact import sha256
    from edgekit.runtime.manifest import read_manifest

    try:
        return sha256(folder / read_manifest(folder).file)
    except (OSError, EdgekitError):
        return None


def _local_artifact(path: str, sha: str, packed, work: list) -> Path:
    """The artifact folder on this host: the driver's path when it holds the same model file (sha256), else the
    packed copy unpacked into a temporary folder (checked against the same sha256)."""
    p = Path(path)
    if _model_sha(p) == sha:
        return p
    if packed is None:
        raise ArtifactError(f"artifact {path} is not on this host", "share the sweep's out folder or let the executor ship it")
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-sweep-"))
    work.append(tmp)
    folder = tmp / p.name
    folder.mkdir()
    _unpack(packed, folder)
    got = _model_sha(folder) or "none"
    if got != sha:
        raise ArtifactError(f"artifact {p.name} arrived with sha256 {got[:12]}, expected {sha[:12]}", "re-run the sweep")
    return folder


def _ray_node() -> str:
    """The Ray node this runs on ("" outside a Ray task)."""
    import sys

    if "ray" not in sys.modules:
        return ""
    try:
        return sys.modules["ray"].get_runtime_context().get_node_id() or ""
    except Exception:
        return ""


def run_measure(kind: str, path: str, sha: str, device: str, bench: dict, ev: EvalOptions | None, packed=None) -> dict:
    """One bench or eval cell on `device` (resolved on the host that runs it). A DeviceError is raised (the
    driver retries it); any other EdgekitError is the cell's failed result."""
    import shutil

    work: list[Path] = []
    t0 = time.perf_counter()
    where = {"host": socket.gethostname(), "node": _ray_node(), "started": time.time()}
    try:
        folder = _local_artifact(path, sha, packed, work)
        if kind == "bench":
            from edgekit.measure import bench as bench_one

            share = os.sched_getaffinity(0) if _HOST_CORES else None
            try:
                if share is not None:
                    os.sched_setaffinity(0, _HOST_CORES)
                out = bench_one(folder, device, **{k: v for k, v in bench.items() if k != "cooldown_s"}).to_json()
            finally:
                if share is not None:
                    os.sched_setaffinity(0, share)
        else:
            from edgekit.evaluate import evaluate

            out = evaluate(folder, ev.data, labels_key=ev.labels_key, data_spec=ev.data_spec, device=device,
                           samples=ev.samples, threads=ev.threads).to_json()
        out["artifact"] = path  # the driver's folder, which `edgekit report` indexes
        return {"status": "ok", "result": out, "seconds": time.perf_counter() - t0, "ran": {**where, "ended": time.time()}}
    except DeviceError:
        raise
    except EdgekitError as exc:
        return {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - t0}
    finally:
        for w in work:
            shutil.rmtree(w, ignore_errors=True)


def run_profile(device: str) -> dict:
    """The device's profile as this host resolves it (a lab host's own ./devices or $EDGEKIT_DEVICES)."""
    from edgekit.devices.profiles import resolve

    return resolve(device).to_dict()


# ------------------------------------------------------------------ executors


class Infra(Exception):
    """The infrastructure failed under a cell (worker died, node lost, device unreachable): retried."""


def _share_cores(slot, workers: int) -> None:
    """Pool worker start-up: this worker gets its own share of the cores (CPU affinity, and torch / OpenMP threads to
    match), so N workers do not each start as many threads as the host has cores. Unpinned, 2 workers on 2 cores
    took 2.3x as long as 1 worker for the same 24 cells (benchmarks/sweep.py)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    with slot.get_lock():
        index = slot.value % workers
        slot.value += 1
    share = max(1, len(cores) // workers)
    mine = cores[index * share:(index + 1) * share] or cores[-share:]
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(len(mine))
    if workers > 1 and hasattr(os, "sched_setaffinity"):
        _HOST_CORES[:] = cores  # a bench of this host runs alone (the driver sees to it), on all of them
        os.sched_setaffinity(0, mine)


_HOST_CORES: list[int] = []


class _Executor:
    """What both executors share: their tasks come back as concurrent.futures Futures."""

    def wait(self, futs, timeout: float):
        return cf.wait(futs, timeout=timeout, return_when=cf.FIRST_COMPLETED)[0]

    def lost(self, device: str) -> bool:
        """Whether the host of `device` is gone (its pending tasks would never run)."""
        return False

    def cancel(self, fut) -> None:
        fut.cancel()


class LocalExecutor(_Executor):
    """A process pool on this host (spawned processes: torch and fork do not mix), each worker on its own share of
    the cores. A worker that dies breaks the pool; the cells it held fail with Infra and the pool is made anew."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        self.pool = None

    def _pool(self):
        if self.pool is None:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_share_cores,
                                               initargs=(ctx.Value("i", 0), self.workers))
        return self.pool

    def profiles(self, devices) -> dict[str, dict]:
        return {d: run_profile(d) for d in devices}

    def submit_convert(self, source, options, target, dest):
        return self._pool().submit(run_convert, source, options, target, dest)

    def submit_measure(self, kind, path, sha, device, bench, ev):
        return self._pool().submit(run_measure, kind, path, sha, device, bench, ev)

    def result(self, fut) -> dict:
        try:
            return fut.result()
        except cf.process.BrokenProcessPool as exc:
            self.pool = None
            raise Infra(f"worker process died ({exc})") from None
        except DeviceError as exc:
            raise Infra(str(exc)) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _probe(address: str, timeout: float = 3.0) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError):
        raise UsageError(f"no Ray cluster at {address}", "start one (`ray start --head`) or check --ray") from None


class RayExecutor(_Executor):
    """Tasks on a running Ray cluster: conversions anywhere (1 CPU each), benches and evals pinned to the node that
    declares `edgekit-device:<device>` (0 CPUs; the resource, 1 per device, lets one run per device at a time).
    Ray's own retries are off (a pinned task retried after its node died would pend forever); the driver retries."""

    name = "ray"

    def __init__(self, address: str):
        try:
            import ray
        except ImportError:
            raise UsageError("--ray needs Ray", 'pip install "edgekit[ray]"') from None
        if address != "auto" and not address.startswith("ray://"):
            _probe(address)  # Ray itself waits for minutes on an address nobody listens at
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
        except ConnectionError as exc:
            raise UsageError(f"cannot join the Ray cluster at {address}: {first_line(exc, 160)}",
                             "a cluster with token auth needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)") from None
        self.ray = ray
        self._convert = ray.remote(num_cpus=1, max_retries=0)(run_convert)
        self._measure = ray.remote(num_cpus=0, max_retries=0)(run_measure)
        self.packed: dict[str, object] = {}  # artifact sha256 -> object ref of its packed folder
        self.pins: dict[cf.Future, object] = {}  # future -> the ObjectRef of its pinned task (to cancel it)

    def profiles(self, devices) -> dict[str, dict]:
        """Each device's profile, resolved on the node that declares it (a pending task for a resource no node has
        would wait forever: the cluster's resources are checked first)."""
        have = self.ray.cluster_resources()
        missing = [d for d in devices if have.get(DEVICE_RESOURCE + d, 0) < 1]
        if missing:
            raise UsageError(f"no node of the Ray cluster declares device(s) {', '.join(missing)}",
                             "on the host they are attached to: ray start --address HEAD --resources "
                             f"'{{\"{DEVICE_RESOURCE}{missing[0]}\": 1}}'")
        from ray import exceptions as rx

        task = self.ray.remote(num_cpus=0, max_retries=0)(run_profile)
        refs = {d: task.options(resources={DEVICE_RESOURCE + d: 1}).remote(d) for d in devices}
        out = {}
        for d, ref in refs.items():
            try:
                out[d] = self.ray.get(ref, timeout=120)
            except rx.RayTaskError as exc:
                if isinstance(exc.cause, EdgekitError):
                    raise type(exc.cause)(exc.cause.message, exc.cause.hint) from None
                raise
            except rx.GetTimeoutError:
                raise UsageError(f"the host of device {d} did not answer within 120 s", "check `ray status`") from None
        return out

    def submit_convert(self, source, options, target, dest):
        return self._convert.remote(source, options, target, None).future()

    def submit_measure(self, kind, path, sha, device, bench, ev):
        if sha not in self.packed:
            self.packed[sha] = self.ray.put(_pack(Path(path)))
        ref = self._measure.options(resources={DEVICE_RESOURCE + device: 1}).remote(kind, path, sha, device, bench, ev, self.packed[sha])
        fut = ref.future()
        self.pins[fut] = ref
        return fut

    def result(self, fut) -> dict:
        from ray import exceptions as rx

        self.pins.pop(fut, None)
        try:
            return fut.result()
        except rx.RayTaskError as exc:  # the task raised: a device failure is retried, anything else is the cell's
            if isinstance(exc.cause, DeviceError):
                raise Infra(str(exc.cause)) from None
            raise exc.cause from None
        except (rx.RayError, cf.CancelledError) as exc:  # node died, worker crashed, object lost, cancelled: Ray's side
            raise Infra(f"{type(exc).__name__}: {first_line(exc, 160)}") from None

    def lost(self, device: str) -> bool:
        """The device's host left the cluster: its pinned tasks would pend forever."""
        return self.ray.cluster_resources().get(DEVICE_RESOURCE + device, 0) < 1

    def cancel(self, fut) -> None:
        ref = self.pins.pop(fut, None)
        if ref is not None:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        self.ray.shutdown()


# ------------------------------------------------------------------ the store


class Store:
    """Records under <out>/results/<key>.json, written atomically; a convert record's artifact in <out>/artifacts/."""

    def __init__(self, out: str | Path):
        self.root = Path(out)
        self.results = self.root / "results"

    def dest(self, cell: Cell) -> Path:
        target = Path(cell.target).stem if cell.target.endswith(".toml") else cell.target
        return self.root / "artifacts" / f"{cell.model}-{target}"

    def get(self, key: str) -> dict | None:
        try:
            rec = json.loads((self.results / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("sweep", {}).get("key") == key else None

    def put(self, key: str, rec: dict) -> None:
        from edgekit.artifact import write_json_atomic

        write_json_atomic(self.results / f"{key}.json", rec)


# ------------------------------------------------------------------ the driver


@dataclass
class CellResult:
    cell: Cell
    status: str  # ok | failed | error (infrastructure, retries spent) | skipped (its artifact failed)
    error: str = ""
    cached: bool = False
    attempts: int = 0
    seconds: float = 0.0
    verdict: str = ""
    size_bytes: int | None = None
    p50_ms: float | None = None
    metric: str = ""  # eval: top-1 (or agreement)
    artifact: str = ""

    def to_json(self) -> dict:
        return {"cell": self.cell.id, **dataclasses.asdict(self.cell), **{k: v for k, v in dataclasses.asdict(self).items() if k != "cell"}}

    @property
    def bad(self) -> bool:
        return self.status != "ok" or self.verdict == "fail"


ProgressFn = Callable[[str, CellResult | Cell, dict], None]  # (event "start" | "done", cell or result, counts)


def _from_record(cell: Cell, rec: dict, cached: bool) -> CellResult:
    r = CellResult(cell, rec["status"], rec.get("error", ""), cached, rec.get("attempts", 1), rec.get("seconds", 0.0))
    if cell.kind == "convert":
        r.verdict, r.size_bytes, r.artifact = rec.get("verdict", ""), rec.get("size_bytes"), rec.get("artifact", "")
    elif rec["status"] == "ok":
        res = rec["results"][0] if cell.kind == "bench" else rec
        if cell.kind == "bench":
            r.p50_ms = (res.get("stats") or {}).get("p50_ms")
        else:
            m = rec.get("metrics") or {}
            v = m.get("top1", m.get("top1_agreement", m.get("cosine")))
            r.metric = "-" if v is None else f"{v:.4g}"
    return r


def sweep(plan: Plan, executor=None, force: tuple[str, ...] = (), progress: ProgressFn | None = None) -> list[CellResult]:
    """Run every cell of `plan` not already in the store (or matching a --force pattern); returns every cell's
    result in plan order. Bad input (unknown targets or devices, a device no node declares) raises before any work."""
    from edgekit._util import tool_versions
    from edgekit.targets import load_target

    targets = {t: load_target(t) for m in plan.models for t in (m.targets or plan.targets)}  # sent as data: no file needed on a node
    devices = sorted({d for m in plan.models for d in (m.devices or plan.devices)} if {"bench", "eval"} & set(plan.measure) else set())
    from edgekit.measure import BenchOptions

    BenchOptions(**plan.bench)
    executor = executor or LocalExecutor(1)
    try:
        profiles = executor.profiles(devices)
    except BaseException:
        executor.close()
        raise
    store = Store(plan.out)
    versions = tool_versions()
    digest = functools.lru_cache(maxsize=None)(content_digest)  # this sweep's: each data folder hashed once
    forced = lambda c: any(fnmatch.fnmatchcase(c.id, p) for p in force)  # noqa: E731
    order = {c: i for i, c in enumerate(plan.cells())}
    done: dict[Cell, CellResult] = {}
    counts = {"done": 0, "cached": 0, "running": 0, "failed": 0, "total": len(order), "devices": {}}  # devices: what each measures now
    ready: list[tuple[Cell, str, dict, int]] = []  # (cell, key, payload, attempt)
    running: dict[object, tuple[Cell, str, dict, int, float]] = {}
    busy: set[str] = set()

    def finish(r: CellResult) -> None:
        done[r.cell] = r
        counts["done"] += 1
        counts["cached"] += r.cached
        counts["failed"] += r.bad
        if progress:
            progress("done", r, counts)

    def artifact_ready(cell: Cell, rec: dict, cached: bool = False) -> None:
        for mc in plan.measure_cells(cell.model, cell.target):
            if rec["status"] != "ok":  # (from the store when the failed conversion is)
                finish(CellResult(mc, "skipped", f"no artifact: {cell.id} {rec['status']}", cached=cached))
                continue
            key = measure_key(mc, rec["sha256"], plan, profiles[mc.device], digest)
            old = None if forced(mc) else store.get(key)
            if old is not None and old["status"] in ("ok", "failed"):
                finish(_from_record(mc, old, True))
            else:
                ready.append((mc, key, {"path": rec["artifact"], "sha": rec["sha256"]}, 1))

    for cc in plan.convert_cells():
        m = plan.model(cc.model)
        key = convert_key(m, targets[cc.target], versions, digest)
        old = None if forced(cc) else store.get(key)
        if old is not None and old["status"] in ("ok", "failed") and (old["status"] != "ok" or _intact(old)):
            finish(_from_record(cc, old, True))
            artifact_ready(cc, old, cached=True)
        else:
            ready.append((cc, key, {}, 1))

    def alone(cell: Cell) -> bool:
        """A bench of the CPU the local pool runs on: timed with nothing else running beside it."""
        return cell.kind == "bench" and executor.name == "local" and profiles[cell.device].get("transport") == "local"

    from edgekit.artifact import Staging

    try:  # every artifact folder the sweep will write, before any work (edgekit replaces only folders it wrote)
        for cell, *_ in ready:
            if cell.kind == "convert":
                Staging.check(store.dest(cell))
    except BaseException:
        executor.close()
        raise

    def submit(cell: Cell, key: str, payload: dict, attempt: int) -> None:
        if cell.kind == "convert":
            m = plan.model(cell.model)
            fut = executor.submit_convert(m.source, m.options, targets[cell.target], str(store.dest(cell)))
        else:
            busy.add(cell.device)
            counts["devices"][cell.device] = cell.id
            fut = executor.submit_measure(cell.kind, payload["path"], payload["sha"], cell.device, plan.bench, plan.model(cell.model).eval)
        running[fut] = (cell, key, payload, attempt, time.perf_counter())
        counts["running"] = len(running)
        if progress:
            progress("start", cell, counts)

    try:
        while ready or running:
            for item in [i for i in ready]:
                cell = item[0]
                if any(alone(c) for c, *_ in running.values()):
                    break
                if cell.kind != "convert" and cell.device in busy:
                    continue
                if alone(cell) and running:
                    continue  # a bench of this host's CPU waits until nothing else runs here
                ready.remove(item)
                submit(*item)
                if alone(cell):
                    break
            finished = executor.wait(list(running), timeout=2.0)
            if not finished:
                for fut, (cell, key, payload, attempt, t0) in list(running.items()):
                    if cell.kind != "convert" and executor.lost(cell.device):
                        executor.cancel(fut)
                        finished.add(fut)
            for fut in finished:
                cell, key, payload, attempt, t0 = running.pop(fut)
                counts["running"] = len(running)
                if cell.kind != "convert":
                    busy.discard(cell.device)
                    counts["devices"].pop(cell.device, None)
                try:
                    rec = executor.result(fut)
                except Infra as exc:
                    if attempt <= plan.retries:
                        ready.insert(0, (cell, key, payload, attempt + 1))
                        continue
                    finish(CellResult(cell, "error", f"{exc} (after {attempt} attempts)", attempts=attempt,
                                      seconds=time.perf_counter() - t0))
                    if cell.kind == "convert":
                        artifact_ready(cell, {"status": "error"})
                    continue
                except Exception as exc:  # a bug in a task: the cell's error, not the sweep's
                    rec = {"status": "failed", "error": f"internal error: {type(exc).__name__}: {first_line(exc, 160)}"}
                rec = _record(cell, key, rec, attempt, store)
                finish(_from_record(cell, rec, False))
                if cell.kind == "convert":
                    artifact_ready(cell, rec)
    finally:
        for fut in list(running):
            fut.cancel()
        executor.close()
    return sorted(done.values(), key=lambda r: order.get(r.cell, 0))


def _intact(rec: dict) -> bool:
    """The recorded artifact is still there, with the same model file."""
    return "artifact" in rec and "sha256" in rec and _model_sha(Path(rec["artifact"])) == rec["sha256"]


def _record(cell: Cell, key: str, rec: dict, attempt: int, store: Store) -> dict:
    packed = rec.pop("packed", None)
    if cell.kind == "convert" and rec["status"] == "ok":
        dest = store.dest(cell)
        if packed is not None:  # made on another host: staged and swapped in like any artifact
            from edgekit.artifact import Staging

            st = Staging(dest)
            try:
                _unpack(packed, st.path)
                st.commit()
            except BaseException:
                st.abort()
                raise
        rec["artifact"] = str(dest)
    meta = {"key": key, "cell": cell.id, "kind": cell.kind, "model": cell.model, "target": cell.target, "device": cell.device,
            "attempts": attempt}
    if cell.kind == "bench" and rec["status"] == "ok":
        out = {"command": "bench", "results": [rec["result"]], "status": "ok", "seconds": rec["seconds"], "ran": rec.get("ran", {})}
    elif cell.kind == "eval" and rec["status"] == "ok":
        out = {"command": "eval", **rec["result"], "status": "ok", "seconds": rec["seconds"], "ran": rec.get("ran", {})}
    else:
        out = dict(rec)
    out["sweep"] = meta
    out["attempts"] = attempt
    store.put(key, out)
    return out


__all__ = ["Plan", "ModelEntry", "Cell", "CellResult", "read_lab", "sweep", "LocalExecutor", "RayExecutor", "Store"]
