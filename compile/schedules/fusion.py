"""Legalize and fuse a Relax module as the build does: task extraction, tuning and the build run these
same passes, so a task's key (its structural hash) is the same in all three."""

from __future__ import annotations

from mnv2_edge.compile.schedules import int8_dot, int8_tap_pairs, pad_in_place


def fusion_passes(target) -> list:
    """Legalize and fuse: the build and task extraction run these same passes, so task keys match."""
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    return [
        *dispatch,
        int8_dot.pack_dot_products(target),  # before legalization: int8 1x1 convs and stems on dot products
        int8_tap_pairs.pair_depthwise_taps(target),  # and int8 depthwise taps in pairs on AArch64
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        pad_in_place.pads_as_element_wise(target),  # a pad joins the kernel before it (written in place there)
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def fuse(mod, target):
    import tvm

    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(fusion_passes(target))(mod)
