"""Speed on this machine, in one run: TVM untuned, TVM tuned (tuning_logs/host/) and LiteRT.

    python benchmarks/tuned_vs_litert.py [--variants 1.0/224,0.35/96] [--dtypes float32,int8] [--runs 30]

int8 rows come twice: the integer path (compile/integer_frontend.py) and TVM's dequantize -> float
-> quantize lowering (--int8-lowering float), both with the same database.

TVM's runtime and LiteRT (XNNPACK) run the same number of threads, --threads (default: this
machine's cores), set and read back for TVM: left alone, TVM runs half the cores on x86. Medians of
--runs single inferences each, taken in turns (a warm-up, then back-to-back inferences of one
runtime, then the next) so that load from other tenants of this shared machine hits them alike.
Prints the ratios: compare ratios from one run, not absolute numbers across runs.
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
from compile.frontend import TensorInfo, load_relax  # noqa: E402
from compile.images import model_inputs  # noqa: E402
from compile.paths import DEFAULT_OUT, TUNING_ROOT  # noqa: E402
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


def interleaved_medians_ms(invokers: dict, runs: int, rounds: int = 5) -> dict[str, float]:
    """Medians of `runs` inferences each, taken in `rounds` turns: a burst of load on the shared machine
    hits all of them alike, so their ratios hold when absolute times move. Within a turn the inferences
    run back to back after an untimed one, as benchmark_model does: caches warm, the other runtime's
    spinning worker threads gone to sleep."""
    samples: dict[str, list[float]] = {name: [] for name in invokers}
    for turn in range(rounds):
        for name, invoke in invokers.items():
            invoke()
            for _ in range(runs // rounds + (turn < runs % rounds)):
                started = time.perf_counter()
                invoke()
                samples[name].append(time.perf_counter() - started)
    return {name: float(np.median(times) * 1e3) for name, times in samples.items()}


def estimated_breakdown(tasks: list[tuple], database: Path) -> dict[str, float]:
    """Ms per inference by task kind from the database's best records (each kernel timed alone, warm caches)."""
    db = tuning.TuningDatabase(database).open()
    totals: dict[str, float] = {}
    for task, kind in tasks:
        best = tuning.best_seconds(db, task)
        kind = kind if best is not None else "untuned"
        totals[kind] = totals.get(kind, 0.0) + (best or 0.0) * 1e3 * task.weight
    return totals


def measured_breakdown(out_dir: Path, inputs, kinds: dict[str, str], runs: int) -> dict[str, float]:
    """Ms per inference by task kind inside whole inferences (weights and activations as the model leaves
    them in the caches), timed around each VM call; calls that are not tuned kernels count as "vm"."""
    vm = tvm_loaded(out_dir, inputs)
    calls: dict[str, list[float]] = {}
    started: list[float] = []

    def instrument(_func, name, before_run, _ret, *_args):
        if before_run:
            started.append(time.perf_counter())
        else:
            calls.setdefault(kinds.get(name, "vm"), []).append(time.perf_counter() - started.pop())
        return 0  # carry on

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm.invoke_stateful("main")
    return {kind: sum(times) * 1e3 / runs for kind, times in calls.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="1.0/224,0.35/96")
    parser.add_argument("--dtypes", default="float32,int8")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    threads = LocalSession().set_threads(args.threads)
    if threads != args.threads:
        sys.exit(f"error: TVM's runtime runs {threads} threads, not the {args.threads} asked for.")
    database = TUNING_ROOT / "host"
    rows = []
    runs = [(spec, dtype, lowering) for spec in args.variants.split(",") for dtype in args.dtypes.split(",")
            for lowering in (("integer", "float") if dtype == "int8" else ("integer",))]
    for spec, dtype, lowering in runs:
        width, res = spec.split("/")
        built = {}
        for label, no_tuning in (("untuned", True), ("tuned", False)):
            request = pipeline.BuildRequest(target="host", width=float(width), resolution=int(res), dtype=dtype,
                                            out=args.out / lowering / label, no_tuning=no_tuning,
                                            int8_lowering=lowering)
            manifest = pipeline.build(request, progress=lambda m: None)[0]
            built[label] = (args.out / lowering / label / "host" / manifest["name"], manifest)
        out_dir, manifest = built["tuned"]
        inputs = model_inputs([TensorInfo(**t) for t in manifest["inputs"]], seed=0)
        medians = interleaved_medians_ms({"untuned": tvm_invoker(built["untuned"][0], inputs),
                                          "tuned": tvm_invoker(out_dir, inputs),
                                          "litert": litert_invoker(out_dir / "model.tflite", inputs, threads)},
                                         args.runs)
        untuned, tuned, litert = medians["untuned"], medians["tuned"], medians["litert"]
        tuning_info = manifest["tuning"]
        tasks = tuning.classified_tasks(load_relax(out_dir / "model.tflite", lowering)[0],
                                        load_profile("host").tvm_target())
        kinds = {task.task_name: kind for task, kind in tasks}
        label = dtype if dtype != "int8" else f"int8 {manifest['model']['lowering']}"
        rows.append((f"{width}/{res}", label, untuned, tuned, litert, manifest["library"]["size_bytes"],
                     tuning_info.get("tuned_tasks"),
                     tuning_info.get("tasks"), estimated_breakdown(tasks, database),
                     measured_breakdown(out_dir, inputs, kinds, args.runs)))
    print(f"\nThis machine: {load_profile('host').target['mcpu']}, {threads} threads for TVM (set and read "
          f"back from its runtime) and for LiteRT; "
          f"medians of {args.runs} runs\n")
    print("| variant | dtype (lowering) | TVM untuned ms | TVM tuned ms | LiteRT ms | tuned / LiteRT | "
          "untuned / tuned | model.so MB | tuned tasks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, dtype, untuned, tuned, litert, size, hit, total, *_ in rows:
        print(f"| {name} | {dtype} | {untuned:.2f} | {tuned:.2f} | {litert:.2f} | {tuned / litert:.2f}x | "
              f"{untuned / tuned:.1f}x | {size / 1e6:.1f} | {hit}/{total} |")
    print("\nTuned time per inference by task kind, ms: estimated from the database's best records (each kernel "
          "alone, warm caches) -> measured inside whole inferences (timed around each call, which adds a little)")
    for name, dtype, *_, estimated, measured in rows:
        print(f"  {name} {dtype}: " + ", ".join(f"{k} {estimated.get(k, 0):.2f} -> {measured.get(k, 0):.2f}"
                                                for k in sorted(set(estimated) | set(measured))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
