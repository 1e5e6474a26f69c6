"""The TVM runtime's thread pool: set it and read it back, here or on a board over RPC.

TVM's pool takes its size cap when it starts: TVM_NUM_THREADS, else every core on ARM but half of
them on x86 (it assumes hyper-threading: one thread on a 2-core machine). After that,
`runtime.config_threadpool` can lower the count but never raise it past the cap. So everything here
that runs or measures a model sets the variable before the pool starts (this process, worker
processes, tuning runners), sets the count, and reads back what the runtime really runs.
"""

from __future__ import annotations

import os

ENV = "TVM_NUM_THREADS"


def configure_threads(get_function, count: int | None) -> int:
    """Ask a runtime for `count` threads (None leaves it as it is) and return what it runs.

    `get_function` looks up a global function of that runtime: `tvm.get_global_func` here, or an RPC
    session's `get_function`, so a board's pool is set whoever started its server (a server started
    with a lower TVM_NUM_THREADS keeps that cap: the returned count tells)."""
    if count:
        get_function("runtime.config_threadpool")(1, int(count))  # 1: the big cores first
    return int(get_function("runtime.NumThreads")())


def set_local_threads(count: int | None) -> int:
    """This process's pool: the cap (effective if the pool has not started yet), then the count."""
    import tvm

    if count:
        os.environ[ENV] = str(count)
    return configure_threads(tvm.get_global_func, count)


def profile_threads(profile) -> int | None:
    """The threads a profile's CPU code should run: its num-cores."""
    return profile.cpu_target.get("num-cores")
