"""Tune MobileNetV2's kernels with MetaSchedule into tuning_logs/<target>/ (one database per target;
for host, one per CPU class: tuning_logs/host/<class>/).

    python compile/tune.py --target host --width 1.0 --res 224 --trials 32
    python compile/tune.py --target host --all-variants --trials 16 --minutes 120
    python compile/tune.py --target host --all-variants --trials 0     # transfers only, no search
    python compile/tune.py --target rasp4b --rpc-tracker 127.0.0.1:9190 --rpc-key rasp4b --kinds depthwise,pointwise
    python compile/tune.py --target rasp5 --rpc-tracker 127.0.0.1:9190 --start-from tuning_logs/rasp4b
    python deploy/estimate.py --tune --target rasp5 --width 1.0 --res 224  # on the simulated core

Resumable: tasks that already hold --trials records are skipped. Ctrl-C leaves a valid database.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from mnv2_edge.compile.cli_common import add_lowering_flags, add_model_flags, add_rpc_flags, run_main


def add_search_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a search, the same wherever candidates are timed (here, or mnv2-estimate --tune)."""
    p.add_argument("--trials", type=int, default=32, help="timed candidates per task (default 32); 0: "
                   "only the default schedules and the records transferred from similar tasks")
    p.add_argument("--minutes", type=float, help="start no new task after this many minutes")
    p.add_argument("--kinds", default="all", help="depthwise,pointwise,stem,other or all (default all)")
    p.add_argument("--remeasure", action="store_true",
                   help="first time each task's best records and its default schedule again, replacing "
                        "their old times (after the rules changed, or a database timed on a busy machine)")
    p.add_argument("--start-from", type=Path, action="append", default=[], metavar="DIR",
                   help="another tuning database (the host's, another board's; repeatable): its records "
                   "for these tasks and similar ones are timed here first, and the search starts from them")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, default_target="host")
    add_lowering_flags(p, no_tuning=False)
    add_search_flags(p)
    # One measurement session is short: a board frozen in one is dropped after 2 minutes.
    add_rpc_flags(p.add_argument_group("device (default: this machine)"), "measures the candidates", 120)
    p.add_argument("--cache-flush", action="store_true",
                   help="flush the CPU caches before each measurement (candidates timed with cold weights, "
                        "one run per repeat) instead of timing 3 warm runs")
    p.add_argument("--compact", type=int, metavar="N", help="no tuning: keep the N best records per workload "
                   "(the trials done are remembered) so builds load the database fast; then exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compact is not None:
        return compact(args)
    from mnv2_edge.compile.cli_common import parse_host_port

    return search(args, rpc_tracker=parse_host_port(args.rpc_tracker, "--rpc-tracker") if args.rpc_tracker else None,
                  rpc_key=args.rpc_key, session_timeout=args.session_timeout, cache_flush=args.cache_flush)


def search(args: argparse.Namespace, **timing) -> int:
    """Tune the model the flags name (add_search_flags) with candidates timed as `timing` says
    (TuneRequest's fields: a board over RPC, this machine, or an estimator), and summarise."""
    from mnv2_edge.compile.schedules.tune_job import KINDS, TuneRequest, tune

    check_writable(args)
    request = TuneRequest(
        tuned_model(args),
        trials=args.trials, minutes=args.minutes,
        kinds=KINDS if args.kinds == "all" else tuple(k for k in args.kinds.split(",") if k),
        start_from=tuple(args.start_from), remeasure=args.remeasure, **timing,
    )
    report = tune(request)
    by_kind: dict[str, float] = {}
    for task in report.tasks:
        if task.best_ms is not None:
            by_kind[task.kind] = by_kind.get(task.kind, 0.0) + task.best_ms * task.weight
    done_before = sum(task.skipped for task in report.tasks)
    searched = "no search, --trials 0" if args.trials == 0 else \
        f"{len(report.tasks) - done_before} tasks tuned now, {done_before} done before"
    print(f"[tune] {'stopped by --minutes' if report.stopped_early else 'done'} in {report.seconds / 60:.1f} min "
          f"({searched}); "
          "estimated time per inference by kind: " + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(by_kind.items())))
    return 0


def tuned_model(args):
    """The one BuildRequest a tuning run takes: one model, one variant, or --all-official (in one dtype),
    whose distinct tasks are tuned once each."""
    from dataclasses import replace

    from mnv2_edge.compile.cli_common import model_selection
    from mnv2_edge.targets.errors import UserError
    from mnv2_edge.compile.paths import DEFAULT_OUT

    selection = model_selection(args)
    common = dict(target=args.target, tuning_log=args.tuning_log, int8_lowering=args.int8_lowering,
                  out=args.out or DEFAULT_OUT)
    if selection.all_official and len(selection.dtypes) == 1 and not selection.models:
        return replace(selection.requests(**common)[0][1], all_variants=True)
    requests = selection.requests(**common)
    if len(requests) != 1:
        listed = ", ".join(label for label, _ in requests[:4]) + (", ..." if len(requests) > 4 else "")
        raise UserError(f"Tune one model at a time ({len(requests)} chosen: {listed}), or --all-official in one "
                        f"--dtype, which tunes each distinct kernel of the 22 variants once.")
    return requests[0][1]


def check_writable(args) -> None:
    from mnv2_edge.compile.paths import SOURCE_CHECKOUT
    from mnv2_edge.targets.errors import UserError

    if not SOURCE_CHECKOUT and args.tuning_log is None:
        raise UserError("An installed mnv2-edge does not write into its installation: give --tuning-log DIR for "
                        "the database to write (and pass the same --tuning-log to mnv2-build and mnv2-bench).")


def compact(args) -> int:
    from mnv2_edge.compile.schedules import tuning
    from mnv2_edge.targets.errors import UserError
    from mnv2_edge.targets.profiles import load_profile

    check_writable(args)

    path = Path(args.tuning_log or tuning.database_path(load_profile(args.target)))
    if not tuning.has_database(path):
        raise UserError(f"{path} holds no MetaSchedule database (database_workload.json) to compact.")
    if args.compact < 1:
        raise UserError("--compact takes the number of records to keep per workload, at least 1.")
    tuning.repair_database(path)
    before, after = tuning.compact_database(path, keep=args.compact)
    print(f"[compact] {path}: {before} records -> {after} (at most {args.compact} per workload)")
    return 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
