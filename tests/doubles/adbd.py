"""A device-side adb daemon (adbd) double that the REAL adb client/server can talk to.

What is real: the `adb` client and adb server (Debian's `adb` package), the TCP transport
(`adb connect 127.0.0.1:PORT`), and every byte on the wire. This module speaks the adb
protocol as a device does (AOSP adb: protocol.txt, SYNC.TXT, shell_protocol.h):

* 24-byte little-endian messages: command, arg0, arg1, data_length, data_check (adb's
  "crc32" is really the byte sum of the payload), magic = command ^ 0xFFFFFFFF;
* CNXN handshake without AUTH (an AUTH packet from the host is accepted as is);
* OPEN/OKAY/WRTE/CLSE streams, many at once (a thread per service), one WRTE in flight per
  stream and direction, each acknowledged by an OKAY once it has been consumed;
* services `shell,v2[,raw|,pty][,TERM=..]:CMD` (shell protocol v2: stdout, stderr and the
  exit code travel separately), legacy `shell:CMD` and `exec:CMD` (raw bytes, no exit code),
  and `sync:` v1 (STAT, LIST, SEND, RECV, QUIT).

When the host closes a shell stream before the command ends (the adb client was killed, the
device disconnected), the daemon does what adbd does (daemon/shell_service.cpp,
Subprocess::PassDataStreams): with the shell protocol (v2) it sends SIGHUP to the shell's pid
only, not to its process group, and closes its ends of the command's pipes; so a child of that
shell (the command of `sh -c 'cmd; echo $?'`) lives on, and only learns of it (EPIPE/SIGPIPE)
when it next writes. Without the shell protocol adbd runs the command on a raw PTY, whose hangup
signals the shell's whole (foreground) group: the double sends SIGHUP to the group.

What is simulated: the phone. Commands run as `/bin/sh -c CMD` on this host, so the
"device" file system is the host's (tests use temp folders as the remote folder), and the
PATH of commands starts with a folder of fake Android tools (`getprop`, answering from the
settings given on the command line). `pty` shells get pipes, not a terminal. The banner
advertises only `shell_v2,cmd`, so clients use sync v1 (no stat_v2/ls_v2/sendrecv_v2).

Run it as its own process, so a test can SIGKILL it like a phone that dies:
    python3 tests/doubles/adbd.py --port PORT [--serial-model NAME] [--abi arm64-v8a]
`--port 0` picks a free port (never 5555-5585, which the adb server probes as emulators).
It prints `LISTENING <port>` on stdout once it accepts connections. `AdbdDouble` below
does all of that from a test.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import os
import select
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (
    struct.unpack("<I", c)[0] for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
HEADER = struct.Struct("<6I")
EMULATOR_PORTS = range(5555, 5586)  # the adb server scans these as local emulators
TRACE = bool(os.environ.get("ADBD_DOUBLE_TRACE"))  # log every packet on stderr
TAG_VAR = "ADBD_DOUBLE_TAG"  # marks the commands a daemon started, to sweep them after a SIGKILL
# shell protocol v2 packet ids
SH_STDIN, SH_STDOUT, SH_STDERR, SH_EXIT, SH_CLOSE_STDIN, SH_WINDOW = range(6)


class StreamClosed(Exception):
    pass


class Stream:
    """One adb stream: a service on the device end, a socket of the adb server on the other."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self._inbox: deque[bytes] = deque()
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._may_write = True  # cleared after each WRTE until the host's OKAY
        self._write_lock = threading.Lock()
        self.closed = False
        self.on_close: list = []  # callbacks run once when the stream closes

    # -- called by the connection's reader thread --
    def deliver(self, data: bytes) -> None:
        with self._cond:
            self._inbox.append(data)
            self._cond.notify_all()

    def acknowledged(self) -> None:
        with self._cond:
            self._may_write = True
            self._cond.notify_all()

    # -- called by the service --
    def read_some(self) -> bytes:
        """What the host wrote next (b"" once closed)."""
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        return self._next_packet()

    def read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._next_packet()
            if not chunk:
                raise StreamClosed()
            self._buffer += chunk
        data, self._buffer = bytes(self._buffer[:n]), self._buffer[n:]
        return data

    def _next_packet(self) -> bytes:
        """The payload of the next WRTE (b"" once closed), acknowledged with OKAY."""
        with self._cond:
            while not self._inbox and not self.closed:
                self._cond.wait()
            if not self._inbox:
                return b""
            data = self._inbox.popleft()
        self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return data

    def write(self, data: bytes) -> None:
        """Send data in WRTE packets, waiting for the host's OKAY before each one."""
        with self._write_lock:
            for i in range(0, len(data), self.conn.max_payload):
                with self._cond:
                    while not self._may_write and not self.closed:
                        self._cond.wait()
                    if self.closed:
                        raise StreamClosed()
                    self._may_write = False
                self.conn.send(A_WRTE, self.local_id, self.remote_id,
                               data[i:i + self.conn.max_payload])

    def close(self, notify_host: bool = True) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self.conn.forget(self)
        if notify_host:
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        for callback in self.on_close:
            callback()


