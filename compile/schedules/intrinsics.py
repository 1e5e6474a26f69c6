"""Our tensor intrinsics (int8_dot, neon_lane_fma) are registered with TVM on first use, once per
process: TVM refuses a second registration of a name."""

from __future__ import annotations


def registered(name: str) -> bool:
    """Whether TVM already has a tensor intrinsic of this name."""
    from tvm.s_tir import TensorIntrin

    try:
        TensorIntrin.get(name)
        return True
    except ValueError:
        return False
