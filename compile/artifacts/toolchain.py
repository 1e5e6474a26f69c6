"""How a profile's .so is linked: the host's cc, a Debian cross gcc, the Android NDK, or clang + lld.

Returns the `fcompile` that TVM's `export_library` takes, or raises UserError naming what to install.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.paths import CACHE_ROOT
from mnv2_edge.targets.profiles import Profile

STUB_DIR = CACHE_ROOT / "android-stubs"


def _require(tool: str, apt: str, why: str):
    path = shutil.which(tool)
    if path is None:
        raise UserError(
            f"The toolchain for {why} is missing: `{tool}` is not on PATH. Install it with "
            f"`apt-get install {apt}` (the README's set-up does this), then run the build again."
        )
    return path


def _ndk_compiler(clang_target: str) -> str | None:
    if os.environ.get("TVM_NDK_CC"):
        return os.environ["TVM_NDK_CC"]
    ndk = os.environ.get("ANDROID_NDK_HOME")
    if not ndk:
        return None
    found = sorted(glob.glob(f"{ndk}/toolchains/llvm/prebuilt/*/bin/{clang_target}-clang"))
    if not found:
        raise UserError(
            f"ANDROID_NDK_HOME is {ndk}, but it has no toolchains/llvm/prebuilt/*/bin/{clang_target}-clang. "
            f"Point it at an NDK r21 or newer, or unset it to link with clang + lld."
        )
    return found[0]


def _android_stubs(clang: str, clang_target: str) -> Path:
    """Empty libc.so and libm.so to link against, so the .so records DT_NEEDED on Android's own."""
    out = STUB_DIR / clang_target
    if all((out / f"lib{name}.so").exists() for name in ("c", "m")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    empty = out / "empty.c"
    empty.write_text("")
    for name in ("c", "m"):
        done = subprocess.run(
            [clang, f"--target={clang_target}", "-fuse-ld=lld", "-nostdlib", "-shared", "-fPIC",
             f"-Wl,-soname,lib{name}.so", "-o", str(out / f"lib{name}.so"), str(empty)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise UserError(
                f"Linking the Android stub lib{name}.so with {clang} --target={clang_target} failed ({tail}). "
                f"It needs clang and lld (`apt-get install clang lld`), or set TVM_NDK_CC to the NDK's clang."
            )
    return out


def fcompile_for(profile: Profile):
    """The `fcompile` for export_library, or None for this machine's default cc."""
    from tvm.support import cc

    link = profile.link
    kind = link.get("kind", "host")
    if kind == "host":
        _require(cc.get_cc() or "cc", "gcc", "this machine")
        return None
    if kind == "gcc":
        return cc.cross_compiler(_require(link["compiler"], link["apt"], f"target {profile.name}"))
    if kind == "android":
        clang_target = link["clang_target"]
        ndk = _ndk_compiler(clang_target)
        if ndk:
            return cc.cross_compiler(ndk, options=["-shared", "-fPIC", "-static-libstdc++"])
        clang = _require("clang", link["apt"], f"target {profile.name} (no Android NDK set)")
        _require("ld.lld", link["apt"], f"target {profile.name} (no Android NDK set)")
        stubs = _android_stubs(clang, clang_target)
        # No -z notext: Android refuses text relocations.
        return cc.cross_compiler(
            clang,
            options=[f"--target={clang_target}", "-fuse-ld=lld", "-nostdlib", "-shared", "-fPIC",
                     f"-L{stubs}", "-lc", "-lm"],
        )
    raise UserError(f"Device profile {profile.name} has an unknown link kind {kind!r} (host, gcc or android).")
