"""Write a MobileNetV2 variant as a real TFLite file, float32 or full-integer int8.

The op set is what TFLite's converter emits for this network: CONV_2D and DEPTHWISE_CONV_2D with
fused RELU6, ADD, MEAN, FULLY_CONNECTED, SOFTMAX. int8 follows TFLite's quantization spec:
per-channel symmetric int8 weights, int32 bias, per-tensor asymmetric int8 activations calibrated
on representative inputs, int8 input and output.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mnv2_edge.compile.generation import float_forward
from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.generation.images import synthetic_images
from mnv2_edge.compile.generation.tflite_writer import Graph, Operator, Quantization, Tensor, serialize
from mnv2_edge.compile.generation.variants import Layer, Variant
from mnv2_edge.compile.generation.weights import generate_weights

DTYPES = ("float32", "int8")
REPRESENTATIVE_IMAGES = 8
INPUT_RANGE = (-1.0, 1.0)  # x / 127.5 - 1
SOFTMAX_QUANT = (1.0 / 256.0, -128)  # fixed by TFLite's int8 spec
GENERATOR_SEED = 0

# Op versions LiteRT expects for the int8 kernels (float ones are all version 1).
INT8_OP_VERSIONS = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "MEAN": 2, "FULLY_CONNECTED": 4, "SOFTMAX": 2}


def _affine(lo: float, hi: float) -> tuple[float, int]:
    """Per-tensor asymmetric int8 (scale, zero point) covering [lo, hi] and 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return scale, zero_point


