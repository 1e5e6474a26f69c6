"""Estimate one inference on the board's core without the board: ours and LiteRT (XNNPACK) on the
same file, on a simulated Cortex-A core (deploy/simulated_core: qemu-user instruction counts and
LLVM's scheduling model of the core), one thread.

    python deploy/estimate.py --target rasp4b --width 0.35 --res 96 --dtype float32,int8
    python deploy/estimate.py --target rasp5 --all-official --dtype float32,int8
    python deploy/estimate.py --target rasp4b --width 1.0 --res 224 --memory
    python deploy/estimate.py --tune --target rasp5 --width 1.0 --res 224 --dtype int8 --trials 16

With --memory: the same inferences also run through the core's simulated data caches (the
profile's [core.memory]: sizes, ways, bandwidths), and the time on 1 to num-cores threads (memory's
bandwidth shared by them) is a range: each loop costed at the larger of its cycles and its traffic's
time (fast end: overlapped) to their sum (slow end: nothing overlapped).

With --tune: MetaSchedule tunes the model's kernels into tuning_logs/<target>/ (as compile/tune.py
does, with its search flags) with each candidate timed by this estimate instead of a board: no
board needed, no noise, and blind to what the estimate leaves out. The database says so, and so
does every build that applies it; a board's measured times cannot be added to it.

An estimate, not a measurement (every report says what it leaves out). Results: printed as a
table, and appended to <results>/estimates.jsonl (mnv2-pick reads them). Deterministic and cached:
the same build gives the same estimate on every run and machine, and a rerun is instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnv2_edge.compile.cli_common import add_lowering_flags, add_model_flags, model_selection, run_main
from mnv2_edge.compile.tune import add_search_flags


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, default_target="rasp4b")
    add_lowering_flags(p)
    p.add_argument("--results", type=Path, help="results folder (default: results/<target>)")
    p.add_argument("--memory", action="store_true", help="also simulate the core's data caches and memory "
                   "bandwidth ([core.memory] of the profile), on 1 to num-cores threads")
    tune = p.add_argument_group("tuning on the estimate (--tune)")
    tune.add_argument("--tune", action="store_true", help="tune the model's kernels with candidates timed by "
                      "the estimate (into tuning_logs/<target>/ or --tuning-log), instead of estimating the model")
    add_search_flags(tune)
    return p.parse_args(argv)


def table(comparisons) -> str:
    """Markdown: ours and LiteRT per model, the ratio, and where ours' cycles go."""
    from mnv2_edge.deploy.simulated_core.estimate import LEAVES_OUT

    lines = ["| model | core | ours ms | LiteRT ms | ours / LiteRT | ours M instr. | LiteRT M instr. | ours' cycles by kind |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for c in comparisons:
        parts = sorted(c.ours.by_part.items(), key=lambda kv: -kv[1].cycles)[:3]
        where = ", ".join(f"{name.removeprefix('kernels: ')} {100 * part.cycles / c.ours.cycles:.0f}%"
                          for name, part in parts)
        lines.append(f"| {c.ours.model} | {c.ours.core} {c.ours.clock_ghz:g} GHz | {c.ours.ms:.2f} | {c.litert.ms:.2f} "
                     f"| {c.ratio:.2f}x | {c.ours.instructions / 1e6:.2f} | {c.litert.instructions / 1e6:.2f} | {where} |")
    return "\n".join(lines) + f"\n\nEstimated ms at the profile's clock: {LEAVES_OUT}.\n"


def memory_table(comparisons) -> str:
    """Markdown: the memory model's ms on one thread and on all the profile's threads, ours and LiteRT,
    each from its fast end (transfers overlapped with the arithmetic) to its slow end (nothing
    overlapped), and the megabytes each moved from memory per inference; empty without the memory model."""
    from mnv2_edge.deploy.simulated_core.estimate import MEMORY_LEAVES_OUT

    rows = [c for c in comparisons if c.memory_ratio is not None]
    if not rows:
        return ""
    lines = ["| model | core | threads | ours ms | LiteRT ms | ours / LiteRT | ours MB from memory "
             "| LiteRT MB from memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in rows:
        ours, litert = c.ours.memory, c.litert.memory
        for index in sorted({0, len(ours.ms_on_threads) - 1}):
            fast_ratio, slow_ratio = c.memory_ratios(index)
            lines.append(f"| {c.ours.model} | {c.ours.core} {c.ours.clock_ghz:g} GHz | {index + 1} "
                         f"| {ours.ms_on_threads[index]:.2f}-{ours.ms_on_threads_no_overlap[index]:.2f} "
                         f"| {litert.ms_on_threads[index]:.2f}-{litert.ms_on_threads_no_overlap[index]:.2f} "
                         f"| {fast_ratio:.2f}x-{slow_ratio:.2f}x | {ours.memory_mb:.1f} | {litert.memory_mb:.1f} |")
    return "\n".join(lines) + ("\n\nEstimated with the memory model, from its fast end (each loop's transfers overlapped "
                               f"with its arithmetic) to its slow end (nothing overlapped); it leaves out: {MEMORY_LEAVES_OUT}.\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    from mnv2_edge.compile.artifacts import pipeline
    from mnv2_edge.compile.paths import DEFAULT_OUT
    from mnv2_edge.deploy.simulated_core.estimate import append_results, compare
    from mnv2_edge.targets.errors import UserError
    from mnv2_edge.targets.profiles import load_profile

    profile = load_profile(args.target)
    if not profile.core:
        raise UserError(f"Target {args.target} names no simulated core ([core] in targets/{args.target}.toml); "
                        f"these do: rasp4b (Cortex-A72), rasp5 (Cortex-A76), arm_cpu (as a Cortex-A72).")
    if args.tune and args.memory:
        raise UserError("--memory is for estimating a model; tuning times each candidate kernel alone, where the "
                        "caches would hold only that kernel's data: leave --memory out with --tune.")
    if args.tune:
        from mnv2_edge.compile.tune import search
        from mnv2_edge.deploy.simulated_core.tuning_runner import estimator

        return search(args, estimator=estimator(profile))
    requests = model_selection(args).requests(target=args.target, out=args.out or DEFAULT_OUT,
                                              tuning_log=args.tuning_log, no_tuning=args.no_tuning,
                                              int8_lowering=args.int8_lowering)
    if args.memory:
        from mnv2_edge.deploy.simulated_core.estimate import memory_model

        memory_model(profile)  # a clean error before any build
    comparisons = compare(pipeline.build_each(requests), profile, memory=args.memory)
    written = append_results(comparisons, args.results or Path("results") / args.target)
    print()
    print(table(comparisons))
    print(memory_table(comparisons))
    print(f"appended to {written}")
    return 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
