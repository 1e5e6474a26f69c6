"""MobileNetV2 as the paper's Table 2: layer list, channel rule, multiply-adds and parameters.

A variant is (width multiplier, input resolution), and for exploring the trade-off further the
paper's other knobs: the expansion factor t of the bottlenecks (Table 2's 6; the paper finds 5-10
give nearly the same curves) and the number of classes. Channel counts follow the reference
implementations (TF-slim, Keras): scale by the width, round to a multiple of 8, never below 90% of
the scaled value. The last 1x1 conv stays 1280 for widths <= 1.0 and is scaled above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mnv2_edge.targets.errors import UserError

WIDTH_RANGE = (0.35, 1.4)
RESOLUTION_RANGE = (96, 224)
NUM_CLASSES = 1000
EXPANSION = 6  # Table 2's t for every bottleneck but the first (t = 1)
EXPANSION_RANGE = (5, 10)

# Table 2 of Sandler et al.: (expansion t, output channels c, repeats n, first stride s).
BOTTLENECKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


class Published(NamedTuple):
    """One published checkpoint's row of the official MobileNetV2 table (tensorflow/models,
    research/slim/nets/mobilenet/README.md, "Mobilenet V2 Imagenet Checkpoints")."""

    macs_m: int  # multiply-adds, millions
    params_m: float  # parameters, millions
    top1: float  # ImageNet top-1, %: the accuracy side of the trade-off the variants exist for (mnv2-pick)
    pixel1_ms: float  # latency on one Pixel 1 large core, TFLite of 2018: 22 points of one real core to
    # check the simulated core's shape against


# The 22 published checkpoints.
OFFICIAL_TABLE = {
    (1.4, 224): Published(582, 6.06, 75.0, 138.0),
    (1.3, 224): Published(509, 5.34, 74.4, 123.0),
    (1.0, 224): Published(300, 3.47, 71.8, 73.8),
    (1.0, 192): Published(221, 3.47, 70.7, 55.1),
    (1.0, 160): Published(154, 3.47, 68.8, 40.2),
    (1.0, 128): Published(99, 3.47, 65.3, 27.6),
    (1.0, 96): Published(56, 3.47, 60.3, 17.6),
    (0.75, 224): Published(209, 2.61, 69.8, 55.8),
    (0.75, 192): Published(153, 2.61, 68.7, 41.6),
    (0.75, 160): Published(107, 2.61, 66.4, 30.4),
    (0.75, 128): Published(69, 2.61, 63.2, 21.9),
    (0.75, 96): Published(39, 2.61, 58.8, 14.2),
    (0.5, 224): Published(97, 1.95, 65.4, 28.7),
    (0.5, 192): Published(71, 1.95, 63.9, 21.1),
    (0.5, 160): Published(50, 1.95, 61.0, 14.9),
    (0.5, 128): Published(32, 1.95, 57.7, 9.9),
    (0.5, 96): Published(18, 1.95, 51.2, 6.4),
    (0.35, 224): Published(59, 1.66, 60.3, 19.7),
    (0.35, 192): Published(43, 1.66, 58.2, 14.6),
    (0.35, 160): Published(30, 1.66, 55.7, 10.5),
    (0.35, 128): Published(20, 1.66, 50.8, 6.9),
    (0.35, 96): Published(11, 1.66, 45.5, 4.5),
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never below 90% of `value` (the reference rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Layer:
    """One TFLite op of the network. Its output tensor is named after the layer."""

    op: str  # "conv", "depthwise", "add", "mean", "fc", "softmax"
    name: str
    inputs: tuple[str, ...]
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    relu6: bool = False
    in_size: int = 1  # spatial side of the input feature map
    out_size: int = 1

    @property
    def macs(self) -> int:
        if self.op == "conv":
            return self.out_size**2 * self.kernel**2 * self.in_channels * self.out_channels
        if self.op == "depthwise":
            return self.out_size**2 * self.kernel**2 * self.out_channels
        if self.op == "fc":
            return self.in_channels * self.out_channels
        return 0

    @property
    def params(self) -> int:
        """Weights plus bias, batch norm folded into them."""
        if self.op == "conv":
            return self.kernel**2 * self.in_channels * self.out_channels + self.out_channels
        if self.op == "depthwise":
            return self.kernel**2 * self.out_channels + self.out_channels
        if self.op == "fc":
            return self.in_channels * self.out_channels + self.out_channels
        return 0


@dataclass(frozen=True)
class Variant:
    width: float
    resolution: int
    num_classes: int = NUM_CLASSES
    expansion: int = EXPANSION

    def __post_init__(self):
        lo, hi = WIDTH_RANGE
        if not lo <= self.width <= hi:
            raise UserError(
                f"Width multiplier {self.width} is out of range: MobileNetV2 variants take a width "
                f"between {lo} and {hi} (the published ones are 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)."
            )
        lo, hi = RESOLUTION_RANGE
        if not (isinstance(self.resolution, int) and lo <= self.resolution <= hi):
            raise UserError(
                f"Input resolution {self.resolution} is out of range: use a whole number of pixels "
                f"between {lo} and {hi} (the published ones are 96, 128, 160, 192 and 224)."
            )
        if not (isinstance(self.num_classes, int) and 1 <= self.num_classes <= 100_000):
            raise UserError(f"--classes {self.num_classes}: the classifier takes 1 to 100000 classes.")
        lo, hi = EXPANSION_RANGE
        if not (isinstance(self.expansion, int) and lo <= self.expansion <= hi):
            raise UserError(f"--expansion {self.expansion} is out of range: the paper explores expansion factors "
                            f"{lo} to {hi} (whole numbers; 6 is Table 2's).")

    @property
    def tag(self) -> str:
        knobs = (f"_t{self.expansion}" if self.expansion != EXPANSION else "") + \
            (f"_c{self.num_classes}" if self.num_classes != NUM_CLASSES else "")
        return f"{self.width:g}_{self.resolution}{knobs}"

    @property
    def layers(self) -> tuple[Layer, ...]:
        return build_layers(self.width, self.resolution, self.num_classes, self.expansion)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def is_official(self) -> bool:
        return (self.width, self.resolution) in OFFICIAL_TABLE and \
            (self.num_classes, self.expansion) == (NUM_CLASSES, EXPANSION)


def _same_out(size: int, stride: int) -> int:
    return -(-size // stride)


def build_layers(width: float, resolution: int, num_classes: int, expansion: int = EXPANSION) -> tuple[Layer, ...]:
    """The op list of MobileNetV2 at this width and resolution, in execution order; `expansion`
    replaces Table 2's t = 6 (the first bottleneck keeps t = 1)."""
    layers: list[Layer] = []
    size = resolution
    channels = make_divisible(STEM_CHANNELS * width)
    out = _same_out(size, 2)
    layers.append(Layer("conv", "stem", ("input",), 3, channels, 3, 2, True, size, out))
    size, current = out, "stem"
    index = 0
    for table_expansion, base_channels, repeats, first_stride in BOTTLENECKS:
        t = expansion if table_expansion == EXPANSION else table_expansion
        out_channels = make_divisible(base_channels * width)
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            prefix = f"block{index}"
            block_input, in_channels = current, channels
            hidden = in_channels * t
            if t != 1:
                layers.append(
                    Layer("conv", f"{prefix}_expand", (current,), in_channels, hidden, 1, 1, True, size, size)
                )
                current = f"{prefix}_expand"
            out = _same_out(size, stride)
            layers.append(
                Layer("depthwise", f"{prefix}_depthwise", (current,), hidden, hidden, 3, stride, True, size, out)
            )
            size = out
            layers.append(
                Layer("conv", f"{prefix}_project", (f"{prefix}_depthwise",), hidden, out_channels, 1, 1, False, size, size)
            )
            current = f"{prefix}_project"
            if stride == 1 and in_channels == out_channels:
                layers.append(
                    Layer("add", f"{prefix}_add", (block_input, current), out_channels, out_channels, in_size=size, out_size=size)
                )
                current = f"{prefix}_add"
            channels = out_channels
            index += 1
    last = make_divisible(LAST_CHANNELS * width) if width > 1.0 else LAST_CHANNELS
    layers.append(Layer("conv", "head", (current,), channels, last, 1, 1, True, size, size))
    layers.append(Layer("mean", "pool", ("head",), last, last, in_size=size))
    layers.append(Layer("fc", "logits", ("pool",), last, num_classes))
    layers.append(Layer("softmax", "probabilities", ("logits",), num_classes, num_classes))
    return tuple(layers)


def official_variants() -> list[Variant]:
    """The 22 published checkpoints, widest and largest first."""
    return [Variant(w, r) for (w, r) in sorted(OFFICIAL_TABLE, reverse=True)]