class Connection:
    """One transport: the adb server's TCP connection to this 'device'."""

    def __init__(self, sock: socket.socket, device: Device):
        self.sock, self.device = sock, device
        self.max_payload = MAX_PAYLOAD
        self.streams: dict[int, Stream] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if TRACE:
            _trace(">", command, arg0, arg1, data)
        header = HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF,
                             command ^ 0xFFFFFFFF)
        try:
            with self._send_lock:
                self.sock.sendall(header + data)
        except OSError:
            pass  # the reader sees the dead socket and closes everything

    def forget(self, stream: Stream) -> None:
        with self._lock:
            self.streams.pop(stream.local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("host closed the connection")
            data += chunk
        return bytes(data)

    def run(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _check, magic = HEADER.unpack(self._recv_exact(24))
                if magic != command ^ 0xFFFFFFFF:
                    raise ConnectionError("bad packet magic")
                data = self._recv_exact(length) if length else b""
                if TRACE:
                    _trace("<", command, arg0, arg1, data)
                self.handle(command, arg0, arg1, data)
        except (OSError, ConnectionError):
            pass
        finally:
            self.close_all()
            self.sock.close()

    def close_all(self) -> None:
        with self._lock:
            streams = list(self.streams.values())
        for s in streams:
            s.close(notify_host=False)

    def handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if self.device.unauthorized and command in (A_CNXN, A_AUTH):
            # A phone whose user never taps "Allow USB debugging": every signature is refused with
            # a new token, and the public key the host then offers is never accepted.
            if command == A_CNXN or arg0 == AUTH_SIGNATURE:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            return
        if command in (A_CNXN, A_AUTH):  # (re)connect; any AUTH reply is accepted
            if command == A_CNXN:
                self.max_payload = min(MAX_PAYLOAD, arg1 or MAX_PAYLOAD)
            self.close_all()
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.device.banner())
        elif command == A_OPEN:
            service = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            handler = self.device.service_handler(service)
            if handler is None:
                self.send(A_CLSE, 0, arg0)  # open failed
                return
            with self._lock:
                stream = Stream(self, self._next_id, arg0)
                self.streams[stream.local_id] = stream
                self._next_id += 1
            self.send(A_OKAY, stream.local_id, arg0)
            threading.Thread(target=self._serve, args=(handler, stream), daemon=True).start()
        elif command in (A_OKAY, A_WRTE, A_CLSE):
            with self._lock:
                stream = self.streams.get(arg1)
            if stream is None:
                if command == A_WRTE:
                    self.send(A_CLSE, 0, arg0)
                return
            if command == A_OKAY:
                stream.acknowledged()
            elif command == A_WRTE and not data:
                self.send(A_OKAY, stream.local_id, stream.remote_id)
            elif command == A_WRTE:
                stream.deliver(data)
            else:
                stream.close(notify_host=False)

    @staticmethod
    def _serve(handler, stream: Stream) -> None:
        try:
            handler(stream)
        except StreamClosed:
            pass
        finally:
            stream.close()


class Device:
    """The simulated phone: its properties, its fake tools, and its services."""

    def __init__(self, model: str, abi: str, sdk: str, manufacturer: str, tools_dir: Path,
                 tag: str, unauthorized: bool = False):
        self.unauthorized = unauthorized
        self.props = {
            "ro.product.model": model,
            "ro.product.name": model.lower().replace(" ", "_"),
            "ro.product.device": model.lower().replace(" ", "_"),
            "ro.product.manufacturer": manufacturer,
            "ro.product.cpu.abi": abi,
            "ro.product.cpu.abilist": abi,
            "ro.build.version.sdk": sdk,
        }
        self.tools_dir, self.tag = tools_dir, tag
        self.processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._write_tools()

    def banner(self) -> bytes:
        p = self.props
        return (f"device::ro.product.name={p['ro.product.name']};"
                f"ro.product.model={p['ro.product.model']};"
                f"ro.product.device={p['ro.product.device']};features=shell_v2,cmd").encode()

    def _write_tools(self) -> None:
        cases = "".join(f"  {shlex.quote(k)}) echo {shlex.quote(v)} ;;\n"
                        for k, v in self.props.items())
        listing = "".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.props.items()))
        getprop = (f"#!/bin/sh\n# getprop of the adbd double: fixed properties.\n"
                   f"case \"$1\" in\n  '') printf '%s' {shlex.quote(listing)} ;;\n{cases}"
                   f"  *) echo \"$2\" ;;\nesac\n")
        self.tools_dir.mkdir(parents=True, exist_ok=True)
        path = self.tools_dir / "getprop"
        path.write_text(getprop)
        path.chmod(0o755)

    # -- services --
    def service_handler(self, service: str):
        name, _, command = service.partition(":")
        kind, *args = name.split(",")
        if kind == "shell":
            return lambda s: self.run_command(s, command, shell_v2="v2" in args)
        if kind == "exec":
            return lambda s: self.run_command(s, command, shell_v2=False)
        if service == "sync:":
            return self.sync
        return None

    def spawn(self, command: str, merge_stderr: bool) -> subprocess.Popen:
        env = dict(os.environ, PATH=f"{self.tools_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        env[TAG_VAR] = self.tag
        argv = ["/bin/sh", "-c", command] if command else ["/bin/sh"]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            cwd="/", env=env, start_new_session=True, preexec_fn=_die_with_parent)
        with self._lock:
            self.processes.add(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def hang_up(proc: subprocess.Popen, shell_v2: bool) -> None:
        """The host closed the stream: adbd's SIGHUP (see the module docstring)."""
        try:
            if shell_v2:
                os.kill(proc.pid, signal.SIGHUP)  # adbd: kill(pid_, SIGHUP), the shell alone
            else:
                os.killpg(proc.pid, signal.SIGHUP)  # a raw PTY's hangup reaches the foreground group
        except (ProcessLookupError, PermissionError):
            pass

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self.processes)
        for proc in procs:
            self.kill(proc)

    def run_command(self, stream: Stream, command: str, shell_v2: bool) -> None:
        proc = self.spawn(command, merge_stderr=not shell_v2)
        # The host closing the stream (client gone, device disconnected) hangs up the shell as
        # adbd does (module docstring); the output pumps then close the pipes. Once the command
        # has finished, what it left in the background lives on, as on a phone.
        def stop() -> None:
            if proc.returncode is None:
                self.hang_up(proc, shell_v2)

        stream.on_close.append(stop)
        try:
            if stream.closed:  # closed before the callback was registered
                stop()
            pumps = [threading.Thread(target=self._pump_output, daemon=True,
                                      args=(stream, proc.stdout, SH_STDOUT if shell_v2 else None))]
            if shell_v2:
                pumps.append(threading.Thread(target=self._pump_output, daemon=True,
                                              args=(stream, proc.stderr, SH_STDERR)))
            for t in pumps:
                t.start()
            threading.Thread(target=self._pump_input, args=(stream, proc.stdin, shell_v2),
                             daemon=True).start()
            for t in pumps:
                t.join()
            code = proc.wait()
        finally:
            with self._lock:
                self.processes.discard(proc)
        if shell_v2:
            code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal
            stream.write(struct.pack("<BIB", SH_EXIT, 1, code & 0xFF))

    @staticmethod
    def _pump_output(stream: Stream, pipe, packet_id: int | None) -> None:
        """Command output to the stream, until EOF or the stream closes (then the pipe is closed,
        as adbd closes its ends: a writer left behind gets EPIPE)."""
        fd = pipe.fileno()
        try:
            while not stream.closed:
                if not select.select([fd], [], [], 0.2)[0]:
                    continue
                chunk = os.read(fd, 32 * 1024)
                if not chunk:
                    break
                if packet_id is not None:
                    chunk = struct.pack("<BI", packet_id, len(chunk)) + chunk
                stream.write(chunk)
        except StreamClosed:
            pass
        finally:
            pipe.close()

    @staticmethod
    def _pump_input(stream: Stream, pipe, shell_v2: bool) -> None:
        try:
            while True:
                if not shell_v2:
                    data = stream.read_some()
                    if not data:
                        break
                    pipe.write(data)
                    pipe.flush()
                    continue
                packet_id, length = struct.unpack("<BI", stream.read_exact(5))
                data = stream.read_exact(length)
                if packet_id == SH_STDIN:
                    pipe.write(data)
                    pipe.flush()
                elif packet_id == SH_CLOSE_STDIN:
                    break
                # SH_WINDOW and others: no terminal here, nothing to do
        except (StreamClosed, BrokenPipeError, ValueError):
            pass
        finally:
            try:
                pipe.close()
            except BrokenPipeError:
                pass

    def sync(self, stream: Stream) -> None:
        """The file sync service, protocol v1 (SYNC.TXT)."""
        while True:
            request, length = struct.unpack("<4sI", stream.read_exact(8))
            path = stream.read_exact(length)
            if request == b"STAT":
                try:
                    st = os.lstat(path)
                    reply = (st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF)
                except OSError:
                    reply = (0, 0, 0)
                stream.write(struct.pack("<4s3I", b"STAT", *reply))
            elif request == b"LIST":
                stream.write(self._listing(path))
            elif request == b"SEND":
                self._receive_file(stream, path)
            elif request == b"RECV":
                self._send_file(stream, path)
            elif request == b"QUIT":
                return
            else:
                _sync_fail(stream, f"unknown sync request {request!r}")
                return

    @staticmethod
    def _listing(path: bytes) -> bytes:
        out = bytearray()
        try:
            names = [b".", b".."] + os.listdir(path)
        except OSError:
            names = []
        for name in names:
            try:
                st = os.lstat(os.path.join(path, name))
            except OSError:
                continue
            out += struct.pack("<4s4I", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF,
                               int(st.st_mtime) & 0xFFFFFFFF, len(name)) + name
        return bytes(out + struct.pack("<4s4I", b"DONE", 0, 0, 0, 0))

    @staticmethod
    def _receive_file(stream: Stream, spec: bytes) -> None:
        path, _, mode_text = spec.rpartition(b",")
        mode = int(mode_text) if mode_text.isdigit() else 0o100644
        chunks, error = [], None
        try:
            os.makedirs(os.path.dirname(path) or b".", exist_ok=True)
            out = None if stat.S_ISLNK(mode) else open(path, "wb")
        except OSError as exc:
            out, error = None, f"couldn't create file: {exc.strerror}"
        while True:  # read DATA ... DONE even after an error, as adbd does
            request, length = struct.unpack("<4sI", stream.read_exact(8))
            if request == b"DONE":
                mtime = length
                break
            if request != b"DATA" or length > SYNC_DATA_MAX:
                error = error or f"bad sync data {request!r}"
                break
            data = stream.read_exact(length)
            if error is None:
                try:
                    out.write(data) if out else chunks.append(data)
                except OSError as exc:
                    error = f"write failed: {exc.strerror}"
        try:
            if out:
                out.close()
                os.chmod(path, stat.S_IMODE(mode) or 0o644)
            elif error is None:
                os.symlink(b"".join(chunks), path)
            if error is None:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        except OSError as exc:
            error = error or str(exc)
        if error:
            _sync_fail(stream, error)
        else:
            stream.write(struct.pack("<4sI", b"OKAY", 0))

    @staticmethod
    def _send_file(stream: Stream, path: bytes) -> None:
        try:
            with open(path, "rb") as f:
                while chunk := f.read(SYNC_DATA_MAX):
                    stream.write(struct.pack("<4sI", b"DATA", len(chunk)) + chunk)
        except OSError as exc:
            _sync_fail(stream, exc.strerror or str(exc))
            return
        stream.write(struct.pack("<4sI", b"DONE", 0))


