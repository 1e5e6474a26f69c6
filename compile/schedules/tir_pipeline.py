"""The TIR pipeline of every CPU build and tuning candidate: our rewrite of the scheduled kernels
(pad_in_place: a padded result written straight into the padded tensor), TVM's default lowering,
then our rewrites of the lowered kernels for the architecture: on AArch64 neon_fixed_point (the
requantization's sqrdmulh, srshl) and neon_widening (an 8-bit broadcast times 8-bit weights); on
x86 x86_fixed_point (the requantization's vpmuldq) and serial_small_kernels (no thread pool for a
few microseconds of work). Each keeps the integers and changes only where they are written, which
instructions compute them or how many threads do."""

from __future__ import annotations

from mnv2_edge.compile.schedules import neon_fixed_point, neon_widening, pad_in_place, serial_small_kernels, x86_fixed_point

# The registered pipelines' names, by the target's architecture (CPUShape.arch); CPU for the others
AARCH64, X86, CPU = "mnv2-aarch64", "mnv2-x86", "mnv2-cpu"
PIPELINES = {"aarch64": AARCH64, "x86_64": X86, "i686": X86}
# Each pipeline's rewrites after TVM's lowering, in order (modules with a pass_())
REWRITES = {AARCH64: (neon_fixed_point, neon_widening), X86: (x86_fixed_point, serial_small_kernels), CPU: ()}


def tir_pipeline(target) -> str:
    """The TIR pipeline for a CPU target, registered once per architecture."""
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    from tvm.tirx.compilation_pipeline import PIPELINE_MAP, register_tir_pipeline

    from mnv2_edge.compile.schedules.cpu import CPUShape

    name = PIPELINES.get(CPUShape.of(target).arch, CPU)
    if name not in PIPELINE_MAP:
        def factory():
            lower, host, device = default_s_tir_pipeline()
            rewrites = [module.pass_() for module in REWRITES[name]]
            return tvm.transform.Sequential([pad_in_place.pass_(), lower, *rewrites]), host, device

        register_tir_pipeline(name, factory)
    return name
