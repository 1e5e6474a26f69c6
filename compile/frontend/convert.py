"""TFLite file -> Relax module: list unsupported ops, refuse damaged constants, convert (TVM's
TFLite front end with our fixes, or the integer int8 converter for quantized files).

Any .tflite file, not only generated variants.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import tflite

from mnv2_edge.targets.errors import UserError, last_line
from mnv2_edge.compile.frontend.tflite_file import builtin_options, op_name, read_model, tensor_dtype, _describe


def unsupported_ops(model: tflite.Model) -> list[str]:
    """Every op of subgraph 0 that TVM's TFLite front end has no converter for, sorted. Asks TVM's
    own converter how it names each op (custom ops it converts, such as
    TFLite_Detection_PostProcess, pass; other custom ops do not)."""
    from tvm import relax
    from tvm.relax.frontend.tflite.tflite_frontend import ExprTable, OperatorConverter

    sub = model.Subgraphs(0)
    converter = OperatorConverter(model, sub, ExprTable(), relax.BlockBuilder())
    missing = set()
    for o in range(sub.OperatorsLength()):
        op = sub.Operators(o)
        try:
            known = converter.get_op_code_str(op) in converter.convert_map
        except NotImplementedError:  # a custom op TVM has no converter for, or an unknown code
            known = False
        if not known:
            missing.add(op_name(model, op))
    return sorted(missing)


INT8_LOWERINGS = ("integer", "float")


def check_finite_constants(model: tflite.Model, path) -> None:
    """UserError naming a float constant (a weight or bias) that holds NaN or Inf: the definition of
    the file's ops then makes NaN of everything it touches (LiteRT's output is NaN), and TVM's code,
    which skips the zero padding instead of multiplying it, would make numbers instead. Found by
    fuzzing."""
    sub = model.Subgraphs(0)
    for index in range(sub.TensorsLength()):
        tensor = sub.Tensors(index)
        dtype = tensor_dtype(tensor)
        if dtype not in ("float32", "float16"):
            continue
        raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or raw.size == 0 or raw.size % np.dtype(dtype).itemsize:
            continue
        values = raw.view(np.dtype(dtype))
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise UserError(f"{path}: tensor {index} ({tensor.Name().decode(errors='replace')}) holds {bad} "
                            f"non-finite value(s) (NaN or Inf): the model is damaged (every output it reaches "
                            f"would be NaN, in LiteRT too). Re-export it from a good checkpoint.")


def _fix_tvm_converters() -> None:
    """Two gaps of TVM 0.27's TFLite converters, closed here until TVM closes them (both found on
    real or fuzzed files; each has a test):
    - DEQUANTIZE reads a float16 input from the file's buffer, but a sparse float16 weight
      (DENSIFY -> DEQUANTIZE, as MediaPipe's pose and face detectors store theirs) has none: DENSIFY
      made its dense value at import and TVM keeps it as a prefetched node. Take that value.
    - SOFTMAX ignores its beta (softmax(beta * x)): a file with beta != 1 built into a model that
      computed softmax(x). Apply it.
    Everything else goes to TVM's own converters."""
    from tflite.TensorType import TensorType
    from tvm import relax
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    if getattr(OperatorConverter, "mnv2_fixed", False):
        return
    tvm_dequantize, tvm_softmax = OperatorConverter.convert_dequantize, OperatorConverter.convert_softmax

    def convert_dequantize(self, op):
        tensor = self.get_input_tensors(op)[0]
        if tensor.tensor.Type() == TensorType.FLOAT16 and self.is_prefetched(tensor.tensor_idx):
            value = np.asarray(self.get_prefetched_node(tensor.tensor_idx), dtype="float16")
            constant = self.exp_tab.new_const(value, dtype="float16", source_name=tensor.tensor.Name())
            return relax.op.astype(constant, "float32")
        return tvm_dequantize(self, op)

    def convert_softmax(self, op):
        options = builtin_options(op, tflite.SoftmaxOptions)
        beta = options.Beta() if options else 1.0
        if beta == 1.0:
            return tvm_softmax(self, op)
        tensor, output = self.get_input_tensors(op)[0], self.get_output_tensors(op)[0]
        x = self.get_expr(tensor.tensor_idx)
        if tensor.qnn_params:
            x = self.dequantize(x, tensor)
        out = relax.op.nn.softmax(relax.op.multiply(x, relax.const(beta, "float32")), axis=-1)
        return self.quantize(out, output) if output.qnn_params else out

    OperatorConverter.convert_dequantize, OperatorConverter.convert_softmax = convert_dequantize, convert_softmax
    OperatorConverter.mnv2_fixed = True


def load_relax(path: str | Path, int8_lowering: str = "integer"):
    """(Relax IRModule, ModelInfo) for a .tflite file; UserError for anything TVM cannot take.

    Quantized files take the integer path (`int8_lowering="integer"`, bit-exact with TFLite's
    reference kernels) when it covers all they use; otherwise, or with "float", TVM's own converter,
    which computes them in float between dequantize and quantize. info.lowering says which."""
    import tvm
    from tvm.relax.frontend.tflite import from_tflite

    from mnv2_edge.compile.frontend import integer
    from mnv2_edge.compile.frontend.shape_check import check_declared_shapes

    _fix_tvm_converters()

    if int8_lowering not in INT8_LOWERINGS:
        raise UserError(f"Unknown int8 lowering {int8_lowering!r}: use {' or '.join(INT8_LOWERINGS)}.")
    model, data = read_model(path)
    info = _describe(str(path), model, data)
    check_declared_shapes(model, path)
    check_finite_constants(model, path)
    quantized = integer.is_quantized(model)
    if quantized and int8_lowering == "integer":
        problems = integer.unsupported(model)
        if not problems:
            info.lowering = "integer"
            try:
                return integer.from_quantized_tflite(model), info
            except integer.IntegerConversionError as err:
                raise UserError(
                    f"The integer int8 converter cannot take {path}: at {err}. The file's tensor shapes or "
                    f"wiring do not hold together there (LiteRT recomputes shapes and may still run it); "
                    f"re-export the model, or try --int8-lowering float."
                ) from None
        info.lowering_note = ("the integer int8 path does not cover " + ", ".join(problems)
                              + "; it runs in float between dequantize and quantize (slower, not bit-exact)")
        warnings.warn(f"{path}: {info.lowering_note}.", stacklevel=2)
    info.lowering = "dequantize" if quantized else "float"
    missing = unsupported_ops(model)
    if missing:
        raise UserError(
            f"{path} uses {len(missing)} op(s) that TVM's TFLite front end cannot convert: "
            f"{', '.join(missing)}. Re-export the model without them (for example with TFLite "
            f"builtins only, no custom or Select TF ops), or add a converter for them to TVM."
        )
    shapes = {t.name: tuple(t.shape) for t in info.inputs}
    dtypes = {t.name: t.dtype for t in info.inputs}
    try:
        mod = from_tflite(model, shape_dict=shapes, dtype_dict=dtypes)
    except tvm.error.OpNotImplemented as err:
        raise UserError(f"TVM cannot convert {path}: {last_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - any failure inside TVM's converter is about this file
        ops = ", ".join(f"{name} x{count}" for name, count in info.ops.items())
        raise UserError(
            f"TVM's TFLite converter failed on {path} ({type(err).__name__}: {last_line(err)}). The file's "
            f"ops: {ops}. One of them has options or shapes the converter does not handle: check that "
            f"LiteRT runs the file, re-export it with plain builtin ops, or report it to Apache TVM."
        ) from None
    return mod, info


def check_convertible(path: str | Path, int8_lowering: str = "integer", progress=print) -> str:
    """Convert the file and discard the result: UserError if it cannot be; else how it lowers.
    (Run in a child process by callers, since the conversion enters TVM's native code.)"""
    return load_relax(path, int8_lowering)[1].lowering

