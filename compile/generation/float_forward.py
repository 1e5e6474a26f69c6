"""A plain NumPy float64 forward pass over a variant's layer list (NHWC, TFLite SAME padding).

Used to calibrate: fold synthetic batch-norm statistics into the weights and record activation
ranges for int8 quantization, as TFLite's converter does with its representative dataset.

Generated files must be byte-identical on every machine (tuning records and results are keyed by
them), but sums through BLAS and NumPy's SIMD loops round differently per CPU in the last bits. So
the pass runs in float64, and every statistic taken from it is rounded by `stable` to a grid far
coarser than that noise before it shapes a weight or a quantization scale.
"""

from __future__ import annotations

import numpy as np

from mnv2_edge.compile.frontend.float64_reference import conv2d, depthwise_conv2d
from mnv2_edge.compile.generation.variants import Layer

STABLE_BITS = 20  # float64 noise is ~2^-50 relative: a flip at this grid has odds of ~2^-30 per value


def stable(x):
    """x rounded to STABLE_BITS significant bits: the same on every CPU whatever its last-bit noise."""
    mantissa, exponent = np.frexp(np.asarray(x, dtype=np.float64))
    return np.ldexp(np.round(mantissa * 2.0**STABLE_BITS) / 2.0**STABLE_BITS, exponent)


def pre_activation(layer: Layer, x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The conv/depthwise/fc output before its fused ReLU6."""
    weight = weight.astype(np.float64)
    if layer.op == "conv":
        return conv2d(x, weight, bias, (layer.stride, layer.stride))
    if layer.op == "depthwise":
        return depthwise_conv2d(x, weight, bias, (layer.stride, layer.stride))
    if layer.op == "fc":
        return x @ weight.T + bias
    raise ValueError(f"{layer.op} has no weights")


def apply_layer(layer: Layer, inputs: list[np.ndarray], weights: dict) -> np.ndarray:
    if layer.op in ("conv", "depthwise", "fc"):
        out = pre_activation(layer, inputs[0], *weights[layer.name])
        return np.clip(out, 0.0, 6.0) if layer.relu6 else out
    if layer.op == "add":
        return inputs[0] + inputs[1]
    if layer.op == "mean":
        return inputs[0].mean(axis=(1, 2))
    if layer.op == "softmax":
        shifted = np.exp(inputs[0] - inputs[0].max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown layer op {layer.op}")


def run(layers: tuple[Layer, ...], weights: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of the network in float64, by name ("input" and each layer's output)."""
    tensors = {"input": images.astype(np.float64)}
    for layer in layers:
        inputs = [tensors[name] for name in layer.inputs]
        tensors[layer.name] = apply_layer(layer, inputs, weights)
    return tensors
