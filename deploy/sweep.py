"""The sweep: for each variant, build (or reuse dist/), run on the device, check against LiteRT, time.

Results go to results.jsonl as each variant finishes, so an interrupted or failed sweep loses
nothing and a rerun skips what an identical measurement already covers. The reports (this run's
results) are rewritten at the end, also on Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.artifacts.manifest import LIBRARY, MODEL_COPY, Manifest
from mnv2_edge.compile.paths import DEFAULT_OUT
from mnv2_edge.compile.generation.images import model_inputs
from mnv2_edge.deploy import loopback, report, results
from mnv2_edge.deploy.measure import DeviceError, Interrupted, TimingSettings, run_on_device
from mnv2_edge.deploy.artifact_check import compare_with_litert
from mnv2_edge.deploy.session import Endpoint


@dataclass
class SweepConfig:
    target: str
    endpoint: Endpoint | None  # None: this machine, no RPC
    selection: pipeline.ModelSelection = field(default_factory=pipeline.ModelSelection)
    timing: TimingSettings = field(default_factory=TimingSettings)
    timeout: float = 300.0  # per variant, for everything done on the device
    key_wait: float = 10.0  # bounded wait for the tracker to offer the key
    verify_inputs: int = 1
    results: Path = Path("results")
    dist: Path = DEFAULT_OUT  # artifacts
    tuning_log: Path | None = None
    no_tuning: bool = False  # every kernel its default schedule, whatever database there is
    int8_lowering: str = "integer"  # quantized files: integer kernels, or TVM's float lowering
    device_label: str = ""
    emulated: bool = False
    remeasure: bool = False  # measure again even what an identical earlier measurement covers
    estimate: bool = False  # also ours and LiteRT on the profile's simulated core (an estimate)


def build_jobs(config: SweepConfig) -> list[tuple[str, pipeline.BuildRequest]]:
    """(label, build request) for each model of the sweep: the given files, or the variants."""
    return config.selection.requests(target=config.target, out=config.dist, tuning_log=config.tuning_log,
                                     no_tuning=config.no_tuning, int8_lowering=config.int8_lowering)


def _device_label(config: SweepConfig) -> str:
    return config.device_label or (config.endpoint.label if config.endpoint else "local")


TIMEOUT_MACS = 300e6  # --timeout is for a model of up to this much work (MobileNetV2 1.0/224)


def time_limit(config: SweepConfig, macs: int | None) -> float:
    """--timeout, scaled up for models of more multiply-adds than TIMEOUT_MACS (1.4/224 gets about
    twice as long), so one limit fits every variant of a sweep."""
    return config.timeout * max(1.0, (macs or 0) / TIMEOUT_MACS)


def _timing_record(config: SweepConfig) -> dict:
    """The timing asked for, part of what a result measured: --timeout included, since the runs are
    cut to fit it on a slow device (a longer --timeout measures more runs, so again)."""
    return {**vars(config.timing), "timeout_s": config.timeout}


def measure_variant(config: SweepConfig, out_dir: Path, progress=None) -> results.BenchmarkResult:
    manifest = Manifest.read(out_dir)
    variant = manifest.model.variant
    result = results.BenchmarkResult(
        name=manifest.name, target=config.target, device=_device_label(config),
        width=variant and variant.width, resolution=variant and variant.resolution, dtype=variant and variant.dtype,
        status="failed", macs=variant and variant.macs, params=variant and variant.params,
        model_size_bytes=manifest.model.size_bytes, library_size_bytes=manifest.library.size_bytes,
        timing=_timing_record(config), tuning=manifest.tuning, emulated=config.emulated,
        library_sha256=manifest.library.sha256,
    )
    input_sets = [model_inputs(manifest.inputs, seed) for seed in range(config.verify_inputs)]
    try:
        device = run_on_device(config.endpoint, out_dir / LIBRARY, f"{manifest.name}.so", manifest.app.device,
                               input_sets, config.timing, time_limit(config, variant and variant.macs),
                               out_dir / MODEL_COPY, progress)
    except DeviceError as err:
        result.error, result.board, result.board_lost = str(err), err.board, err.board_lost
        return result
    names = [t.name for t in manifest.outputs]
    checks = compare_with_litert(out_dir / MODEL_COPY, names, input_sets, device["outputs"], manifest.model.lowering)
    result.verification = [c.to_dict() for c in checks]
    result.load_seconds, result.warmup_ms = device["load_seconds"], device["warmup_ms"]
    result.threads, result.timed, result.board = device["threads"], device["timed"], device["board"]
    if device["litert"]:
        result.litert = results.LatencyStats.from_seconds(device["litert"])
    result.litert_note = device["litert_note"]
    if device["samples"]:
        result.latency = results.LatencyStats.from_seconds(device["samples"])
        if result.macs:
            result.gmacs_per_second = result.macs / (result.latency.median_ms * 1e-3) / 1e9
    if config.estimate:
        result.estimate = simulated_estimate(out_dir, config.target, progress)
    bad = [c for c in result.verification if not c["ok"]]
    result.status = "mismatch" if bad else "ok"
    result.error = "; ".join(f"{c['name']}: {c['problem']}" for c in bad)
    return result


def simulated_estimate(out_dir: Path, target: str, progress=None) -> dict:
    """Ours and LiteRT on the profile's simulated core, one thread: what the report shows beside an
    emulated board's (meaningless) wall time."""
    from mnv2_edge.deploy.simulated_core import estimate
    from mnv2_edge.targets.profiles import load_profile

    both = estimate.compare([out_dir], load_profile(target), progress or (lambda m: None))[0]
    return {"core": both.ours.core, "clock_ghz": both.ours.clock_ghz, "ours_ms": both.ours.ms,
            "litert_ms": both.litert.ms, "ratio": both.ratio, "note": estimate.LEAVES_OUT}


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _check_device(config: SweepConfig) -> None:
    """Bounded checks that the device is there: the tracker offers the key, or the server answers."""
    if config.endpoint is not None:
        config.endpoint.check(config.key_wait)


