"""TFLite file -> Relax module: check the file, list unsupported ops, describe inputs and outputs.

Any .tflite file, not only generated variants. The checks run before TVM sees the file, so a
corrupt, truncated or foreign file gets a clear message instead of a crash deep in the converter.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tflite

from compile.errors import UserError, last_line

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if k.isupper()}
_TYPE_NAMES = {v: k.lower() for k, v in vars(tflite.TensorType).items() if k.isupper()}
_ITEM_SIZES = {"float32": 4, "float16": 2, "int32": 4, "uint8": 1, "int8": 1, "int16": 2, "int64": 8, "bool": 1}


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    scale: list[float] = field(default_factory=list)
    zero_point: list[int] = field(default_factory=list)

    @property
    def quantized(self) -> bool:
        return bool(self.scale) and self.dtype in ("int8", "uint8", "int16")


@dataclass
class ModelInfo:
    path: str
    sha256: str
    size_bytes: int
    subgraphs: int
    ops: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    description: str = ""
    # How load_relax converted it: "float" (a float model), "integer" (quantized, integer kernels:
    # compile/integer_frontend.py) or "dequantize" (quantized, TVM's dequantize -> float -> quantize).
    lowering: str = ""
    lowering_note: str = ""  # why a quantized file took the dequantize path

    def to_dict(self) -> dict:
        return asdict(self)


class _Corrupt(Exception):
    pass


def _fail(path: str, problem: str) -> UserError:
    return UserError(
        f"{path} is not a usable TFLite model: {problem}. Give a .tflite file written by the TFLite "
        f"converter (or by `python compile/build.py`), and check that it was copied completely."
    )


def tensor_dtype(tensor: tflite.Tensor) -> str:
    """The tensor's element type as a NumPy-style name (float32, int8, ...)."""
    return _TYPE_NAMES.get(tensor.Type(), str(tensor.Type()))


def builtin_options(op: tflite.Operator, cls):
    """The op's builtin options table read as `cls` (e.g. tflite.Conv2DOptions), or None."""
    table = op.BuiltinOptions()
    if table is None:
        return None
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


def op_name(model: tflite.Model, op: tflite.Operator) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    # Codes above 127 live in builtin_code; older files only fill the deprecated int8 field.
    value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = _OP_NAMES.get(value, f"BUILTIN_{value}")
    if name == "CUSTOM":
        custom = code.CustomCode()
        name = f"CUSTOM({custom.decode(errors='replace') if custom else '?'})"
    return name


def _check_structure(model: tflite.Model, size: int) -> None:
    """Raise _Corrupt naming the first index or buffer that points outside the file."""
    if model.Version() != SCHEMA_VERSION:
        raise _Corrupt(f"schema version {model.Version()}, this tool reads version {SCHEMA_VERSION}")
    if model.SubgraphsLength() < 1:
        raise _Corrupt("it has no subgraph")
    n_buffers, n_codes = model.BuffersLength(), model.OperatorCodesLength()
    buffer_bytes = []
    for i in range(n_buffers):
        buf = model.Buffers(i)
        length = buf.DataLength()
        if length:
            start = buf._tab.Vector(buf._tab.Offset(4))
            if start + length > size:
                raise _Corrupt(f"buffer {i} ({length} bytes) runs past the end of the file")
        elif buf.Size():
            if buf.Offset() + buf.Size() > size:
                raise _Corrupt(f"buffer {i} points past the end of the file")
            length = buf.Size()
        buffer_bytes.append(length)
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        n_tensors = sub.TensorsLength()
        for t in range(n_tensors):
            tensor = sub.Tensors(t)
            if not 0 <= tensor.Buffer() < max(n_buffers, 1):
                raise _Corrupt(f"tensor {t} of subgraph {s} names buffer {tensor.Buffer()} of {n_buffers}")
            dtype = _TYPE_NAMES.get(tensor.Type(), "?")
            stored = buffer_bytes[tensor.Buffer()] if n_buffers else 0
            shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else np.array([], np.int32)
            if stored and dtype in _ITEM_SIZES and (shape >= 0).all():
                expected = int(np.prod(shape)) * _ITEM_SIZES[dtype]
                # A sparse tensor (TFLite's sparsity encoding, densified at import) stores only the
                # values its index arrays name: fewer bytes than its dense shape, never more.
                sparse = tensor.Sparsity() is not None
                if (stored > expected) if sparse else (expected != stored):
                    raise _Corrupt(
                        f"tensor {t} ({tensor.Name().decode(errors='replace')}) holds {stored} bytes "
                        f"for shape {shape.tolist()} {dtype} ({expected} bytes)"
                    )
        io = list(sub.InputsAsNumpy()) + list(sub.OutputsAsNumpy()) if sub.InputsLength() else []
        for index in io:
            if not 0 <= index < n_tensors:
                raise _Corrupt(f"subgraph {s} names input/output tensor {index} of {n_tensors}")
        for o in range(sub.OperatorsLength()):
            op = sub.Operators(o)
            if not 0 <= op.OpcodeIndex() < n_codes:
                raise _Corrupt(f"operator {o} names op code {op.OpcodeIndex()} of {n_codes}")
            for index in list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy()):
                if not -1 <= index < n_tensors:
                    raise _Corrupt(f"operator {o} names tensor {index} of {n_tensors}")


