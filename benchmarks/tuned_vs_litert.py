"""Speed on this machine, in one run: TVM with default schedules (no database), TVM with
tuning_logs/host/ where it has records for the variant, and LiteRT (XNNPACK) on the same file.

    python benchmarks/tuned_vs_litert.py [--variants 1.0/224,0.35/96 | --all-official]
                                         [--dtypes float32,int8] [--runs 30] [--threads N]

int8 is the integer path (compile/frontend/integer.py). The protocol is the sweep's on a board
(deploy/comparison.py): the same file, inputs and threads for every runtime (--threads, default this
machine's cores, set and read back for TVM: left alone, TVM runs half the cores on x86), --runs
single inferences each taken in 10 interleaved turns, the order rotated every turn, a pause between
one runtime's share and the next (TVM's idle workers stop spinning within it), one untimed inference
before each share. The headline is each runtime's **median** and the ratio of medians; the 10th
percentile (the 3rd fastest of 30) stands beside it. A control, LiteRT alone in a process of its own
(no TVM model run there), runs the same way for every row. A row is timed again at the end, and both runs
shown, where its LiteRT median is more than 25% off the control's or where a runtime reads slower at
a smaller resolution of the same width (a burst of another tenant on a shared machine, not a
property of the code). Compare ratios from one run, not absolute numbers across runs. The last table
says where the default-schedule build spends its time, by kind of kernel.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.compile.schedules import tuning
from mnv2_edge.compile.cli_common import parse_variants, require_at_least, run_main
from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.frontend.convert import load_relax
from mnv2_edge.compile.generation.generate import DTYPES
from mnv2_edge.compile.generation.images import model_inputs
from mnv2_edge.compile.artifacts.manifest import Manifest
from mnv2_edge.compile.paths import DEFAULT_OUT
from mnv2_edge.compile.threads import SPIN_COUNT
from mnv2_edge.compile.generation.variants import official_variants
from mnv2_edge.deploy import comparison, runner
from mnv2_edge.deploy.session import LocalSession
from mnv2_edge.targets.profiles import load_profile

TURNS = 10
CONTROL_OFF = 1.25  # LiteRT's median this far from its control's (either way): timed again


def tvm_loaded(out_dir: Path, inputs):
    """The built model in a VM on this CPU, run once (a warm-up) with `inputs`, which stay set."""
    session = LocalSession()
    device = session.device()
    vm = runner.load_vm(session.load(out_dir / "model.so"), device)
    runner.run(vm, device, inputs)
    return vm, device


def litert_loaded(model: Path, inputs, threads: int) -> comparison.Timer:
    """LiteRT in this process through the board server's own function: the sweep's LiteRT timer."""
    function, _ = LocalSession().litert_timer()
    timer, _, why = comparison.litert_timer(function, model.read_bytes(), inputs, threads)
    if timer is None:
        raise UserError(f"LiteRT cannot time {model}: {why}")
    return timer


def litert_alone(model: str, inputs: list, threads: int, plan: comparison.Plan, queue) -> None:
    """The control: LiteRT alone in a fresh process (no TVM model run there, so no TVM pool workers), same plan."""
    queue.put(comparison.interleave({"LiteRT": litert_loaded(Path(model), inputs, threads)}, plan)["LiteRT"])


def control_ms(model: Path, inputs, threads: int, plan: comparison.Plan) -> np.ndarray:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=litert_alone, args=(str(model), inputs, threads, plan, queue))
    process.start()
    samples = queue.get(timeout=600)
    process.join()
    return np.asarray(samples) * 1e3


def measured_breakdown(out_dir: Path, inputs, kinds: dict[str, str], runs: int) -> dict[str, float]:
    """Ms per inference by task kind inside whole inferences (weights and activations as the model leaves
    them in the caches), timed around each call of a kernel of the model (the VM's own builtins are left out)."""
    vm, _ = tvm_loaded(out_dir, inputs)
    calls: dict[str, list[float]] = {}
    started: list[float] = []

    def instrument(_func, name, before_run, _ret, *_args):
        if before_run:
            started.append(time.perf_counter())
        else:
            elapsed = time.perf_counter() - started.pop()
            if name in kinds:  # a kernel of the model, not one of the VM's own builtins
                calls.setdefault(kinds[name], []).append(elapsed)
        return 0  # carry on

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm.invoke_stateful("main")
    return {kind: sum(times) * 1e3 / runs for kind, times in calls.items()}


def time_row(width: float, res: int, dtype: str, args, threads: int, has_database: bool, target) -> dict:
    """One variant: built with default schedules (and with the database where it has records), timed
    against LiteRT by the shared protocol, LiteRT's control beside."""
    def build(label: str, no_tuning: bool) -> tuple[Path, Manifest]:
        request = pipeline.BuildRequest(target="host", width=width, resolution=res, dtype=dtype,
                                        out=args.out / label, no_tuning=no_tuning)
        manifest = pipeline.build(request, progress=lambda m: None)[0]
        return args.out / label / "host" / manifest.name, manifest

    default_dir, manifest = build("default", True)
    tasks = tuning.classified_tasks(load_relax(default_dir / "model.tflite")[0], target)
    # The kernels the database gives a searched or transferred record, as its build counts them.
    database_dir, database_manifest = build("database", False) if has_database else (None, None)
    covered = database_manifest.tuning["tuned_tasks"] if database_manifest is not None else 0
    inputs = model_inputs(manifest.inputs, seed=0)
    timers = {"default": comparison.tvm_timer(*tvm_loaded(default_dir, inputs))}
    if covered:
        timers["database"] = comparison.tvm_timer(*tvm_loaded(database_dir, inputs))
    timers["litert"] = litert_loaded(default_dir / "model.tflite", inputs, threads)
    plan = comparison.Plan(1, args.runs, TURNS)
    times = {name: np.asarray(t) * 1e3 for name, t in comparison.interleave(timers, plan).items()}
    control = control_ms(default_dir / "model.tflite", inputs, threads, plan)
    kinds = {task.task_name: kind for task, kind in tasks}
    return {"name": f"{width:g}/{res}", "width": width, "res": res, "dtype": dtype, "times": times,
            "control": control, "covered": covered, "tasks": len(tasks),
            "breakdown": measured_breakdown(default_dir, inputs, kinds, args.runs)}


def suspicious(rows: list[dict]) -> list[int]:
    """Rows to time again: LiteRT off its own control, or a runtime slower at a smaller resolution than
    at the next larger one of the same width and dtype (both rows of such a pair)."""
    flagged = {i for i, row in enumerate(rows)
               if not 1 / CONTROL_OFF <= np.median(row["times"]["litert"]) / np.median(row["control"]) <= CONTROL_OFF}
    by_size = sorted(range(len(rows)), key=lambda i: (rows[i]["width"], rows[i]["dtype"], rows[i]["res"]))
    for smaller, larger in zip(by_size, by_size[1:]):
        a, b = rows[smaller], rows[larger]
        if (a["width"], a["dtype"]) == (b["width"], b["dtype"]) and any(
                np.median(a["times"][k]) > np.median(b["times"][k]) for k in a["times"] if k in b["times"]):
            flagged.update((smaller, larger))
    return sorted(flagged)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="1.0/224,0.35/96", help="width/resolution, comma-separated")
    parser.add_argument("--all-official", action="store_true", help="the 22 published width/resolution pairs")
    parser.add_argument("--dtypes", default="float32,int8")
    parser.add_argument("--runs", type=int, default=30, help="timed inferences per runtime (at least 10)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--host-cpu", help="compile for this LLVM CPU instead of this machine's (e.g. znver3: "
                        "the AVX2 code another machine would get, run here); sets MNV2_HOST_CPU")
    args = parser.parse_args()
    require_at_least(("--runs", args.runs, TURNS), ("--threads", args.threads, 1))  # a run per turn, at least
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or set(dtypes) - set(DTYPES):
        raise UserError(f"--dtypes takes {', '.join(DTYPES)} or both, comma-separated, not {args.dtypes!r}.")
    if args.host_cpu:
        os.environ["MNV2_HOST_CPU"] = args.host_cpu
    specs = ([(v.width, v.resolution) for v in official_variants()] if args.all_official
             else parse_variants(args.variants))
    threads = LocalSession().set_threads(args.threads)
    if threads != args.threads:
        raise UserError(f"TVM's runtime runs {threads} threads, not the {args.threads} asked for.")
    has_database = tuning.has_database(tuning.database_path(load_profile("host")))  # this CPU class may have none
    target = load_profile("host").tvm_target()
    runs = [(width, res, dtype) for width, res in specs for dtype in dtypes]
    rows, started = [], time.perf_counter()
    for done, (width, res, dtype) in enumerate(runs):
        rows.append(time_row(width, res, dtype, args, threads, has_database, target))
        medians = {k: float(np.median(v)) for k, v in rows[-1]["times"].items()}
        elapsed = time.perf_counter() - started
        print(f"[{done + 1}/{len(runs)}] {width:g}/{res} {dtype}: default {medians['default']:.2f} ms, "
              f"LiteRT {medians['litert']:.2f} ms (medians; ETA "
              f"{elapsed / (done + 1) * (len(runs) - done - 1) / 60:.0f} min)", flush=True)
    first_runs = {}
    for index in suspicious(rows):
        row = rows[index]
        print(f"timing {row['name']} {row['dtype']} again (LiteRT off its control, or slower at a smaller size)",
              flush=True)
        first_runs[index] = row
        rows[index] = time_row(row["width"], row["res"], row["dtype"], args, threads, has_database, target)
    print_tables(rows, first_runs, args, threads)
    return 0


