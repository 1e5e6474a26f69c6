"""The main job: device profiles, cross-compiled artifacts, toolchains, OpenCL kernels."""

import json
import os
import re
import subprocess

import pytest
from conftest import assert_clean_error, run_cli

from mnv2_edge.compile import threads
from mnv2_edge.compile.schedules import tuning
from mnv2_edge.compile.artifacts.artifact import elf_machine, kernel_names
from mnv2_edge.compile.frontend.convert import load_relax
from mnv2_edge.compile.artifacts.manifest import Manifest
from mnv2_edge.deploy import board_server
from mnv2_edge.targets.profiles import load_profile, profile_names

REQUIRED_PROFILES = {"arm_cpu", "rasp4b", "rasp3b", "rk3399", "android-arm64", "mali", "adreno", "host"}


def test_profiles_are_data_with_what_a_build_needs():
    assert REQUIRED_PROFILES <= set(profile_names())
    for name in profile_names():
        profile = load_profile(name)
        assert profile.description and profile.rpc_key
        assert profile.cpu_target["num-cores"] >= 1
        target = profile.tvm_target()  # what TVM makes of the data file: the same kind, triple and cores
        cpu = target.host if profile.is_gpu else target
        assert target.kind.name == profile.target["kind"]
        assert str(cpu.attrs.get("mtriple", "")) == profile.cpu_target.get("mtriple", "")
        assert int(cpu.attrs["num-cores"]) == profile.cpu_target["num-cores"]


def test_host_profile_is_detected():
    host = load_profile("host")
    assert host.target["mcpu"] not in ("", "generic")
    assert host.target["num-cores"] == os.cpu_count()


def test_list_targets_and_unknown_target():
    listed = run_cli("compile/build.py", "--list-targets", "--json")
    assert REQUIRED_PROFILES <= {p["name"] for p in json.loads(listed.stdout)}
    result = run_cli("compile/build.py", "--target", "pixel99")
    assert_clean_error(result, "pixel99", "arm_cpu", "rasp4b", "adreno")


def build(tmp_path, *flags, env=None):
    result = run_cli("compile/build.py", "--out", tmp_path, *flags, env=env)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_main_job_writes_an_aarch64_library_and_manifest(tmp_path):
    result = build(tmp_path, "--target", "arm_cpu", "--width", "1.0")
    assert "[compile]" in result.stdout and "[done]" in result.stdout  # a progress line per stage
    assert "[tuning] none" in result.stdout and "default schedules by rule" in result.stdout  # never in silence
    out = tmp_path / "arm_cpu" / "mnv2_1_224_float32"
    assert elf_machine(out / "model.so") == "aarch64"
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["schema"] == "mnv2-edge/manifest/2" and raw["model"]["file"] == "model.tflite"
    assert str(tmp_path) not in json.dumps(raw)  # relative paths only: the folder can move to a board
    manifest = Manifest.read(out)
    variant = manifest.model.variant
    assert (variant.width, variant.resolution, variant.dtype) == (1.0, 224, "float32")
    # The paper's Table 3 row for MobileNetV2 1.0/224: 300M multiply-adds, 3.4M parameters.
    assert abs(variant.macs - 300e6) <= 0.01 * 300e6 and abs(variant.params - 3.4e6) <= 0.03 * 3.4e6
    assert manifest.target.target["mtriple"] == "aarch64-linux-gnu"
    assert manifest.target.target["num-cores"] == 4 and manifest.target.profile == "arm_cpu"
    assert manifest.inputs[0].shape == [1, 224, 224, 3]
    assert manifest.outputs[0].shape == [1, 1000]
    assert manifest.library.size_bytes == (out / "model.so").stat().st_size
    assert len(manifest.model.sha256) == 64 and manifest.tvm_version.startswith("0.27")
    assert {"database", "tasks", "tuned_tasks"} <= set(manifest.tuning)
    # What an app needs: the VM's calls, the runtime, the board's cores, a picture's preprocessing.
    app = manifest.app
    assert app.runtime == "relax-vm" and app.entry == "main" and app.threads == 4 and app.device == "cpu"
    # Idle pool workers sleep soon after an inference (compile/threads.py); the board's server is told
    # the same, from its own copy of the number (it imports nothing of the project).
    assert app.thread_pool_spin_count == threads.SPIN_COUNT == board_server.SPIN_COUNT < 300000
    assert app.preprocess.value_range == (-1.0, 1.0) and app.labels is None  # generated: no class names
    # Each kernel got the rule of its kind, as the tuner classifies kernels (by the weight's shape).
    tasks = tuning.classified_tasks(load_relax(out / "model.tflite")[0], load_profile("arm_cpu").tvm_target())
    # The convs have one rule each; the rest (the classifier, the mean, softmax, the input's pad)
    # have theirs, none of the convs'.
    rules_of_kind = {"pointwise": {"Pointwise"}, "depthwise": {"Depthwise"}, "stem": {"DirectConv"},
                     "other": {"Dense", "Elementwise", "Pooling"}}
    assert len(manifest.schedules) == len(tasks) == 33
    for task, kind in tasks:
        assert manifest.schedules[task.task_name] in rules_of_kind[kind], (task.task_name, kind)
    assert sorted(set(manifest.schedules.values())) == ["Dense", "Depthwise", "DirectConv", "Elementwise",
                                                            "Pointwise", "Pooling"]
    again = build(tmp_path, "--target", "arm_cpu", "--width", "1.0")
    assert "[skip]" in again.stdout  # dist/ is reused


