"""Default schedules: each rule takes its kind of kernel, keeps it correct on awkward shapes, and
follows the target (vector width, registers). Expected values come from compile/frontend/float64_reference.py
and NumPy, not from TVM."""

import re

import numpy as np
import pytest

from mnv2_edge.compile.schedules import default_schedules, fixed_point_forms, fusion, neon_fixed_point
from mnv2_edge.compile.schedules.cpu import CPUShape
from mnv2_edge.compile.frontend import float64_reference

HASWELL = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}  # AVX2: runs on every x86-64 CI machine here
ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}  # AVX-512: compiled only, never run


def _relax_function(build, *shapes_dtypes):
    from tvm import relax

    bb = relax.BlockBuilder()
    params = [relax.Var(f"p{i}", relax.TensorType(shape=s, dtype=d)) for i, (s, d) in enumerate(shapes_dtypes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    return bb.get()


def _compile(mod, target_dict):
    import tvm

    target = tvm.target.Target(target_dict)
    applied: dict[str, str] = {}
    with target, tvm.transform.PassContext(opt_level=3):
        executable = default_schedules.compile_cpu(mod, target, applied=applied)
    return executable, applied


def _run(mod, *arrays, target=HASWELL):
    import tvm
    from tvm import relax

    executable, applied = _compile(mod, target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy(), applied


def _conv_block(x, w, b, *, size, kernel, stride, groups, residual=None):
    from tvm import relax

    (_, top, bottom), (_, left, right) = (float64_reference.padding(size, kernel, stride, 1, True),) * 2
    y = relax.op.nn.conv2d(x, w, strides=stride, padding=[top, left, bottom, right], groups=groups,
                           data_layout="NHWC", kernel_layout="HWOI" if groups > 1 else "HWIO")
    y = relax.op.clip(relax.op.add(y, b), 0.0, 6.0)
    return y if residual is None else relax.op.add(y, residual)


# Shapes no MobileNetV2 layer has: odd channel counts (no whole vector), odd widths, stride 2 on odd sizes,
# 1x1 convs with more output channels than pixels (the channel blocks outermost), a 5x5 depthwise.
CASES = [
    ("Pointwise", 1, 1, 13, 7, 29, 1),
    ("Pointwise", 1, 1, 40, 9, 24, 1),
    ("Pointwise", 1, 1, 40, 3, 96, 1),
    ("Pointwise", 1, 1, 24, 9, 40, 2),
    ("Depthwise", 5, 5, 16, 9, 16, 1),
    ("Depthwise", 3, 3, 21, 11, 21, 2),
    ("Depthwise", 3, 3, 48, 8, 48, 1),
    ("DirectConv", 3, 3, 3, 15, 20, 2),
]


@pytest.mark.parametrize("rule,kh,kw,cin,size,cout,stride", CASES)
def test_conv_rules_match_the_float64_reference(rule, kh, kw, cin, size, cout, stride):
    rng = np.random.default_rng(cin * size)
    depthwise = rule == "Depthwise"
    x = rng.uniform(-1, 1, (1, size, size, cin)).astype("float32")
    w_hwio = rng.uniform(-1, 1, (kh, kw, 1 if depthwise else cin, cout) if not depthwise else (kh, kw, cin, 1))
    w_hwio = w_hwio.astype("float32")
    b = rng.uniform(-1, 1, (cout,)).astype("float32")
    mod = _relax_function(lambda x_, w_, b_: _conv_block(x_, w_, b_, size=size, kernel=kh, stride=stride,
                                                                       groups=cin if depthwise else 1),
                          (x.shape, "float32"), (w_hwio.shape, "float32"), (b.shape, "float32"))
    got, applied = _run(mod, x, w_hwio, b)
    assert rule in applied.values(), applied
    if depthwise:  # HWOI with O=1 -> TFLite's [1, H, W, C]
        expected = float64_reference.depthwise_conv2d(x.astype(np.float64), w_hwio[:, :, :, 0][None].astype(np.float64),
                                                      b, stride=(stride, stride))
    else:  # HWIO -> OHWI
        expected = float64_reference.conv2d(x.astype(np.float64), w_hwio.transpose(3, 0, 1, 2).astype(np.float64),
                                            b, stride=(stride, stride))
    np.testing.assert_allclose(got, np.clip(expected, 0, 6), rtol=1e-5, atol=1e-5)


def test_residual_add_is_computed_on_the_tiles():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (1, 10, 10, 24)).astype("float32")
    w = rng.uniform(-1, 1, (1, 1, 24, 16)).astype("float32")
    b = rng.uniform(-1, 1, (16,)).astype("float32")
    r = rng.uniform(-1, 1, (1, 10, 10, 16)).astype("float32")
    mod = _relax_function(lambda x_, w_, b_, r_: _conv_block(x_, w_, b_, size=10, kernel=1, stride=1, groups=1,
                                                                     residual=r_),
                          (x.shape, "float32"), (w.shape, "float32"), (b.shape, "float32"), (r.shape, "float32"))
    got, applied = _run(mod, x, w, b, r)
    assert list(applied.values()) == ["Pointwise"], applied
    expected = np.clip(np.einsum("nhwc,cd->nhwd", x.astype(np.float64), w[0, 0]) + b, 0, 6) + r
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_dense_pooling_and_softmax_rules():
    from tvm import relax

    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (1, 7, 7, 40)).astype("float32")
    w = rng.uniform(-1, 1, (40, 1001)).astype("float32")  # 1001 output features: 7 x 11 x 13

    def head(x_, w_):
        pooled = relax.op.mean(x_, axis=[1, 2], keepdims=False)
        return relax.op.nn.softmax(relax.op.matmul(pooled, w_), axis=-1)

    mod = _relax_function(head, (x.shape, "float32"), (w.shape, "float32"))
    got, applied = _run(mod, x, w)
    assert {"Pooling", "Dense"} <= set(applied.values()), applied
    logits = x.astype(np.float64).mean(axis=(1, 2)) @ w
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_integer_conv_with_requantization_is_exact():
    """int8 x int8 -> int32 with a per-channel fixed-point rescale: integers, so exact."""
    from tvm import relax

    from mnv2_edge.compile.frontend.fixed_point import add

    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (1, 9, 9, 20)).astype("int8")
    w = rng.integers(-127, 128, (1, 1, 20, 24)).astype("int8")

    # A conv, and TFLite's ADD (fixed_point.add) of its result to the input: a residual add, fused.
    bb = relax.BlockBuilder()
    params = [relax.Var("x", relax.TensorType(shape=x.shape, dtype="int8")),
              relax.Var("w", relax.TensorType(shape=w.shape, dtype="int8"))]
    with bb.function("main", params):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(params[0], params[1], data_layout="NHWC", kernel_layout="HWIO",
                                             out_dtype="int32"))
            narrow = bb.emit(relax.op.astype(relax.op.clip(relax.op.right_shift(acc, relax.const(6, "int32")),
                                                           -128, 127), "int8"))
            out = bb.emit_output(bb.call_te(add, narrow, narrow,
                                            a_zero=3, b_zero=-7, a_rescale=(1 << 30, 0),
                                            b_rescale=((1 << 30) + 12345, 0), left_shift=20,
                                            out_rescale=(1518500250, -19), zero_point=-5, low=-128, high=127,
                                            dtype="int8"))
        bb.emit_func_output(out)
    mod = bb.get()
    got, applied = _run(mod, x, w)
    assert "Pointwise" in applied.values(), applied
    plain = _run_without_rules(mod, x, w)
    np.testing.assert_array_equal(got, plain)


