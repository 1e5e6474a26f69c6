"""AArch64 NEON forms of TFLite's fixed-point requantization, as a TIR pass after vectorization.

The front end (compile/frontend/fixed_point.py) writes SaturatingRoundingDoublingHighMul for every
target as one 32 x 32 -> 64-bit product: (x m + 2^30) >> 31. AArch64 has no full-width form of
that product, so LLVM makes it smull + smull2 + rshrn + rshrn2 per four lanes, where gemmlowp's NEON
path (which defines TFLite's rounding) uses one `sqrdmulh`: (2 x m + 2^31) >> 32, saturated, is the
same value for every x and m except x = m = INT32_MIN, where it saturates. The front end's
multipliers are in [0, 2^31) (QuantizeMultiplier), so the two never differ: bit-exact.

RoundingDivideByPOT comes from the front end as (v + ((1 << r) >> 1)) >> r, v already carrying
gemmlowp's sign fix-up: LLVM makes the half and the shift several instructions per vector and per
channel, where NEON's `srshl` by -r is that rounding shift in one. srshl rounds in wider precision,
so it equals the int32 form wherever that form does not overflow, and where it would, srshl is the
one that agrees with TFLite (whose RoundingDivideByPOT never overflows).

A pass after VectorizeLoop (compile/schedules/tir_pipeline.py), so it sees the vectors that will
be emitted whatever the schedule (a default rule's or a tuned record's): NEON's sqrdmulh and srshl
take 2 or 4 lanes, so wider vectors are cut into 4-lane slices (free: a 16-lane int32 vector is four
registers); scalars keep sqrdmulh's scalar form and LLVM's shift (srshl has no 32-bit scalar form).
"""

from __future__ import annotations

SQRDMULH = "llvm.aarch64.neon.sqrdmulh"
SRSHL = "llvm.aarch64.neon.srshl"


def _int_value(expr) -> int | None:
    """The integer of a constant or a broadcast constant; None otherwise."""
    from tvm import tirx

    if isinstance(expr, tirx.Broadcast):
        expr = expr.value
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _int32_operand(expr):
    """The int32 expression the front end widened: x of Cast(int64, x) where x is int32 (any lanes),
    a constant that fits int32 as one; None otherwise. TVM's simplifier pushes the widening inward
    (Cast(int64, a + b) becomes Cast(int64, a) + Cast(int64, b)), so a sum or difference of such
    terms, or one shifted left by a constant of 0-31 places or by a widened int32, is the front end's
    int32 sum, difference or shift: every int64 Add, Sub and LShift that reaches here is such a
    widening pushed inward (the front end computes them in int32)."""
    from tvm import tirx

    if isinstance(expr, tirx.Cast) and expr.ty.dtype.startswith("int64") and \
            expr.value.ty.dtype.split("x")[0] == "int32":
        return expr.value
    if isinstance(expr, (tirx.Add, tirx.Sub)):
        a, b = _int32_operand(expr.a), _int32_operand(expr.b)
        if a is None or b is None:
            return None
        return a + b if isinstance(expr, tirx.Add) else a - b
    if type(expr).__name__ == "LShift":  # the ADD's inputs, shifted left in int32 before their rescale
        value, amount = _int32_operand(expr.a), _int32_operand(expr.b)
        constant = _int_value(expr.b)  # an int32 shift is defined up to 31 places
        if value is None or amount is None or (constant is not None and not 0 <= constant < 32) or \
                (constant is None and not isinstance(expr.b, tirx.Cast)):
            return None
        return value << amount
    constant = _int_value(expr)  # a multiplier known when compiling, widened to int64 by the simplifier
    if constant is not None and -(1 << 31) <= constant < 1 << 31:
        narrow = tirx.IntImm("int32", constant)
        return tirx.Broadcast(narrow, expr.lanes) if isinstance(expr, tirx.Broadcast) else narrow
    return None


def _signed_terms(expr, sign: int = 1) -> list:
    """expr as (sign, term) pairs over its additions and subtractions."""
    from tvm import tirx

    if isinstance(expr, tirx.Add):
        return _signed_terms(expr.a, sign) + _signed_terms(expr.b, sign)
    if isinstance(expr, tirx.Sub):
        return _signed_terms(expr.a, sign) + _signed_terms(expr.b, -sign)
    return [(sign, expr)]


def _signed_sum(pairs: list):
    """(sign, term) pairs back as one expression."""
    total = None
    for sign, term in pairs:
        total = (term if sign > 0 else 0 - term) if total is None else (total + term if sign > 0 else total - term)
    return total


def _others(expr, is_marked) -> list | None:
    """The (sign, term) pairs of the sum `expr` other than its one added term for which is_marked
    holds (a rounding constant); None unless there is exactly one such term and at least one other."""
    terms = _signed_terms(expr)
    marked = [i for i, (sign, term) in enumerate(terms) if sign == 1 and is_marked(term)]
    if len(marked) != 1 or len(terms) < 2:
        return None
    return [pair for i, pair in enumerate(terms) if i != marked[0]]


