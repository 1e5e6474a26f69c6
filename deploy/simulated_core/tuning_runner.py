"""MetaSchedule's runner on a simulated core: each candidate kernel's time is the simulated core's
estimate of one call (its blocks counted under qemu-user, their cycles from llvm-mca's model of the
profile's core, at the profile's clock), not a measurement.

For tuning an aarch64 profile without its board (`mnv2-estimate --tune`): deterministic (the same
candidate gets the same time in every run and on every machine, so no repeat or noise filter is
needed) and blind to what the estimate leaves out (caches, memory bandwidth, threads). A database
tuned this way says so (tuning.MEASUREMENT_FILE, and every build's manifest), and a board's
measured times cannot be mixed into it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnv2_edge.compile.schedules.tune_job import Estimator
from mnv2_edge.deploy.simulated_core import counting, cycles
from mnv2_edge.targets.errors import UserError
from mnv2_edge.targets.profiles import Profile


def label(profile: Profile) -> str:
    """What a database tuned on the profile's simulated core says of its times."""
    core = profile.core
    return (f"estimated on a simulated {core['name']} (qemu-user block counts, llvm-mca -mcpu={core['llvm_mcpu']}, "
            f"{float(core['clock_ghz']):g} GHz, one thread, every load an L1 hit)")


def candidate_arguments(args_info, seed: int = 0) -> list[np.ndarray]:
    """A kernel's arguments filled as the board runner fills them (tuning.host_filled_arguments):
    small integers, floats in [-1, 1)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for info in args_info:
        _, dtype, shape = info.as_json()
        shape = tuple(int(d) for d in shape)
        values = rng.integers(0, 8, shape) if dtype.startswith(("int", "uint")) else rng.uniform(-1.0, 1.0, shape)
        arrays.append(values.astype(dtype))
    return arrays


def kernel_cycles(library: Path, blocks: list[counting.Block], maps: list[counting.Mapping], core: dict) -> float:
    """Cycles of one call: the blocks that ran inside the candidate's own library (the runtime's
    calls around it are the same for every candidate)."""
    own = [m for m in maps if Path(m.path).resolve() == library.resolve()]
    inside = [b for b in blocks if any(m.start <= b.address < m.end for m in own)]
    if not inside:
        return 0.0
    per_block = cycles.block_cycles(core["llvm_mcpu"], core["mattr"], cycles.disassemble([b.code for b in inside]))
    return sum(c * b.executions for b, c in zip(inside, per_block))


def estimate_seconds(kernels: list[tuple[Path, list[np.ndarray]]], core: dict) -> list[float | str]:
    """Each kernel's estimated seconds per call, or why it has none. The batch runs in one emulated
    process; when a candidate crashes it, each is run alone, so one bad candidate fails only itself."""
    try:
        per_kernel, maps = counting.count_kernels(kernels, core["qemu_cpu"])
    except UserError as error:
        if len(kernels) == 1:
            return [str(error)]
        return [result for kernel in kernels for result in estimate_seconds([kernel], core)]
    results: list[float | str] = []
    for (library, _), blocks in zip(kernels, per_kernel):
        spent = kernel_cycles(library, blocks, maps, core)
        results.append(spent / (float(core["clock_ghz"]) * 1e9) if spent else
                       "no instruction of the candidate's own library ran")
    return results


def estimator(profile: Profile) -> Estimator:
    """A MetaSchedule Runner that times candidates on the profile's simulated core, with its label."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    core = profile.core
    if not core:
        raise UserError(f"Target {profile.name} names no simulated core ([core] in targets/{profile.name}.toml): "
                        f"tuning on the estimate needs one; these have one: rasp4b, rasp5, arm_cpu.")

    def finished(result):
        return ms.runner.RunnerFuture(f_done=lambda: True, f_result=lambda: result)

    @derived_object
    class EstimateRunner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            kernels = [(Path(i.artifact_path), candidate_arguments(i.args_info)) for i in runner_inputs]
            return [finished(ms.runner.RunnerResult([seconds], None) if isinstance(seconds, float)
                             else ms.runner.RunnerResult(None, seconds))
                    for seconds in estimate_seconds(kernels, core)]

    return Estimator(EstimateRunner(), label(profile))
