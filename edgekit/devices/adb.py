"""Android phones over the real `adb` client (Android platform-tools / Debian's adb).

One device is chosen by serial; with none given there must be exactly one in the `device`
state. Network serials (host:port) are `adb connect`ed first. Commands go through `adb shell`
quoted for the device's sh, and their exit code comes from a marker echoed after them: when the
device (or its adbd) dies mid-command the adb client still exits 0 (the shell stream just ends
without an exit packet), so a command whose marker never arrived means a lost device. Every adb
call has a timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from edgekit.devices.base import CommandResult, Device, DeviceInfo, call_abort, quote
from edgekit.devices.profiles import DeviceProfile
from edgekit.errors import DeviceError, DeviceTimeout

_MARK = "__edgekit_exit__"


def adb_binary() -> str:
    found = os.environ.get("EDGEKIT_ADB") or shutil.which("adb")
    if not found:
        raise DeviceError("the adb client is not installed", "install Android platform-tools (Debian: apt-get install adb)")
    return found


def _adb(args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([adb_binary(), *args], capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise DeviceTimeout(f"`adb {' '.join(args[:3])}` did not answer within {timeout_s:g} s", "check `adb devices`; the device may have gone away") from None


def list_devices(timeout_s: float = 20.0) -> list[tuple[str, str]]:
    """[(serial, state)] from `adb devices`."""
    p = _adb(["devices"], timeout_s)
    out = p.stdout.decode("utf-8", "replace")
    return [tuple(line.split()[:2]) for line in out.splitlines()[1:] if len(line.split()) >= 2]  # type: ignore[misc]


def choose_serial(serial: str, timeout_s: float = 20.0) -> str:
    if serial and re.fullmatch(r"[\w.\-]+:\d+", serial) and serial not in dict(list_devices(timeout_s)):
        _adb(["connect", serial], timeout_s)  # network devices (wireless debugging, emulators over TCP)
        for _ in range(20):
            if dict(list_devices(timeout_s)).get(serial) == "device":
                break
            time.sleep(0.25)
    devices = list_devices(timeout_s)
    states = dict(devices)
    if serial:
        state = states.get(serial)
        if state is None:
            raise DeviceError(f"no adb device {serial!r} is attached", "check `adb devices`; for wireless debugging `adb connect host:port` first")
        _check_state(serial, state)
        return serial
    ready = [s for s, st in devices if st == "device"]
    if len(ready) == 1:
        return ready[0]
    if not devices:
        raise DeviceError("no Android device is attached", "connect one with USB debugging on, and check `adb devices`")
    if not ready:
        s, st = devices[0]
        _check_state(s, st)
    raise DeviceError(f"several Android devices are attached ({', '.join(ready)})", "pick one: set serial in the profile or use --device adb://SERIAL")


def _check_state(serial: str, state: str) -> None:
    if state == "unauthorized":
        raise DeviceError(f"adb device {serial} is unauthorized", "unlock the phone and accept the 'Allow USB debugging' prompt")
    if state != "device":
        raise DeviceError(f"adb device {serial} is {state}", "reconnect it (and `adb reconnect`), then check `adb devices`")


class AdbDevice(Device):
    transport = "adb"

    def __init__(self, name: str, serial: str, workdir: str, timeout_s: float):
        super().__init__(name, workdir, timeout_s)
        self.serial = serial

    @classmethod
    def connect(cls, profile: DeviceProfile) -> "AdbDevice":
        serial = choose_serial(profile.serial)
        return cls(profile.name, serial, profile.workdir or "/data/local/tmp/edgekit", profile.timeout_s)

    def _call(self, args: Sequence[str], timeout_s: float | None) -> subprocess.CompletedProcess:
        return _adb(["-s", self.serial, *args], self.timeout_s if timeout_s is None else timeout_s)

    _ADB_FAULT = re.compile(r"^(?:adb: )?error: (?:device|closed|no devices|protocol fault|connection|failed to (?:connect|read|get))", re.M)

    def _lost(self, p: subprocess.CompletedProcess) -> DeviceError | None:
        """adb's own errors (not the command's stderr) mean the device is gone."""
        err = p.stderr.decode("utf-8", "replace")
        m = self._ADB_FAULT.search(err)
        if p.returncode != 0 and m:
            line = err[m.start():].splitlines()[0]
            return DeviceError(f"lost adb device {self.serial}: {line[:200]}", "check the cable and `adb devices`")
        return None

    def run(self, argv: Sequence[str], timeout_s: float | None = None, env: dict[str, str] | None = None,
            on_abort: Callable[[], None] | None = None) -> CommandResult:
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        cmd = f"{quote(argv)}; echo {_MARK}$?"
        timeout = self.timeout_s if timeout_s is None else timeout_s
        t0 = time.monotonic()
        try:
            # its own session: a Ctrl-C in the terminal reaches edgekit, which stops the command
            # (on_abort) before the client goes; stdin is not the user's terminal
            proc = subprocess.Popen([adb_binary(), "-s", self.serial, "shell", cmd], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise DeviceError(f"cannot run adb: {exc.strerror or exc}", "check the adb client (Debian: apt-get install adb)") from None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException as exc:
            # Closing the stream is not enough: adbd only SIGHUPs the shell it started (not its
            # children, see tests/doubles/adbd.py), so what the command started is stopped first.
            call_abort(on_abort)
            proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise DeviceTimeout(f"{self.name}: `{argv[0]}` did not finish within {timeout:g} s",
                                    "the device may be hung or gone; check `adb devices`") from None
            raise
        p = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        out, err = stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
        m = re.search(rf"{_MARK}(\d+)\s*$", out)
        if m is None:
            raise self._lost(p) or DeviceError(f"lost adb device {self.serial} during `{argv[0]}` (no exit status came back)",
                                               "check the cable and `adb devices`")
        code, out = int(m[1]), out[: m.start()]
        return CommandResult(list(map(str, argv)), code, out, err, time.monotonic() - t0)

    def push(self, local: Path, remote: str, timeout_s: float | None = None) -> None:
        p = self._call(["push", str(local), remote], timeout_s)
        if p.returncode != 0:
            raise self._lost(p) or DeviceError(f"{self.name}: adb push to {remote} failed: {p.stderr.decode('utf-8', 'replace').strip()[-200:]}",
                                               "check workdir is writable and the storage is not full")

    def pull(self, remote: str, local: Path, timeout_s: float | None = None) -> None:
        p = self._call(["pull", remote, str(local)], timeout_s)
        if p.returncode != 0:
            raise self._lost(p) or DeviceError(f"{self.name}: adb pull of {remote} failed: {p.stderr.decode('utf-8', 'replace').strip()[-200:]}")

    def info(self) -> DeviceInfo:
        info = super().info()
        props = self.run(["getprop"], 30).stdout
        found = dict(re.findall(r"\[([^\]]+)\]: \[([^\]]*)\]", props))
        info.model = found.get("ro.product.model", "")
        info.extra = {"abi": found.get("ro.product.cpu.abi", ""), "sdk": found.get("ro.build.version.sdk", ""),
                      "manufacturer": found.get("ro.product.manufacturer", ""), "serial": self.serial}
        return info
