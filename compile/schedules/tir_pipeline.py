"""The TIR pipeline of every CPU build and tuning candidate: TVM's default lowering, then on AArch64
our NEON rewrites of the vectorized code (neon_fixed_point: requantization; neon_widening: an 8-bit
broadcast times 8-bit weights). Each keeps the integers and changes only the instructions."""

from __future__ import annotations

from mnv2_edge.compile.schedules import neon_fixed_point, neon_widening

AARCH64 = "mnv2-aarch64"  # the registered pipeline's name


def tir_pipeline(target) -> str:
    """The TIR pipeline for a CPU target: AARCH64 (registered once) on AArch64, TVM's default elsewhere."""
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    from tvm.tirx.compilation_pipeline import PIPELINE_MAP, register_tir_pipeline

    from mnv2_edge.compile.schedules.cpu import CPUShape

    if CPUShape.of(target).arch != "aarch64":
        return "default"
    if AARCH64 not in PIPELINE_MAP:
        def factory():
            lower, host, device = default_s_tir_pipeline()
            return tvm.transform.Sequential([lower, neon_fixed_point.pass_(), neon_widening.pass_()]), host, device

        register_tir_pipeline(AARCH64, factory)
    return AARCH64