@pytest.mark.slow
@pytest.mark.parametrize("target,machine", [("rasp3b", "arm"), ("rasp4b", "aarch64"), ("rk3399", "aarch64")])
def test_board_targets_link_for_their_architecture(target, machine, tmp_path):
    build(tmp_path, "--target", target, "--width", "0.35", "--res", "96")
    assert elf_machine(tmp_path / target / "mnv2_0.35_96_float32" / "model.so") == machine


def _dynamic_section(library) -> str:
    return subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_android_library_links_as_android_needs_without_ndk(tmp_path):
    """No Android device or bionic here to load it: the checks are what Android's loader demands of a
    library (a shared object, no text relocations, libc and libm by soname)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NDK_CC", "ANDROID_NDK_HOME")}
    built = run_cli("compile/build.py", "--out", tmp_path, "--target", "android-arm64", "--width", "0.35",
                    "--res", "96", env={**env, "TVM_NDK_CC": "", "ANDROID_NDK_HOME": ""})
    assert built.returncode == 0, built.stderr
    library = tmp_path / "android-arm64" / "mnv2_0.35_96_float32" / "model.so"
    assert elf_machine(library) == "aarch64"
    dynamic = _dynamic_section(library)
    assert "TEXTREL" not in dynamic  # Android refuses text relocations
    assert re.search(r"NEEDED.*\[libc\.so\]", dynamic) and re.search(r"NEEDED.*\[libm\.so\]", dynamic)
    header = subprocess.run(["readelf", "-h", str(library)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Type:\s+DYN", header)


@pytest.mark.slow
def test_android_uses_the_ndk_compiler_when_set(tmp_path):
    """TVM_NDK_CC names the NDK's clang; a wrapper standing in for it records that it was called."""
    marker = tmp_path / "ndk-called"
    wrapper = tmp_path / "aarch64-linux-android24-clang"
    wrapper.write_text(f"#!/bin/sh\ntouch {marker}\nexec clang --target=aarch64-linux-android24 "
                       f"-fuse-ld=lld -nostdlib \"$@\"\n")
    wrapper.chmod(0o755)
    built = run_cli("compile/build.py", "--out", tmp_path, "--target", "android-arm64", "--width", "0.35",
                    "--res", "96", env={"TVM_NDK_CC": str(wrapper)})
    assert built.returncode == 0, built.stderr
    assert marker.exists()


def test_missing_cross_toolchain_names_the_package(tmp_path):
    result = run_cli("compile/build.py", "--out", tmp_path, "--target", "rasp3b", "--width", "0.35",
                     "--res", "96", env={"PATH": str(tmp_path)})
    assert_clean_error(result, "arm-linux-gnueabihf-gcc", "apt-get install gcc-arm-linux-gnueabihf")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["mali", "adreno"])
