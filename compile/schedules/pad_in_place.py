"""A kernel whose result is padded writes it straight into the padded tensor, as a TIR pass on the
scheduled kernels (before TVM's lowering).

int8 pads with the input's zero point, not zero, so a depthwise conv's padding is not folded into
the conv: fusion puts the pad at the end of the kernel before it (a 1x1 conv and its
requantization), whose tiles write their int8 result into a buffer of its own, which a last loop
then copies into the padded output and fills the border of. That copy is a pass over the tensor
(1.0/224: 1.2 MB at 112 x 112 x 96) written twice and read once more, on every pad: ours moved
12.6 MB per inference from memory on the simulated Pi 5 against LiteRT's 8.4, and on 4 threads,
where memory's bandwidth is shared, the memory model put our int8 at 1.07x of LiteRT.

Here the result's buffer becomes the interior of the padded output: each access to it is the
output's at the pad's offset, so the tiles write the padded tensor directly, and the pad writes
only the zero point on the border. Where the pad's block has loops of its own (as the rules leave
it), they become loops over the border's rows and columns alone, placed before the tiles'; else (a
tuned schedule that moved it into the tiles' loops) the block keeps its loops and stores where its
own test says the border is. The loop of the pad's own test over the whole padded tensor was a
parallel launch of its own after the tiles' (0.35/96 int8 on x86, 2 threads: 0.94x without it).
The border goes first because one thread stores it: stored after the tiles, it had to fetch the
cache lines it shares with the interior from the cores that wrote them (1.0/224 int8, x86, 2
threads: 1.02x-1.03x of the old, against 1.00x stored first). Only the exact form TOPI's pad has
is rewritten: a block storing if_then_else(interior, result[index - before], value) into an output
of the function, reading a buffer of the kernel's own that nothing else reads, the interior test
exactly the result's extent at that offset. The same values land in the same places; the output's
interior is written once.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Pad(NamedTuple):
    """TOPI's pad as one block stores it: output[v] = if_then_else(interior(v), result[v - before], value)."""
    output: Any  # the padded buffer, one of the function's
    result: Any  # the buffer it pads
    before: list[int]  # the padding before, per axis
    value: Any  # the border's value
    interior: Any  # the test that v is inside the result


def _pad_form(block, outputs) -> Pad | None:
    """The block's pad when its body is TOPI's pad into one of the function's outputs; None otherwise."""
    from tvm import sym, tirx
    from tvm.ir.expr import Call, TensorLoad
    from tvm_ffi.structural import structural_equal

    store = block.body
    if not isinstance(store, tirx.BufferStore) or not any(store.buffer.same_as(o) for o in outputs):
        return None
    call = store.value
    if not isinstance(call, Call) or getattr(call.op, "name", "") != "prim.if_then_else":
        return None
    interior, load, value = call.args
    if not isinstance(load, TensorLoad) or len(load.indices) != len(store.indices):
        return None
    if not isinstance(value, (tirx.IntImm, tirx.FloatImm)):  # the border's loops store it outside the block
        return None
    analyzer, before = sym.Analyzer(), []
    for at, got in zip(store.indices, load.indices):
        offset = analyzer.simplify(at - got)
        if not isinstance(offset, tirx.IntImm) or offset.value < 0:
            return None
        before.append(int(offset.value))
    result, output = load.source, store.buffer
    sizes, padded = [int(d) for d in result.shape], [int(d) for d in output.shape]
    if any(p < b + s for p, b, s in zip(padded, before, sizes)):
        return None
    expected = _interior(store.indices, before, sizes, padded)
    if expected is None or not structural_equal(interior, expected):
        return None
    return Pad(output, result, before, value, interior)


def _interior(indices, before, sizes, padded):
    """TOPI's interior test over the padded axes, in axis order: before <= v and v < before + size."""
    from tvm import tirx

    terms = []
    for index, b, size, full in zip(indices, before, sizes, padded):
        if b or size != full:
            dtype = index.ty.dtype
            terms += [tirx.LE(tirx.IntImm(dtype, b), index), tirx.LT(index, tirx.IntImm(dtype, b + size))]
    if not terms:
        return None
    test = terms[0]
    for term in terms[1:]:
        test = tirx.And(test, term)
    return test


