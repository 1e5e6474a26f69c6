"""An emulated Cortex-A board: the stock TVM RPC server in arm64 CPython under Debian's qemu-user.

Real aarch64 code runs on this x86 machine, no binfmt, chroot or multiarch. Provisioning (once,
cached under .cache/board/, idempotent): arm64 CPython and its libraries unpacked from Debian's
arm64 packages (a private apt configuration; the host's dpkg is never touched), and the aarch64
wheels of apache-tvm (runtime only) in a folder of its own. Emulated timings are for correctness
only, never for tuning or latency claims.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mnv2_edge.targets.errors import UserError
from mnv2_edge.compile.paths import CACHE_ROOT
from mnv2_edge.deploy import loopback

CACHE = CACHE_ROOT / "board"
ROOT = CACHE / "rootfs"  # arm64 files, found by qemu through QEMU_LD_PREFIX
SITE = CACHE / "site-packages"  # aarch64 wheels
LAUNCHER = CACHE / "python3-aarch64"
STATE = CACHE / "services.json"
KEY = "emulated-a72"
DEBS = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64")
# cloudpickle, psutil: TVM's RPC server; pillow: the Python example app (examples/python) on the board;
# ai-edge-litert: LiteRT timed on the board beside ours (1.4.0: 2.3.0's aarch64 wheel crashes under
# Debian 12's qemu-user 7.2).
EXTRA_WHEELS = ("cloudpickle", "psutil", "pillow", "ai-edge-litert==1.4.0")
WHEELS_READY = ("tvm", "cloudpickle", "psutil", "PIL", "ai_edge_litert")  # what the wheels put in SITE
READY_STAMP = CACHE / ".provisioned"


STEP_TIMEOUT_S = 900  # one provisioning step (a download of the board's packages and wheels)


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"Provisioning the emulated board timed out after {STEP_TIMEOUT_S} s while {what}: "
                        f"the package registry is slow or unreachable. Run the same command again later; "
                        f"finished downloads are kept.") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UserError(f"Provisioning the emulated board failed while {what}: {' / '.join(tail)}")


def _apt_options(apt_dir: Path) -> list[str]:
    return [
        "-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={apt_dir / 'sources.list.d'}",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::State::Status={apt_dir / 'status'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
        "-o", "Debug::NoLocking=1", "-o", "APT::Get::Download-Only=true",
    ]


def _debian_sources(apt_dir: Path) -> None:
    """The host's own Debian sources (not third-party ones), for arch arm64."""
    (apt_dir / "sources.list.d").mkdir(parents=True, exist_ok=True)
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        shutil.copy(deb822, apt_dir / "sources.list.d" / "debian.sources")
        (apt_dir / "sources.list").write_text("")
    else:
        legacy = Path("/etc/apt/sources.list").read_text() if Path("/etc/apt/sources.list").exists() else ""
        lines = [line for line in legacy.splitlines() if line.startswith("deb ") and "debian" in line]
        if not lines:
            raise UserError("No Debian apt sources on this machine (/etc/apt/sources.list.d/debian.sources).")
        (apt_dir / "sources.list").write_text("\n".join(lines) + "\n")


def _fetch_python(progress) -> None:
    apt_dir = CACHE / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "status").touch()
    _debian_sources(apt_dir)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise UserError("The emulated board needs Debian's apt-get and dpkg-deb.")
    progress("[board] apt-get update (arm64 package lists)")
    _run(["apt-get", *_apt_options(apt_dir), "update"], "reading the arm64 package lists")
    progress(f"[board] downloading arm64 {', '.join(DEBS)} and their dependencies")
    _run(["apt-get", *_apt_options(apt_dir), "install", "-y", "-q", *DEBS], "downloading arm64 packages")
    debs = sorted((apt_dir / "cache" / "archives").glob("*.deb"))
    progress(f"[board] unpacking {len(debs)} .debs into {ROOT}")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(ROOT)], f"unpacking {deb.name}")
    # Keep the host's x86 packages out of the arm64 interpreter's path: qemu falls back to host paths
    # that the prefix lacks.
    for shadow in ("usr/lib/python3/dist-packages", "usr/local/lib/python3.11/dist-packages",
                   "usr/lib/python3.11/dist-packages"):
        (ROOT / shadow).mkdir(parents=True, exist_ok=True)