def _run_without_rules(mod, *arrays):
    import tvm
    from tvm import relax

    target = tvm.target.Target(HASWELL)
    with target:
        executable = tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def test_rules_follow_the_targets_vector_width():
    """The register block is whole vectors of the target (8 floats on AVX2, 16 on AVX-512, 4 on NEON),
    as many as its register file holds (16 on AVX2, 32 on AVX-512 and AArch64): the scheduled loops
    show it (pixels and vectors unrolled, each vector vectorized)."""
    import tvm

    shapes = {}
    for name, target_dict in (("avx2", HASWELL), ("avx512", ZNVER4),
                              ("neon", {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
                                        "num-cores": 4})):
        target = tvm.target.Target(target_dict)
        shapes[name] = CPUShape.of(target)
        mod = _relax_function(lambda x_, w_, b_: _conv_block(x_, w_, b_, size=8, kernel=1, stride=1, groups=1),
                              ((1, 8, 8, 64), "float32"), ((1, 1, 64, 64), "float32"), ((64,), "float32"))
        with target, tvm.transform.PassContext(opt_level=3):
            fused = tvm.transform.Sequential(fusion.fusion_passes(target))(mod)
            scheduled = default_schedules.apply_pass()(fused)
        kernel = next(f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
        shapes[name + " block"] = _vectorized_extent(kernel)
    assert (shapes["avx2"].vector_bits, shapes["avx512"].vector_bits, shapes["neon"].vector_bits) == (256, 512, 128)
    assert (shapes["avx2"].registers, shapes["avx512"].registers, shapes["neon"].registers) == (16, 32, 32)
    # 8 x 8 pixels, 64 -> 64 channels. The block (pixels of a row x vectors) with the most FMAs per
    # instruction (p x v FMAs, p broadcasts, v weight loads) whose p x v accumulators, v weights and a
    # broadcast fit the registers. AVX2, 8 vectors of 8 in 16 registers: 2 x 4 and 4 x 2 both give
    # 8 FMAs per 14 instructions (4 x 4 needs 21 registers), equals go to more vectors: 2 x 4.
    # AVX-512, 4 vectors of 16, in 32: 4 x 4, 16 per 24 (8 x 2 gives 16 per 26). NEON, 16 vectors of
    # 4, takes four input channels a step (compile/schedules/neon_lane_fma.py: one load per pixel for
    # four, a quarter of a broadcast each): 8 x 2, 16 per 20 (4 x 4: 16 per 21).
    assert (shapes["avx2 block"], shapes["avx512 block"], shapes["neon block"]) == ((2, 4, 8), (4, 4, 16), (8, 2, 4))


def _vectorized_extent(func) -> tuple[int, int, int]:
    """(pixels, vectors, lanes) of the conv's register block: two unrolled loops (pixels, vectors)
    over a vectorized one, or (vectors, pixels) over the lane multiply-adds of four input channels."""
    import re

    unroll = r"\s*for \w+ in T\.unroll\(T\.int64\((\d+)\)\):\n"
    script = func.script()
    extents = re.findall(unroll + unroll + r"\s*for \w+ in T\.vectorized\(T\.int64\((\d+)\)\)"
                         r":\n(?:.*\n){0,3}?.*conv2d_nhwc_update", script)
    if extents:
        return tuple(int(e) for e in extents[0])
    by_lane = re.findall(unroll + unroll + r"\s*with T\.sblock\(\"conv2d_nhwc_update_o\"\)", script)
    assert by_lane and "[3, 3, 3, 3]" in script, script  # lanes 0-3 of one load of four input channels
    vectors, pixels = (int(e) for e in by_lane[0])
    lanes = re.search(r"C = T\.match_buffer\(conv2d_nhwc_intermediate\[.*\(T\.int64\((\d+)\),\)", script)
    return pixels, vectors, int(lanes.group(1))


def test_a_reduction_no_rule_takes_is_reported_unscheduled_and_stays_correct():
    """A batched matmul (a 3-D weight: no rule's kind) must not be claimed by Elementwise, which would
    report "default schedule" over a plain reduction loop: it is named "none" and still computes right."""
    from tvm import relax

    a = np.random.default_rng(0).normal(size=(2, 5, 7)).astype("float32")
    b = np.random.default_rng(1).normal(size=(2, 7, 3)).astype("float32")
    mod = _relax_function(lambda x, y: relax.op.matmul(x, y), ((2, 5, 7), "float32"), ((2, 7, 3), "float32"))
    got, applied = _run(mod, a, b)
    assert list(applied.values()) == ["none"], applied
    np.testing.assert_allclose(got, np.einsum("bij,bjk->bik", a.astype(np.float64), b), rtol=1e-5, atol=1e-5)


def test_a_rule_that_raises_is_shown_and_the_next_rule_takes_the_kernel():
    """A rule's bug is a warning naming the kernel, the rule and the error, never a silent skip; the
    kernel still gets the rule of its kind after it."""
    import tvm
    from tvm import relax

    class Broken:
        def apply(self, func, target, tunable):
            raise ValueError("a bug in this rule")

    mod = _relax_function(lambda x: relax.op.nn.softmax(x), ((1, 10), "float32"))
    target = tvm.target.Target(HASWELL)
    fused = tvm.transform.Sequential(fusion.fusion_passes(target))(mod)
    name, func = next((g.name_hint, f) for g, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    with pytest.warns(default_schedules.RuleFailed, match=rf"Broken rule raised on {name} \(ValueError: a bug in this rule\)"):
        chosen = default_schedules.schedule_for(func, target, [Broken(), *default_schedules.make_rules()], name)
    assert chosen is not None and chosen[0] == "Elementwise"


ALDERLAKE = {"kind": "llvm", "mcpu": "alderlake", "num-cores": 2}  # AVX-VNNI without AVX-512


def _cpu_flags() -> set[str]:
    from pathlib import Path

    lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")]
    return set(lines[0].split(":", 1)[1].split()) if lines else set()


SSE4 = {"kind": "llvm", "mcpu": "nehalem", "num-cores": 2}  # no AVX2: the plain integer conv
CORTEX_A76 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"],
              "num-cores": 4}  # run on the emulated board by test_rpc; here compiled only
CORTEX_A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
              "num-cores": 4}  # no dotprod: smull and sadalp


