"""Tune a model's tasks (or the 22 variants' distinct tasks) with MetaSchedule into the target's
database (tuning.database_path), locally or on a board over RPC.

First every task's default schedule is measured into the database, then for every task not
searched yet the records of structurally equal tasks at other sizes, replayed at its sizes
(compile/schedules/transfer.py); then the search, task by task, tasks without a record first (most work
first), then the rest by their measured share of the models' time; a task that already holds
enough records is skipped, so an interrupted run resumes where it stopped; the database is
append-only JSON lines and is repaired (cut lines dropped) after an interrupt.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnv2_edge.compile.schedules import default_schedules, records, transfer, tuning
from mnv2_edge.compile.frontend import convert
from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.paths import CACHE_ROOT
from mnv2_edge.compile.threads import profile_threads
from mnv2_edge.targets.profiles import load_profile

KINDS = ("depthwise", "pointwise", "stem", "other")
LOG_ROOT = CACHE_ROOT / "tuning-logs"


@dataclass(frozen=True)
class Estimator:
    """Times candidates without the device: a MetaSchedule Runner whose times are estimates (the
    simulated core of deploy/simulated_core, passed in: compile never imports deploy), and the
    label the database keeps for them (tuning.MEASUREMENT_FILE)."""
    runner: Any
    label: str


@dataclass
class TuneRequest:
    build: pipeline.BuildRequest  # which model, for which target; its tuning_log is the database
    trials: int = 32  # per task
    minutes: float | None = None  # stop starting new tasks after this long
    kinds: tuple[str, ...] = KINDS
    rpc_tracker: tuple[str, int] | None = None
    rpc_key: str | None = None
    session_timeout: int = 120  # slow boards need more than MetaSchedule's default 10 s
    start_from: tuple[Path, ...] = ()  # other databases whose records are measured here first
    cache_flush: bool = False  # time candidates with cold caches (see _runner)
    remeasure: bool = False  # time each task's best records and its rule again (remeasure_task)
    estimator: Estimator | None = None  # estimate candidates' times instead of measuring them


@dataclass
class TaskReport:
    name: str
    kind: str
    weight: int
    trials: int
    best_ms: float | None
    skipped: bool = False


@dataclass
class TuneReport:
    database: str
    tasks: list[TaskReport] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def _runner(request: TuneRequest, profile, progress=print):
    from tvm.s_tir import meta_schedule as ms

    if request.estimator is not None:
        progress(f"[tune] candidates' times {request.estimator.label}: estimates, not measurements")
        return request.estimator.runner
    # Five repeats, the fastest kept (tuning.fastest_repeat). Warm: each repeat as many runs as fill
    # 10 ms. Cold (--cache-flush): MetaSchedule flushes the caches before each repeat, so one run per
    # repeat, as TVM's docs advise.
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=5, min_repeat_ms=0 if request.cache_flush else 10,
                                          enable_cpu_cache_flush=request.cache_flush)
    if request.rpc_tracker is None:
        if profile.machine != os.uname().machine:
            raise UserError(f"Tuning for {profile.name} measures on the board: give --rpc-tracker and --rpc-key.")
        # The runner's worker processes inherit this: candidates run on the threads the model will
        # (TVM's own default on x86 is half the cores; tuning_logs/host before this was made on 1).
        os.environ["TVM_NUM_THREADS"] = str(profile_threads(profile) or os.cpu_count())
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator, f_run_evaluator=tuning.fastest_repeat)
    host, port = request.rpc_tracker
    from mnv2_edge.compile.rpc_tracker import tracker_keys, wait_for_key

    key = request.rpc_key or profile.rpc_key
    wait_for_key(host, port, key, timeout=10)
    # One worker per board under the key: the tracker hands each a free board, so N boards
    # measure N candidates at once.
    boards = max(1, tracker_keys(host, port).get(key, 1))
    progress(f"[tune] measuring candidates on {boards} board(s) under key {key} at {host}:{port}")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=request.session_timeout)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=boards,
                               f_run_evaluator=tuning.fastest_repeat_on_board,
                               f_alloc_argument=functools.partial(tuning.host_filled_arguments,
                                                                  threads=profile_threads(profile)))


def _builder(request: TuneRequest, profile):
    from tvm.s_tir import meta_schedule as ms

    export = None
    if request.rpc_tracker is not None or request.estimator is not None:
        export = functools.partial(tuning.export_for_profile, profile_name=profile.name)
    return ms.builder.LocalBuilder(f_build=tuning.fast_build, f_export=export, timeout_sec=120,
                                   max_workers=os.cpu_count())


COST_MODEL_WARMUP = 100  # MetaSchedule's XGBModel: num_warmup_samples, its default
UNRANKED_POPULATION = 64


def search_strategy(trials: int):
    """MetaSchedule's evolutionary search for one task's `trials`, its population sized to what the
    cost model can rank. XGBModel scores candidates at random until it has measured
    COST_MODEL_WARMUP of them, and each task's search here starts a fresh model: a search of no
    more trials picks them at random from the population (random samples, the database's best
    records, their mutations), whose size then changes little but the time. Sampling and evolving
    MetaSchedule's default 512 took 10 s a task longer than 64 (EPYC, the 0.35/96 stem, 2 trials)."""
    from tvm.s_tir import meta_schedule as ms

    if trials > COST_MODEL_WARMUP:
        return ms.search_strategy.EvolutionarySearch()
    return ms.search_strategy.EvolutionarySearch(population_size=UNRANKED_POPULATION)


