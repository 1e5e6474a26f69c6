"""Speed on this machine, in one run: TVM untuned, TVM tuned (tuning_logs/host/) and LiteRT.

    python benchmarks/tuned_vs_litert.py [--variants 1.0/224,0.35/96] [--dtypes float32,int8] [--runs 30]

LiteRT runs XNNPACK with as many threads as TVM's thread pool (this machine's cores). Medians of
--runs single inferences each, after a warm-up. Prints the ratios; the machine is shared and noisy,
so compare ratios from one run, not absolute numbers across runs.
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
from deploy import runner  # noqa: E402
from deploy.reference import LiteRTModel  # noqa: E402
from deploy.session import LocalSession  # noqa: E402
from targets.profiles import load_profile  # noqa: E402


def tvm_median_ms(out_dir: Path, inputs, runs: int) -> float:
    session = LocalSession()
    device = session.device()
    vm = runner.load_vm(session.load(out_dir / "model.so"), device)
    runner.run(vm, device, inputs)  # warm-up, and sets the inputs
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=runs)
    return float(np.median(timer("main").results) * 1e3)


def litert_median_ms(model: Path, inputs, runs: int, threads: int) -> float:
    reference = LiteRTModel(model, num_threads=threads)
    reference.set_inputs(inputs)
    reference.invoke()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        reference.invoke()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples) * 1e3)


def breakdown(model: Path, database: Path) -> dict[str, float]:
    """Estimated ms per inference by task kind, from the database's best measured records."""
    mod, _ = load_relax(model)
    target = load_profile("host").tvm_target()
    db = tuning.TuningDatabase(database).open()
    totals: dict[str, float] = {}
    for task in tuning.extract_tasks(mod, target):
        best = tuning.best_seconds(db, task)
        kind = tuning.classify(task) if best is not None else "untuned"
        totals[kind] = totals.get(kind, 0.0) + (best or 0.0) * 1e3 * task.weight
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="1.0/224,0.35/96")
    parser.add_argument("--dtypes", default="float32,int8")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=pipeline.DEFAULT_OUT / "bench")
    args = parser.parse_args()
    threads = os.cpu_count()
    database = pipeline.TUNING_ROOT / "host"
    rows = []
    for spec in args.variants.split(","):
        width, res = spec.split("/")
        for dtype in args.dtypes.split(","):
            built = {}
            for label, no_tuning in (("untuned", True), ("tuned", False)):
                request = pipeline.BuildRequest(target="host", width=float(width), resolution=int(res), dtype=dtype,
                                                out=args.out / label, no_tuning=no_tuning)
                manifest = pipeline.build(request, progress=lambda m: None)[0]
                built[label] = (args.out / label / "host" / manifest["name"], manifest)
            out_dir, manifest = built["tuned"]
            inputs = model_inputs([TensorInfo(**t) for t in manifest["inputs"]], seed=0)
            untuned = tvm_median_ms(built["untuned"][0], inputs, args.runs)
            tuned = tvm_median_ms(out_dir, inputs, args.runs)
            litert = litert_median_ms(out_dir / "model.tflite", inputs, args.runs, threads)
            tuning_info = manifest["tuning"]
            rows.append((f"{width}/{res}", dtype, untuned, tuned, litert, tuning_info.get("tuned_tasks"),
                         tuning_info.get("tasks"), breakdown(out_dir / "model.tflite", database)))
    print(f"\nThis machine: {load_profile('host').target['mcpu']}, {threads} threads for TVM and LiteRT; "
          f"medians of {args.runs} runs\n")
    print("| variant | dtype | TVM untuned ms | TVM tuned ms | LiteRT ms | tuned / LiteRT | untuned / tuned | tuned tasks |")
    print("|---|---|---|---|---|---|---|---|")
    for name, dtype, untuned, tuned, litert, hit, total, _ in rows:
        print(f"| {name} | {dtype} | {untuned:.2f} | {tuned:.2f} | {litert:.2f} | {tuned / litert:.2f}x | "
              f"{untuned / tuned:.1f}x | {hit}/{total} |")
    print("\nEstimated tuned time per inference by task kind (ms, from the database's best records):")
    for name, dtype, *_, kinds in rows:
        print(f"  {name} {dtype}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