@pytest.mark.parametrize("target_dict,flag,instruction", [
    (ZNVER4, "avx512_vnni", "vpdpbusd"), (ALDERLAKE, "avx_vnni", "{vex} vpdpbusd"), (HASWELL, "avx2", "vpmaddwd"),
    (SSE4, None, None), (CORTEX_A76, "aarch64", "sdot"), (CORTEX_A72, "aarch64", "sadalp")],
    ids=["avx512-vnni", "avx-vnni", "avx2", "sse4", "sdot", "sadalp"])
def test_int8_pointwise_on_dot_products_is_exact(tmp_path, target_dict, flag, instruction):
    """int8 1x1 convs, fully connected layers and a stem (3x3, stride 2, over 3 channels) packed for
    vpdpbusd, vpmaddwd or sdot (compile/schedules/int8_dot.py), with TFLite's requantization, against NumPy and
    gemmlowp's definition. On AVX-512 VNNI 48 output channels take 16-lane dot products, 24 and 40 the
    8-lane ones; an odd width (11) has no even pixel block. On AArch64 48 input channels take sdot by lane
    index from 16-byte loads (16 a step), 40 from 8-byte loads (8 a step), 12 the broadcast form; without
    dotprod (the Pi 4's A72) 8 products of an output channel per smull, added pairwise into its 4
    partial sums by sadalp (12 input channels, not whole steps of 8, keep the plain conv), and the stem (36 products a
    pixel, not whole steps of 8) stays plain, each input byte spread by ldrsb and dup for smlal
    (neon_widening). A target without AVX2 keeps the plain conv and matmul. On x86 the requantization's
    products are vpmuldq (x86_fixed_point).
    Compiled for every target; run where this CPU can."""
    import subprocess

    import tvm
    from test_int8 import gemmlowp_multiply
    from tvm import relax

    from mnv2_edge.compile.frontend import fixed_point
    from mnv2_edge.compile.schedules import int8_dot

    forms = int8_dot.dot_forms(tvm.target.Target(target_dict))
    rng = np.random.default_rng(5)
    for layer, x_shape, channels in (("conv", (1, 9, 11, 40), 48), ("conv", (1, 9, 11, 48), 24),
                                     ("conv", (1, 9, 11, 12), 16), ("dense", (3, 40), 40),
                                     ("stem", (1, 15, 13, 3), 32)):
        depth = x_shape[-1]  # on AArch64 48: 16 input channels a step, sdot by lane index; 40: 8 a step
        x = rng.integers(-128, 128, x_shape).astype("int8")
        w = rng.integers(-127, 128, (3, 3, 3, channels) if layer == "stem" else (1, 1, depth, channels)).astype("int8")
        bias = rng.integers(-5000, 5000, channels).astype("int32")
        multipliers = [int(m) for m in rng.integers(1 << 30, 1 << 31, channels)]
        shifts = [int(s) for s in rng.integers(-12, 2, channels)]
        bb = relax.BlockBuilder()
        param = relax.Var("x", relax.TensorType(shape=x.shape, dtype="int8"))
        with bb.function("main", [param]):
            with bb.dataflow():
                acc = bb.emit(relax.op.matmul(param, fixed_point.const(w[0, 0], "int8"), out_dtype="int32")
                              if layer == "dense" else
                              relax.op.nn.conv2d(param, fixed_point.const(w, "int8"), strides=2 if layer == "stem" else 1,
                                                 data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32"))
                out = bb.emit_output(bb.call_te(fixed_point.requantize, acc, fixed_point.const(bias, "int32"),
                                                fixed_point.const(multipliers, "int32"),
                                                fixed_point.const(shifts, "int32"), zero_point=-3, low=-128,
                                                high=127, dtype="int8"))
            bb.emit_func_output(out)
        executable, applied = _compile(bb.get(), target_dict)
        arm = "mtriple" in target_dict
        executable.export_library(str(tmp_path / "kernel.so"),
                                  **({"cc": "aarch64-linux-gnu-gcc"} if arm else {}))
        listing = subprocess.run(["aarch64-linux-gnu-objdump" if arm else "objdump", "-d", str(tmp_path / "kernel.so")],
                                 capture_output=True, text=True, check=True).stdout
        if instruction == "sadalp" and layer == "stem":  # 36 products a pixel, not whole steps of 8: plain
            assert "PointwiseDot" not in applied.values(), applied
            # each input byte loaded sign-extended and spread (neon_widening), its products by smlal
            assert re.search(r"\sldu?rsb\s+w\d+", listing) and re.search(r"\sdup\s+v\d+\.4h, w\d+", listing)
            assert re.search(r"\ssmlal\s+v\d+\.4s, v\d+\.4h, v\d+\.4h", listing)
            assert not re.search(r"\sshl\s+v\d+\.4s, v\d+\.4s, #24", listing)  # no byte sign-extended in 32-bit lanes
        elif instruction == "sadalp" and depth % 8:  # not whole steps of 8 input channels: the plain conv
            assert "PointwiseDot" not in applied.values(), applied
        elif instruction:
            register = "v" if arm else "zmm" if forms[0].lanes == 16 and channels % 16 == 0 else "ymm"
            assert "PointwiseDot" in applied.values(), applied
            assert re.search(rf"\s{re.escape(instruction)}\s[^\n]*%?{register}", listing), \
                f"no {instruction} on {register} registers"
            if arm:  # the requantization: one sqrdmulh (no 64-bit products), srshl rounding
                assert re.search(r"\ssqrdmulh\s+v\d+\.4s", listing) and not re.search(r"\ssmull2?\s+v\d+\.2d", listing)
                assert re.search(r"\ssrshl\s+v\d+\.4s", listing)
                if instruction == "sdot":
                    indices = set(re.findall(r"\ssdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[([0-3])\]", listing))
                    expected = {"0", "1", "2", "3"} if depth % 16 == 0 else {"0", "1"} if depth % 8 == 0 else set()
                    assert layer != "conv" or indices == expected, (depth, indices)  # a dense row: LLVM's choice
                else:  # 8 input channels a step: 8 products in 16-bit lanes, added pairwise into 4 partial sums
                    assert re.search(r"\ssmull\s+v\d+\.8h, v\d+\.8b, v\d+\.8b", listing)
                    assert re.search(r"\ssadalp\s+v\d+\.4s, v\d+\.8h", listing)
                    assert re.search(r"\saddp\s+v\d+\.4s", listing)  # 4 outputs' partial sums at once
        else:
            assert not forms and "PointwiseDot" not in applied.values()
        if not arm:  # the requantization's products on int32 lanes (x86_fixed_point), no int64 lanes widened
            assert re.search(r"\sv?pmuldq\s", listing) and not re.search(r"\s(vpmullq|v?pmovsxdq)\s", listing)
        if flag and flag not in _cpu_flags():
            continue  # this CPU cannot run the code; compiled and checked above, and said below
        got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        if layer == "stem":  # [1, 7, 6, 3 channels, 3 rows, 3 columns] windows
            windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2]
            acc = np.einsum("nhwcij,ijco->nhwo", windows.astype(np.int64), w.astype(np.int64)).reshape(-1, channels)
        else:
            acc = x.reshape(-1, depth).astype(np.int64) @ w.reshape(depth, channels).astype(np.int64)
        acc = acc + bias
        expected = np.stack([gemmlowp_multiply(acc[:, c], multipliers[c], shifts[c], False)
                             for c in range(channels)], axis=1) - 3
        np.testing.assert_array_equal(got.reshape(-1, channels), np.clip(expected, -128, 127))
    if flag and flag not in _cpu_flags():  # visible, not a silent pass: the exactness was not run here
        pytest.skip(f"compiled and checked for {instruction}, but this CPU has no {flag} to run it"
                    + (" (the emulated boards run such kernels: test_rpc)" if flag == "aarch64" else ""))


def test_neon_fixed_point_forms_only_in_their_exact_form(tmp_path):
    """compile/schedules/neon_fixed_point.py: SaturatingRoundingDoublingHighMul, (x m + 2^30) >> 31 in
    64 bits, becomes one sqrdmulh, also where TVM's simplifier spread the product over a sum (a
    residual add's rescale) or the widening over the sum and shift inside it; a different rounding, shift or multiplier stays as it is. The rounding
    right shift (v + ((1 << r) >> 1)) >> r becomes srshl by -r, with the half anywhere in the sum or
    folded to a constant; another half stays. Compiled for the Cortex-A76: an add and a
    requantization without the 64-bit products, with srshl (the emulated board runs such kernels
    against TFLite's reference kernels: test_rpc)."""
    import subprocess

    from tvm import relax, tirx

    from mnv2_edge.compile.frontend import fixed_point

    a, b, c, m, m2 = (tirx.Var(name, "int32") for name in ("a", "b", "c", "m", "m2"))
    wide = lambda v: tirx.Cast("int64", v)  # noqa: E731
    high = lambda product, rounding=1 << 30, shift=31: tirx.Cast(  # noqa: E731
        "int32", tirx.RShift(product + tirx.IntImm("int64", rounding), tirx.IntImm("int64", shift)))
    found = fixed_point_forms.doubling_high_operands(high(wide(a) * wide(m)))
    assert found is not None and found[0].same_as(a) and found[1].same_as(m)
    spread = fixed_point_forms.doubling_high_operands(high(wide(a) * wide(m) + wide(b) * wide(m) - wide(c) * wide(m)))
    assert spread is not None and str(spread[0]) == "a + b - c" and spread[1].same_as(m)
    inside = fixed_point_forms.doubling_high_operands(high(
        tirx.LShift(wide(a) - wide(b) + tirx.IntImm("int64", 22), tirx.IntImm("int64", 20)) * wide(m)))
    assert inside is not None and str(inside[0]) == "a - b + 22 << 20" and inside[1].same_as(m)
    for other in (high(wide(a) * wide(m), rounding=1 << 29), high(wide(a) * wide(m), shift=30),
                  high(wide(a) * wide(m) + wide(b) * wide(m2))):
        assert fixed_point_forms.doubling_high_operands(other) is None

    r = tirx.Var("r", "int32")
    half = lambda amount: tirx.RShift(tirx.LShift(tirx.IntImm("int32", 1), amount), tirx.IntImm("int32", 1))  # noqa: E731
    rounded = fixed_point_forms.rounding_shift_operands(tirx.RShift(a - b + half(r), r))
    assert rounded is not None and str(rounded[0]) == "a - b" and rounded[1].same_as(r)
    assert str(fixed_point_forms.rounding_shift_operands(tirx.RShift(half(r) + a, r))[0]) == "a"
    five = tirx.IntImm("int32", 5)
    assert str(fixed_point_forms.rounding_shift_operands(tirx.RShift(a + tirx.IntImm("int32", 16), five))[0]) == "a"
    for other in (tirx.RShift(a + half(c), r), tirx.RShift(a - half(r), r), tirx.RShift(a + tirx.IntImm("int32", 8), five),
                  tirx.RShift(a + b, r)):
        assert fixed_point_forms.rounding_shift_operands(other) is None

    # Up to MAX_LANES the vector is cut into srshl's 4-lane slices; wider (tuning candidates of 24-64
    # lanes, whose nested slices took over 6 GB to compile) keeps LLVM's form.
    def shifted(lanes: int):
        data = tirx.decl_buffer((128,), "int32", name="data")
        lane = lambda value: tirx.Broadcast(tirx.IntImm("int32", value), lanes)  # noqa: E731
        at = [tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), lanes)]
        store = tirx.BufferStore(data, tirx.RShift(tirx.BufferLoad(data, at) + lane(4), lane(3)), at)
        return str(neon_fixed_point.rewrite(tirx.PrimFunc([data], store)))

    assert "srshl" in shifted(neon_fixed_point.MAX_LANES) and "srshl" not in shifted(2 * neon_fixed_point.MAX_LANES)

    shape = (1, 7, 5, 24)
    bb = relax.BlockBuilder()
    x, y = (relax.Var(name, relax.TensorType(shape=shape, dtype="int8")) for name in ("x", "y"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            summed = bb.emit(bb.call_te(fixed_point.add, x, y, a_zero=3, b_zero=-7, a_rescale=(1 << 30, 0),
                                        b_rescale=(1518500250, -1), left_shift=20, out_rescale=(2030530689, -19),
                                        zero_point=-2, low=-128, high=127, dtype="int8"))
            out = bb.emit_output(bb.call_te(fixed_point.requantize, summed, fixed_point.const([5] * 24, "int32"),
                                            fixed_point.const([1 << 30] * 24, "int32"),
                                            fixed_point.const([-3] * 24, "int32"), zero_point=0, low=-128, high=127,
                                            dtype="int8", left_shifts=False))
        bb.emit_func_output(out)
    executable, _ = _compile(bb.get(), CORTEX_A76)
    executable.export_library(str(tmp_path / "kernel.so"), cc="aarch64-linux-gnu-gcc")
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path / "kernel.so")],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"\ssqrdmulh\s+v\d+\.4s", listing) and not re.search(r"\ssmull2?\s+v\d+\.2d", listing)
    assert re.search(r"\ssrshl\s+v\d+\.4s", listing)


