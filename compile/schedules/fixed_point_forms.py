"""The front end's fixed-point forms (compile/frontend/fixed_point.py) as they reach the lowered,
vectorized TIR, recognised for the architecture's rewrites of them (neon_fixed_point on AArch64,
x86_fixed_point on x86): SaturatingRoundingDoublingHighMul's 64-bit product and RoundingDivideByPOT's
rounding right shift, each matched only in its exact form, with what TVM's simplifier does to it
(the widening pushed into sums, products spread over them) undone."""

from __future__ import annotations

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


def lanes_of(expr) -> int:
    """The lanes of an expression's type: 1 for a scalar."""
    dtype = expr.ty.dtype
    return int(dtype.split("x")[1]) if "x" in dtype else 1
