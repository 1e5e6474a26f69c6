"""One inference on a simulated Cortex-A core: instructions by class, estimated cycles and
milliseconds at the profile's clock, and where they go (kernel kinds for ours, libraries for LiteRT).

What the estimate leaves out, said wherever it is shown (LEAVES_OUT): caches and memory bandwidth
(every load hits L1), branch mispredictions, the cost of calls, and threads (one thread; a
4-thread run divides the parallel loops' cycles at best by 4). Each block's cycles are llvm-mca's
steady state for that block, so straight-line code between loops is estimated as if it repeated.

With the memory model (`memory=True`, the profile's [core.memory]), the same inference also runs
through a simulated hierarchy of the core's data caches (count_blocks.c: LRU, 64-byte lines, no
prefetcher), and each block costs the larger of its cycles and the time its traffic takes at each
level's bandwidth: a roofline per block (a loop overlaps its loads with its arithmetic; separate
loops do not overlap). That is the estimate's fast end; its slow end adds each block's times instead
(nothing overlapped: every transfer waits, as a miss the prefetchers did not foresee does). On n
threads the cycles and the traffic from private levels divide by n, while memory's bandwidth is the
board's, shared (MEMORY_LEAVES_OUT says what this leaves out).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mnv2_edge.compile.artifacts.manifest import LIBRARY, MODEL_COPY, Manifest
from mnv2_edge.compile.generation.images import model_inputs
from mnv2_edge.compile.paths import CACHE_ROOT
from mnv2_edge.deploy.simulated_core import counting, cycles
from mnv2_edge.targets.errors import UserError
from mnv2_edge.targets.profiles import Profile

LEAVES_OUT = ("an estimate from a simulated core (qemu-user instruction counts, llvm-mca's scheduling model), "
              "not a measurement: one thread, every load an L1 hit (no cache misses or memory bandwidth), "
              "no branch mispredictions or call costs, nor the Python driver's calls and libc")
MEMORY_LEAVES_OUT = ("the caches hold what one thread's run left them (no sharing between threads), no "
                     "prefetcher and no latency (traffic costed at bandwidth: as if prefetched and overlapped with "
                     "the arithmetic at the fast end, not overlapped at all at the slow end), every loop split "
                     "evenly over the threads, one published figure for memory's bandwidth")
RUNTIMES = ("ours", "litert")
LINE_BYTES = 64
CACHE = CACHE_ROOT / "simulated_core" / "estimates"
SCHEMA = "mnv2-edge/core-estimate/7"
# The guest's Python driver and libc (the interpreter's call into the runtime, tvm_ffi's Cython
# core that makes it, its allocator): not the inference, and not deterministic either (a few
# hundred instructions that vary with the heap the process's paths and environment left before the
# counted region: tvm_ffi's core ran 381 instructions in one process and 392 in another).
DRIVER_PARTS = ("python3", "libpython", "_ctypes", "libffi", "libc", "core.cpython")


@dataclass
class Part:
    instructions: float = 0.0
    cycles: float = 0.0


@dataclass
class MemoryEstimate:
    """One inference with the core's data caches simulated ([core.memory] of the profile): the bytes
    that moved between levels, and the time on 1 .. num-cores threads: the fast end (a roofline per
    block, its transfers overlapped with its arithmetic) and the slow end (nothing overlapped)."""
    traffic_mb: dict[str, float]  # per inference, e.g. "L2 -> L1", "memory -> L2", "L2 -> memory"
    ms_on_threads: list[float]  # [1 thread, 2 threads, ...], each block the larger of its times
    ms_on_threads_no_overlap: list[float]  # the same, each block the sum of its times
    memory: dict  # the profile's [core.memory] it used
    leaves_out: str = MEMORY_LEAVES_OUT

    @property
    def memory_mb(self) -> float:
        """Megabytes moved between the last cache level and memory, both ways, per inference."""
        return sum(mb for flow, mb in self.traffic_mb.items() if "memory" in flow)


@dataclass
class CoreEstimate:
    """One inference of one model file by one runtime on one simulated core."""
    model: str  # artifact name
    runtime: str  # ours or litert
    core: str  # e.g. Cortex-A72
    llvm_mcpu: str
    qemu_cpu: str
    clock_ghz: float
    code_sha256: str  # what was counted: model.so for ours, model.tflite for LiteRT
    instructions: float
    cycles: float
    by_class: dict[str, Part] = field(default_factory=dict)  # cycles.CLASSES
    by_part: dict[str, Part] = field(default_factory=dict)  # kernel kind (ours) or library
    blocks: int = 0  # executed blocks counted (the driver's left out)
    memory: MemoryEstimate | None = None  # with the memory model
    leaves_out: str = LEAVES_OUT
    schema: str = SCHEMA

    @property
    def ms(self) -> float:
        return self.cycles / (self.clock_ghz * 1e6)

    def to_dict(self) -> dict:
        return {**asdict(self), "ms": self.ms}

    @classmethod
    def from_dict(cls, data: dict) -> CoreEstimate:
        data = {k: v for k, v in data.items() if k != "ms"}
        for key in ("by_class", "by_part"):
            data[key] = {name: Part(**part) for name, part in data[key].items()}
        if data.get("memory"):
            data["memory"] = MemoryEstimate(**data["memory"])
        return cls(**data)


def _symbols(library: Path) -> tuple[list[int], list[str]]:
    """The library's function symbols, sorted by address (llvm-nm)."""
    done = subprocess.run(["llvm-nm-19", "--defined-only", "-n", str(library)], capture_output=True, text=True)
    addresses, names = [], []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tTwW":
            addresses.append(int(fields[0], 16))
            names.append(fields[2])
    return addresses, names