@pytest.mark.parametrize("target_dict,flag", [(ZNVER4, "avx512f"), (HASWELL, "avx2"), (SSE4, None)],
                         ids=["avx512", "avx2", "sse4"])
def test_x86_doubling_high_multiply_on_vpmuldq_is_gemmlowps(tmp_path, target_dict, flag):
    """compile/schedules/x86_fixed_point.py: SaturatingRoundingDoublingHighMul on x86 as vpmuldq of the
    even and of the odd int32 lanes, blended, with no 64-bit lanes multiplied (vpmullq) or widened
    (vpmovsxdq); against gemmlowp's definition (test_int8.gemmlowp_multiply, its nudge by sign and
    truncating division) at int32's extremes, every lane of the vectors a different pair, a multiplier
    per channel. Compiled for each target; run where this CPU can."""
    import subprocess

    import tvm
    from test_int8 import gemmlowp_multiply
    from tvm import relax

    from mnv2_edge.compile.frontend import fixed_point

    rng = np.random.default_rng(17)
    channels = 48
    edges = np.array([-(1 << 31), -(1 << 31) + 1, -(1 << 30), -12345, -1, 0, 1, 77777, (1 << 30), (1 << 31) - 1])
    x = np.concatenate([np.repeat(edges, channels), rng.integers(-(1 << 31), 1 << 31, 6 * channels)])
    x = x.reshape(1, 4, -1, channels).astype("int32")
    multipliers = np.concatenate([[0, 1, (1 << 30), (1 << 31) - 1],
                                  rng.integers(0, 1 << 31, channels - 4)]).astype("int32")
    high = lambda acc, m: fixed_point._doubling_high(acc.shape, lambda *i: acc(*i), m, 0, "high",  # noqa: E731
                                                     left_shifts=False)
    mod = _relax_function(lambda acc: relax.BlockBuilder.current().call_te(
        high, acc, fixed_point.const(multipliers, "int32")), (x.shape, "int32"))
    executable, _ = _compile(mod, target_dict)
    executable.export_library(str(tmp_path / "kernel.so"))
    listing = subprocess.run(["objdump", "-d", str(tmp_path / "kernel.so")], capture_output=True, text=True,
                             check=True).stdout
    assert re.search(r"\svpmuldq\s" if flag else r"\spmuldq\s", listing)
    assert not re.search(r"\s(vpmullq|v?pmovsxdq)\s", listing)
    if flag and flag not in _cpu_flags():
        pytest.skip(f"compiled and checked for vpmuldq, but this CPU has no {flag} to run it")
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    wide = x.reshape(-1, channels).astype(np.int64)
    expected = np.stack([gemmlowp_multiply(wide[:, c], int(multipliers[c]), 0, False) for c in range(channels)], axis=1)
    np.testing.assert_array_equal(got.reshape(-1, channels), expected)


