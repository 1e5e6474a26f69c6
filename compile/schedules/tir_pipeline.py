"""The TIR pipeline of every CPU build and tuning candidate: our rewrite of the scheduled kernels
(pad_in_place: a padded result written straight into the padded tensor), TVM's default lowering,
then on AArch64 our NEON rewrites of the vectorized code (neon_fixed_point: requantization;
neon_widening: an 8-bit broadcast times 8-bit weights). Each keeps the integers and changes only
where they are written or which instructions compute them."""

from __future__ import annotations

from mnv2_edge.compile.schedules import neon_fixed_point, neon_widening, pad_in_place

CPU = "mnv2-cpu"  # the registered pipelines' names
AARCH64 = "mnv2-aarch64"


def tir_pipeline(target) -> str:
    """The TIR pipeline for a CPU target, registered once: AARCH64 on AArch64, CPU elsewhere."""
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    from tvm.tirx.compilation_pipeline import PIPELINE_MAP, register_tir_pipeline

    from mnv2_edge.compile.schedules.cpu import CPUShape

    name = AARCH64 if CPUShape.of(target).arch == "aarch64" else CPU
    if name not in PIPELINE_MAP:
        def factory():
            lower, host, device = default_s_tir_pipeline()
            neon = [neon_fixed_point.pass_(), neon_widening.pass_()] if name == AARCH64 else []
            return tvm.transform.Sequential([pad_in_place.pass_(), lower, *neon]), host, device

        register_tir_pipeline(name, factory)
    return name