def _part_namer(counts: counting.Counts, library: Path | None, schedules: dict[str, str]):
    """Names the part of an address: for addresses in ours' model.so, the kind of kernel its function
    is (the manifest's schedules: Pointwise, Depthwise, ...); elsewhere the library's file name."""
    addresses, names = _symbols(library) if library else ([], [])
    kernels = sorted(schedules, key=len, reverse=True)
    maps = sorted(counts.maps, key=lambda m: m.start)
    starts = [m.start for m in maps]
    bases = {}
    for mapping in maps:  # the load address of each file: its mapping of file offset 0
        bases.setdefault(mapping.path, mapping.start - mapping.offset)

    def name(address: int) -> str:
        at = bisect.bisect_right(starts, address) - 1
        if at < 0 or address >= maps[at].end:
            return "other"
        mapping = maps[at]
        if library is None or Path(mapping.path).name != library.name:
            return Path(mapping.path).name.split(".so")[0] or "other"
        index = bisect.bisect_right(addresses, address - bases[mapping.path]) - 1
        symbol = names[index] if index >= 0 else ""
        kernel = next((k for k in kernels if symbol.startswith(k)), None)
        return f"kernels: {schedules[kernel]}" if kernel else "model.so: Relax VM code"

    return name


def memory_model(profile: Profile) -> dict:
    """The profile's [core.memory], checked: the data caches from L1 out ({bytes, ways}; each level
    after L1 with `bytes_per_cycle`, what it delivers to the level before per core cycle) and
    `memory_gb_per_s`, what the board's memory delivers to its last level."""
    memory = (profile.core or {}).get("memory")
    if not memory:
        raise UserError(f"Target {profile.name} has no memory model ([core.memory] in targets/{profile.name}.toml); "
                        f"rasp4b and rasp5 have one.")
    caches = memory.get("caches") or []

    def positive(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

    sound = (caches and positive(memory.get("memory_gb_per_s"))
             and all(positive(c.get("bytes")) and positive(c.get("ways")) and c["bytes"] % (c["ways"] * LINE_BYTES) == 0
                     for c in caches)
             and all(positive(c.get("bytes_per_cycle")) for c in caches[1:]))
    if not sound:
        raise UserError(f"[core.memory] in targets/{profile.name}.toml is not a memory model: it needs `caches`, a "
                        f"list from L1 out of {{bytes, ways}} (bytes a whole number of {LINE_BYTES}-byte lines per "
                        f"way), each level after L1 with `bytes_per_cycle`, and `memory_gb_per_s`.")
    return memory


class _Traffic:
    """Each block's bytes between the cache levels and memory, and its time on n threads: the larger of
    its cycles and its transfers' (overlapped), and their sum (not)."""

    def __init__(self, memory: dict, clock_ghz: float, threads: int):
        caches = memory["caches"]
        self.names = [f"L{i + 2} -> L{i + 1}" for i in range(len(caches) - 1)] + [f"memory -> L{len(caches)}",
                                                                                   f"L{len(caches)} -> memory"]
        self.level_rates = [c["bytes_per_cycle"] for c in caches[1:]]  # each core's own, into the level before
        self.memory_rate = memory["memory_gb_per_s"] / clock_ghz  # the board's, shared, both ways
        self.bytes = [0.0] * len(self.names)
        self.cycles_on = [0.0] * threads
        self.cycles_no_overlap_on = [0.0] * threads

    def add(self, block: counting.Block, compute: float, inferences: int) -> None:
        flows = [fills * LINE_BYTES / inferences for fills in block.fills] + [block.writebacks * LINE_BYTES / inferences]
        for index, flow in enumerate(flows):
            self.bytes[index] += flow
        between_levels = [flow / rate for flow, rate in zip(flows, self.level_rates)]
        to_memory = (flows[-2] + flows[-1]) / self.memory_rate
        for n in range(1, len(self.cycles_on) + 1):
            self.cycles_on[n - 1] += max(compute / n, *(t / n for t in between_levels), to_memory)
            self.cycles_no_overlap_on[n - 1] += (compute + sum(between_levels)) / n + to_memory


def simulate(runtime: str, model: Path, inputs, profile: Profile, schedules: dict[str, str], name: str,
             progress=lambda message: None, memory: bool = False) -> CoreEstimate:
    """Count one inference of `model` by `runtime` under the profile's core and estimate its cycles
    (with `memory`, also through the core's simulated data caches)."""
    core = profile.core
    if not core:
        raise UserError(f"Target {profile.name} has no simulated core ([core] in targets/{profile.name}.toml): "
                        f"estimates exist for aarch64 boards that name one (rasp4b, rasp5, arm_cpu).")
    clock_ghz = float(core["clock_ghz"])
    hierarchy = memory_model(profile) if memory else None
    traffic = hierarchy and _Traffic(hierarchy, clock_ghz, profile.target.get("num-cores", 1))
    counts = counting.count("tvm" if runtime == "ours" else "litert", model, inputs, core["qemu_cpu"],
                            progress=progress, caches=hierarchy and hierarchy["caches"])
    blocks = counts.blocks
    text = cycles.disassemble([b.code for b in blocks])
    per_block = cycles.block_cycles(core["llvm_mcpu"], core["mattr"], text)
    part_of = _part_namer(counts, model if runtime == "ours" else None, schedules)
    by_class = {c: Part() for c in cycles.CLASSES}
    by_part: dict[str, Part] = {}
    total = Part()
    kept = 0
    for block, instructions, block_cycles in zip(blocks, text, per_block):
        part_name = part_of(block.address)
        if part_name.startswith(DRIVER_PARTS):
            continue
        kept += 1
        runs = block.executions / counts.inferences
        spent = block_cycles * runs
        part = by_part.setdefault(part_name, Part())
        part.instructions += block.instructions * runs
        part.cycles += spent
        total.instructions += block.instructions * runs
        total.cycles += spent
        for instruction in instructions:  # a block's cycles shared by its instructions, for the classes
            share = by_class[cycles.instruction_class(instruction)]
            share.instructions += runs
            share.cycles += spent / len(instructions)
        if traffic:
            traffic.add(block, spent, counts.inferences)
    memory_estimate = traffic and MemoryEstimate(
        {flow_name: flow / 1e6 for flow_name, flow in zip(traffic.names, traffic.bytes)},
        [c / (clock_ghz * 1e6) for c in traffic.cycles_on], [c / (clock_ghz * 1e6) for c in traffic.cycles_no_overlap_on],
        hierarchy)
    return CoreEstimate(model=name, runtime=runtime, core=core["name"], llvm_mcpu=core["llvm_mcpu"],
                        qemu_cpu=core["qemu_cpu"], clock_ghz=clock_ghz,
                        code_sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
                        instructions=total.instructions, cycles=total.cycles, by_class=by_class,
                        by_part=dict(sorted(by_part.items(), key=lambda kv: -kv[1].cycles)), blocks=kept,
                        memory=memory_estimate or None)


def estimate_artifact(out_dir: Path, profile: Profile, runtime: str, progress=lambda message: None,
                      memory: bool = False) -> CoreEstimate:
    """The estimate for one built artifact (ours: its model.so; LiteRT: its model.tflite), cached by
    what decides it: the code's bytes, the core, and this package's simulator (same inputs, same result)."""
    manifest = Manifest.read(out_dir)
    model = out_dir / (LIBRARY if runtime == "ours" else MODEL_COPY)
    key = hashlib.sha256(b"".join([
        model.read_bytes(), json.dumps(profile.core, sort_keys=True).encode(), _simulator_fingerprint(),
        json.dumps([memory, profile.target.get("num-cores")]).encode() if memory else b"",
    ])).hexdigest()[:24]
    cached = CACHE / f"{manifest.name}-{runtime}-{key}.json"
    if cached.exists():
        return CoreEstimate.from_dict(json.loads(cached.read_text()))
    result = simulate(runtime, model, model_inputs(manifest.inputs, 0), profile, manifest.schedules, manifest.name,
                      progress, memory)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(result.to_dict(), indent=1))
    partial.replace(cached)
    return result


