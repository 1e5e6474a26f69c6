"""Where a built model runs: this process (LocalSession) or a remote TVM RPC server (see rpc_sessions)."""

from __future__ import annotations

from pathlib import Path


class LocalSession:
    """This machine's CPU, no RPC: for the `host` target."""

    name = "local"

    def load(self, library: str | Path):
        import tvm

        return tvm.runtime.load_module(str(library))

    def device(self, kind: str = "cpu"):
        import tvm

        return tvm.device(kind, 0)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