def tune(request: TuneRequest, progress=print) -> TuneReport:
    from tvm.s_tir import meta_schedule as ms

    profile = load_profile(request.build.target)
    if profile.is_gpu:
        raise UserError(f"Tuning {profile.name} (OpenCL) is not supported yet: its build applies dlight's "
                        f"GPU schedules. Tune a CPU target.")
    unknown = set(request.kinds) - set(KINDS)
    if unknown:
        raise UserError(f"Unknown task kinds {', '.join(sorted(unknown))}: choose from {', '.join(KINDS)} or all.")
    if request.estimator is not None and (request.rpc_tracker is not None or request.cache_flush):
        raise UserError("Candidates are either estimated or measured: --rpc-tracker and --cache-flush are for "
                        "measuring.")
    if request.trials < 0:
        raise UserError("--trials must be 0 (default schedules and transfers only) or more.")
    for path in request.start_from:
        if not tuning.has_database(path):
            raise UserError(f"--start-from {path} holds no MetaSchedule database ({tuning.WORKLOAD_FILE}): give "
                            f"a folder that tune.py wrote, e.g. tuning_logs/host/x86_64-avx512.")
    sources = pipeline.sources(request.build)
    target = profile.tvm_target()
    db_path = Path(request.build.tuning_log or tuning.database_path(profile))
    db_path.mkdir(parents=True, exist_ok=True)
    tuning.check_measurement(db_path, request.cache_flush,
                             request.estimator.label if request.estimator else tuning.MEASURED)
    tuning.repair_database(db_path)
    database = tuning.TuningDatabase(db_path).open()
    found, weights = distinct_tasks(sources, request.build.int8_lowering, target, request.kinds, progress)
    tasks = tuning_order(database, found, weights)
    runner, builder = _runner(request, profile, progress), _builder(request, profile)
    report = TuneReport(str(db_path))
    started = time.monotonic()
    deadline = started + request.minutes * 60 if request.minutes else None
    what = sources[0].name if len(sources) == 1 else f"{len(sources)} variants ({sum(weights.values())} kernel calls)"
    progress(f"[tune] {what} on {profile.name}: {len(tasks)} distinct tasks ({', '.join(request.kinds)}), "
             f"{request.trials} trials each, database {db_path}")
    trials_run, search_seconds = 0, 0.0
    calls = [weights[tuning.workload_key(task)] for task, _ in tasks]
    steps = [f"[{index}/{len(tasks)}] {task.task_name} ({kind}, x{n})"
             for index, ((task, kind), n) in enumerate(zip(tasks, calls), 1)]
    interrupted = _InterruptBetweenSteps(request.estimator is not None)
    try:
        # First the baseline the search must beat, for every task (about a second each), so that a
        # --minutes stop still leaves no task whose records are slower than its default schedule.
        others = [(str(path), tuning.TuningDatabase(path).open()) for path in request.start_from]
        transfer_sources = transfer.Sources(database, target, tuning.module_flops, others)  # before this run's seeds
        if request.remeasure:
            first_new = tuning.record_count(db_path)
            replaced = []
            for step, (task, _) in zip(steps, tasks):
                before, after, old = remeasure_task(task, target, builder, runner, database)
                replaced += old
                progress(f"{step}: {len(old)} record(s) and the default schedule measured again: best "
                         + (f"{before:.3f} ms before, " if before is not None else "")
                         + (f"{after:.3f} ms now" if after is not None else "none valid now"))
            dropped = tuning.drop_replaced(db_path, first_new, replaced)
            database = tuning.TuningDatabase(db_path).open()  # the old times are gone from the files
            progress(f"[tune] --remeasure: {dropped} records' old times replaced by this run's")
        for step, seeded in zip(steps, seed_default_schedules([task for task, _ in tasks], target, builder, runner,
                                                              database)):
            if seeded is not None:
                progress(f"{step}: default schedule ({seeded[0]}) timed: "
                         + (f"{seeded[1]:.3f} ms" if seeded[1] is not None else "failed"))
        # Then what other workloads' records give when replayed at this task's sizes, for every task
        # not searched yet: a --minutes stop leaves those it does not reach with the best of these.
        for step, (task, _) in zip(steps, tasks):
            interrupted.check()
            if not tuning.searched_trials(db_path, task):
                transfer_records(transfer_sources, task, target, builder, runner, database, db_path, step, progress)
        if request.trials == 0:
            progress("[tune] --trials 0: default schedules and transfers measured, no search")
            report.tasks += [TaskReport(task.task_name, kind, weight, tuning.searched_trials(db_path, task),
                                        _ms(tuning.best_seconds(database, task)), skipped=True)
                             for weight, (task, kind) in zip(calls, tasks)]
            tasks = []
        # Trials left in this run, for the ETA: what each task still needs, at the pace measured so far.
        trials_left = sum(max(request.trials - tuning.trials_done(db_path, database, task, request.trials), 0)
                          for task, _ in tasks)
        for step, weight, (task, kind) in zip(steps, calls, tasks):
            interrupted.check()
            have = tuning.trials_done(db_path, database, task, request.trials)
            if have >= request.trials:
                report.tasks.append(TaskReport(task.task_name, kind, weight, have,
                                               _ms(tuning.best_seconds(database, task)), skipped=True))
                progress(f"{step}: {have} records already, skipped")
                continue
            if deadline and time.monotonic() > deadline:
                report.stopped_early = True
                progress(f"[tune] --minutes {request.minutes:g} reached; rerun to continue")
                break
            todo = request.trials - have
            # MetaSchedule's tables and XGBoost lines go to its log files, not the console; its
            # logging set-up resets the level on every call, hence here, per task.
            logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.ERROR)
            tuning.register_tvm_intrinsics(cpu_only=str(target.kind) == "llvm")  # before the TuneContext
            contexts, context_weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [task], work_dir=str(LOG_ROOT / profile.name), num_threads=os.cpu_count(),
                strategy=search_strategy(todo))
            searched = time.monotonic()
            ms.tune_tasks(tasks=contexts, task_weights=context_weights, work_dir=str(LOG_ROOT / profile.name),
                          max_trials_global=todo, max_trials_per_task=todo, num_trials_per_iter=min(16, todo),
                          builder=builder, runner=runner, database=database, cost_model="xgb")
            best = _ms(tuning.best_seconds(database, task))
            tuning.record_trials(db_path, task, have + todo)
            report.tasks.append(TaskReport(task.task_name, kind, weight, have + todo, best))
            trials_run += todo
            search_seconds += time.monotonic() - searched
            eta = search_seconds / trials_run * (trials_left - trials_run) / 60
            pace = (f"{trials_run}/{trials_left} trials of this run, {(time.monotonic() - started) / 60:.1f} min "
                    f"so far, about {eta:.0f} min left")
            progress(f"{step}: best {best:.3f} ms after {report.tasks[-1].trials} trials ({pace})"
                     if best is not None else f"{step}: no valid candidate ({pace})")
    except KeyboardInterrupt:
        dropped = tuning.repair_database(db_path)
        progress(f"[tune] interrupted: database {db_path} is valid ({dropped} cut lines dropped); rerun to resume")
        raise
    finally:
        interrupted.restore()
    report.seconds = time.monotonic() - started
    return report


