"""TVM RPC tracker and servers as child processes on 127.0.0.1: free ports, readiness, stop by PID.

A TVM RPC server runs whatever code it is sent, so everything started here binds to loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.rpc_tracker import LOOPBACK, PORT_SPAN, tracker_keys, wait_for_key, wait_for_port

BOARD_SERVER = Path(__file__).resolve().parent / "board_server.py"



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
                 env: dict | None = None, ready_timeout: float = 60, name: str | None = None) -> Service:
    """A TVM RPC server (deploy/board_server.py: TVM's, plus LiteRT timing) on loopback; registered
    under `key` when a tracker port is given. `name`
    (default server-<key>) tells apart several servers of one key."""
    name = name or f"server-{key}"
    port = free_port_span()
    command = [*(python or [sys.executable]), str(BOARD_SERVER), "--host", LOOPBACK,
               "--port", str(port), "--port-end", str(port + PORT_SPAN)]
    if tracker_port is not None:
        command += ["--tracker", f"{LOOPBACK}:{tracker_port}", "--key", key]
    log = log_dir / f"{name}.log"
    registered = tracker_keys(LOOPBACK, tracker_port).get(key, 0) if tracker_port is not None else 0
    proc = _spawn(command, log, env)
    try:
        if tracker_port is None:
            wait_for_port(port, ready_timeout, proc)
        else:  # registered (this one too, not only an earlier server of the key) means listening; a
            # probe of its port instead makes TVM's server drop its registration and retry seconds later
            wait_for_key(LOOPBACK, tracker_port, key, ready_timeout, at_least=registered + 1, process=proc)
    except UserError:
        stop_pid(proc.pid)
        raise
    return Service(name, proc.pid, port, str(log))
