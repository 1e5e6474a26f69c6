"""Classify pictures with a built artifact, here or on a device through any session, as an app would:
preprocessing and labels from the manifest (compile/artifacts/manifest.py); optionally checked against LiteRT
on this machine with the same input tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.generation.images import picture_input
from mnv2_edge.compile.artifacts.manifest import LIBRARY, MODEL_COPY, Manifest
from mnv2_edge.deploy import runner
from mnv2_edge.deploy.verify import OutputCheck, top_k


@dataclass
class Prediction:
    image: str
    classes: list[int]
    scores: list[float]  # dequantized when the output is integer
    labels: list[str]
    litert_classes: list[int] | None = None  # with check: LiteRT's top-k on the same input
    checks: list[OutputCheck] = field(default_factory=list)  # with check: all outputs against LiteRT

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _scores(output: np.ndarray, spec) -> np.ndarray:
    values = output.astype(np.float64).ravel()
    return (values - spec.zero_point[0]) * spec.scale[0] if spec.quantized else values


def classify(out_dir: str | Path, images: list[Path], session, top: int = 5, check: bool = False,
             threads: int | None = None) -> list[Prediction]:
    """Top-`top` classes of each picture with out_dir's model in `session` (deploy.session)."""
    from mnv2_edge.deploy.artifact_check import litert_references
    from mnv2_edge.deploy.verify import check_outputs, pool_litert_error

    out_dir = Path(out_dir)
    manifest = Manifest.read(out_dir)
    if manifest.app.preprocess is None:
        shapes = ", ".join(f"{t.name} {t.shape}" for t in manifest.inputs)
        raise UserError(f"{manifest.name} does not take a picture (inputs: {shapes}); classify needs one NHWC "
                        f"input with 3 channels. Check other models with deploy/bench.py --model.")
    labels = (out_dir / manifest.app.labels).read_text().splitlines() if manifest.app.labels else []
    inputs = [[picture_input(image, manifest.inputs[0], manifest.app.preprocess)] for image in images]
    session.set_threads(threads or manifest.app.threads)
    device = session.device(manifest.app.device)
    vm = runner.load_vm(session.load(out_dir / LIBRARY, f"{manifest.name}.so"), device)
    outputs = [runner.run(vm, device, values) for values in inputs]
    predictions = []
    for image, values, got in zip(images, inputs, outputs):
        scores = _scores(got[0], manifest.outputs[0])
        classes = top_k(scores, top)
        predictions.append(Prediction(str(image), classes, [float(scores[c]) for c in classes],
                                      [labels[c] if c < len(labels) else "" for c in classes]))
    if check:  # LiteRT once per picture: its classes and the check come from the same run
        names = [t.name for t in manifest.outputs]
        references = litert_references(out_dir / MODEL_COPY, inputs, manifest.model.lowering)
        for prediction, reference, got in zip(predictions, references, outputs):
            prediction.litert_classes = top_k(_scores(reference.litert[0], manifest.outputs[0]), top)
            prediction.checks = pool_litert_error(check_outputs(names, reference, got))
    return predictions
