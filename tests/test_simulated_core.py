"""The simulated Cortex-A core (deploy/simulated_core): counts that are exact, cycles from LLVM's
real scheduling model, one estimate for one build on every run, and mnv2-pick over what it gives."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.compile.artifacts.manifest import LIBRARY, Manifest
from mnv2_edge.compile.generation.images import model_inputs
from mnv2_edge.deploy.simulated_core import counting, cycles, estimate
from mnv2_edge.targets.profiles import load_profile

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-aarch64", "aarch64-linux-gnu-gcc", cycles.LLVM_MCA)),
    reason="needs qemu-user, gcc-aarch64-linux-gnu and llvm-19 (the README's set-up installs them)")

LOOP_PROGRAM = r"""
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
volatile long sink;
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    syscall(172, 0x6d6e7632, 1, 0);  /* the plugin's start marker */
    for (long i = 0; i < n; i++)
        sink += i;
    syscall(172, 0x6d6e7632, 0, 0);  /* its stop marker (region 0: the file named out=) */
    for (long i = 0; i < 1000; i++)  /* after the region: never counted */
        sink += i;
    return 0;
}
"""


@needs_tools
def test_the_plugin_counts_exactly_what_runs_between_the_markers(tmp_path):
    source = tmp_path / "loop.c"
    source.write_text(LOOP_PROGRAM)
    program = tmp_path / "loop"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", "-o", str(program), str(source)], check=True)

    def executed(n: int):
        work = tmp_path / f"n{n}"
        work.mkdir()
        return counting.run_counted([str(program), str(n)], "cortex-a72", {}, work, "the loop program")

    small, large = executed(1234), executed(5234)
    # Only the loop's block runs more often, exactly 4000 times more; every other block of the region
    # (the marker calls) the same number of times; nothing after the stop marker is counted.
    before = {(b.address, b.code): b.executions for b in small}
    after = {(b.address, b.code): b.executions for b in large}
    assert before.keys() == after.keys()
    grown = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    assert list(grown.values()) == [4000], grown
    assert not any(990 <= n <= 1000 for n in after.values())  # the 1000-iteration loop after the region


STREAM_PROGRAM = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
volatile long sink;
static void pass(volatile unsigned char *a, long size, int write) {
    for (long i = 0; i < size; i += 64)  /* one access per 64-byte line */
        if (write) a[i] = (unsigned char)i; else sink += a[i];
}
int main(int argc, char **argv) {
    long size = atol(argv[1]);
    int write = argv[2][0] == 'w';
    unsigned char *a = aligned_alloc(64, size);
    memset(a, 1, size);
    syscall(172, 0x6d6e7632, 2, 0);  /* the caches warm from here */
    pass(a, size, write);
    syscall(172, 0x6d6e7632, 1, 0);  /* counted: the second pass */
    pass(a, size, write);
    syscall(172, 0x6d6e7632, 0, 0);
    return 0;
}
"""


@needs_tools
def test_the_simulated_caches_fill_what_a_stream_does_not_fit(tmp_path):
    """A Pi 4's data caches (32 KB 2-way L1, 1 MB 16-way L2, LRU) under a second pass over an array,
    one access a line: it hits where the array fits a level and misses every line where it does not;
    written lines go back to memory once evicted."""
    source = tmp_path / "stream.c"
    source.write_text(STREAM_PROGRAM)
    program = tmp_path / "stream"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", "-o", str(program), str(source)], check=True)
    caches = load_profile("rasp4b").core["memory"]["caches"]
    assert [(c["bytes"], c["ways"]) for c in caches] == [(32768, 2), (1048576, 16)]

    def traffic(size: int, mode: str) -> tuple[int, int, int]:
        work = tmp_path / f"{size}{mode}"
        work.mkdir()
        blocks = counting.run_counted([str(program), str(size), mode], "cortex-a72", {}, work, "the stream program",
                                      caches=caches)
        return (sum(b.fills[0] for b in blocks), sum(b.fills[1] for b in blocks), sum(b.writebacks for b in blocks))

    few = 32  # the marker calls' stack and the program's globals
    l1, l2, back = traffic(16 << 10, "r")  # fits L1
    assert l1 <= few and l2 <= few and back <= few, (l1, l2, back)
    l1, l2, back = traffic(512 << 10, "r")  # fits L2, not L1: every line from L2
    assert 8192 <= l1 <= 8192 + few and l2 <= few and back <= few, (l1, l2, back)
    l1, l2, back = traffic(4 << 20, "r")  # fits neither: every line from memory, none written back
    assert 65536 <= l1 <= 65536 + few and 65536 <= l2 <= 65536 + few and back <= few, (l1, l2, back)
    l1, l2, back = traffic(4 << 20, "w")  # written: each line filled evicts a dirty one
    assert 65536 <= l2 <= 65536 + few and 65536 - few <= back <= 65536 + few, (l1, l2, back)


