"""What a tuning record says about itself: whether a search made it, and its time."""

from __future__ import annotations


def searched(trace) -> bool:
    """Whether a record's schedule came from MetaSchedule's search (or was transferred from a searched
    one): its trace samples tile sizes. A default schedule's trace has fixed splits."""
    return any(inst.kind.name == "SamplePerfectTile" for inst in trace.insts)


def mean_seconds(run_secs) -> float:
    """A record's time: the mean of its measured runs (what MetaSchedule ranks records by)."""
    return sum(float(s) for s in run_secs) / len(run_secs)
