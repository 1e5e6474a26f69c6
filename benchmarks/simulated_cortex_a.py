"""ARM speed without a board: ours against LiteRT (XNNPACK) on simulated Cortex-A cores, every
official variant, and a check of the simulator against published figures.

    python benchmarks/simulated_cortex_a.py [--targets rasp4b,rasp5] [--dtypes float32,int8]
                                            [--variants 1.0/224,0.35/96 | all official by default] [--memory]

For each target with a [core] (rasp4b: Cortex-A72 at 1.5 GHz; rasp5: Cortex-A76 at 2.4 GHz, with
dotprod): build each variant, count one inference of ours and of LiteRT 1.4.0's XNNPACK on the same
file under qemu-user with that CPU, and estimate cycles with llvm-mca's model of the core
(deploy/simulated_core). One thread. Deterministic, cached, resumable (a rerun reuses every
finished estimate); the estimates are added to results/<target>/estimates.jsonl for mnv2-pick. An estimate, not a measurement: what it leaves out is printed with the tables.

Checks of the simulator's shape (printed): LiteRT's estimates against the 22 published Pixel 1
latencies (tensorflow/models, TFLite of 2018 on one Kryo core: rank correlation and the spread of the
ratio), and against XNNPACK's published Raspberry Pi 4 figures (end-to-end MobileNetV2 1.0/224, all
4 cores: float32 46 ms, int8 17 ms), our one-thread estimate divided by 4 as if threads scaled ideally,
and with --memory the memory model's estimate on 4 threads (the core's data caches simulated,
memory's bandwidth shared by the threads: deploy/simulated_core/estimate.py), from its fast end
(each loop's transfers overlapped with its arithmetic) to its slow end (nothing overlapped); and
against XNNPACK's published Pixel 3a figure (one thread of a Cortex-A75-class core at 2.0 GHz: 55
ms), which LLVM models as it does the A72.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.compile.cli_common import parse_variants, run_main
from mnv2_edge.compile.generation.variants import OFFICIAL_TABLE
from mnv2_edge.compile.paths import DEFAULT_OUT
from mnv2_edge.deploy.estimate import memory_table, table
from mnv2_edge.deploy.simulated_core.estimate import LEAVES_OUT, append_results, compare
from mnv2_edge.targets.errors import UserError
from mnv2_edge.targets.profiles import load_profile

XNNPACK_PI4_4_THREADS_MS = {"float32": 46.0, "int8": 17.0}  # XNNPACK's README, end2end benchmark, arm64
# XNNPACK's README (end2end_bench, March 2020): MobileNetV2 1.0/224 float32 on one thread of a Pixel 3a,
# whose big core is a Cortex-A75 derivative at 2.0 GHz. LLVM gives cortex-a75 the A57's scheduling
# model, the one it gives the A72, so the A72's estimated cycles at that clock are its estimate.
XNNPACK_PIXEL3A_1_THREAD = {"ms": 55.0, "clock_ghz": 2.0}


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0] * len(values)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def requests(target: str, dtype: str, variants: str | None):
    """Build requests for the official variants, or the --variants pairs (each pair, not the product
    of their widths and resolutions)."""
    from mnv2_edge.compile.artifacts.pipeline import ModelSelection

    if not variants:
        return ModelSelection(all_official=True, dtypes=[dtype]).requests(target=target, out=DEFAULT_OUT)
    return [request for width, resolution in parse_variants(variants)
            for request in ModelSelection(widths=[width], resolutions=[resolution], dtypes=[dtype])
            .requests(target=target, out=DEFAULT_OUT)]


def summary(rows, memory: bool = False) -> str:
    """The ratios' median and range: the estimate's, or with `memory` the memory model's on one thread
    (its fast end, then its slow end) and on all the profile's threads."""
    if not memory:
        return summary_of(rows, lambda c: c.ratio)

    def spread(index: int, end: int) -> str:  # end 0: the fast end, 1: the slow end
        ratios = sorted(c.memory_ratios(index)[end] for c in rows)
        return f"median {statistics.median(ratios):.2f}x, {ratios[0]:.2f}x-{ratios[-1]:.2f}x"

    threads = min(len(c.ours.memory.ms_on_threads) for c in rows)
    return (f"{summary_of(rows, lambda c: c.memory_ratio)}; nothing overlapped: {spread(0, 1)}. "
            f"On {threads} threads: {spread(threads - 1, 0)}; nothing overlapped: {spread(threads - 1, 1)}")


def summary_of(rows, ratio) -> str:
    ratios = sorted(ratio(c) for c in rows)
    worst = max(rows, key=ratio)
    return (f"median {statistics.median(ratios):.2f}x, best {ratios[0]:.2f}x, worst {ratio(worst):.2f}x "
            f"({worst.ours.model}); {sum(r <= 1.0 for r in ratios)} of {len(ratios)} at or under 1.0x")


