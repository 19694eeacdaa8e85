"""One device interface for every transport: run a command, push, pull, info, close.

Commands are argv lists; a transport that goes through a remote shell (SSH, adb) quotes them
with shlex, so user paths with spaces or quotes stay one argument. Every step has a timeout.
`session()` gives a fresh remote working folder that is removed afterwards, even on failure,
and holds the device's lock so two benches on one device are serialised, not interleaved.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from edgekit.errors import DeviceBusy, DeviceError


@dataclass
class CommandResult:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self, what: str) -> "CommandResult":
        if self.exit_code != 0:
            detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
            raise DeviceError(f"{what} failed (exit {self.exit_code}): {detail[-1][:200] if detail else 'no output'}")
        return self


@dataclass
class DeviceInfo:
    name: str
    transport: str
    arch: str = ""
    os: str = ""
    model: str = ""
    cpu_count: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "transport": self.transport, "arch": self.arch, "os": self.os,
                "model": self.model, "cpu_count": self.cpu_count, **self.extra}


# Lock tokens this process could not release because the device went away mid-run: when the
# device comes back, such a lock is known to be dead even though this process still lives.
_ABANDONED: set[str] = set()


def quote(argv: Sequence[str]) -> str:
    """A command line for a POSIX remote shell; every argument quoted."""
    return shlex.join(str(a) for a in argv)


class Device(ABC):
    """Transport-independent device. Subclasses implement run/push/pull and describe themselves."""

    transport = "abstract"
    lock_timeout_s = 600.0
    stale_lock_s = 3600.0

    def __init__(self, name: str, workdir: str, timeout_s: float = 120.0):
        self.name = name
        self.workdir = workdir
        self.timeout_s = timeout_s

    @abstractmethod
    def run(self, argv: Sequence[str], timeout_s: float | None = None, env: dict[str, str] | None = None) -> CommandResult:
        """Run argv on the device; raises DeviceTimeout past timeout_s, DeviceError if unreachable."""

    @abstractmethod
    def push(self, local: Path, remote: str, timeout_s: float | None = None) -> None: ...

    @abstractmethod
    def pull(self, remote: str, local: Path, timeout_s: float | None = None) -> None: ...

    def close(self) -> None:
        pass

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ shared, built on run()

    def sh(self, script: str, timeout_s: float | None = None) -> CommandResult:
        """A fixed script (never built from user values) through the device's sh."""
        return self.run(["sh", "-c", script], timeout_s)

    def info(self) -> DeviceInfo:
        r = self.sh("uname -m; uname -sr; (nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)", 30).check("uname")
        lines = (r.stdout.splitlines() + ["", "", "0"])[:3]
        return DeviceInfo(self.name, self.transport, lines[0].strip(), lines[1].strip(), "", int(lines[2].strip() or 0))

    def _lock_dir(self) -> str:
        return f"{self.workdir.rstrip('/')}/.edgekit-lock"

    def acquire_lock(self, timeout_s: float | None = None) -> str:
        """mkdir is atomic on every POSIX filesystem: the lock is a folder holding our token."""
        lock = self._lock_dir()
        token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
        deadline = time.monotonic() + (self.lock_timeout_s if timeout_s is None else timeout_s)
        self.run(["mkdir", "-p", self.workdir], 30).check(f"creating {self.workdir}")
        while True:
            r = self.run(["mkdir", lock], 30)
            if r.ok:
                self.run(["sh", "-c", 'echo "$1" > "$2/token"; date +%s > "$2/since"', "sh", token, lock], 30)
                return token
            if not self.run(["test", "-d", lock], 30).ok:  # mkdir failed for another reason than the lock
                raise DeviceError(f"{self.name}: cannot create {lock}: {(r.stderr or r.stdout).strip()[:200] or 'mkdir failed'}",
                                  "set workdir to a writable folder with free space")
            if self._lock_is_stale(lock):
                self.run(["rm", "-rf", "--", lock], 30)
                continue
            if time.monotonic() > deadline:
                raise DeviceBusy(f"{self.name} is busy: another edgekit bench holds {lock}",
                                 f"wait for it, or remove {lock} on the device if no bench is running")
            time.sleep(0.5)

    def _lock_is_stale(self, lock: str) -> bool:
        """Its holder was this machine's process that no longer runs, or it is older than any bench."""
        text = self.run(["cat", f"{lock}/token"], 30).stdout.strip()
        if text in _ABANDONED:
            return True
        holder = text.split()
        if len(holder) == 3 and holder[0] == socket.gethostname() and holder[1].isdigit():
            try:
                os.kill(int(holder[1]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        since = self.run(["cat", f"{lock}/since"], 30).stdout.strip()
        now = self.run(["date", "+%s"], 30).stdout.strip()
        return since.isdigit() and now.isdigit() and int(now) - int(since) > self.stale_lock_s

    def release_lock(self, token: str) -> None:
        lock = self._lock_dir()
        r = self.run(["cat", f"{lock}/token"], 30)
        if r.ok and r.stdout.strip() == token:
            self.run(["rm", "-rf", "--", lock], 30)

    @contextlib.contextmanager
    def session(self, lock: bool = True) -> Iterator[str]:
        """A fresh remote folder under workdir (and the device lock) for one run; always cleaned up."""
        token = self.acquire_lock() if lock else None
        folder = None
        try:
            if token:  # we hold the lock: any run folder still here is a leftover of a run that died
                self.sh(f"rm -rf -- {shlex.quote(self.workdir.rstrip('/'))}/run.*", 60)
            r = self.run(["mktemp", "-d", f"{self.workdir.rstrip('/')}/run.XXXXXX"], 30).check(f"creating a folder under {self.workdir}")
            folder = r.stdout.strip()
            yield folder
        finally:
            try:
                if folder:
                    self.run(["rm", "-rf", "--", folder], 60)
                if token:
                    self.release_lock(token)
            except DeviceError:
                # the device is gone: nothing more can be cleaned now; the next session on it
                # takes over the dead lock and removes the leftover run folder
                if token:
                    _ABANDONED.add(token)