@needs_tools
def test_instruction_classes_and_cycles_come_from_the_core_model():
    assert cycles.instruction_class("fmla v0.4s, v1.4s, v2.s[0]") == "multiply(-add)"
    assert cycles.instruction_class("sdot v0.4s, v1.16b, v2.4b[1]") == "multiply(-add)"
    assert cycles.instruction_class("ldp q0, q1, [x0], #32") == "SIMD load/store"
    assert cycles.instruction_class("ldrb w3, [x1, #1]") == "load/store"
    assert cycles.instruction_class("b.ne #-64") == "branch"
    assert cycles.instruction_class("add x1, x1, #16") == "scalar"
    independent = [f"fmla v{i}.4s, v20.4s, v21.4s" for i in range(8)]
    chain = ["fmla v0.4s, v20.4s, v21.4s"] * 8
    for mcpu in ("cortex-a72", "neoverse-n1"):
        fast, slow = cycles._mca(mcpu, "+neon", [independent, chain])
        # Two FP pipes: 8 independent multiply-adds need at least 4 cycles; a chain of 8 waits on
        # each result's latency, which is several cycles on every Cortex-A.
        assert 4 <= fast < slow and slow >= 8 * 3, (mcpu, fast, slow)


@pytest.fixture(scope="module")
def built(work) -> Path:
    # rasp5's 0.35/96, as test_rpc's emulated-board sweep estimates it: the same build, whose estimate
    # that test left in the cache.
    request = pipeline.BuildRequest(target="rasp5", width=0.35, resolution=96, dtype="float32", out=work)
    return pipeline.build_each([("0.35/96", request)], progress=lambda m: None)[0]


@needs_tools
@pytest.mark.slow
def test_one_build_gives_one_estimate_and_multiply_adds_at_least_the_floor(built):
    profile = load_profile("rasp5")
    manifest = Manifest.read(built)
    inputs = model_inputs(manifest.inputs, 0)
    fresh = estimate.simulate("ours", built / LIBRARY, inputs, profile, manifest.schedules, manifest.name)
    # Another process, earlier (this run's sweep, or a run before it of the same simulator): the same.
    assert estimate.estimate_artifact(built, profile, "ours").to_dict() == fresh.to_dict()
    litert = estimate.estimate_artifact(built, profile, "litert")
    # float32: four products per NEON instruction at best; a kernel may skip the products of the
    # zero padding at a feature map's borders (a few percent at 96x96), so a little under is fine.
    floor = manifest.model.variant.macs / 4
    for result in (fresh, litert):
        multiply_adds = result.by_class["multiply(-add)"].instructions
        assert 0.95 * floor <= multiply_adds <= 1.5 * floor, (result.runtime, multiply_adds, floor)
        assert result.cycles > 0 and 0 < result.ms < 1000 and result.core == "Cortex-A76"
        assert result.model == manifest.name  # the artifact's name, not a part's (a shadowed variable gave one)
    assert any(name.startswith("kernels: Pointwise") for name in fresh.by_part)