def test_small_kernels_run_their_parallel_loops_serially():
    """compile/schedules/serial_small_kernels.py: a kernel's element writes are its stores' lanes times
    the trip counts around them (a vector store of 16 lanes in 4 x 3 iterations and a scalar one
    after, under a condition: 4 x (3 x 16 + 1)); below SERIAL_BELOW its parallel loops become
    serial, at or above it they stay parallel; the loops' other kinds and the stores stay as they are.
    And in the x86 pipeline: an element-wise kernel of 6 x 6 x 64 elements compiles without a
    parallel launch, one of 64 x 64 x 32 with one."""
    import tvm
    from tvm import relax, tirx

    from mnv2_edge.compile.schedules import serial_small_kernels, tir_pipeline

    def kernel(outer: int, inner: int):
        data = tirx.decl_buffer((outer * (inner * 16 + 1),), "int32", name="data")
        i, j = tirx.Var("i", "int32"), tirx.Var("j", "int32")
        row = i * (inner * 16 + 1)
        vector = tirx.BufferStore(data, tirx.Broadcast(tirx.IntImm("int32", 1), 16),
                                  [tirx.Ramp(row + j * 16, tirx.IntImm("int32", 1), 16)])
        scalar = tirx.IfThenElse(i >= 0, tirx.BufferStore(data, tirx.IntImm("int32", 2), [row + inner * 16]), None)
        body = tirx.SeqStmt([tirx.For(j, 0, inner, tirx.ForKind.UNROLLED, vector), scalar])
        return tirx.PrimFunc([data], tirx.For(i, 0, outer, tirx.ForKind.PARALLEL, body))

    def kinds(func) -> list[str]:
        from tvm_ffi.structural import structural_map

        found = []
        structural_map(func, [(tirx.For, lambda loop: found.append(tirx.ForKind(loop.kind).name) or loop)])
        return sorted(found)

    assert serial_small_kernels.element_writes(kernel(4, 3)) == 4 * (3 * 16 + 1)
    small, large = kernel(4, 3), kernel(serial_small_kernels.SERIAL_BELOW // 16, 1)
    assert serial_small_kernels.element_writes(large) >= serial_small_kernels.SERIAL_BELOW
    assert kinds(serial_small_kernels.rewrite(small)) == ["SERIAL", "UNROLLED"]
    assert kinds(serial_small_kernels.rewrite(large)) == kinds(large) == ["PARALLEL", "UNROLLED"]
    assert str(serial_small_kernels.rewrite(small)).replace("range(4)", "T.parallel(4)") == str(small)

    target = tvm.target.Target(HASWELL)
    assert "x86" in tir_pipeline.tir_pipeline(target)
    for shape, parallel in (((1, 6, 6, 64), False), ((1, 64, 64, 32), True)):
        mod = _relax_function(lambda a, b: relax.op.add(a, b), (shape, "float32"), (shape, "float32"))
        executable, applied = _compile(mod, HASWELL)
        assert "Elementwise" in applied.values(), applied
        source = executable.mod.imports[0].inspect_source("ll")
        assert ("TVMBackendParallelLaunch" in source) == parallel, shape


def test_neon_widening_only_for_an_8bit_broadcast_times_8bit_lanes():
    """compile/schedules/neon_widening.py: Broadcast(Cast(int32, x)) * Cast(int32xN, w), x and w 8-bit,
    in either order, becomes smull of int16 lanes (4-lane slices); a 16-bit operand, two vectors, two
    broadcasts or lanes NEON's slices do not cover keep the plain product."""
    from tvm import tirx

    from mnv2_edge.compile.schedules import neon_widening

    def load(name: str, dtype: str, lanes: int = 1):
        buffer = tirx.decl_buffer((64,), dtype, name=name)
        index = tirx.IntImm("int32", 0) if lanes == 1 else tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), lanes)
        return tirx.BufferLoad(buffer, [index])

    def product(x_dtype: str, w_dtype: str, lanes: int, swapped: bool = False, spread: bool = True):
        x = tirx.Cast("int32", load("x", x_dtype))
        x = tirx.Broadcast(x, lanes) if spread else tirx.Cast(f"int32x{lanes}", load("x", x_dtype, lanes))
        w = tirx.Cast(f"int32x{lanes}", load("w", w_dtype, lanes))
        return tirx.Mul(w, x) if swapped else tirx.Mul(x, w)

    def rewritten(mul) -> str:
        out = tirx.decl_buffer((64,), mul.ty.dtype.split("x")[0], name="out")
        at = [tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), int(mul.ty.dtype.split("x")[1]))]
        return str(neon_widening.rewrite(tirx.PrimFunc([out], tirx.BufferStore(out, mul, at))))

    assert neon_widening.broadcast_product_operands(product("int8", "int8", 4)) is not None
    assert neon_widening.broadcast_product_operands(product("uint8", "int8", 4, swapped=True)) is not None
    for other in (product("int16", "int8", 4), product("int8", "int16", 4), product("int8", "int8", 4, spread=False)):
        assert neon_widening.broadcast_product_operands(other) is None
    assert rewritten(product("int8", "int8", 4)).count(neon_widening.SMULL) == 1
    assert rewritten(product("int8", "int8", 8, swapped=True)).count(neon_widening.SMULL) == 2
    assert neon_widening.SMULL not in rewritten(product("int8", "int8", 6))
    assert neon_widening.SMULL not in rewritten(product("int8", "int8", 2 * neon_fixed_point.MAX_LANES))


