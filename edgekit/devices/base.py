"""One device interface for every transport: run a command, push, pull, info, close.

Commands are argv lists; a transport that goes through a remote shell (SSH, adb) quotes them
with shlex, so user paths with spaces or quotes stay one argument. Every step has a timeout.

`session()` holds the device's lock (so two benches on one device are serialised, not
interleaved) and gives a fresh run folder under workdir, `edgekit-run.XXXXXX`, made by mktemp and
marked with a `.edgekit-run` file holding its owner's token. edgekit removes only that folder and,
under the lock, earlier run folders that carry the marker and whose owner is gone: never a glob
over the user's workdir. A workdir that is `/`, a home or a system folder is refused.

`run_in_group()` runs a long command (the runner) in its own session and process group, whose id
it records in the run folder; on timeout, Ctrl-C or error the whole group is stopped (TERM, then
KILL), and the lock is released only once no process of it is left.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shlex
import socket
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from edgekit.errors import DeviceBusy, DeviceError, UsageError

RUN_PREFIX = "edgekit-run."  # run folders: RUN_PREFIX + mktemp's six random letters and digits
RUN_MARKER = ".edgekit-run"  # inside each run folder: owner token, then creation time (epoch s)
PGID_FILE = ".edgekit-pgid"  # inside a run folder: the process group of the command run_in_group started
_RUN_NAME = re.compile(re.escape(RUN_PREFIX) + r"[A-Za-z0-9]+")


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


# Lock tokens this process could not release because the device went away mid-run (or a runner
# could not be stopped), and tokens of stale locks taken over: when the device comes back, such a
# lock and the run folders it owned are known to be dead even though this process still lives.
_ABANDONED: set[str] = set()


def quote(argv: Sequence[str]) -> str:
    """A command line for a POSIX remote shell; every argument quoted."""
    return shlex.join(str(a) for a in argv)


# ---------------------------------------------------------------- workdir: refuse what is not ours

# Never a workdir, nor anything under them: the OS itself (Linux and Android).
_SYSTEM_TREES = ("/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr",
                 "/system", "/system_ext", "/vendor", "/product", "/odm", "/apex")
# Never a workdir themselves; their subfolders may be scratch space (/dev/shm, /run/user/N,
# /var/tmp, /data/local/tmp, /mnt/scratch).
_SYSTEM_FOLDERS = {"/dev", "/run", "/var", "/data", "/data/local", "/data/data", "/opt", "/srv", "/mnt", "/media",
                   "/snap", "/cache", "/efi", "/lost+found"}
# Users' own folders: homes and Android's shared storage.
_HOME_FOLDERS = {"/root", "/home", "/Users", "/sdcard", "/storage", "/storage/emulated", "/storage/emulated/0",
                 "/storage/self", "/storage/self/primary", "/mnt/sdcard", "/data/media", "/data/media/0"}
_WORKDIR_HINT = ("edgekit creates and removes run folders under workdir: give it a folder of its own, "
                 "e.g. /tmp/edgekit (Android: /data/local/tmp/edgekit)")


def refused_workdir(path: str) -> str | None:
    """Why `path` (absolute, normalised) must not be a workdir, or None."""
    if path == "/" or path == "//":
        return "is the root folder"
    if path in _HOME_FOLDERS or re.fullmatch(r"/(home|Users)/[^/]+", path):
        return "is a home folder"
    if path in _SYSTEM_FOLDERS or any(path == t or path.startswith(t + "/") for t in _SYSTEM_TREES):
        return "is a system folder"
    return None


def check_workdir(workdir: str, where: str = "", local: bool = False) -> str:
    """The workdir, normalised; UsageError (one line) for `/`, a home or system folder, `~`, a relative path."""
    prefix = f"{where}: " if where else ""
    if any(ord(c) < 32 or ord(c) == 127 for c in workdir):
        raise UsageError(f"{prefix}workdir {workdir!r} contains a control character", _WORKDIR_HINT)
    if workdir.startswith("~"):
        if re.fullmatch(r"~[^/]*/*", workdir):
            raise UsageError(f"{prefix}workdir {workdir!r} is a home folder", _WORKDIR_HINT)
        raise UsageError(f"{prefix}workdir {workdir!r} starts with ~, which is not expanded on the device",
                         "write an absolute path, e.g. /tmp/edgekit")
    if not workdir.startswith("/"):
        raise UsageError(f"{prefix}workdir {workdir!r} is not an absolute path", "write an absolute path, e.g. /tmp/edgekit")
    path = posixpath.normpath(workdir)
    why = refused_workdir(path)
    if why is None and local:
        real = os.path.realpath(path)
        homes = {os.path.realpath(os.path.expanduser("~"))} - {"/"}
        why = refused_workdir(real) or ("is your home folder" if real in homes else None)
        if why and real != path:
            why = f"resolves to {real}, which {why}"
    if why:
        raise UsageError(f"{prefix}workdir {workdir!r} {why}", _WORKDIR_HINT)
    return path


# ---------------------------------------------------------------- fixed device-side scripts
# They never contain user values: those come in as positional arguments ("$1"...), quoted.

# Make a run folder with mktemp and mark it: $1 workdir, $2 owner token. Prints the folder.
_NEW_RUN = (
    'd=$(mktemp -d "$1/' + RUN_PREFIX + 'XXXXXX") || exit 1\n'
    '{ printf \'%s\\n\' "$2"; date +%s; } > "$d/' + RUN_MARKER + '" || { rm -rf -- "$d"; exit 1; }\n'
    'printf \'%s\\n\' "$d"\n'
)

# List the marked run folders under $1: "name since token" lines, then "now EPOCH".
_LIST_RUNS = (
    'for d in "$1"/' + RUN_PREFIX + '*; do\n'
    '  [ -d "$d" ] && [ ! -L "$d" ] && [ -f "$d/' + RUN_MARKER + '" ] && [ ! -L "$d/' + RUN_MARKER + '" ] || continue\n'
    '  tok=; since=\n'
    '  { read -r tok; read -r since; } 2>/dev/null < "$d/' + RUN_MARKER + '"\n'
    '  printf \'%s %s %s\\n\' "${d##*/}" "${since:-0}" "$tok"\n'
    'done\n'
    'printf \'now %s\\n\' "$(date +%s)"\n'
)

# Run "$@" in a new session (so a process group of its own) and wait for it; the group's id is
# written by the group leader itself, after setsid, to the file $1. `setsid` is in util-linux
# (Debian), busybox and Android's toybox; it does not fork here since the background child is never
# a group leader. Without it, job control (`set -m`) still gives the job its own group. A background
# job's stdin is /dev/null; stdout and stderr stay the channel's.
_GROUP = (
    'pf=$1; shift\n'
    'if command -v setsid >/dev/null 2>&1; then\n'
    '  setsid sh -c \'echo $$ > "$0"; exec "$@"\' "$pf" "$@" &\n'
    'else\n'
    '  set -m 2>/dev/null\n'
    '  sh -c \'echo $$ > "$0"; exec "$@"\' "$pf" "$@" &\n'
    'fi\n'
    'wait $!\n'
)

# Stop the process group recorded in run folder $1: TERM, up to 5 s, then KILL, up to 5 s; prints
# "gone" once no live (non-zombie) process of it is left, else "alive" (exit 1). $2 = 1: a stale
# folder's group, touched only if one of its processes names the folder (pids get reused);
# $3: tenths of a second to wait for the group file to appear (a command just started).
_REAP = r'''dir=$1 verify=$2 patience=$3
f=$dir/''' + PGID_FILE + r'''
i=0
while [ ! -s "$f" ] && [ "$i" -lt "$patience" ]; do sleep 0.1; i=$((i+1)); done
pg=
[ -f "$f" ] && read -r pg 2>/dev/null < "$f"
case $pg in ''|*[!0-9]*) echo gone; exit 0;; esac
[ "$pg" -gt 1 ] || { echo gone; exit 0; }
name=${dir##*/}
members() {
  kill -0 -- "-$pg" 2>/dev/null || kill -0 "-$pg" 2>/dev/null || return 1
  [ -r /proc/self/stat ] || { [ "$verify" != 1 ]; return; }
  for s in /proc/[0-9]*/stat; do
    line=
    read -r line 2>/dev/null < "$s" || continue
    set -- ${line##*") "}
    [ "$3" = "$pg" ] && [ "$1" != Z ] || continue
    [ "$verify" = 1 ] || return 0
    tr '\0' ' ' 2>/dev/null < "${s%/stat}/cmdline" | grep -qF -- "$name" && return 0
  done
  return 1
}
members || { echo gone; exit 0; }
for sig in TERM KILL; do
  kill -s "$sig" -- "-$pg" 2>/dev/null || kill "-$sig" "-$pg" 2>/dev/null
  i=0
  while members && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  members || { echo gone; exit 0; }
done
echo alive
exit 1
'''


def call_abort(on_abort: Callable[[], None] | None) -> None:
    """For transports: stop what a command started before giving up on it; never masks the original error."""
    if on_abort is None:
        return
    try:
        on_abort()
    except Exception:  # the session's cleanup tries again, and keeps the lock if it cannot
        pass


class Device(ABC):
    """Transport-independent device. Subclasses implement run/push/pull and describe themselves."""

    transport = "abstract"
    lock_timeout_s = 600.0
    stale_lock_s = 3600.0

    def __init__(self, name: str, workdir: str, timeout_s: float = 120.0):
        self.name = name
        self.workdir = check_workdir(workdir, name, local=self.transport == "local")
        self.timeout_s = timeout_s

    @abstractmethod
    def run(self, argv: Sequence[str], timeout_s: float | None = None, env: dict[str, str] | None = None,
            on_abort: Callable[[], None] | None = None) -> CommandResult:
        """Run argv on the device; raises DeviceTimeout past timeout_s, DeviceError if unreachable.

        on_abort: called (while the command still runs) when the wait for it ends early: timeout,
        KeyboardInterrupt; it stops what the command started."""

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

    @staticmethod
    def _new_token() -> str:
        return f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"

    def _prepare_workdir(self) -> None:
        """Create workdir; refuse it if, on the device, it is (a link to) a folder edgekit must not use."""
        r = self.run(["sh", "-c", 'mkdir -p "$1" && cd "$1" && pwd -P', "sh", self.workdir], 30).check(f"creating {self.workdir}")
        real = (r.stdout.strip().splitlines() or [""])[-1].strip()
        why = refused_workdir(posixpath.normpath(real)) if real.startswith("/") else None
        if why:
            raise UsageError(f"{self.name}: workdir {self.workdir!r} resolves to {real} on the device, which {why}", _WORKDIR_HINT)

    def acquire_lock(self, timeout_s: float | None = None) -> str:
        """mkdir is atomic on every POSIX filesystem: the lock is a folder holding our token."""
        lock = self._lock_dir()
        token = self._new_token()
        deadline = time.monotonic() + (self.lock_timeout_s if timeout_s is None else timeout_s)
        self._prepare_workdir()
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

    def _owner_is_gone(self, token: str, since: str, now: str) -> bool:
        """The owner of a lock or run folder was this machine's process that no longer runs, was
        abandoned by this process, or the lock/folder is older than any bench."""
        if token in _ABANDONED:
            return True
        holder = token.split()
        if len(holder) == 3 and holder[0] == socket.gethostname() and holder[1].isdigit():
            try:
                os.kill(int(holder[1]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return since.isdigit() and now.isdigit() and int(now) - int(since) > self.stale_lock_s

    def _lock_is_stale(self, lock: str) -> bool:
        text = self.run(["cat", f"{lock}/token"], 30).stdout.strip()
        since = self.run(["cat", f"{lock}/since"], 30).stdout.strip()
        now = self.run(["date", "+%s"], 30).stdout.strip()
        if self._owner_is_gone(text, since, now):
            if text:
                _ABANDONED.add(text)  # the run folders it owned are stale too
            return True
        return False

    def release_lock(self, token: str) -> None:
        lock = self._lock_dir()
        r = self.run(["cat", f"{lock}/token"], 30)
        if r.ok and r.stdout.strip() == token:
            self.run(["rm", "-rf", "--", lock], 30)

    # ------------------------------------------------------------ run folders and process groups

    def stop_group(self, folder: str, stale: bool = False, patience_s: float = 0.0) -> bool:
        """Stop the process group recorded in `folder` (TERM, then KILL); True once none of it is left.

        stale: the folder is an earlier run's, so its group is touched only if a process of it still
        names the folder. patience_s: how long to wait for a just-started command to record its group."""
        r = self.run(["sh", "-c", _REAP, "sh", folder, "1" if stale else "0", str(int(patience_s * 10))], 60)
        said = (r.stdout.strip().splitlines() or [""])[-1].strip()
        if said == "gone":
            return True
        if said == "alive":
            return False
        raise DeviceError(f"{self.name}: cannot check the runner's processes: {(r.stderr or r.stdout).strip()[-200:] or 'no output'}")

    def run_in_group(self, argv: Sequence[str], folder: str, timeout_s: float | None = None,
                     env: dict[str, str] | None = None) -> CommandResult:
        """Run argv in a session and process group of its own, recorded in `folder` (a run folder
        of this session); on timeout or Ctrl-C the whole group is stopped before the error goes on."""
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        wrapped = ["sh", "-c", _GROUP, "sh", f"{folder}/{PGID_FILE}", *argv]
        return self.run(wrapped, timeout_s, on_abort=lambda: self.stop_group(folder, patience_s=2.0))

    def _new_run_folder(self, owner: str) -> str:
        r = self.run(["sh", "-c", _NEW_RUN, "sh", self.workdir.rstrip("/"), owner], 30)
        r.check(f"creating a folder under {self.workdir}")
        folder = (r.stdout.strip().splitlines() or [""])[-1].strip()
        if not _RUN_NAME.fullmatch(posixpath.basename(folder)):
            raise DeviceError(f"{self.name}: mktemp gave an unexpected folder name {folder!r}")
        return folder

    def _collect_stale_runs(self) -> None:
        """Under the lock: remove run folders that carry edgekit's marker and whose owner is gone,
        after stopping what still runs from them. Anything else in workdir is left alone."""
        r = self.run(["sh", "-c", _LIST_RUNS, "sh", self.workdir.rstrip("/")], 60)
        if not r.ok:
            return
        lines = r.stdout.splitlines()
        now = next((ln.split()[1] for ln in lines if ln.startswith("now ") and len(ln.split()) == 2), "")
        for line in lines:
            name, _, rest = line.partition(" ")
            since, _, token = rest.partition(" ")
            if not _RUN_NAME.fullmatch(name) or not self._owner_is_gone(token.strip(), since, now):
                continue
            folder = f"{self.workdir.rstrip('/')}/{name}"
            if not self.stop_group(folder, stale=True):
                raise DeviceBusy(f"{self.name}: a runner of an earlier bench ({folder}) is still running and could not be stopped",
                                 "stop it on the device, then run again")
            self.run(["rm", "-rf", "--", folder], 60)

    @contextlib.contextmanager
    def session(self, lock: bool = True) -> Iterator[str]:
        """A fresh marked run folder under workdir (and the device lock) for one run; always cleaned up."""
        token = self.acquire_lock() if lock else None
        folder = None
        failed = True
        try:
            if token:  # we hold the lock: marked run folders of dead owners are leftovers
                self._collect_stale_runs()
            else:
                self._prepare_workdir()
            folder = self._new_run_folder(token or self._new_token())
            yield folder
            failed = False
        finally:
            self._end_session(folder, token, raise_errors=not failed)

    def _end_session(self, folder: str | None, token: str | None, raise_errors: bool) -> None:
        """Stop the run's process group, then remove its folder and release the lock; if the group
        cannot be stopped, the folder and the lock stay (the lock is abandoned for the next session)."""
        try:
            gone = self.stop_group(folder) if folder else True
            if gone:
                if folder:
                    self.run(["rm", "-rf", "--", folder], 60)
                if token:
                    self.release_lock(token)
        except DeviceError:
            # the device is gone: nothing more can be cleaned now; the next session on it
            # takes over the dead lock, stops what runs from the folder and removes it
            if token:
                _ABANDONED.add(token)
            return
        if not gone:
            if token:
                _ABANDONED.add(token)
            if raise_errors:
                raise DeviceError(f"{self.name}: the runner in {folder} could not be stopped; the device stays locked",
                                  f"stop it on the device, then remove {self._lock_dir()}")
