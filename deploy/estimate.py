"""Estimate one inference on the board's core without the board: ours and LiteRT (XNNPACK) on the
same file, on a simulated Cortex-A core (deploy/simulated_core: qemu-user instruction counts and
LLVM's scheduling model of the core), one thread.

    python deploy/estimate.py --target rasp4b --width 0.35 --res 96 --dtype float32,int8
    python deploy/estimate.py --target rasp5 --all-official --dtype float32,int8

An estimate, not a measurement (every report says what it leaves out). Results: printed as a
table, and appended to <results>/estimates.jsonl (mnv2-pick reads them). Deterministic and cached:
the same build gives the same estimate on every run and machine, and a rerun is instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnv2_edge.compile.cli_common import add_lowering_flags, add_model_flags, model_selection, run_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, default_target="rasp4b")
    add_lowering_flags(p)
    p.add_argument("--results", type=Path, help="results folder (default: results/<target>)")
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
    requests = model_selection(args).requests(target=args.target, out=args.out or DEFAULT_OUT,
                                              tuning_log=args.tuning_log, no_tuning=args.no_tuning,
                                              int8_lowering=args.int8_lowering)
    comparisons = compare(pipeline.build_each(requests), profile)
    written = append_results(comparisons, args.results or Path("results") / args.target)
    print()
    print(table(comparisons))
    print(f"appended to {written}")
    return 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
