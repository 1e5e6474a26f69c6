"""Sweep MobileNetV2 variants on a device: build, upload, verify against LiteRT, time, report.

    python deploy/bench.py --target rasp4b --rpc-tracker 127.0.0.1:9190 --rpc-key rasp4b \\
        --widths 0.35,0.5,0.75,1.0 --resolutions 96,128,160,192,224 [--dtype float32,int8] [--all-official]
    python deploy/bench.py --target arm_cpu --emulated-board --widths 0.35 --resolutions 96
    python deploy/bench.py --target rasp4b --ssh pi@raspberrypi.local --ssh-key ~/.ssh/id_ed25519
    python deploy/bench.py --target host            # this machine, no RPC
    python deploy/bench.py --target rasp4b --rpc-tracker 127.0.0.1:9190 --model my_model.tflite

Results: <results>/results.jsonl (appended per variant; a rerun resumes), results.csv, report.md,
latency_vs_macs.png; artifacts in <out> (dist/ by default, shared with build.py).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path


from mnv2_edge.compile.cli_common import add_lowering_flags, add_model_flags, model_selection, require_at_least, run_main
from mnv2_edge.deploy.device_flags import add_device_flags, endpoint_for


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, default_target="host")
    add_lowering_flags(p)
    add_device_flags(p)
    timing = p.add_argument_group("timing: ours and LiteRT alike, in interleaved turns (deploy/comparison.py)")
    timing.add_argument("--number", type=int, default=10, help="runs averaged per repeat (default 10)")
    timing.add_argument("--repeat", type=int, default=20, help="timed repeats, each runtime's samples (default 20)")
    timing.add_argument("--min-repeat-ms", type=int, default=0,
                        help="grow --number, for both runtimes, until a repeat of the faster lasts this long")
    timing.add_argument("--cooldown", type=int, default=0, help="ms to rest between repeats, for both runtimes")
    timing.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    timing.add_argument("--threads", type=int, help="threads of TVM's runtime on the device (default: the "
                        "profile's num-cores; this machine's cores for host). Set on the device over RPC")
    p.add_argument("--no-litert", action="store_true",
                   help="do not time LiteRT on the device beside ours (by default it is, where the board's "
                        "server is deploy/board_server.py or the device is this machine)")
    p.add_argument("--remeasure", action="store_true",
                   help="measure again what an identical earlier measurement in results.jsonl covers")
    p.add_argument("--estimate", action="store_true",
                   help="also estimate ours and LiteRT on the profile's simulated Cortex-A core (one thread; "
                        "rasp4b, rasp5, arm_cpu): the report shows it beside the device's times, labelled as an "
                        "estimate. On the emulated board, the only speed figure that means anything")
    p.add_argument("--results", type=Path, help="results folder (default: results/<target>)")
    p.add_argument("--verify-inputs", type=int, default=1, help="inputs checked against LiteRT per variant")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds per model on the device (default 300), scaled up for models of more than "
                        "300M multiply-adds (1.4/224 gets about twice as long)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mnv2_edge.deploy.measure import TimingSettings
    from mnv2_edge.deploy.sweep import SweepConfig, run_sweep
    from mnv2_edge.compile.threads import profile_threads
    from mnv2_edge.targets.errors import UserError
    from mnv2_edge.targets.profiles import load_profile

    profile = load_profile(args.target)  # unknown targets fail before anything starts
    if args.estimate and not profile.core:
        raise UserError(f"--estimate: target {args.target} names no simulated core ([core] in its profile); "
                        f"these do: rasp4b, rasp5, arm_cpu.")
    selection = model_selection(args)
    selection.requests()  # bad choices (a missing file, an unknown dtype) fail before any device starts
    require_at_least(("--threads", args.threads, 1), ("--number", args.number, 1), ("--repeat", args.repeat, 1),
                     ("--min-repeat-ms", args.min_repeat_ms, 0), ("--cooldown", args.cooldown, 0),
                     ("--warmup", args.warmup, 0), ("--verify-inputs", args.verify_inputs, 1),
                     ("--timeout", args.timeout, 1), ("--key-wait", args.key_wait, 0))
    # Emulated timings mean nothing, so the emulated board keeps its runtime's default.
    threads = args.threads or (None if args.emulated_board else profile_threads(profile))
    with contextlib.ExitStack() as stack:
        endpoint, label = endpoint_for(args, stack)
        config = SweepConfig(
            target=args.target, endpoint=endpoint, selection=selection,
            timing=TimingSettings(args.number, args.repeat, args.min_repeat_ms, args.cooldown, args.warmup, threads,
                                  litert=not args.no_litert),
            timeout=args.timeout, key_wait=args.key_wait, verify_inputs=args.verify_inputs,
            results=args.results or Path("results") / args.target, tuning_log=args.tuning_log,
            no_tuning=args.no_tuning, int8_lowering=args.int8_lowering,
            device_label=label, emulated=args.emulated_board, remeasure=args.remeasure, estimate=args.estimate,
        )
        if args.out:
            config.dist = args.out
        all_results = run_sweep(config)
    print()
    print((config.results / "report.md").read_text())
    print(f"results of this run: {config.results}/results.csv, report.md, latency_vs_macs.png; "
          f"every run's: {config.results}/results.jsonl")
    return 0 if all(r.status == "ok" for r in all_results) else 1


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
