"""TFLite's integer arithmetic, as its reference kernels define it, for the integer int8 path.

Two halves: the multipliers TFLite derives from the float scales when it prepares a model (computed
here in NumPy with the same float and double steps, since one bit of a multiplier changes
results), and the per-element arithmetic as TE computations in int32, as TFLite does it, with one
64-bit product per rescale: MultiplyByQuantizedMultiplier = SaturatingRoundingDoublingHighMul, then
RoundingDivideByPOT, as in tensorflow/lite/kernels/internal/common.h.
"""

from __future__ import annotations

import math

import numpy as np

INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}


def round_half_away(x: float) -> int:
    """std::round: halves away from zero (NumPy's round goes to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier: (q, shift) with real = q x 2^(shift - 31), q in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    fixed = round_half_away(fraction * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def quantize_value(value: float, scale: float, zero_point: int) -> int:
    """zero_point + round(f / scale), f / scale in float32 as TFLite's activation ranges compute it."""
    return zero_point + round_half_away(float(np.float32(value) / np.float32(scale)))


def activation_range(code: int, scale: float, zero_point: int, dtype: str) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the clamp a fused NONE/RELU/RELU_N1_TO_1/RELU6 gives."""
    qmin, qmax = INT_RANGES[dtype]
    if code == 1:  # RELU
        return max(qmin, quantize_value(0.0, scale, zero_point)), qmax
    if code == 2:  # RELU_N1_TO_1
        return max(qmin, quantize_value(-1.0, scale, zero_point)), min(qmax, quantize_value(1.0, scale, zero_point))
    if code == 3:  # RELU6
        return max(qmin, quantize_value(0.0, scale, zero_point)), min(qmax, quantize_value(6.0, scale, zero_point))
    if code == 0:
        return qmin, qmax
    raise ValueError(f"fused activation {code} has no integer form")


# ----- Relax expressions ------------------------------------------------------------------------


def const(value, dtype: str = "int64"):
    """A Relax constant of exactly this dtype."""
    from tvm import relax

    return relax.const(np.asarray(value, dtype=dtype), dtype)  # without dtype, int64 becomes int32


def _per_channel(value):
    """c -> int32 expression: value[c] of a TE tensor (per channel, the last axis), or one constant."""
    from tvm import tirx

    if isinstance(value, (int, np.integer)):
        return lambda c: tirx.const(int(value), "int32")
    return lambda c: value[c]


def _doubling_high(shape, value, multiplier, shift, name: str, left_shifts: bool = True):
    """TE stage: SaturatingRoundingDoublingHighMul(value << max(shift, 0), multiplier) per element,
    with its one 32 x 32 -> 64-bit product (both factors sign-extended from int32: x86's vpmuldq,
    AArch64's smull). Its own stage: the rounding after it reads it twice (value and sign), and
    TVM's analyses take no Let.

    SaturatingRoundingDoublingHighMul(x, m) = (x m + 2^30) >> 31, arithmetically: gemmlowp adds a
    nudge of 2^30 or 1 - 2^30 by sign and divides truncating, and for a negative product those
    agree with the floor of (x m + 2^30) / 2^31 (the case that saturates, both INT32_MIN, cannot
    happen: multipliers are positive). Without left_shifts (no channel's shift is positive, known
    from the constants: multipliers below 1, nearly every layer) the left shift is left out, not
    computed as a shift by zero in every lane."""
    from tvm import te, tirx

    multiplier, shift = _per_channel(multiplier), _per_channel(shift)

    def high(*index):
        c = index[-1]
        x = value(*index) << tirx.max(shift(c), 0) if left_shifts else value(*index)
        return ((x.astype("int64") * multiplier(c).astype("int64") + (1 << 30)) >> 31).astype("int32")

    return te.compute(shape, high, name=name)


def _divided_by_pot(high, shift, left_shifts: bool = True, only_right_shifts: bool = False):
    """RoundingDivideByPOT(high, e) for e = max(-shift, 0): halves away from zero, in gemmlowp's
    NEON form (h + ((h & -e) >> 31) + 2^(e-1)) >> e. The fixup (h & -e) >> 31 is -1 exactly where h
    is negative and e positive (-e has its sign bit set). Without left_shifts every shift is at
    most 0, so -e is the shift itself, read as is. With only_right_shifts (every channel's shift
    negative, known from the constants: nearly every conv) every -e has its sign bit set, so the
    fixup is h >> 31, one instruction less per vector (`ssra` of h by 31 onto itself on NEON).
    AArch64 makes the rounding shift one `srshl` by -e (compile/schedules/neon_fixed_point.py);
    elsewhere it is these plain int32 operations."""
    from tvm import tirx

    if isinstance(shift, tirx.IntImm):  # one shift for the tensor: nothing to round without a right shift
        if shift.value >= 0:
            return high
        exponent = shift
    else:
        exponent = tirx.min(shift, 0) if left_shifts else shift
    right = 0 - exponent
    half = (tirx.const(1, "int32") << right) >> 1
    fixup = high >> 31 if only_right_shifts else (high & exponent) >> 31
    return (high + fixup + half) >> right


def requantize(acc, bias, multiplier, shift, zero_point: int, low: int, high: int, dtype: str,
               single_rounding: bool = False, left_shifts: bool = True, only_right_shifts: bool = False):
    """TE: integer values [..., C] -> dtype, as TFLite's reference kernels finish a conv, depthwise,
    mean or requantize: + bias, MultiplyByQuantizedMultiplier(multiplier, shift) with its two
    roundings, + zero point, clamp to [low, high]. bias, multiplier and shift are per channel (TE
    tensors over the last axis) or one int each. In 32-bit lanes except one 32 x 32 -> 64-bit product
    per element: a third of the vector work of the same steps as int64 ops.

    With single_rounding, one: (x m + 2^(30 - shift)) >> (31 - shift), as LiteRT's reference
    FULLY_CONNECTED does (measured: the two differ on values within a hair of a half step).
    left_shifts: some channel's shift is positive; only_right_shifts: every channel's is negative
    (both read from the constants by the caller, see _divided_by_pot)."""
    from tvm import te, tirx

    bias_of, multiplier_of, shift_of = _per_channel(bias), _per_channel(multiplier), _per_channel(shift)

    def biased(*index):
        return acc(*index).astype("int32") + bias_of(index[-1])

    def clamped(*index, scaled):
        return tirx.max(tirx.min(scaled + zero_point, high), low).astype(dtype)

    if single_rounding:
        def element(*index):
            c = index[-1]
            total_shift = (31 - shift_of(c)).astype("int64")
            product = biased(*index).astype("int64") * multiplier_of(c).astype("int64")
            scaled = ((product + (tirx.const(1, "int64") << (total_shift - 1))) >> total_shift).astype("int32")
            return clamped(*index, scaled=scaled)

        return te.compute(acc.shape, element, name="requantize")
    high_mul = _doubling_high(acc.shape, biased, multiplier, shift, "requantize_high", left_shifts)
    return te.compute(acc.shape, lambda *index: clamped(*index, scaled=_divided_by_pot(
        high_mul(*index), shift_of(index[-1]), left_shifts, only_right_shifts)), name="requantize")


def add(a, b, a_zero: int, b_zero: int, a_rescale: tuple[int, int], b_rescale: tuple[int, int],
        left_shift: int, out_rescale: tuple[int, int], zero_point: int, low: int, high: int, dtype: str):
    """TE: TFLite's integer ADD (reference_integer_ops::AddElementwise) on two tensors of one shape:
    each input less its zero point, shifted left, rescaled (multiplier, shift); the sum rescaled to
    the output, + zero point, clamped. All in int32 as TFLite does it, each rescale one
    MultiplyByQuantizedMultiplier (two stages, see _doubling_high)."""
    from tvm import te

    high_a = _doubling_high(a.shape, lambda *i: (a(*i).astype("int32") - a_zero) << left_shift, *a_rescale, "add_high_a")
    high_b = _doubling_high(b.shape, lambda *i: (b(*i).astype("int32") - b_zero) << left_shift, *b_rescale, "add_high_b")

    shift_a, shift_b = _per_channel(a_rescale[1]), _per_channel(b_rescale[1])
    summed = te.compute(a.shape, lambda *i: _divided_by_pot(high_a(*i), shift_a(i[-1]))
                        + _divided_by_pot(high_b(*i), shift_b(i[-1])), name="add_sum")
    return requantize(summed, 0, *out_rescale, zero_point=zero_point, low=low, high=high, dtype=dtype)


def clamp_cast(x, low: int, high: int, dtype: str, x_dtype: str = "int64"):
    """Clamp an integer Relax tensor of x_dtype to [low, high] and cast it (the activation's clamp)."""
    from tvm import relax

    clamped = relax.op.minimum(relax.op.maximum(x, const(low, x_dtype)), const(high, x_dtype))
    return relax.op.astype(clamped, dtype)


def round_half_away_expr(x, dtype: str = "float32"):
    """std::round on a float Relax tensor: exact (trunc, then the sign where |fraction| >= 0.5)."""
    from tvm import relax

    op = relax.op
    whole = op.trunc(x)
    half = relax.const(0.5, dtype)
    return op.add(whole, op.where(op.greater_equal(op.abs(op.subtract(x, whole)), half), op.sign(x),
                                  op.zeros_like(x)))
