"""float32 1x1 convs on AArch64: four input channels a step, each a multiply-add by lane index.

The pointwise rule's register block (compile/schedules/default_schedules.py) takes one input
channel a step: per pixel one scalar load (`ld1r` or `ldr s`) for a broadcast, then one `fmla` per
vector by lane 0. XNNPACK's aarch64 f32 GEMM micro-kernels load four input channels of a pixel in
one 16-byte load and use `fmla v.4s, w.4s, a.s[k]` for k = 0..3: a quarter of the activation
loads and of the loop's overhead, the same multiply-adds in the same order (the same float
results). This tensor intrinsic is that step; LLVM matches the lane form from a broadcast of a
vector's lane.
"""

from __future__ import annotations

from mnv2_edge.compile.schedules.intrinsics import registered

STEP = 4  # input channels a step: the lanes of one 16-byte load of float32


def intrinsic(lanes: int) -> str:
    """C[i] += sum_k A[k] B[k, i], i < lanes, k < STEP, B's rows strided (the HWIO weights' output
    channels), registered on first use."""
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"mnv2_fma_lane_{STEP}x{lanes}_float32"
    if registered(name):
        return name

    @T.prim_func(s_tir=True)
    def description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (STEP,), "float32", offset_factor=1)
        B = T.match_buffer(b, (STEP, lanes), "float32", offset_factor=1, strides=[T.int32(), 1])
        C = T.match_buffer(c, (lanes,), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:STEP], B[0:STEP, 0:lanes])
            T.writes(C[0:lanes])
            for k in T.serial(0, STEP):
                for i in T.serial(0, lanes):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + A[vk] * B[vk, vi]

    def sums(A, B, C):
        inputs = A.vload([0], f"float32x{STEP}")
        accumulators = C.vload([0], f"float32x{lanes}")
        for k in range(STEP):
            lane = tirx.Shuffle([inputs], [tirx.IntImm("int32", k)] * lanes)
            accumulators = accumulators + lane * B.vload([k, 0], f"float32x{lanes}")
        return accumulators

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (STEP,), "float32", offset_factor=1)
        B = T.match_buffer(b, (STEP, lanes), "float32", offset_factor=1, strides=[T.int32(), 1])
        C = T.match_buffer(c, (lanes,), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:STEP], B[0:STEP, 0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = sums(A, B, C)

    TensorIntrin.register(name, description, implementation)
    return name
