"""A lab of device hosts: a REAL local Ray cluster (Ray 2.60), one `ray start --block` process per node.

What is real: Ray itself. A head (GCS, raylet, autoscaler monitor, log monitor, agents) and extra
nodes, each a `ray start --block` subprocess in its own session, with token authentication on, custom
resources such as `{"edgekit-device:pixel": 1}` (Ray's resource accounting is the per-device mutex) and
per-node environment variables (e.g. `EDGEKIT_DEVICES=<folder>` so only that "host" sees its device
profiles). Drivers connect exactly as `edgekit sweep --ray ADDRESS` will.

What is simulated: the hosts. Every node runs on this machine. A lost host is `Node.kill()` (SIGKILL of
every process of that node), a host that leaves cleanly is `Node.stop()`.

Measured on this machine (2 shared cores, Ray 2.60.0; docs/research/ray-sweeps.md has the background):
* the head is up in ~9-11 s, an extra node in ~5-7 s, a driver connects in 1.5-3 s: start it once per
  session or module;
* `--node-ip-address 127.0.0.1` is ignored on Linux: Ray binds the GCS and the raylets on all interfaces
  and advertises the machine's outward IP. A driver given `127.0.0.1:PORT` also works (Ray rewrites it to
  the outward IP), but `start_head()` returns the address Ray itself advertises (`Local node IP` line of
  the head's log), which is what a second host would have to use;
* SIGTERM to a `--block` node exits in 1-4 s and takes all of that node's processes with it, but only
  because this double sets `RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`: by default a node drains for up to
  30 s while tasks run;
* Ray's worker processes (`ray::IDLE`, `ray::bench`, ...) put themselves in their own process group but
  stay in the node's session, and their command line no longer names the temp dir. So `kill()` and
  `close()` find a node's processes by session id (== the `ray start` pid, thanks to
  `start_new_session=True`), and `close()` also by the temp dir in the command line (a killed raylet's
  `log_monitor.py` is reparented to PID 1 and would otherwise stay);
* a driver without the token is refused: `ConnectionError` after ~21 s by default, ~3 s with
  `RAY_gcs_server_port_wait_time_s=2` in its environment;
* a driver pointed at a dead address can hang for more than 10 minutes: `run_driver()` first checks that
  the GCS port accepts TCP connections, and every subprocess here runs under a timeout.

Never `ray stop` (it kills every Ray process on the machine, other people's clusters too) and never
`address="auto"` (it picks any cluster on this host). The environment (`env`) gives token auth, a private
HOME (so nobody's `~/.ray/auth_token` is read or written) and no usage stats. Typical use:

    with RayCluster(tmp_path) as cluster:
        address = cluster.start_head({"edgekit-device:host": 1})
        cluster.add_node({"edgekit-device:pixel": 1}, env={"EDGEKIT_DEVICES": str(devices)})
        cluster.wait_for_resources(["edgekit-device:pixel"])
        subprocess.run([sys.executable, "-m", "edgekit.cli", "sweep", "--ray", address, ...],
                       env={**os.environ, **cluster.env}, timeout=...)

Nodes get the repository root on PYTHONPATH (as if edgekit were installed on every host): Ray workers
only add the driver's current directory to sys.path, so a driver running in a tmp dir would otherwise
leave `import edgekit` failing inside tasks.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = Path(sys.executable).with_name("ray")  # the CLI of the interpreter running the tests, not PATH's
OBJECT_STORE_BYTES = 100_000_000  # the default is 30 % of RAM per node (15 GB here), in /dev/shm
EMULATOR_PORTS = range(5555, 5586)  # the adb server probes these as emulators: never listen there
_PR_SET_PDEATHSIG = 1
_STARTED = "Ray runtime started"


class RayClusterError(RuntimeError):
    """A node did not start, or a driver failed; the message carries the end of the relevant log."""


class Node:
    """One `ray start --block` process (its own session) and everything Ray started under it."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path, resources: dict[str, float]):
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.resources = dict(resources)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """What `ray start` printed (stdout and stderr); the Ray logs proper are in the session dir."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL every process of this node at once: a host that vanishes (power cut, cable pulled).

        The whole session is frozen first (SIGSTOP, re-scanning until nothing new appears) so no process
        can fork or restart a sibling meanwhile; the workers, which sit in process groups of their own,
        are included. The cluster notices within a few seconds (tasks there fail with NodeDiedError when
        submitted with max_retries=0).
        """
        for pid in _freeze(lambda: _session(self.proc.pid)):
            _signal(pid, signal.SIGKILL)
        _wait_proc(self.proc, 10)
        _wait_gone(lambda: _session(self.proc.pid), 10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (`ray start --block` then stops the raylet, workers and agents of this node), wait, and
        SIGKILL what is left of the session after `timeout`. Idempotent."""
        if self.proc.poll() is None:
            _signal(self.proc.pid, signal.SIGTERM)
            _wait_proc(self.proc, timeout)
        if self.proc.poll() is None or _session(self.proc.pid):
            self.kill()

    def __repr__(self) -> str:
        return f"Node({self.name!r}, pid={self.proc.pid}, resources={self.resources}, alive={self.alive})"


class RayCluster:
    """A head plus any number of nodes, all sharing one short Ray temp dir, one token and one private HOME.

    base_dir: where HOME and the `ray start` logs go (a pytest tmp path is fine); a temporary folder,
        removed by `close()`, when None. The Ray temp dir itself is always `/tmp/rkXXXXXXXX`: Ray puts
        unix sockets under `<temp>/session_<date>_<pid>/sockets/`, and socket paths are limited to 107
        bytes, which pytest's tmp paths would break. It is removed by `close()` (session dirs are
        0.2-0.7 MB of logs and Ray never deletes them).
    start_timeout: seconds for one node to come up (measured 5-11 s).
    """

    def __init__(self, base_dir: Path | str | None = None, start_timeout: float = 60.0):
        self._own_base = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="ray-cluster-")) if base_dir is None else Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.home = self.base_dir / "home"
        self.home.mkdir(exist_ok=True)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
        self.start_timeout = start_timeout
        self.token = secrets.token_hex(32)
        self.address: str | None = None
        self.head: Node | None = None
        self.nodes: list[Node] = []  # the head first, then added nodes, in start order
        self._env = {
            "RAY_AUTH_MODE": "token",  # set explicitly: with a token but no mode, drivers fail after 20 s
            "RAY_AUTH_TOKEN": self.token,  # read before RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token
            "HOME": str(self.home),  # `ray.init()` would write ~/.ray/auth_token, `ray start --head` reads it
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    # -- what drivers need ------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The variables a driver needs on top of os.environ (token auth, private HOME, no usage stats)."""
        return dict(self._env)

    def driver_env(self, extra: dict[str, str | None] | None = None) -> dict[str, str]:
        """A complete environment for a driver subprocess: os.environ, minus Ray variables that would
        point it elsewhere, plus `env`, plus `extra` (a None value removes the variable)."""
        e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        e.update(self._env)
        for key, value in (extra or {}).items():
            if value is None:
                e.pop(key, None)
            else:
                e[key] = value
        return e

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_head(self, resources: dict[str, float] | None = None, num_cpus: int = 1) -> str:
        """Start the head node and return the address drivers and nodes must use ("IP:PORT")."""
        if self.head is not None:
            raise RayClusterError("the head is already started")
        _check_ray()
        port = _free_port()
        args = ["--head", "--port", str(port), "--temp-dir", str(self.temp_dir), "--include-dashboard=false"]
        self.head = self._start("head", args, resources or {}, num_cpus, None)
        ip = re.search(r"Local node IP: (\S+)", self.head.log())
        self.address = f"{ip.group(1) if ip else '127.0.0.1'}:{port}"
        return self.address

    def add_node(self, resources: dict[str, float], num_cpus: int = 1, env: dict[str, str] | None = None) -> Node:
        """Start another node that joins the head, with its own custom resources and extra environment
        variables (seen by its raylet and by every task that runs there). Returns once the node is up;
        the head may need a moment more to list its resources (`wait_for_resources`)."""
        if self.address is None:
            raise RayClusterError("start_head() first")
        # No --temp-dir: a joining node puts its sockets under the head's session dir by itself.
        return self._start(f"node-{len(self.nodes)}", ["--address", self.address], resources, num_cpus, env)

    def wait_for_resources(self, keys, timeout: float = 30.0) -> dict[str, float]:
        """Block until the cluster's total resources list every key of `keys`; return the totals.

        Runs in a short-lived driver subprocess, not in the test process: an in-process `ray.init`
        would stay connected (and keep its threads and env changes) until someone calls
        `ray.shutdown()`, and a second `ray.init` to another cluster in the same process fails.
        """
        keys = list(keys)
        code = textwrap.dedent("""
            import json, sys, time, ray
            keys, deadline = json.loads(sys.argv[2]), time.monotonic() + float(sys.argv[3])
            ray.init(address=sys.argv[1], log_to_driver=False)
            while True:
                total = ray.cluster_resources()
                if all(k in total for k in keys) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            print(json.dumps(total))
        """)
        started = time.monotonic()
        result = self.run_driver(code, json.dumps(keys), str(timeout), timeout=timeout + 30)
        if result.returncode != 0:
            raise RayClusterError(f"resource query failed ({result.returncode}):\n{_tail(result.stderr)}")
        total = json.loads(result.stdout.strip().splitlines()[-1])
        missing = [k for k in keys if k not in total]
        if missing:
            raise RayClusterError(f"after {time.monotonic() - started:.0f} s the cluster still lacks {missing}; "
                                  f"it has {sorted(total)}")
        return total

    def run_driver(self, code: str, *args: str, timeout: float = 60.0,
                   env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
        """Run `python -c code ADDRESS *args` with `driver_env(env)`: the code finds the cluster address in
        sys.argv[1]. The GCS port is probed first (a driver aimed at a dead port can hang for minutes)."""
        if self.address is None:
            raise RayClusterError("start_head() first")
        host, port = self.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except OSError as e:
            raise RayClusterError(f"nothing accepts connections at {self.address}: {e}") from e
        return subprocess.run([sys.executable, "-c", code, self.address, *args], env=self.driver_env(env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              cwd=self.base_dir)

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process of this cluster: in the session of a node this
        double started, or naming the Ray temp dir on its command line."""
        return _ours(self.temp_dir, {n.proc.pid for n in self.nodes})

    def close(self) -> None:
        """Stop every node (added nodes and the head together, SIGTERM first), kill what is left of ours,
        remove the temp dirs. Idempotent. Never `ray stop`: it would kill everybody's Ray processes."""
        sessions = {n.proc.pid for n in self.nodes}
        for node in self.nodes:
            if node.proc.poll() is None:
                _signal(node.proc.pid, signal.SIGTERM)
        for node in reversed(self.nodes):
            node.stop(timeout=15)  # already signalled: this waits, then kills what lingers
        leftovers = _freeze(lambda: _ours(self.temp_dir, sessions))
        for pid in leftovers:
            _signal(pid, signal.SIGKILL)
        _wait_gone(lambda: _ours(self.temp_dir, sessions), 10)
        self.nodes.clear()
        self.head = None
        self.address = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- internals --------------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], resources: dict[str, float], num_cpus: int,
               env: dict[str, str] | None) -> Node:
        argv = [str(RAY_CLI), "start", "--block", *args,
                "--node-ip-address", "127.0.0.1",  # ignored on Linux (see the module docstring), harmless
                "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
                "--disable-usage-stats", "--object-store-memory", str(OBJECT_STORE_BYTES)]
        node_env = self.driver_env({
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops at once instead of draining 30 s
        })
        node_env.update({k: v for k, v in (env or {}).items() if v is not None})
        log_path = self.base_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=node_env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_term_with_parent, cwd=self.base_dir)
        node = Node(name, proc, log_path, resources)
        self.nodes.append(node)
        deadline = time.monotonic() + self.start_timeout
        while _STARTED not in node.log():
            if proc.poll() is not None:
                raise RayClusterError(f"`ray start` ({name}) exited with {proc.returncode}:\n{_tail(node.log())}")
            if time.monotonic() > deadline:
                node.kill()
                raise RayClusterError(f"{name} did not start within {self.start_timeout:.0f} s:\n{_tail(node.log())}")
            time.sleep(0.1)
        return node


