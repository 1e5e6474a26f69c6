"""int8 1x1 convolutions on dot-product instructions: x86 VNNI's vpdpbusd, else AVX2's vpmaddwd;
AArch64's sdot, else NEON's smull and sadalp.

Without them an int8 product is widened to a 32-bit lane (vpmulld + vpaddd), which made our int8
pointwise kernels slower than float32 ones. The packed form sums `group` consecutive input channels
into each int32 lane in one instruction:

- `vpdpbusd` (AVX-512 VNNI, AVX-VNNI): four u8 x s8 products per lane, 64 per AVX-512 instruction.
  Its activations are unsigned; TFLite's are int8, so each is read as x + 128 (one XOR of the four
  bytes loaded together) and 128 x sum(weights) per output channel is subtracted after the sum, the
  way XNNPACK's x86 VNNI kernels do it;
- `vpmaddwd` (AVX2): two int16 products per lane, the weights stored as int16 and the activations
  sign-extended on load;
- `sdot` (Armv8.2 dotprod): four s8 x s8 products per lane. With TVM's HWIO weights LLVM gathered
  each lane's four weights one by one; packed, they are one 16-byte load;
- `smull` + `sadalp` (any AArch64 NEON: the Pi 4's Cortex-A72 has no dotprod): 8 int8 x int8
  products of one output channel in 16-bit lanes (`smull v.8h, a.8b, w.8b`), added pairwise into 4
  int32 lanes of partial sums (`sadalp v.4s, p.8h`), and the 4 lanes added once at the end: 8
  products per multiply where `smlal` by lane makes 4 (XNNPACK's qs8 c8 neon-mull micro-kernels).
  The weights of an output channel are consecutive, [N, K / 8, 1, 8]: lanes 1, group 8. Plain,
  LLVM widened both operands to 32-bit lanes and multiplied there;
- the weights packed as [N / lanes, K / group, lanes, group] once at compile time (they are
  constants).

`pack_dot_products` is the Relax pass that rewrites each int8 1x1 stride-1 conv, each fully
connected layer (a 1x1 conv over its rows) and each conv over at most 4 input channels (the stem:
its input read as rows of bytes, each kernel tap one group of 4) into that form (a call to one PrimFunc whose
reduction block is named after `BLOCKS`, then the correction); the default schedule rule
(compile/schedules/default_schedules.py) tiles it and tensorizes its innermost lanes x group products with
`intrinsic(form)`. Other CPUs keep the plain integer conv and matmul. Results are the same integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnv2_edge.compile.schedules.intrinsics import registered

# The packed kernel's reduction block, by the layer it comes from: how the schedule rule finds it
# and the tuner tells a 1x1 conv from the classifier.
BLOCKS = {"pointwise": "pointwise_dot", "dense": "dense_dot", "stem": "stem_dot"}


@dataclass(frozen=True)
class DotForm:
    """One dot-product instruction: `lanes` int32 sums of `group` products each."""

    lanes: int
    group: int  # consecutive input channels summed into one lane
    weight_dtype: str
    shift: int  # added to each activation: vpdpbusd multiplies unsigned bytes
    instruction: str  # the LLVM intrinsic
    broadcast_cost: int  # instructions to spread one pixel's group of activations over a vector
    instructions_per_vector: int  # per accumulator vector and group (vpmaddwd needs its vpaddd)

    @property
    def name(self) -> str:
        return f"mnv2_dot_{self.lanes}x{self.group}_{self.weight_dtype}_shift{self.shift}"


VNNI_512 = DotForm(16, 4, "int8", 128, "llvm.x86.avx512.vpdpbusd.512", 2, 1)
VNNI_256 = DotForm(8, 4, "int8", 128, "llvm.x86.avx512.vpdpbusd.256", 2, 1)  # also AVX-VNNI's encoding
MADD_256 = DotForm(8, 2, "int16", 0, "llvm.x86.avx2.pmadd.wd", 2, 2)
SDOT_128 = DotForm(4, 4, "int8", 0, "llvm.aarch64.neon.sdot.v4i32.v16i8", 1, 1)  # Armv8.2 dotprod
# The forms whose products are one instruction per vector (intrinsic(form)): schedule_packed_dot
FORMS = {(f.lanes, f.group): f for f in (VNNI_512, VNNI_256, MADD_256, SDOT_128)}
# NEON without dotprod: one output channel per 4-lane vector of partial sums, a kernel of its own
# (default_schedules' _schedule_lane_sums: lane_sums_intrinsic, then lane_totals_intrinsic)
SMULL_SADALP = DotForm(1, 8, "int8", 0, "llvm.aarch64.neon.saddlp.v4i32.v8i16", 1, 2)
PARTIAL_LANES = 4  # SMULL_SADALP's partial sums per output: sadalp's int32 lanes
LANE_SUMS = "_lanes"  # the suffix of the block adding them (lane_sums_block)


def dot_forms(target) -> list[DotForm]:
    """The forms this target has, best first: AVX-512 VNNI, AVX-VNNI, else AVX2's vpmaddwd; on
    AArch64 with the dot-product extension sdot, else smull and sadalp."""
    from mnv2_edge.compile.schedules.cpu import CPUShape

    if str(target.kind) != "llvm":
        return []
    cpu = CPUShape.of(target)
    if cpu.arch == "aarch64":
        return [SDOT_128] if cpu.int8_dot else [SMULL_SADALP]
    if {"avx512vnni", "avx512vl"} <= cpu.features:
        return [VNNI_512, VNNI_256]
    if "avxvnni" in cpu.features:
        return [VNNI_256]
    return [MADD_256] if "avx2" in cpu.features else []


def intrinsic(form: DotForm) -> str:
    """The tensor intrinsic C[i] += sum_k (A[k] + shift) * B[i, k], i < lanes, k < group, on one
    instruction (registered on first use). LLVM 20's vpdpbusd takes byte vectors: the <16 x i32>
    form that TVM's own `dot_16x4_vnni` passes no longer verifies."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if registered(form.name):
        return form.name
    lanes, group, wtype, shift = form.lanes, form.group, form.weight_dtype, form.shift

    @T.prim_func(s_tir=True)
    def description(A: T.Buffer((group,), "int8", offset_factor=1), B: T.Buffer((lanes, group), wtype, offset_factor=1),
                    C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + _shifted(T.Cast("int32", A[vk]), shift) * T.Cast("int32", B[vi, vk])

    @T.prim_func(s_tir=True)
    def implementation(A: T.Buffer((group,), "int8", offset_factor=1),
                       B: T.Buffer((lanes, group), wtype, offset_factor=1),
                       C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = _one_instruction(form, A, B, C)

    TensorIntrin.register(form.name, description, implementation)
    return form.name


def _one_instruction(form: DotForm, A, B, C):
    """The updated accumulators: one vpdpbusd, sdot, or vpmaddwd (plus the add it lacks)."""
    from tvm import tirx

    lanes = form.lanes
    call = lambda *args: tirx.call_llvm_pure_intrin(  # noqa: E731
        f"int32x{lanes}", form.instruction, *args)
    accumulators = C.vload([0], dtype=f"int32x{lanes}")
    if form.shift:  # vpdpbusd: the four bytes read as one int32, each + 128 by flipping its top bit
        flipped = int(np.array(0x80808080, dtype=np.uint32).view(np.int32))
        unsigned = tirx.bitwise_xor(tirx.reinterpret("int32", A.vload([0], "int8x4")), tirx.const(flipped, "int32"))
        return call(accumulators, tirx.reinterpret(f"int8x{lanes * 4}", tirx.Broadcast(unsigned, lanes)),
                    B.vload([0, 0], dtype=f"int8x{lanes * 4}"))
    if form is SDOT_128:  # four int8 x int8 products per lane, both signed
        quad = tirx.reinterpret("int32", A.vload([0], "int8x4"))
        return call(accumulators, tirx.reinterpret(f"int8x{lanes * 4}", tirx.Broadcast(quad, lanes)),
                    B.vload([0, 0], dtype=f"int8x{lanes * 4}"))
    # vpmaddwd: two int16 products per lane. The activations' two bytes are broadcast first and
    # sign-extended after (vpbroadcastw, vpmovsxbw): two instructions, where extending each byte and
    # then broadcasting the pair took four.
    pair = tirx.reinterpret("int16", A.vload([0], "int8x2"))
    spread = tirx.reinterpret(f"int8x{lanes * 2}", tirx.Broadcast(pair, lanes)).astype(f"int16x{lanes * 2}")
    return accumulators + call(spread, B.vload([0, 0], dtype=f"int16x{lanes * 2}"))


# sdot's indexed form: the groups one load of a pixel's activations serves, each lane by index: 4
# (16 bytes) where the input channels are a multiple of 16, else 2 (8 bytes) where they are of 8
# (width 1.4's 88 and 136 channels, 1.3's 40).
INDEXED_GROUPS = (4, 2)


def indexed_groups(channels: int) -> int | None:
    """The most groups of SDOT_128 that one load can serve for this many input channels; None where
    no indexed form divides them (the plain form then loads each group on its own)."""
    return next((g for g in INDEXED_GROUPS if channels % (g * SDOT_128.group) == 0), None)


def indexed_sdot_intrinsic(groups: int) -> str:
    """The tensor intrinsic C[i] += sum_k A[k] B[k / 4, i, k % 4], i < 4, k < 4 x groups, as `groups`
    sdot of the indexed form (`sdot v.4s, w.16b, a.4b[g]`): one load of the activations (16 or 8
    bytes) serves them all, where the plain form loads and broadcasts (ld1r) each group's 4 bytes
    with an address of its own: XNNPACK's neondot micro-kernels read their activations this way."""
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"mnv2_dot_4x4_int8_indexed{groups}"
    if registered(name):
        return name
    lanes, group = SDOT_128.lanes, SDOT_128.group

    @T.prim_func(s_tir=True)
    def description(A: T.Buffer((groups * group,), "int8", offset_factor=1),
                    B: T.Buffer((groups, lanes, group), "int8", offset_factor=1),
                    C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:groups * group], B[0:groups, 0:lanes, 0:group])
            T.writes(C[0:lanes])
            for g in T.serial(0, groups):
                for i in T.serial(0, lanes):
                    for k in T.serial(0, group):
                        with T.sblock("update"):
                            vi = T.axis.spatial(lanes, i)
                            vk = T.axis.reduce(groups * group, g * group + k)
                            C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk // group, vi, vk % group])

    def sums(A, B, C):
        words = tirx.reinterpret(f"int32x{groups}", A.vload([0], f"int8x{groups * group}"))
        accumulators = C.vload([0], dtype=f"int32x{lanes}")
        for g in range(groups):
            # (TVM's Shuffle makes no more lanes than its inputs have: 2 groups' words are given twice)
            lane = tirx.Shuffle([words] * (lanes // groups), [tirx.IntImm("int32", g)] * lanes)
            # the lane operand last: LLVM matches the indexed form there only
            accumulators = tirx.call_llvm_pure_intrin(f"int32x{lanes}", SDOT_128.instruction, accumulators,
                                                      B.vload([g, 0, 0], dtype=f"int8x{lanes * group}"),
                                                      tirx.reinterpret(f"int8x{lanes * group}", lane))
        return accumulators

    @T.prim_func(s_tir=True)
    def implementation(A: T.Buffer((groups * group,), "int8", offset_factor=1),
                       B: T.Buffer((groups, lanes, group), "int8", offset_factor=1),
                       C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:groups * group], B[0:groups, 0:lanes, 0:group])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = sums(A, B, C)

    TensorIntrin.register(name, description, implementation)
    return name


def lane_sums_intrinsic() -> str:
    """The tensor intrinsic C[q] += sum_t A[2q + t] B[2q + t], q < 4, t < 2: 8 int8 products of one
    output channel (`smull v.8h, a.8b, w.8b`), added pairwise into its 4 partial sums (`sadalp`)."""
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    form, lanes = SMULL_SADALP, PARTIAL_LANES
    group, pair = form.group, form.group // PARTIAL_LANES
    name = f"{form.name}_lane_sums"
    if registered(name):
        return name

    @T.prim_func(s_tir=True)
    def description(A: T.Buffer((group,), "int8", offset_factor=1), B: T.Buffer((group,), "int8", offset_factor=1),
                    C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:group])
            T.writes(C[0:lanes])
            for q in T.serial(0, lanes):
                for t in T.serial(0, pair):
                    with T.sblock("update"):
                        vq, vt = T.axis.remap("SR", [q, t])
                        C[vq] = C[vq] + T.Cast("int32", A[vq * pair + vt]) * T.Cast("int32", B[vq * pair + vt])

    def sums(A, B, C):
        # int8 x int8 fits 16 bits: LLVM makes the widening multiply one smull, the pairwise add sadalp
        products = A.vload([0], f"int8x{group}").astype(f"int16x{group}") * \
            B.vload([0], f"int8x{group}").astype(f"int16x{group}")
        return C.vload([0], f"int32x{lanes}") + tirx.call_llvm_pure_intrin(f"int32x{lanes}", form.instruction, products)

    @T.prim_func(s_tir=True)
    def implementation(A: T.Buffer((group,), "int8", offset_factor=1), B: T.Buffer((group,), "int8", offset_factor=1),
                       C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:group])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = sums(A, B, C)

    TensorIntrin.register(name, description, implementation)
    return name


