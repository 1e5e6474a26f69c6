"""How to reach a device: this process, a tracker key, a direct RPC address, or SSH (see ssh_tunnel).

A session uploads a library, loads it, and names the device it runs on. Remote sessions are plain
data (`Endpoint`) so a worker process can open them: every remote call runs in a worker that the
sweep can kill when a device freezes (see measure.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_SESSION_TIMEOUT = 600  # seconds a server keeps one session; slow boards need minutes


class LocalSession:
    """This machine's CPU, no RPC: for the `host` target."""

    name = "local"
    board = "local"

    def load(self, library: str | Path, remote_name: str | None = None):
        import tvm

        return tvm.runtime.load_module(str(library))

    def device(self, kind: str = "cpu"):
        import tvm

        return tvm.device(kind, 0)

    def set_threads(self, count: int | None) -> int:
        from mnv2_edge.compile.threads import set_local_threads

        return set_local_threads(count)

    def litert_timer(self):
        """(LiteRT timing function, ""): LiteRT in this process (the function itself says when
        LiteRT is not installed)."""
        import tvm

        from mnv2_edge.deploy import board_server

        board_server.register_litert_timer()
        return tvm.get_global_func(board_server.FUNCTION), ""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


TRACKER_ATTEMPTS = 5  # connections to the server a tracker matched, as TVM's TrackerSession.request


@dataclass(frozen=True)
class Endpoint:
    """A remote RPC server: through a tracker (key) or at a direct address."""

    host: str
    port: int
    key: str | None = None  # set: host:port is a tracker
    session_timeout: int = DEFAULT_SESSION_TIMEOUT

    @property
    def label(self) -> str:
        return f"tracker {self.host}:{self.port} key {self.key}" if self.key else f"rpc {self.host}:{self.port}"

    def check(self, wait: float) -> None:
        """Bounded checks that the device is there (UserError if not): the tracker has a server under
        the key, or the direct server accepts connections."""
        from mnv2_edge.compile.rpc_tracker import wait_for_key, wait_for_port

        if self.key:
            wait_for_key(self.host, self.port, self.key, wait)
        else:
            wait_for_port(self.port, wait, host=self.host)

    def open(self) -> "RemoteSession":
        from tvm import rpc

        if not self.key:
            remote = rpc.connect(self.host, self.port, session_timeout=self.session_timeout)
            return RemoteSession(remote, self.label, f"{self.host}:{self.port}")
        # TrackerSession.request's own exchange, keeping the address of the server the tracker
        # matched: with several boards under one key, each result names the board that measured it.
        # Retried as TrackerSession.request retries: a board's server can drop the connection the
        # tracker handed out (it restarts after each session), and the tracker matches again.
        import time

        from tvm.rpc import base

        for attempt in range(1, TRACKER_ATTEMPTS + 1):
            tracker = rpc.connect_tracker(self.host, self.port)
            try:
                base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, self.key, "", 1])
                reply = base.recvjson(tracker._sock)
            finally:
                tracker.close()
            if reply[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"the tracker refused the request for key {self.key!r}: {reply}")
            address, port, match_key = reply[1]
            try:
                remote = rpc.connect(address, port, match_key, self.session_timeout)
            except (OSError, RuntimeError):
                if attempt == TRACKER_ATTEMPTS:
                    raise
                time.sleep(0.5 * attempt)
                continue
            return RemoteSession(remote, self.label, f"{address}:{port}")


class RemoteSession:
    def __init__(self, remote, name: str, board: str):
        self.remote, self.name = remote, name
        self.board = board  # the server's address: which board of a key measured

    def load(self, library: str | Path, remote_name: str | None = None):
        # A unique remote name per artifact: the server's dlopen would hand back an older
        # library loaded under the same path.
        remote_name = remote_name or Path(library).name
        self.remote.upload(str(library), target=remote_name)
        return self.remote.load_module(remote_name)

    def device(self, kind: str = "cpu"):
        return self.remote.device(kind, 0)

    def set_threads(self, count: int | None) -> int:
        """The board's runtime pool, whoever started its server (see compile/threads.py)."""
        from mnv2_edge.compile.threads import configure_threads

        return configure_threads(self.remote.get_function, count)

    def litert_timer(self):
        """(the board's LiteRT timing function, "") when its server is deploy/board_server.py; else
        (None, why)."""
        from mnv2_edge.deploy.board_server import FUNCTION

        try:
            return self.remote.get_function(FUNCTION), ""
        except Exception:  # noqa: BLE001 - TVM raises its own error types for a missing remote function
            return None, ("the board runs TVM's stock RPC server: start deploy/board_server.py there instead "
                          "to time LiteRT on the board")

    def close(self) -> None:
        self.remote = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
