"""LiteRT (the TFLite runtime) as the numerical reference and the speed baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class LiteRTModel:
    def __init__(self, model_path: str | Path, num_threads: int | None = None, reference_kernels: bool = False):
        """XNNPACK (LiteRT's default CPU path), or with reference_kernels TFLite's plain kernels."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

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


def reference_outputs(model_path: str | Path, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """LiteRT's outputs, and per output how far LiteRT's two kernel paths disagree (integer
    outputs only; 0 for float ones, whose tolerance is relative)."""
    outputs = LiteRTModel(model_path).run(inputs)
    spread = [0.0] * len(outputs)
    if any(np.issubdtype(o.dtype, np.integer) for o in outputs):
        plain = LiteRTModel(model_path, reference_kernels=True).run(inputs)
        spread = [
            float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max()) if np.issubdtype(a.dtype, np.integer) else 0.0
            for a, b in zip(outputs, plain)
        ]
    return outputs, spread
