"""AArch64 NEON's widening multiply for an 8-bit value broadcast against a vector of 8-bit values,
as a TIR pass after vectorization.

A kernel whose register block spreads one input value over a vector of output channels (the stem
over RGB: one pixel's channel times 4 output channels' weights) multiplies
Broadcast(Cast(int32, x)) by Cast(int32x4, w), x and w int8. LLVM moves the widening past the
broadcast and sign-extends the broadcast byte in 32-bit lanes: `ldr b`, `dup .4h`, `ushll`, `shl`,
`sshr`, `xtn` before each `smlal`, six instructions where two do (`ldrsb` into a general register,
`dup .4h`). Written as NEON's `smull` of 16-bit lanes (x and w sign-extended to int16, the int32
products exact: an 8-bit by 8-bit product fits 16 bits), LLVM loads the byte sign-extended, splats
it and folds the sum into `smlal`: on a simulated Cortex-A72 the int8 stem's register block took
57 cycles for 30 `smlal`, six instructions per broadcast byte.

The same integers for every input: only the instructions change. Wider vectors in 4-lane slices,
up to neon_fixed_point.MAX_LANES, by that module's neon_intrinsic.
"""

from __future__ import annotations

from mnv2_edge.compile.schedules.fixed_point_forms import lanes_of
from mnv2_edge.compile.schedules.neon_fixed_point import MAX_LANES, neon_intrinsic

SMULL = "llvm.aarch64.neon.smull"  # int32 lanes from int16 lanes: 4 a call (no 2-lane int32 form)


def _narrow(expr):
    """x of Cast(int32[xN], x) where x is 8-bit (int8 or uint8); None otherwise."""
    from tvm import tirx

    if isinstance(expr, tirx.Cast) and expr.ty.dtype.split("x")[0] == "int32":
        element = expr.value.ty.dtype.split("x")[0]
        if element in ("int8", "uint8"):
            return expr.value
    return None


def broadcast_product_operands(mul):
    """(x, w) when `mul` is Broadcast(Cast(int32, x)) * Cast(int32xN, w) (either order), x an 8-bit
    scalar and w an 8-bit vector; None for anything else."""
    from tvm import tirx

    if not isinstance(mul, tirx.Mul) or mul.ty.dtype.split("x")[0] != "int32" or lanes_of(mul) == 1:
        return None
    for spread, vector in ((mul.a, mul.b), (mul.b, mul.a)):
        if isinstance(spread, tirx.Broadcast) and not isinstance(vector, tirx.Broadcast):
            x, w = _narrow(spread.value), _narrow(vector)
            if x is not None and w is not None:
                return x, w
    return None


def rewrite(func):
    """The PrimFunc with each such product as smull of int16 lanes, for 4, 8, 12 or 16 lanes."""
    from tvm import tirx
    from tvm_ffi.structural import structural_map

    def on_mul(mul):
        operands, lanes = broadcast_product_operands(mul), lanes_of(mul)
        if operands is None or lanes % 4 or lanes > MAX_LANES:
            return mul
        x, w = operands
        spread, wide = tirx.Broadcast(tirx.Cast("int16", x), lanes), tirx.Cast(f"int16x{lanes}", w)
        return neon_intrinsic(SMULL, spread, wide, lanes)

    return structural_map(func, [(tirx.Mul, on_mul)])


def pass_():
    from tvm import tirx

    return tirx.transform.prim_func_pass(lambda func, _mod, _ctx: rewrite(func), opt_level=0,
                                         name="mnv2.NeonWidening")