class _InterruptBetweenSteps:
    """Ctrl-C while an estimator times candidates: it runs them in this process's callbacks, where
    TVM turns the KeyboardInterrupt into one failed candidate and goes on (the search never stopped).
    Here the signal is noted and raised at the next step (a task or a transfer). Other runners time
    candidates elsewhere, and Ctrl-C stops them at once as before."""

    def __init__(self, active: bool):
        self.pending = False
        self.active = active and threading.current_thread() is threading.main_thread()
        self.previous = signal.signal(signal.SIGINT, self._note) if self.active else None

    def _note(self, signum, frame) -> None:
        self.pending = True

    def check(self) -> None:
        if self.pending:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self.previous)


def seed_default_schedules(tasks, target, builder, runner, database) -> list[tuple[str, float | None] | None]:
    """Measure each task's default schedule (compile/schedules/default_schedules.py) like any candidate
    and keep it as a record, once: the search then only replaces it with something faster, so a
    build from the database is never slower than one without it on the machine that measured. All
    in one batch (an emulated runner starts one process for it). Per task: (rule, ms or None when
    it failed to build or run), or None when already in the database or no rule fits."""
    todo = {}
    for index, task in enumerate(tasks):
        chosen = default_schedules.schedule_for(task.dispatched[0]["main"], target)
        if chosen is None:
            continue
        trace = str(chosen[1].trace)
        if not any(str(record.trace) == trace for record in tuning.records_for(database, task, 10**6)):
            todo[index] = chosen
    times = measure_into_database([(sch, tasks[i]) for i, (_, sch) in todo.items()], target, builder, runner,
                                  database)
    seeded: list[tuple[str, float | None] | None] = [None] * len(tasks)
    for (index, (rule, _)), ms_ in zip(todo.items(), times):
        seeded[index] = (rule, ms_)
    return seeded


