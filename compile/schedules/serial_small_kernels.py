"""Small kernels on one thread, as a TIR pass after lowering (x86 builds: compile/schedules/tir_pipeline.py).

Every rule runs its kernel's outer loops in parallel. A parallel loop costs a launch and a join of
the thread pool, about 2 us on the 2-core x86 VMs this project runs on, whatever the work; a late
MobileNetV2 layer of a small variant (0.35/96: 3 x 3 or 6 x 6 pixels) takes 1-4 us on one thread.
Measured per kernel inside whole inferences of 0.35/96 int8 (AMD EPYC znver4, medians of 500 calls,
1 thread against 2): kernels of up to about 60,000 element writes took as long or longer on two
threads (up to 1.9x), from about 80,000 the second thread began to pay (0.86x-0.95x) and from
130,000 it paid (0.45x-0.73x). So a kernel writing fewer than SERIAL_BELOW elements (its stores'
lanes times the iterations of the loops around them: the work a thread would share) runs its
parallel loops serially. Only the loop kind changes: the same code in the same order.
"""

from __future__ import annotations

from mnv2_edge.compile.schedules.fixed_point_forms import lanes_of

SERIAL_BELOW = 65536  # element writes


def element_writes(func) -> int:
    """The elements a PrimFunc's stores write, each store's lanes times the trip counts around it. A
    loop of unknown extent counts as SERIAL_BELOW trips (such a kernel stays parallel), a While loop's
    body once, a call (Evaluate) nothing: calls hold no parallel loops."""
    from tvm import tirx

    def walk(stmt, trips: int) -> int:
        if isinstance(stmt, tirx.For):
            extent = stmt.extent
            return walk(stmt.body, trips * (int(extent.value) if isinstance(extent, tirx.IntImm) else SERIAL_BELOW))
        if isinstance(stmt, tirx.BufferStore):
            return trips * lanes_of(stmt.value)
        if isinstance(stmt, tirx.SeqStmt):
            return sum(walk(child, trips) for child in stmt.seq)
        if isinstance(stmt, tirx.IfThenElse):
            return walk(stmt.then_case, trips) + (walk(stmt.else_case, trips) if stmt.else_case is not None else 0)
        body = getattr(stmt, "body", None)  # AttrStmt, While
        return walk(body, trips) if isinstance(body, tirx.Stmt) else 0

    return walk(func.body, 1)


def rewrite(func):
    """The PrimFunc with its parallel loops serial where it writes fewer than SERIAL_BELOW elements."""
    from tvm import tirx
    from tvm_ffi.structural import structural_map

    if element_writes(func) >= SERIAL_BELOW:
        return func

    def on_for(loop):
        if loop.kind != tirx.ForKind.PARALLEL:
            return loop
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL, loop.body,
                        thread_binding=loop.thread_binding, annotations=loop.annotations, step=loop.step,
                        span=loop.span)

    return structural_map(func, [(tirx.For, on_for)])


def pass_():
    from tvm import tirx

    return tirx.transform.prim_func_pass(lambda func, _mod, _ctx: rewrite(func), opt_level=0,
                                         name="mnv2.SerialSmallKernels")