@needs_tools
@pytest.mark.slow
def test_the_memory_model_streams_the_weights_the_caches_cannot_hold(built):
    """rasp5's 0.35/96 float32 with the Pi 5's caches simulated: the caches leave the count itself
    alone, and the weights (6.6 MB of float32, most of it the classifier) do not fit the 2.6 MB of
    L1, L2 and L3, so every inference reads at least the rest from memory, in either runtime."""
    profile = load_profile("rasp5")
    caches_bytes = sum(c["bytes"] for c in profile.core["memory"]["caches"])
    weights_bytes = (built / "model.tflite").stat().st_size
    for runtime in estimate.RUNTIMES:
        plain = estimate.estimate_artifact(built, profile, runtime)
        result = estimate.estimate_artifact(built, profile, runtime, memory=True)
        assert result.cycles == plain.cycles and result.instructions == plain.instructions, runtime
        memory = result.memory
        from_memory = memory.traffic_mb["memory -> L3"] * 1e6
        assert from_memory >= weights_bytes - caches_bytes, (runtime, from_memory, weights_bytes)
        times, slow = memory.ms_on_threads, memory.ms_on_threads_no_overlap
        assert len(times) == len(slow) == profile.target["num-cores"] and times[0] >= result.ms, (runtime, times)
        # More threads never slower; never faster than memory's bandwidth allows for what they read.
        floor_ms = from_memory / (profile.core["memory"]["memory_gb_per_s"] * 1e6)
        assert all(a >= b for a, b in zip(times, times[1:])) and times[-1] >= floor_ms, (runtime, times, floor_ms)
        # Nothing overlapped: at least the cycles and memory's transfers one after the other, at most
        # every level's transfers and the cycles one after the other on one thread.
        assert slow[0] >= result.ms + floor_ms and all(s >= t for s, t in zip(slow, times)), (runtime, slow, times)
        assert all(a >= b for a, b in zip(slow, slow[1:])) and slow[-1] >= floor_ms + result.ms / len(slow), slow