def _boards(config: SweepConfig) -> int:
    """How many boards measure at once: every server registered under the key (the tracker queues
    the requests and hands each a free one); one for a direct server or this machine."""
    endpoint = config.endpoint
    if endpoint is None or not endpoint.key:
        return 1
    return max(1, loopback.tracker_keys(endpoint.host, endpoint.port).get(endpoint.key, 1))


def measure_on_farm(config: SweepConfig, out_dir: Path, boards: int, step: str, progress) -> results.BenchmarkResult:
    """measure_variant; with several boards under the key, a variant whose board died or froze is
    measured again on another (the tracker never offers a board that did not come back), at most
    once per other board."""
    retried = []
    while True:
        result = measure_variant(config, out_dir, lambda message: progress(f"{step}: {message}"))
        result.retried = retried
        if result.status != "failed" or boards < 2 or len(retried) >= boards - 1:
            return result
        endpoint = config.endpoint
        try:  # another board still registered: the tracker queues the request until one is free
            loopback.wait_for_key(endpoint.host, endpoint.port, endpoint.key, config.key_wait)
        except UserError:
            return result
        if not result.board_lost:  # it failed on the model, not the board: another board would too
            return result
        retried = [*retried, f"{result.board or 'a board'}: {result.error}"]
        progress(f"{step}: failed on {result.board or 'a board'} ({result.error}); measuring it on another "
                 f"board of key {endpoint.key}")


def _record(config: SweepConfig, step: str, result: results.BenchmarkResult, progress) -> None:
    asked = config.timing.threads
    if asked and result.threads and result.threads < asked:
        progress(f"{step}: the device's TVM runtime runs {result.threads} of the {asked} threads asked "
                 f"for: its RPC server was started with a lower cap (start it with TVM_NUM_THREADS={asked})")
    # Fewer runs than asked: cut to fit --timeout (--min-repeat-ms may have grown the runs per repeat)
    timed, asked_runs = result.timed, config.timing.number * config.timing.repeat
    if timed and (timed["repeat"] < config.timing.repeat or timed["number"] * timed["repeat"] < asked_runs):
        progress(f"{step}: timed {result.timed['number']} x {result.timed['repeat']} runs instead of "
                 f"{config.timing.number} x {config.timing.repeat}, to fit --timeout "
                 f"{time_limit(config, result.macs):.0f} s")
    where = f" on {result.board}" if result.board and result.board != "local" else ""
    if result.status == "ok" and result.latency:
        lat = result.latency
        rate = f"{result.gmacs_per_second:.2f} GMAC/s, " if result.gmacs_per_second else ""
        versus = (f", LiteRT there {result.litert.median_ms:.2f} ms ({result.vs_litert:.2f}x)" if result.litert
                  else f", LiteRT not timed ({result.litert_note})")
        progress(f"{step}: median {lat.median_ms:.2f} ms (p90 {lat.p90_ms:.2f}, {lat.runs} runs){where}{versus}, "
                 f"{rate}matches LiteRT")
    elif result.status == "ok":
        progress(f"{step}: matches LiteRT (not timed){where}")
    else:
        progress(f"{step}: {result.status.upper()}{where}: {result.error}")