def doubling_high_operands(cast):
    """(x, m) when `cast` is Cast(int32, (Cast(int64, x) * Cast(int64, m) + 2^30) >> 31), the front
    end's SaturatingRoundingDoublingHighMul; None for anything else. TVM's simplifier distributes
    the product over a sum (x = a + b - c gives a m + b m - c m): the terms are gathered back."""
    from tvm import tirx
    from tvm_ffi.structural import structural_equal

    if not (isinstance(cast, tirx.Cast) and cast.ty.dtype.split("x")[0] == "int32"):
        return None
    shifted = cast.value
    if type(shifted).__name__ != "RShift" or _int_value(shifted.b) != 31:
        return None
    products = _others(shifted.a, lambda term: _int_value(term) == 1 << 30)
    if products is None:
        return None
    values, multiplier = [], None
    for sign, term in products:
        if not isinstance(term, tirx.Mul):
            return None
        value, factor = _int32_operand(term.a), _int32_operand(term.b)
        if value is None or factor is None or \
                (multiplier is not None and not structural_equal(factor, multiplier)):
            return None
        multiplier = factor
        values.append((sign, value))
    return _signed_sum(values), multiplier


def rounding_shift_operands(shift):
    """(v, right) when `shift` is (v + ((1 << right) >> 1)) >> right, the front end's rounding right
    shift (RoundingDivideByPOT after its fixup), the half in any place of the sum, or folded to the
    constant 2^(right - 1) for a constant right; None for anything else."""
    from tvm_ffi.structural import structural_equal

    if type(shift).__name__ != "RShift" or shift.ty.dtype.split("x")[0] != "int32":
        return None
    right, constant_right = shift.b, _int_value(shift.b)

    def is_half(term) -> bool:
        if constant_right is not None and constant_right >= 1:
            return _int_value(term) == 1 << (constant_right - 1)
        return type(term).__name__ == "RShift" and _int_value(term.b) == 1 and \
            type(term.a).__name__ == "LShift" and _int_value(term.a.a) == 1 and structural_equal(term.a.b, right)

    rest = _others(shift.a, is_half)
    return None if rest is None else (_signed_sum(rest), right)


def neon_intrinsic(intrinsic: str, a, b, lanes: int):
    """A two-operand NEON intrinsic on int32 lanes: one call for 1, 2 or 4 lanes, 4-lane slices of
    wider vectors (free: a 16-lane int32 vector is four registers)."""
    from tvm import tirx

    if lanes in (1, 2, 4):
        return tirx.call_llvm_pure_intrin("int32" if lanes == 1 else f"int32x{lanes}", intrinsic, a, b)
    index = lambda values: [tirx.IntImm("int32", v) for v in values]  # noqa: E731
    slices = [neon_intrinsic(intrinsic, tirx.Shuffle([a], index(range(at, at + 4))),
                             tirx.Shuffle([b], index(range(at, at + 4))), 4)
              for at in range(0, lanes, 4)]
    return tirx.Shuffle(slices, index(range(lanes)))


# Widest vector rewritten: each 4-lane slice names its whole operand, and codegen emits the operand
# once per slice, so nested requantizations (an add's inputs and its sum, 4 deep) multiply the code
# by (lanes / 4) ^ depth. Up to 16 lanes (the default rules' widths) it compiles in seconds; tuning
# candidates with 24-64 lanes took over 6 GB. Wider vectors keep LLVM's forms (correct, slower).
MAX_LANES = 16


def lanes_of(expr) -> int:
    dtype = expr.ty.dtype
    return int(dtype.split("x")[1]) if "x" in dtype else 1


def _neon_takes(lanes: int, scalar_form: bool) -> bool:
    """Whether neon_intrinsic makes `lanes` int32 lanes: 2, 4-lane slices up to MAX_LANES, and one
    lane where the instruction has a scalar form (sqrdmulh has, srshl has not)."""
    return (lanes == 1 and scalar_form) or lanes == 2 or (lanes % 4 == 0 and lanes <= MAX_LANES)


def rewrite(func):
    """The PrimFunc with every doubling high multiply as sqrdmulh and every rounding right shift of a
    vector as srshl by its negated amount, where NEON has the lane count (srshl has no 32-bit
    scalar form: scalars keep LLVM's)."""
    from tvm import tirx
    from tvm_ffi.structural import structural_map

    def on_cast(cast):
        operands, lanes = doubling_high_operands(cast), lanes_of(cast)
        if operands is None or not _neon_takes(lanes, scalar_form=True):
            return cast
        return neon_intrinsic(SQRDMULH, *operands, lanes)

    def on_shift(shift):
        operands, lanes = rounding_shift_operands(shift), lanes_of(shift)
        if operands is None or not _neon_takes(lanes, scalar_form=False):
            return shift
        value, right = operands
        return neon_intrinsic(SRSHL, value, 0 - right, lanes)

    return structural_map(func, [(tirx.Cast, on_cast), (tirx.RShift, on_shift)])


def pass_():
    from tvm import tirx

    return tirx.transform.prim_func_pass(lambda func, _mod, _ctx: rewrite(func), opt_level=0,
                                         name="mnv2.NeonFixedPoint")
