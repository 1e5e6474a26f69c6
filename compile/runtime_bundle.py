"""The TVM runtime libraries an app ships beside model.so, for the model's CPU architecture.

aarch64 Linux: taken from the aarch64 apache-tvm and apache-tvm-ffi wheels (pip download, cached).
x86_64: the runtime of this installation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from compile.errors import UserError
from compile.paths import CACHE_ROOT

CACHE = CACHE_ROOT / "runtime-wheels"
# Files in the wheels that an app needs at run time (the compiler library is not one of them).
RUNTIME_FILES = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so")
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
            f"registry: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'pip failed'}. "
            f"Check the network, or put the wheels in {folder}."
        )
    return [next(iter(sorted(folder.glob(f"{prefix}*.whl")))) for prefix in wanted]


def bundle(out_dir: Path, machine: str, progress=print) -> list[Path]:
    """Copy the runtime libraries for `machine` into out_dir/runtime/; returns their paths."""
    target = Path(out_dir) / "runtime"
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    if machine == os.uname().machine:
        import tvm
        import tvm_ffi

        roots = {"tvm": Path(tvm.__file__).parent, "tvm_ffi": Path(tvm_ffi.__file__).parent}
        for member in RUNTIME_FILES:
            package, rest = member.split("/", 1)
            copied.append(Path(shutil.copy2(roots[package] / rest, target)))
    elif machine in WHEEL_PLATFORMS:
        for wheel in _wheels_for(machine):
            with zipfile.ZipFile(wheel) as archive:
                for member in RUNTIME_FILES:
                    if member in archive.namelist():
                        dest = target / Path(member).name
                        dest.write_bytes(archive.read(member))
                        copied.append(dest)
    else:
        raise UserError(
            f"No prebuilt TVM runtime exists for {machine} on the package registry (only x86_64 and "
            f"aarch64 wheels do); build libtvm_runtime.so for the board from TVM's source."
        )
    progress(f"[runtime] {', '.join(p.name for p in copied)} -> {target}")
    return copied
