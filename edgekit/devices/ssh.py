"""ARM boards over SSH, with paramiko.

Host keys are verified: the system and user known_hosts files (plus a profile's extra file) are
loaded and unknown hosts are rejected. Keys come from the agent, ~/.ssh, or the profile; user,
port and host aliases from ~/.ssh/config. Every step has a timeout, and a keepalive notices a
board that stops answering.
"""

from __future__ import annotations

import getpass
import socket
import time
from pathlib import Path
from typing import Callable, Sequence

from edgekit.devices.base import CommandResult, Device, DeviceInfo, call_abort, quote
from edgekit.devices.profiles import DeviceProfile
from edgekit.errors import DeviceError, DeviceTimeout


class SshDevice(Device):
    transport = "ssh"

    def __init__(self, name: str, client, workdir: str, timeout_s: float):
        super().__init__(name, workdir, timeout_s)
        self._client = client
        self._sftp = None

    @classmethod
    def connect(cls, profile: DeviceProfile, connect_timeout_s: float = 15.0) -> "SshDevice":
        import paramiko

        host, user, port, keys = profile.host, profile.user, profile.port, [profile.key_file] if profile.key_file else []
        cfg_path = Path.home() / ".ssh" / "config"
        if cfg_path.is_file():
            cfg = paramiko.SSHConfig.from_path(str(cfg_path)).lookup(profile.host)
            host = cfg.get("hostname", host)
            user = user or cfg.get("user", "")
            port = port or int(cfg.get("port", 0) or 0)
            keys += [k for k in cfg.get("identityfile", []) if Path(k).expanduser().is_file()]
        user, port = user or getpass.getuser(), port or 22
        client = paramiko.SSHClient()
        client.load_system_host_keys()  # ~/.ssh/known_hosts
        for extra in ("/etc/ssh/ssh_known_hosts", profile.known_hosts):
            if extra and Path(extra).expanduser().is_file():
                client.load_host_keys(str(Path(extra).expanduser()))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        where = f"{user}@{host}:{port}"
        try:
            client.connect(host, port=port, username=user, key_filename=[str(Path(k).expanduser()) for k in keys] or None,
                           timeout=connect_timeout_s, banner_timeout=connect_timeout_s, auth_timeout=connect_timeout_s,
                           allow_agent=True, look_for_keys=True)
        except paramiko.BadHostKeyException:
            raise DeviceError(f"the host key of {where} does not match known_hosts: refusing to connect",
                              "if the board was reinstalled, remove its old line from known_hosts (ssh-keygen -R host) and verify the new key") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise DeviceError(f"{where} is not in known_hosts: refusing an unverified host key",
                                  f"connect once with `ssh -p {port} {user}@{host}` and check the fingerprint, or set known_hosts in the profile") from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise DeviceError(f"SSH login to {where} failed: {exc}", "add your key to the agent or set key_file in the profile") from None
            raise DeviceError(f"SSH to {where} failed: {exc}", "check the board is up and sshd runs") from None
        except (OSError, socket.timeout) as exc:
            raise DeviceError(f"cannot reach {where}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}",
                              "check the address and that the board is powered and on the network") from None
        client.get_transport().set_keepalive(5)
        return cls(profile.name, client, profile.workdir or "/tmp/edgekit", profile.timeout_s)

    def _lost(self, exc: BaseException) -> DeviceError:
        return DeviceError(f"lost the SSH connection to {self.name}: {type(exc).__name__}: {exc}", "check the board is still up")

    def run(self, argv: Sequence[str], timeout_s: float | None = None, env: dict[str, str] | None = None,
            on_abort: Callable[[], None] | None = None) -> CommandResult:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        t0 = time.monotonic()
        deadline = t0 + timeout
        chan = None
        try:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise DeviceError(f"the SSH connection to {self.name} is closed", "check the board is still up")
            chan = transport.open_session(timeout=min(timeout, 30))
            chan.settimeout(0.2)
            chan.exec_command(quote(argv))
            out, err = bytearray(), bytearray()
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed or not transport.is_active():
                    if not chan.exit_status_ready():
                        raise self._lost(EOFError("channel closed without an exit status"))
                if time.monotonic() > deadline:
                    # sshd does not signal a command whose channel closes (no pty): stop what it
                    # started first, while its shell still waits for it
                    call_abort(on_abort)
                    chan.close()
                    raise DeviceTimeout(f"{self.name}: `{argv[0]}` did not finish within {timeout:g} s", "the board may be hung or overloaded")
                if not got:
                    time.sleep(0.01)
            code = chan.recv_exit_status()
            chan.close()
            if code == -1:  # paramiko's mark for a channel that closed without an exit status
                raise self._lost(EOFError("the session ended without an exit status"))
        except (DeviceError, DeviceTimeout):
            raise
        except (OSError, EOFError, socket.timeout) as exc:
            raise self._lost(exc) from None
        except Exception as exc:  # paramiko.SSHException and friends
            raise self._lost(exc) from None
        except BaseException:  # KeyboardInterrupt: the command would run on without us
            if chan is not None and not chan.closed:
                call_abort(on_abort)
                chan.close()
            raise
        return CommandResult(list(map(str, argv)), code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - t0)

    def _sftp_client(self, timeout: float):
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        self._sftp.get_channel().settimeout(timeout)
        return self._sftp

    def push(self, local: Path, remote: str, timeout_s: float | None = None) -> None:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            self._sftp_client(timeout).put(str(local), remote)
        except OSError as exc:
            if isinstance(exc, (socket.timeout, TimeoutError)):
                raise DeviceTimeout(f"{self.name}: copying {Path(local).name} did not finish within {timeout:g} s") from None
            if exc.errno is None and not isinstance(exc, (FileNotFoundError, PermissionError)):
                raise self._lost(exc) from None
            raise DeviceError(f"{self.name}: cannot write {remote}: {exc.strerror or exc}", "check workdir is writable and the disk is not full") from None
        except EOFError as exc:
            raise self._lost(exc) from None

    def pull(self, remote: str, local: Path, timeout_s: float | None = None) -> None:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            self._sftp_client(timeout).get(remote, str(local))
        except OSError as exc:
            if isinstance(exc, (socket.timeout, TimeoutError)):
                raise DeviceTimeout(f"{self.name}: copying {remote} did not finish within {timeout:g} s") from None
            raise DeviceError(f"{self.name}: cannot read {remote}: {exc.strerror or exc}") from None
        except EOFError as exc:
            raise self._lost(exc) from None

    def info(self) -> DeviceInfo:
        info = super().info()
        r = self.sh("cat /proc/device-tree/model 2>/dev/null || cat /sys/firmware/devicetree/base/model 2>/dev/null || true", 30)
        info.model = r.stdout.replace("\x00", "").strip()
        return info

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        finally:
            self._client.close()