def _simulator_fingerprint() -> bytes:
    """What decides an estimate besides the code and the core: the plugin, the guest's driver, the
    LLVM tools and settings, and SCHEMA (raised whenever estimate.py's accounting changes)."""
    return b"".join([counting.PLUGIN_SOURCE.read_bytes(), counting.GUEST_SCRIPT.read_bytes(),
                     json.dumps([cycles.LLVM_MC, cycles.LLVM_MCA, cycles.DISASSEMBLY_FEATURES, cycles.ITERATIONS,
                                 cycles.CLASSES, SCHEMA]).encode()])


@dataclass
class Comparison:
    """Ours and LiteRT on the same file and simulated core: the primary output is the ratio."""
    target: str
    width: float | None
    resolution: int | None
    dtype: str | None
    ours: CoreEstimate
    litert: CoreEstimate

    @property
    def ratio(self) -> float:
        return self.ours.cycles / self.litert.cycles

    @property
    def memory_ratio(self) -> float | None:
        """Ours over LiteRT on one thread with the memory model (its fast end), where both have it."""
        return self.memory_ratios(0)[0] if self.ours.memory and self.litert.memory else None

    def memory_ratios(self, thread_index: int) -> tuple[float, float]:
        """Ours over LiteRT with the memory model on thread_index + 1 threads: at the fast end, at the slow end."""
        ours, litert = self.ours.memory, self.litert.memory
        return (ours.ms_on_threads[thread_index] / litert.ms_on_threads[thread_index],
                ours.ms_on_threads_no_overlap[thread_index] / litert.ms_on_threads_no_overlap[thread_index])

    def to_dict(self) -> dict:
        return {"target": self.target, "width": self.width, "resolution": self.resolution, "dtype": self.dtype,
                "ratio": self.ratio, "ours": self.ours.to_dict(), "litert": self.litert.to_dict()}


