"""Build MobileNetV2 variants (or any .tflite) into deployable TVM artifacts.

    python compile/build.py --target arm_cpu --width 1.0
    python compile/build.py --target rasp4b --width 0.35,0.5 --res 96,128 --dtype float32,int8
    python compile/build.py --target rasp5 --model my_model.tflite --labels labels.txt --bundle-runtime
    python compile/build.py --list-variants [--json]
    python compile/build.py --list-targets

To run a host build here and check it against LiteRT: python deploy/check.py (the same model flags).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from mnv2_edge.compile.cli_common import add_lowering_flags, add_model_flags, run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser, default_target="arm_cpu")
    add_lowering_flags(parser)
    parser.add_argument("--labels", type=Path, metavar="FILE.txt",
                        help="class names, one per line in output order: shipped as labels.txt for apps")
    parser.add_argument("--input-range", default="-1,1", metavar="LO,HI",
                        help="what the model's input expects for pixel values 0..255, for apps (default -1,1: "
                             "MobileNetV2's x / 127.5 - 1)")
    parser.add_argument("--bundle-runtime", action="store_true",
                        help="copy the TVM runtime libraries an app needs into runtime/ beside the model "
                             "(Linux x86_64 and aarch64 targets; see the README's Ship it)")
    parser.add_argument("--rebuild", action="store_true", help="build again even when dist/ is up to date")
    parser.add_argument("--list-variants", action="store_true", help="print the 22 published variants")
    parser.add_argument("--list-targets", action="store_true", help="print the device profiles")
    parser.add_argument("--describe", type=Path, metavar="FILE.tflite",
                        help="check a .tflite file and print its inputs, outputs and ops")
    parser.add_argument("--json", action="store_true", help="with --list-*: print JSON")
    return parser.parse_args(argv)


def list_variants(as_json: bool) -> None:
    from mnv2_edge.compile.generation.variants import OFFICIAL_TABLE, official_variants

    rows = [{"width": v.width, "resolution": v.resolution, "macs": v.macs, "params": v.params}
            for v in official_variants()]
    if as_json:
        print(json.dumps(rows))
        return
    print(f"{'width':>5} {'res':>4} {'MMACs':>8} {'table':>6} {'Mparams':>8} {'table':>6}")
    for row in rows:
        published = OFFICIAL_TABLE[(row["width"], row["resolution"])]
        print(f"{row['width']:>5} {row['resolution']:>4} {row['macs'] / 1e6:>8.1f} {published.macs_m:>6} "
              f"{row['params'] / 1e6:>8.3f} {published.params_m:>6}")


def list_targets(as_json: bool) -> None:
    from mnv2_edge.targets.profiles import all_profiles

    profiles = all_profiles()
    if as_json:
        print(json.dumps([p.to_dict() for p in profiles], default=str))
        return
    for p in profiles:
        print(f"{p.name:<14} {p.description}")


def describe(path: Path, as_json: bool) -> None:
    from mnv2_edge.compile.artifacts import isolated
    from mnv2_edge.compile.frontend.convert import check_convertible
    from mnv2_edge.compile.frontend.tflite_file import describe as describe_model

    info = describe_model(path)
    # Also reports what TVM cannot convert; in a child, as converting enters TVM's native code.
    info.lowering = isolated.call(check_convertible, path, what=f"converting {path}", progress=lambda m: None)
    if as_json:
        print(json.dumps(info.to_dict()))
        return
    print(f"{path}: {info.size_bytes} bytes, sha256 {info.sha256[:16]}..., {info.subgraphs} subgraph(s)")
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for t in tensors:
            quant = f" scale {t.scale[0]:.6g} zero point {t.zero_point[0]}" if t.quantized else ""
            print(f"  {kind} {t.name}: {t.shape} {t.dtype}{quant}")
    print("  ops: " + ", ".join(f"{name} x{count}" for name, count in info.ops.items()))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_variants:
        list_variants(args.json)
        return 0
    if args.list_targets:
        list_targets(args.json)
        return 0
    if args.describe:
        describe(args.describe, args.json)
        return 0
    from mnv2_edge.compile.artifacts import pipeline, runtime_bundle
    from mnv2_edge.compile.cli_common import model_selection, parse_range
    from mnv2_edge.compile.paths import DEFAULT_OUT
    from mnv2_edge.targets.profiles import load_profile

    profile = load_profile(args.target)  # an unknown target fails before anything is generated
    if args.bundle_runtime:  # before building: a target no prebuilt runtime serves fails at once
        runtime_bundle.check_bundle(profile)
    requests = model_selection(args).requests(
        target=args.target, int8_lowering=args.int8_lowering, tuning_log=args.tuning_log, no_tuning=args.no_tuning,
        out=args.out or DEFAULT_OUT, rebuild=args.rebuild, labels=args.labels,
        value_range=parse_range(args.input_range, "--input-range"))
    for out_dir in pipeline.build_each(requests):
        if args.bundle_runtime:
            runtime_bundle.bundle(out_dir, profile)
    return 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()
