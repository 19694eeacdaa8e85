"""Small shared helpers: silencing the converters' own chatter, stage timing, tool versions."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Iterator

TOOLS = ("edgekit", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxsim",
         "litert-torch", "ai-edge-quantizer", "ai-edge-litert")


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message, at most `limit` characters ("" for an empty message): what a
    one-line error quotes of a library's multi-line failure."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]


def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def captured_output(log: io.StringIO) -> Iterator[None]:
    """Send everything the libraries print (Python and C++ alike, fd 1 and 2) to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no real fds (embedded interpreters): leave output alone
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            yield
            return
        old_level = logging.root.level
        logging.disable(logging.WARNING)
        try:
            text = io.TextIOWrapper(os.fdopen(os.dup(tmp.fileno()), "wb"), write_through=True)
            with warnings.catch_warnings(), contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                warnings.simplefilter("ignore")
                try:
                    yield
                finally:
                    text.close()
        finally:
            logging.disable(logging.NOTSET)
            logging.root.setLevel(old_level)
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            log.write(tmp.read().decode("utf-8", "replace"))


ProgressFn = Callable[[str, str, float], None]  # (stage, "start" | "done" | "skip", seconds)


@dataclass
class Stages:
    """Times each stage, reports it to the progress callback, keeps the tools' output."""

    progress: ProgressFn | None = None
    timings: list[dict] = field(default_factory=list)
    log: io.StringIO = field(default_factory=io.StringIO)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        check_terminated()
        if self.progress:
            self.progress(name, "start", 0.0)
        t0 = time.perf_counter()
        self.log.write(f"==== {name}\n")
        with captured_output(self.log):
            yield
        check_terminated()
        seconds = time.perf_counter() - t0
        self.timings.append({"stage": name, "seconds": round(seconds, 3)})
        if self.progress:
            self.progress(name, "done", seconds)


# ---------------------------------------------------------------------------- temporary work folders

_WORK_MARK = ".edgekit-work"
# This host, reduced to letters and digits: part of every staging and work folder's name, so that a sweep
# only ever judges folders of processes it can see (a pid is meaningless on another host).
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def pid_alive(pid: int) -> bool:
    """Whether a process of this host runs with that pid (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_work_dirs(root: str | None = None) -> int:
    """Remove temporary work folders that dead edgekit processes of this host left (SIGKILL, power
    loss): only folders named by `work_dir` that hold its marker and whose pid is gone."""
    import shutil

    root = root or tempfile.gettempdir()
    pat = re.compile(r"^edgekit-[a-z0-9]+-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
    n = 0
    try:
        entries = os.scandir(root)
    except OSError:
        return 0
    with entries:
        for e in entries:
            m = pat.match(e.name)
            if not m or m["host"] != HOST or not e.is_dir(follow_symlinks=False) or pid_alive(int(m["pid"])):
                continue
            if os.path.isfile(os.path.join(e.path, _WORK_MARK)):
                shutil.rmtree(e.path, ignore_errors=True)
                n += 1
    return n


def work_dir(tag: str = "work") -> str:
    """A fresh temporary folder named with this host and pid (and marked), so that what a killed run
    leaves is recognised and swept by the next one. The caller removes it when done."""
    sweep_work_dirs()
    path = tempfile.mkdtemp(prefix=f"edgekit-{tag}-{HOST}-{os.getpid()}-")
    try:  # interrupted before the mark is written, the folder would be nobody's to sweep
        with open(os.path.join(path, _WORK_MARK), "w") as f:
            f.write(f"{os.getpid()}\n")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


# ---------------------------------------------------------------------------- signals

class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds exactly like Ctrl-C (it is a KeyboardInterrupt), so staging and
    work folders are removed and a device's runner is stopped before its lock is released."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")


_PENDING: list[int] = []  # signals received; kept so that one swallowed by a library is raised again


def check_terminated() -> None:
    """Raise Terminated if SIGTERM/SIGHUP arrived. Called at every stage boundary and before a commit:
    a library that catches broad exceptions (the exporters trace Python through C++, which turns the
    handler's exception into an ordinary error they may retry past) cannot make edgekit finish the run."""
    if _PENDING:
        raise Terminated(_PENDING[0])


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise Terminated (a KeyboardInterrupt) in the main thread and are
    remembered, so that one a library swallows is raised again at the next stage boundary."""
    import signal

    def handler(signum, _frame):
        _PENDING.append(signum)
        raise Terminated(signum)

    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_DFL)):
        try:
            if signal.getsignal(sig) is not default:
                continue  # ignored on purpose (nohup, a background job) or handled by an embedding application
            signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread, or no such signal here
            pass