def rewrite(func):
    """The PrimFunc with each padded result written in place (see the module's docstring); the
    PrimFunc unchanged where no block has the form."""
    import tvm
    from tvm import s_tir, tirx
    from tvm.ir.expr import TensorLoad, TensorRegion
    from tvm_ffi.structural import structural_map

    if not isinstance(func.body, s_tir.SBlockRealize):
        return func
    owned = list(func.body.block.alloc_buffers)
    outputs = list(func.params)  # the buffers the kernel is given (its output among them)
    pads, reads = {}, []  # block name -> its Pad; (buffer, name of a block reading it)

    def survey(block):
        pad = _pad_form(block, outputs)
        if pad is not None and any(pad.result.same_as(b) for b in owned):
            pads[block.name_hint] = pad
        reads.extend((region.source, block.name_hint) for region in block.reads)
        return block

    structural_map(func, [(s_tir.SBlock, survey)])
    # the pads moved: those that are their result's only reader
    pads = {name: pad for name, pad in pads.items()
            if {reader for buffer, reader in reads if buffer.same_as(pad.result)} == {name}}
    if not pads:
        return func

    def moved(buffer) -> Pad | None:
        return next((pad for pad in pads.values() if pad.result.same_as(buffer)), None)

    def shifted(indices, before):
        return [index + b if b else index for index, b in zip(indices, before)]

    def on_block(block):
        pad = pads.get(block.name_hint)
        if pad is not None:  # only the border: the interior is the tiles' own writes
            border = tirx.IfThenElse(tirx.Not(pad.interior),
                                     tirx.BufferStore(pad.output, pad.value, block.body.indices), None)
            return _block_with(block, reads=[], body=border)
        kept = [b for b in block.alloc_buffers if moved(b) is None]
        if len(kept) == len(block.alloc_buffers):
            return block
        return _block_with(block, alloc_buffers=kept)

    def on_load(load):
        pad = moved(load.source)
        return tirx.BufferLoad(pad.output, shifted(load.indices, pad.before)) if pad else load

    def on_store(store):
        pad = moved(store.buffer)
        return tirx.BufferStore(pad.output, store.value, shifted(store.indices, pad.before)) if pad else store

    def on_region(region):
        pad = moved(region.source)
        if not pad:
            return region
        return tirx.BufferRegion(pad.output, [tvm.ir.Range.from_min_extent(r.min + b, r.extent) if b else r
                                              for r, b in zip(region.region, pad.before)])

    def on_root(realize):  # a pad's own loop nest: the border's loops instead, first
        block = realize.block
        if block.name_hint != "root" or not isinstance(block.body, tirx.SeqStmt):
            return realize
        borders, body = [], []
        for stmt in block.body.seq:
            leaf = _innermost(stmt)
            pad = pads.get(leaf.block.name_hint) if isinstance(leaf, s_tir.SBlockRealize) else None
            if pad is None:
                body.append(stmt)
            else:
                borders.append(_border_loops(pad, leaf.block.name_hint))
        return s_tir.SBlockRealize(realize.iter_values, realize.predicate,
                                   _block_with(block, body=tirx.SeqStmt(borders + body)))

    # The pads' blocks first (rebuilt from their original bodies), then every access to the results.
    func = structural_map(func, [(s_tir.SBlock, on_block)])
    func = structural_map(func, [(s_tir.SBlockRealize, on_root)])
    return structural_map(func, [(TensorLoad, on_load), (tirx.BufferStore, on_store), (TensorRegion, on_region)])


_BLOCK_FIELDS = ("iter_vars", "reads", "writes", "name_hint", "body", "init", "alloc_buffers", "match_buffers",
                 "annotations")  # SBlock's constructor's arguments, in order


def _block_with(block, **changed):
    """The SBlock with the fields named changed, the others as they were."""
    from tvm import s_tir

    return s_tir.SBlock(*(changed.get(field, getattr(block, field)) for field in _BLOCK_FIELDS))


