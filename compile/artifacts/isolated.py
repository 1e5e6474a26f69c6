"""Run a step that enters TVM's native code in a child process, so a crash there (a segfault in the
converter or the compiler on some file) becomes a clear error instead of taking the command with it.

The child's progress lines come back through a queue; its UserError comes back as a UserError; any
other exception comes back as IsolatedFailure carrying the child's traceback (a bug: exit 3). Its
standard error is kept and passed on without the native log lines of TVM's C++ side (such as
"BlockBuilder destroyed with remaining blocks!" after a converter error), which say nothing a user
can act on and would bury the one-paragraph error.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import signal
import sys
import tempfile
import traceback

from mnv2_edge.targets.errors import UserError


class IsolatedFailure(RuntimeError):
    """An unexpected exception in the child; str() holds its traceback."""


NATIVE_LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+\.(cc|h):\d+: ")


def _child(fn, args, kwargs, messages, results, stderr_path) -> None:
    os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    try:
        results.send(("ok", fn(*args, progress=messages.put, **kwargs)))
    except UserError as err:
        results.send(("user", str(err)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        results.send(("bug", traceback.format_exc()))
    finally:
        results.close()


def call(fn, *args, what: str, progress=print, **kwargs):
    """fn(*args, progress=..., **kwargs) in a spawned child; `what` names the step for errors."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    receiver, sender = context.Pipe(duplex=False)
    stderr_file = tempfile.NamedTemporaryFile(prefix="mnv2-edge-", suffix=".stderr", delete=False)
    stderr_file.close()
    process = context.Process(target=_child, args=(fn, args, kwargs, messages, sender, stderr_file.name),
                              daemon=True)
    process.start()
    sender.close()
    outcome = None
    try:
        while outcome is None:
            _relay(messages, progress)
            if receiver.poll(0.2):
                try:
                    outcome = receiver.recv()
                except EOFError:  # the child died without a word: a native crash
                    break
            elif not process.is_alive() and not receiver.poll(0):
                break
        process.join(30)
        _relay(messages, progress)
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
        _pass_on_stderr(stderr_file.name)
    if outcome is None:
        code = process.exitcode
        name = signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"
        raise UserError(
            f"TVM crashed ({name}) while {what}: its native code failed on this input, so no artifact was "
            f"written. If it is a file of yours, check that LiteRT runs it; try --int8-lowering float for a "
            f"quantized file; and report the file to Apache TVM with this message.")
    kind, value = outcome
    if kind == "user":
        raise UserError(value)
    if kind == "bug":
        raise IsolatedFailure(f"{what} failed:\n{value}")
    return value


def _pass_on_stderr(path: str) -> None:
    try:
        with open(path, errors="replace") as captured:
            for line in captured:
                if not NATIVE_LOG_LINE.match(line):
                    sys.stderr.write(line)
    finally:
        os.unlink(path)


def _relay(messages, progress) -> None:
    while True:
        try:
            progress(messages.get_nowait())
        except queue.Empty:
            return
