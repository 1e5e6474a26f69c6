"""Load, run and time one artifact on a device, in a worker process the caller can kill.

A frozen device blocks TVM's RPC client forever (the session timeout is enforced by the server), so
the remote calls run in a spawned worker; when it overruns its deadline it is killed and the variant
is marked failed, with nothing else lost.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TimingSettings:
    number: int = 10  # runs per timed repeat (averaged)
    repeat: int = 20  # timed repeats: the statistics are over these
    min_repeat_ms: int = 0  # grow `number` (for both runtimes) until a repeat of the faster lasts this long
    cooldown_ms: int = 0  # pause between repeats, for both runtimes (thermal throttling on phones)
    warmup: int = 1  # untimed runs before timing (the first one is reported)
    threads: int | None = None  # the runtime's thread pool on the device (None: TVM's default)
    litert: bool = True  # also time LiteRT on the device, same file, inputs and threads, where it can


class Interrupted(Exception):
    """The worker was stopped by Ctrl-C: nothing was measured, nothing is to be recorded."""


# What a board that died or dropped its connection makes TVM's RPC client say.
LOST_BOARD_SIGNS = ("kShutdown", "Connection reset", "Connection refused", "Broken pipe", "Socket", "EOF")


class DeviceError(Exception):
    """The device failed, froze or went away during a variant; the message says which, `board` where.
    `board_lost`: the board died, froze or dropped the connection (another board may do the work),
    rather than failing on this model (which any board would)."""

    def __init__(self, message: str, board: str = "", board_lost: bool | None = None):
        super().__init__(message)
        self.board = board
        self.board_lost = any(sign in message for sign in LOST_BOARD_SIGNS) if board_lost is None else board_lost


SILENCE_S = 15.0  # no report for this long during the timed runs (and 4 shares' time): frozen


def _load_litert(session, report, model: Path, inputs, threads: int | None):
    """(LiteRT's timer on the session's device, seconds of one warm run, "") on the same file, inputs
    and threads as ours; or (None, 0, why not)."""
    from mnv2_edge.deploy import comparison

    function, why = session.litert_timer()
    if function is None:
        return None, 0.0, why
    report({"quiet": True})  # loading LiteRT and the model on the board: no heartbeat until timed
    try:
        return comparison.litert_timer(function, Path(model).read_bytes(), inputs, threads or 0)
    except Exception as err:  # noqa: BLE001 - LiteRT failing on the board leaves our measurement standing
        from mnv2_edge.targets.errors import last_line

        return None, 0.0, f"LiteRT failed on the device ({type(err).__name__}: {last_line(err)})"


def _work(report, endpoint, library: str, remote_name: str, kind: str, input_sets, settings: TimingSettings,
          timeout: float, model: str | None) -> dict:
    """Runs in the worker process; report(dict) tells the sweep how far it got (its heartbeat)."""
    from mnv2_edge.deploy import comparison, runner
    from mnv2_edge.deploy.session import LocalSession

    session = LocalSession() if endpoint is None else endpoint.open()  # may wait in the tracker's queue
    report({"board": session.board})
    begin = time.perf_counter()  # --timeout counts from here, once a board is ours
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
    timers = {"ours": comparison.tvm_timer(vm, device)}
    per_run = {"ours": time.perf_counter() - begun}
    litert_note = "not asked for"
    if settings.litert and model and kind == "cpu":
        timer, seconds, litert_note = _load_litert(session, report, Path(model), input_sets[0], threads)
        if timer is not None:
            timers["LiteRT"], per_run["LiteRT"] = timer, seconds
    elif settings.litert and kind != "cpu":
        litert_note = "LiteRT is timed on the CPU; this model runs on the GPU"
    # Half of what is left of --timeout for the timed runs of both: the rest is the margin for a slow
    # device. One plan for both (deploy/comparison.py): the same runs, turns and cooldown.
    plan = comparison.plan(settings.number, settings.repeat, per_run, (begin + timeout - time.perf_counter()) / 2,
                           settings.min_repeat_ms, settings.cooldown_ms)
    report({"timing": max(plan.share_seconds(seconds) for seconds in per_run.values()), "plan": vars(plan),
            "runtimes": list(timers)})
    samples = comparison.interleave(timers, plan, report)
    session.close()
    return {"outputs": outputs, "load_seconds": load_seconds, "warmup_ms": warmup_ms, "samples": samples["ours"],
            "threads": threads, "timed": {"number": plan.number, "repeat": plan.samples, "turns": plan.turns},
            "board": session.board, "litert": samples.get("LiteRT", []),
            "litert_note": "" if "LiteRT" in samples else litert_note}


def _worker(connection, *args) -> None:
    try:
        connection.send({"ok": _work(connection.send, *args)})
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent as text
        message = str(err).strip().splitlines()
        connection.send({"error": f"{type(err).__name__}: {message[-1] if message else ''}".strip(),
                         "trace": traceback.format_exc()})
    finally:
        connection.close()


def run_on_device(endpoint, library: Path, remote_name: str, kind: str, input_sets, settings: TimingSettings,
                  timeout: float, model: Path | None = None, progress=None) -> dict:
    """outputs per input set, load_seconds, warmup_ms, timing samples (seconds per run), the
    threads the device's runtime ran, the number and repeat timed (fitted to the timeout), and the
    board. A device that stops reporting during the timed runs is abandoned early (heartbeat).
    progress(str), if given, hears when each runtime's timed runs start, and on which board."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(sender, endpoint, str(library), remote_name, kind,
                                                     input_sets, settings, timeout,
                                                     None if model is None else str(model)), daemon=True)
    process.start()
    sender.close()
    deadline = time.monotonic() + timeout
    board, silence, chunk = "", None, 0.0  # silence: the longest quiet time allowed once the timed runs start
    try:
        while True:
            wait = deadline - time.monotonic()
            if silence is not None:
                wait = min(wait, silence)
            if wait <= 0 or not receiver.poll(wait):
                where = f" {board}" if board else ""
                if silence is not None and time.monotonic() < deadline:
                    raise DeviceError(f"the board{where} stopped answering during the timed runs (no word for "
                                      f"{silence:.0f} s, where a chunk of runs takes {chunk:.1f} s): frozen; "
                                      f"the run was abandoned without waiting for --timeout.", board, True)
                raise DeviceError(f"no answer from the device{where} within {timeout:.0f} s (frozen or far too "
                                  f"slow); the run was abandoned. Raise --timeout for slow boards.", board, True)
            try:
                message = receiver.recv()
            except EOFError:
                process.join(2)
                if process.exitcode == -signal.SIGINT:
                    raise Interrupted() from None
                raise DeviceError(f"the worker talking to the device died (exit code {process.exitcode})", board,
                                  True) from None
            if "board" in message:  # a board is ours: --timeout counts from now, not from the queue
                board, deadline = message["board"], time.monotonic() + timeout
            if "timing" in message:
                chunk = message["timing"]
                silence = max(SILENCE_S, 4 * chunk)
                if progress is not None:
                    plan = message["plan"]
                    progress(f"timed runs started on {board or 'this machine'} ({' and '.join(message['runtimes'])}: "
                             f"{plan['samples']} samples of {plan['number']} runs each, in {plan['turns']} "
                             f"interleaved turns)")
            if message.get("quiet"):  # a step that reports nothing until done: only --timeout applies
                silence = None
            if "ok" in message or "error" in message:
                break
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
    if "error" in message:
        if message["error"].startswith("KeyboardInterrupt"):
            raise Interrupted()
        raise DeviceError(message["error"], board)
    return message["ok"]
