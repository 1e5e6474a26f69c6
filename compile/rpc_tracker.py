"""Asking a TVM RPC tracker or server whether it is there and what is registered: bounded waits,
clear errors. Used by the tuner (compile) and the deploy harness alike."""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
import time

from mnv2_edge.targets.errors import UserError

LOOPBACK = "127.0.0.1"
PORT_SPAN = 10  # TVM's servers need --port-end; they take the first free port of the span


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


def tracker_keys(host: str, port: int, timeout: float = 5.0) -> dict[str, int]:
    """{key: servers registered under it, busy or free} as the tracker reports them; UserError when
    no tracker answers."""
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


def wait_for_key(host: str, port: int, key: str, timeout: float, at_least: int = 1,
                 process: subprocess.Popen | None = None) -> None:
    """Bounded wait for `at_least` servers of `key` to be registered with the tracker (and for
    `process`, the server being started, to stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise UserError(f"An RPC server meant to register under {key!r} exited with code {process.returncode}.")
        keys = tracker_keys(host, port)
        if keys.get(key, 0) >= at_least:
            return
        if time.monotonic() >= deadline:
            known = ", ".join(f"{k} ({n})" for k, n in sorted(keys.items())) or "none"
            raise UserError(
                f"No device is registered under RPC key {key!r} at the tracker {host}:{port} after "
                f"{timeout:.0f} s (keys there: {known}). Start the device's RPC server with --key {key}, "
                f"or pass the right --rpc-key."
            )
        time.sleep(0.5)