def test_opencl_kernels_compile_with_a_real_opencl_compiler(target, tmp_path):
    import pyopencl as cl  # a declared test dependency: missing, it must fail, not skip
    build(tmp_path, "--target", target, "--width", "0.35", "--res", "96")
    out = tmp_path / target / "mnv2_0.35_96_float32"
    assert elf_machine(out / "model.so") == "aarch64"
    source = (out / "kernels.cl").read_text()
    names = kernel_names(source)
    assert len(names) == len(set(names)) >= 25, names  # each distinct fused conv, pool, dense, softmax
    manifest = Manifest.read(out)
    assert manifest.kernels.count == len(names) and manifest.app.device == "opencl"
    assert manifest.app.thread_pool_spin_count is None  # no CPU thread pool runs the kernels
    platforms = [p for p in cl.get_platforms() if "portable" in p.name.lower() or "pocl" in p.name.lower()]
    assert platforms, "POCL (Debian's pocl-opencl-icd) is not installed"
    context = cl.Context(platforms[0].get_devices())
    program = cl.Program(context, source).build(options=["-cl-std=CL2.0"])
    assert sorted(k.function_name for k in program.all_kernels()) == sorted(names)


@pytest.mark.slow
def test_host_build_checks_against_litert(tmp_path):
    """deploy/check.py builds for this machine and compares with LiteRT; a device target needs a way
    to reach the device (the same device flags as bench)."""
    result = run_cli("deploy/check.py", "--width", "0.35", "--res", "96", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert ": OK: worst error against float64" in result.stdout
    assert (tmp_path / "host" / "mnv2_0.35_96_float32" / "model.so").is_file()
    assert_clean_error(run_cli("deploy/check.py", "--target", "rasp4b", "--out", tmp_path), "give --rpc-tracker")
    assert not (tmp_path / "rasp4b").exists()  # refused before building


@pytest.mark.slow
def test_a_host_of_another_cpu_class_gets_default_schedules_and_is_told(tmp_path):
    """MNV2_HOST_CPU builds for another x86 CPU: for znver3 (AVX2) the AVX-512 host database is not
    applied, and the build says why in its [tuning] lines."""
    result = build(tmp_path, "--target", "host", "--width", "0.35", "--res", "96", env={"MNV2_HOST_CPU": "znver3"})
    assert "not for this CPU's class x86_64-avx2 (znver3)" in result.stdout, result.stdout
    assert "[tuning] none for host; 33/33 kernels got default schedules" in result.stdout
    manifest = Manifest.read(tmp_path / "host" / "mnv2_0.35_96_float32")
    assert manifest.target.target["mcpu"] == "znver3" and manifest.tuning["database"] is None
    bad = run_cli("compile/build.py", "--target", "host", "--out", tmp_path, env={"MNV2_HOST_CPU": "pentium9"})
    assert_clean_error(bad, "MNV2_HOST_CPU=pentium9")


def test_build_tune_and_bench_read_the_same_model_flags_the_same_way():
    from mnv2_edge.compile import build as build_cli, tune as tune_cli
    from mnv2_edge.deploy import bench as bench_cli

    flags = ["--width", "0.35,0.5", "--resolutions", "96,128", "--dtype", "float32,int8", "--out", "somewhere",
             "--tuning-log", "db", "--model", "a.tflite", "--model", "b.tflite"]
    parsed = [module.parse_args(flags) for module in (build_cli, tune_cli, bench_cli)]
    chosen = {(tuple(a.widths), tuple(a.resolutions), tuple(a.dtypes), str(a.out), str(a.tuning_log),
               tuple(map(str, a.models))) for a in parsed}
    assert chosen == {((0.35, 0.5), (96, 128), ("float32", "int8"), "somewhere", "db", ("a.tflite", "b.tflite"))}
    assert all(module.parse_args(["--all-variants"]).all_official for module in (build_cli, tune_cli, bench_cli))
    assert bench_cli.parse_args(["--results", "r"]).results.name == "r"
    # Every combination is a model of its own, labelled by variant and dtype.
    from mnv2_edge.compile.artifacts.pipeline import ModelSelection

    labels = [label for label, _ in ModelSelection([0.35, 0.5], [96], ["float32", "int8"]).requests(target="host")]
    assert labels == ["0.35_96 float32", "0.5_96 float32", "0.35_96 int8", "0.5_96 int8"]
