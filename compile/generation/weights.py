"""Deterministic MobileNetV2 weights that keep activations alive through the whole network.

Random conv weights alone make the activations die or blow up, and the softmax goes uniform (every
input gives the same answer). Here each conv is followed by a synthetic batch norm whose statistics
are measured on a calibration batch and folded into the weights and bias, exactly what TFLite's
converter does with a trained network's batch norm. The classifier is normalised per class over the
batch, so the top-1 class depends on the image, not on a class bias.
"""

from __future__ import annotations

import functools

import numpy as np

from mnv2_edge.compile.generation import float_forward
from mnv2_edge.compile.generation.images import synthetic_images
from mnv2_edge.compile.generation.variants import EXPANSION, Layer, build_layers

# Weights do not depend on the input resolution (as for the published checkpoints): they are
# calibrated once per width at this resolution and reused for every resolution.
CALIBRATION_RESOLUTION = 128
CALIBRATION_IMAGES = 32
RELU6_STD, RELU6_MEAN, PROJECT_STD, RESIDUAL_STD, FC_STD = 1.0, -0.5, 1.0, 0.2, 1.5


def _weight_shape(layer: Layer) -> tuple[int, ...]:
    if layer.op == "conv":
        return (layer.out_channels, layer.kernel, layer.kernel, layer.in_channels)  # OHWI
    if layer.op == "depthwise":
        return (1, layer.kernel, layer.kernel, layer.out_channels)
    return (layer.out_channels, layer.in_channels)  # fc


def _output_axis(layer: Layer) -> int:
    return 3 if layer.op == "depthwise" else 0


def _target_stats(layer: Layer, residual: bool, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """The folded batch norm's gamma (the layer's pre-activation std) and per-channel beta (mean)."""
    n = layer.out_channels
    if residual:  # a small branch beside the skip, as in trained nets (cf. zero-init residual BN)
        return RESIDUAL_STD, rng.normal(0.0, 0.05, n)
    if layer.op == "fc":
        return FC_STD, rng.normal(0.0, 0.1, n)
    if layer.relu6:  # mostly inside (0, 6): some clipping on both sides, few dead channels
        return RELU6_STD, rng.normal(RELU6_MEAN, 0.5, n)
    return PROJECT_STD, rng.normal(0.0, 0.2, n)  # linear projection


@functools.lru_cache(maxsize=8)
def generate_weights(width: float, num_classes: int, seed: int = 0,
                     expansion: int = EXPANSION) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer name: (weight, bias)} in TFLite layouts, float32, batch norm folded."""
    layers = build_layers(width, CALIBRATION_RESOLUTION, num_classes, expansion)
    # Table 2's t keeps the seed it always had: the same bytes as before the knob existed.
    rng = np.random.default_rng([seed, round(width * 1000), num_classes] + ([expansion] if expansion != EXPANSION else []))
    images = synthetic_images(CALIBRATION_IMAGES, CALIBRATION_RESOLUTION, seed=1000 + seed)
    tensors = {"input": images.astype(np.float64)}
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    residual_branches = {layer.inputs[1] for layer in layers if layer.op == "add"}
    for layer in layers:
        inputs = [tensors[name] for name in layer.inputs]
        if layer.op in ("conv", "depthwise", "fc"):
            shape = _weight_shape(layer)
            fan_in = int(np.prod(shape)) // layer.out_channels
            weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
            raw = float_forward.pre_activation(layer, inputs[0], weight, np.zeros(layer.out_channels))
            reduce_axes = tuple(range(raw.ndim - 1))
            # One scale per layer, a shift per channel: channels keep their relative spread, as in a
            # trained net. Per-channel scaling would blow up near-constant channels, and with them
            # every rounding difference (float or int8) on the way to the output.
            # Statistics rounded by `stable`: the same weights on every CPU (see float_forward).
            mean = float_forward.stable(raw.mean(axis=reduce_axes))
            std = float_forward.stable((raw - mean).std() + 1e-6)
            gamma, beta = _target_stats(layer, layer.name in residual_branches, rng)
            scale = np.full(layer.out_channels, gamma / std)
            broadcast = [1] * len(shape)
            broadcast[_output_axis(layer)] = layer.out_channels
            weights[layer.name] = (
                (weight * scale.reshape(broadcast)).astype(np.float32),
                (beta - mean * scale).astype(np.float32),
            )
        tensors[layer.name] = float_forward.apply_layer(layer, inputs, weights)
    return weights
