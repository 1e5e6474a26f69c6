"""Pick the variant for a latency budget: the 22 published MobileNetV2 variants' ImageNet top-1
(tensorflow/models' table, compile/generation/variants.py) against their latency on the target,
measured where a sweep has measured it on a real board and estimated where only the simulated core
has, each row saying which; the Pareto front marked (no other variant is both faster and at least
as accurate).

    mnv2-pick --target rasp4b --budget-ms 30                     # from results/rasp4b/
    mnv2-pick --target rasp5 --budget-ms 10 --dtype int8 --results my_results/

Latencies come from <results>/results.jsonl (mnv2-bench on a board: the median; emulated boards'
timings are never used) and <results>/estimates.jsonl (mnv2-estimate: ours, one thread; with
--memory, the memory model's time on all the profile's threads, as a sweep measures, at its slow end:
nothing overlapped, for a budget is a limit and real boards came in slower than its fast end). Exit 0
with a pick, 1 when no variant fits the budget, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from mnv2_edge.compile.cli_common import run_main
from mnv2_edge.compile.generation.variants import OFFICIAL_TABLE
from mnv2_edge.targets.errors import UserError


@dataclass(frozen=True)
class Candidate:
    width: float
    resolution: int
    top1: float  # published ImageNet top-1 of the float checkpoint, %
    latency_ms: float
    source: str  # "measured on <device>" or "estimated: <core>, <threads>"

    @property
    def name(self) -> str:
        return f"{self.width:g}/{self.resolution}"


def candidates(results: Path, dtype: str, target: str) -> list[Candidate]:
    """One candidate per official variant with a latency on `target`: a real board's median if a sweep
    measured it (the latest), else the simulated core's estimate of ours (the latest; the memory
    model's slow end on all the profile's threads where the estimate has it). A results folder may
    hold other targets' rows (one --results for several boards): they are not this board's."""
    from mnv2_edge.deploy import results as results_file

    found: dict[tuple[float, int], Candidate] = {}
    estimates = results / "estimates.jsonl"
    if estimates.exists():
        for line in estimates.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (row.get("width"), row.get("resolution"))
            if row.get("target") == target and row.get("dtype") == dtype and key in OFFICIAL_TABLE:
                ours = row["ours"]
                core = f"estimated: simulated {ours['core']} at {ours['clock_ghz']:g} GHz"
                on_threads = (ours.get("memory") or {}).get("ms_on_threads_no_overlap")
                found[key] = (Candidate(*key, OFFICIAL_TABLE[key].top1, on_threads[-1],
                                        f"{core} with its caches and memory, {len(on_threads)} threads, "
                                        f"nothing overlapped")
                              if on_threads else Candidate(*key, OFFICIAL_TABLE[key].top1, ours["ms"], f"{core}, 1 thread"))
    for result in sorted(results_file.load(results / "results.jsonl"), key=lambda r: r.finished_at):
        key = (result.width, result.resolution)
        if (result.target == target and result.dtype == dtype and key in OFFICIAL_TABLE and result.status == "ok"
                and result.latency and not result.emulated):
            found[key] = Candidate(*key, OFFICIAL_TABLE[key].top1, result.latency.median_ms,
                                   f"measured on {result.device} ({result.threads or '?'} threads, median)")
    return sorted(found.values(), key=lambda c: (c.latency_ms, -c.top1))


def pareto_front(rows: list[Candidate]) -> list[Candidate]:
    """The variants no other beats on both sides: each faster one is less accurate."""
    front, best_top1 = [], float("-inf")
    for row in sorted(rows, key=lambda c: (c.latency_ms, -c.top1)):
        if row.top1 > best_top1:
            front.append(row)
            best_top1 = row.top1
    return front


def pick(rows: list[Candidate], budget_ms: float) -> Candidate | None:
    """The most accurate variant within the budget (the faster of equals)."""
    fitting = [c for c in rows if c.latency_ms <= budget_ms]
    return max(fitting, key=lambda c: (c.top1, -c.latency_ms)) if fitting else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="rasp4b", help="device profile in targets/ (default: rasp4b)")
    p.add_argument("--budget-ms", type=float, required=True, help="the latency the app can spend on one inference")
    p.add_argument("--dtype", default="float32", choices=("float32", "int8"))
    p.add_argument("--results", type=Path, help="results folder (default: results/<target>)")
    args = p.parse_args(argv)
    if args.budget_ms <= 0:
        raise UserError(f"--budget-ms {args.budget_ms:g}: the budget must be above 0 ms.")
    from mnv2_edge.targets.profiles import load_profile

    load_profile(args.target)  # unknown targets fail here, with the list of known ones
    results = args.results or Path("results") / args.target
    rows = candidates(results, args.dtype, args.target)
    if not rows:
        raise UserError(f"No {args.dtype} latencies of the official variants on {args.target} in {results} (results.jsonl from "
                        f"mnv2-bench on a board, or estimates.jsonl from mnv2-estimate). Make some first, e.g. "
                        f"`mnv2-estimate --target {args.target} --all-official --dtype {args.dtype}`.")
    front = set(pareto_front(rows))
    chosen = pick(rows, args.budget_ms)
    print(f"{args.dtype} on {args.target}: published ImageNet top-1 (tensorflow/models' MobileNetV2 table, the "
          f"float checkpoints) against latency; * = Pareto front\n")
    print("| variant | top-1 % | latency ms | fits | source |\n|---|---:|---:|---|---|")
    for row in rows:
        mark = "*" if row in front else " "
        print(f"| {mark} {row.name}{' <- pick' if row == chosen else ''} | {row.top1:.1f} | {row.latency_ms:.2f} | "
              f"{'yes' if row.latency_ms <= args.budget_ms else 'no'} | {row.source} |")
    missing = len(OFFICIAL_TABLE) - len(rows)
    if missing:
        print(f"\n{missing} of the 22 variants have no latency here yet.")
    if chosen is None:
        print(f"\nNo variant fits {args.budget_ms:g} ms; the fastest known is {rows[0].name} at {rows[0].latency_ms:.2f} ms.")
        return 1
    print(f"\npick: {chosen.name} ({chosen.top1:.1f}% top-1, {chosen.latency_ms:.2f} ms, {chosen.source}): "
          f"python compile/build.py --target {args.target} --width {chosen.width:g} --res {chosen.resolution} "
          f"--dtype {args.dtype}")
    return 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
