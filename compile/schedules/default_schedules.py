"""Default CPU schedules: what a kernel without a tuning record gets, chosen by rule for its kind.

Untuned TVM code is a plain loop nest (no threads, no vectors): 20-30x slower than XNNPACK. These rules
follow TVM's dlight design (one `ScheduleRule` per kind of kernel, parametrized by the target, applied
by `ApplyDefaultSchedule` to every PrimFunc that a tuning database did not schedule) and the classic
CPU recipe that TOPI's x86/arm_cpu NHWC schedules and XNNPACK's micro-kernels share: output channels in
vector registers, a few output pixels per register block, the reduction streamed through them, rows
in parallel, and the fused epilogue (bias, ReLU6, residual add, int8 requantization) computed on the
register block while it is hot. The target gives the vector width, the register file and the cores.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

from mnv2_edge.targets.errors import last_line
from mnv2_edge.compile.schedules import int8_dot, neon_lane_fma, tir_pipeline
from mnv2_edge.compile.schedules.cpu import CPUShape
from mnv2_edge.compile.schedules.fusion import fusion_passes

SPATIAL, REDUCE = 0, 2  # tirx.IterVar kinds


def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of n that is <= limit."""
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


def iter_kinds(sch, block) -> str:
    return "".join("S" if iv.iter_type == SPATIAL else "R" if iv.iter_type == REDUCE else "?"
                   for iv in sch.get(block).iter_vars)


# Parallel iterations per core in an element-wise loop nest: enough to balance the cores.
PARALLEL_GRAIN = 16


def _extents(sch, loops) -> list[int] | None:
    try:
        return [int(sch.get(loop).extent) for loop in loops]
    except (TypeError, ValueError):
        return None  # a symbolic extent: leave the kernel to TVM's own lowering


def _try(step) -> bool:
    """Run one schedule primitive; False when TVM refuses it (the kernel keeps its previous form)."""
    from tvm.s_tir.schedule import ScheduleError

    try:
        step()
        return True
    except (ScheduleError, ValueError, RuntimeError):
        return False


def schedule_elementwise(sch, block, shape: CPUShape):
    """Any loop nest without a reduction (pad, requantize, reshape+cast): the innermost (contiguous)
    axis in vectors, the outermost loops fused and split over the cores, only as many as give each
    core PARALLEL_GRAIN iterations (each fused loop costs every iteration a division and a remainder
    to recover its indices, which a pad's border test needs: fused over rows and columns, a pad of a
    96x96x3 input took 3.5x the time of the search's parallel rows, on the simulated Cortex-A72).
    Returns the loop just outside the vectors (None when there is none), where the blocks feeding
    this one can be computed chunk by chunk."""
    loops = sch.get_loops(block)
    extents = _extents(sch, loops)
    if not loops or extents is None or "R" in iter_kinds(sch, block) or len(loops) != len(extents):
        return None
    lanes = shape.lanes(sch.get(block).writes[0].source.dtype.bits)
    *outer, inner = loops
    width = _vector_width(extents[-1], lanes)
    if extents[-1] > width:
        chunk, inner = sch.split(inner, [None, width])
        if extents[-1] > 4 * lanes:
            outer.append(chunk)
    if not outer:
        _try(lambda: sch.vectorize(inner))
        return None
    outer_extents = [int(sch.get(loop).extent) for loop in outer]
    count, parallel_extent = 1, outer_extents[0]
    while count < len(outer) and parallel_extent < PARALLEL_GRAIN * shape.cores:
        parallel_extent *= outer_extents[count]
        count += 1
    fused = sch.fuse(*outer[:count]) if count > 1 else outer[0]
    if parallel_extent >= 2:
        sch.parallel(fused)
    _try(lambda: sch.vectorize(inner))
    return outer[-1] if count < len(outer) else fused


