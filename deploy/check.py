"""Build models (as compile/build.py does, skipped when dist/ is up to date), run each with TVM here
or on a device, and compare every output with the references on this host (LiteRT, the float64
pass, TFLite's reference kernels) on three inputs. No timing: that is deploy/bench.py.

    python deploy/check.py --width 0.35 --res 96 [--dtype float32,int8]
    python deploy/check.py --model my_model.tflite [--int8-lowering float]
    python deploy/check.py --target arm_cpu --emulated-board --width 0.35 --res 96
    python deploy/check.py --target rasp4b --rpc-tracker 127.0.0.1:9190 --width 0.5 --res 128
"""

from __future__ import annotations

import argparse
import contextlib



def parse_args(argv=None) -> argparse.Namespace:
    from mnv2_edge.compile.cli_common import add_lowering_flags, add_model_flags
    from mnv2_edge.deploy.device_flags import add_device_flags

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser, default_target="host")
    add_lowering_flags(parser)
    add_device_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from mnv2_edge.compile.artifacts import pipeline
    from mnv2_edge.compile.cli_common import model_selection
    from mnv2_edge.compile.paths import DEFAULT_OUT
    from mnv2_edge.deploy.artifact_check import check_artifact
    from mnv2_edge.deploy.device_flags import endpoint_for
    from mnv2_edge.deploy.reference import litert_interpreter
    from mnv2_edge.deploy.session import LocalSession
    from mnv2_edge.deploy.verify import summarize
    from mnv2_edge.targets.profiles import load_profile

    args = parse_args(argv)
    litert_interpreter()  # the reference: say it is missing before any build, not after
    load_profile(args.target)  # an unknown target fails before anything starts
    requests = model_selection(args).requests(target=args.target, int8_lowering=args.int8_lowering,
                                              tuning_log=args.tuning_log, no_tuning=args.no_tuning,
                                              out=args.out or DEFAULT_OUT)
    failed = 0
    with contextlib.ExitStack() as stack:
        endpoint, label = endpoint_for(args, stack)  # a device target needs a way to reach the device
        out_dirs = pipeline.build_each(requests)
        session = stack.enter_context(LocalSession() if endpoint is None else endpoint.open())
        for out_dir in out_dirs:
            result = check_artifact(out_dir, session)
            where = f" on {label or session.board}" if endpoint is not None else ""
            print(f"[check] {out_dir}{where}: {'OK' if result.ok else 'MISMATCH'}: {summarize(result.checks)}"
                  + ("" if result.ok else "; " + "; ".join(result.problems)))
            failed += not result.ok
    return 1 if failed else 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    from mnv2_edge.compile.cli_common import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
