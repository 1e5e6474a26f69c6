"""Do a file's declared tensor shapes hold together? For the ops whose output shape follows simply
from their inputs and options (convolutions, pools, padding, element-wise and same-shape ops), the
declared output must be what the op makes of the declared inputs.

LiteRT recomputes shapes when it runs a file, so it runs files whose declared shapes are wrong;
TVM's converters (and ours) take declared shapes as written (a convolution's SAME padding comes from
its input's declared size), so such a file would build into a model that computes something else.
Found by the fuzzing campaign: a stem convolution's stride changed from 2 to 5 with the declared
shapes left as they were gave outputs 0.7 off; a bias stored as [1000, 1] became a [1000, 1000]
output. Ops without a rule here are not checked.
"""

from __future__ import annotations

import tflite

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.frontend.float64_reference import padding

SAME_SHAPE = {"RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "PRELU", "ABS",
              "NEG", "EXP", "SQRT", "RSQRT", "SOFTMAX", "QUANTIZE", "DEQUANTIZE", "ELU", "GELU"}
BROADCAST = {"ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE"}
WINDOWED = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
            "AVERAGE_POOL_2D": tflite.Pool2DOptions, "MAX_POOL_2D": tflite.Pool2DOptions}


def _windowed(name: str, options, data: list[int], weight: list[int] | None) -> list[int] | None:
    if options is None or len(data) != 4:
        return None
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if weight is None or len(weight) != 4:
            return None
        kh, kw = weight[1], weight[2]
        dh, dw = options.DilationHFactor() or 1, options.DilationWFactor() or 1
        channels = weight[0] if name == "CONV_2D" else weight[3]
    else:
        kh, kw, dh, dw, channels = options.FilterHeight(), options.FilterWidth(), 1, 1, data[3]
    sh, sw = options.StrideH(), options.StrideW()
    if min(sh, sw, kh, kw) < 1:
        return None  # the front end refuses these with its own message
    same = options.Padding() == tflite.Padding.SAME
    height, width = (max(padding(*axis, same)[0], 0) for axis in ((data[1], kh, sh, dh), (data[2], kw, sw, dw)))
    return [data[0], height, width, channels]


def _broadcast(a: list[int], b: list[int]) -> list[int] | None:
    rank = max(len(a), len(b))
    a, b = [1] * (rank - len(a)) + a, [1] * (rank - len(b)) + b
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        return None
    return [max(x, y) for x, y in zip(a, b)]


def check_declared_shapes(model: tflite.Model, path) -> None:
    """UserError naming the first op whose declared output is not what it makes of its inputs."""
    from mnv2_edge.compile.frontend.tflite_file import builtin_options, op_name

    sub = model.Subgraphs(0)

    def shape(index: int) -> list[int] | None:
        tensor = sub.Tensors(index)
        if tensor.ShapeSignatureLength() and (tensor.ShapeSignatureAsNumpy() < 0).any():
            return None  # a dynamic dimension: nothing to check
        return tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else []

    for o in range(sub.OperatorsLength()):
        op = sub.Operators(o)
        name = op_name(model, op)
        inputs = [int(i) for i in op.InputsAsNumpy()]
        if not inputs or inputs[0] < 0 or op.OutputsLength() != 1:
            continue
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(inputs) > 2 and min(inputs[1:3]) >= 0:
            weight, bias = shape(inputs[1]), shape(inputs[2])
            units = None if not weight else weight[3] if name == "DEPTHWISE_CONV_2D" else weight[0]
            if units and bias is not None and bias != [units]:  # TVM broadcasts a [n, 1] bias into a matrix
                raise UserError(
                    f"{path}: operator {o} ({name}) has a bias of shape {bias}, where its {units} output channels "
                    f"need [{units}] (tensor {inputs[2]}, {sub.Tensors(inputs[2]).Name().decode(errors='replace')}). "
                    f"LiteRT reads the values regardless of the shape; TVM would broadcast it into the wrong "
                    f"shape. Re-export the model.")
        data = shape(inputs[0])
        if not data:  # unknown (dynamic, or left empty for the runtime to fill)
            continue
        if name in WINDOWED:
            weight = shape(inputs[1]) if len(inputs) > 1 and inputs[1] >= 0 else None
            expected = _windowed(name, builtin_options(op, WINDOWED[name]), data, weight)
        elif name in SAME_SHAPE:
            expected = data
        elif name in BROADCAST and len(inputs) == 2 and inputs[1] >= 0 and shape(inputs[1]) is not None:
            expected = _broadcast(data, shape(inputs[1]))
        else:
            continue
        output = int(op.OutputsAsNumpy()[0])
        declared = shape(output)
        if expected is not None and declared and declared != expected:
            raise UserError(
                f"{path}: the declared shapes do not hold together at operator {o} ({name}): it makes "
                f"{expected} of its inputs {[shape(i) if i >= 0 else None for i in inputs]}, but its output "
                f"(tensor {output}, {sub.Tensors(output).Name().decode(errors='replace')}) is declared "
                f"{declared}. LiteRT recomputes shapes when it runs a file; TVM takes them as written and "
                f"would build a model that computes something else. Re-export the model."
            )
