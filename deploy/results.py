"""One result per variant run, like TFLite's BenchmarkResults; appended to results.jsonl as it ends
(the file keeps every run's results; a report covers one run)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LatencyStats:
    mean_ms: float
    median_ms: float
    p90_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int
    p10_ms: float | None = None  # beside the median (deploy/comparison.py); absent in older results

    @classmethod
    def from_seconds(cls, samples: list[float]) -> "LatencyStats":
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        return cls(float(ms.mean()), float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.std()),
                   float(ms.min()), float(ms.max()), len(ms), float(np.percentile(ms, 10)))


@dataclass
class BenchmarkResult:
    name: str  # artifact name, e.g. mnv2_1_224_float32
    target: str
    device: str  # session label: tracker/key, direct address, ssh, local
    width: float | None
    resolution: int | None
    dtype: str | None
    status: str  # ok, mismatch, failed
    error: str = ""
    macs: int | None = None
    params: int | None = None
    model_size_bytes: int | None = None
    library_size_bytes: int | None = None
    load_seconds: float | None = None  # upload + load + VM creation
    warmup_ms: float | None = None  # the first run
    latency: LatencyStats | None = None
    gmacs_per_second: float | None = None
    threads: int | None = None  # the device runtime's thread pool while timed
    timing: dict = field(default_factory=dict)  # number, repeat, min_repeat_ms, cooldown_ms, warmup, threads
    timed: dict = field(default_factory=dict)  # number and repeat run: fewer when a slow device needs it
    verification: list[dict] = field(default_factory=list)
    tuning: dict = field(default_factory=dict)
    emulated: bool = False
    library_sha256: str | None = None  # the exact code measured
    litert: LatencyStats | None = None  # LiteRT on the same device, file, inputs and threads
    litert_note: str = ""  # why LiteRT was not timed there
    board: str = ""  # the server that measured it (its address): boards of one key share the key's results
    retried: list[str] = field(default_factory=list)  # earlier attempts on other boards that failed, and why
    # ours and LiteRT on the profile's simulated core (deploy/simulated_core), where asked: an estimate
    estimate: dict = field(default_factory=dict)
    board_lost: bool = False  # failed because the board died or froze (not because of the model)
    finished_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def measurement(self) -> tuple:
        """What was measured: the same key means the same code, database, timing and device, so a
        rerun may keep the result; any difference (a rebuilt library, new tuning) is measured again."""
        return measurement_key(self.target, self.device, self.name, self.library_sha256,
                               (self.tuning or {}).get("fingerprint"), self.timing)

    @property
    def vs_litert(self) -> float | None:
        """Our median over LiteRT's on the same device: below 1 is faster than LiteRT."""
        if self.latency and self.litert:
            return self.latency.median_ms / self.litert.median_ms
        return None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchmarkResult":
        data = dict(data)
        for stats in ("latency", "litert"):
            if data.get(stats):
                data[stats] = LatencyStats(**data[stats])
        return cls(**data)


def measurement_key(target: str, device: str, name: str, library_sha256: str | None, tuning_fingerprint: str | None,
                    timing: dict) -> tuple:
    return (target, device, name, library_sha256, tuning_fingerprint, json.dumps(timing, sort_keys=True))


def append(path: Path, result: BenchmarkResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps(result.to_dict()) + "\n")
        out.flush()


def load(path: Path) -> list[BenchmarkResult]:
    """Every complete line of a results.jsonl (the history of every run): the last result per
    measurement wins."""
    if not path.exists():
        return []
    latest: dict[tuple, BenchmarkResult] = {}
    for line in path.read_text().splitlines():
        try:
            result = BenchmarkResult.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut by a crash: that variant is simply run again
        latest[result.measurement] = result
    return list(latest.values())
