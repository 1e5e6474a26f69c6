"""Count what one inference executes: the model runs in the emulated board's python under qemu-user
with our block-counting plugin (count_blocks.c, compiled here once), one thread, and only the
inferences between two markers are counted, never the process's start-up or Python's set-up.

Deterministic by construction: one guest thread, Python's hash seed fixed and address-space
randomisation off (`setarch -R`), so the same build executes the same blocks the same number of times
on every run and machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnv2_edge.compile.paths import CACHE_ROOT
from mnv2_edge.deploy import emulated_board
from mnv2_edge.targets.errors import UserError, last_line

HERE = Path(__file__).resolve().parent
PLUGIN_SOURCE = HERE / "count_blocks.c"
GUEST_SCRIPT = HERE / "guest_inference.py"
COUNT_TIMEOUT_S = 1800  # one emulated process: 1.4/224 runs for about a minute with the plugin


@dataclass(frozen=True)
class Block:
    """One translated block of guest code and how often it ran in the counted region; with simulated
    caches, the lines its data accesses filled into each cache level (from L1 out) and the dirty
    lines the last level wrote back to memory, over all its runs."""
    address: int
    executions: int
    code: bytes  # the block's instruction words, little-endian
    fills: tuple[int, ...] = ()
    writebacks: int = 0

    @property
    def instructions(self) -> int:
        return len(self.code) // 4


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str


@dataclass
class Counts:
    blocks: list[Block]
    maps: list[Mapping]
    inferences: int


def plugin() -> Path:
    """The plugin, compiled once per source text (host gcc)."""
    digest = hashlib.sha256(PLUGIN_SOURCE.read_bytes()).hexdigest()[:16]
    built = CACHE_ROOT / "simulated_core" / f"count_blocks-{digest}.so"
    if built.exists():
        return built
    if not shutil.which("gcc"):
        raise UserError("The simulated core needs gcc to compile its qemu plugin (the README's set-up installs it).")
    built.parent.mkdir(parents=True, exist_ok=True)
    partial = built.with_suffix(".partial")
    done = subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(partial), str(PLUGIN_SOURCE)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"Compiling the qemu plugin {PLUGIN_SOURCE} failed: {last_line(done.stderr)}")
    partial.replace(built)
    return built


def _read_blocks(path: Path) -> list[Block]:
    """Blocks of equal address and code (translated again after a flush) are one block."""
    merged: dict[tuple[int, bytes], list[int]] = {}
    for line in path.read_text().splitlines():
        address, executions, code, *traffic = line.split()
        key = (int(address, 16), bytes.fromhex(code))
        numbers = [int(executions), *map(int, traffic)]
        merged[key] = [a + b for a, b in zip(merged[key], numbers)] if key in merged else numbers
    return [Block(address, numbers[0], code, tuple(numbers[1:-1]), numbers[-1] if len(numbers) > 1 else 0)
            for (address, code), numbers in sorted(merged.items())]


def caches_argument(caches: list[dict]) -> str:
    """The plugin's caches=... for a profile's [core.memory] caches (each {bytes, ways}), or ''."""
    return ",caches=" + "/".join(f"{c['bytes']}:{c['ways']}" for c in caches) if caches else ""


def _read_maps(path: Path) -> list[Mapping]:
    maps = []
    for line in path.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "x" in fields[1]:  # executable mappings of files
            start, end = (int(x, 16) for x in fields[0].split("-"))
            maps.append(Mapping(start, end, int(fields[2], 16), fields[5]))
    return maps


def run_counted(guest: list[str], qemu_cpu: str, env: dict[str, str], work: Path, what: str,
                regions: int = 0, caches: list[dict] | None = None) -> list[Block] | list[list[Block]]:
    """Run the guest program (an aarch64 executable and its arguments) under qemu-aarch64 with the
    plugin; the blocks it executed between its markers (with `regions`, each numbered region's), and
    with `caches` each block's traffic through that simulated hierarchy."""
    blocks_file = work / "blocks.txt"
    command = [shutil.which("qemu-aarch64") or "qemu-aarch64", "-cpu", qemu_cpu, "-plugin",
               f"{plugin()},out={blocks_file}{caches_argument(caches)}", *guest]
    setarch = shutil.which("setarch")
    if setarch and subprocess.run([setarch, "-R", "true"], capture_output=True).returncode == 0:
        command = [setarch, "-R", *command]
    try:
        # The guest gets `env` alone, in a folder of its own: the caller's environment would move
        # the guest's stack and heap, and with them a few of the allocator's paths (a sweep's count
        # and a test's of the same build differed by 11 of 5.6 M instructions).
        done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=COUNT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"Counting {what} under qemu-aarch64 took over {COUNT_TIMEOUT_S} s: the machine is "
                        f"overloaded.") from None
    files = [blocks_file.with_name(f"{blocks_file.name}.{region}") for region in range(1, regions + 1)] or [blocks_file]
    if done.returncode != 0 or not all(f.exists() for f in files):
        raise UserError(f"Counting {what} under qemu-aarch64 -cpu {qemu_cpu} failed (exit {done.returncode}): "
                        f"{last_line(done.stderr or done.stdout)}")
    return [_read_blocks(f) for f in files] if regions else _read_blocks(blocks_file)


