"""Serialize a small graph description to a TFLite FlatBuffer (schema version 3).

Uses the generated builder functions of the `tflite` package, so the file follows the same schema
that LiteRT and TVM's front end read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

TENSOR_TYPES = {
    "float32": tflite.TensorType.FLOAT32,
    "int32": tflite.TensorType.INT32,
    "int8": tflite.TensorType.INT8,
    "uint8": tflite.TensorType.UINT8,
    "float16": tflite.TensorType.FLOAT16,
    "int16": tflite.TensorType.INT16,
    "int64": tflite.TensorType.INT64,
}


@dataclass
class Quantization:
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None
    quantization: Quantization | None = None
    sparse: bool = False  # a 2-D constant stored in TFLite's sparse encoding (rows dense, columns CSR)


@dataclass
class Operator:
    op: str  # a tflite.BuiltinOperator name, e.g. "CONV_2D"
    inputs: list[int]
    outputs: list[int]
    options_type: str | None = None  # a tflite.BuiltinOptions name, e.g. "Conv2DOptions"
    options: dict = field(default_factory=dict)  # field name (as in the schema's Add<Name>) -> value
    version: int = 1
    custom_code: str | None = None  # op "CUSTOM": the custom op's name, e.g. TFLite_Detection_PostProcess


@dataclass
class Graph:
    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = ""

    def add_tensor(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1


def _byte_vector(builder: flatbuffers.Builder, data: bytes) -> int:
    # 16-byte aligned, so runtimes can map weights in place.
    builder.StartVector(1, len(data), 16)
    builder.head = builder.Head() - len(data)
    builder.Bytes[builder.Head() : builder.Head() + len(data)] = data
    return builder.EndVector()


def _offset_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _quantization(builder, quant: Quantization) -> int:
    scale = builder.CreateNumpyVector(np.asarray(quant.scale, dtype=np.float32).ravel())
    zero_point = builder.CreateNumpyVector(np.asarray(quant.zero_point, dtype=np.int64).ravel())
    tflite.QuantizationParametersStart(builder)
    tflite.QuantizationParametersAddScale(builder, scale)
    tflite.QuantizationParametersAddZeroPoint(builder, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(builder, quant.axis)
    return tflite.QuantizationParametersEnd(builder)


def _int32_vector(builder, values) -> int:
    vector = builder.CreateNumpyVector(np.asarray(values, dtype=np.int32))
    tflite.Int32VectorStart(builder)
    tflite.Int32VectorAddValues(builder, vector)
    return tflite.Int32VectorEnd(builder)


def _csr(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(non-zero values row by row, row segments, column indices) of a 2-D array."""
    rows, cols = np.nonzero(matrix)
    segments = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=matrix.shape[0]))])
    return matrix[rows, cols], segments, cols


def _sparsity(builder, matrix: np.ndarray) -> int:
    """SparsityParameters for TFLite's sparse encoding: traversal order (0, 1), dimension 0 DENSE,
    dimension 1 SPARSE_CSR (segments and indices as Int32Vector)."""
    _, segments, indices = _csr(matrix)
    dims = []
    for is_sparse in (False, True):
        if is_sparse:
            seg, idx = _int32_vector(builder, segments), _int32_vector(builder, indices)
        tflite.DimensionMetadataStart(builder)
        if is_sparse:
            tflite.DimensionMetadataAddFormat(builder, tflite.DimensionType.SPARSE_CSR)
            tflite.DimensionMetadataAddArraySegmentsType(builder, tflite.SparseIndexVector.Int32Vector)
            tflite.DimensionMetadataAddArraySegments(builder, seg)
            tflite.DimensionMetadataAddArrayIndicesType(builder, tflite.SparseIndexVector.Int32Vector)
            tflite.DimensionMetadataAddArrayIndices(builder, idx)
        else:
            tflite.DimensionMetadataAddFormat(builder, tflite.DimensionType.DENSE)
            tflite.DimensionMetadataAddDenseSize(builder, matrix.shape[0])
        dims.append(tflite.DimensionMetadataEnd(builder))
    order = builder.CreateNumpyVector(np.asarray([0, 1], dtype=np.int32))
    dim_vector = _offset_vector(builder, dims)
    tflite.SparsityParametersStart(builder)
    tflite.SparsityParametersAddTraversalOrder(builder, order)
    tflite.SparsityParametersAddDimMetadata(builder, dim_vector)
    return tflite.SparsityParametersEnd(builder)


