"""int8 depthwise convs on AArch64: the products of two taps summed in 16-bit lanes, then widened.

The Depthwise rule vectorizes 8 channels per NEON register: per tap one `smull` (8 int8 x int8
products in 16-bit lanes) and two widening adds into the int32 sums (`saddw`, `saddw2`). Two taps'
products fit one 16-bit lane together when no weight is -128: |x w| <= 128 x 127 = 16256, two of
them 32512 <= 32767. So a pair of taps costs `smull` + `smlal` (both in 16-bit lanes) and then the two
widening adds: 4 instructions for 16 products where there were 6, XNNPACK's qs8 "mla8" depthwise
micro-kernels. llvm-mca, 8 pixels x 2 taps: Cortex-A72 -31% cycles, Neoverse-N1 (the A76's
model) -21%, Cortex-A55 -17%. TFLite's int8 weights are in [-127, 127] by its quantization spec; a
layer with a -128 anywhere keeps the plain conv (the pass reads the constant weights).

`pair_depthwise_taps` is the Relax pass (before legalization, on AArch64 targets only: x86's kernels
and tuning records stay as they are) that rewrites each such conv into `_paired_depthwise`: one
reduction over the pairs of taps (3x3: 4 pairs and the 9th tap alone), which the Depthwise rule
schedules as any depthwise (kernel_kind reads the same HWOI weights). The same integers.
"""

from __future__ import annotations

import numpy as np

from mnv2_edge.compile.schedules import int8_dot

BLOCK = "depthwise_pairs"  # the reduction block's name


def _paired_depthwise(data, weight, stride: tuple[int, int]):
    """NHWC int8 data (already padded) by HWOI [KH, KW, C, 1] int8 weights: per output the int32 sum
    over pairs of taps of each pair's two products added in int16."""
    from tvm import te, tirx

    batch, height, width, channels = data.shape
    kh, kw, _, _ = (int(d) for d in weight.shape)
    (sh, sw), taps = stride, kh * kw
    pair = te.reduce_axis((0, (taps + 1) // 2), name="pair")

    def product(b, h, w, c, tap):
        return data[b, h * sh + tap // kw, w * sw + tap % kw, c].astype("int16") * \
            weight[tap // kw, tap % kw, c, 0].astype("int16")

    def pair_sum(b, h, w, c):
        first = product(b, h, w, c, 2 * pair)
        if taps % 2 == 0:
            return first + product(b, h, w, c, 2 * pair + 1)
        # the last tap alone: its partner's index is outside the kernel, never read
        return tirx.if_then_else(2 * pair + 1 < taps, first + product(b, h, w, c, 2 * pair + 1), first)

    out_shape = (batch, (height - kh) // sh + 1, (width - kw) // sw + 1, channels)
    return te.compute(out_shape, lambda b, h, w, c: te.sum(pair_sum(b, h, w, c).astype("int32"), axis=pair),
                      name=BLOCK)


def _pairable_weight(call) -> np.ndarray | None:
    """The HWOI int8 weights of a depthwise conv this pass can pair (NHWC, one output channel per
    input channel, no padding or dilation, int32 sums, no weight -128); None for any other call."""
    attrs = call.attrs
    if not int8_dot.int8_constant_weight(call):
        return None
    value = call.args[1].value.numpy()
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "HWOI", "NHWC") or value.ndim != 4:
        return None
    channels = value.shape[2]
    if value.shape[3] != 1 or int(attrs.groups) != channels or int(call.args[0].ty.shape[3]) != channels:
        return None
    if any(int(d) != 1 for d in attrs.dilation) or any(int(p) != 0 for p in attrs.padding):
        return None
    return value if value.min() > -128 else None


def pair_depthwise_taps(target):
    """The Relax pass (before legalization): int8 depthwise convs -> _paired_depthwise on AArch64;
    on other targets it changes nothing."""
    import tvm
    from tvm import relax

    from mnv2_edge.compile.schedules.cpu import CPUShape

    aarch64 = CPUShape.of(target).arch == "aarch64"
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    @relax.expr_functor.mutator
    class Pairer(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(conv2d) or _pairable_weight(call) is None:
                return call
            return self.builder_.call_te(_paired_depthwise, call.args[0], call.args[1],
                                         stride=tuple(int(s) for s in call.attrs.strides), primfunc_name_hint=BLOCK)

    @tvm.transform.module_pass(opt_level=0, name="mnv2.PairInt8DepthwiseTaps")
    def pair(mod, _ctx):
        return int8_dot.rewrite_relax_functions(mod, Pairer) if aarch64 else mod

    return pair
