"""Load, run and time one artifact on a device, in a worker process the caller can kill.

A frozen device blocks TVM's RPC client forever (the session timeout is enforced by the server), so
the remote calls run in a spawned worker; when it overruns its deadline it is killed and the variant
is marked failed, with nothing else lost.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TimingSettings:
    number: int = 10  # runs per timed repeat (averaged)
    repeat: int = 20  # timed repeats: the statistics are over these
    min_repeat_ms: int = 0  # grow `number` until one repeat lasts this long
    cooldown_ms: int = 0  # pause between repeats (thermal throttling on phones)
    warmup: int = 1  # untimed runs before timing (the first one is reported)
    threads: int | None = None  # the runtime's thread pool on the device (None: TVM's default)


def fit_timing(number: int, repeat: int, seconds_per_run: float, budget_seconds: float) -> tuple[int, int]:
    """(number, repeat) that fit the budget at the measured time per run: fewer runs per repeat
    first, then fewer repeats (at least 3, for a median), so a slow device (or the emulated board)
    is timed within --timeout instead of being abandoned as frozen."""
    if seconds_per_run <= 0 or number * repeat * seconds_per_run <= budget_seconds:
        return number, repeat
    number = max(1, min(number, int(budget_seconds / (repeat * seconds_per_run))))
    if number * repeat * seconds_per_run > budget_seconds:  # never below 3 repeats, nor above what was asked
        repeat = max(min(3, repeat), min(repeat, int(budget_seconds / seconds_per_run)))
    return number, repeat


class DeviceError(Exception):
    """The device failed, froze or went away during a variant; the message says which."""


def _work(endpoint, library: str, remote_name: str, kind: str, input_sets, settings: TimingSettings,
          timeout: float) -> dict:
    from deploy import runner
    from deploy.session import LocalSession

    begin = time.perf_counter()
    session = LocalSession() if endpoint is None else endpoint.open()
    threads = session.set_threads(settings.threads)
    started = time.perf_counter()
    module = session.load(library, remote_name)
    device = session.device(kind)
    vm = runner.load_vm(module, device)
    load_seconds = time.perf_counter() - started
    outputs = []
    warmup_ms = None
    for values in input_sets:
        begun = time.perf_counter()
        outputs.append(runner.run(vm, device, values))
        warmup_ms = warmup_ms if warmup_ms is not None else (time.perf_counter() - begun) * 1e3
    for _ in range(max(settings.warmup - 1, 0)):
        vm.invoke_stateful("main")
    begun = time.perf_counter()  # one more untimed run, warm, sizes the timed ones
    vm.invoke_stateful("main")
    per_run = time.perf_counter() - begun
    samples = []
    # Half of what is left of --timeout for the timed runs: the rest is the margin for a slow device.
    number, repeat = fit_timing(settings.number, settings.repeat, per_run,
                                (timeout - (time.perf_counter() - begin)) / 2)
    if repeat > 0:
        timer = vm.time_evaluator("invoke_stateful", device, number=number, repeat=repeat,
                                  min_repeat_ms=settings.min_repeat_ms, cooldown_interval_ms=settings.cooldown_ms)
        samples = list(timer("main").results)
    session.close()
    return {"outputs": outputs, "load_seconds": load_seconds, "warmup_ms": warmup_ms, "samples": samples,
            "threads": threads, "timed": {"number": number, "repeat": repeat}}


def _worker(connection, *args) -> None:
    try:
        connection.send({"ok": _work(*args)})
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent as text
        message = str(err).strip().splitlines()
        connection.send({"error": f"{type(err).__name__}: {message[-1] if message else ''}".strip(),
                         "trace": traceback.format_exc()})
    finally:
        connection.close()


def run_on_device(endpoint, library: Path, remote_name: str, kind: str, input_sets, settings: TimingSettings,
                  timeout: float) -> dict:
    """outputs per input set, load_seconds, warmup_ms, timing samples (seconds per run), the
    threads the device's runtime ran, and the number and repeat timed (fitted to the timeout)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(sender, endpoint, str(library), remote_name, kind,
                                                     input_sets, settings, timeout), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise DeviceError(f"no answer from the device within {timeout:.0f} s (frozen or far too slow); "
                              f"the run was abandoned. Raise --timeout for slow boards.")
        try:
            message = receiver.recv()
        except EOFError:
            raise DeviceError(f"the worker talking to the device died (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
    if "error" in message:
        raise DeviceError(message["error"])
    return message["ok"]