@pytest.mark.parametrize("kernel,stride", [((3, 3), 1), ((3, 3), 2), ((2, 2), 1)], ids=["3x3", "3x3-stride2", "2x2"])
def test_int8_depthwise_taps_in_pairs_on_aarch64(tmp_path, kernel, stride):
    """compile/schedules/int8_tap_pairs.py: on AArch64 an int8 depthwise conv sums two taps' products
    in 16-bit lanes (smull, then smlal) before widening; an odd tap count leaves one tap alone. Not
    where a weight is -128 (two products of 128 x 128 overflow 16 bits), nor on x86. The paired
    kernel's integers against NumPy's, run here on x86 (the pass applied by hand); the emulated
    boards run it on AArch64 (test_rpc)."""
    import subprocess

    import tvm
    from tvm import relax

    from mnv2_edge.compile.frontend import fixed_point
    from mnv2_edge.compile.schedules import int8_tap_pairs

    rng = np.random.default_rng(11)
    channels = 24
    x = rng.integers(-128, 128, (1, 9, 11, channels)).astype("int8")
    x[0, :4, :4] = -128  # the largest products, in every tap of some outputs
    w = rng.integers(-127, 128, (*kernel, channels, 1)).astype("int8")
    w[..., :3, 0] = -127

    def module(weight):
        conv = lambda p: relax.op.nn.conv2d(p, fixed_point.const(weight, "int8"), strides=stride, groups=channels,  # noqa: E731
                                           data_layout="NHWC", kernel_layout="HWOI", out_dtype="int32")
        return _relax_function(conv, (x.shape, "int8"))

    def paired(mod, target_dict) -> bool:
        mod = tvm.transform.Sequential(fusion.fusion_passes(tvm.target.Target(target_dict)))(mod)
        return any(int8_tap_pairs.BLOCK in name.name_hint for name in mod.get_global_vars())

    assert paired(module(w), CORTEX_A72) and paired(module(w), CORTEX_A76)
    assert not paired(module(w), HASWELL)
    with_minimum = w.copy()
    with_minimum[0, 0, 5, 0] = -128
    assert not paired(module(with_minimum), CORTEX_A72)

    executable, applied = _compile(module(w), CORTEX_A72)
    assert "Depthwise" in applied.values(), applied
    executable.export_library(str(tmp_path / "kernel.so"), cc="aarch64-linux-gnu-gcc")
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path / "kernel.so")],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"\ssmull\s+v\d+\.8h, v\d+\.8b, v\d+\.8b", listing)
    assert re.search(r"\ssmlal\s+v\d+\.8h, v\d+\.8b, v\d+\.8b", listing)  # the pair's second product

    by_hand = int8_tap_pairs.pair_depthwise_taps(tvm.target.Target(CORTEX_A72))(module(w))
    got, _ = _run(by_hand, x)
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.int64), kernel, axis=(1, 2))[:, ::stride, ::stride]
    expected = np.einsum("nhwcij,ijc->nhwc", windows, w[..., 0].astype(np.int64))
    np.testing.assert_array_equal(got, expected)


