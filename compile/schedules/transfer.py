"""Transfer: a tuned record serves tasks of the same structure at other sizes.

The same layer in another width or resolution is the same loop nest with other extents (the same
blocks, in the same order, with the same spatial and reduction axes). Its tuned schedule is a
MetaSchedule trace; replayed on the other task with each tile split adapted to the new extent (the
inner factors kept where they divide it: the vector and register blocks, the outer factor taking the
rest), it usually stays valid and keeps what made it fast. Each transferred candidate is measured
like any tuning candidate (on the board, where tuning runs through RPC) and kept as a record of the
task; the database then applies it only where it beats the task's default schedule and its own
search. Transfers are logged in `transfers.json` beside the database, so builds can say which
kernels got a transferred schedule and from which workload (after Gibson et al., "Transfer-Tuning",
2022, which reuses auto-scheduler schedules across networks).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from mnv2_edge.compile.schedules.default_schedules import iter_kinds
from mnv2_edge.compile.schedules.records import mean_seconds, searched

TRANSFERS_FILE = "transfers.json"  # workload key -> {digest of a transferred trace: its source}
SOURCES_PER_TASK = 2  # the best record of each of the closest source workloads


def structure_key(func) -> tuple:
    """What two tasks must share for one's trace to apply to the other: the kind of kernel (the
    weight's window: 1x1 pointwise, 3x3 depthwise or stem), the blocks, in order, with their axes'
    kinds (spatial / reduction), and the buffers' dtypes and ranks."""
    from tvm import s_tir


    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    params = tuple((str(p.ty.dtype), len(p.ty.shape)) for p in func.params)
    window = tuple(int(d) for d in func.params[1].ty.shape[:2]) if len(func.params) > 1 and \
        len(func.params[1].ty.shape) == 4 else ()
    return window, params, tuple((sch.get(b).name_hint, iter_kinds(sch, b)) for b in blocks)


def describe(func) -> str:
    """A workload, for people: its buffers' shapes."""
    return " x ".join("[" + ",".join(str(int(d)) for d in p.ty.shape) + "]" for p in func.params)


def adapted_tile(old: list[int], extent: int) -> list[int]:
    """A tile split of `extent` shaped like `old`: from the innermost factor out, each keeps what of
    it divides the extent left; the outermost takes the rest."""
    new, remaining = [1] * len(old), extent
    for i in range(len(old) - 1, 0, -1):
        new[i] = math.gcd(old[i], remaining)
        remaining //= new[i]
    new[0] = remaining
    return new


def trace_digest(trace) -> str:
    return hashlib.sha256(str(trace).encode()).hexdigest()[:16]


class Sources:
    """The best searched record per workload of the task's own database and of any others given (the
    host's or another board's: there the task's own workload is a source too, the best one), grouped
    by structure; built once per tuning run."""

    def __init__(self, database, target, flops, others: list[tuple[str, object]] = ()):
        self.target, self.flops = target, flops  # flops: a workload module -> its work
        self.by_structure: dict[tuple, dict[str, object]] = {}
        for label, db in [("", database), *others]:
            for record in db.get_all_tuning_records():
                # Searched records only: a default schedule's trace has fixed splits made for its
                # own extents (the task gets its own default schedule anyway).
                if not record.run_secs or not searched(record.trace):
                    continue
                func = record.workload.mod["main"]
                sources = self.by_structure.setdefault(structure_key(func), {})
                name = f"{label}: {describe(func)}" if label else describe(func)
                kept = sources.get(name)
                if kept is None or mean_seconds(record.run_secs) < mean_seconds(kept.run_secs):
                    sources[name] = record

    def candidates(self, task) -> list[tuple[str, object]]:
        """(source description, Schedule) for the task: the best records of the structurally equal
        workloads closest in work, each replayed with adapted tiles; traces that do not apply are
        skipped."""
        from tvm import s_tir

        target_mod = task.dispatched[0]
        work = max(self.flops(target_mod), 1.0)
        sources = self.by_structure.get(structure_key(target_mod["main"]), {})
        closest = sorted(((name, record) for name, record in sources.items()
                          if name != describe(target_mod["main"])),  # not the task itself, from its own database
                         key=lambda item: abs(math.log(max(self.flops(item[1].workload.mod), 1.0) / work)))
        found, postprocs = [], self._postprocs(target_mod) if closest else []
        for name, record in closest[:SOURCES_PER_TASK]:
            sch = s_tir.Schedule(target_mod)

            def adapt(inst, inputs, attrs, decision, sch=sch):
                if inst.kind.name == "SamplePerfectTile":
                    return adapted_tile([int(d) for d in decision], int(sch.get(inputs[0]).extent))
                return decision

            try:
                # Without the source's post-processing (its parallel, vectorized and unrolled loops
                # were made for its own extents): MetaSchedule's own, run again on these loops.
                record.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=adapt)
                # Marked as post-processing, as MetaSchedule marks its own: a search that starts from
                # this record replays the trace without them and runs them again. Unmarked, their
                # instructions were replayed on loops they no longer fit (an RPC search failed on it).
                sch.enter_postproc()
                if not all(postproc.apply(sch) for postproc in postprocs):
                    continue
            except Exception:  # noqa: BLE001 - a trace that does not fit this task is no candidate
                continue
            found.append((name, sch))
        return found

    def _postprocs(self, mod) -> list:
        from tvm.s_tir import meta_schedule as ms

        from mnv2_edge.compile.schedules import tuning

        tuning.register_tvm_intrinsics(cpu_only=True)  # CPU postprocessors tensorize with x86's and Arm's only
        context = ms.TuneContext(mod=mod, target=self.target)
        postprocs = ms.postproc.Postproc.create("llvm")
        for postproc in postprocs:
            postproc._initialize_with_tune_context(context)  # noqa: SLF001 - MetaSchedule's own set-up step
        return postprocs


def log(path: Path, workload_key: str, transferred: dict[str, str]) -> None:
    """Note the records transferred to a task: trace digest -> source."""
    entries = load(path)
    entries.setdefault(workload_key, {}).update(transferred)
    (Path(path) / TRANSFERS_FILE).write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


def load(path: Path) -> dict:
    """The database's transfer log: workload key -> {trace digest: source}."""
    file = Path(path) / TRANSFERS_FILE
    return json.loads(file.read_text()) if file.exists() else {}


def source_of(log_entries: dict, workload_key: str, trace) -> str | None:
    """Where the record with this trace came from, if it was transferred (log_entries: load())."""
    return log_entries.get(workload_key, {}).get(trace_digest(trace))