def _innermost(stmt):
    """What a nest of loops, each the whole body of the one around it, has innermost."""
    from tvm import tirx

    while isinstance(stmt, tirx.For):
        stmt = stmt.body
    return stmt


def _border_loops(pad: Pad, name: str):
    """The pad's border stores as loops over the border alone, in one opaque block: for each padded
    axis, its rows before and after the result, the axes before it inside the result and those
    after it whole (in NHWC, the top and bottom rows whole, then the left and right columns). The
    innermost loops store one value over contiguous memory (LLVM makes them memsets)."""
    import tvm
    from tvm import s_tir, tirx

    shape, sizes = [int(d) for d in pad.output.shape], [int(d) for d in pad.result.shape]
    dtypes = [d.ty.dtype for d in pad.output.shape]  # each axis's index type

    nests = []
    for axis, (before, size, full) in enumerate(zip(pad.before, sizes, shape)):
        for start, stop in ((0, before), (before + size, full)):
            if stop <= start:
                continue
            ranges = [*zip(pad.before[:axis], sizes[:axis]), (start, stop - start),
                      *((0, n) for n in shape[axis + 1:])]  # (first, extent) per axis
            loops = [tirx.Var(f"{name}_{len(nests)}_{i}", dtype) for i, dtype in enumerate(dtypes)]
            nest = tirx.BufferStore(pad.output, pad.value, [v + tirx.IntImm(v.ty.dtype, first) if first else v
                                                           for v, (first, _) in zip(loops, ranges)])
            for v, (_, extent) in reversed(list(zip(loops, ranges))):
                nest = tirx.For(v, tirx.IntImm(v.ty.dtype, 0), tirx.IntImm(v.ty.dtype, extent), tirx.ForKind.SERIAL,
                                nest)
            nests.append(nest)
    whole = tirx.BufferRegion(pad.output, [tvm.ir.Range.from_min_extent(tirx.IntImm(dtype, 0), tirx.IntImm(dtype, n))
                                           for dtype, n in zip(dtypes, shape)])
    return s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [whole], f"{name}_border", tirx.SeqStmt(nests)))


def pass_():
    from tvm import tirx

    return tirx.transform.prim_func_pass(lambda func, _mod, _ctx: rewrite(func), opt_level=0,
                                         name="mnv2.PadInPlace")


ELEMENT_WISE, INJECTIVE = 0, 2  # TVM's op patterns (relax.transform.AnnotateTIROpPattern)


def _is_pad(func) -> bool:
    """A PrimFunc of one block, TOPI's pad of its input into its output."""
    from tvm import s_tir
    from tvm_ffi.structural import structural_map

    blocks = []
    structural_map(func.body, [(s_tir.SBlock, lambda block: blocks.append(block) or block)])
    inner = [block for block in blocks if block.name_hint != "root"]
    return len(inner) == 1 and _pad_form(inner[0], list(func.params)) is not None


def pads_as_element_wise(target):
    """The Relax pass, after AnnotateTIROpPattern, for CPU targets (whose TIR pipeline has `rewrite`;
    on others it changes nothing): TOPI's pad marked element-wise, as TVM already marks a
    pad with nothing before (its indices unshifted), so FuseOps puts it at the end of the kernel that
    makes its input, where `rewrite` writes that kernel's result straight into it. TVM calls a pad
    with padding before injective, and an injective op does not join a conv's kernel: the stride-1
    depthwise convs' int8 pads were kernels of their own, a pass over the tensor each."""
    import tvm
    from tvm import tirx

    cpu = str(target.kind) == "llvm"

    @tvm.transform.module_pass(opt_level=0, name="mnv2.PadsAsElementWise")
    def mark(mod, _ctx):
        if not cpu:
            return mod
        pads = [(gvar, func) for gvar, func in mod.functions_items() if isinstance(func, tirx.PrimFunc)
                and int(func.attrs.get("op_pattern", -1)) == INJECTIVE and _is_pad(func)]
        for gvar, func in pads:
            mod[gvar] = func.with_attr("op_pattern", ELEMENT_WISE)
        return mod

    return mark
