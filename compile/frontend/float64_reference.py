"""A float64 forward pass of any float TFLite file, in NumPy: the exact answer that TVM and LiteRT
both approximate in float32.

Comparing TVM with LiteRT alone cannot tell whose rounding is off, and the gap between them moves
with the instruction set (AVX2 and AVX-512 round differently). Measured against this pass, each
runtime's own error is known, and `deploy/verify.py` requires ours to be no worse than a small
multiple of LiteRT's. Written from TFLite's op definitions, independently of TVM's converter, so a
converter bug (layout, padding, activation) shows as an error of ours and not of the reference.

One entry (`Float64Model`), a table from op name to converter (`OPS`); every op of a file that the
table lacks is named at once (`NoReference`). Integer (quantized) ops are out of scope: quantized
outputs are checked in steps of their scale, not against real numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tflite

from mnv2_edge.compile.frontend import tflite_file
from mnv2_edge.compile.frontend.tflite_file import builtin_options

_RELU, _RELU_N1_TO_1, _RELU6, _TANH = 1, 2, 3, 4
_SAME = 0


class NoReference(Exception):
    """The file has ops (or tensor types) this pass does not define; the message names them all."""


def fused_activation(x: np.ndarray, code: int) -> np.ndarray:
    if code == 0:
        return x
    if code == _RELU:
        return np.maximum(x, 0.0)
    if code == _RELU_N1_TO_1:
        return np.clip(x, -1.0, 1.0)
    if code == _RELU6:
        return np.clip(x, 0.0, 6.0)
    if code == _TANH:
        return np.tanh(x)
    raise NoReference(f"fused activation {code}")


def padding(size: int, kernel: int, stride: int, dilation: int, same: bool) -> tuple[int, int, int]:
    """(output size, padding before, padding after) along one spatial axis, as TFLite computes them."""
    effective = (kernel - 1) * dilation + 1
    if not same:
        return (size - effective) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return out, total // 2, total - total // 2


def _taps(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int], same: bool,
          pad_value: float = 0.0):
    """Yield (i, j, window): the input strip each kernel tap (i, j) multiplies, [N, OH, OW, C]."""
    oh, top, bottom = padding(x.shape[1], kh, stride[0], dilation[0], same)
    ow, left, right = padding(x.shape[2], kw, stride[1], dilation[1], same)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=pad_value)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            yield i, j, xp[:, y0:y0 + (oh - 1) * stride[0] + 1:stride[0], x0:x0 + (ow - 1) * stride[1] + 1:stride[1]]


def conv2d(x, weight, bias, stride=(1, 1), dilation=(1, 1), same=True):
    """NHWC input, OHWI weight (TFLite's CONV_2D layout)."""
    cout, kh, kw, cin = weight.shape
    if cin != x.shape[3]:
        raise NoReference(f"grouped CONV_2D ({x.shape[3]} input channels, filter has {cin})")
    out = None
    for i, j, window in _taps(x, kh, kw, stride, dilation, same):
        term = window @ weight[:, i, j, :].T
        out = term if out is None else out + term
    return out if bias is None else out + bias


def depthwise_conv2d(x, weight, bias, stride=(1, 1), dilation=(1, 1), same=True, multiplier=1):
    """weight is [1, H, W, C x multiplier]; output channel c x multiplier + m reads input channel c."""
    _, kh, kw, _ = weight.shape
    if multiplier != 1:
        x = np.repeat(x, multiplier, axis=3)
    out = None
    for i, j, window in _taps(x, kh, kw, stride, dilation, same):
        term = window * weight[0, i, j]
        out = term if out is None else out + term
    return out if bias is None else out + bias


def _pool(x, opts, reduce):
    same = opts.Padding() == _SAME
    stride, size = (opts.StrideH(), opts.StrideW()), (opts.FilterHeight(), opts.FilterWidth())
    windows = [w for _, _, w in _taps(x, *size, stride, (1, 1), same, pad_value=np.nan)]
    return fused_activation(reduce(np.stack(windows), axis=0), opts.FusedActivationFunction())


def _conv(ctx, op, x, w, b=None):
    o = builtin_options(op, tflite.Conv2DOptions)
    y = conv2d(x, w, b, (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor()), o.Padding() == _SAME)
    return fused_activation(y, o.FusedActivationFunction())


def _depthwise(ctx, op, x, w, b=None):
    o = builtin_options(op, tflite.DepthwiseConv2DOptions)
    multiplier = w.shape[3] // x.shape[3]
    y = depthwise_conv2d(x, w, b, (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor()),
                         o.Padding() == _SAME, multiplier)
    return fused_activation(y, o.FusedActivationFunction())


def _fully_connected(ctx, op, x, w, b=None):
    o = builtin_options(op, tflite.FullyConnectedOptions)
    y = x.reshape(-1, w.shape[1]) @ w.T
    if b is not None:
        y = y + b
    y = fused_activation(y, o.FusedActivationFunction() if o else 0)
    return y.reshape(ctx.output_shape)


def _binary(fn, options_cls):
    def convert(ctx, op, a, b):
        o = builtin_options(op, options_cls) if options_cls else None
        return fused_activation(fn(a, b), o.FusedActivationFunction() if o else 0)
    return convert


def _reduce(fn):
    def convert(ctx, op, x, axes):
        o = builtin_options(op, tflite.ReducerOptions)
        axes = tuple(int(a) % x.ndim for a in np.atleast_1d(axes))
        return fn(x, axis=axes, keepdims=bool(o and o.KeepDims()))
    return convert


def _softmax(ctx, op, x):
    o = builtin_options(op, tflite.SoftmaxOptions)
    z = (x - x.max(axis=-1, keepdims=True)) * (o.Beta() if o else 1.0)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _to_output_shape(ctx, op, x, *unused):
    return x.reshape(ctx.output_shape)


def _concatenation(ctx, op, *xs):
    o = builtin_options(op, tflite.ConcatenationOptions)
    return fused_activation(np.concatenate(xs, axis=o.Axis()), o.FusedActivationFunction())


def _pad(ctx, op, x, paddings, value=None):
    fill = 0.0 if value is None else float(np.asarray(value).ravel()[0])
    return np.pad(x, np.asarray(paddings, int).tolist(), constant_values=fill)


def _dequantize(ctx, op, x):
    return x  # constants and inputs are already real numbers here (see Float64Model._constant)


def _resize_bilinear(ctx, op, x, size):
    """TFLite's RESIZE_BILINEAR (reference kernel's rule: align_corners, half_pixel_centers, the lower
    source index clamped at 0 and the upper at the edge), in float64."""
    o = builtin_options(op, tflite.ResizeBilinearOptions)
    align, half = bool(o and o.AlignCorners()), bool(o and o.HalfPixelCenters())

    def taps(out: int, size_in: int):
        scale = (size_in - 1) / (out - 1) if align and out > 1 else size_in / out
        at = np.arange(out, dtype=np.float64)
        source = (at + 0.5) * scale - 0.5 if half else at * scale
        low = np.maximum(np.floor(source), 0).astype(int)
        high = np.minimum(np.ceil(source), size_in - 1).astype(int)
        return low, high, source - low

    y0, y1, dy = taps(ctx.output_shape[1], x.shape[1])
    x0, x1, dx = taps(ctx.output_shape[2], x.shape[2])
    dx, dy = dx[None, None, :, None], dy[None, :, None, None]
    top = x[:, y0][:, :, x0] * (1 - dx) + x[:, y0][:, :, x1] * dx
    bottom = x[:, y1][:, :, x0] * (1 - dx) + x[:, y1][:, :, x1] * dx
    return top * (1 - dy) + bottom * dy


def _leaky_relu(ctx, op, x):
    alpha = builtin_options(op, tflite.LeakyReluOptions).Alpha()
    return np.where(x >= 0, x, alpha * x)


def _unary(fn):
    return lambda ctx, op, x: fn(x)


OPS = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _binary(np.add, tflite.AddOptions),
    "SUB": _binary(np.subtract, tflite.SubOptions),
    "MUL": _binary(np.multiply, tflite.MulOptions),
    "DIV": _binary(np.divide, tflite.DivOptions),
    "MAXIMUM": _binary(np.maximum, None),
    "MINIMUM": _binary(np.minimum, None),
    "SQUARED_DIFFERENCE": _binary(lambda a, b: (a - b) ** 2, None),
    "PRELU": _binary(lambda x, alpha: np.where(x >= 0, x, alpha * x), None),
    "MEAN": _reduce(np.mean),
    "SUM": _reduce(np.sum),
    "REDUCE_MAX": _reduce(np.max),
    "SOFTMAX": _softmax,
    "AVERAGE_POOL_2D": lambda ctx, op, x: _pool(x, builtin_options(op, tflite.Pool2DOptions), np.nanmean),
    "MAX_POOL_2D": lambda ctx, op, x: _pool(x, builtin_options(op, tflite.Pool2DOptions), np.nanmax),
    "RESHAPE": _to_output_shape,
    "SQUEEZE": _to_output_shape,
    "EXPAND_DIMS": _to_output_shape,
    "CONCATENATION": _concatenation,
    "PAD": _pad,
    "RESIZE_BILINEAR": _resize_bilinear,
    "PADV2": _pad,
    "TRANSPOSE": lambda ctx, op, x, perm: np.transpose(x, np.asarray(perm, int)),
    "DEQUANTIZE": _dequantize,
    "RELU": _unary(lambda x: np.maximum(x, 0.0)),
    "RELU6": _unary(lambda x: np.clip(x, 0.0, 6.0)),
    "RELU_N1_TO_1": _unary(lambda x: np.clip(x, -1.0, 1.0)),
    "LOGISTIC": _unary(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "TANH": _unary(np.tanh),
    "HARD_SWISH": _unary(lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "LEAKY_RELU": _leaky_relu,
    "EXP": _unary(np.exp),
    "SQRT": _unary(np.sqrt),
    "RSQRT": _unary(lambda x: 1.0 / np.sqrt(x)),
    "ABS": _unary(np.abs),
    "NEG": _unary(np.negative),
}

_FLOAT_TYPES = ("float32", "float16", "float64")


class _Context:
    def __init__(self, output_shape):
        self.output_shape = output_shape


class Float64Model:
    """A float TFLite file run in float64. Raises NoReference naming every op or type it lacks."""

    def __init__(self, path: str | Path):
        self.model, _ = tflite_file.read_model(path)
        self.sub = self.model.Subgraphs(0)
        missing = set()
        for o in range(self.sub.OperatorsLength()):
            op = self.sub.Operators(o)
            name = tflite_file.op_name(self.model, op)
            if name not in OPS:
                missing.add(name)
            for index in op.OutputsAsNumpy():
                if self._dtype(int(index)) not in _FLOAT_TYPES and name not in ("RESHAPE", "SQUEEZE"):
                    missing.add(f"{name} with {self._dtype(int(index))} output")
        if missing:
            raise NoReference(", ".join(sorted(missing)))

    def _dtype(self, index: int) -> str:
        return tflite_file.tensor_dtype(self.sub.Tensors(index))

    def _constant(self, index: int) -> np.ndarray | None:
        """A tensor's stored value as float64 (dequantized where it carries a scale), or None."""
        tensor = self.sub.Tensors(index)
        raw = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or raw.size == 0:
            return None
        dtype = self._dtype(index)
        shape = tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else []
        value = raw.view(np.dtype(dtype)).reshape(shape)
        quant = tensor.Quantization()
        if dtype in ("int8", "uint8", "int16") and quant is not None and quant.ScaleLength():
            scale, zero = quant.ScaleAsNumpy(), quant.ZeroPointAsNumpy()
            axis_shape = [1] * value.ndim
            if scale.size > 1:
                axis_shape[quant.QuantizedDimension()] = -1
            return (value.astype(np.float64) - zero.reshape(axis_shape)) * scale.reshape(axis_shape)
        return value.astype(np.float64) if dtype in _FLOAT_TYPES else value

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        values: dict[int, np.ndarray] = {}
        for index, value in zip(self.sub.InputsAsNumpy(), inputs):
            values[int(index)] = np.asarray(value, dtype=np.float64)
        for o in range(self.sub.OperatorsLength()):
            op = self.sub.Operators(o)
            args = []
            for index in op.InputsAsNumpy():
                index = int(index)
                if index < 0:
                    args.append(None)
                elif index in values:
                    args.append(values[index])
                else:
                    values[index] = self._constant(index)
                    args.append(values[index])
            while args and args[-1] is None:
                args.pop()
            out_index = int(op.OutputsAsNumpy()[0])
            out_tensor = self.sub.Tensors(out_index)
            shape = tuple(out_tensor.ShapeAsNumpy().tolist()) if out_tensor.ShapeLength() else ()
            convert = OPS[tflite_file.op_name(self.model, op)]
            values[out_index] = np.asarray(convert(_Context(shape), op, *args), dtype=np.float64)
        return [values[int(i)] for i in self.sub.OutputsAsNumpy()]
