"""Wall time of one sweep over 1, 2 and 4 RPC servers registered under one tracker key (a farm).

    python benchmarks/farm_scaling.py [--servers 1,2,4] [--threads 1] [--number 5 --repeat 10]

The 16 variants (widths 0.35-1.0 x resolutions 96-192, float32, host target) are built first, so
the sweeps time measuring only. The servers are deploy/board_server.py processes on 127.0.0.1 of
this machine, each running TVM on --threads threads: on a machine with C cores the farm cannot go
faster than about C / threads boards' worth, which is the point where the curve flattens here.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.compile.cli_common import require_at_least, run_main
from mnv2_edge.targets.errors import UserError
from mnv2_edge.deploy import loopback
from mnv2_edge.deploy.measure import TimingSettings
from mnv2_edge.deploy.session import Endpoint
from mnv2_edge.deploy.sweep import SweepConfig, run_sweep

KEY = "farm"


def sweep_wall_seconds(servers: int, selection, dist: Path, work: Path, timing: TimingSettings) -> tuple[float, int]:
    """(wall seconds, distinct boards that measured) of one sweep over `servers` servers."""
    services = loopback.Services()
    try:
        tracker = loopback.start_tracker(work / "logs")
        services.items.append(tracker)
        for index in range(servers):
            services.items.append(loopback.start_server(KEY, work / "logs", tracker.port, name=f"board-{index}",
                                                        env={"TVM_NUM_THREADS": str(timing.threads)}))
        config = SweepConfig(target="host", endpoint=Endpoint(loopback.LOOPBACK, tracker.port, KEY),
                             selection=selection, timing=timing, timeout=300, results=work / f"results-{servers}",
                             remeasure=True)
        config.dist = dist
        started = time.perf_counter()
        done = run_sweep(config, progress=lambda m: None)
        wall = time.perf_counter() - started
    finally:
        services.stop()
    failed = [r.name for r in done if r.status != "ok"]
    if failed:
        raise SystemExit(f"{servers} server(s): failed {failed}")
    return wall, len({r.board for r in done})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="1,2,4")
    parser.add_argument("--threads", type=int, default=1, help="TVM threads per server (default 1)")
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    try:
        server_counts = [int(n) for n in args.servers.split(",")]
    except ValueError:
        raise UserError(f"--servers takes whole numbers, comma-separated (for example 1,2,4), not {args.servers!r}.") \
            from None
    require_at_least(*(("--servers", n, 1) for n in server_counts), ("--threads", args.threads, 1),
                     ("--number", args.number, 1), ("--repeat", args.repeat, 1))
    selection = pipeline.ModelSelection(widths=[0.35, 0.5, 0.75, 1.0], resolutions=[96, 128, 160, 192])
    with tempfile.TemporaryDirectory(prefix="farm-") as folder:
        work = Path(folder)
        dist = work / "dist"
        requests = selection.requests(target="host", out=dist)
        print(f"building {len(requests)} variants first ...", flush=True)
        for _, request in requests:
            pipeline.build(request, progress=lambda m: None)
        timing = TimingSettings(number=args.number, repeat=args.repeat, threads=args.threads, litert=False)
        cores = os.cpu_count()
        print(f"{len(requests)} variants, {args.number} x {args.repeat} timed runs each, {args.threads} TVM "
              f"thread(s) per server, {cores} cores here")
        print("| servers | boards used | wall s | speed-up |\n|---|---|---|---|")
        base = None
        for servers in server_counts:
            wall, used = sweep_wall_seconds(servers, selection, dist, work, timing)
            base = base or wall
            print(f"| {servers} | {used} | {wall:.1f} | {base / wall:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
