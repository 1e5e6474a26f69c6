"""Quantized TFLite graph -> Relax with integer kernels (int8 activations, int32 accumulation).

TVM's TFLite front end imports every quantized op as dequantize -> float op -> quantize, so int8
models run float math plus conversions. This front end converts quantized graphs itself, op by op,
following TFLite's reference kernels so results are bit-exact with them:

- CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: int8 x int8 -> int32 convolution or matmul; the input
  zero point's term is folded into the bias (the input is padded with its zero point, so borders
  match TFLite, which skips padding); then MultiplyByQuantizedMultiplier per output channel, the
  output zero point, and the fused activation's clamp (compile/frontend/fixed_point.py).
- ADD: TFLite's integer add (inputs shifted left by 20, each rescaled, summed, rescaled).
- QUANTIZE (float -> int, and int -> int requantization as at uint8 model edges), DEQUANTIZE,
  RESHAPE: exact. MEAN and SOFTMAX: computed in float from the integers and rounded once (within
  1 LSB of TFLite's fixed-point versions).

One entry (`from_quantized_tflite`), a table from op name to converter (`CONVERTERS`), and
`unsupported` listing at once everything in a file that this path does not cover (ops, int16
activations, non-zero weight zero points, per-channel activation scales...): such files take TVM's
float path instead, with a warning naming what was not covered (compile/frontend/convert.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tflite

from mnv2_edge.compile.frontend import fixed_point
from mnv2_edge.targets.errors import last_line
from mnv2_edge.compile.frontend.tflite_file import builtin_options, op_name, tensor_dtype
from mnv2_edge.compile.frontend.fixed_point import activation_range, const, quantize_multiplier
from mnv2_edge.compile.frontend.float64_reference import padding

ACTIVATIONS = ("int8", "uint8")
_SAME = 0


@dataclass
class QTensor:
    """One tensor of the file: type, shape, quantization and (for constants) its stored value."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: np.ndarray  # float32, one per tensor or per channel
    zero_point: np.ndarray  # int64
    axis: int
    value: np.ndarray | None

    @property
    def quantized(self) -> bool:
        return self.scale.size > 0


def read_tensor(model: tflite.Model, sub: tflite.SubGraph, index: int) -> QTensor:
    tensor = sub.Tensors(index)
    dtype = tensor_dtype(tensor)
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    quant = tensor.Quantization()
    has_scale = quant is not None and quant.ScaleLength() > 0
    scale = quant.ScaleAsNumpy().astype(np.float32) if has_scale else np.zeros(0, np.float32)
    zero = quant.ZeroPointAsNumpy().astype(np.int64) if has_scale and quant.ZeroPointLength() else np.zeros(scale.size, np.int64)
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    value = None if isinstance(raw, int) or raw.size == 0 else raw.view(np.dtype(dtype)).reshape(shape)
    return QTensor(index, tensor.Name().decode(errors="replace"), dtype, shape, scale, zero,
                   quant.QuantizedDimension() if has_scale else 0, value)


class _Converter:
    """Walks subgraph 0 in order, emitting Relax for each op into one dataflow block."""

    def __init__(self, model: tflite.Model, bb):
        self.model, self.bb = model, bb
        self.sub = model.Subgraphs(0)
        self.exprs: dict[int, object] = {}

    def tensor(self, index: int) -> QTensor:
        return read_tensor(self.model, self.sub, index)

    def expr(self, index: int):
        return self.exprs[index]

    def emit(self, expr):
        return self.bb.emit(expr)


# ----- converters --------------------------------------------------------------------------------


def _requantize_to_output(conv, acc, bias: np.ndarray, multipliers, shifts, out: QTensor, activation: int,
                          single_rounding: bool = False):
    """int32 accumulator + folded bias -> requantized, clamped int8 output (per output channel)."""
    low, high = activation_range(activation, float(out.scale[0]), int(out.zero_point[0]), out.dtype)
    return conv.bb.emit_te(functools.partial(fixed_point.requantize, zero_point=int(out.zero_point[0]),
                                             low=low, high=high, dtype=out.dtype, single_rounding=single_rounding,
                                             left_shifts=any(shift > 0 for shift in shifts),
                                             only_right_shifts=all(shift < 0 for shift in shifts)),
                           acc, const(bias, "int32"), const(multipliers, "int32"), const(shifts, "int32"),
                           primfunc_name_hint="requantize")