def print_tables(rows: list[dict], first_runs: dict[int, dict], args, threads: int) -> None:
    from tvm.target import codegen

    def median(row, name):
        return float(np.median(row["times"][name]))

    compiled_for = load_profile("host").target["mcpu"]
    print(f"\nThis machine: {codegen.llvm_get_system_cpu()}"
          + (f", TVM's code compiled for {compiled_for} (--host-cpu)" if args.host_cpu else "")
          + f"; TVM {threads} threads (set and read back from its runtime), TVM_THREAD_POOL_SPIN_COUNT "
          f"{os.environ.get('TVM_THREAD_POOL_SPIN_COUNT', SPIN_COUNT)}; LiteRT {threads} threads (XNNPACK); "
          f"{args.runs} inferences each in {TURNS} interleaved turns, order rotated. Medians first, the 10th "
          f"percentile in brackets; the control is LiteRT alone in its own process. * timed again (first run "
          f"below the table).\n")
    print("| variant | dtype | default ms | with tuning_logs/host ms | LiteRT ms | LiteRT alone ms | "
          "default / LiteRT | database / LiteRT | kernels from the database |")
    print("|---|---|---|---|---|---|---|---|---|")

    def line(row, mark=""):
        p10 = {k: float(np.percentile(v, 10)) for k, v in row["times"].items()}
        litert = median(row, "litert")
        database = (f"{median(row, 'database'):.2f} ({p10['database']:.2f})" if "database" in row["times"] else "-")
        db_ratio = f"{median(row, 'database') / litert:.2f}x" if "database" in row["times"] else "-"
        return (f"| {row['name']}{mark} | {row['dtype']} | {median(row, 'default'):.2f} ({p10['default']:.2f}) | "
                f"{database} | {litert:.2f} ({p10['litert']:.2f}) | {float(np.median(row['control'])):.2f} | "
                f"{median(row, 'default') / litert:.2f}x ({p10['default'] / p10['litert']:.2f}x) | {db_ratio} | "
                f"{row['covered']}/{row['tasks']} |")

    for index, row in enumerate(rows):
        print(line(row, " *" if index in first_runs else ""))
    ratios = {dtype: [median(r, "default") / median(r, "litert") for r in rows if r["dtype"] == dtype]
              for dtype in dict.fromkeys(r["dtype"] for r in rows)}
    for dtype, values in ratios.items():
        print(f"\n{dtype}: default / LiteRT medians: median {np.median(values):.2f}x, worst {max(values):.2f}x, "
              f"{sum(v <= 1.0 for v in values)} of {len(values)} at or under 1.0x")
    if first_runs:
        print("\nFirst runs of the rows timed again:\n")
        for index, row in sorted(first_runs.items()):
            print(line(row))
    print("\nDefault-schedule build, ms per inference by kind of kernel (timed around each call inside whole "
          "inferences, which adds a little):")
    for row in rows:
        print(f"  {row['name']} {row['dtype']}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["breakdown"].items())))


if __name__ == "__main__":
    run_main(main)
