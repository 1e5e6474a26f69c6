"""Classify pictures with a model built by mnv2-edge, on a board that has Python.

    python3 classify.py ARTIFACT_DIR IMAGE [IMAGE ...] [--top K] [--threads N] [--save-input FILE]

Needs only NumPy, Pillow and the TVM runtime (`pip install apache-tvm numpy pillow`; set
TVM_USE_RUNTIME_LIB=1 on a board that lacks the compiler library). Everything about the model comes
from ARTIFACT_DIR/manifest.json ("inputs", "outputs", "app": see compile/artifacts/manifest.py), so the script
is copied to the board as it is, without the rest of the project. --save-input writes the first
image's input tensor as raw bytes, to check the result against another runtime on the same input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def picture_tensor(path: Path, spec: dict, preprocess: dict) -> np.ndarray:
    """manifest app.preprocess: RGB, bilinear resize to the input's H x W, 0..255 onto value_range,
    then quantized with the input's scale and zero point when the input is integer."""
    _, height, width, _ = spec["shape"]
    with Image.open(path) as img:
        rgb = np.asarray(img.convert(preprocess["color"]).resize((width, height), Image.BILINEAR), np.float64)
    lo, hi = preprocess["value_range"]
    x = lo + rgb / 255.0 * (hi - lo)
    if spec["dtype"] != "float32":
        info = np.iinfo(spec["dtype"])
        x = np.clip(np.round(x / spec["scale"][0]) + spec["zero_point"][0], info.min, info.max)
    return x.astype(spec["dtype"])[None]


def scores(output: np.ndarray, spec: dict) -> np.ndarray:
    values = output.reshape(-1).astype(np.float64)
    if spec["dtype"] != "float32" and spec["scale"]:
        values = (values - spec["zero_point"][0]) * spec["scale"][0]
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--threads", type=int, help="default: the manifest's app.threads")
    parser.add_argument("--save-input", type=Path)
    args = parser.parse_args(argv)
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    app = manifest["app"]
    if app["runtime"] != "relax-vm" or app["device"] != "cpu" or app["preprocess"] is None:
        print("error: this example runs CPU models whose input is a picture", file=sys.stderr)
        return 2
    threads = args.threads or app["threads"]
    if threads:  # read by TVM's thread pool when it starts: before the first inference
        os.environ["TVM_NUM_THREADS"] = str(threads)
    if app.get("thread_pool_spin_count"):  # idle workers sleep soon after an inference, freeing the core
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(app["thread_pool_spin_count"]))
    import tvm
    from tvm.runtime.vm import VirtualMachine  # the runtime's VM: no compiler needed on the board

    labels = (args.artifact / app["labels"]).read_text().splitlines() if app["labels"] else []
    device = tvm.cpu()
    vm = VirtualMachine(tvm.runtime.load_module(str(args.artifact / manifest["library"]["file"])), device)
    for index, image in enumerate(args.images):
        x = picture_tensor(image, manifest["inputs"][0], app["preprocess"])
        if index == 0 and args.save_input:
            x.tofile(args.save_input)
        vm.set_input(app["entry"], tvm.runtime.tensor(x, device))
        vm.invoke_stateful(app["entry"])
        outputs = vm.get_outputs(app["entry"])
        first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        values = scores(first.numpy(), manifest["outputs"][0])
        ranked = sorted(range(len(values)), key=lambda c: (-values[c], c))[: args.top]
        threads_run = tvm.get_global_func("runtime.NumThreads")()
        print(f"{image}: {x.shape[2]}x{x.shape[1]} input, {threads_run} threads")
        for rank, c in enumerate(ranked, 1):
            print(f"{rank}\t{c}\t{values[c]:.6f}\t{labels[c] if c < len(labels) else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