def _requantize_tensor(conv, values, bias: int, real_multiplier: float, out: QTensor, low: int, high: int,
                       fold: int = 1):
    """(values + bias) x real_multiplier / fold + zero point, clamped: one multiplier for the tensor,
    1/fold folded into it as TFLite's MEAN does."""
    multiplier, shift = quantize_multiplier(real_multiplier)
    if fold > 1:
        bits = min(fold.bit_length() - 1, 32, 31 + shift)  # floor(log2 n), kept in range
        multiplier, shift = (multiplier << bits) // fold, shift - bits
    return conv.bb.emit_te(functools.partial(fixed_point.requantize, bias=bias, multiplier=multiplier, shift=shift,
                                             zero_point=int(out.zero_point[0]), low=low, high=high, dtype=out.dtype),
                           values, primfunc_name_hint="requantize")


def _channel_multipliers(inp: QTensor, weight: QTensor, out: QTensor, channels: int) -> tuple[list, list]:
    """PopulateConvolutionQuantizationParams: double(input) x double(filter[c]) / double(output)."""
    scales = weight.scale if weight.scale.size > 1 else np.repeat(weight.scale, channels)
    pairs = [quantize_multiplier(float(inp.scale[0]) * float(s) / float(out.scale[0])) for s in scales]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _folded_bias(bias: QTensor | None, weight_sums: np.ndarray, input_zero: int) -> np.ndarray:
    """bias - input_zero x sum(weights) per channel: (x - zp) . w = x . w - zp sum(w)."""
    base = np.zeros_like(weight_sums) if bias is None else bias.value.astype(np.int64)
    folded = base - input_zero * weight_sums
    lo, hi = fixed_point.INT_RANGES["int32"]
    if folded.min() < lo or folded.max() > hi:
        raise ValueError("a folded bias overflows int32")
    return folded


def _padded_input(conv, op_inputs, x: QTensor, kernel: tuple[int, int], stride, dilation, same: bool):
    """The input padded with its zero point (TFLite skips padded positions: (zp - zp) x w = 0)."""
    from tvm import relax

    _, top, bottom = padding(x.shape[1], kernel[0], stride[0], dilation[0], same)
    _, left, right = padding(x.shape[2], kernel[1], stride[1], dilation[1], same)
    data = conv.expr(op_inputs[0])
    if top or bottom or left or right:
        data = conv.emit(relax.op.nn.pad(data, [0, 0, top, bottom, left, right, 0, 0],
                                         pad_value=float(x.zero_point[0])))
    return data


