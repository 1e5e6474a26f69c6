"""MetaSchedule tuning databases: find the tasks of a model, classify them, apply tuned records.

One JSON database per target under tuning_logs/<target>/ (MetaSchedule looks records up by the
task's structural hash and ignores the target, so databases must never be shared across devices).
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from pathlib import Path

from mnv2_edge.compile.schedules import default_schedules, int8_dot, neon_lane_fma
from mnv2_edge.compile.schedules.cpu import CPUShape
from mnv2_edge.compile.schedules.fusion import fuse
from mnv2_edge.compile.schedules.records import mean_seconds, searched

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
TRIALS_FILE = "trials.json"  # workload hash -> trials measured, kept when records are compacted
MEASUREMENT_FILE = "measurement.json"  # how its candidates were timed: {"cache_flush": bool, "timed_by": str}
MEASURED = "measured on the device"  # timed_by of every database not tuned on an estimate
KEEP_BEST = 4  # records per workload after compaction: the best, and a few to seed later searches


def has_database(path: Path) -> bool:
    return (Path(path) / WORKLOAD_FILE).is_file()


def database_path(profile) -> Path:
    """Where a profile's database lives: tuning_logs/<target>/, and for a target that is whatever CPU
    runs the build (host), one folder per CPU class below it."""
    from mnv2_edge.compile.paths import TUNING_ROOT

    root = TUNING_ROOT / profile.name
    return root / CPUShape.of(profile.tvm_target()).isa_class if profile.detect_host else root


def other_classes(profile) -> list[str]:
    """CPU classes that have a database for this (host) profile, other than this CPU's."""
    path = database_path(profile)
    if not profile.detect_host or not path.parent.is_dir():
        return []
    return sorted(p.name for p in path.parent.iterdir() if p != path and has_database(p))


def classify(task) -> str:
    """The task's kind for tuning (--kinds): depthwise, pointwise, stem or other (dense layers,
    pooling, element-wise), as default_schedules.kernel_kind names its kernel. Task names never say
    "depthwise"; the weights' shapes do."""
    kind = default_schedules.function_kind(next(iter(task.dispatched[0].functions.values())))
    return kind if kind in ("depthwise", "pointwise", "stem") else "other"


def task_flops(task) -> float:
    """Floating-point work of one call of the task (for ordering: weight x flops is its share of the model)."""
    return module_flops(task.dispatched[0])


def module_flops(mod) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    return float(estimate_tir_flops(mod))


def extract_tasks(mod, target) -> list:
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(fuse(mod, target), target))


def classified_tasks(mod, target) -> list[tuple]:
    """(task, kind) for each task of the model as the build fuses it."""
    return [(task, classify(task)) for task in extract_tasks(mod, target)]


