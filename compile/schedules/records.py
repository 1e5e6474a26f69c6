"""What a tuning record says about itself: whether a search made it, and its time."""

from __future__ import annotations


def searched(trace) -> bool:
    """Whether a record's schedule came from MetaSchedule's search (or was transferred from a searched
    one): its trace went through MetaSchedule's post-processing (EnterPostproc), as a default
    schedule's never does. Sampled tile sizes alone missed the searched schedules of kernels without
    tiles (a pad, an element-wise kernel: only their vector and parallel annotations are sampled),
    and a build gave those tasks the rule even where the search had found 3.5x faster."""
    return any(inst.kind.name in ("EnterPostproc", "SamplePerfectTile") for inst in trace.insts)


def mean_seconds(run_secs) -> float:
    """A record's time: the mean of its measured runs (what MetaSchedule ranks records by)."""
    return sum(float(s) for s in run_secs) / len(run_secs)
