"""The board's RPC server: TVM's own server, plus one function, `mnv2.litert`, that times LiteRT on
the board on the same .tflite file and inputs, so a sweep shows ours and LiteRT's side by side.

    python3 board_server.py --host 0.0.0.0 --port 9090 --tracker TRACKER:9190 --key rasp4b

Copy this one file to the board (it imports nothing of the project; it needs the TVM runtime and,
for the LiteRT column, `pip install ai-edge-litert` or `tflite-runtime` on the board). Its flags are
the main ones of `python -m tvm.exec.rpc_server` (below). The sweep starts it itself on the emulated board and over
SSH; on a board reached through a tracker or directly, start it instead of TVM's stock server (with
the stock server the LiteRT column stays empty and the report says why).
"""

from __future__ import annotations

import argparse
import os

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

    cache = {}

    def interpreter_for(model: bytes, threads: int):
        key = (hash(model), threads)
        if key not in cache:
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError:
                from tflite_runtime.interpreter import Interpreter  # the older package of the same runtime
            interpreter = Interpreter(model_content=model, num_threads=threads or None)
            interpreter.allocate_tensors()
            cache.clear()
            cache[key] = interpreter
        return cache[key]

    @tvm_ffi.register_global_func(FUNCTION, override=True)
    def litert(model: bytearray, inputs: bytearray, threads: int, number: int, repeat: int) -> str:
        """number == 0: load, set the inputs, run twice, return the second run's seconds (to size the
        timing); else time `repeat` x `number` runs and return the seconds per run of each repeat."""
        try:
            interpreter = interpreter_for(bytes(model), int(threads))
        except ImportError:
            return json.dumps({"error": "no LiteRT on the board: pip install ai-edge-litert (or tflite-runtime)"})
        except Exception as err:  # noqa: BLE001 - this LiteRT cannot run the file: say so, do not fail the session
            return json.dumps({"error": f"LiteRT on the board cannot run the file: {type(err).__name__}: {err}"})
        if int(number) == 0:
            arrays = np.load(io.BytesIO(bytes(inputs)))
            for detail, name in zip(interpreter.get_input_details(), arrays.files):
                interpreter.set_tensor(detail["index"], arrays[name])
            interpreter.invoke()
            begun = time.perf_counter()
            interpreter.invoke()
            return json.dumps({"per_run": time.perf_counter() - begun})
        samples = []
        for _ in range(int(repeat)):
            begun = time.perf_counter()
            for _ in range(int(number)):
                interpreter.invoke()
            samples.append((time.perf_counter() - begun) / int(number))
        return json.dumps({"samples": samples})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--port-end", type=int, default=9199)
    parser.add_argument("--tracker", help="HOST:PORT of the RPC tracker to register with")
    parser.add_argument("--key", default="", help="the device's tracker key")
    parser.add_argument("--custom-addr", help="the address the tracker gives clients for this server")
    args = parser.parse_args()
    os.environ.setdefault(SPIN_ENV, str(SPIN_COUNT))  # before the pool starts, as apps are told
    from tvm import rpc

    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    server = rpc.Server(args.host, args.port, args.port_end, key=args.key, tracker_addr=tracker,
                        custom_addr=args.custom_addr, no_fork=False, server_init_callback=prepare_server_process)
    server.proc.join()


if __name__ == "__main__":
    main()