def convert_conv(conv, op, inputs, outputs, depthwise: bool):
    from tvm import relax

    x, w, out = conv.tensor(inputs[0]), conv.tensor(inputs[1]), conv.tensor(outputs[0])
    bias = conv.tensor(inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else None
    opts = builtin_options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
    stride, dilation = (opts.StrideH(), opts.StrideW()), (opts.DilationHFactor(), opts.DilationWFactor())
    kernel = (w.shape[1], w.shape[2])
    data = _padded_input(conv, inputs, x, kernel, stride, dilation, opts.Padding() == _SAME)
    weight = w.value.astype(np.int64)
    if depthwise:  # [1, KH, KW, C x m] -> HWOI [KH, KW, C x m, 1], groups = input channels
        channels = w.shape[3]
        kernel_value, layout, groups = w.value.reshape(kernel[0], kernel[1], channels, 1), "HWOI", x.shape[3]
        sums = weight.sum(axis=(0, 1, 2))
    else:
        channels = w.shape[0]  # OHWI -> HWIO, the layout TVM's own TFLite import uses for NHWC
        kernel_value, layout, groups = w.value.transpose(1, 2, 3, 0), "HWIO", 1
        sums = weight.sum(axis=(1, 2, 3))
    acc = conv.emit(relax.op.nn.conv2d(data, const(kernel_value, "int8"), strides=stride, padding=0,
                                       dilation=dilation, groups=groups, data_layout="NHWC",
                                       kernel_layout=layout, out_dtype="int32"))
    multipliers, shifts = _channel_multipliers(x, w, out, channels)
    folded = _folded_bias(bias, sums, int(x.zero_point[0]))
    return _requantize_to_output(conv, acc, folded, multipliers, shifts, out, opts.FusedActivationFunction())


def convert_fully_connected(conv, op, inputs, outputs):
    from tvm import relax

    x, w, out = conv.tensor(inputs[0]), conv.tensor(inputs[1]), conv.tensor(outputs[0])
    bias = conv.tensor(inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else None
    opts = builtin_options(op, tflite.FullyConnectedOptions)
    data = conv.emit(relax.op.reshape(conv.expr(inputs[0]), (-1, w.shape[1])))
    acc = conv.emit(relax.op.matmul(data, const(w.value.T, "int8"), out_dtype="int32"))
    if w.scale.size > 1:
        multipliers, shifts = _channel_multipliers(x, w, out, w.shape[0])
    else:  # GetQuantizedConvolutionMultipler: the scales' product in float, then / output in double
        m, s = quantize_multiplier(float(x.scale[0]) * float(w.scale[0]) / float(out.scale[0]))
        multipliers, shifts = [m] * w.shape[0], [s] * w.shape[0]
    folded = _folded_bias(bias, w.value.astype(np.int64).sum(axis=1), int(x.zero_point[0]))
    y = _requantize_to_output(conv, acc, folded, multipliers, shifts, out,
                              opts.FusedActivationFunction() if opts else 0, single_rounding=True)
    return conv.emit(relax.op.reshape(y, out.shape))


def convert_add(conv, op, inputs, outputs):
    """TFLite's integer ADD (int8): inputs shifted left by 20, each scaled to twice the larger input
    scale, summed, then scaled to the output (Prepare in add.cc, AddElementwise in reference)."""
    from tvm import relax

    a, b, out = conv.tensor(inputs[0]), conv.tensor(inputs[1]), conv.tensor(outputs[0])
    left_shift = 20
    twice_max = float(np.float32(2) * max(np.float32(a.scale[0]), np.float32(b.scale[0])))
    output_denominator = float(np.float32(1 << left_shift) * np.float32(out.scale[0]))
    opts = builtin_options(op, tflite.AddOptions)
    low, high = activation_range(opts.FusedActivationFunction() if opts else 0, float(out.scale[0]),
                                 int(out.zero_point[0]), out.dtype)
    # Broadcast first (TFLite's ADD broadcasts; MobileNetV2's residual adds have one shape).
    operands = [conv.expr(i) if list(t.shape) == list(out.shape) else conv.emit(relax.op.broadcast_to(conv.expr(i), out.shape))
                for t, i in ((a, inputs[0]), (b, inputs[1]))]
    return conv.bb.emit_te(functools.partial(
        fixed_point.add, a_zero=int(a.zero_point[0]), b_zero=int(b.zero_point[0]),
        a_rescale=quantize_multiplier(float(a.scale[0]) / twice_max),
        b_rescale=quantize_multiplier(float(b.scale[0]) / twice_max), left_shift=left_shift,
        out_rescale=quantize_multiplier(twice_max / output_denominator), zero_point=int(out.zero_point[0]),
        low=low, high=high, dtype=out.dtype), *operands, primfunc_name_hint="add")


def _to_quantized(conv, real_expr, out: QTensor, dtype: str = "float64"):
    """round(real / scale) + zero point, clamped to the output type (TFLite's affine quantize)."""
    from tvm import relax

    q = fixed_point.round_half_away_expr(relax.op.divide(real_expr, const(float(out.scale[0]), dtype)), dtype)
    q = relax.op.add(relax.op.astype(q, "int64"), const(int(out.zero_point[0]), "int64"))
    low, high = fixed_point.INT_RANGES[out.dtype]
    return conv.emit(fixed_point.clamp_cast(q, low, high, out.dtype))


def _dequantized(conv, index: int, tensor: QTensor, dtype: str = "float64"):
    from tvm import relax

    centered = relax.op.subtract(relax.op.astype(conv.expr(index), dtype), const(float(tensor.zero_point[0]), dtype))
    return relax.op.multiply(centered, const(float(tensor.scale[0]), dtype))


def convert_mean(conv, op, inputs, outputs):
    """TFLite's QuantizedMeanOrSum: the int32 sum less n x the input zero point, times the
    in/out scale multiplier with 1/n folded in, plus the output zero point."""
    from tvm import relax

    x, axes, out = conv.tensor(inputs[0]), conv.tensor(inputs[1]), conv.tensor(outputs[0])
    opts = builtin_options(op, tflite.ReducerOptions)
    axis = [int(a) % len(x.shape) for a in np.atleast_1d(axes.value)]
    count = int(np.prod([x.shape[a] for a in axis]))
    total = conv.emit(relax.op.sum(relax.op.astype(conv.expr(inputs[0]), "int32"), axis=axis,
                                   keepdims=bool(opts and opts.KeepDims())))
    return _requantize_tensor(conv, total, -int(x.zero_point[0]) * count, float(x.scale[0]) / float(out.scale[0]),
                              out, *fixed_point.INT_RANGES[out.dtype], fold=count)


def convert_softmax(conv, op, inputs, outputs):
    """exp(beta x scale x (x - max x)) from a table of its 256 possible values (x - max x is an
    integer in [-255, 0]; TFLite's optimized int8 kernel also looks it up), divided by their sum:
    no exp at run time, where 1000 float64 exps took longer than the whole classifier layer."""
    from tvm import relax

    x, out = conv.tensor(inputs[0]), conv.tensor(outputs[0])
    opts = builtin_options(op, tflite.SoftmaxOptions)
    beta = opts.Beta() if opts else 1.0
    table = np.exp(beta * float(x.scale[0]) * np.arange(-255, 1, dtype=np.float64))
    values = relax.op.astype(conv.expr(inputs[0]), "int32")
    below_max = relax.op.subtract(values, relax.op.max(values, axis=-1, keepdims=True))
    # "clip": indices are in range by construction, and TVM warns that its "fast" mode would not check.
    exps = conv.emit(relax.op.take(const(table, "float64"), relax.op.add(below_max, const(255, "int32")), axis=0,
                                   mode="clip"))
    return _to_quantized(conv, relax.op.divide(exps, relax.op.sum(exps, axis=-1, keepdims=True)), out)


def convert_quantize(conv, op, inputs, outputs):
    x, out = conv.tensor(inputs[0]), conv.tensor(outputs[0])
    if x.dtype == "float32":  # TFLite: round(x / scale) in float, + zero point
        return _to_quantized(conv, conv.expr(inputs[0]), out, dtype="float32")
    # Requantize: MultiplyByQuantizedMultiplier(x - zp_in, in_scale / out_scale) + zp_out.
    return _requantize_tensor(conv, conv.expr(inputs[0]), -int(x.zero_point[0]), float(x.scale[0]) / float(out.scale[0]),
                              out, *fixed_point.INT_RANGES[out.dtype])


def convert_dequantize(conv, op, inputs, outputs):
    from tvm import relax

    x = conv.tensor(inputs[0])
    return conv.emit(relax.op.astype(_dequantized(conv, inputs[0], x), "float32"))


def convert_reshape(conv, op, inputs, outputs):
    from tvm import relax

    return conv.emit(relax.op.reshape(conv.expr(inputs[0]), conv.tensor(outputs[0]).shape))


CONVERTERS = {
    "CONV_2D": lambda c, op, i, o: convert_conv(c, op, i, o, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda c, op, i, o: convert_conv(c, op, i, o, depthwise=True),
    "FULLY_CONNECTED": convert_fully_connected,
    "ADD": convert_add,
    "MEAN": convert_mean,
    "SOFTMAX": convert_softmax,
    "QUANTIZE": convert_quantize,
    "DEQUANTIZE": convert_dequantize,
    "RESHAPE": convert_reshape,
}


# ----- what the path covers ------------------------------------------------------------------------


def _op_problems(model, sub, op, name: str) -> list[str]:
    """What in this op the integer path does not cover ([] if it does)."""
    tensors = [read_tensor(model, sub, int(i)) for i in op.InputsAsNumpy() if i >= 0]
    outs = [read_tensor(model, sub, int(i)) for i in op.OutputsAsNumpy()]
    if name not in CONVERTERS:
        return [f"{name} (no integer converter)"]
    problems = []
    activations = [t for t in tensors + outs if t.value is None]
    for t in activations:
        if t.dtype in ("int16", "int32", "int64") or (t.dtype in ACTIVATIONS and not t.quantized):
            problems.append(f"{name} with {t.dtype} activations")
        if t.quantized and t.scale.size > 1:
            problems.append(f"{name} with per-channel activation scales")
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        weight = tensors[1]
        if weight.value is None or weight.dtype != "int8" or not weight.quantized:
            problems.append(f"{name} with {weight.dtype} {'non-constant ' if weight.value is None else ''}weights")
        elif (weight.zero_point != 0).any():
            problems.append(f"{name} with non-zero weight zero points")
        if len(tensors) > 2 and tensors[2].dtype != "int32":
            problems.append(f"{name} with {tensors[2].dtype} bias")
        if tensors[0].dtype != "int8":
            problems.append(f"{name} on {tensors[0].dtype} input")
    if name == "ADD" and any(t.value is not None for t in tensors):
        problems.append("ADD of a constant")
    if name == "ADD" and outs[0].dtype != "int8":
        problems.append(f"ADD on {outs[0].dtype}")
    if name == "DEQUANTIZE" and tensors[0].dtype not in ACTIVATIONS:
        problems.append(f"DEQUANTIZE of {tensors[0].dtype}")
    return problems


def is_quantized(model: tflite.Model) -> bool:
    """Whether subgraph 0 has quantized int8/uint8 activations (the files this path is for)."""
    sub = model.Subgraphs(0)
    for o in range(sub.OperatorsLength()):
        for index in sub.Operators(o).OutputsAsNumpy():
            tensor = read_tensor(model, sub, int(index))
            if tensor.dtype in ACTIVATIONS and tensor.quantized:
                return True
    return False


def unsupported(model: tflite.Model) -> list[str]:
    """Everything in subgraph 0 that the integer path does not cover, sorted and unique."""
    sub = model.Subgraphs(0)
    problems = set()
    for o in range(sub.OperatorsLength()):
        op = sub.Operators(o)
        problems.update(_op_problems(model, sub, op, op_name(model, op)))
    return sorted(problems)


class IntegerConversionError(Exception):
    """The file's ops are covered, but its shapes or wiring do not hold together (names the op)."""


def _output_expr(conv, index: int):
    """A model output: an op's result, or a stored constant (TFLite allows both)."""
    if index in conv.exprs:
        return conv.exprs[index]
    tensor = conv.tensor(index)
    if tensor.value is None:
        raise IntegerConversionError(f"model output tensor {index} ({tensor.name}) is neither computed nor stored")
    return const(tensor.value, tensor.dtype)


INEXACT_OPS = ("MEAN", "SOFTMAX")  # TFLite allows these 1 LSB between its own kernels


def output_tolerances(model: tflite.Model) -> list[int]:
    """Per model output, the LSB this path may differ from TFLite's reference kernels: 0 where only
    bit-exact ops (conv, depthwise, fully connected, add, (re)quantize) lead to it, 1 where a MEAN
    or SOFTMAX does."""
    sub = model.Subgraphs(0)
    inexact: set[int] = set()
    for o in range(sub.OperatorsLength()):
        op = sub.Operators(o)
        if op_name(model, op) in INEXACT_OPS or any(int(i) in inexact for i in op.InputsAsNumpy()):
            inexact.update(int(i) for i in op.OutputsAsNumpy())
    return [int(int(i) in inexact) for i in sub.OutputsAsNumpy()]


def from_quantized_tflite(model: tflite.Model, extra_outputs: tuple[int, ...] = ()):
    """Relax IRModule of a quantized file covered by this path (check `unsupported` first).
    `extra_outputs`: indices of intermediate tensors to return after the model's outputs (tests
    compare them with TFLite's reference kernels layer by layer)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    conv = _Converter(model, bb)
    sub = conv.sub
    params = []
    for index in sub.InputsAsNumpy():
        t = conv.tensor(int(index))
        var = relax.Var(t.name, relax.TensorType(shape=t.shape, dtype=t.dtype))
        conv.exprs[int(index)] = var
        params.append(var)
    with bb.function("main", params):
        with bb.dataflow():
            for o in range(sub.OperatorsLength()):
                op = sub.Operators(o)
                inputs = [int(i) for i in op.InputsAsNumpy()]
                outputs = [int(i) for i in op.OutputsAsNumpy()]
                try:
                    conv.exprs[outputs[0]] = CONVERTERS[op_name(model, op)](conv, op, inputs, outputs)
                except Exception as err:  # noqa: BLE001 - shapes or wiring this file gets wrong
                    raise IntegerConversionError(f"operator {o} ({op_name(model, op)}): {type(err).__name__}: "
                                                 f"{last_line(err, '')}") from None
            wanted = [int(i) for i in sub.OutputsAsNumpy()] + list(extra_outputs)
            results = [_output_expr(conv, i) for i in wanted]
            output = bb.emit_output(results[0] if len(results) == 1 else relax.Tuple(results))
        bb.emit_func_output(output)
    return bb.get()