def _write_estimates(folder: Path, rows: list[tuple[float, int, float]], memory: dict | None = None,
                     target: str = "rasp4b") -> None:
    """Estimates of one thread, and for the variants in `memory` the memory model's on 1..4 threads."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "estimates.jsonl", "a") as out:
        for width, resolution, ms in rows:
            core = {"ms": ms, "core": "Cortex-A72", "clock_ghz": 1.5}
            if (width, resolution) in (memory or {}):
                core["memory"] = {"ms_on_threads": [ms - 5 for ms in memory[width, resolution]],
                                  "ms_on_threads_no_overlap": memory[width, resolution]}
            out.write(json.dumps({"target": target, "width": width, "resolution": resolution, "dtype": "float32",
                                  "ours": core, "litert": core}) + "\n")


def test_pick_takes_the_most_accurate_variant_within_the_budget(tmp_path):
    # Published top-1 (tensorflow/models): 1.0/224 71.8, 0.75/224 69.8, 1.0/160 68.8, 0.35/96 45.5.
    _write_estimates(tmp_path, [(1.0, 224, 40.0), (0.75, 224, 30.0), (1.0, 160, 31.0), (0.35, 96, 3.0)])
    chosen = run_cli("deploy/pick.py", "--target", "rasp4b", "--budget-ms", "35", "--results", tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    assert "pick: 0.75/224 (69.8% top-1" in chosen.stdout
    # 1.0/160 is slower and less accurate than 0.75/224: off the Pareto front.
    assert "|   1/160 |" in chosen.stdout and "| * 0.75/224 <- pick |" in chosen.stdout
    assert "estimated: simulated Cortex-A72" in chosen.stdout
    none = run_cli("deploy/pick.py", "--target", "rasp4b", "--budget-ms", "1", "--results", tmp_path)
    assert none.returncode == 1 and "No variant fits 1 ms; the fastest known is 0.35/96" in none.stdout


def test_pick_takes_the_memory_models_time_on_all_the_boards_threads_where_there_is_one(tmp_path):
    rows = [(1.0, 224, 40.0), (0.75, 224, 30.0), (1.0, 160, 31.0), (0.35, 96, 3.0)]
    _write_estimates(tmp_path, rows, memory={(1.0, 224): [42.0, 29.0, 24.0, 21.0]})
    chosen = run_cli("deploy/pick.py", "--target", "rasp4b", "--budget-ms", "35", "--results", tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    assert ("pick: 1/224 (71.8% top-1, 21.00 ms, estimated: simulated Cortex-A72 at 1.5 GHz with its caches and "
            "memory, 4 threads, nothing overlapped)") in chosen.stdout


def test_pick_takes_only_the_targets_own_rows_from_a_shared_results_folder(tmp_path):
    _write_estimates(tmp_path, [(1.0, 224, 40.0), (0.35, 96, 3.0)])
    _write_estimates(tmp_path, [(1.0, 224, 9.0), (1.4, 224, 15.0)], target="rasp5")  # a faster board's rows
    chosen = run_cli("deploy/pick.py", "--target", "rasp4b", "--budget-ms", "20", "--results", tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    assert "pick: 0.35/96 (45.5% top-1, 3.00 ms" in chosen.stdout and "1.4/224" not in chosen.stdout
    assert "20 of the 22 variants have no latency here yet" in chosen.stdout
    assert_clean_error(run_cli("deploy/pick.py", "--target", "rasp3b", "--budget-ms", "20", "--results", tmp_path),
                       "no float32 latencies of the official variants on rasp3b")


def test_pick_and_estimate_refuse_what_they_cannot_answer(tmp_path):
    assert_clean_error(run_cli("deploy/pick.py", "--target", "rasp4b", "--budget-ms", "30", "--results", tmp_path),
                       "no float32 latencies", "mnv2-estimate")
    assert_clean_error(run_cli("deploy/pick.py", "--target", "rasp4b", "--budget-ms", "0"), "above 0")
    assert_clean_error(run_cli("deploy/estimate.py", "--target", "host", "--width", "0.35", "--res", "96"),
                       "no simulated core", "rasp4b")
    assert_clean_error(run_cli("deploy/estimate.py", "--target", "arm_cpu", "--width", "0.35", "--res", "96",
                               "--memory"), "no memory model", "rasp4b")
    assert_clean_error(run_cli("deploy/estimate.py", "--tune", "--memory", "--target", "rasp5"), "leave --memory out")


def test_the_benchmarks_pixel1_check_ranks_each_core_apart():
    """benchmarks/simulated_cortex_a.py checks LiteRT's estimates against the published Pixel 1
    column per simulated core: an A72 at half the published times and an A76 at a quarter each rank
    the 22 variants exactly (1.000) with a constant ratio (2 and 4); pooled, the ratio would spread."""
    import importlib.util

    from mnv2_edge.compile.generation.variants import OFFICIAL_TABLE

    spec = importlib.util.spec_from_file_location("simulated_cortex_a", Path(__file__).parents[1] / "benchmarks" /
                                                  "simulated_cortex_a.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)

    def estimate_of(core: str, ms: float) -> estimate.CoreEstimate:
        return estimate.CoreEstimate("m", "litert", core, "x", "x", 2.0, "", 1.0, ms * 2.0 * 1e6)

    rows = [estimate.Comparison(target, width, resolution, "float32", estimate_of(core, 1.0),
                                estimate_of(core, published.pixel1_ms / factor))
            for target, core, factor in (("rasp4b", "Cortex-A72", 2), ("rasp5", "Cortex-A76", 4))
            for (width, resolution), published in OFFICIAL_TABLE.items()]
    lines = [line for line in benchmark.checks(rows) if "Pixel 1" in line]
    assert len(lines) == 2
    assert "Cortex-A72" in lines[0] and "(22 float32 variants): rank correlation 1.000" in lines[0]
    assert "from 2.00 to 2.00" in lines[0] and "Cortex-A76" in lines[1] and "from 4.00 to 4.00" in lines[1]
    assert not [line for line in benchmark.checks(rows) if "Pixel 3a" in line]  # no LLVM core named: no check

    # The Pixel 3a's A75 has the A72's LLVM model: 132 M cycles are 66 ms at its 2.0 GHz, 20% over 55 ms.
    a72 = estimate.CoreEstimate("m", "litert", "Cortex-A72", "cortex-a72", "cortex-a72", 1.5, "", 1.0, 132e6)
    (line,) = [line for line in benchmark.checks([estimate.Comparison("rasp4b", 1.0, 224, "float32", a72, a72)])
               if "Pixel 3a" in line]
    assert "published 55 ms" in line and "at 2 GHz: 66.0 ms (+20%" in line


@needs_tools
@pytest.mark.slow
def test_tuning_on_the_simulated_core_ranks_candidates_and_says_its_times_are_estimates(tmp_path):
    """mnv2-estimate --tune: MetaSchedule's candidates timed by the simulated core. The same
    candidate gets the same time in another process, plain scalar loops cost more than the NEON
    rule's schedule, and the database and every build applying it say the times are estimates."""
    from functools import partial

    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from mnv2_edge.compile.frontend.convert import load_relax
    from mnv2_edge.compile.generation.generate import write_variant
    from mnv2_edge.compile.generation.variants import Variant
    from mnv2_edge.compile.schedules import default_schedules, tune_job, tuning
    from mnv2_edge.deploy.simulated_core import tuning_runner

    model = tmp_path / "mnv2_0.35_96_float32.tflite"
    write_variant(Variant(0.35, 96), "float32", model)
    database = tmp_path / "db"
    tuned = run_cli("deploy/estimate.py", "--tune", "--target", "rasp5", "--model", model, "--tuning-log", database,
                    "--trials", "2", "--kinds", "stem", timeout=900)
    assert tuned.returncode == 0, tuned.stderr + tuned.stdout
    assert "candidates' times estimated on a simulated Cortex-A76" in tuned.stdout
    assert tuning.timing_of(database) == tuning_runner.label(load_profile("rasp5"))

    profile = load_profile("rasp5")
    target = profile.tvm_target()
    mod, _ = load_relax(model)
    (task,) = [task for task, kind in tuning.classified_tasks(mod, target) if kind == "stem"]
    kept = tuning.records_for(tuning.TuningDatabase(database).open(), task, 10)
    assert 2 <= len(kept) <= 3  # the rule's schedule and the 2 trials (MetaSchedule may draw one twice)
    rule, ruled = default_schedules.schedule_for(task.dispatched[0]["main"], target)
    (rule_record,) = [r for r in kept if str(r.trace) == str(ruled.trace)]

    builder = ms.builder.LocalBuilder(f_build=tuning.fast_build, max_workers=1,
                                      f_export=partial(tuning.export_for_profile, profile_name="rasp5"))
    runner = tuning_runner.estimator(profile).runner
    memory = ms.database.MemoryDatabase()
    again, scalar = tune_job.measure_into_database([(ruled, task), (s_tir.Schedule(task.dispatched[0]), task)],
                                                   target, builder, runner, memory)
    assert again == pytest.approx(float(rule_record.run_secs[0]) * 1e3, rel=1e-9), rule  # another process
    # The unscheduled loops: no register blocks, only what LLVM vectorizes alone (1.97x the rule's
    # time when written; the estimate is the same on every machine).
    assert scalar > 1.5 * again, (scalar, again)

    built = pipeline.build_each([("0.35/96", pipeline.BuildRequest(target="rasp5", model=model, tuning_log=database,
                                                                    out=tmp_path / "dist"))],
                                progress=lambda m: None)[0]
    assert Manifest.read(built).tuning["timed_by"] == tuning.timing_of(database)
    # A board's measured times cannot join the estimates (no tracker is contacted: refused first).
    assert_clean_error(run_cli("compile/tune.py", "--target", "rasp5", "--model", model, "--tuning-log", database,
                               "--rpc-tracker", "127.0.0.1:9", "--trials", "1", "--kinds", "stem"),
                       "estimated on a simulated Cortex-A76", "not comparable")
