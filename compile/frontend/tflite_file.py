"""Reading TFLite files: check the structure of any .tflite file, name its ops and types, describe its
inputs and outputs. The bottom of the front end: everything that reads a TFLite file uses it.

The checks run before TVM sees the file, so a corrupt, truncated or foreign file gets a clear message
instead of a crash deep in the converter.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tflite

from mnv2_edge.targets.errors import UserError

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
    # compile/frontend/integer.py) or "dequantize" (quantized, TVM's dequantize -> float -> quantize).
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
