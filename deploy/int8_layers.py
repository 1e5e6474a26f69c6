"""Layer-by-layer comparison of the integer int8 path with LiteRT's kernels, on this host.

Builds the file's integer module with every op's output exposed (not only the model's outputs),
runs it, and compares each tensor with what LiteRT computed for it: TFLite's reference kernels
(the definition of int8 arithmetic, the bar), its optimized builtin kernels, and XNNPACK (model
outputs only: XNNPACK fuses the graph, its intermediate tensors are not kept). Used by the tests and
by benchmarks/int8_fidelity.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnv2_edge.compile.schedules import default_schedules
from mnv2_edge.compile.frontend.tflite_file import op_name, read_model
from mnv2_edge.compile.frontend.integer import from_quantized_tflite

KERNELS = {"reference": "BUILTIN_REF", "optimized": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "xnnpack": "AUTO"}


def _litert_tensors(path: Path, kernels: str, values, indices: list[int]) -> list[np.ndarray | None]:
    from mnv2_edge.deploy.reference import litert_interpreter

    Interpreter, OpResolverType = litert_interpreter()

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=getattr(OpResolverType, kernels),
                              experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), values):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    found = []
    for index in indices:
        try:
            found.append(interpreter.get_tensor(index).copy())
        except ValueError:  # a tensor a delegate kept to itself
            found.append(None)
    return found


def compare_layers(path: str | Path, input_sets, kernels=tuple(KERNELS)) -> dict[str, dict[str, int]]:
    """{kernels: {op kind or "output": worst LSB}} over the input sets."""
    import tvm
    from tvm import relax

    from mnv2_edge.targets.profiles import load_profile

    path = Path(path)
    model, _ = read_model(path)
    sub = model.Subgraphs(0)
    outputs = [int(i) for i in sub.OutputsAsNumpy()]
    layers = []
    for o in range(sub.OperatorsLength()):
        op = sub.Operators(o)
        index = int(op.OutputsAsNumpy()[0])
        if index not in outputs:
            layers.append((index, op_name(model, op)))
    mod = from_quantized_tflite(model, tuple(index for index, _ in layers))
    layers = [(index, "output") for index in outputs] + layers  # the module returns outputs first
    target = load_profile("host").tvm_target()
    # The default schedules, as every build gets them: the code users run is the code held to the
    # reference kernels (and TVM's plain pipeline takes minutes to JIT this many unscheduled kernels).
    with target, tvm.transform.PassContext(opt_level=3):
        executable = default_schedules.compile_cpu(mod, target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    worst: dict[str, dict[str, int]] = {name: {} for name in kernels}
    for values in input_sets:
        ours = [t.numpy() for t in vm["main"](*[tvm.runtime.tensor(v) for v in values])]
        for name in kernels:
            compared = layers[:len(outputs)] if name == "xnnpack" else layers  # XNNPACK keeps no intermediates
            theirs = _litert_tensors(path, KERNELS[name], values, [index for index, _ in compared])
            for (index, kind), mine, reference in zip(compared, ours, theirs):
                if reference is None:
                    continue
                steps = int(np.abs(reference.astype(np.int64) - mine.astype(np.int64)).max())
                worst[name][kind] = max(worst[name].get(kind, 0), steps)
    return worst