def ray_available() -> bool:
    """Ray importable by this interpreter, and its `ray` CLI installed next to it."""
    return importlib.util.find_spec("ray") is not None and os.access(RAY_CLI, os.X_OK)


def _check_ray() -> None:
    if not ray_available():
        raise RayClusterError(f"Ray is not installed for {sys.executable} (no {RAY_CLI}): pip install 'ray==2.60.*'")


def _free_port() -> int:
    """A free TCP port on all interfaces (the GCS binds *:PORT whatever --node-ip-address says)."""
    while True:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in EMULATOR_PORTS:
            return port


def _term_with_parent() -> None:
    """In the child before exec: if the test process dies, the kernel SIGTERMs `ray start --block`, which
    then stops its node (SIGKILL would orphan the raylet and its helpers)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stat(pid: str) -> list[str] | None:
    """Fields of /proc/PID/stat after "(comm)": state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _live_processes():
    """(pid, stat fields) of every process that is not a zombie, except this one."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            fields = _stat(entry)
            if fields and fields[0] != "Z":
                yield int(entry), fields


def _session(sid: int) -> list[int]:
    """Live pids whose session id is `sid`."""
    return [pid for pid, fields in _live_processes() if int(fields[3]) == sid]


def _ours(temp_dir: Path, sessions: set[int]) -> dict[int, str]:
    found = {}
    needle = re.compile(re.escape(str(temp_dir)) + r"(/|\s|$)")  # not /tmp/rkAB matching /tmp/rkABC
    for pid, fields in _live_processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) in sessions or needle.search(cmdline):
            found[pid] = cmdline.strip()
    return found


def _freeze(scan) -> list[int]:
    """SIGSTOP every pid `scan()` returns, re-scanning until no new one appears; return them all."""
    frozen: list[int] = []
    for _round in range(20):
        todo = [pid for pid in scan() if pid not in frozen]
        if not todo:
            break
        for pid in todo:
            _signal(pid, signal.SIGSTOP)
        frozen += todo
    return frozen


def _wait_proc(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def _wait_gone(scan, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while scan() and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])
