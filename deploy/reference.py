"""The references a device's outputs are checked against, all computed on the host.

- LiteRT (the TFLite runtime, XNNPACK: its default CPU path): the runtime users compare with, and
  the speed baseline.
- A float64 forward pass of the same file (compile/frontend/float64_reference.py): the exact answer, so each
  runtime's own float32 error can be measured (float outputs).
- TFLite's plain reference kernels: with XNNPACK, how far LiteRT's own two paths disagree on an
  integer output. They abort the whole process (SIGABRT) on some quantized files (every int8
  MobileNetV2 made by TensorFlow's converter), so they run in a child process; where they crash,
  the check goes on without them and says so.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.frontend.float64_reference import Float64Model, NoReference

# Bound on the reference kernels' child process (start-up included) for all input sets of a model.
PLAIN_KERNELS_TIMEOUT_S = 600


def litert_interpreter():
    """LiteRT's (Interpreter, OpResolverType); a UserError saying how to install it where it is absent
    (it is an extra of this package: the checks need it, building and deploying do not)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise UserError("Checking against LiteRT needs LiteRT, the TFLite runtime, which is not installed here: "
                        "pip install ai-edge-litert (or install this project with its extra: "
                        "pip install 'mnv2-edge[check]'). Building and running models do not need it.") from None
    return Interpreter, OpResolverType


class LiteRTModel:
    def __init__(self, model_path: str | Path, num_threads: int | None = None, reference_kernels: bool = False):
        """XNNPACK (LiteRT's default CPU path), or with reference_kernels TFLite's plain kernels."""
        Interpreter, OpResolverType = litert_interpreter()

        resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
        self.interpreter = Interpreter(
            model_path=str(model_path), num_threads=num_threads, experimental_op_resolver_type=resolver
        )
        self.interpreter.allocate_tensors()
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    def set_inputs(self, inputs: list[np.ndarray]) -> None:
        for detail, value in zip(self.input_details, inputs):
            self.interpreter.set_tensor(detail["index"], value)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def outputs(self) -> list[np.ndarray]:
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self.output_details]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.set_inputs(inputs)
        self.invoke()
        return self.outputs()


@dataclass
class Reference:
    """What one input set's device outputs are checked against, output by output."""

    litert: list[np.ndarray]
    exact: list[np.ndarray | None]  # float64 pass, for float outputs where the file allows it
    spread: list[float]  # integer outputs: steps between LiteRT's XNNPACK and reference kernels
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why
    plain: list[np.ndarray] | None = None  # TFLite's reference kernels' outputs, where they ran
    plain_tolerance: list[int] | None = None  # integer-lowered artifacts: LSB allowed against `plain`


def _plain_kernel_outputs(model_path: str, input_sets) -> list[list[np.ndarray]]:
    model = LiteRTModel(model_path, reference_kernels=True)
    return [model.run(values) for values in input_sets]


def plain_kernel_outputs(model_path: str | Path, input_sets, worker=_plain_kernel_outputs) -> tuple[list | None, str]:
    """TFLite's reference kernels on every input set, in a child process: (outputs, "") or
    (None, why) when they crash or hang. `worker` runs in the child (tests give one that crashes)."""
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(worker, str(model_path), input_sets).result(PLAIN_KERNELS_TIMEOUT_S), ""
    except BrokenProcessPool:
        return None, "TFLite's reference kernels crashed on this file (a LiteRT fault); checked against XNNPACK alone"
    except TimeoutError:
        return None, f"TFLite's reference kernels took over {PLAIN_KERNELS_TIMEOUT_S} s; checked against XNNPACK alone"


def reference_outputs(model_path: str | Path, input_sets, plain_tolerance: list[int] | None = None) -> list[Reference]:
    """One Reference per input set (a list of input arrays). `plain_tolerance` (per output, in LSB):
    the artifact follows TFLite's reference kernels (the integer int8 path), so its integer outputs
    are held to them within these steps instead of to LiteRT's spread."""
    try:
        litert = LiteRTModel(model_path)
        litert_outputs = [litert.run(values) for values in input_sets]
    except (ValueError, RuntimeError) as err:  # LiteRT refuses the file: nothing to check against
        message = str(err).strip().splitlines()
        raise UserError(f"LiteRT cannot run {model_path} ({message[-1] if message else type(err).__name__}), so "
                        f"there is no reference to verify against. Check the file with LiteRT first.") from None
    notes = []
    float_outputs = [not np.issubdtype(o.dtype, np.integer) for o in litert_outputs[0]] if litert_outputs else []
    exact_sets = [[None] * len(float_outputs) for _ in input_sets]
    if any(float_outputs):
        try:
            exact_model = Float64Model(model_path)
            exact_sets = [[e if is_float else None for e, is_float in zip(exact_model.run(values), float_outputs)]
                          for values in input_sets]
        except NoReference as err:
            notes.append(f"no float64 reference (it does not define {err}); checked against LiteRT alone")
        except (ValueError, IndexError, TypeError) as err:  # shapes the pass cannot follow in this file
            notes.append(f"no float64 reference (it failed: {type(err).__name__}: {err}); checked against LiteRT alone")
    plain_sets = None
    if not all(float_outputs):
        plain_sets, why = plain_kernel_outputs(model_path, input_sets)
        if why:
            notes.append(why)
    references = []
    for i, outputs in enumerate(litert_outputs):
        spread = [0.0] * len(outputs)
        if plain_sets is not None:
            spread = [float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max()) if not is_float else 0.0
                      for a, b, is_float in zip(outputs, plain_sets[i], float_outputs)]
        plain = None if plain_sets is None else plain_sets[i]
        references.append(Reference(outputs, exact_sets[i], spread, list(notes), plain,
                                    plain_tolerance if plain is not None else None))
    return references
