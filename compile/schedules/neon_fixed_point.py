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

from mnv2_edge.compile.schedules.fixed_point_forms import doubling_high_operands, lanes_of, rounding_shift_operands

SQRDMULH = "llvm.aarch64.neon.sqrdmulh"
SRSHL = "llvm.aarch64.neon.srshl"


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
