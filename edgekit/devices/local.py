"""The local machine as a device: subprocess for run, file copies for push/pull."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from edgekit.devices.base import CommandResult, Device, call_abort
from edgekit.errors import DeviceError, DeviceTimeout


class LocalDevice(Device):
    transport = "local"

    def __init__(self, name: str = "local", workdir: str | None = None, timeout_s: float = 120.0):
        super().__init__(name, workdir or str(Path(tempfile.gettempdir()) / "edgekit"), timeout_s)

    def run(self, argv: Sequence[str], timeout_s: float | None = None, env: dict[str, str] | None = None,
            on_abort: Callable[[], None] | None = None) -> CommandResult:
        t0 = time.monotonic()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, **(env or {})}, start_new_session=True)
        except FileNotFoundError:
            return CommandResult(list(map(str, argv)), 127, "", f"{argv[0]}: not found", time.monotonic() - t0)
        try:
            out, err = p.communicate(timeout=timeout)
        except BaseException as exc:  # timeout, Ctrl-C: nothing the command started may outlive it
            call_abort(on_abort)
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)  # its own session: the group is p.pid (not yet reaped)
            p.wait()
            for pipe in (p.stdout, p.stderr):
                pipe.close()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise DeviceTimeout(f"{self.name}: `{argv[0]}` did not finish within {timeout:g} s") from None
            raise
        return CommandResult(list(map(str, argv)), p.returncode, out, err, time.monotonic() - t0)

    def push(self, local: Path, remote: str, timeout_s: float | None = None) -> None:
        try:
            if Path(local).is_dir():
                shutil.copytree(local, remote, dirs_exist_ok=True)
            else:
                shutil.copyfile(local, remote)
        except OSError as exc:
            raise DeviceError(f"{self.name}: cannot copy {local} to {remote}: {exc.strerror or exc}") from None

    def pull(self, remote: str, local: Path, timeout_s: float | None = None) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise DeviceError(f"{self.name}: cannot copy {remote} to {local}: {exc.strerror or exc}") from None
