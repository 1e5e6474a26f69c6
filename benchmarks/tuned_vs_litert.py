"""Speed on this machine, in one run: TVM with default schedules (no database), TVM with
tuning_logs/host/ where it has records for the variant, and LiteRT (XNNPACK) on the same file.

    python benchmarks/tuned_vs_litert.py [--variants 1.0/224,0.35/96 | --all-official]
                                         [--dtypes float32,int8] [--runs 30] [--threads N]

int8 is the integer path (compile/integer_frontend.py). TVM's runtime and LiteRT run the same number
of threads, --threads (default: this machine's cores), set and read back for TVM: left alone, TVM
runs half the cores on x86. --runs single inferences each, taken in 10 turns (a warm-up, then
back-to-back inferences of one runtime, then the next). Each runtime's time is the 10th percentile
of its inferences (the 3rd fastest of 30): on a shared machine another tenant only ever adds time,
in bursts that hit one runtime's turn and not the other's (with medians, 0.75/96 int8 swung
from 3.5x to 0.86x of LiteRT between two runs); the ratio of medians is printed beside it. Prints the ratios:
compare ratios from one run, not absolute numbers across runs. The last table says where the
default-schedule build spends its time, by kind of kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

from compile import pipeline, tuning  # noqa: E402
from compile.frontend import load_relax  # noqa: E402
from compile.manifest import Manifest  # noqa: E402
from compile.images import model_inputs  # noqa: E402
from compile.paths import DEFAULT_OUT  # noqa: E402
from compile.variants import official_variants  # noqa: E402
from deploy import runner  # noqa: E402
from deploy.reference import LiteRTModel  # noqa: E402
from deploy.session import LocalSession  # noqa: E402
from targets.profiles import load_profile  # noqa: E402


def tvm_loaded(out_dir: Path, inputs):
    """The built model in a VM on this CPU, run once (a warm-up) with `inputs`, which stay set."""
    session = LocalSession()
    device = session.device()
    vm = runner.load_vm(session.load(out_dir / "model.so"), device)
    runner.run(vm, device, inputs)
    return vm


def tvm_invoker(out_dir: Path, inputs):
    vm = tvm_loaded(out_dir, inputs)
    return lambda: vm.invoke_stateful("main")  # synchronous on the CPU


def litert_invoker(model: Path, inputs, threads: int):
    reference = LiteRTModel(model, num_threads=threads)
    reference.set_inputs(inputs)
    reference.invoke()  # warm-up
    return reference.invoke


def interleaved_times_ms(invokers: dict, runs: int, rounds: int = 10) -> dict[str, np.ndarray]:
    """`runs` inference times (ms) each, taken in `rounds` turns, so that slow phases of the shared
    machine fall on all of them. Within a turn the inferences run back to back after an untimed one,
    as benchmark_model does: caches warm. TVM's idle workers stop spinning soon after its turn
    (compile/threads.py's SPIN_COUNT, set with the threads): with TVM's default they spun on through
    LiteRT's turns, which then read up to 2x slow (1.0/224 float32: 7.1 against 3.4 ms)."""
    samples: dict[str, list[float]] = {name: [] for name in invokers}
    for turn in range(rounds):
        for name, invoke in invokers.items():
            invoke()
            for _ in range(runs // rounds + (turn < runs % rounds)):
                started = time.perf_counter()
                invoke()
                samples[name].append(time.perf_counter() - started)
    return {name: np.asarray(times) * 1e3 for name, times in samples.items()}


def measured_breakdown(out_dir: Path, inputs, kinds: dict[str, str], runs: int) -> dict[str, float]:
    """Ms per inference by task kind inside whole inferences (weights and activations as the model leaves
    them in the caches), timed around each call of a kernel of the model (the VM's own builtins are left out)."""
    vm = tvm_loaded(out_dir, inputs)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="1.0/224,0.35/96", help="width/resolution, comma-separated")
    parser.add_argument("--all-official", action="store_true", help="the 22 published width/resolution pairs")
    parser.add_argument("--dtypes", default="float32,int8")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--host-cpu", help="compile for this LLVM CPU instead of this machine's (e.g. znver3: "
                        "the AVX2 code another machine would get, run here); sets MNV2_HOST_CPU")
    args = parser.parse_args()
    if args.host_cpu:
        os.environ["MNV2_HOST_CPU"] = args.host_cpu
    threads = LocalSession().set_threads(args.threads)
    if threads != args.threads:
        sys.exit(f"error: TVM's runtime runs {threads} threads, not the {args.threads} asked for.")
    if args.all_official:
        specs = [(v.width, v.resolution) for v in official_variants()]
    else:
        specs = [(float(w), int(r)) for w, r in (spec.split("/") for spec in args.variants.split(","))]
    has_database = tuning.has_database(tuning.database_path(load_profile("host")))  # this CPU class may have none
    target = load_profile("host").tvm_target()
    rows = []
    runs = [(width, res, dtype) for width, res in specs for dtype in args.dtypes.split(",")]
    started = time.perf_counter()
    for done, (width, res, dtype) in enumerate(runs):
        def build(label: str, no_tuning: bool) -> tuple[Path, Manifest]:
            request = pipeline.BuildRequest(target="host", width=width, resolution=res, dtype=dtype,
                                            out=args.out / label, no_tuning=no_tuning)
            manifest = pipeline.build(request, progress=lambda m: None)[0]
            return args.out / label / "host" / manifest.name, manifest

        default_dir, manifest = build("default", True)
        mod = load_relax(default_dir / "model.tflite")[0]
        tasks = tuning.classified_tasks(mod, target)
        # The kernels the database gives a searched or transferred record, as its build counts them.
        database_dir, database_manifest = build("database", False) if has_database else (None, None)
        covered = database_manifest.tuning["tuned_tasks"] if database_manifest is not None else 0
        inputs = model_inputs(manifest.inputs, seed=0)
        invokers = {"default": tvm_invoker(default_dir, inputs),
                    "litert": litert_invoker(default_dir / "model.tflite", inputs, threads)}
        if covered:
            invokers["database"] = tvm_invoker(database_dir, inputs)
        times = interleaved_times_ms(invokers, args.runs)
        fast = {name: float(np.percentile(t, 10)) for name, t in times.items()}
        median_ratio = float(np.median(times["default"]) / np.median(times["litert"]))
        kinds = {task.task_name: kind for task, kind in tasks}
        rows.append((f"{width:g}/{res}", dtype, fast["default"], fast.get("database"), fast["litert"], median_ratio,
                     covered, len(tasks), measured_breakdown(default_dir, inputs, kinds, args.runs)))
        elapsed = time.perf_counter() - started
        print(f"[{done + 1}/{len(runs)}] {width:g}/{res} {dtype}: default {fast['default']:.2f} ms, "
              f"LiteRT {fast['litert']:.2f} ms (ETA {elapsed / (done + 1) * (len(runs) - done - 1) / 60:.0f} min)",
              flush=True)
    from tvm.target import codegen

    compiled_for = load_profile("host").target["mcpu"]
    print(f"\nThis machine: {codegen.llvm_get_system_cpu()}"
          + (f", TVM's code compiled for {compiled_for} (--host-cpu)" if args.host_cpu else "")
          + f"; {threads} threads for TVM (set and read "
          f"back from its runtime) and for LiteRT; 10th percentiles of {args.runs} runs (medians: last column)\n")
    print("| variant | dtype | default schedules ms | with tuning_logs/host ms | LiteRT ms | default / LiteRT | "
          "database / LiteRT | kernels from the database | default / LiteRT, medians |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, dtype, default, tuned, litert, median_ratio, covered, total, _ in rows:
        with_db = f"{tuned:.2f}" if tuned is not None else "-"
        db_ratio = f"{tuned / litert:.2f}x" if tuned is not None else "-"
        print(f"| {name} | {dtype} | {default:.2f} | {with_db} | {litert:.2f} | {default / litert:.2f}x | "
              f"{db_ratio} | {covered}/{total} | {median_ratio:.2f}x |")
    print("\nDefault-schedule build, ms per inference by kind of kernel (timed around each call inside whole "
          "inferences, which adds a little):")
    for name, dtype, *_, measured in rows:
        print(f"  {name} {dtype}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(measured.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
