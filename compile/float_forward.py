"""A plain NumPy float32 forward pass over a variant's layer list (NHWC, TFLite SAME padding).

Used to calibrate: fold synthetic batch-norm statistics into the weights and record activation
ranges for int8 quantization, as TFLite's converter does with its representative dataset.
"""

from __future__ import annotations

import numpy as np

from compile.variants import Layer


def _same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    size = x.shape[1]
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return np.pad(x, ((0, 0), (before, total - before), (before, total - before), (0, 0)))


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """[N, out, out, kernel, kernel, C] view of the padded input's sliding windows."""
    x = _same_pad(x, kernel, stride)
    view = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))
    return view[:, ::stride, ::stride].transpose(0, 1, 2, 4, 5, 3)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """weight is OHWI, as TFLite's CONV_2D stores it."""
    cout, kernel, _, cin = weight.shape
    if kernel == 1 and stride == 1:
        out = x.reshape(-1, cin) @ weight.reshape(cout, cin).T
        return out.reshape(*x.shape[:3], cout) + bias
    patches = _windows(x, kernel, stride)
    return np.einsum("nhwijc,oijc->nhwo", patches, weight, optimize=True) + bias


def depthwise_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """weight is [1, H, W, C], as TFLite's DEPTHWISE_CONV_2D stores it."""
    kernel = weight.shape[1]
    patches = _windows(x, kernel, stride)
    out = np.zeros(patches.shape[:3] + (x.shape[3],), dtype=np.float32)
    for i in range(kernel):
        for j in range(kernel):
            out += patches[:, :, :, i, j, :] * weight[0, i, j]
    return out + bias


def pre_activation(layer: Layer, x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The conv/depthwise/fc output before its fused ReLU6."""
    if layer.op == "conv":
        return conv2d(x, weight, bias, layer.stride)
    if layer.op == "depthwise":
        return depthwise_conv2d(x, weight, bias, layer.stride)
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
    """Every tensor of the network, by name ("input" and each layer's output)."""
    tensors = {"input": images.astype(np.float32)}
    for layer in layers:
        inputs = [tensors[name] for name in layer.inputs]
        tensors[layer.name] = apply_layer(layer, inputs, weights).astype(np.float32)
    return tensors
