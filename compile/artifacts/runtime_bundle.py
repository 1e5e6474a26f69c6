"""The TVM runtime libraries an app ships beside model.so (runtime/), for the target's platform.

Only Linux (glibc) CPU targets have a prebuilt runtime that can load their model.so: aarch64 from the
aarch64 apache-tvm and apache-tvm-ffi wheels (pip download, cached), x86_64 from this installation.
Android (bionic, no glibc) and OpenCL targets (the wheels' runtime has no OpenCL module loader) are
refused with what they need, rather than given libraries that cannot load.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from mnv2_edge.targets.errors import UserError, last_line
from mnv2_edge.compile.artifacts.manifest import RUNTIME_DIR, RUNTIME_LIBRARIES
from mnv2_edge.compile.paths import CACHE_ROOT
from mnv2_edge.targets.profiles import Profile

CACHE = CACHE_ROOT / "runtime-wheels"
# The manifest's runtime libraries, where the wheels keep them (the compiler library is not needed).
RUNTIME_FILES = tuple(f"{'tvm_ffi' if 'ffi' in name else 'tvm'}/lib/{name}" for name in RUNTIME_LIBRARIES)
WHEEL_PLATFORMS = {"aarch64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64")}
PACKAGES = ("apache-tvm", "apache-tvm-ffi")


def _wheels_for(machine: str) -> list[Path]:
    folder = CACHE / machine
    pins = [f"{name}=={metadata.version(name)}" for name in PACKAGES]
    wanted = [f"{name.replace('-', '_')}-{metadata.version(name)}-" for name in PACKAGES]
    found = [next(iter(sorted(folder.glob(f"{prefix}*.whl"))), None) for prefix in wanted]
    if all(found):
        return found
    platforms = [arg for p in WHEEL_PLATFORMS[machine] for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               *platforms, "--python-version", "3.11", "--implementation", "cp", "-d", str(folder), *pins]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(
            f"Could not fetch the {machine} TVM runtime wheels ({', '.join(pins)}) from the package "
            f"registry: {last_line(done.stderr, 'pip failed')}. "
            f"Check the network, or put the wheels in {folder}."
        )
    return [next(iter(sorted(folder.glob(f"{prefix}*.whl")))) for prefix in wanted]


def check_bundle(profile: Profile) -> None:
    """Refuse, before any build, a target that no prebuilt runtime can serve."""
    needs = []
    if profile.link.get("kind") == "android":
        needs.append("built with the Android NDK (Android has no glibc: the Linux wheels' runtime needs "
                     "libc.so.6 and ld-linux-aarch64.so.1)")
    if profile.is_gpu:
        needs.append("built with OpenCL enabled (USE_OPENCL=ON; the wheels' runtime cannot load the "
                     "OpenCL kernels in model.so)")
    if needs:
        raise UserError(
            f"--bundle-runtime: no prebuilt TVM runtime can load a {profile.name} model.so; it needs "
            f"libtvm_runtime.so and libtvm_ffi.so {' and '.join(needs)}, from TVM's source (its "
            f"apps/android_rpc and docs on cross-compiling the runtime show how). Build without "
            f"--bundle-runtime and ship model.so with that runtime.")
    if profile.machine != os.uname().machine and profile.machine not in WHEEL_PLATFORMS:
        raise UserError(
            f"--bundle-runtime: no prebuilt TVM runtime exists for {profile.machine} on the package registry "
            f"(only x86_64 and aarch64 wheels do); build libtvm_runtime.so for the board from TVM's source.")


def bundle(out_dir: Path, profile: Profile, progress=print) -> list[Path]:
    """Copy the runtime libraries for the profile into out_dir/runtime/; returns their paths."""
    check_bundle(profile)
    machine = profile.machine
    target = Path(out_dir) / RUNTIME_DIR
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    if machine == os.uname().machine:
        import tvm
        import tvm_ffi

        roots = {"tvm": Path(tvm.__file__).parent, "tvm_ffi": Path(tvm_ffi.__file__).parent}
        for member in RUNTIME_FILES:
            package, rest = member.split("/", 1)
            copied.append(Path(shutil.copy2(roots[package] / rest, target)))
    else:
        for wheel in _wheels_for(machine):
            with zipfile.ZipFile(wheel) as archive:
                for member in RUNTIME_FILES:
                    if member in archive.namelist():
                        dest = target / Path(member).name
                        dest.write_bytes(archive.read(member))
                        copied.append(dest)
    progress(f"[runtime] {', '.join(p.name for p in copied)} -> {target}")
    return copied