def _padded_kernel(other_reader: bool = False, interior_rows: int = 4):
    """A kernel as fusion makes it before a depthwise conv: its result (doubled input) into a buffer of
    its own, then TOPI's pad of it into the output with the zero point -3 (one row and column before, one
    after), then a copy of the input; with other_reader, the copy is of the result."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def padded(x: T.Buffer((1, 4, 5, 8), "int8"), out: T.Buffer((1, 6, 7, 8), "int8"),
               copy: T.Buffer((1, 4, 5, 8), "int8")):
        result = T.sblock_alloc_buffer((1, 4, 5, 8), "int8")
        for h, w, c in T.grid(4, 5, 8):
            with T.sblock("double"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                result[0, vh, vw, vc] = x[0, vh, vw, vc] * T.int8(2)
        for h, w, c in T.grid(6, 7, 8):
            with T.sblock("pad"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                out[0, vh, vw, vc] = T.if_then_else(1 <= vh and vh < 1 + interior_rows and 1 <= vw and vw < 6,
                                                    result[0, vh - 1, vw - 1, vc], T.int8(-3))
        for h, w, c in T.grid(4, 5, 8):
            with T.sblock("copy"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                copy[0, vh, vw, vc] = result[0, vh, vw, vc] if other_reader else x[0, vh, vw, vc]

    return padded


def _with_the_pad_in_a_shared_loop(func):
    """_padded_kernel's kernel with the pad's loops and the copy's inside one loop, as a tuned schedule
    may leave a pad: not a loop nest of its own."""
    from tvm import s_tir, tirx

    root = func.body.block
    double, pad, copy = root.body.seq
    shared = tirx.For(tirx.Var("u", "int32"), tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), tirx.ForKind.SERIAL,
                      tirx.SeqStmt([pad, copy]))
    block = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint, tirx.SeqStmt([double, shared]),
                         root.init, root.alloc_buffers, root.match_buffers, root.annotations)
    return func.with_body(s_tir.SBlockRealize([], True, block))


def test_a_padded_result_is_written_in_place():
    """compile/schedules/pad_in_place.py: the result's buffer becomes the padded output's interior (the
    producer writes the output, the pad only its border: in loops over the border alone where the pad
    has loops of its own, else by its own test), with the same values as NumPy's pad of the result; a
    result something else reads too, or a test that is not the result's extent, is left alone."""
    import tvm

    from mnv2_edge.compile.schedules import pad_in_place

    x = np.random.default_rng(0).integers(-60, 60, (1, 4, 5, 8)).astype("int8")
    expected = np.pad(2 * x, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-3)
    plain = _padded_kernel()
    shared = _with_the_pad_in_a_shared_loop(plain)
    moved, moved_in_shared = pad_in_place.rewrite(plain), pad_in_place.rewrite(shared)
    for before, after in ((plain, moved), (shared, moved_in_shared)):
        assert "sblock_alloc_buffer" in before.script() and "sblock_alloc_buffer" not in after.script()
        assert "out[0, vh + 1, vw + 1, vc] = x[0, vh, vw, vc] * T.int8(2)" in after.script()  # the producer's
    # the border alone: the rows above and below whole (7 x 8), then the columns left and right (4 x 1 x 8)
    stores = re.findall(r"in T.grid\(1, (\d), (\d), 8\):\s+out\[\w+, \w+( \+ \d)?, \w+( \+ \d)?, \w+\] = "
                        r"T.int8\(-3\)", moved.script())
    assert stores == [("1", "7", "", ""), ("1", "7", " + 5", ""), ("4", "1", " + 1", ""), ("4", "1", " + 1", " + 6")], \
        moved.script()
    assert "if_then_else" not in moved.script() and "if not" not in moved.script()
    assert moved.script().index('sblock("pad_border")') < moved.script().index('sblock("double")')  # first
    assert re.search(r"if not \(.*\):\s+out\[0, vh, vw, vc\] = T.int8\(-3\)", moved_in_shared.script())
    for func in (plain, moved, moved_in_shared):
        kernel = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
        out, copy = tvm.runtime.tensor(np.full((1, 6, 7, 8), 99, "int8")), tvm.runtime.empty((1, 4, 5, 8), "int8")
        kernel(tvm.runtime.tensor(x), out, copy)  # every element written: none keeps the 99 given
        np.testing.assert_array_equal(out.numpy(), expected)
    for other in (_padded_kernel(other_reader=True), _padded_kernel(interior_rows=3)):
        assert pad_in_place.rewrite(other).same_as(other)