def _symmetric(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights in [-127, 127] and their scales (per channel along axis, or per tensor)."""
    if axis is None:
        scale = np.array([max(np.abs(weight).max(), 1e-8) / 127.0], np.float32)
        return np.clip(np.round(weight / scale[0]), -127, 127).astype(np.int8), scale
    other = tuple(i for i in range(weight.ndim) if i != axis)
    scale = (np.maximum(np.abs(weight).max(axis=other), 1e-8) / 127.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8), scale


class _GraphBuilder:
    def __init__(self, variant: Variant, dtype: str, ranges: dict[str, tuple[float, float]] | None):
        self.variant, self.dtype, self.ranges = variant, dtype, ranges
        self.graph = Graph(description=f"mnv2-edge MobileNetV2 {variant.tag} {dtype}")
        self.ids: dict[str, int] = {}
        self.act_quant: dict[str, tuple[float, int]] = {}

    def activation(self, name: str, shape: tuple[int, ...], quant: tuple[float, int] | None = None) -> int:
        tensor = Tensor(name, shape, self.dtype)
        if self.dtype == "int8":
            quant = quant or _affine(*self.ranges[name])
            self.act_quant[name] = quant
            tensor.quantization = Quantization(np.array([quant[0]]), np.array([quant[1]]))
        self.ids[name] = self.graph.add_tensor(tensor)
        return self.ids[name]

    def weights(self, layer: Layer, weight: np.ndarray, bias: np.ndarray) -> list[int]:
        name = layer.name
        if self.dtype == "float32":
            w = self.graph.add_tensor(Tensor(f"{name}/weights", weight.shape, "float32", weight))
            b = self.graph.add_tensor(Tensor(f"{name}/bias", bias.shape, "float32", bias))
            return [w, b]
        axis = {"conv": 0, "depthwise": 3, "fc": None}[layer.op]
        qweight, wscale = _symmetric(weight, axis)
        in_scale = self.act_quant[layer.inputs[0]][0]
        bias_scale = (in_scale * wscale).astype(np.float32)
        qbias = np.round(bias / bias_scale).astype(np.int32)
        zeros = np.zeros(len(wscale), np.int64)
        w = self.graph.add_tensor(
            Tensor(f"{name}/weights", weight.shape, "int8", qweight, Quantization(wscale, zeros, axis or 0))
        )
        b = self.graph.add_tensor(
            Tensor(f"{name}/bias", bias.shape, "int32", qbias, Quantization(bias_scale, np.zeros_like(zeros), 0))
        )
        return [w, b]

    def op(self, name: str, inputs: list[int], output: int, options_type=None, **options):
        version = INT8_OP_VERSIONS.get(name, 1) if self.dtype == "int8" else 1
        self.graph.operators.append(Operator(name, inputs, [output], options_type, options, version))


def build_graph(variant: Variant, dtype: str, outputs: tuple[str, ...] = ("probabilities",)) -> Graph:
    """The variant's TFLite graph; `outputs` names the tensors the model returns (layer names)."""
    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype {dtype!r}: generated variants come as {' or '.join(DTYPES)}.")
    weights = generate_weights(variant.width, variant.num_classes, GENERATOR_SEED, variant.expansion)
    ranges = None
    if dtype == "int8":
        ranges = activation_ranges(variant, weights)
        ranges["input"] = INPUT_RANGE
    gb = _GraphBuilder(variant, dtype, ranges)
    res = variant.resolution
    gb.activation("input", (1, res, res, 3))
    relu6 = 3  # tflite.ActivationFunctionType.RELU6
    for layer in variant.layers:
        ins = [gb.ids[name] for name in layer.inputs]
        if layer.op in ("conv", "depthwise"):
            out = gb.activation(layer.name, (1, layer.out_size, layer.out_size, layer.out_channels))
            params = gb.weights(layer, *weights[layer.name])
            activation = relu6 if layer.relu6 else 0
            if layer.op == "conv":
                gb.op("CONV_2D", ins + params, out, "Conv2DOptions", Padding=0, StrideW=layer.stride,
                      StrideH=layer.stride, FusedActivationFunction=activation,
                      DilationWFactor=1, DilationHFactor=1)
            else:
                gb.op("DEPTHWISE_CONV_2D", ins + params, out, "DepthwiseConv2DOptions", Padding=0,
                      StrideW=layer.stride, StrideH=layer.stride, DepthMultiplier=1,
                      FusedActivationFunction=activation, DilationWFactor=1, DilationHFactor=1)
        elif layer.op == "add":
            out = gb.activation(layer.name, (1, layer.out_size, layer.out_size, layer.out_channels))
            gb.op("ADD", ins, out, "AddOptions", FusedActivationFunction=0)
        elif layer.op == "mean":
            axes = gb.graph.add_tensor(Tensor(f"{layer.name}/axes", (2,), "int32", np.array([1, 2], np.int32)))
            out = gb.activation(layer.name, (1, layer.out_channels))
            gb.op("MEAN", ins + [axes], out, "ReducerOptions", KeepDims=False)
        elif layer.op == "fc":
            out = gb.activation(layer.name, (1, layer.out_channels))
            gb.op("FULLY_CONNECTED", ins + gb.weights(layer, *weights[layer.name]), out,
                  "FullyConnectedOptions", FusedActivationFunction=0)
        elif layer.op == "softmax":
            out = gb.activation(layer.name, (1, layer.out_channels), SOFTMAX_QUANT)
            gb.op("SOFTMAX", ins, out, "SoftmaxOptions", Beta=1.0)
    gb.graph.inputs = [gb.ids["input"]]
    unknown = [name for name in outputs if name not in gb.ids]
    if unknown:
        raise UserError(f"No tensor named {', '.join(unknown)} in MobileNetV2; outputs name layers such as logits.")
    gb.graph.outputs = [gb.ids[name] for name in outputs]
    return gb.graph


def activation_ranges(variant: Variant, weights: dict) -> dict[str, tuple[float, float]]:
    """Min and max of every activation over representative inputs at the variant's resolution."""
    images = synthetic_images(REPRESENTATIVE_IMAGES, variant.resolution, seed=2000 + GENERATOR_SEED)
    tensors = float_forward.run(variant.layers, weights, images)
    return {name: (float(float_forward.stable(t.min())), float(float_forward.stable(t.max())))
            for name, t in tensors.items()}


def variant_tflite(variant: Variant, dtype: str = "float32", outputs: tuple[str, ...] = ("probabilities",)) -> bytes:
    """The variant as TFLite FlatBuffer bytes (deterministic: same variant, same bytes)."""
    return serialize(build_graph(variant, dtype, outputs))


def write_variant(variant: Variant, dtype: str, path: str | Path, outputs: tuple[str, ...] = ("probabilities",)) -> str:
    """Write the variant's .tflite file; returns its sha256."""
    data = variant_tflite(variant, dtype, outputs)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
