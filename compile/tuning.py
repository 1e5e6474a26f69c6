"""MetaSchedule tuning databases: find the tasks of a model, classify them, apply tuned records.

One JSON database per target under tuning_logs/<target>/ (MetaSchedule looks records up by the
task's structural hash and ignores the target, so databases must never be shared across devices).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def has_database(path: Path) -> bool:
    return (Path(path) / WORKLOAD_FILE).is_file()


def fuse(mod, target):
    """Legalize and fuse as the build does, so task keys match what the build later looks up."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    seq = tvm.transform.Sequential([
        *dispatch,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])
    with target, tvm.transform.PassContext(opt_level=3):
        return seq(mod)


def classify(task) -> str:
    """depthwise, pointwise, stem or other, from the shapes of the task's buffers.

    Task names never say "depthwise"; the weight's shape does: HWOI with O=1 (groups = channels)
    for depthwise, 1x1 for pointwise, a 3x3 kernel over 3 input channels for the stem.
    """
    func = next(iter(task.dispatched[0].functions.values()))
    shapes = [tuple(int(d) for d in func.buffer_map[p].shape) for p in func.params if p in func.buffer_map]
    for shape in shapes:
        if len(shape) != 4:
            continue
        kh, kw, cin, cout = shape  # TVM's NHWC conv kernels are HWIO / HWOI
        if (kh, kw) == (1, 1) and cin > 1:
            return "pointwise"
        if kh == kw == 3 and cout == 1:
            return "depthwise"
        if kh == kw == 3 and cin == 3:
            return "stem"
    return "other"


def extract_tasks(mod, target) -> list:
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(fuse(mod, target), target))


class TuningDatabase:
    """A MetaSchedule JSONDatabase folder, applied to a build and summarised in its manifest."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last_summary: dict | None = None

    def open(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.database.JSONDatabase(work_dir=str(self.path), allow_missing=True)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in (WORKLOAD_FILE, RECORD_FILE):
            file = self.path / name
            digest.update(file.read_bytes() if file.exists() else b"")
        return digest.hexdigest()

    def coverage(self, mod, target) -> tuple[list[str], list[str]]:
        """(tuned task names, untuned task names) of this module in this database."""
        database = self.open()
        tuned, untuned = [], []
        for task in extract_tasks(mod, target):
            workload_mod = task.dispatched[0]
            hit = database.has_workload(workload_mod) and database.query_tuning_record(
                workload_mod, target, task.task_name
            ) is not None
            (tuned if hit else untuned).append(f"{task.task_name} ({classify(task)})")
        return tuned, untuned

    def compile(self, mod, target):
        from tvm.s_tir import meta_schedule as ms

        tuned, untuned = self.coverage(mod, target)
        self._last_summary = {
            "database": str(self.path),
            "fingerprint": self.fingerprint(),
            "tasks": len(tuned) + len(untuned),
            "tuned_tasks": len(tuned),
            "untuned": untuned,
        }
        if untuned:
            warnings.warn(
                f"{len(untuned)} of {len(tuned) + len(untuned)} tasks have no tuned record in {self.path} "
                f"and run untuned: {', '.join(untuned)}. Tune them with compile/tune.py.",
                stacklevel=2,
            )
        return ms.relax_integration.compile_relax(self.open(), mod, target, params=None)

    def summary(self) -> dict:
        return self._last_summary or {"database": str(self.path), "fingerprint": self.fingerprint()}