class TuningDatabase:
    """A MetaSchedule JSONDatabase folder, applied to a build and summarised in its manifest."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last_summary: dict | None = None

    def open(self):
        from tvm.s_tir import meta_schedule as ms

        int8_dot.register_intrinsics()  # records' traces name them: parsed as the database loads
        neon_lane_fma.intrinsic(4)  # the AArch64 float32 rule's, likewise
        # A searched record tensorized with one of TVM's own intrinsics (its ARM sdot, x86 VNNI) loads
        # once that is registered: the CPUs' first (about 1 s), every kind's (15 s) only if still missing.
        for tvm_intrinsics in (None, "cpu", "all"):
            if tvm_intrinsics:
                register_tvm_intrinsics(cpu_only=tvm_intrinsics == "cpu")
            try:
                return ms.database.JSONDatabase(work_dir=str(self.path), allow_missing=True)
            except RuntimeError as error:
                if "is not registered" not in str(error) or tvm_intrinsics == "all":
                    raise

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in (WORKLOAD_FILE, RECORD_FILE):
            file = self.path / name
            digest.update(file.read_bytes() if file.exists() else b"")
        return digest.hexdigest()

    def prepare(self, mod, target):
        """Open the database for a build of mod, note its coverage for the manifest, and say which
        tasks it leaves to default schedules; return the records to apply: for each task of mod whose
        fastest record came from the search (or a transfer), that record, in memory.

        A task whose fastest record is a default schedule (the tuner measures each rule's schedule
        first) gets the rule as it is now instead: the record is the rule's schedule as it was when
        measured, and rules only get faster with the code."""
        from tvm.s_tir import meta_schedule as ms

        from mnv2_edge.compile.schedules import transfer

        database = self.open()
        log_entries = transfer.load(self.path)
        applied = ms.database.MemoryDatabase()
        tuned, by_rule, untuned, transferred = [], [], [], {}
        for task in extract_tasks(mod, target):
            workload_mod = task.dispatched[0]
            best = database.query_tuning_record(workload_mod, target, task.task_name) \
                if database.has_workload(workload_mod) else None
            name = f"{task.task_name} ({classify(task)})"
            if best is None:
                untuned.append(name)
                continue
            if not searched(best.trace):
                by_rule.append(name)
                continue
            tuned.append(name)
            applied.commit_tuning_record(ms.database.TuningRecord(
                best.trace, applied.commit_workload(workload_mod), best.run_secs, best.target, best.args_info))
            source = transfer.source_of(log_entries, workload_key(task), best.trace)
            if source:
                transferred[task.task_name] = source
        self._last_summary = {
            "database": str(self.path),
            "fingerprint": self.fingerprint(),
            "timed_by": timing_of(self.path),
            "tasks": len(tuned) + len(by_rule) + len(untuned),
            "tuned_tasks": len(tuned),
            "rule_fastest": by_rule,
            "untuned": untuned,
            "transferred": transferred,
        }
        if untuned:
            shown = ", ".join(untuned[:8]) + (f" and {len(untuned) - 8} more (see the manifest)" if len(untuned) > 8 else "")
            warnings.warn(
                f"{len(untuned)} of {len(tuned) + len(untuned)} tasks have no tuned record in {self.path} "
                f"and get default schedules: {shown}. Tune them with compile/tune.py.",
                stacklevel=2,
            )
        return applied

    def compile(self, mod, target):
        """MetaSchedule's own compile (GPU targets: their untuned kernels get TVM's dlight rules)."""
        from tvm.s_tir import meta_schedule as ms

        return ms.relax_integration.compile_relax(self.prepare(mod, target), mod, target, params=None)

    def summary(self) -> dict:
        return self._last_summary or {"database": str(self.path), "fingerprint": self.fingerprint()}


# ----- tuning ---------------------------------------------------------------------------------

TVM_INTRINSICS = "tvm.s_tir.tensor_intrin"  # TVM's package of tensor intrinsics, one module per kind of target
CPU_INTRINSICS = ("x86", "arm_cpu")
ALL_INTRINSICS = ("cuda", "rocm", "hexagon", "riscv_cpu", *CPU_INTRINSICS)  # what its __init__ imports


def register_tvm_intrinsics(cpu_only: bool) -> None:
    """Register TVM's tensor intrinsics before MetaSchedule needs them: those of CPUs (x86 VNNI, ARM
    sdot: what MetaSchedule's CPU rules tensorize with), or every one.

    A TuneContext imports tvm.s_tir.tensor_intrin, whose __init__ imports every kind's module, and
    that parses some 500 TVMScript functions, CUDA's most: about 15 s per process on an EPYC (most of
    a short tuning run; the test suite tunes in a dozen processes), against about 1 s for the CPU
    ones. For CPU work the package is created without running its __init__, so TuneContext's import
    finds it done; its submodules still import on demand (cpu_only=False imports each)."""
    import sys
    from importlib import util

    if TVM_INTRINSICS not in sys.modules:
        package = util.module_from_spec(util.find_spec(TVM_INTRINSICS))  # __init__ not run
        sys.modules[TVM_INTRINSICS] = package
        parent, name = TVM_INTRINSICS.rsplit(".", 1)
        setattr(sys.modules[parent], name, package)  # as an import would: tvm.s_tir.tensor_intrin
    from tvm.runtime import enabled

    for kind in CPU_INTRINSICS if cpu_only else ALL_INTRINSICS:
        if kind == "cuda" or enabled("llvm"):  # as the package's __init__ decides
            importlib.import_module(f"{TVM_INTRINSICS}.{kind}")


def fast_build(mod, target, _params):
    """MetaSchedule's default build without importing tvm.s_tir.tensor_intrin in every fresh worker
    (about 18 s of CPU per worker per batch, which made builds time out), lowered as a model's
    build lowers it (tir_pipeline: on AArch64 NEON's fixed-point forms, on x86 vpmuldq and small
    kernels on one thread): a candidate is timed as it will run."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from mnv2_edge.compile.schedules.tir_pipeline import tir_pipeline

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target,
                     pipeline=tir_pipeline(target))