def remeasure_task(task, target, builder, runner, database, keep: int = tuning.KEEP_BEST):
    """Measure the task's `keep` fastest records and its default schedule as the rules give it now
    again, each into the database as a new record: a database ages, as rules improve and as times
    taken on a busy machine or with an older way of timing stay in it. Returns (best ms before,
    best ms now, the old records measured again, which the caller drops from the files)."""
    from tvm import s_tir

    workload_mod = task.dispatched[0]
    old = tuning.records_for(database, task, keep)
    before = records.mean_seconds(old[0].run_secs) * 1e3 if old and old[0].run_secs else None
    schedules, replaced = [], []
    chosen = default_schedules.schedule_for(workload_mod["main"], target)
    if chosen is not None:
        schedules.append(chosen[1])
        # The rule's own record (the same trace) is replaced too, wherever it ranks.
        replaced += [r for r in tuning.records_for(database, task, 10**6) if str(r.trace) == str(chosen[1].trace)]
    for record in old:
        if any(str(record.trace) == str(r.trace) for r in replaced):
            continue
        sch = s_tir.Schedule(workload_mod)
        try:
            record.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:  # noqa: BLE001 - TVM raises several kinds; such a record cannot be timed again
            continue
        schedules.append(sch)
        replaced.append(record)
    times = [t for t in measure_into_database([(sch, task) for sch in schedules], target, builder, runner, database)
             if t is not None]
    key = tuning.workload_key(task)
    return before, min(times, default=None), [(key, [float(t) for t in r.run_secs or []]) for r in replaced]


