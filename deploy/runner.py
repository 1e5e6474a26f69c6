"""Run a built model.so through the Relax VM's stateful API: the same calls work locally and over RPC."""

from __future__ import annotations

import numpy as np


def load_vm(library, device):
    """A Relax VirtualMachine over a loaded module (local `tvm.runtime.load_module` or an RPC one)."""
    from tvm import relax

    return relax.VirtualMachine(library, device)


def run(vm, device, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tvm

    vm.set_input("main", *[tvm.runtime.tensor(x, device) for x in inputs])
    vm.invoke_stateful("main")
    outputs = vm.get_outputs("main")
    if hasattr(outputs, "numpy"):
        return [outputs.numpy()]
    return [o.numpy() for o in outputs]
