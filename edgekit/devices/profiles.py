"""Device profiles as data: devices/*.toml (shipped), ./devices/*.toml (yours), or ad-hoc
`local`, `ssh://user@host[:port][/workdir]`, `adb://SERIAL[/workdir]`.

A workdir that is `/`, a home folder or a system folder is refused when the profile is read (and
again when the device is opened): edgekit creates and removes its run folders there."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgekit.catalog import build, read_toml, toml_catalogue
from edgekit.devices.base import check_workdir
from edgekit.errors import UsageError

TRANSPORTS = ("local", "ssh", "adb")
RUNNERS = ("python", "benchmark_model")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    transport: str = "local"
    description: str = ""
    host: str = ""  # ssh
    user: str = ""  # ssh; empty = from ~/.ssh/config or the local user name
    port: int = 0  # ssh; 0 = from ~/.ssh/config or 22
    serial: str = ""  # adb; empty = the only attached device
    runner: str = "python"  # python (edgekit's runtime) | benchmark_model (TFLite's binary, Android)
    python: str = "python3"  # the interpreter on the device, for the python runner
    threads: int = 0  # 0 = the runtime's default
    cpu_mask: str = ""  # hex affinity mask for taskset, e.g. "f0" for a phone's big cores
    workdir: str = ""  # remote working folder; a fresh subfolder is made per run and removed after
    benchmark_binary: str = ""  # host path of benchmark_model (or $EDGEKIT_BENCHMARK_MODEL / --benchmark-binary)
    abi: str = ""  # what the profile expects, checked by `edgekit doctor` (e.g. arm64-v8a, aarch64)
    timeout_s: float = 120.0  # per remote step
    known_hosts: str = ""  # ssh: extra known_hosts file; the system and user files are always read
    key_file: str = ""  # ssh: a private key; else the agent and ~/.ssh keys
    source: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(p: DeviceProfile) -> DeviceProfile:
    if p.transport not in TRANSPORTS:
        raise UsageError(f"{p.source}: transport = {p.transport!r} is not valid", f"use one of: {', '.join(TRANSPORTS)}")
    if p.runner not in RUNNERS:
        raise UsageError(f"{p.source}: runner = {p.runner!r} is not valid", f"use one of: {', '.join(RUNNERS)}")
    if p.transport == "ssh" and not p.host:
        raise UsageError(f"{p.source}: an ssh profile needs host", "set host = \"name-or-address\"")
    _check_workdir(p)
    return p


def _check_workdir(p: DeviceProfile) -> None:
    if p.workdir:
        check_workdir(p.workdir, p.source or p.name, local=p.transport == "local")


def _read(path: Path) -> DeviceProfile:
    data = read_toml(path, UsageError, "device profile")
    return _check(build(DeviceProfile, {**data, "source": str(path)}, str(path), UsageError))


def list_profiles() -> list[DeviceProfile]:
    return [_read(p) for p in toml_catalogue("devices", "EDGEKIT_DEVICES").values()]


def resolve(spec: str | DeviceProfile) -> DeviceProfile:
    """A profile by name, a .toml path, or an ad-hoc URL."""
    if isinstance(spec, DeviceProfile):
        _check_workdir(spec)
        return spec
    if spec.startswith("ssh://"):
        u = urlsplit(spec)
        if not u.hostname:
            raise UsageError(f"bad device {spec!r}", "write ssh://user@host[:port]")
        try:
            port = u.port or 0
        except ValueError:
            raise UsageError(f"bad port in {spec!r}", "write ssh://user@host[:port]") from None
        # ssh://host/some/folder: the workdir; ssh://host/~/x would be home-relative, which is refused
        path = unquote(u.path)
        workdir = (path[1:] if path.startswith("/~") else path) or "/tmp/edgekit"
        return _checked(DeviceProfile(name=spec, transport="ssh", host=u.hostname, user=u.username or "", port=port,
                                      workdir=workdir, source=spec))
    if spec.startswith("adb://"):
        serial, slash, path = spec[len("adb://"):].partition("/")  # serials never hold a slash
        path = unquote(slash + path)
        workdir = (path[1:] if path.startswith("/~") else path) or "/data/local/tmp/edgekit"
        return _checked(DeviceProfile(name=spec, transport="adb", serial=serial, runner="benchmark_model",
                                      workdir=workdir, source=spec))
    if spec.endswith(".toml"):
        if not Path(spec).is_file():
            raise UsageError(f"device profile not found: {spec}", "check the path")
        return _read(Path(spec))
    cat = toml_catalogue("devices", "EDGEKIT_DEVICES")
    if spec not in cat:
        close = difflib.get_close_matches(spec, list(cat), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(cat)}; or ssh://user@host, adb://SERIAL"
        raise UsageError(f"unknown device {spec!r}", hint)
    return _read(cat[spec])


def _checked(p: DeviceProfile) -> DeviceProfile:
    _check_workdir(p)
    return p


def open_device(profile: DeviceProfile):
    """Connect to the device a profile names."""
    _check_workdir(profile)
    if profile.transport == "local":
        from edgekit.devices.local import LocalDevice

        return LocalDevice(profile.name, profile.workdir or None, profile.timeout_s)
    if profile.transport == "ssh":
        from edgekit.devices.ssh import SshDevice

        return SshDevice.connect(profile)
    from edgekit.devices.adb import AdbDevice

    return AdbDevice.connect(profile)