def compare(out_dirs: list[Path], profile: Profile, progress=print, memory: bool = False) -> list[Comparison]:
    """Ours and LiteRT for each built artifact, with done/total and an ETA (cached ones are instant)."""
    comparisons, begun = [], time.monotonic()
    for index, out_dir in enumerate(out_dirs, 1):
        variant = Manifest.read(out_dir).model.variant
        runs = {rt: estimate_artifact(out_dir, profile, rt, progress, memory) for rt in RUNTIMES}
        comparisons.append(Comparison(profile.name, variant and variant.width, variant and variant.resolution,
                                      variant and variant.dtype, runs["ours"], runs["litert"]))
        left = (time.monotonic() - begun) / index * (len(out_dirs) - index)
        progress(f"[estimate] {index}/{len(out_dirs)} {out_dir.name} on a simulated {runs['ours'].core}: ours "
                 f"{runs['ours'].ms:.2f} ms, LiteRT {runs['litert'].ms:.2f} ms ({comparisons[-1].ratio:.2f}x)"
                 + (f", about {left / 60:.0f} min left" if index < len(out_dirs) else ""))
    return comparisons


def append_results(comparisons: list[Comparison], results: Path) -> Path:
    """Add comparisons to <results>/estimates.jsonl, which mnv2-pick reads beside results.jsonl."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / "estimates.jsonl"
    with open(path, "a") as out:
        for comparison in comparisons:
            out.write(json.dumps(comparison.to_dict()) + "\n")
    return path