def export_for_profile(module, profile_name: str) -> str:
    """A .so linked by the profile's toolchain: what the board's RPC server can load."""
    import tempfile

    from mnv2_edge.compile.artifacts.toolchain import fcompile_for
    from mnv2_edge.targets.profiles import load_profile

    path = Path(tempfile.mkdtemp(prefix="mnv2-tune-")) / "candidate.so"
    module.export_library(str(path), fcompile=fcompile_for(load_profile(profile_name)))
    return str(path)


def records_for(database, task, limit: int) -> list:
    workload_mod = task.dispatched[0]
    if not database.has_workload(workload_mod):
        return []
    return list(database.get_top_k(database.commit_workload(workload_mod), limit))


def best_seconds(database, task) -> float | None:
    top = records_for(database, task, 1)
    if not top or not top[0].run_secs:
        return None
    return mean_seconds(top[0].run_secs)


def workload_key(task) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(task.dispatched[0]) & (2**64 - 1))  # as the workload file writes it


def trials_done(path: Path, database, task, limit: int) -> int:
    """Trials measured for the task: its records, or the count kept when they were compacted."""
    return max(len(records_for(database, task, limit)), searched_trials(path, task))


def searched_trials(path: Path, task) -> int:
    """Trials the search has measured for the task (kept in trials.json through compaction)."""
    import json

    file = Path(path) / TRIALS_FILE
    return json.loads(file.read_text()).get(workload_key(task), 0) if file.exists() else 0


def record_trials(path: Path, task, trials: int) -> None:
    import json

    file = Path(path) / TRIALS_FILE
    counts = json.loads(file.read_text()) if file.exists() else {}
    key = workload_key(task)
    counts[key] = max(trials, counts.get(key, 0))
    file.write_text(json.dumps(counts, indent=0, sort_keys=True) + "\n")


def _kept_timing(path: Path) -> tuple[bool, str] | None:
    """How a database's records were timed (MEASUREMENT_FILE): (cache_flush, timed_by); a database
    from before this file was written was measured warm; None for a folder without records yet."""
    import json

    file = Path(path) / MEASUREMENT_FILE
    if file.exists():
        kept = json.loads(file.read_text())
        return kept.get("cache_flush", False), kept.get("timed_by", MEASURED)
    return (False, MEASURED) if has_database(path) else None


def check_measurement(path: Path, cache_flush: bool, timed_by: str = MEASURED) -> None:
    """Keep one way of timing per database: records timed with cold caches are slower than warm ones
    of the same code, and a simulated core's estimates are not a board's times, so mixed, the
    records of one way would win for no reason."""
    import json

    from mnv2_edge.targets.errors import UserError

    timed_cold, kept_by = _kept_timing(path) or (cache_flush, timed_by)
    if kept_by != timed_by:
        raise UserError(f"The database {path} holds times {kept_by}; this run's would be {timed_by}, and the two "
                        f"are not comparable. Give another --tuning-log folder.")
    if timed_cold != cache_flush:
        how = lambda cold: "with --cache-flush" if cold else "without --cache-flush"  # noqa: E731
        raise UserError(f"The database {path} was timed {how(timed_cold)}; this run would time {how(cache_flush)}, "
                        f"and records timed both ways are not comparable. Rerun {how(timed_cold)}, or give "
                        f"another --tuning-log folder.")
    (Path(path) / MEASUREMENT_FILE).write_text(json.dumps({"cache_flush": cache_flush, "timed_by": timed_by}) + "\n")


def timing_of(path: Path) -> str:
    """How a database's records were timed: MEASURED, or the estimate's label."""
    kept = _kept_timing(path)
    return kept[1] if kept else MEASURED


def record_count(path: Path) -> int:
    file = Path(path) / RECORD_FILE
    return len(file.read_text().splitlines()) if file.exists() else 0


