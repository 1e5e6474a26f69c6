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

The same integers for every input: only the instructions change. 4-lane slices of wider vectors,
as neon_fixed_point does.
"""

from __future__ import annotations

SMULL = "llvm.aarch64.neon.smull"
SLICE = 4  # smull's int32 lanes from 4 int16 lanes
MAX_LANES = 16  # as neon_fixed_point.MAX_LANES: each slice names its whole operand


def _lanes(expr) -> int:
    dtype = expr.ty.dtype
    return int(dtype.split("x")[1]) if "x" in dtype else 1


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

    if not isinstance(mul, tirx.Mul) or mul.ty.dtype.split("x")[0] != "int32" or _lanes(mul) == 1:
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
        operands, lanes = broadcast_product_operands(mul), _lanes(mul)
        if operands is None or lanes % SLICE or lanes > MAX_LANES:
            return mul
        x, w = operands
        spread = tirx.Broadcast(tirx.Cast("int16", x), SLICE)
        wide = tirx.Cast(f"int16x{lanes}", w)
        index = lambda values: [tirx.IntImm("int32", v) for v in values]  # noqa: E731
        slices = [tirx.call_llvm_pure_intrin(f"int32x{SLICE}", SMULL, spread,
                                             wide if lanes == SLICE else tirx.Shuffle([wide], index(range(at, at + SLICE))))
                  for at in range(0, lanes, SLICE)]
        return slices[0] if lanes == SLICE else tirx.Shuffle(slices, index(range(lanes)))

    return structural_map(func, [(tirx.Mul, on_mul)])


def pass_():
    from tvm import tirx

    return tirx.transform.prim_func_pass(lambda func, _mod, _ctx: rewrite(func), opt_level=0,
                                         name="mnv2.NeonWidening")
