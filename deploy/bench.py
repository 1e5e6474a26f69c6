"""Sweep MobileNetV2 variants on a device: build, upload, verify against LiteRT, time, report.

    python deploy/bench.py --target rasp4b --rpc-tracker 127.0.0.1:9190 --rpc-key rasp4b \\
        --widths 0.35,0.5,0.75,1.0 --resolutions 96,128,160,192,224 [--dtype float32,int8] [--all-official]
    python deploy/bench.py --target arm_cpu --emulated-board --widths 0.35 --resolutions 96
    python deploy/bench.py --target rasp4b --ssh pi@raspberrypi.local --ssh-key ~/.ssh/id_ed25519
    python deploy/bench.py --target host            # this machine, no RPC
    python deploy/bench.py --target rasp4b --rpc-tracker 127.0.0.1:9190 --model my_model.tflite

Results: <out>/results.jsonl (appended per variant; a rerun resumes), results.csv, report.md,
latency_vs_macs.png.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

if __package__ in (None, ""):
    # `python deploy/bench.py` puts deploy/ first on sys.path; the project root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from compile.cli_common import run_main  # noqa: E402
from compile.errors import UserError  # noqa: E402
from deploy.device_flags import add_device_flags, endpoint_for  # noqa: E402


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, not {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="host", help="device profile in targets/ (default: host)")
    add_device_flags(p)
    what = p.add_argument_group("variants")
    what.add_argument("--widths", type=_floats, default=[1.0], help="e.g. 0.35,0.5,0.75,1.0")
    what.add_argument("--resolutions", type=_ints, default=[224], help="e.g. 96,128,160,192,224")
    what.add_argument("--dtype", default="float32", help="float32, int8 or float32,int8")
    what.add_argument("--all-official", action="store_true", help="the 22 published variants")
    what.add_argument("--model", type=Path, action="append", default=[], metavar="FILE.tflite",
                      help="sweep this TFLite file instead of the variants (repeat for several)")
    timing = p.add_argument_group("timing (TVM's time evaluator)")
    timing.add_argument("--number", type=int, default=10, help="runs averaged per repeat (default 10)")
    timing.add_argument("--repeat", type=int, default=20, help="timed repeats (default 20)")
    timing.add_argument("--min-repeat-ms", type=int, default=0, help="grow --number until a repeat lasts this long")
    timing.add_argument("--cooldown", type=int, default=0, help="ms to rest between repeats")
    timing.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    timing.add_argument("--threads", type=int, help="threads of TVM's runtime on the device (default: the "
                        "profile's num-cores; this machine's cores for host). Set on the device over RPC")
    p.add_argument("--force", action="store_true",
                   help="measure again what an identical earlier measurement in results.jsonl covers")
    p.add_argument("--verify-inputs", type=int, default=1, help="inputs checked against LiteRT per variant")
    p.add_argument("--timeout", type=float, default=300, help="seconds per variant on the device (default 300)")
    p.add_argument("--key-wait", type=float, default=10, help="seconds to wait for the key at the tracker")
    p.add_argument("--out", type=Path, help="results folder (default: results/<target>)")
    p.add_argument("--dist", type=Path, help="artifact folder (default: dist/)")
    p.add_argument("--tuning-log", type=Path, help="MetaSchedule database (default: tuning_logs/<target>/, for host tuning_logs/host/<CPU class>/)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from deploy.measure import TimingSettings
    from deploy.sweep import SweepConfig, run_sweep
    from compile.threads import profile_threads
    from targets.profiles import load_profile

    profile = load_profile(args.target)  # unknown targets fail before anything starts
    if args.model and args.all_official:
        raise UserError("--model and --all-official exclude each other: sweep the files, or the 22 variants.")
    missing = [str(path) for path in args.model if not path.is_file()]
    if missing:
        raise UserError(f"No such model file: {', '.join(missing)}.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads takes a whole number of at least 1, not {args.threads}.")
    # Emulated timings mean nothing, so the emulated board keeps its runtime's default.
    threads = args.threads or (None if args.emulated_board else profile_threads(profile))
    with contextlib.ExitStack() as stack:
        endpoint, label = endpoint_for(args, stack)
        config = SweepConfig(
            target=args.target, endpoint=endpoint, widths=args.widths, resolutions=args.resolutions,
            dtypes=[d for d in args.dtype.split(",") if d], all_official=args.all_official, models=args.model,
            timing=TimingSettings(args.number, args.repeat, args.min_repeat_ms, args.cooldown, args.warmup, threads),
            timeout=args.timeout, key_wait=args.key_wait, verify_inputs=args.verify_inputs,
            out=args.out or Path("results") / args.target, tuning_log=args.tuning_log,
            device_label=label, emulated=args.emulated_board, force=args.force,
        )
        if args.dist:
            config.dist = args.dist
        all_results = run_sweep(config)
    print()
    print((config.out / "report.md").read_text())
    print(f"results of this run: {config.out}/results.csv, report.md, latency_vs_macs.png; "
          f"every run's: {config.out}/results.jsonl")
    return 0 if all(r.status == "ok" for r in all_results) else 1


if __name__ == "__main__":
    run_main(main)
