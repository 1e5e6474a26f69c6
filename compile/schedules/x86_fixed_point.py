"""x86 form of TFLite's doubling high multiply, as a TIR pass after vectorization.

The front end (compile/frontend/fixed_point.py) writes SaturatingRoundingDoublingHighMul as one
32 x 32 -> 64-bit product per lane: (x m + 2^30) >> 31. LLVM widens an int32 vector into two
int64 halves for it (vpmovsxdq each), and since TVM's simplifier has distributed the widening over
x's sum (the bias, the VNNI offset), it adds those in int64 too, multiplies with vpmullq and
narrows each half back (vpmovqd) and joins them: about 15 instructions per 16 lanes.

x86's own widening multiply, vpmuldq, takes the even int32 lanes of two vectors and gives their
int64 products; the odd lanes are the same instruction on the vectors shifted down a lane (vpsrlq;
for a constant multiplier LLVM folds the shift and may use vpmullq on the odd half). With
q = product + 2^30, the result is bits 31-62 of q: the low dword of q >> 31 for the even lanes, the
high dword of q << 1 for the odd ones, and one masked move of dwords (vmovdqa32 {k}) interleaves
them. In 1.0/224's first expansion (AVX-512) each 16 lanes take 9 instructions: the int32 sum x
(one vpaddd: the bias and the VNNI offset folded by LLVM), two vpmuldq, a vpsrlq of x, two
vpaddq, a vpsrlq, the odd << 1 (as vpaddq) and the masked move; before, about 15 and the sum in
int64. Exact for every int32 x and m: q has at most 63 significant bits (|product| <= 2^62), and
both halves read its bits 31-62 (q << 1 wraps only for x = m = INT32_MIN, the bits still right).
Without AVX-512's vpmullq (AVX2) LLVM had made each 64-bit product of three vpmuludq and shifts.

Measured (AMD EPYC znver4, 2 threads, the two builds in one process, interleaved, medians, outputs
equal): int8 1.0/224 new/old 0.92x, 0.35/96 0.94x; the AVX2 build (znver3) of 1.0/224 0.84x.
"""

from __future__ import annotations

from mnv2_edge.compile.schedules.fixed_point_forms import doubling_high_operands, lanes_of


def _halves(value, lanes: int):
    """(low, high): the sign-extended int32 lanes 0, 2, 4... and 1, 3, 5... of an int32 vector as
    int64 lanes (lane 2i is the low dword of int64 lane i), in the forms LLVM recognises as vpmuldq's
    operands: it reads only their low dwords, so the low lanes' shifts go and the high lanes' become
    one vpsrlq."""
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
    """The PrimFunc with every vectorized doubling high multiply of a multiple of 2 lanes, at least 4
    (2 lanes would make 1-lane int64 halves, scalars), on vpmuldq."""
    from tvm import tirx
    from tvm_ffi.structural import structural_map

    def on_cast(cast):
        operands, lanes = doubling_high_operands(cast), lanes_of(cast)
        if operands is None or lanes < 4 or lanes % 2:
            return cast
        return doubling_high(*operands, lanes)

    return structural_map(func, [(tirx.Cast, on_cast)])


def pass_():
    from tvm import tirx

    return tirx.transform.prim_func_pass(lambda func, _mod, _ctx: rewrite(func), opt_level=0,
                                         name="mnv2.X86FixedPoint")
