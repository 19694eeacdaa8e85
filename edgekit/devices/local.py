"""The local machine as a device: subprocess for run, file copies for push/pull."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from edgekit.devices.base import CommandResult, Device
from edgekit.errors import DeviceError, DeviceTimeout


class LocalDevice(Device):
    transport = "local"

    def __init__(self, name: str = "local", workdir: str | None = None, timeout_s: float = 120.0):
        super().__init__(name, workdir or str(Path(tempfile.gettempdir()) / "edgekit"), timeout_s)

    def run(self, argv: Sequence[str], timeout_s: float | None = None, env: dict[str, str] | None = None) -> CommandResult:
        t0 = time.monotonic()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **(env or {})}, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise DeviceTimeout(f"{self.name}: `{argv[0]}` did not finish within {timeout:g} s") from None
        except FileNotFoundError:
            return CommandResult(list(map(str, argv)), 127, "", f"{argv[0]}: not found", time.monotonic() - t0)
        return CommandResult(list(map(str, argv)), p.returncode, p.stdout, p.stderr, time.monotonic() - t0)

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
