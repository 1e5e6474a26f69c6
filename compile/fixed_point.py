"""TFLite's integer arithmetic, as its reference kernels define it, for the integer int8 path.

Two halves: the multipliers TFLite derives from the float scales when it prepares a model (computed
here in NumPy with the same float and double steps, since one bit of a multiplier changes
results), and the per-element arithmetic as Relax expressions (int64 where TFLite relies on 64-bit
products): MultiplyByQuantizedMultiplier = SaturatingRoundingDoublingHighMul, then
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


def multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding: bool = False):
    """TFLite's MultiplyByQuantizedMultiplier on an int32/int64 Relax tensor, per channel (last axis)
    when multiplier and shift are arrays. Returns int64 (holding int32 values).

    Two roundings by default, as TFLite's reference conv, depthwise, add and mean kernels do:
    SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT (tests/test_int8.py checks this
    form against gemmlowp's own). With single_rounding, one:
    (x * m + 2^(30 - shift)) >> (31 - shift), as LiteRT's reference FULLY_CONNECTED does (measured:
    the two differ on values within a hair of a half step)."""
    from tvm import relax

    op = relax.op
    multiplier, shift = np.asarray(multiplier, np.int64), np.asarray(shift, np.int64)
    x = op.astype(x, "int64")
    if single_rounding:
        total_shift = 31 - shift
        product = op.multiply(x, const(multiplier))
        return op.right_shift(op.add(product, const(np.left_shift(1, total_shift - 1))), const(total_shift))
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    if left.any():
        x = op.multiply(x, const(np.left_shift(1, left)))
    # gemmlowp's two roundings in sign-magnitude form, a third of the operations (each kernel's
    # epilogue, compiled and searched per tuning candidate). With s = sign(x):
    #   SaturatingRoundingDoublingHighMul(x, m) = s * ((|x| m + 2^30 - [x < 0]) >> 31)
    #   RoundingDivideByPOT(h, e) = s * ((|h| + 2^(e-1)) >> e), halves away from zero.
    # The saturating case (both INT32_MIN) cannot happen: multipliers are positive.
    negative = op.less(x, const(0))
    magnitude = op.add(op.multiply(op.abs(x), const(multiplier)),
                       op.where(negative, const((1 << 30) - 1), const(1 << 30)))
    high = op.right_shift(magnitude, const(31))
    half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
    rounded = op.right_shift(op.add(high, const(half)), const(right)) if right.any() else high
    return op.where(negative, op.negative(rounded), rounded)


def requantize(acc, bias, multiplier, shift, zero_point: int, low: int, high: int, dtype: str):
    """TE: int32 accumulators [..., C] -> dtype, as TFLite's reference conv and depthwise kernels
    finish: + bias[c], MultiplyByQuantizedMultiplier(multiplier[c], shift[c]) with its two roundings,
    + zero point, clamp to [low, high]. In 32-bit lanes except the one 32 x 32 -> 64-bit
    product per element (both factors sign-extended from int32, so x86 uses vpmuldq and AArch64
    smull): a third of the vector work of the same steps as separate int64 Relax ops.

    SaturatingRoundingDoublingHighMul(x, m) = (x m + 2^30) >> 31, arithmetically: gemmlowp adds a
    nudge of 2^30 or 1 - 2^30 by sign and divides truncating, and for a negative product those
    agree with the floor of (x m + 2^30) / 2^31 (the case that saturates, both INT32_MIN, cannot
    happen: multipliers are positive). RoundingDivideByPOT(h, e) = (h + 2^(e-1) - [h < 0]) >> e for
    e > 0: halves away from zero."""
    from tvm import te, tirx

    def doubling_high(*index):
        c = index[-1]
        x = (acc(*index) + bias[c]) << tirx.max(shift[c], 0)
        return ((x.astype("int64") * multiplier[c].astype("int64") + (1 << 30)) >> 31).astype("int32")

    # Its own stage: the rounding reads it twice (value and sign), and TVM's analyses take no Let.
    high_mul = te.compute(acc.shape, doubling_high, name="requantize_high")

    def element(*index):
        c, h = index[-1], high_mul(*index)
        right = tirx.max(-shift[c], 0)
        half = (tirx.const(1, "int32") << right) >> 1
        below_zero = (h >> 31) & tirx.Select(right > 0, tirx.const(1, "int32"), tirx.const(0, "int32"))
        scaled = ((h + half - below_zero) >> right) + zero_point
        return tirx.max(tirx.min(scaled, high), low).astype(dtype)

    return te.compute(acc.shape, element, name="requantize")


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