def schedule_injective(sch, shape: CPUShape) -> None:
    """A function of element-wise blocks only (a requantization chain, a residual add, a pad) as one
    loop nest: blocks read once are inlined into their reader, the others computed chunk by chunk
    inside the output's loop. Scheduled block by block, TFLite's int64 requantization was 15 parallel
    loops, each a pass over memory and a wake-up of the thread pool: 16 us for 1280 values."""
    root = sch.get_sblock("root")
    *producers, output = sch.get_child_blocks(root)
    for block in reversed(producers):
        consumers = sch.get_consumers(block)
        if len(consumers) == 1 and _loads_of(sch.get(consumers[0]), sch.get(block).writes[0].source) == 1:
            _try(lambda b=block: sch.compute_inline(b))
    *kept, output = sch.get_child_blocks(root)
    loop = schedule_elementwise(sch, output, shape)
    for block in reversed(kept):
        if loop is not None and _try(lambda b=block: sch.compute_at(b, loop)):
            _vectorize_innermost(sch, block, shape)
        else:
            schedule_elementwise(sch, block, shape)


@dataclass(frozen=True)
class Tiling:
    """A register block for a reduction kernel: up to vector_blocks full vectors of output channels x
    up to max_pixel_block output positions; the rest of the spatial loops run in parallel."""

    max_pixel_block: int  # output positions per register block (1 for pooling and dense rows)
    vector_blocks: int  # vectors of output channels per register block
    unroll_taps: bool = False  # unroll up to 9 taps (a 3x3 window) on CPUs with 32 vector registers


def _int8_operands(sch, block) -> bool:
    """Every operand the block reads is 8-bit (an int8 conv, depthwise, matmul or pooling)."""
    return all(r.source.dtype.bits == 8 for r in sch.get(block).reads)


def _int8_on_sdot(sch, block, shape: CPUShape) -> bool:
    """An int8 reduction over input channels on a CPU with sdot: it stays innermost, where LLVM
    vectorizes it into dot products (four consecutive input channels per int32 lane), which
    vectorizing the output channels would prevent. Not a depthwise or pooling kernel: they sum no
    channels, so sdot has nothing to do there, and keeping their reduction innermost left them
    scalar (byte loads and multiplies: 60% of an int8 0.35/96's cycles on a simulated Cortex-A76)."""
    return shape.int8_dot and _int8_operands(sch, block) and kernel_kind(sch, block) in ("pointwise", "stem", "dense")