def run_sweep(config: SweepConfig, progress=print) -> list[results.BenchmarkResult]:
    """Run every model of the sweep; returns this run's results. A model whose identical measurement
    (same library, database, timing and device) is in results.jsonl keeps it, unless config.remeasure.
    With several boards under the tracker key, up to one model per board is measured at once while
    the next ones build."""
    path = Path(config.results) / "results.jsonl"
    said = threading.Lock()  # the measuring threads and the building one print whole lines
    printer = progress

    def progress(message: str) -> None:
        with said:
            printer(message)

    todo = build_jobs(config)
    done = {r.measurement: r for r in results.load(path) if r.status == "ok"}
    this_run: list[results.BenchmarkResult] = []
    _check_device(config)  # fail fast, before any build
    boards = _boards(config)
    if boards > 1:
        progress(f"{boards} boards under key {config.endpoint.key}: up to {boards} models measured at once")
    lock = threading.Lock()  # results.jsonl, this_run and the progress lines, shared with the measuring threads
    free = threading.Semaphore(boards)  # taken before a model is built: one board, one model at a time
    stopping = threading.Event()  # Ctrl-C or a fatal error: what is in flight is not recorded
    started = time.monotonic()

    def measure(step: str, out_dir: Path) -> None:
        try:
            result = measure_on_farm(config, out_dir, boards, step, progress)
            with lock:
                if stopping.is_set():
                    return
                results.append(path, result)
                this_run.append(result)
                _record(config, step, result, progress)
        except Interrupted:
            return
        finally:
            free.release()

    pool = ThreadPoolExecutor(max_workers=boards)
    running = []
    try:
        for index, (label, request) in enumerate(todo, 1):
            step = f"[{index}/{len(todo)}] {label}"
            free.acquire()  # a board is free (or one in flight has finished)
            for future in [f for f in running if f.done()]:
                future.result()  # a measuring thread's own failure surfaces here
                running.remove(future)
            if index > 1:  # the ETA from the models so far (builds included)
                left = (time.monotonic() - started) / (index - 1) * (len(todo) - index + 1)
                progress(f"{step}: starting, {index - 1} started, about {_duration(left)} left")
            manifest = pipeline.build(request, progress=lambda m: progress(f"{step}: {m}"))[0]
            out_dir = Path(config.dist) / config.target / manifest.name
            key = results.measurement_key(config.target, _device_label(config), manifest.name,
                                          manifest.library.sha256, manifest.tuning.get("fingerprint"),
                                          _timing_record(config))
            if key in done and not config.remeasure:
                progress(f"{step}: done before, skipped (the same library, database and timing measured on "
                         f"{done[key].finished_at}; --remeasure measures again)")
                if config.estimate and not done[key].estimate:
                    done[key].estimate = simulated_estimate(out_dir, config.target, progress)
                with lock:
                    this_run.append(done[key])
                free.release()
                continue
            try:
                _check_device(config)
            except UserError as err:
                progress(f"{step}: device gone, stopping the sweep: {err}")
                raise
            progress(f"{step}: running on {_device_label(config)}")
            running.append(pool.submit(measure, step, out_dir))
        for future in running:
            future.result()
    except KeyboardInterrupt:  # other failures stop new work; what is in flight still finishes and is kept
        stopping.set()
        raise
    finally:
        pool.shutdown(wait=True)
        with lock:
            report.write_all(this_run, Path(config.results))  # this run; every run's results stay in results.jsonl
    return this_run
