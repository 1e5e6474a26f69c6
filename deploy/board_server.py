"""The board's RPC server: TVM's own server, plus one function, `mnv2.litert`, that times LiteRT on
the board on the same .tflite file and inputs, so a sweep shows ours and LiteRT's side by side.

    python3 board_server.py --port 9090 --tracker TRACKER:9190 --key rasp4b      # loopback only
    python3 board_server.py --host 0.0.0.0 --port 9090 --tracker TRACKER:9190 --key rasp4b

A TVM RPC server runs whatever code a client sends it. So this one listens on 127.0.0.1 unless told
otherwise (reach it through SSH, as the sweep's --ssh does, or a tunnel); a farm behind a tracker on
a trusted network needs `--host` with the board's address, and the server says at start what that
exposes.

Copy this one file to the board (it imports nothing of the project; it needs the TVM runtime and,
for the LiteRT column, `pip install ai-edge-litert` or `tflite-runtime` on the board). Its flags are
the main ones of `python -m tvm.exec.rpc_server` (below). The sweep starts it itself on the emulated board and over
SSH; on a board reached through a tracker or directly, start it instead of TVM's stock server (with
the stock server the LiteRT column stays empty and the report says why).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

FUNCTION = "mnv2.litert"
# compile/threads.py's (this file imports nothing of the project): idle pool workers sleep soon
# after an inference instead of spinning on a core the board's other work needs.
SPIN_ENV, SPIN_COUNT = "TVM_THREAD_POOL_SPIN_COUNT", 10000


def prepare_server_process() -> None:
    """Runs in the server process before it serves (TVM's server_init_callback): the log says which
    client each session served, as TVM's stock server's does, and the LiteRT timer is registered
    (session processes are forked from this one and inherit both)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    register_litert_timer()


def register_litert_timer() -> None:
    import io
    import json
    import time

    import numpy as np
    import tvm_ffi

    loaded = []  # the one interpreter in use: the model sent with the last number == 0 call

    def load(model: bytes, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            from tflite_runtime.interpreter import Interpreter  # the older package of the same runtime
        interpreter = Interpreter(model_content=model, num_threads=threads or None)
        interpreter.allocate_tensors()
        loaded[:] = [interpreter]
        return interpreter

    @tvm_ffi.register_global_func(FUNCTION, override=True)
    def litert(model: bytearray, inputs: bytearray, threads: int, number: int, repeat: int, cooldown_ms: int,
               warmup_ms: int) -> str:
        """number == 0: load the model, set the inputs, run twice, return the second run's seconds (to
        size the timing). Else, on the loaded model and inputs (none are sent again): untimed runs for
        `warmup_ms` (at least one), then `repeat` samples of `number` runs with `cooldown_ms` between
        samples, as ours is timed (deploy/comparison.py); the seconds per run of each sample."""
        if int(number) == 0:
            try:
                interpreter = load(bytes(model), int(threads))
            except ImportError:
                return json.dumps({"error": "no LiteRT on the board: pip install ai-edge-litert (or tflite-runtime)"})
            except Exception as err:  # noqa: BLE001 - this LiteRT cannot run the file: say so, do not fail the session
                return json.dumps({"error": f"LiteRT on the board cannot run the file: {type(err).__name__}: {err}"})
            arrays = np.load(io.BytesIO(bytes(inputs)))
            for detail, name in zip(interpreter.get_input_details(), arrays.files):
                interpreter.set_tensor(detail["index"], arrays[name])
            interpreter.invoke()
            begun = time.perf_counter()
            interpreter.invoke()
            return json.dumps({"per_run": time.perf_counter() - begun})
        interpreter = loaded[0]
        begun = time.perf_counter()
        while True:
            interpreter.invoke()
            if time.perf_counter() - begun >= int(warmup_ms) / 1e3:
                break
        samples = []
        for index in range(int(repeat)):
            if index and int(cooldown_ms):
                time.sleep(int(cooldown_ms) / 1e3)
            begun = time.perf_counter()
            for _ in range(int(number)):
                interpreter.invoke()
            samples.append((time.perf_counter() - begun) / int(number))
        return json.dumps({"samples": samples})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this board only; 0.0.0.0 or the board's "
                             "address lets anyone who reaches the port run code on the board)")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--port-end", type=int, default=9199)
    parser.add_argument("--tracker", help="HOST:PORT of the RPC tracker to register with")
    parser.add_argument("--key", default="", help="the device's tracker key")
    parser.add_argument("--custom-addr", help="the address the tracker gives clients for this server")
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        print(f"warning: listening on {args.host}:{args.port}-{args.port_end}: anyone who can reach these "
              f"ports can run any code on this board as {os.environ.get('USER', 'this user')}. Use it on a "
              f"trusted network only, or keep the default 127.0.0.1 and reach the board over SSH.",
              file=sys.stderr, flush=True)
    os.environ.setdefault(SPIN_ENV, str(SPIN_COUNT))  # before the pool starts, as apps are told
    from tvm.rpc import server

    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    # What rpc.Server runs, run here: rpc.Server starts a second interpreter for it (a PopenWorker),
    # which imports TVM again: 7 of the 14 s the emulated board's server took to start under qemu.
    # Served alike: the listening loop in a thread, each session in a process forked from this one.
    # Ctrl-C ends the process at once: the loop's thread is no daemon, and Python would wait for it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    server._popen_start_rpc_server(args.host, args.port, args.port_end, is_proxy=False, tracker_addr=tracker,
                                   key=args.key, custom_addr=args.custom_addr, no_fork=False,
                                   server_init_callback=prepare_server_process)
    server.PopenRPCServerState.current.thread.join()
    sys.exit("error: the RPC server's listening loop stopped (the log above says why)")


if __name__ == "__main__":
    main()