def drop_replaced(path: Path, first_new: int, replaced: list[tuple[str, list[float]]]) -> int:
    """Remove the records measured again, (workload key, run seconds) each, from the lines before
    `first_new` of the records file (the ones after are this run's); returns how many went."""
    import json
    import math

    workloads = [str(json.loads(line)[0]) for line in (Path(path) / WORKLOAD_FILE).read_text().splitlines()]
    file = Path(path) / RECORD_FILE
    lines = file.read_text().splitlines()

    def is_replaced(line: str) -> bool:
        index, (_, run_secs, *_) = json.loads(line)
        return any(workloads[index] == key and len(run_secs or []) == len(secs)
                   and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(run_secs, secs))
                   for key, secs in replaced)

    kept = [line for line in lines[:first_new] if not is_replaced(line)]
    file.write_text("".join(line + "\n" for line in kept + lines[first_new:]))
    return first_new - len(kept)


def compact_database(path: Path, keep: int = KEEP_BEST) -> tuple[int, int]:
    """Keep each workload's `keep` fastest valid records, and only workloads that have one; the
    trials each had are kept in trials.json, so a rerun still skips tasks tuned enough. Loading
    (every tuned build does) takes time in proportion to the records. Returns (before, after)."""
    import json

    path = Path(path)
    workloads = (path / WORKLOAD_FILE).read_text().splitlines()
    records = [json.loads(line) for line in (path / RECORD_FILE).read_text().splitlines() if line.strip()]
    by_workload: dict[int, list] = {}
    for index, record in records:
        by_workload.setdefault(index, []).append(record)
    counts = json.loads((path / TRIALS_FILE).read_text()) if (path / TRIALS_FILE).exists() else {}
    kept_workloads, kept_records = [], []
    for index, line in enumerate(workloads):
        valid = [r for r in by_workload.get(index, []) if r[1] and all(s is not None for s in r[1])]
        if not valid:
            continue
        shash = str(json.loads(line)[0])
        counts[shash] = max(counts.get(shash, 0), len(by_workload[index]))
        valid.sort(key=lambda r: sum(r[1]) / len(r[1]))
        kept_records += [[len(kept_workloads), r] for r in valid[:keep]]
        kept_workloads.append(line)
    (path / WORKLOAD_FILE).write_text("".join(line + "\n" for line in kept_workloads))
    (path / RECORD_FILE).write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept_records))
    (path / TRIALS_FILE).write_text(json.dumps(counts, indent=0, sort_keys=True) + "\n")
    return len(records), len(kept_records)


def repair_database(path: Path) -> int:
    """Drop lines cut short by an interrupt, so the JSON-lines database stays loadable; returns how many."""
    import json

    dropped = 0
    for name in (WORKLOAD_FILE, RECORD_FILE):
        file = Path(path) / name
        if not file.exists():
            continue
        lines = file.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                json.loads(line)
                kept.append(line)
            except json.JSONDecodeError:
                pass
        if len(kept) < len(lines):
            file.write_text("".join(line + "\n" for line in kept))
            dropped += len(lines) - len(kept)
    return dropped


def fastest_repeat(rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """MetaSchedule's evaluator, keeping only the fastest of its repeats as the candidate's time.
    Another tenant or a background job only ever adds time, so the fastest repeat is the candidate's
    own speed; a mean (MetaSchedule's default) lets one burst decide which schedule wins, and on this
    project's shared machines a database made so ran 13% slower than the rules it had beaten."""
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    return [min(run_evaluator_common(rt_mod, device, evaluator_config, repeated_args))]


def fastest_repeat_on_board(_session, rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """fastest_repeat for MetaSchedule's RPC runner (which passes its session first)."""
    return fastest_repeat(rt_mod, device, evaluator_config, repeated_args)


def host_filled_arguments(session, device, args_info, alloc_repeat: int, threads: int | None = None) -> list:
    """Measurement inputs filled on the host and copied to the board. MetaSchedule's default asks the
    board for `tvm.contrib.random`, which runtime-only TVM builds (the aarch64 wheel's runtime,
    most board builds) do not have. Also sizes the board's thread pool to `threads` for the run."""
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    from mnv2_edge.compile.threads import configure_threads

    configure_threads(session.get_function, threads)

    rng = np.random.default_rng(0)

    def fill(tensor) -> None:
        dtype, shape = str(tensor.dtype), tuple(int(d) for d in tensor.shape)
        if dtype.startswith(("int", "uint")):
            values = rng.integers(0, 8, shape)
        else:
            values = rng.uniform(-1.0, 1.0, shape)
        tensor.copyfrom(values.astype(dtype))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)