def _options(builder, op: Operator) -> int:
    kind = op.options_type
    getattr(tflite, f"{kind}Start")(builder)
    for name, value in op.options.items():
        getattr(tflite, f"{kind}Add{name}")(builder, value)
    return getattr(tflite, f"{kind}End")(builder)


def serialize(graph: Graph) -> bytes:
    builder = flatbuffers.Builder(1 << 20)

    tflite.BufferStart(builder)
    buffers = [tflite.BufferEnd(builder)]  # buffer 0 is the empty sentinel
    tensor_buffer = []
    for tensor in graph.tensors:
        if tensor.data is None:
            tensor_buffer.append(0)
            continue
        values = _csr(tensor.data)[0] if tensor.sparse else tensor.data
        data = _byte_vector(builder, np.ascontiguousarray(values, dtype=tensor.dtype).tobytes())
        tflite.BufferStart(builder)
        tflite.BufferAddData(builder, data)
        buffers.append(tflite.BufferEnd(builder))
        tensor_buffer.append(len(buffers) - 1)

    tensors = []
    for tensor, buffer_index in zip(graph.tensors, tensor_buffer):
        name = builder.CreateString(tensor.name)
        shape = builder.CreateNumpyVector(np.asarray(tensor.shape, dtype=np.int32))
        quant = _quantization(builder, tensor.quantization) if tensor.quantization else None
        sparsity = _sparsity(builder, tensor.data) if tensor.sparse else None
        tflite.TensorStart(builder)
        tflite.TensorAddShape(builder, shape)
        tflite.TensorAddType(builder, TENSOR_TYPES[tensor.dtype])
        tflite.TensorAddBuffer(builder, buffer_index)
        tflite.TensorAddName(builder, name)
        if quant is not None:
            tflite.TensorAddQuantization(builder, quant)
        if sparsity is not None:
            tflite.TensorAddSparsity(builder, sparsity)
        tensors.append(tflite.TensorEnd(builder))

    op_codes: list[tuple[str, int, str | None]] = []
    operators = []
    for op in graph.operators:
        if (op.op, op.version, op.custom_code) not in op_codes:
            op_codes.append((op.op, op.version, op.custom_code))
        inputs = builder.CreateNumpyVector(np.asarray(op.inputs, dtype=np.int32))
        outputs = builder.CreateNumpyVector(np.asarray(op.outputs, dtype=np.int32))
        options = _options(builder, op) if op.options_type else None
        tflite.OperatorStart(builder)
        tflite.OperatorAddOpcodeIndex(builder, op_codes.index((op.op, op.version, op.custom_code)))
        tflite.OperatorAddInputs(builder, inputs)
        tflite.OperatorAddOutputs(builder, outputs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(builder, getattr(tflite.BuiltinOptions, op.options_type))
            tflite.OperatorAddBuiltinOptions(builder, options)
        operators.append(tflite.OperatorEnd(builder))

    codes = []
    for name, version, custom_code in op_codes:
        code = getattr(tflite.BuiltinOperator, name)
        custom = builder.CreateString(custom_code) if custom_code else None
        tflite.OperatorCodeStart(builder)
        if custom is not None:
            tflite.OperatorCodeAddCustomCode(builder, custom)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(builder, code)
        tflite.OperatorCodeAddVersion(builder, version)
        codes.append(tflite.OperatorCodeEnd(builder))

    tensor_vec = _offset_vector(builder, tensors)
    operator_vec = _offset_vector(builder, operators)
    inputs = builder.CreateNumpyVector(np.asarray(graph.inputs, dtype=np.int32))
    outputs = builder.CreateNumpyVector(np.asarray(graph.outputs, dtype=np.int32))
    sub_name = builder.CreateString("main")
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, tensor_vec)
    tflite.SubGraphAddInputs(builder, inputs)
    tflite.SubGraphAddOutputs(builder, outputs)
    tflite.SubGraphAddOperators(builder, operator_vec)
    tflite.SubGraphAddName(builder, sub_name)
    subgraph = tflite.SubGraphEnd(builder)

    subgraph_vec = _offset_vector(builder, [subgraph])
    code_vec = _offset_vector(builder, codes)
    buffer_vec = _offset_vector(builder, buffers)
    description = builder.CreateString(graph.description)
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, 3)
    tflite.ModelAddOperatorCodes(builder, code_vec)
    tflite.ModelAddSubgraphs(builder, subgraph_vec)
    tflite.ModelAddDescription(builder, description)
    tflite.ModelAddBuffers(builder, buffer_vec)
    builder.Finish(tflite.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
