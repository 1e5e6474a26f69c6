"""Compare a device's outputs with the references for the same input (deploy/reference.py).

Float outputs, where the file has a float64 reference: each runtime's error is measured against the
exact (float64) answer, relative to the output's largest magnitude. Ours must be no worse than
FLOAT_ERROR_FACTOR x LiteRT's own error on this machine (its largest on that output over the inputs
checked together: one input can be unusually lucky; see pool_litert_error) (never required below
FLOAT_ERROR_FLOOR, a few float32 steps); both round differently on each instruction set, so a fixed
bound between the two holds on one CPU and not the next, while this ratio holds on all. And the
top-1..top-5 ranks must match the exact ones wherever they are not a near tie (consecutive values
closer than twice the allowed error may swap). A real bug (wrong layout, padding or activation)
moves outputs by 1e-3 of their range or more; rounding moves them by about 1e-6.

Float outputs of a file the float64 pass does not cover: within NO_EXACT_TOLERANCE of LiteRT,
relative, and the same ranks where not a near tie.

Quantized outputs of the integer int8 path (compile/frontend/integer.py), which follows TFLite's
reference kernels: 0 LSB from those kernels where only conv, depthwise, fully connected, add and
(re)quantize lead to the output, 1 LSB after a MEAN or SOFTMAX (TFLite's own kernels differ there).
Where the reference kernels cannot run (they abort on some files), the rule below applies.

Other quantized outputs (TVM's dequantize path): within 1 LSB where LiteRT's own two kernel paths (XNNPACK and the plain
reference kernels) agree on this input; where they already disagree by `spread` steps, within
1 + 2 x spread. A rounding step taken differently early in a deep int8 net spreads through it, in
LiteRT as in TVM (which lowers int8 ops as dequantize -> float op -> quantize): measured here,
LiteRT's two paths differ by 4-8 LSB on the trained MobileNetV2, TVM lies 0-6 LSB from XNNPACK.
A real bug (wrong zero point, scale or layout) moves outputs by tens of steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FLOAT_ERROR_FACTOR = 4.0
FLOAT_ERROR_FLOOR = 1e-6
NO_EXACT_TOLERANCE = 1e-4
QUANT_LSB_TOLERANCE = 1
RANKS_CHECKED = 5


@dataclass
class OutputCheck:
    name: str
    dtype: str
    max_abs_error: float  # against LiteRT
    reference_max_abs: float
    relative_error: float  # against LiteRT, relative to its largest magnitude
    top1_reference: int
    top1_device: int
    ok: bool
    problem: str = ""
    error_vs_exact: float | None = None  # ours against float64, relative
    litert_error_vs_exact: float | None = None  # LiteRT's against float64, relative
    allowed: float | None = None  # the bound the deciding error was held to
    error_vs_reference_kernels: float | None = None  # integer path: LSB from TFLite's reference kernels
    note: str = ""  # a reference that could not be computed, and why

    def to_dict(self) -> dict:
        return asdict(self)


def top_k(values: np.ndarray, k: int) -> list[int]:
    flat = values.astype(np.float64).ravel()
    return [int(i) for i in np.argsort(-flat, kind="stable")[:k]]


def rank_problem(truth: np.ndarray, got: np.ndarray, margin: float, k: int = RANKS_CHECKED) -> str:
    """'' if got's top-1..top-k sets equal truth's wherever truth separates rank i from i+1 by more
    than margin; else what differs."""
    flat_truth, flat_got = truth.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    order = np.argsort(-flat_truth, kind="stable")
    got_order = np.argsort(-flat_got, kind="stable")
    for i in range(min(k, flat_truth.size - 1)):
        if flat_truth[order[i]] - flat_truth[order[i + 1]] <= margin:
            continue  # a near tie: these two may swap
        if set(got_order[:i + 1].tolist()) != set(order[:i + 1].tolist()):
            return f"top-{i + 1} classes {sorted(got_order[:i + 1].tolist())} differ from {sorted(order[:i + 1].tolist())}"
    return ""


def _relative(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    err = float(np.abs(a - b).max()) if a.size else 0.0
    return err / scale if scale else err


def check_output(name: str, reference: np.ndarray, device: np.ndarray, exact: np.ndarray | None = None,
                 reference_spread: float = 0, plain: np.ndarray | None = None,
                 plain_tolerance: int | None = None) -> OutputCheck:
    """reference: LiteRT's output; exact: the float64 pass's (float outputs), when there is one;
    plain and plain_tolerance: TFLite's reference kernels' output and the LSB allowed from it."""
    if reference.shape != device.shape:
        return OutputCheck(name, str(reference.dtype), np.inf, 0.0, np.inf, -1, -1, False,
                           f"shape {device.shape} differs from the reference {reference.shape}")
    ref, got = reference.astype(np.float64), device.astype(np.float64)
    finite = np.isfinite(ref)
    if not finite.all() or not np.isfinite(got).all():
        # A file with non-finite weights makes NaN or Inf: a match only where LiteRT has the very
        # same ones; the finite values are then compared as usual.
        if not np.array_equal(np.isfinite(got), finite) or not np.array_equal(ref[~finite], got[~finite],
                                                                               equal_nan=True):
            return OutputCheck(name, str(reference.dtype), np.inf, 0.0, np.inf, -1, -1, False,
                               f"non-finite values (NaN/Inf) at {int((~np.isfinite(got)).sum())} places, where "
                               f"LiteRT has them at {int((~finite).sum())}")
        note = f"NaN/Inf at the same {int((~finite).sum())} places as LiteRT (the file's own values make them)"
        if not finite.any():
            return OutputCheck(name, str(reference.dtype), 0.0, 0.0, 0.0, -1, -1, True, note=note)
        ref, got = ref[finite], got[finite]
        exact = exact[finite] if exact is not None and exact.shape == finite.shape else None
        exact = exact if exact is not None and np.isfinite(exact).all() else None
        check = check_output(name, ref.astype(reference.dtype), got.astype(reference.dtype), exact)
        check.note = (check.note + "; " if check.note else "") + note
        return check
    err = float(np.abs(ref - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = err / scale if scale else err
    check = OutputCheck(name, str(reference.dtype), err, scale, rel, top_k(ref, 1)[0], top_k(got, 1)[0], True)
    if np.issubdtype(reference.dtype, np.integer) and plain is not None and plain_tolerance is not None:
        check.allowed = plain_tolerance
        steps = float(np.abs(plain.astype(np.int64) - device.astype(np.int64)).max()) if plain.size else 0.0
        check.error_vs_reference_kernels = steps
        if steps > check.allowed:
            check.ok, check.problem = False, (f"differs from TFLite's reference kernels by {steps:g} steps (LSB), "
                                              f"more than the {check.allowed:g} allowed")
        return check
    if np.issubdtype(reference.dtype, np.integer):
        check.allowed = QUANT_LSB_TOLERANCE + 2 * reference_spread
        if err > check.allowed:
            check.ok, check.problem = False, f"differs by {err:g} steps (LSB), more than the {check.allowed:g} allowed"
        return check
    if exact is not None:
        exact_scale = float(np.abs(exact).max()) if exact.size else 0.0
        check.error_vs_exact = _relative(got, exact, exact_scale)
        check.litert_error_vs_exact = _relative(ref, exact, exact_scale)
        check.allowed = FLOAT_ERROR_FACTOR * max(check.litert_error_vs_exact, FLOAT_ERROR_FLOOR)
        ours, truth, truth_scale = check.error_vs_exact, exact, exact_scale
        if ours > check.allowed:
            check.ok, check.problem = False, (
                f"error {ours:.2e} against the float64 result, over {FLOAT_ERROR_FACTOR:g}x LiteRT's own "
                f"({check.litert_error_vs_exact:.2e})")
    else:
        check.allowed, ours, truth, truth_scale = NO_EXACT_TOLERANCE, rel, ref, scale
        if ours > check.allowed:
            check.ok, check.problem = False, f"relative error {rel:.2e} against LiteRT (limit {NO_EXACT_TOLERANCE:g})"
    ranks = rank_problem(truth, got, 2 * check.allowed * truth_scale)
    if check.ok and ranks:
        check.ok, check.problem = False, ranks
    return check


def pool_litert_error(checks: list[OutputCheck]) -> list[OutputCheck]:
    """Hold each float output, over several inputs, to FLOAT_ERROR_FACTOR x LiteRT's largest error on
    that output over those inputs: LiteRT's error on one input can be unusually small by luck (measured:
    7.6e-07 on one input of the trained float16 MobileNetV2 where its other inputs give 3e-06), and
    rounding is the same kind on every input. Only the error rule is pooled; the ranks keep theirs."""
    worst: dict[str, float] = {}
    for c in checks:
        if c.litert_error_vs_exact is not None:
            worst[c.name] = max(worst.get(c.name, 0.0), c.litert_error_vs_exact)
    for c in checks:
        if c.name in worst and c.error_vs_exact is not None:
            pooled = FLOAT_ERROR_FACTOR * max(worst[c.name], FLOAT_ERROR_FLOOR)
            if not c.ok and c.problem.startswith("error ") and c.error_vs_exact <= pooled:
                c.ok, c.problem = True, ""
            c.allowed = max(c.allowed or 0.0, pooled)
    return checks


def check_outputs(names: list[str], reference, device: list[np.ndarray]) -> list[OutputCheck]:
    """reference: a deploy.reference.Reference for the same input set."""
    if len(reference.litert) != len(device):
        return [OutputCheck("*", "", np.inf, 0.0, np.inf, -1, -1, False,
                            f"{len(device)} outputs, the reference has {len(reference.litert)}")]
    plain = reference.plain or [None] * len(device)
    tolerance = reference.plain_tolerance or [None] * len(device)
    checks = [check_output(n, r, d, e, s, p, t) for n, r, d, e, s, p, t in
              zip(names, reference.litert, device, reference.exact, reference.spread, plain, tolerance)]
    for check in checks:
        check.note = "; ".join(reference.notes)
    return checks


def summarize(checks: list[OutputCheck]) -> str:
    """One line: the worst errors of ours and of LiteRT, and any reference that was missing."""
    exact = [c for c in checks if c.error_vs_exact is not None]
    if exact:
        text = (f"worst error against float64 {max(c.error_vs_exact for c in exact):.1e} "
                f"(LiteRT's {max(c.litert_error_vs_exact for c in exact):.1e})")
    elif any(c.error_vs_reference_kernels is not None for c in checks):
        text = (f"worst difference from TFLite's reference kernels "
                f"{max(c.error_vs_reference_kernels or 0 for c in checks):g} steps (LSB), from XNNPACK "
                f"{max(c.max_abs_error for c in checks):g}")
    else:
        text = f"worst difference from LiteRT {max(c.max_abs_error for c in checks):g}" + (
            " steps (LSB)" if checks[0].dtype.startswith(("int", "uint")) else " (relative "
            f"{max(c.relative_error for c in checks):.1e})")
    notes = sorted({c.note for c in checks if c.note})
    return text + "".join(f"; {n}" for n in notes)
