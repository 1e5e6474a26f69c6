"""x86 form of TFLite's doubling high multiply, as a TIR pass after vectorization.

The front end (compile/frontend/fixed_point.py) writes SaturatingRoundingDoublingHighMul as one
32 x 32 -> 64-bit product per lane: (x m + 2^30) >> 31. LLVM widens an int32 vector into two
int64 halves for it (vpmovsxdq each), and since TVM's simplifier has distributed the widening over
x's sum (the bias, the VNNI offset), it adds those in int64 too, multiplies with vpmullq and
narrows each half back (vpmovqd) and joins them: about 15 instructions per 16 lanes.

x86's own widening multiply, vpmuldq, takes the even int32 lanes of two vectors and gives their
int64 products; the odd lanes are the same instruction on the vectors shifted down a lane. The
even products' results are their low halves after >> 31, the odd ones' their high halves after
<< 1, and one blend of dwords interleaves them: two multiplies, two adds, two shifts and a shift
and a blend per vector, in the vector's own width, the sum x kept in int32. The same integers
(the product is exact in 64 bits; its result fits 32 since m < 2^31), so bit-exact as before.
Without AVX-512's vpmullq (AVX2) LLVM had made each 64-bit product of three vpmuludq and shifts.

Measured (AMD EPYC znver4, 2 threads, the two builds in one process, interleaved, medians, outputs
equal): int8 1.0/224 new/old 0.92x, 0.35/96 0.94x; the AVX2 build (znver3) of 1.0/224 0.84x.
"""

from __future__ import annotations

from mnv2_edge.compile.schedules.neon_fixed_point import doubling_high_operands, lanes_of


def _halves(value, lanes: int):
    """(low, high): the sign-extended int32 lanes 0, 2, 4... and 1, 3, 5... of an int32 vector as
    int64 lanes, in the forms LLVM recognises as vpmuldq's operands (it reads only their low dwords,
    so the shifts go)."""
    from tvm import tirx

    wide = tirx.reinterpret(f"int64x{lanes // 2}", value)
    thirty_two = tirx.Broadcast(tirx.IntImm("int64", 32), lanes // 2)
    return (wide << thirty_two) >> thirty_two, wide >> thirty_two


def doubling_high(x, m, lanes: int):
    """(x m + 2^30) >> 31 per int32 lane, by even and odd vpmuldq, blended."""
    from tvm import tirx

    half = lanes // 2
    x_var, m_var = tirx.Var("x", f"int32x{lanes}"), tirx.Var("m", f"int32x{lanes}")
    (x_even, x_odd), (m_even, m_odd) = _halves(x_var, lanes), _halves(m_var, lanes)
    nudge = tirx.Broadcast(tirx.IntImm("int64", 1 << 30), half)
    even = (x_even * m_even + nudge) >> tirx.Broadcast(tirx.IntImm("int64", 31), half)  # result in the low dword
    odd = (x_odd * m_odd + nudge) << tirx.Broadcast(tirx.IntImm("int64", 1), half)  # result in the high dword
    as_int32 = [tirx.reinterpret(f"int32x{lanes}", v) for v in (even, odd)]
    blended = tirx.Shuffle(as_int32, [tirx.IntImm("int32", i + (lanes if i % 2 else 0)) for i in range(lanes)])
    # bound once: each operand is read by both halves, and a nested requantization (an ADD's inputs)
    # would otherwise be emitted twice per level
    return tirx.Let(x_var, x, tirx.Let(m_var, m, blended))


def rewrite(func):
    """The PrimFunc with every vectorized doubling high multiply of an even number of lanes on vpmuldq."""
    from tvm import tirx
    from tvm_ffi.structural import structural_map

    def on_cast(cast):
        operands, lanes = doubling_high_operands(cast), lanes_of(cast)
        if operands is None or lanes < 2 or lanes % 2:
            return cast
        x, m = operands
        if lanes_of(m) == 1:
            m = tirx.Broadcast(m, lanes)
        return doubling_high(x, m, lanes)

    return structural_map(func, [(tirx.Cast, on_cast)])


def pass_():
    from tvm import tirx

    return tirx.transform.prim_func_pass(lambda func, _mod, _ctx: rewrite(func), opt_level=0,
                                         name="mnv2.X86FixedPoint")
