"""Runs inside the emulated aarch64 python (imports nothing of the project): load one model with one
thread, run it until lazy set-up is done, then run `--count` inferences between the two markers the
block-counting plugin (count_blocks.c) watches for, and write the process's memory map beside its
counts, so each block's address can be named (library, symbol).

    python3 guest_inference.py --runtime tvm|litert --model FILE --inputs FILE.npz --count N --maps OUT
    python3 guest_inference.py --kernels LIST.json --maps OUT

With --kernels (MetaSchedule's candidates, compile/schedules/tune_job.py through the simulated
core's runner), each entry {"library", "inputs"} is one compiled kernel: called once untimed, then
once between markers of its own region (1, 2, ...), so one process counts a whole batch.
"""

from __future__ import annotations

import argparse
import ctypes
import os

MARK_SYSCALL, MARK_MAGIC = 172, 0x6D6E7632  # getpid on aarch64 (ignores its arguments); "mnv2"
POOLED_ALLOCATOR = 2  # tvm.relax.VirtualMachine.POOLED_ALLOCATOR, its default
WARMUP_RUNS = 1  # the first run allocates and packs weights; from the second on, every run is the same


def tvm_runner(model: str, arrays: list):
    import tvm  # the runtime only (the board's wheel has no compiler): the Relax VM's calls, as
    # tvm.relax.VirtualMachine makes them

    device = tvm.cpu()
    vm = tvm.runtime.load_module(model)["vm_load_executable"]()
    vm["vm_initialization"](device.dlpack_device_type(), device.index, POOLED_ALLOCATOR)
    vm["set_input"]("main", *[tvm.runtime.tensor(x, device) for x in arrays])
    invoke = vm["invoke_stateful"]
    return lambda: invoke("main")


def litert_runner(model: str, arrays: list):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    for detail, array in zip(interpreter.get_input_details(), arrays):
        interpreter.set_tensor(detail["index"], array)
    return interpreter.invoke


def kernel_runner(library: str, arrays: list):
    import tvm

    module = tvm.runtime.load_module(library)
    function = module[module.entry_name]
    tensors = [tvm.runtime.tensor(x, tvm.cpu()) for x in arrays]
    return lambda: function(*tensors)


def _arrays(path: str) -> list:
    import numpy as np

    with np.load(path) as data:
        return [data[name] for name in data.files]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", choices=("tvm", "litert"))
    parser.add_argument("--model")
    parser.add_argument("--inputs")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--kernels")
    parser.add_argument("--maps", required=True)
    args = parser.parse_args()
    libc = ctypes.CDLL(None)
    if args.kernels:
        import json

        with open(args.kernels) as listing:
            kernels = json.load(listing)
        # Every library stays loaded to the end: the map written then must place each of them.
        loaded = [kernel_runner(kernel["library"], _arrays(kernel["inputs"])) for kernel in kernels]
        for region, run in enumerate(loaded, start=1):
            run()
            libc.syscall(MARK_SYSCALL, MARK_MAGIC, 1, 0)
            run()
            libc.syscall(MARK_SYSCALL, MARK_MAGIC, 0, region)
    else:
        run = (tvm_runner if args.runtime == "tvm" else litert_runner)(args.model, _arrays(args.inputs))
        libc.syscall(MARK_SYSCALL, MARK_MAGIC, 2, 0)  # the simulated caches (if any) warm from here on
        for _ in range(WARMUP_RUNS):
            run()
        libc.syscall(MARK_SYSCALL, MARK_MAGIC, 1, 0)
        for _ in range(args.count):
            run()
        libc.syscall(MARK_SYSCALL, MARK_MAGIC, 0, 0)
    with open("/proc/self/maps") as maps, open(args.maps, "w") as out:
        out.write(maps.read())
    os._exit(0)  # nothing after the region matters; skip the interpreter's slow teardown under qemu


if __name__ == "__main__":
    main()