def _fetch_wheels(progress) -> None:
    pins = [f"apache-tvm=={metadata.version('apache-tvm')}", f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
    progress(f"[board] aarch64 wheels: {', '.join(pins)}, {', '.join(EXTRA_WHEELS)}")
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target", str(SITE),
          "--only-binary=:all:", *platforms, "--python-version", "3.11", "--implementation", "cp",
          *pins, *EXTRA_WHEELS], "installing the aarch64 wheels")
    for unneeded in SITE.glob("tvm/lib/libtvm_compiler*.so"):  # the board only runs models
        unneeded.unlink()


def guest_environment() -> dict[str, str]:
    """What the board's python needs from qemu-aarch64's environment: its files, its wheels only."""
    return {"QEMU_LD_PREFIX": str(ROOT), "PYTHONPATH": str(SITE), "TVM_USE_RUNTIME_LIB": "1", "PYTHONNOUSERSITE": "1"}


def _launcher_text() -> str:
    settings = " ".join(f"{name}='{value}'" for name, value in guest_environment().items())
    return (
        "#!/bin/sh\n"
        "# arm64 CPython under qemu-user; -0 makes sys.executable this script, so workers re-enter qemu.\n"
        "# -cpu max: every Armv8 extension qemu has (the dot-product instructions of rasp5 builds too).\n"
        f"{settings} exec qemu-aarch64 -cpu max -0 '{LAUNCHER}' '{ROOT}/usr/bin/python3.11' \"$@\"\n"
    )


def provision(progress=print) -> Path:
    """Make the board ready (idempotent); returns the launcher of its python3."""
    wheels_ready = all((SITE / name).exists() for name in WHEELS_READY)
    if READY_STAMP.exists() and wheels_ready and LAUNCHER.exists() and LAUNCHER.read_text() == _launcher_text():
        return LAUNCHER
    if not shutil.which("qemu-aarch64"):
        raise UserError("The emulated board needs qemu-user: apt-get install qemu-user (the README's set-up does this).")
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "usr/bin/python3.11").exists():
        _fetch_python(progress)
    if not wheels_ready:
        _fetch_wheels(progress)
    LAUNCHER.write_text(_launcher_text())
    LAUNCHER.chmod(0o755)
    try:
        check = subprocess.run([str(LAUNCHER), "-c", "import platform, tvm; print(platform.machine())"],
                               capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise UserError("The emulated board's python did not start within 300 s under qemu-user: the machine "
                        "is overloaded or the board's files are damaged (delete .cache/board and run again).") from None
    if check.returncode != 0 or check.stdout.strip() != "aarch64":
        raise UserError(f"The emulated board's python does not start: {check.stderr.strip()[-400:]}")
    READY_STAMP.touch()
    progress(f"[board] ready: {LAUNCHER}")
    return LAUNCHER


def start(progress=print, key: str = KEY) -> loopback.Services:
    """Provision if needed, then a tracker and the board's RPC server on loopback; saved for stop()."""
    launcher = provision(progress)
    stop()
    services = loopback.Services()
    log_dir = CACHE / "logs"
    try:
        tracker = loopback.start_tracker(log_dir)
        services.items.append(tracker)
        services.save(STATE)
        progress(f"[board] tracker on {loopback.LOOPBACK}:{tracker.port}; starting the aarch64 RPC server")
        services.items.append(
            loopback.start_server(key, log_dir, tracker.port, python=[str(launcher)], ready_timeout=120)
        )
        services.save(STATE)
    except BaseException:
        services.stop()
        STATE.unlink(missing_ok=True)
        raise
    progress(f"[board] RPC key {key!r} registered: --rpc-tracker {loopback.LOOPBACK}:{tracker.port} --rpc-key {key}")
    return services


def stop() -> None:
    """Stop what start() left running, by the PIDs it saved."""
    loopback.Services.load(STATE).stop()
    STATE.unlink(missing_ok=True)


def running() -> loopback.Services:
    return loopback.Services.load(STATE)