def _trace(direction: str, command: int, arg0: int, arg1: int, data: bytes) -> None:
    name = struct.pack("<I", command).decode("ascii", "replace")
    print(f"{time.monotonic():.3f} {direction} {name} {arg0} {arg1} {len(data)} {data[:40]!r}",
          file=sys.stderr, flush=True)


def _sync_fail(stream: Stream, message: str) -> None:
    data = message.encode()
    stream.write(struct.pack("<4sI", b"FAIL", len(data)) + data)


try:  # looked up once here: the child after fork() must not load libraries
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the daemon dies (Linux prctl PR_SET_PDEATHSIG)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


def listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1; port 0 picks a free port outside 5555-5585."""
    for _ in range(50):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        if port or sock.getsockname()[1] not in EMULATOR_PORTS:
            sock.listen(16)
            return sock
        sock.close()
    raise OSError("no free port outside the emulator range")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--serial-model", "--model", dest="model", default="Pixel 7")
    parser.add_argument("--abi", default="arm64-v8a")
    parser.add_argument("--sdk", default="34")
    parser.add_argument("--manufacturer", default="Google")
    parser.add_argument("--tools-dir", help="where to write the fake Android tools")
    parser.add_argument("--tag", default=uuid.uuid4().hex,
                        help=f"value of {TAG_VAR} in the environment of commands")
    parser.add_argument("--unauthorized", action="store_true",
                        help="demand AUTH and never accept the host's key (adb devices: unauthorized)")
    args = parser.parse_args(argv)
    if args.port in EMULATOR_PORTS:
        parser.error("ports 5555-5585 are probed by the adb server as emulators")

    own_tools = None if args.tools_dir else tempfile.TemporaryDirectory(prefix="adbd-double-")
    tools_dir = Path(args.tools_dir or own_tools.name)
    device = Device(args.model, args.abi, args.sdk, args.manufacturer, tools_dir, args.tag, args.unauthorized)
    server = listen(args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack
    print(f"LISTENING {server.getsockname()[1]}", flush=True)
    try:
        while True:
            sock, _ = server.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=Connection(sock, device).run, daemon=True).start()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        device.kill_all()
        if own_tools:
            own_tools.cleanup()
    return 0


class AdbdDouble:
    """Runs the daemon double in its own process, for tests.

        with AdbdDouble(model="Pixel 7", abi="arm64-v8a") as dev:
            subprocess.run(["adb", "-P", server_port, "connect", dev.serial], ...)
            ...
            dev.kill()   # SIGKILL: the phone dies mid-run
    """

    def __init__(self, model: str = "Pixel 7", abi: str = "arm64-v8a", sdk: str = "34",
                 manufacturer: str = "Google", start_timeout: float = 10.0, unauthorized: bool = False):
        self._tmp = tempfile.TemporaryDirectory(prefix="adbd-double-")
        self.tag = uuid.uuid4().hex
        self.log_path = Path(self._tmp.name) / "adbd.log"
        cmd = [sys.executable, __file__, "--port", "0", "--serial-model", model, "--abi", abi,
               "--sdk", sdk, "--manufacturer", manufacturer,
               "--tools-dir", str(Path(self._tmp.name) / "bin"), "--tag", self.tag]
        if unauthorized:
            cmd.append("--unauthorized")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                            stdin=subprocess.DEVNULL)
        self.port = self._await_port(start_timeout)
        self.serial = f"127.0.0.1:{self.port}"

    def _await_port(self, timeout: float) -> int:
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        line = result[0].decode() if result else ""
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"adbd double did not start: {line!r} {self.log()}")
        return int(line.split()[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the daemon, like a phone that dies; its commands die with it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._sweep()

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._sweep()
        self.process.stdout.close()
        self._tmp.cleanup()

    def _sweep(self) -> None:
        """Kill what the daemon's commands left behind (grandchildren escape PDEATHSIG)."""
        marker = f"{TAG_VAR}={self.tag}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass

    def __enter__(self) -> AdbdDouble:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
