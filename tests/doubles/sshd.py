"""A board reached over SSH: a REAL OpenSSH server (Debian's `openssh-server`) on loopback.

What is real: the server (`/usr/sbin/sshd`, run with its own config, host key and PID file), the SSH
protocol, public-key authentication, host key verification on the client side (the double writes a
`known_hosts` file; clients verify against it, nothing disables the check), exec, SFTP (`internal-sftp`,
which modern `scp` uses too) and a daemon that can vanish (`kill()`).

What is simulated: the board itself. Without `chroot`, commands run as the login user on this host.
With `chroot=ROOTFS` (an aarch64 Debian userland built by `scripts/setup-arm64-rootfs.sh`), sshd's
`ChrootDirectory` lands every login inside that tree, so commands run the rootfs's own aarch64
`/bin/bash`, `/bin/sh` and `python3`, executed by qemu-user-static through binfmt_misc: real ARM binaries
on an emulated CPU, good for correctness, never for timing.

Typical use, from a pytest fixture:

    with SshdDouble(tmp_path / "board") as board:
        subprocess.run(["ssh", *board.client_options, board.destination, "uname -m"], ...)
        paramiko: client.load_host_keys(board.known_hosts); RejectPolicy(); connect(board.host,
                  port=board.port, username=board.user, key_filename=str(board.key_path), ...)

`client_options` carries `-F /dev/null`, the known_hosts file, `StrictHostKeyChecking=yes`,
`BatchMode=yes`, the identity and the port (`-o Port=N`), so the same list works for `ssh`, `scp` and
`sftp`. sshd needs root here (it binds for and switches to the login user, and `ChrootDirectory` is
root-only).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
EMULATOR_PORTS = range(5555, 5586)  # the adb server probes these as emulators: never listen there
_PR_SET_PDEATHSIG = 1


class SshdError(RuntimeError):
    """The daemon could not be set up or started; the message says why (with the end of sshd's log)."""


class SshdDouble:
    """A real sshd on 127.0.0.1 at a free port, with its own keys, config, PID file and log.

    root_dir: where its files go (config, keys, known_hosts, sshd.log); a temporary folder, removed by
        `stop()`, when None. Keys already there are reused, so a double restarted on the same root_dir
        keeps its host key, like a rebooted board.
    chroot: a root file system to land logins in (sshd `ChrootDirectory`). Every component of its path
        must be owned by root and not group/world-writable (sshd's rule, checked here up front).
    """

    host = "127.0.0.1"

    def __init__(self, root_dir: Path | None = None, chroot: Path | None = None, start_timeout: float = 15.0):
        self._own_root = root_dir is None
        self.root_dir = Path(tempfile.mkdtemp(prefix="sshd-double-")) if root_dir is None else Path(root_dir)
        self.chroot = None if chroot is None else Path(chroot).resolve()
        self.start_timeout = start_timeout
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.port: int | None = None
        self.config_path = self.root_dir / "sshd_config"
        self.host_key_path = self.root_dir / "ssh_host_ed25519_key"
        self.key_path = self.root_dir / "id_ed25519"  # the client's private key, authorized for `user`
        self.authorized_keys = self.root_dir / "authorized_keys"
        self.known_hosts = self.root_dir / "known_hosts"
        self.pid_file = self.root_dir / "sshd.pid"
        self.log_path = self.root_dir / "sshd.log"
        self._proc: subprocess.Popen | None = None

    # -- what clients need ------------------------------------------------------------------------

    @property
    def destination(self) -> str:
        """`user@host` for the OpenSSH client binaries."""
        return f"{self.user}@{self.host}"

    @property
    def client_options(self) -> list[str]:
        """Options for `ssh`, `scp` and `sftp` alike: verify the host key against our known_hosts only."""
        return [
            "-F", "/dev/null",  # no user or system ssh_config
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=10",
            "-o", f"Port={self.port}",
            "-i", str(self.key_path),
        ]

    def log(self) -> str:
        """sshd's own log (`-e`: what it would send to syslog), for diagnostics."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> SshdDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> SshdDouble:
        """Start sshd and return once its port accepts connections and speaks SSH."""
        if self._proc is not None:
            raise SshdError("already started")
        if not os.access(SSHD, os.X_OK):
            raise SshdError(f"{SSHD} not found: install Debian's openssh-server (scripts/setup-arm64-rootfs.sh does)")
        if self.chroot is not None:
            _check_chroot(self.chroot)
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self._make_keys()
        for _attempt in range(3):  # the free port we picked can be taken before sshd binds it
            self.port = _free_port()
            self._write_config()
            self.known_hosts.write_text(f"[{self.host}]:{self.port} {self._host_public_key()}\n")
            if self._launch():
                return self
        raise SshdError(f"sshd could not bind a port on {self.host}:\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL the daemon and every process under it: a board that disappears mid-run.

        sshd forks a process per connection (which forks the session running the command) and those
        outlive the listener, so the whole tree is frozen (SIGSTOP, so nothing forks or exits meanwhile)
        and then killed. Open connections drop at once: clients see the TCP connection close.
        """
        if self._proc is None:
            return
        for pid in _freeze_tree(self._proc.pid):
            _signal(pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Stop the daemon and its sessions (SIGTERM, then SIGKILL for what lingers); idempotent."""
        if self._proc is not None:
            tree = _freeze_tree(self._proc.pid)
            for pid in tree:
                _signal(pid, signal.SIGTERM)
                _signal(pid, signal.SIGCONT)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 3
            while any(_alive(p) for p in tree) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in tree:
                if _alive(pid):
                    _signal(pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        if self._own_root:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    # -- internals --------------------------------------------------------------------------------

    def _make_keys(self) -> None:
        for path, comment in ((self.host_key_path, "sshd-double host key"), (self.key_path, "sshd-double client")):
            if not path.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                               check=True, capture_output=True)
        self.authorized_keys.write_text(Path(f"{self.key_path}.pub").read_text())

    def _host_public_key(self) -> str:
        key_type, blob = Path(f"{self.host_key_path}.pub").read_text().split()[:2]
        return f"{key_type} {blob}"

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.host}:{self.port}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",  # read before any chroot
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "LogLevel INFO",  # VERBOSE would leak "Changed root directory" into the session's stderr
            "Subsystem sftp internal-sftp",  # works inside a chroot, which has no sftp-server binary
        ]
        if self.chroot is not None:
            lines.append(f"ChrootDirectory {self.chroot}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _launch(self) -> bool:
        """Run sshd; True once it serves, False if its port was taken; raises on any other failure."""
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                if "Address already in use" in self._log_tail():
                    return False
                raise SshdError(f"sshd exited at start:\n{self._log_tail()}")
            if _speaks_ssh(self.host, self.port):
                return True
            time.sleep(0.05)
        self.kill()
        raise SshdError(f"sshd did not accept connections within {self.start_timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def _check_chroot(root: Path) -> None:
    """sshd's ChrootDirectory rule: root-owned, not group/world-writable, all the way up."""
    if not (root / "bin" / "sh").exists():
        raise SshdError(f"{root} is not a root file system (no bin/sh): run scripts/setup-arm64-rootfs.sh")
    for part in (root, *root.parents):
        st = part.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise SshdError(f"sshd refuses ChrootDirectory {root}: {part} must be root-owned and not "
                            f"group/world-writable (mode {st.st_mode & 0o777:o}, uid {st.st_uid})")


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind((SshdDouble.host, 0))
            port = s.getsockname()[1]
        if port not in EMULATOR_PORTS:
            return port


def _speaks_ssh(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: if the test process dies, the kernel SIGKILLs the listener."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # fields after "(comm)": state, ppid, ...
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _freeze_tree(root: int) -> list[int]:
    """SIGSTOP `root` and all its descendants (re-scanning until no new one appears); return them all."""
    frozen: list[int] = []
    todo = [root]
    while todo:
        for pid in todo:
            _signal(pid, signal.SIGSTOP)
        frozen += todo
        children = _children()
        todo = [c for p in frozen for c in children.get(p, []) if c not in frozen]
    return frozen


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
