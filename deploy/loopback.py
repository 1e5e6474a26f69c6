"""TVM RPC tracker and servers as child processes on 127.0.0.1: free ports, readiness, stop by PID.

A TVM RPC server runs whatever code it is sent, so everything started here binds to loopback only.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compile.errors import UserError

LOOPBACK = "127.0.0.1"
PORT_SPAN = 10  # TVM's servers need --port-end; they take the first free port of the span


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_span(span: int = PORT_SPAN, start: int = 20000, end: int | None = None) -> int:
    """The first port of `span` consecutive free loopback ports (checked, not guessed).

    Ports come from below the kernel's ephemeral range: a port in that range can be taken at any moment
    as the source port of an outgoing connection, and a client polling such a port can connect to itself.
    """
    end = end or max(_ephemeral_start(), start + 100 * span)
    base = start + (os.getpid() * 37) % (end - start - span)  # spread parallel runs apart
    for offset in range(0, end - start, span):
        port = start + (base - start + offset) % (end - start - span)
        if all(_is_free(p) for p in range(port, port + span)):
            return port
    raise UserError("No free span of loopback ports for the RPC tracker and servers.")


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None, host: str = LOOPBACK) -> None:
    """Bounded wait until something accepts connections at host:port."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise UserError(f"A process meant to listen on {host}:{port} exited with code {process.returncode}.")
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)) as sock:
                # TCP simultaneous open: polling a closed local port can connect the socket to itself
                if sock.getsockname() != sock.getpeername():
                    return
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except OSError as err:
            if time.monotonic() >= deadline:
                raise UserError(f"Nothing answers at {host}:{port} ({err.strerror or err}) after "
                                f"{timeout:.0f} s: check the address and that the server runs.") from None
            time.sleep(0.2)


@dataclass
class Service:
    name: str
    pid: int
    port: int
    log: str


@dataclass
class Services:
    """What was started, saved as JSON so a later command can stop it by PID."""

    items: list[Service] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(s) for s in self.items], indent=2))

    @classmethod
    def load(cls, path: Path) -> "Services":
        if not path.exists():
            return cls()
        return cls([Service(**s) for s in json.loads(path.read_text())])

    def find(self, name: str) -> Service | None:
        return next((s for s in self.items if s.name == name), None)

    def stop(self) -> None:
        for service in reversed(self.items):
            stop_pid(service.pid)
        self.items.clear()


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group (servers fork workers), then SIGKILL after `grace` seconds."""
    for sig in (signal.SIGCONT, signal.SIGTERM):  # SIGCONT: a frozen (stopped) server must wake to die
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:  # not our child: poll for its exit instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _spawn(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def start_tracker(log_dir: Path, python: str = sys.executable) -> Service:
    port = free_port_span()
    proc = _spawn([python, "-m", "tvm.exec.rpc_tracker", "--host", LOOPBACK, "--port", str(port),
                   "--port-end", str(port + PORT_SPAN), "--silent"], log_dir / "tracker.log")
    try:
        wait_for_port(port, 30, proc)
    except UserError:
        stop_pid(proc.pid)
        raise
    return Service("tracker", proc.pid, port, str(log_dir / "tracker.log"))


def start_server(key: str, log_dir: Path, tracker_port: int | None = None, python: list[str] | None = None,
                 env: dict | None = None, ready_timeout: float = 60) -> Service:
    """A TVM RPC server on loopback; registered under `key` when a tracker port is given."""
    port = free_port_span()
    command = [*(python or [sys.executable]), "-m", "tvm.exec.rpc_server", "--host", LOOPBACK,
               "--port", str(port), "--port-end", str(port + PORT_SPAN)]
    if tracker_port is not None:
        command += ["--tracker", f"{LOOPBACK}:{tracker_port}", "--key", key]
    log = log_dir / f"server-{key}.log"
    proc = _spawn(command, log, env)
    try:
        wait_for_port(port, ready_timeout, proc)
        if tracker_port is not None:
            wait_for_key(LOOPBACK, tracker_port, key, ready_timeout)
    except UserError:
        stop_pid(proc.pid)
        raise
    return Service(f"server-{key}", proc.pid, port, str(log))


def tracker_keys(host: str, port: int, timeout: float = 5.0) -> dict[str, int]:
    """{key: free servers} as the tracker reports them; UserError when no tracker answers."""
    from tvm import rpc
    from tvm.rpc.base import RPC_TRACKER_MAGIC

    try:
        wait_for_port(port, timeout, host=host)
    except UserError as err:
        raise UserError(f"No RPC tracker: {err} Start one (python -m tvm.exec.rpc_tracker --host 127.0.0.1 "
                        f"--port {port} --port-end {port + PORT_SPAN}) or fix --rpc-tracker.") from None
    not_a_tracker = UserError(f"{host}:{port} answers but is not a TVM RPC tracker: fix --rpc-tracker.")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:  # bounded handshake first
            sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            reply = sock.recv(4, socket.MSG_WAITALL)
        if len(reply) != 4 or struct.unpack("<i", reply)[0] != RPC_TRACKER_MAGIC:
            raise not_a_tracker
        summary = rpc.connect_tracker(host, port).summary()
    except (OSError, RuntimeError) as err:
        if isinstance(err, TimeoutError):
            raise not_a_tracker from None
        raise UserError(f"The RPC tracker at {host}:{port} stopped answering ({err}). Restart it, "
                        f"then the device's RPC server, and run again.") from None
    keys: dict[str, int] = {}
    for info in summary.get("server_info", []):
        key = info["key"].split(":", 1)[-1] if info["key"].startswith("server:") else info["key"]
        keys[key] = keys.get(key, 0) + 1
    for key, queue in summary.get("queue_info", {}).items():
        keys.setdefault(key, queue.get("free", 0))
    return keys


def wait_for_key(host: str, port: int, key: str, timeout: float) -> None:
    """Bounded wait for a server of `key` to register with the tracker."""
    deadline = time.monotonic() + timeout
    while True:
        keys = tracker_keys(host, port)
        if keys.get(key):
            return
        if time.monotonic() >= deadline:
            known = ", ".join(f"{k} ({n})" for k, n in sorted(keys.items())) or "none"
            raise UserError(
                f"No device is registered under RPC key {key!r} at the tracker {host}:{port} after "
                f"{timeout:.0f} s (keys there: {known}). Start the device's RPC server with --key {key}, "
                f"or pass the right --rpc-key."
            )
        time.sleep(0.5)
