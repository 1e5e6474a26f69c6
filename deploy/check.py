"""Run a built artifact in a session and check it against LiteRT on the host, on several inputs.

As a command: build models for this machine (as compile/build.py does, skipped when dist/ is up to
date), run each here with TVM and compare every output with LiteRT's on three inputs.

    python deploy/check.py --width 0.35 --res 96 [--dtype float32,int8]
    python deploy/check.py --model my_model.tflite [--int8-lowering float]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # `python deploy/check.py` puts deploy/ first on sys.path; the project root takes its place.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from compile.images import model_inputs  # noqa: E402
from compile.manifest import LIBRARY, MODEL_COPY, Manifest  # noqa: E402
from deploy import runner  # noqa: E402
from deploy.reference import Reference, reference_outputs  # noqa: E402
from deploy.verify import OutputCheck, check_outputs, pool_litert_error, summarize  # noqa: E402

DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class ArtifactCheck:
    artifact: str
    checks: list[OutputCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {c.problem}" for c in self.checks if not c.ok]


def litert_references(model: Path, input_sets, lowering: str = "") -> list[Reference]:
    """The references on this host for each input set (LiteRT, float64, TFLite's reference kernels).
    lowering: the manifest's; "integer" holds integer outputs to TFLite's reference kernels."""
    tolerance = None
    if lowering == "integer":
        from compile.frontend import read_model
        from compile.integer_frontend import output_tolerances

        tolerance = output_tolerances(read_model(model)[0])
    return reference_outputs(model, input_sets, tolerance)


def compare_with_litert(model: Path, output_names: list[str], input_sets, device_outputs,
                        lowering: str = "") -> list[OutputCheck]:
    """Check the device's outputs for each input set against the references on this host."""
    checks = []
    for reference, got in zip(litert_references(model, input_sets, lowering), device_outputs):
        checks += check_outputs(output_names, reference, got)
    return pool_litert_error(checks)


def check_artifact(out_dir: str | Path, session, seeds=DEFAULT_SEEDS, inputs=None) -> ArtifactCheck:
    """Load out_dir/model.so in the session and compare each output with LiteRT's.

    `inputs` (a list of input lists) replaces the seeded synthetic inputs, e.g. with real photos.
    """
    out_dir = Path(out_dir)
    manifest = Manifest.read(out_dir)
    output_names = [t.name for t in manifest.outputs]
    device = session.device(manifest.app.device)
    vm = runner.load_vm(session.load(out_dir / LIBRARY, f"{manifest.name}.so"), device)
    input_sets = inputs if inputs is not None else [model_inputs(manifest.inputs, s) for s in seeds]
    outputs = [runner.run(vm, device, values) for values in input_sets]
    return ArtifactCheck(str(out_dir), compare_with_litert(out_dir / MODEL_COPY, output_names, input_sets, outputs,
                                                           manifest.model.lowering))


def parse_args(argv=None) -> argparse.Namespace:
    from compile.cli_common import add_lowering_flags, add_model_flags

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser, default_target="host")
    add_lowering_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from compile import pipeline
    from compile.cli_common import model_selection
    from compile.errors import UserError
    from compile.paths import DEFAULT_OUT
    from deploy.session import LocalSession

    args = parse_args(argv)
    if args.target != "host":
        raise UserError(f"check.py runs the models on this machine, so it takes --target host, not {args.target}; "
                        f"check a build for a device on the device: deploy/bench.py --target {args.target} "
                        f"with --rpc-tracker, --ssh or --emulated-board.")
    requests = model_selection(args).requests(target="host", int8_lowering=args.int8_lowering,
                                              tuning_log=args.tuning_log, no_tuning=args.no_tuning,
                                              out=args.out or DEFAULT_OUT)
    failed = 0
    with LocalSession() as session:
        for out_dir in pipeline.build_each(requests):
            result = check_artifact(out_dir, session)
            print(f"[check] {out_dir}: {'OK' if result.ok else 'MISMATCH'}: {summarize(result.checks)}"
                  + ("" if result.ok else "; " + "; ".join(result.problems)))
            failed += not result.ok
    return 1 if failed else 0


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    from compile.cli_common import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