def schedule_reduction(sch, block, shape: CPUShape, tiling: Tiling) -> bool:
    """Tile a block with spatial loops first, reductions last, whose last spatial loop is the
    innermost (contiguous) axis of its output: conv2d/depthwise NHWC, dense, pooling."""
    kinds = iter_kinds(sch, block)
    loops = sch.get_loops(block)
    extents = _extents(sch, loops)
    n_spatial = kinds.count("S")
    if (extents is None or len(loops) != len(kinds) or "?" in kinds or n_spatial == 0
            or kinds != "S" * n_spatial + "R" * (len(kinds) - n_spatial)):
        return False
    accumulator_bits = sch.get(block).writes[0].source.dtype.bits
    lanes = shape.lanes(accumulator_bits)
    if shape.arch == "aarch64" and _int8_operands(sch, block) and kernel_kind(sch, block) == "depthwise":
        # An int8 x int8 product fits 16 bits: NEON multiplies 8 channels at once (smull into 16-bit
        # lanes) and widens them into two int32 registers (saddw, saddw2), so a vector covers 8
        # channels, not one int32 register's 4 (each loaded and widened on its own). Simulated
        # Cortex-A76, 1.0/224 int8: the depthwise kernels' cycles 9.5 M -> 7.9 M.
        lanes = shape.lanes(16)

    for producer in sch.get_producers(block):  # padding: read through it, no padded copy
        _try(lambda p=producer: sch.compute_inline(p))
    dot_product = _int8_on_sdot(sch, block, shape)
    epilogue = _epilogue(sch, block)

    spatial, reduction = loops[:n_spatial], loops[n_spatial:]
    channels = extents[n_spatial - 1]
    # Registers of the widest power-of-two width that divides the channels (a 24-wide vector is 1.5
    # AVX-512 registers and compiles to a slow mix; 8, a 256-bit half, is fast), as many as the
    # channels divide up to the tiling's count: 1000 classes are 5 x 8 lanes, not 1 x 8.
    width = _vector_width(channels, lanes)
    vectors = _largest_divisor(channels // width, tiling.vector_blocks * lanes // width)
    budget = max(1, (shape.registers - 4) // vectors)
    c_outer, c_vectors, c_in = sch.split(spatial[-1], [None, vectors, width])
    if n_spatial >= 2 and tiling.max_pixel_block > 1:
        w_inner = _largest_divisor(extents[n_spatial - 2], min(budget, tiling.max_pixel_block))
        w_outer, w_in = sch.split(spatial[-2], [None, w_inner])
        outer = [*spatial[:-2], w_outer]
        register_block = [w_in, c_vectors, c_in]
    else:
        outer = list(spatial[:-1])
        register_block = [c_vectors, c_in]
    if dot_product:
        sch.reorder(*outer, c_outer, *register_block, *reduction)
    else:
        sch.reorder(*outer, c_outer, *reduction, *register_block)
    outer_extent = math.prod(int(sch.get(loop).extent) for loop in outer)
    blocks = channels // (vectors * width)
    if outer_extent >= 2 * shape.cores or (outer_extent > 1 and blocks < 2):
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    elif blocks >= 2:  # one row (dense, pooling): the channel blocks are the parallel work
        sch.parallel(c_outer)

    if not dot_product:
        for loop in register_block[:-1]:
            sch.unroll(loop)
        sch.vectorize(register_block[-1])  # before decompose_reduction: TVM refuses it on the update alone
    if tiling.unroll_taps and not dot_product and shape.registers >= 32 and math.prod(extents[n_spatial:]) <= 9:
        for loop in reduction:
            sch.unroll(loop)
    if reduction:
        init = sch.decompose_reduction(block, reduction[0])
        _vectorize_innermost(sch, init, shape)
    _place_epilogue(sch, block, epilogue, c_outer, shape)
    return True


def _register_block(pixels: int, vectors: int, registers: int, reserved: int, broadcast_cost: float = 1,
                    per_accumulator: float = 1, max_accumulators: int = 24) -> tuple[int, int]:
    """(pixels, vectors) of a register block: per step of the reduction it costs one broadcast per
    pixel, one weight load per vector and per accumulator one instruction or more. The block with the
    most products per instruction that fits the registers (accumulators + weight vectors + reserved)
    wins, among those that divide the pixels and the vectors (no remainder loops); of equals, the one
    with more vectors."""
    fitting = [(p, v) for v in range(1, min(vectors, 8) + 1) if vectors % v == 0
               for p in range(1, min(pixels, 16) + 1) if pixels % p == 0
               and p * v + v + reserved <= registers and p * v <= max_accumulators]
    return max(fitting, key=lambda pv: (
        pv[0] * pv[1] / (pv[0] * broadcast_cost + pv[1] + pv[0] * pv[1] * per_accumulator), pv[1]))


def _gemm_tiles(sch, pixel_loops: list, c_outer, pixels: int, channels: int, inner: list):
    """The loops outside a 1x1 conv's register block, fused into one parallel loop, in the order that
    reads the larger operand once: where the weights outweigh the input (more output channels than
    pixels: the late layers, 7 x 7 x 960 -> 160 has 614 KB of weights and 188 KB of input) the
    channel blocks are outermost, so each block's weights stay in cache while every pixel passes;
    elsewhere the pixel rows are."""
    outer = [c_outer, *pixel_loops] if channels > pixels else [*pixel_loops, c_outer]
    sch.reorder(*outer, *inner)
    tile = sch.fuse(*outer)
    if int(sch.get(tile).extent) > 1:
        sch.parallel(tile)
    return tile


def schedule_pointwise(sch, block, shape: CPUShape) -> bool:
    """A 1x1 conv NHWC is a GEMM: a register block of a few pixels of a row x a few vectors of output
    channels, sized to the registers, the input channels streamed through it (_gemm_tiles)."""
    kinds = iter_kinds(sch, block)
    loops = sch.get_loops(block)
    extents = _extents(sch, loops)
    if extents is None or kinds != "SSSSRRR" or len(loops) != 7 or _int8_on_sdot(sch, block, shape):
        return schedule_reduction(sch, block, shape, Tiling(8, 2))
    for producer in sch.get_producers(block):  # padding: read through it, no padded copy
        _try(lambda p=producer: sch.compute_inline(p))
    epilogue = _epilogue(sch, block)
    n, h, w, channel, *reduction = loops
    channels = extents[3]
    width = _vector_width(channels, shape.lanes(sch.get(block).writes[0].source.dtype.bits))
    # 16 accumulators at most: on AVX-512, 24 made 1.0/224 float32 5% slower than 8-16 (one run).
    # AArch64 float32: input channels neon_lane_fma.STEP a step, one load per pixel, fmla by lane
    by_lane = shape.arch == "aarch64" and width == 4 and sch.get(block).writes[0].source.dtype == "float32" \
        and extents[6] % neon_lane_fma.STEP == 0
    pixels, vectors = _register_block(extents[2], channels // width, shape.registers, reserved=1,
                                      broadcast_cost=1 / neon_lane_fma.STEP if by_lane else 1,
                                      max_accumulators=16)
    w_outer, w_inner = sch.split(w, [None, pixels])
    c_outer, c_vectors, c_lanes = sch.split(channel, [None, vectors, width])
    if by_lane:
        *taps, depth = reduction
        depth, step = sch.split(depth, [None, neon_lane_fma.STEP])
        inner = [*taps, depth, c_vectors, w_inner, step, c_lanes]
    else:
        inner = [*reduction, w_inner, c_vectors, c_lanes]
    tile = _gemm_tiles(sch, [n, h, w_outer], c_outer, math.prod(extents[:3]), channels, inner)
    sch.unroll(w_inner)
    sch.unroll(c_vectors)
    if not by_lane:
        sch.vectorize(c_lanes)
    init = sch.decompose_reduction(block, reduction[0])
    _vectorize_innermost(sch, init, shape)
    _place_epilogue(sch, block, epilogue, tile, shape)
    if by_lane:  # last: it replaces the block
        sch.tensorize(step, neon_lane_fma.intrinsic(width))
    return True


def schedule_packed_dot(sch, block, shape: CPUShape) -> bool:
    """The packed int8 1x1 conv or fully connected layer (compile/schedules/int8_dot.py; a fully connected
    layer is one row of pixels): a register block of up to 24 int32 vectors (a few output pixels x a
    few vectors of output channels), the input channels streamed through it a group at a time, each
    vector's products one vpdpbusd, vpmaddwd or sdot (smull and sadalp: _schedule_lane_sums); the tiles
    in parallel (_gemm_tiles)."""
    loops = sch.get_loops(block)
    extents = _extents(sch, loops)
    if extents is not None and len(loops) == 7 and iter_kinds(sch, block) == "SSSSSRR":
        return _schedule_lane_sums(sch, block, shape, loops, extents)
    if extents is None or len(loops) != 5 or iter_kinds(sch, block) != "SSSSR":
        return False
    batch, height, width, channel, reduction = loops
    blocks, _, lanes, group = (int(d) for d in sch.get(block).reads[1].source.shape)
    epilogue = _epilogue(sch, block)
    # Per input-channel group: one broadcast per pixel (load, XOR or sign-extend, broadcast), one
    # weight load per vector, per accumulator one instruction (vpdpbusd, sdot) or two (vpmaddwd + vpaddd).
    form = int8_dot.FORMS[lanes, group]
    # On AArch64 the requantization after the sums (bias, sqrdmulh, the rounding shift, the clamps:
    # about 7 NEON instructions per accumulator, against one sdot per 4 input channels) outweighs
    # MobileNetV2's short reductions, and LLVM spills once it shares the registers with many
    # accumulators: 8 at most. Simulated Cortex-A76, 1.0/224 int8 (ms): 2 pixels x 4 vectors 12.8,
    # 2 x 8 13.0, 4 x 4 13.4, 4 x 6 (the block without this limit) 13.4, 2 x 2 14.5; with srshl and
    # sdot by lane: 8 at most 10.69, 12 at most 11.33, 16 at most 11.64.
    pixels, vectors = _register_block(extents[2], blocks, shape.registers, reserved=2,
                                      broadcast_cost=form.broadcast_cost,
                                      per_accumulator=form.instructions_per_vector,
                                      max_accumulators=8 if shape.arch == "aarch64" else 24)
    w_outer, w_inner = sch.split(width, [None, pixels])
    c_outer, c_vectors, c_lanes = sch.split(channel, [None, vectors, lanes])
    indexed = int8_dot.indexed_groups(extents[4]) if form is int8_dot.SDOT_128 else None
    if indexed:  # 16 (or 8) input channels a step: one load of a pixel's bytes, sdot by lane index
        k_outer, k_groups, k_inner = sch.split(reduction, [None, indexed, group])
        inner = [k_outer, w_inner, c_vectors, k_groups, c_lanes, k_inner]
    else:
        k_outer, k_inner = sch.split(reduction, [None, group])
        inner = [k_outer, w_inner, c_vectors, c_lanes, k_inner]
    tile = _gemm_tiles(sch, [batch, height, w_outer], c_outer, math.prod(extents[:3]), extents[3], inner)
    init = sch.decompose_reduction(block, k_outer)
    _vectorize_innermost(sch, init, shape)
    sch.unroll(w_inner)
    sch.unroll(c_vectors)
    _place_epilogue(sch, block, epilogue, tile, shape)
    # last: it replaces the block
    sch.tensorize(*((k_groups, int8_dot.indexed_sdot_intrinsic(indexed)) if indexed
                    else (c_lanes, int8_dot.intrinsic(form))))
    return True


def _schedule_lane_sums(sch, block, shape: CPUShape, loops: list, extents: list[int]) -> bool:
    """The packed int8 1x1 conv on NEON without dotprod (int8_dot.SMULL_SADALP): each output's 4
    partial sums one int32 vector, 8 input channels a step (one smull and one sadalp), a register
    block of pixels x output channels, each 4 outputs' lanes added by three addp in the epilogue.
    A72 (llvm-mca): 8 products a cycle, where smlal by lane index makes 4."""
    batch, height, width, channel, lanes, steps, pair = loops
    quad = int8_dot.PARTIAL_LANES  # the packing took only whole quads of output channels (int8_dot._form_for)
    # Up to 16 accumulators (of 32 registers: the pixels' and channels' 8-byte loads and the
    # products beside them), as many pixels as divide the row: per step one load per pixel and
    # per channel, two instructions per accumulator. Simulated Cortex-A72, 1.0/224 int8 (ms): 16
    # at most 43.8, 8 at most 47.8, 24 at most 50.4; smlal by lane index (4 products an
    # instruction) 61.5; the plain integer loops 78.9.
    quads_in_all = extents[3] // quad
    pixels, quads = max(((p, q) for p in range(1, min(extents[2], 16) + 1) if extents[2] % p == 0
                         for q in range(1, quads_in_all + 1) if quads_in_all % q == 0 and p * q * quad <= 16),
                        key=lambda pq: (pq[0] * pq[1], pq[0]))
    epilogue = _epilogue(sch, block)
    w_outer, w_inner = sch.split(width, [None, pixels])
    c_outer, c_inner = sch.split(channel, [None, quads * quad])
    tile = _gemm_tiles(sch, [batch, height, w_outer], c_outer, math.prod(extents[:3]), extents[3],
                       [steps, w_inner, c_inner, lanes, pair])
    init = sch.decompose_reduction(block, steps)
    _vectorize_innermost(sch, init, shape)
    sch.unroll(w_inner)
    sch.unroll(c_inner)
    _place_epilogue(sch, block, epilogue, tile, shape, partial_lanes=True)
    lane_sums = next(b for b in epilogue if int8_dot.lane_sums_block(sch.get(b).name_hint))
    _, *sum_pixels, sum_channels, lane = sch.get_loops(lane_sums)  # under the tile (no pixel loop for 1)
    _vectorize_innermost(sch, sch.decompose_reduction(lane_sums, (sum_pixels or [sum_channels])[0]), shape)
    sum_quads, sum_quad = sch.split(sum_channels, [None, quad])
    for loop in [*sum_pixels, sum_quads]:
        sch.unroll(loop)
    sch.tensorize(sum_quad, int8_dot.lane_totals_intrinsic())
    sch.tensorize(lanes, int8_dot.lane_sums_intrinsic())  # last: it replaces the block
    return True


def _place_epilogue(sch, block, epilogue: list, tile_loop, shape: CPUShape, partial_lanes: bool = False) -> None:
    """Blocks that read the reduction's result go after it on each register block (under tile_loop),
    in order; blocks that do not (the other input of a residual add, rescaled) go before it, for the
    same tile only. With partial_lanes, the reduction's results are each output's partial sums (a
    last axis more than its epilogue's)."""
    name = lambda b: sch.get(b).name_hint  # noqa: E731
    downstream = {name(block)}
    for stage in epilogue:
        if any(name(p) in downstream for p in sch.get_producers(stage)):
            downstream.add(name(stage))
    placed = set()
    for stage in epilogue:
        # A trailing pad (int8 pads with the zero point, so it is not folded into the next conv) has a
        # border that no tile computes: it stays a loop of its own, with the stages it reads.
        if name(stage) in downstream and _same_shape_output(sch, block, stage, partial_lanes) and \
                _try(lambda s=stage: sch.reverse_compute_at(s, tile_loop)):
            placed.add(name(stage))
            _vectorize_innermost(sch, stage, shape)
    for stage in reversed(epilogue):
        if name(stage) not in downstream and _try(lambda s=stage: sch.compute_at(s, tile_loop)):
            placed.add(name(stage))
            _vectorize_innermost(sch, stage, shape)
    for stage in epilogue:
        if name(stage) not in placed:
            schedule_elementwise(sch, stage, shape)


def _same_shape_output(sch, block, epilogue, partial_lanes: bool = False) -> bool:
    """An epilogue that writes exactly the reduction's shape (less its partial sums' axis where it has
    one; a trailing pad does not: its border does not come from the reduction, so it cannot be
    computed inside the reduction's tiles)."""
    shape_of = lambda b: [int(d) for d in sch.get(b).writes[0].source.shape]  # noqa: E731
    return (shape_of(block)[:-1] if partial_lanes else shape_of(block)) == shape_of(epilogue)


def _epilogue(sch, block) -> list:
    """The element-wise blocks after the reduction, in order, each to be computed on the reduction's
    register block. A block read once by a single consumer is inlined into it; one read several times
    (requantization reuses signs and magnitudes) keeps its own loop, since inlining would copy its
    expression into every use."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    after = blocks[names.index(sch.get(block).name_hint) + 1:]
    kept = []
    for candidate in after:
        consumers = sch.get_consumers(candidate)
        buffer = sch.get(candidate).writes[0].source
        # Not into a trailing pad (its own loop over the whole tensor, see _place_epilogue): the block
        # stays on the register block and the pad reads its narrow result, not the int32 sums.
        if len(consumers) == 1 and _loads_of(sch.get(consumers[0]), buffer) == 1 and \
                _same_shape_output(sch, candidate, consumers[0]) and \
                _try(lambda c=candidate: sch.compute_inline(c)):
            continue
        kept.append(candidate)
    return kept


def _loads_of(consumer, buffer) -> int:
    """How often the consumer's computation reads the buffer (counted in its printed body)."""
    import re

    return len(re.findall(rf"(?<![\w.]){re.escape(buffer.name)}\[", str(consumer.body)))


def _vector_width(extent: int, lanes: int) -> int:
    """Whole registers or a power-of-two part of one: 96 int8 lanes as one vector (1.5 AVX-512
    registers) compile to a byte-by-byte insert/extract mix, 48 int32 ones to a lane-by-lane one."""
    return next(w for w in (lanes >> k for k in range(lanes.bit_length())) if extent % w == 0)


def _vectorize_innermost(sch, block, shape: CPUShape) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = _extents(sch, [inner])
    if extent:
        width = _vector_width(extent[0], shape.lanes(sch.get(block).writes[0].source.dtype.bits))
        if extent[0] > width:
            inner = sch.split(inner, [None, width])[1]
    _try(lambda: sch.vectorize(inner))


# ----- the rules: one per kind of kernel --------------------------------------------------------


def kernel_kind(sch, block) -> str:
    """What a kernel is, from what its reduction block reads (NHWC data with HWIO weights; HWOI with
    O=1 for depthwise): "pointwise" (1x1 conv), "depthwise", "stem" (a full conv: MobileNetV2's first
    layer), "dense" (a 2-D weight), "pooling" (no weight) or "other". An int8 layer packed for dot
    products is the kind of the layer it came from. The one classification of kernels: the rules
    below and the tuner's task kinds (tuning.classify) both read it."""
    packed = int8_dot.packed_layer(sch.get(block).name_hint)
    if packed:
        return packed
    reads = [r.source for r in sch.get(block).reads]
    if len(reads) == 1:
        return "pooling"
    weight = reads[1].shape
    if len(weight) == 2:
        return "dense"
    if len(weight) != 4:
        return "other"
    kh, kw, cin, cout = (int(d) for d in weight)
    if (kh, kw) == (1, 1):
        return "pointwise"
    return "depthwise" if cout == 1 and cin > 1 else "stem"


def function_kind(func) -> str:
    """kernel_kind of a PrimFunc's one reduction; "other" with none (element-wise) or several (softmax)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    reductions = _reduction_blocks(sch)
    return kernel_kind(sch, reductions[0]) if len(reductions) == 1 else "other"


def _tiled(max_pixel_block: int, vector_blocks: int, unroll_taps: bool = False):
    return functools.partial(schedule_reduction, tiling=Tiling(max_pixel_block, vector_blocks, unroll_taps))


# One rule per kind of kernel: (rule name, kinds from kernel_kind, whether packed for dot products,
# scheduler, why).
KERNEL_RULES = (
    ("PointwiseDot", ("pointwise", "stem", "dense"), True, schedule_packed_dot,
     "int8 1x1 conv, stem or fully connected layer packed for dot products (x86 VNNI, AVX2; ARM sdot): "
     "4 or 2 input channels per int32 lane."),
    ("Pointwise", ("pointwise",), False, schedule_pointwise,
     "1x1 conv = GEMM: a block of pixels x vectors of output channels sized to the registers, the "
     "larger of weights and input read once."),
    ("Depthwise", ("depthwise",), False, _tiled(8, 1, unroll_taps=True),
     "3x3 depthwise: 9 taps of one channel vector for up to 8 pixels, the taps unrolled where 32 "
     "registers allow it (neighbouring pixels share input loads)."),
    ("DirectConv", ("stem",), False, _tiled(8, 2),
     "A full conv over few input channels (the 3x3 stem over RGB)."),
    ("Dense", ("dense",), False, _tiled(1, 8),
     "Fully connected, one row: up to 8 vectors of output features per block, enough independent "
     "sums to keep the weight stream going (1000 classes: 5 x 8 lanes, 2.4x faster than one vector); "
     "the blocks split over the cores."),
    ("Pooling", ("pooling",), False, _tiled(1, 1),
     "Global mean / sum over H x W: channels in vectors."),
)


def _reduction_blocks(sch) -> list:
    """The kernel's reductions (a packed kernel's sum of partial lanes is its epilogue's)."""
    return [b for b in sch.get_child_blocks(sch.get_sblock("root"))
            if "R" in iter_kinds(sch, b) and not int8_dot.lane_sums_block(sch.get(b).name_hint)]


def make_rules() -> list:
    """The rules in the order schedule_for tries them (the first that applies wins)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule as base

    class ReductionKernel(base):
        """One reduction block (conv, depthwise, dense, pooling) with its fused element-wise epilogue."""

        kinds: tuple[str, ...]
        packed: bool  # int8 layers packed for dot products (int8_dot), or the plain form
        scheduler: object  # (sch, block, CPUShape) -> bool

        def apply(self, func, target, tunable):
            if not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            reductions = _reduction_blocks(sch)
            if len(reductions) != 1 or kernel_kind(sch, reductions[0]) not in self.kinds or \
                    bool(int8_dot.packed_layer(sch.get(reductions[0]).name_hint)) != self.packed:
                return None
            shape = CPUShape.of(target)
            if not self.scheduler(sch, reductions[0], shape):
                return None
            for block in sch.get_child_blocks(sch.get_sblock("root")):
                if "R" not in iter_kinds(sch, block) and not _is_scheduled_loop(sch, block):
                    schedule_elementwise(sch, block, shape)
            return sch

    class Elementwise(base):
        """No reduction (pad, requantize, reshape, cast): flat, parallel, vectorized. Functions with
        several reductions (softmax over 1000 classes, microseconds) get their element-wise blocks so.
        A function with exactly one reduction is a kernel the rules above did not take: not claimed,
        so the build reports it as left unscheduled instead of hiding a plain reduction loop."""

        def apply(self, func, target, tunable):
            if not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            reductions = len(_reduction_blocks(sch))
            if reductions == 1:
                return None
            shape = CPUShape.of(target)
            if reductions == 0:
                schedule_injective(sch, shape)
                return sch
            for block in sch.get_child_blocks(sch.get_sblock("root")):
                schedule_elementwise(sch, block, shape)
            return sch

    kernels = [type(name, (ReductionKernel,), {"kinds": kinds, "packed": packed, "scheduler": staticmethod(scheduler),
                                                  "__doc__": why})() for name, kinds, packed, scheduler, why in KERNEL_RULES]
    return [*kernels, Elementwise()]


def _is_scheduled_loop(sch, block) -> bool:
    """A block already placed by an earlier step: under a parallel or vectorized loop, or inside
    another block's loop nest (an epilogue on a register block whose loops stay serial: an int8
    classifier of 19 classes on sdot has no vector of channels; fusing its loops raised)."""
    from tvm import tirx

    loops = sch.get_loops(block)
    return any(sch.get(loop).kind != tirx.ForKind.SERIAL for loop in loops) or \
        bool(loops) and len(sch.get_child_blocks(loops[0])) > 1


class RuleFailed(UserWarning):
    """A rule raised on a kernel: shown (kernel, rule, error), and the kernel goes on to the next rule."""


def schedule_for(func, target, rules: list | None = None, name: str = "a kernel"):
    """(rule name, Schedule) for one PrimFunc from the first rule that takes it; None when none does.
    A rule that raises is a bug of the rule: warned about (RuleFailed), never silently skipped; the
    kernel then gets the next rule that takes it, or TVM's own lowering (slow, never wrong)."""
    for rule in rules or make_rules():
        try:
            sch = rule.apply(func, target, False)
        except Exception as err:  # noqa: BLE001 - one kernel a rule cannot take must not stop the build
            warnings.warn(f"the {type(rule).__name__} rule raised on {name} ({type(err).__name__}: "
                          f"{last_line(err)}); it goes on to the next rule. Please report this with the model.",
                          RuleFailed, stacklevel=2)
            continue
        if sch is not None:
            return type(rule).__name__, sch
    return None


def apply_pass(applied: dict | None = None):
    """The Relax pass: a default schedule for every PrimFunc not scheduled yet (tuned ones keep theirs).
    `applied` receives kernel name -> "tuned", the rule's name, or "none" where no rule applies."""
    import tvm
    from tvm import tirx

    rules = make_rules()

    @tvm.transform.module_pass(opt_level=0, name="mnv2.DefaultSchedules")
    def apply_rules(mod, _ctx):
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs.get("tirx.is_scheduled", False):  # a tuned record was applied
                if applied is not None:
                    applied[gvar.name_hint] = "tuned"
                continue
            target = func.attrs.get("target") or tvm.target.Target.current(allow_none=False)
            chosen = schedule_for(func, target, rules, gvar.name_hint)
            if chosen is not None:
                updated[gvar] = chosen[1].mod["main"].with_attr("tirx.is_scheduled", True)
            if applied is not None:
                applied[gvar.name_hint] = chosen[0] if chosen is not None else "none"
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod

    return apply_rules


def compile_cpu(mod, target, database=None, applied: dict | None = None):
    """Compile a Relax module for a CPU target as every build does: cpu_pipeline for Relax, and for
    TIR TVM's default lowering with our rewrites for AArch64 and x86 (tir_pipeline: the requantization's
    instructions; on x86 small kernels on one thread). Inside
    the caller's target and PassContext (and the database's context when tuned)."""
    import tvm

    return tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target, database, applied),
                       tir_pipeline=tir_pipeline.tir_pipeline(target))


def cpu_pipeline(target, database=None, applied: dict | None = None):
    """Relax -> VM for a CPU: fuse as task extraction does, tuned records from the database, default
    schedules for the rest, then TVM's CPU lowering."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="mnv2.CPUPipeline")
    def pipeline(mod, _ctx):
        mod = tvm.transform.Sequential(fusion_passes(target))(mod)
        if database is not None:
            from tvm.relax.transform import MetaScheduleApplyDatabase

            mod = MetaScheduleApplyDatabase(enable_warning=False)(mod)
        mod = apply_pass(applied)(mod)
        return tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)

    return pipeline