def _count_in_guest(arguments: list[str], qemu_cpu: str, work: Path, what: str, regions: int = 0,
                    caches: list[dict] | None = None) -> tuple[list[Block] | list[list[Block]], list[Mapping]]:
    """guest_inference.py with `arguments` on the emulated board's python under `-cpu qemu_cpu`, one
    thread, Python's hash seed fixed: its counted blocks (run_counted) and its memory map."""
    maps_file = work / "maps.txt"
    guest = [str(emulated_board.ROOT / "usr/bin/python3.11"), str(GUEST_SCRIPT), *arguments, "--maps", str(maps_file)]
    env = {**emulated_board.guest_environment(), "PYTHONHASHSEED": "0", "TVM_NUM_THREADS": "1"}
    blocks = run_counted(guest, qemu_cpu, env, work, what, regions=regions, caches=caches)
    return blocks, _read_maps(maps_file)


def count(runtime: str, model: Path, inputs: list[np.ndarray], qemu_cpu: str, inferences: int = 1,
          progress=lambda message: None, caches: list[dict] | None = None) -> Counts:
    """Run `inferences` inferences of `model` (a model.so for runtime "tvm", a .tflite for "litert")
    on the emulated board's python under `-cpu qemu_cpu`, counting every block they execute (and
    with `caches`, their traffic through that simulated hierarchy, warmed by the run before)."""
    emulated_board.provision(progress)
    with tempfile.TemporaryDirectory(prefix="mnv2-count-") as tmp:
        work = Path(tmp)
        np.savez(work / "inputs.npz", *inputs)
        blocks, maps = _count_in_guest(["--runtime", runtime, "--model", str(model), "--inputs", str(work / "inputs.npz"),
                                        "--count", str(inferences)], qemu_cpu, work, f"{model.name} ({runtime})",
                                       caches=caches)
        return Counts(blocks, maps, inferences)


def count_kernels(kernels: list[tuple[Path, list[np.ndarray]]], qemu_cpu: str) -> tuple[list[list[Block]], list[Mapping]]:
    """One call of each compiled kernel (a library and its arguments) on the emulated board's python
    under `-cpu qemu_cpu`, all in one process: the blocks of each call, and the process's map."""
    emulated_board.provision(lambda message: None)
    with tempfile.TemporaryDirectory(prefix="mnv2-count-") as tmp:
        work = Path(tmp)
        listing = []
        for index, (library, arrays) in enumerate(kernels):
            np.savez(work / f"inputs{index}.npz", *arrays)
            listing.append({"library": str(library), "inputs": str(work / f"inputs{index}.npz")})
        (work / "kernels.json").write_text(json.dumps(listing))
        return _count_in_guest(["--kernels", str(work / "kernels.json")], qemu_cpu, work, f"{len(kernels)} kernels",
                               regions=len(kernels))
