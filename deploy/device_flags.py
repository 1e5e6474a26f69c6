"""The flags that say where a model runs, the same in every command that runs one (bench, classify),
and the Endpoint they name (see session.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from mnv2_edge.compile.cli_common import add_rpc_flags
from mnv2_edge.targets.errors import UserError
from mnv2_edge.deploy.session import DEFAULT_SESSION_TIMEOUT


def add_device_flags(parser) -> None:
    where = parser.add_argument_group("device (default: this machine, no RPC)")
    add_rpc_flags(where, "runs the models", DEFAULT_SESSION_TIMEOUT)
    where.add_argument("--rpc-host", metavar="HOST:PORT", help="a TVM RPC server, directly")
    where.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="start an RPC server on the board over SSH")
    where.add_argument("--ssh-key", type=Path, help="private key for --ssh (default: ssh-agent / ~/.ssh)")
    where.add_argument("--ssh-known-hosts", type=Path, help="known_hosts to check the board's host key "
                       "(default: ~/.ssh/known_hosts); unknown hosts are refused")
    where.add_argument("--ssh-python", default="python3", help="python with TVM's runtime on the board")
    where.add_argument("--emulated-board", action="store_true",
                       help="start the emulated Cortex-A board (qemu-user) for this command; its timings are NOT device latencies")
    where.add_argument("--key-wait", type=float, default=10,
                       help="seconds to wait for the tracker to have the key (or the server to answer)")


def endpoint_for(args, stack: contextlib.ExitStack):
    """The Endpoint to run on (None: this machine) and a label for the report."""
    from mnv2_edge.deploy import emulated_board, ssh_tunnel
    from mnv2_edge.compile.cli_common import parse_host_port
    from mnv2_edge.deploy.session import Endpoint
    from mnv2_edge.targets.profiles import load_profile

    chosen = [flag for flag in ("rpc_tracker", "rpc_host", "ssh", "emulated_board") if getattr(args, flag)]
    if len(chosen) > 1:
        raise UserError(f"Choose one way to reach the device, not {', '.join('--' + c.replace('_', '-') for c in chosen)}.")
    if args.emulated_board:
        services = emulated_board.start()
        stack.callback(emulated_board.stop)
        return Endpoint("127.0.0.1", services.find("tracker").port, emulated_board.KEY, args.session_timeout), \
            f"emulated board (qemu-user, key {emulated_board.KEY})"
    if args.rpc_tracker:
        host, port = parse_host_port(args.rpc_tracker, "--rpc-tracker")
        key = args.rpc_key or load_profile(args.target).rpc_key
        return Endpoint(host, port, key, args.session_timeout), ""
    if args.rpc_host:
        host, port = parse_host_port(args.rpc_host, "--rpc-host")
        return Endpoint(host, port, None, args.session_timeout), ""
    if args.ssh:
        tunnel = stack.enter_context(ssh_tunnel.SSHRPCServer(
            args.ssh, key_file=args.ssh_key, known_hosts=args.ssh_known_hosts, python=args.ssh_python))
        return Endpoint("127.0.0.1", tunnel.local_port, None, args.session_timeout), f"ssh {args.ssh}"
    if args.target != "host":
        raise UserError(f"{args.target} models run on a remote device: give --rpc-tracker, --rpc-host, --ssh "
                        f"or --emulated-board.")
    return None, "local"
