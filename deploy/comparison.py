"""One protocol for timing our runtime against LiteRT, the same on a board (the sweep) and on this
machine (benchmarks/tuned_vs_litert.py), so that a ratio means the same thing wherever it is printed.

- Both runtimes run the same file, inputs and threads, with untimed runs for WARMUP_MS before each
  share of a turn (at least one): after even 50 ms idle, a 2-core VM (measured on the Intel Xeon
  here) runs the next inferences of a 2-thread pool at 1-thread speed for about 10 ms, whichever
  runtime comes first; TVM's pool workers, which spin on after an inference, go idle within it too.
- Both get the same `number` (runs averaged per sample), the same number of samples and the same
  cooldown between samples; --min-repeat-ms grows `number` for both alike.
- The samples are taken in turns, interleaved: in each turn every runtime takes its share back to
  back, the order rotated from turn to turn (ours first, then LiteRT first, ...), so a slow phase of
  the machine falls on both. A short pause separates one runtime's share from the next.
- The headline is the median of each runtime's samples, and the ratio of the medians; the 10th
  percentile, p90, min and max stand beside it (results.LatencyStats).

A timer is a function (number, samples, cooldown_ms) -> seconds per run of each sample, after its
own untimed runs: ours wraps TVM's time_evaluator, LiteRT's the board server's `mnv2.litert`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable

Timer = Callable[[int, int, int], list[float]]

PAUSE_S = 0.005  # between one runtime's share and the next
WARMUP_MS = 25  # untimed runs before each share, for at least this long (at least one run)
TURNS = 10  # turns the samples are taken in (at most one sample per turn and runtime)
HEARTBEAT_S = 5.0  # a runtime's share of a turn lasts at most about this long (the sweep's heartbeat)


@dataclass(frozen=True)
class Plan:
    """How a comparison runs: `number` runs per sample, `samples` per runtime, in `turns` turns."""

    number: int
    samples: int
    turns: int
    cooldown_ms: int = 0

    def share(self, turn: int) -> int:
        """Samples per runtime in turn `turn` (the first turns take one more where they do not divide)."""
        return self.samples // self.turns + (turn < self.samples % self.turns)

    def share_seconds(self, seconds_per_run: float) -> float:
        """The longest share of one runtime, in seconds, at that time per run."""
        return self.share(0) * (self.number * seconds_per_run + self.cooldown_ms / 1e3)


def fit(number: int, samples: int, seconds_per_run: float, budget_seconds: float) -> tuple[int, int]:
    """(number, samples) that fit the budget at `seconds_per_run` (both runtimes' together): fewer runs
    per sample first, then fewer samples (at least 3, for a median), so a slow device (or the emulated
    board) is timed within --timeout instead of being abandoned as frozen."""
    if seconds_per_run <= 0 or number * samples * seconds_per_run <= budget_seconds:
        return number, samples
    number = max(1, min(number, int(budget_seconds / (samples * seconds_per_run))))
    if number * samples * seconds_per_run > budget_seconds:  # never below 3 samples, nor above what was asked
        samples = max(min(3, samples), min(samples, int(budget_seconds / seconds_per_run)))
    return number, samples


def plan(number: int, samples: int, seconds_per_run: dict[str, float], budget_seconds: float,
         min_repeat_ms: int = 0, cooldown_ms: int = 0) -> Plan:
    """The plan for runtimes whose warm runs took `seconds_per_run` each: `number` grown alike for all
    until a sample of the fastest lasts min_repeat_ms, then fitted to the budget, in enough turns
    that no share outlasts the heartbeat."""
    fastest = min(seconds_per_run.values())
    if min_repeat_ms and fastest > 0:
        number = max(number, math.ceil(min_repeat_ms / 1e3 / fastest))
    total = sum(seconds_per_run.values()) + len(seconds_per_run) * cooldown_ms / 1e3 / max(number, 1)
    number, samples = fit(number, samples, total, budget_seconds)
    slowest = max(seconds_per_run.values())
    turns = min(samples, max(TURNS, math.ceil(samples * (number * slowest + cooldown_ms / 1e3) / HEARTBEAT_S)))
    return Plan(number, samples, turns, cooldown_ms)


def interleave(timers: dict[str, Timer], run_plan: Plan, report=lambda message: None) -> dict[str, list[float]]:
    """Each runtime's seconds per run, one per sample, taken in the plan's turns with the order rotated
    every turn and a pause between shares; report({"timed": ...}) after every share (a heartbeat)."""
    names = list(timers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(run_plan.turns):
        share = run_plan.share(turn)
        if share == 0:
            break
        for offset in range(len(names)):
            name = names[(turn + offset) % len(names)]
            samples[name] += timers[name](run_plan.number, share, run_plan.cooldown_ms)[:share]
            report({"timed": {k: len(v) for k, v in samples.items()}})
            time.sleep(PAUSE_S)
    return samples


def tvm_timer(vm, device) -> Timer:
    """Ours: TVM's time_evaluator over the VM's stateful call, inputs already set."""

    def timer(number: int, count: int, cooldown_ms: int) -> list[float]:
        begun = time.perf_counter()  # untimed: the cores and caches warm after the other runtime's share
        while True:
            vm.invoke_stateful("main")
            if time.perf_counter() - begun >= WARMUP_MS / 1e3:
                break
        evaluate = vm.time_evaluator("invoke_stateful", device, number=number, repeat=count,
                                     cooldown_interval_ms=cooldown_ms)
        return list(evaluate("main").results)

    return timer


def litert_timer(function, model: bytes, inputs: list, threads: int) -> tuple[Timer | None, float, str]:
    """LiteRT through the board server's function (deploy/board_server.py, here or on the board), on
    `inputs` (arrays, sent once as an .npz): (timer, seconds of one warm run, "") once the model is
    loaded there, or (None, 0, why not)."""
    import io

    import numpy as np

    packed = io.BytesIO()
    np.savez(packed, *inputs)
    warm = json.loads(function(bytearray(model), bytearray(packed.getvalue()), threads, 0, 0, 0, 0))
    if "error" in warm:
        return None, 0.0, warm["error"]

    def timer(number: int, count: int, cooldown_ms: int) -> list[float]:
        return json.loads(function(bytearray(), bytearray(), threads, number, count, cooldown_ms,
                                   WARMUP_MS))["samples"]

    return timer, warm["per_run"], ""