@pytest.mark.parametrize("before,after", [(1, 1), (0, 1)], ids=["stride-1-pad", "stride-2-pad"])
def test_an_int8_pad_joins_the_kernel_before_it_and_stays_exact(before, after):
    """pad_in_place.pads_as_element_wise: an int8 1x1 conv, its requantization and the zero-point pad a
    depthwise conv needs are one kernel whether or not the pad has rows before (TVM calls that one
    injective, which alone would have stayed a kernel of its own), and the padded tensor, written in
    place, is NumPy's: conv, gemmlowp's requantization, np.pad with the zero point."""
    import tvm
    from test_int8 import gemmlowp_multiply
    from tvm import relax

    from mnv2_edge.compile.frontend import fixed_point

    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (1, 6, 7, 16)).astype("int8")
    w = rng.integers(-127, 128, (1, 1, 16, 24)).astype("int8")
    multipliers, shifts = [int(m) for m in rng.integers(1 << 30, 1 << 31, 24)], [-5] * 24

    def build(p):
        acc = relax.op.nn.conv2d(p, fixed_point.const(w, "int8"), data_layout="NHWC", kernel_layout="HWIO",
                                 out_dtype="int32")
        y = relax.BlockBuilder.current().emit(acc)
        y = relax.BlockBuilder.current().emit(relax.BlockBuilder.current().call_te(
            fixed_point.requantize, y, fixed_point.const(np.zeros(24, "int32"), "int32"),
            fixed_point.const(multipliers, "int32"), fixed_point.const(shifts, "int32"), zero_point=-7, low=-128,
            high=127, dtype="int8"))
        return relax.op.nn.pad(y, [0, 0, before, after, before, after, 0, 0], pad_value=-7.0)

    mod = _relax_function(build, (x.shape, "int8"))
    kernels = [gvar.name_hint for gvar, func in fusion.fuse(mod, tvm.target.Target(HASWELL)).functions_items()
               if not isinstance(func, relax.Function)]
    assert len(kernels) == 1 and "pad" in kernels[0], kernels
    got, _ = _run(mod, x)
    acc = x.reshape(-1, 16).astype(np.int64) @ w.reshape(16, 24).astype(np.int64)
    y = np.stack([gemmlowp_multiply(acc[:, c], multipliers[c], shifts[c], False) for c in range(24)], axis=1) - 7
    y = np.clip(y, -128, 127).reshape(1, 6, 7, 24)
    np.testing.assert_array_equal(got, np.pad(y, [(0, 0), (before, after), (before, after), (0, 0)],
                                              constant_values=-7))
