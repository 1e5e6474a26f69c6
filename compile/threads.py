"""The TVM runtime's thread pool: set it and read it back, here or on a board over RPC.

TVM's pool takes its size cap when it starts: TVM_NUM_THREADS, else every core on ARM but half of
them on x86 (it assumes hyper-threading: one thread on a 2-core machine). After that,
`runtime.config_threadpool` can lower the count but never raise it past the cap. So everything here
that runs or measures a model sets the variable before the pool starts (this process, worker
processes, tuning runners), sets the count, and reads back what the runtime really runs. The pool's
spin count (SPIN_COUNT) is set the same way, and apps are told both (the manifest's `app`).
"""

from __future__ import annotations

import os

ENV = "TVM_NUM_THREADS"
# How long TVM's idle workers spin (yielding) before they sleep, read when the pool starts. TVM's
# default, 300000 yields, keeps a worker busy long after an inference: in the benchmark LiteRT ran
# 2x slower (7.1 against 3.4 ms, 1.0/224 float32) in turns right after ours, and an app's own threads
# would lose that core too. 10000 outlasts the gaps between kernels: our inference was as fast or
# faster (3.55 against 3.72 ms; 0 spins: 4.5 ms). znver4, one run of three settings each, 2026-11-27.
SPIN_ENV, SPIN_COUNT = "TVM_THREAD_POOL_SPIN_COUNT", 10000


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
    os.environ.setdefault(SPIN_ENV, str(SPIN_COUNT))  # a value of the user's own stays
    return configure_threads(tvm.get_global_func, count)


def profile_threads(profile) -> int | None:
    """The threads a profile's CPU code should run: its num-cores."""
    return profile.cpu_target.get("num-cores")
