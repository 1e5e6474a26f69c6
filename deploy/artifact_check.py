"""Check a built artifact against the references on this host (LiteRT, the float64 pass, TFLite's
reference kernels): run it in a session, here or on a device, on several inputs. The library part of
deploy/check.py (mnv2-check), used by the sweep and by classify --check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mnv2_edge.compile.generation.images import model_inputs
from mnv2_edge.compile.artifacts.manifest import LIBRARY, MODEL_COPY, Manifest
from mnv2_edge.deploy import runner
from mnv2_edge.deploy.reference import Reference, reference_outputs
from mnv2_edge.deploy.verify import OutputCheck, check_outputs, pool_litert_error

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
        from mnv2_edge.compile.frontend.tflite_file import read_model
        from mnv2_edge.compile.frontend.integer import output_tolerances

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
