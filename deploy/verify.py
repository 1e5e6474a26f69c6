"""Compare a device's outputs with LiteRT's on the same input.

Float outputs: max abs error <= 1e-5 x max|reference| and the same top-1.

Quantized outputs: within 1 LSB where LiteRT's own two kernel paths (XNNPACK and the plain
reference kernels) agree on this input; where they already disagree by `spread` steps, within
1 + 2 x spread. A rounding step taken differently early in a deep int8 net spreads through it, in
LiteRT as in TVM (which lowers int8 ops as dequantize -> float op -> quantize): measured here,
LiteRT's two paths differ by 4-8 LSB on the trained MobileNetV2, TVM lies 0-6 LSB from XNNPACK.
A real bug (wrong zero point, scale or layout) moves outputs by tens of steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FLOAT_REL_TOLERANCE = 1e-5
QUANT_LSB_TOLERANCE = 1


@dataclass
class OutputCheck:
    name: str
    dtype: str
    max_abs_error: float
    reference_max_abs: float
    relative_error: float
    top1_reference: int
    top1_device: int
    ok: bool
    problem: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def top_k(values: np.ndarray, k: int) -> list[int]:
    flat = values.astype(np.float64).ravel()
    return [int(i) for i in np.argsort(-flat, kind="stable")[:k]]


def check_output(name: str, reference: np.ndarray, device: np.ndarray, reference_spread: float = 0) -> OutputCheck:
    if reference.shape != device.shape:
        return OutputCheck(name, str(reference.dtype), np.inf, 0.0, np.inf, -1, -1, False,
                           f"shape {device.shape} differs from the reference {reference.shape}")
    ref, got = reference.astype(np.float64), device.astype(np.float64)
    err = float(np.abs(ref - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = err / scale if scale else err
    top_ref, top_got = top_k(ref, 1)[0], top_k(got, 1)[0]
    if np.issubdtype(reference.dtype, np.integer):
        allowed = QUANT_LSB_TOLERANCE + 2 * reference_spread
        ok = err <= allowed
        problem = "" if ok else f"differs by {err:g} steps (LSB), more than the {allowed:g} allowed"
    else:
        ok = rel <= FLOAT_REL_TOLERANCE and top_ref == top_got
        problem = "" if ok else (
            f"relative error {rel:.2e} (limit {FLOAT_REL_TOLERANCE:g})" if rel > FLOAT_REL_TOLERANCE
            else f"top-1 class {top_got} differs from the reference's {top_ref}"
        )
    return OutputCheck(name, str(reference.dtype), err, scale, rel, top_ref, top_got, ok, problem)


def check_outputs(names: list[str], reference: list[np.ndarray], device: list[np.ndarray],
                  reference_spread: list[float] | None = None) -> list[OutputCheck]:
    if len(reference) != len(device):
        return [OutputCheck("*", "", np.inf, 0.0, np.inf, -1, -1, False,
                            f"{len(device)} outputs, the reference has {len(reference)}")]
    spread = reference_spread or [0.0] * len(reference)
    return [check_output(n, r, d, s) for n, r, d, s in zip(names, reference, device, spread)]