def checks(rows) -> list[str]:
    lines = []
    for core in dict.fromkeys(c.litert.core for c in rows):  # one core at a time: ranks across cores mean nothing
        float_rows = [c for c in rows if c.dtype == "float32" and c.litert.core == core
                      and (c.width, c.resolution) in OFFICIAL_TABLE]
        if len(float_rows) < 5:
            continue
        estimated = [c.litert.ms for c in float_rows]
        published = [OFFICIAL_TABLE[(c.width, c.resolution)].pixel1_ms for c in float_rows]
        spread = sorted(p / e for e, p in zip(estimated, published))
        lines.append(f"LiteRT's estimate on the {core} against the published Pixel 1 column ({len(float_rows)} "
                     f"float32 variants): rank correlation {spearman(estimated, published):.3f}; published / "
                     f"estimated from {spread[0]:.2f} to {spread[-1]:.2f} (median {statistics.median(spread):.2f}): "
                     f"a constant ratio means the estimate scales the variants as the real core does")
    for c in rows:
        if (c.width, c.resolution, c.dtype) == (1.0, 224, "float32") and c.litert.llvm_mcpu == "cortex-a72":
            published, clock = XNNPACK_PIXEL3A_1_THREAD["ms"], XNNPACK_PIXEL3A_1_THREAD["clock_ghz"]
            at_clock = c.litert.cycles / (clock * 1e6)
            lines.append(f"XNNPACK on a Pixel 3a, 1.0/224 float32: published {published:g} ms on one thread of its "
                         f"Cortex-A75-class core at {clock:g} GHz; LLVM models the A75 as it does the A72 (the A57's "
                         f"model), so the A72 estimate's cycles at {clock:g} GHz: {at_clock:.1f} ms "
                         f"({100 * (at_clock / published - 1):+.0f}%; XNNPACK's kernels for an A72, every load an L1 hit)")
        if (c.width, c.resolution) == (1.0, 224) and c.target == "rasp4b" and c.dtype in XNNPACK_PI4_4_THREADS_MS:
            published = XNNPACK_PI4_4_THREADS_MS[c.dtype]
            lines.append(f"XNNPACK on a Pi 4, 1.0/224 {c.dtype}: published {published:g} ms on 4 threads; "
                         f"estimated {c.litert.ms:.1f} ms on 1 thread, {c.litert.ms / 4:.1f} ms if 4 threads scaled "
                         f"ideally ({100 * (c.litert.ms / 4 / published - 1):+.0f}%)")
            memory = c.litert.memory
            if memory and len(memory.ms_on_threads) >= 4:
                fast, slow = memory.ms_on_threads[3], memory.ms_on_threads_no_overlap[3]
                lines.append(f"  with the memory model: {memory.ms_on_threads[0]:.1f}-{memory.ms_on_threads_no_overlap[0]:.1f} "
                             f"ms on 1 thread, {fast:.1f}-{slow:.1f} ms on 4 (fast end {100 * (fast / published - 1):+.0f}%, "
                             f"slow end {100 * (slow / published - 1):+.0f}% from the published figure)")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="rasp4b,rasp5")
    p.add_argument("--dtypes", default="float32,int8")
    p.add_argument("--variants", help="WIDTH/RES pairs, comma-separated (default: the 22 official)")
    p.add_argument("--memory", action="store_true", help="also the memory model (the core's data caches "
                   "simulated, memory bandwidth, 1 to 4 threads): slower to count")
    p.add_argument("--out", type=Path, default=Path("results") / "simulated_cortex_a",
                   help="folder for report.md and comparisons.json")
    args = p.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    all_rows = []
    for target in [t for t in args.targets.split(",") if t]:
        profile = load_profile(target)
        if not profile.core:
            raise UserError(f"Target {target} names no simulated core ([core] in its profile): use rasp4b or rasp5.")
        for dtype in dtypes:
            rows = compare(pipeline.build_each(requests(target, dtype, args.variants)), profile, memory=args.memory)
            append_results(rows, Path("results") / target)  # where mnv2-pick looks
            all_rows += rows
    report = []
    for target in dict.fromkeys(c.target for c in all_rows):
        for dtype in dict.fromkeys(c.dtype for c in all_rows):
            rows = [c for c in all_rows if c.target == target and c.dtype == dtype]
            if rows:
                report += [f"## {target} ({rows[0].ours.core} at {rows[0].ours.clock_ghz:g} GHz), {dtype}: "
                           f"{summary(rows)}", "", table(rows)]
                if args.memory:
                    report += [f"With the memory model: {summary(rows, memory=True)}", "", memory_table(rows)]
    report += ["## Checks of the simulator", "", *[f"- {line}" for line in checks(all_rows)], "",
               f"All figures: {LEAVES_OUT}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(report) + "\n")
    (args.out / "comparisons.json").write_text(json.dumps([c.to_dict() for c in all_rows], indent=1))
    print("\n".join(report))
    print(f"\nwritten: {args.out / 'report.md'}, {args.out / 'comparisons.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