def transfer_records(sources, task, target, builder, runner, database, db_path: Path, step: str,
                     progress=print) -> None:
    """Measure the task's transferred candidates (compile/schedules/transfer.py) into the database, once each."""
    known = {str(record.trace) for record in tuning.records_for(database, task, 10**6)}
    kept = {}
    candidates = [(source, sch) for source, sch in sources.candidates(task) if str(sch.trace) not in known]
    times = measure_into_database([(sch, task) for _, sch in candidates], target, builder, runner, database)
    for (source, sch), measured in zip(candidates, times):
        progress(f"{step}: transferred from {source}: " + (f"{measured:.3f} ms" if measured is not None else "failed"))
        if measured is not None:
            kept[transfer.trace_digest(sch.trace)] = source
    if kept:
        transfer.log(db_path, tuning.workload_key(task), kept)


def measure_into_database(candidates, target, builder, runner, database) -> list[float | None]:
    """Build and run scheduled candidates ((schedule, task) pairs) like MetaSchedule's search does,
    as one batch, and keep each as a record of its task; each one's mean ms, or None when it failed
    to build or run."""
    from tvm.s_tir import meta_schedule as ms

    if not candidates:
        return []
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch, _ in candidates])
    args_infos = [ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"]) for _, task in candidates]
    runnable = [i for i, b in enumerate(built) if not b.error_msg]
    futures = runner.run([ms.runner.RunnerInput(built[i].artifact_path, "cpu", args_infos[i])  # CPU targets only
                          for i in runnable])
    times: list[float | None] = [None] * len(candidates)
    for i, future in zip(runnable, futures):
        result = future.result()
        if result.error_msg or not result.run_secs:
            continue
        (sch, task), run_secs = candidates[i], [float(t) for t in result.run_secs]
        workload_mod = task.dispatched[0]
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(workload_mod), run_secs, target, args_infos[i]))
        times[i] = records.mean_seconds(run_secs) * 1e3
    return times


def distinct_tasks(sources, lowering: str, target, kinds, progress=print) -> tuple[list[tuple], dict[str, int]]:
    """The tasks of one or several models, each workload once: ((task, kind) pairs, workload key ->
    calls summed over the models). Variants share few workloads, so each stays its own task."""
    found: dict[str, tuple] = {}
    weights: dict[str, int] = {}
    for index, source in enumerate(sources, 1):
        if len(sources) > 1:
            progress(f"[tasks] ({index}/{len(sources)}) {source.name}")
        mod, _ = convert.load_relax(source.path, lowering)
        for task, kind in tuning.classified_tasks(mod, target):
            if kind not in kinds:
                continue
            key = tuning.workload_key(task)
            found.setdefault(key, (task, kind))
            weights[key] = weights.get(key, 0) + int(task.weight)
    return list(found.values()), weights


def tuning_order(database, tasks: list[tuple], weights: dict[str, int] | None = None) -> list[tuple]:
    """(task, kind) pairs in the order to tune them, so a --minutes stop leaves the least time on the
    table: tasks without a record first, by their work (calls x flops); then the others by their
    measured share of the models' time (calls x best time)."""
    def priority(item) -> tuple:
        task = item[0]
        calls = (weights or {}).get(tuning.workload_key(task), task.weight)
        best = tuning.best_seconds(database, task)
        if best is None:
            return (0, -calls * tuning.task_flops(task))
        return (1, -calls * best)

    return sorted(tasks, key=priority)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