def read_model(path: str | Path) -> tuple[tflite.Model, bytes]:
    """Parse and check a .tflite file; raise UserError naming what is wrong with it."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"Model file {path} does not exist. Check the path given to --model.") from None
    except OSError as err:
        raise UserError(f"Cannot read model file {path}: {err.strerror}.") from None
    if not data:
        raise _fail(path, "the file is empty")
    if len(data) < 8:
        raise _fail(path, f"the file is only {len(data)} bytes long")
    if data[4:8] != FILE_IDENTIFIER:
        raise _fail(path, f"its FlatBuffer identifier is {data[4:8]!r}, not {FILE_IDENTIFIER!r}")
    try:
        root = int.from_bytes(data[:4], "little")
        if root >= len(data):
            raise _Corrupt("its root table lies past the end of the file (truncated?)")
        model = tflite.Model.GetRootAs(data, 0)
        _check_structure(model, len(data))
    except _Corrupt as err:
        raise _fail(path, str(err)) from None
    except Exception as err:  # noqa: BLE001 - any parse fault in foreign bytes means corrupt
        raise _fail(path, f"its FlatBuffer tables do not parse ({type(err).__name__}: the file is corrupt or truncated)") from None
    return model, data


def _tensor_info(subgraph: tflite.SubGraph, index: int) -> TensorInfo:
    tensor = subgraph.Tensors(index)
    quant = tensor.Quantization()
    scale = quant.ScaleAsNumpy().tolist() if quant is not None and quant.ScaleLength() else []
    zero = quant.ZeroPointAsNumpy().tolist() if quant is not None and quant.ZeroPointLength() else []
    return TensorInfo(
        name=tensor.Name().decode(),
        shape=tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else [],
        dtype=tensor_dtype(tensor),
        scale=[float(s) for s in scale],
        zero_point=[int(z) for z in zero],
    )


def describe(path: str | Path) -> ModelInfo:
    """Inputs, outputs (names, shapes, dtypes, quantization) and op counts of a checked file."""
    model, data = read_model(path)
    return _describe(str(path), model, data)


def _describe(path: str, model: tflite.Model, data: bytes) -> ModelInfo:
    sub = model.Subgraphs(0)
    ops: dict[str, int] = {}
    for o in range(sub.OperatorsLength()):
        name = op_name(model, sub.Operators(o))
        ops[name] = ops.get(name, 0) + 1
    return ModelInfo(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        subgraphs=model.SubgraphsLength(),
        ops=ops,
        inputs=[_tensor_info(sub, int(i)) for i in sub.InputsAsNumpy()],
        outputs=[_tensor_info(sub, int(i)) for i in sub.OutputsAsNumpy()],
        description=(model.Description() or b"").decode(errors="replace"),
    )


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

    from compile import integer_frontend
    from compile.shape_check import check_declared_shapes

    _fix_tvm_converters()

    if int8_lowering not in INT8_LOWERINGS:
        raise UserError(f"Unknown int8 lowering {int8_lowering!r}: use {' or '.join(INT8_LOWERINGS)}.")
    model, data = read_model(path)
    info = _describe(str(path), model, data)
    check_declared_shapes(model, path)
    check_finite_constants(model, path)
    quantized = integer_frontend.is_quantized(model)
    if quantized and int8_lowering == "integer":
        problems = integer_frontend.unsupported(model)
        if not problems:
            info.lowering = "integer"
            try:
                return integer_frontend.from_quantized_tflite(model), info
            except integer_frontend.IntegerConversionError as err:
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

