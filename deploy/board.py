"""The emulated Cortex-A board (arm64 CPython + TVM's RPC server under qemu-user), on loopback.

    python deploy/board.py provision   # once: arm64 packages and aarch64 wheels into .cache/board/
    python deploy/board.py start       # tracker + board server on 127.0.0.1; prints --rpc-tracker/--rpc-key
    python deploy/board.py status
    python deploy/board.py stop        # stops both, by the PIDs that start saved

Emulated timings are for correctness only, never device latencies.
"""

from __future__ import annotations

import argparse


from mnv2_edge.compile.cli_common import run_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["provision", "start", "status", "stop"])
    args = parser.parse_args(argv)
    from mnv2_edge.deploy import emulated_board

    if args.action == "provision":
        emulated_board.provision()
    elif args.action == "start":
        services = emulated_board.start()
        print(f"running; use --rpc-tracker 127.0.0.1:{services.find('tracker').port} --rpc-key "
              f"{emulated_board.KEY}; stop with: python deploy/board.py stop")
    elif args.action == "stop":
        emulated_board.stop()
        print("stopped")
    else:
        services = emulated_board.running()
        for service in services.items:
            print(f"{service.name}: pid {service.pid}, 127.0.0.1:{service.port}, log {service.log}")
        if not services.items:
            print("not running")
    return 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