def lane_totals_intrinsic() -> str:
    """The tensor intrinsic C[c] += sum_q P[c, q], c < 4, q < 4: four outputs' partial sums added
    into one vector by three `addp` (pairwise adds), as XNNPACK's c8 kernels end, where LLVM moved
    lanes one by one (about 40 instructions for 16 outputs, against 12)."""
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes = PARTIAL_LANES
    name = f"{SMULL_SADALP.name}_lane_totals"
    if registered(name):
        return name

    @T.prim_func(s_tir=True)
    def description(P: T.Buffer((lanes, lanes), "int32", offset_factor=1),
                    C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], P[0:lanes, 0:lanes])
            T.writes(C[0:lanes])
            for c in T.serial(0, lanes):
                for q in T.serial(0, lanes):
                    with T.sblock("update"):
                        vc, vq = T.axis.remap("SR", [c, q])
                        C[vc] = C[vc] + P[vc, vq]

    def totals(P, C):
        def pairwise(a, b):
            return tirx.call_llvm_pure_intrin(f"int32x{lanes}", "llvm.aarch64.neon.addp.v4i32", a, b)

        rows = [P.vload([c, 0], f"int32x{lanes}") for c in range(lanes)]
        return C.vload([0], f"int32x{lanes}") + pairwise(pairwise(rows[0], rows[1]), pairwise(rows[2], rows[3]))

    @T.prim_func(s_tir=True)
    def implementation(P: T.Buffer((lanes, lanes), "int32", offset_factor=1),
                       C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], P[0:lanes, 0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = totals(P, C)

    TensorIntrin.register(name, description, implementation)
    return name


def register_intrinsics() -> None:
    for form in FORMS.values():
        intrinsic(form)
    for groups in INDEXED_GROUPS:
        indexed_sdot_intrinsic(groups)
    lane_sums_intrinsic()
    lane_totals_intrinsic()


def _shifted(x, shift: int):
    return x + shift if shift else x


def packed_weights(weight: np.ndarray, form: DotForm) -> np.ndarray:
    """HWIO [1, 1, K, N] -> [N / lanes, K / group, lanes, group]."""
    _, _, k, n = weight.shape
    packed = weight.reshape(k // form.group, form.group, n // form.lanes, form.lanes).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(packed).astype(form.weight_dtype)


def _packed_conv(data, packed, shift: int, name: str, kernel=(1, 1), stride=(1, 1), pixel_bytes: int = 0,
                 pixels: int = 0):
    """The int32 sums of a conv whose reduction runs over (tap, 4 bytes) in the packed weights' order.
    A 1x1 conv reads NHWC data; a stem reads rows of bytes (_stem_rows) of `pixels` pixels, each tap's
    group the 4 bytes from its pixel's first: its pixel_bytes channels and then the next pixel's,
    whose weights are 0."""
    from tvm import te

    blocks, _, lanes, group = packed.shape
    (kh, kw), (sh, sw) = kernel, stride
    if pixel_bytes:
        (batch, height, _), width, depth = data.shape, pixels, 4
    else:
        batch, height, width, depth = data.shape
    r = te.reduce_axis((0, kh * kw * depth), name="k")

    def pixel(b, h, w, r):
        if not pixel_bytes:
            return data[b, h * sh, w * sw, r]
        tap = r // 4
        return data[b, h * sh + tap // kw, (w * sw + tap % kw) * pixel_bytes + r % 4]

    out_shape = (batch, (height - kh) // sh + 1, (width - kw) // sw + 1, blocks * lanes)
    if (lanes, group) == (SMULL_SADALP.lanes, SMULL_SADALP.group):
        # 4 partial sums per output (each lane 2 of every 8 input channels), added at the end
        per_lane = group // PARTIAL_LANES
        steps = te.reduce_axis((0, kh * kw * depth // group), name="k")
        pair = te.reduce_axis((0, per_lane), name="t")
        partial = te.compute((*out_shape, PARTIAL_LANES), lambda b, h, w, n, q: te.sum(
            pixel(b, h, w, steps * group + q * per_lane + pair).astype("int32")
            * packed[n, steps, 0, q * per_lane + pair].astype("int32"), axis=[steps, pair]), name=name)
        lane = te.reduce_axis((0, PARTIAL_LANES), name="lane")
        return te.compute(out_shape, lambda b, h, w, n: te.sum(partial[b, h, w, n, lane], axis=lane),
                          name=name + LANE_SUMS)
    return te.compute(
        out_shape,
        lambda b, h, w, n: te.sum(_shifted(pixel(b, h, w, r).astype("int32"), shift)
                                  * packed[n // lanes, r // group, n % lanes, r % group].astype("int32"), axis=r),
        name=name)


def _stem_rows(data):
    """NHWC over at most 4 channels as rows of bytes, [N, H, W x C + 4 - C] rounded up to whole 16-byte
    vectors: a stem's tap reads 4 bytes from its pixel's first without running past its row."""
    from tvm import te, tirx

    batch, height, width, channels = (int(d) for d in data.shape)
    row = -(-(width * channels + 4 - channels) // 16) * 16
    return te.compute((batch, height, row), lambda b, h, j: tirx.if_then_else(
        j < width * channels, data[b, h, j // channels, j % channels], tirx.const(0, data.dtype)), name="stem_rows")


def int8_constant_weight(call) -> bool:
    """An int8 x int8 call with constant weights and int32 sums (a conv2d or matmul)."""
    from tvm.ir.expr import GenericConst  # a Relax constant

    data, weight = call.args
    return (isinstance(weight, GenericConst) and weight.value.dtype == "int8" and data.ty.dtype == "int8"
            and str(call.attrs.out_dtype) == "int32")


def _unpadded_conv_weight(call) -> np.ndarray | None:
    """The HWIO weights of an int8 NHWC conv2d call on constant weights, ungrouped, undilated and
    without padding of its own (the integer frontend pads explicitly), else None."""
    attrs = call.attrs
    if (not int8_constant_weight(call) or attrs.groups != 1
            or attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO" or attrs.out_layout != "NHWC"
            or any(int(d) != 1 for d in attrs.dilation) or any(int(p) for p in attrs.padding)):
        return None
    return call.args[1].value.numpy()


def _conv_weight(call) -> np.ndarray | None:
    """The HWIO weights of an int8 1x1 stride-1 conv (_unpadded_conv_weight), else None."""
    weight = _unpadded_conv_weight(call)
    if weight is None or any(int(s) != 1 for s in call.attrs.strides):
        return None
    return weight if weight.shape[:2] == (1, 1) else None


def _stem_weight(call) -> np.ndarray | None:
    """An int8 conv (_unpadded_conv_weight) over at most 4 input channels (the stem over RGB), any
    kernel and stride: its weights with the input channels padded to 4 by zeros, as [1, 1, taps x 4,
    N], so that each kernel tap is one group of 4 products over the 4 bytes its pixel starts (the
    input read as rows of bytes, _stem_rows: the zero weights meet the next pixel's first bytes);
    else None. Widened to 32-bit lanes, 1.0/224's int8 stem was 9% of the model."""
    weight = _unpadded_conv_weight(call)
    if weight is None:
        return None
    kh, kw, cin, n = weight.shape
    if cin > 4 or (kh, kw) == (1, 1):
        return None
    return np.pad(weight, [(0, 0), (0, 0), (0, 4 - cin), (0, 0)]).reshape(1, 1, kh * kw * 4, n)


def _dense_weight(call) -> np.ndarray | None:
    """The [K, N] weights of an int8 [M, K] x [K, N] matmul call as HWIO [1, 1, K, N], else None."""
    data, weight = call.args
    if not int8_constant_weight(call) or len(data.ty.shape) != 2 or len(weight.value.shape) != 2:
        return None
    return weight.value.numpy()[None, None]


def _form_for(weight: np.ndarray, forms: list[DotForm]) -> DotForm | None:
    """The first form whose lanes and group divide the output and input channels (SMULL_SADALP's
    kernel adds its partial sums 4 outputs at a time)."""
    _, _, k, n = weight.shape
    return next((f for f in forms if n % (PARTIAL_LANES if f is SMULL_SADALP else f.lanes) == 0
                 and k % f.group == 0), None)


def pack_dot_products(target):
    """The Relax pass (before legalization): int8 1x1 convs, fully connected layers and stems ->
    packed dot-product form on x86 targets with AVX2 or VNNI and on AArch64; on others it changes
    nothing."""
    import tvm
    from tvm import relax

    forms = dot_forms(target)
    conv2d, matmul = tvm.ir.Op.get("relax.nn.conv2d"), tvm.ir.Op.get("relax.matmul")
    layers = ((conv2d, "pointwise", _conv_weight), (conv2d, "stem", _stem_weight), (matmul, "dense", _dense_weight))

    @relax.expr_functor.mutator
    class Packer(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            layer, weight = next(((name, w) for op, name, weight_of in layers
                                  if call.op.same_as(op) and (w := weight_of(call)) is not None), (None, None))
            form = _form_for(weight, forms) if weight is not None else None
            if form is None:
                return call
            data, shape = call.args[0], {}
            if layer == "dense":  # [M, K] rows as one image row of M pixels (a view, no copy)
                data = self.builder_.emit(relax.op.reshape(data, (1, 1, *data.ty.shape)))
            if layer == "stem":  # rows of bytes, each tap's 4 its channels and the next pixel's
                shape = {"kernel": tuple(int(d) for d in call.args[1].value.shape[:2]),
                         "stride": tuple(int(s) for s in call.attrs.strides),
                         "pixel_bytes": int(data.ty.shape[3]), "pixels": int(data.ty.shape[2])}
                data = self.builder_.emit(self.builder_.call_te(_stem_rows, data, primfunc_name_hint="stem_rows"))
            acc = self.builder_.call_te(_packed_conv, data,
                                        relax.const(packed_weights(weight, form), form.weight_dtype),
                                        shift=form.shift, name=BLOCKS[layer], **shape,
                                        primfunc_name_hint=BLOCKS[layer])
            if form.shift:
                correction = (form.shift * weight.astype(np.int64).sum(axis=(0, 1, 2))).astype(np.int32)
                acc = relax.op.subtract(acc, relax.const(correction, "int32"))
            return relax.op.reshape(acc, call.ty.shape) if layer == "dense" else acc

    @tvm.transform.module_pass(opt_level=0, name="mnv2.PackInt8DotProducts")
    def pack(mod, _ctx):
        return rewrite_relax_functions(mod, Packer) if forms else mod

    return pack


def rewrite_relax_functions(mod, mutator_class):
    """The module with each Relax function through a PyExprMutator class (its PrimFuncs as they are,
    with those the mutator's builder adds)."""
    from tvm import relax

    mutator = mutator_class(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def lane_sums_block(block_name: str) -> bool:
    """The block adding each output's partial sums of a SMULL_SADALP kernel: a reduction (over 4
    lanes) that belongs to the kernel's epilogue, not a kernel of its own."""
    return packed_layer(block_name) is not None and block_name.endswith(LANE_SUMS)


def packed_layer(block_name: str) -> str | None:
    """"pointwise", "dense" or "stem" for a packed kernel's reduction block, else None."""
    return next((layer for layer, name in BLOCKS.items() if block_name.startswith(name)), None)

