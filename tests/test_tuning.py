"""MetaSchedule tuning: task classification, local and RPC tuning, resume, and the build applying it."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_clean_error, run_cli
from rpc_helpers import tracker_with_servers

from mnv2_edge.compile.schedules import default_schedules, transfer, tune_job, tuning
from mnv2_edge.compile.schedules.cpu import CPUShape
from mnv2_edge.compile.schedules.records import searched
from mnv2_edge.compile.artifacts import pipeline
from mnv2_edge.compile.frontend.convert import load_relax
from mnv2_edge.compile.artifacts.manifest import Manifest
from mnv2_edge.compile.generation.generate import write_variant
from mnv2_edge.compile.generation.variants import Variant
from mnv2_edge.deploy import emulated_board
from mnv2_edge.targets.profiles import load_profile


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "mnv2_0.35_96_float32.tflite"
    write_variant(Variant(0.35, 96), "float32", path)
    return path


@pytest.fixture(scope="module")
def host_stem_db(tmp_path_factory, small_model):
    """A database with the small model's stem searched on this host (3 trials); copy it to write."""
    path = tmp_path_factory.mktemp("host_db")
    tuned = run_cli("compile/tune.py", "--model", small_model, "--tuning-log", path, "--trials", "3",
                       "--kinds", "stem", "--target", "host", timeout=900)
    assert tuned.returncode == 0, tuned.stderr + tuned.stdout
    return path


def _weights_by_kind(model) -> dict[str, int]:
    """How many conv/other calls of each kind the model makes (task weights summed by kind)."""
    mod, _ = load_relax(model)
    weights: dict[str, int] = {}
    for task, kind in tuning.classified_tasks(mod, load_profile("host").tvm_target()):
        weights[kind] = weights.get(kind, 0) + task.weight
    return weights


def test_tasks_are_classified_by_shape(small_model):
    weights = _weights_by_kind(small_model)
    # 17 depthwise convs; 16 expansions + 17 projections + the last 1x1; the stem; mean, dense, softmax.
    assert weights == {"depthwise": 17, "pointwise": 34, "stem": 1, "other": 3}


def test_repair_drops_a_line_cut_by_an_interrupt(tmp_path):
    (tmp_path / tuning.WORKLOAD_FILE).write_text('["a", 1]\n')
    (tmp_path / tuning.RECORD_FILE).write_text('[0, {"x": 1}]\n[0, {"x": ')
    assert tuning.repair_database(tmp_path) == 1
    assert (tmp_path / tuning.RECORD_FILE).read_text() == '[0, {"x": 1}]\n'


def _function_sizes(library) -> dict[str, int]:
    """Code size of each kernel in a built library (TVM exports kernel K as symbol __tvm_ffi_K)."""
    listing = subprocess.run(["nm", "-S", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True).stdout
    sizes = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] == "T" and parts[3].startswith("__tvm_ffi_"):
            sizes[parts[3].removeprefix("__tvm_ffi_")] = int(parts[1], 16)
    return sizes


def tune(tmp_path, model, *flags):
    return run_cli("compile/tune.py", "--model", model, "--tuning-log", tmp_path / "db", "--trials", "2",
                   "--kinds", "stem", *flags, timeout=900)


@pytest.mark.slow
def test_local_tuning_resumes_and_the_build_applies_it(tmp_path, small_model):
    first = tune(tmp_path, small_model, "--target", "host")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "[1/1]" in first.stdout and "(stem, x1): best" in first.stdout
    assert re.search(r"best [0-9.]+ ms after 2 trials \(1/1 trials of this run, [0-9.]+ min so far, about 0 min left\)",
                     first.stdout), first.stdout  # progress: trials done of all, ETA
    assert re.search(r"\(stem, x1\): default schedule \(DirectConv\) timed: [0-9.]+ ms", first.stdout)
    again = tune(tmp_path, small_model, "--target", "host")
    assert "records already, skipped" in again.stdout  # resumed: nothing left to do
    assert "default schedule" not in again.stdout  # measured once
    records = (tmp_path / "db" / tuning.RECORD_FILE).read_text().count("\n")
    compacted = run_cli("compile/tune.py", "--target", "host", "--tuning-log", tmp_path / "db", "--compact", "1")
    assert compacted.returncode == 0, compacted.stderr
    assert (tmp_path / "db" / tuning.RECORD_FILE).read_text().count("\n") == 1 < records
    assert "records already, skipped" in tune(tmp_path, small_model, "--target", "host").stdout  # still
    mod, _ = load_relax(small_model)
    tasks = tuning.classified_tasks(mod, load_profile("host").tvm_target())
    order = tune_job.tuning_order(tuning.TuningDatabase(tmp_path / "db").open(), tasks)
    assert order[-1][1] == "stem"  # the one tuned task comes after every untuned one
    assert order[0][0].task_name == max(tasks, key=lambda t: t[0].weight * tuning.task_flops(t[0]))[0].task_name
    built = run_cli("deploy/check.py", "--model", small_model, "--tuning-log", tmp_path / "db",
                    "--out", tmp_path / "dist")
    assert built.returncode == 0, built.stderr
    assert "get default schedules" in built.stderr  # the warning names the tasks without a record
    stem_task = next(task for task, kind in tasks if kind == "stem")
    stem = stem_task.task_name
    best = tuning.records_for(tuning.TuningDatabase(tmp_path / "db").open(), stem_task, 1)[0]
    default_trace = default_schedules.schedule_for(stem_task.dispatched[0]["main"],
                                                   load_profile("host").tvm_target())[1].trace
    # The search usually beats the rule; where it found nothing faster, the rule's own record is the
    # best, and the build gives the task the rule as the code has it now.
    found = str(best.trace) != str(default_trace)
    assert searched(best.trace) == found
    assert f"{int(found)}/33 kernels from the database" in built.stdout
    manifest = Manifest.read(tmp_path / "dist" / "host" / small_model.stem)
    assert manifest.tuning["tuned_tasks"] == int(found) and manifest.tuning["tasks"] == 33
    assert len(manifest.tuning["untuned"]) == 32
    assert manifest.tuning["rule_fastest"] == ([] if found else [f"{stem} (stem)"])
    assert manifest.schedules[stem] == ("tuned" if found else "DirectConv")
    assert sum(how == "tuned" for how in manifest.schedules.values()) == int(found)
    assert ": OK: " in built.stdout  # tuned code is still correct
    # What the library holds, not what the manifest says: against an untuned build, the stem's kernel
    # (the one tuned task) is other code, and the untuned kernels are the same code.
    plain = run_cli("compile/build.py", "--target", "host", "--model", small_model, "--no-tuning",
                    "--out", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    tuned_sizes = _function_sizes(tmp_path / "dist" / "host" / small_model.stem / "model.so")
    plain_sizes = _function_sizes(tmp_path / "plain" / "host" / f"{small_model.stem}_untuned" / "model.so")
    assert (tuned_sizes[stem] != plain_sizes[stem]) == found
    others = [task.task_name for task, kind in tasks if kind == "depthwise"]
    assert all(tuned_sizes[name] == plain_sizes[name] for name in others)


@pytest.mark.slow
def test_tuning_on_two_boards_and_a_sweep_measures_again_after_the_database_changes(tmp_path, small_model):
    """Two servers under one key: MetaSchedule's RPC runner measures candidates on both at once. A sweep
    with that database is skipped on a rerun, and measured again once tuning has changed the database."""
    sweep = ["deploy/bench.py", "--target", "host", "--model", small_model, "--tuning-log", tmp_path / "db",
             "--results", tmp_path / "results", "--out", tmp_path / "dist", "--number", "2", "--repeat", "3",
             "--no-litert"]
    with tracker_with_servers(tmp_path / "logs", keys=("host", "host")) as services:
        port = services.find("tracker").port
        board_flags = ["--target", "host", "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "host"]
        result = tune(tmp_path, small_model, *board_flags, "--trials", "6")
        assert result.returncode == 0, result.stderr + result.stdout
        assert "measuring candidates on 2 board(s) under key host" in result.stdout
        assert "(stem, x1): best" in result.stdout
        sessions = [(tmp_path / "logs" / f"server-host-{i}.log").read_text().count("connected from")
                    for i in range(2)]
        assert all(sessions), sessions  # each board measured candidates
        first = run_cli(*sweep)
        assert first.returncode == 0 and "running on local" in first.stdout, first.stderr + first.stdout
        assert "done before, skipped" in run_cli(*sweep).stdout  # the same library, database and timing
        more = tune(tmp_path, small_model, *board_flags, "--trials", "8")  # two more trials: a new database
        assert more.returncode == 0 and "(stem, x1): best" in more.stdout, more.stderr + more.stdout
    again = run_cli(*sweep)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "running on local" in again.stdout and "done before" not in again.stdout
    rows = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert rows[0]["tuning"]["fingerprint"] != rows[1]["tuning"]["fingerprint"]
    assert (tmp_path / "db" / tuning.RECORD_FILE).read_text().count("\n") >= 8


@pytest.mark.slow
def test_a_board_starts_from_the_hosts_records(tmp_path, small_model, host_stem_db):
    """Tuning on the emulated aarch64 board (candidates cross-linked, run under qemu) with
    --start-from the host's database: the host's record for the same task is replayed and measured
    on the board first, and the search starts from it."""
    host_db = host_stem_db
    services = emulated_board.start()
    try:
        port = services.find("tracker").port
        result = tune(tmp_path, small_model, "--target", "arm_cpu", "--rpc-tracker", f"127.0.0.1:{port}",
                      "--rpc-key", emulated_board.KEY, "--session-timeout", "300", "--trials", "4",
                      "--start-from", host_db)
    finally:
        emulated_board.stop()
    assert result.returncode == 0, result.stderr + result.stdout
    assert re.search(rf"\(stem, x1\): transferred from {re.escape(str(host_db))}: \[1,96,96,3\][^:]*: [0-9.]+ ms",
                     result.stdout), result.stdout
    assert "(stem, x1): best" in result.stdout
    missing = tune(tmp_path, small_model, "--target", "host", "--start-from", tmp_path / "nothing")
    assert_clean_error(missing, "holds no MetaSchedule database")


def test_int8_tasks_keep_their_conv_kinds(tmp_path):
    """Quantize/dequantize fusions must not hide a conv, and a lone dequantize is not a conv."""
    path = tmp_path / "int8.tflite"
    write_variant(Variant(0.35, 96), "int8", path)
    weights = _weights_by_kind(path)
    assert weights["depthwise"] == 17 and weights["stem"] == 1 and weights["pointwise"] == 34


INTRINSICS_PROBE = """
import sys
from tvm.s_tir import TensorIntrin, meta_schedule as ms
from mnv2_edge.compile.schedules import tuning
tuning.register_tvm_intrinsics(cpu_only=True)
ms.TuneContext(target="llvm")  # imports tvm.s_tir.tensor_intrin, which registers every kind's
TensorIntrin.get("dot_16x4_vnni"), TensorIntrin.get("dot_4x4_i8i8s32_sdot")  # x86's and Arm's
print(sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith(tuning.TVM_INTRINSICS + ".")))
"""


def test_a_cpu_tuning_registers_the_cpu_intrinsics_only():
    """tuning.register_tvm_intrinsics: a TuneContext after it parses none of TVM's GPU intrinsics (they
    took about 13 of the 15 s every tuning process spent on them), and the CPUs' are registered. Asked
    for all (a database naming another), it imports what the package's __init__ does (read, not
    imported here: that would cost those 15 s)."""
    import ast
    from importlib import util

    probe = subprocess.run([sys.executable, "-c", INTRINSICS_PROBE], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split("\n")[0] == "['arm_cpu', 'dot_product_common', 'x86']", probe.stdout
    init = Path(util.find_spec(tuning.TVM_INTRINSICS).origin)
    imported = {alias.name for node in ast.walk(ast.parse(init.read_text())) if isinstance(node, ast.ImportFrom)
                and node.level == 1 and node.module is None for alias in node.names}
    assert imported == set(tuning.ALL_INTRINSICS), imported


def test_host_databases_apply_only_to_their_cpu_class():
    """tuning_logs/host/ holds one database per CPU class; an AVX2 CPU is not given the AVX-512 records."""
    import dataclasses

    host = load_profile("host")
    avx512 = dataclasses.replace(host, target={**host.target, "mcpu": "znver4"})
    avx2 = dataclasses.replace(host, target={**host.target, "mcpu": "znver3"})
    assert CPUShape.of(avx512.tvm_target()).isa_class == "x86_64-avx512"
    assert CPUShape.of(avx2.tvm_target()).isa_class == "x86_64-avx2"
    assert CPUShape.of(load_profile("rasp5").tvm_target()).isa_class == "aarch64-dotprod"
    request = pipeline.BuildRequest(target="host")
    assert pipeline.tuning_for(request, avx512).path == tuning.database_path(avx512)
    assert pipeline.tuning_note(request, avx512) is None
    assert pipeline.tuning_for(request, avx2) is None
    note = pipeline.tuning_note(request, avx2)
    assert "x86_64-avx512" in note and "x86_64-avx2" in note and "default schedules" in note
    assert tuning.database_path(load_profile("rasp4b")).name == "rasp4b"  # boards: one database each


def test_several_variants_are_tuned_as_distinct_tasks(tmp_path, small_model):
    """--all-variants tunes each workload once, with the calls of every variant that has it."""
    import tvm_ffi

    other = tmp_path / "mnv2_0.35_128_float32.tflite"
    write_variant(Variant(0.35, 128), "float32", other)
    target = load_profile("host").tvm_target()
    per_model = [tuning.classified_tasks(load_relax(path)[0], target) for path in (small_model, other)]
    shared = [(a, b) for a, _ in per_model[0] for b, _ in per_model[1]
              if tvm_ffi.structural_equal(a.dispatched[0], b.dispatched[0])]
    sources = [type("Source", (), {"path": p, "name": p.stem})() for p in (small_model, other)]
    found, weights = tune_job.distinct_tasks(sources, "integer", target, tune_job.KINDS, progress=lambda m: None)
    assert shared  # the classifier head (dense, softmax) is the same at every resolution of a width
    assert len(found) == len(per_model[0]) + len(per_model[1]) - len(shared)
    assert sum(weights.values()) == sum(t.weight for tasks in per_model for t, _ in tasks)
    for a, b in shared:
        assert weights[tuning.workload_key(a)] == a.weight + b.weight


def test_tile_splits_adapt_to_the_new_extent():
    from mnv2_edge.compile.schedules.transfer import adapted_tile

    assert adapted_tile([7, 2, 1, 16], 96) == [3, 2, 1, 16]  # the vector and register factors kept
    assert adapted_tile([4, 8], 20) == [5, 4]  # what of 8 divides 20
    assert adapted_tile([1, 3], 7) == [7, 1]
    assert all(math.prod(adapted_tile([2, 4, 8], e)) == e for e in range(1, 200))


@pytest.mark.slow
def test_records_transfer_to_the_same_layer_at_another_resolution(tmp_path, host_stem_db):
    """The stem tuned at 96x96 serves the stem at 128x128: its trace replayed with adapted tiles,
    measured into the database, logged with its source; the build says where it came from."""
    shutil.copytree(host_stem_db, tmp_path / "db")
    other = tmp_path / "mnv2_0.35_128_float32.tflite"
    write_variant(Variant(0.35, 128), "float32", other)
    moved = tune(tmp_path, other, "--target", "host", "--trials", "0")
    assert moved.returncode == 0, moved.stderr + moved.stdout
    assert re.search(r"\(stem, x1\): transferred from \[1,96,96,3\] x \[3,3,3,16\][^:]*: [0-9.]+ ms", moved.stdout), \
        moved.stdout
    assert "no search" in moved.stdout and "best" not in moved.stdout
    assert re.search(r"no search, --trials 0\); estimated time per inference by kind: .*stem [0-9.]+ ms", moved.stdout), \
        moved.stdout  # the summary still sums what the database holds
    log = json.loads((tmp_path / "db" / "transfers.json").read_text())
    mod, _ = load_relax(other)
    stem = next(task for task, kind in tuning.classified_tasks(mod, load_profile("host").tvm_target())
                if kind == "stem")
    assert list(log[tuning.workload_key(stem)].values()) == ["[1,96,96,3] x [3,3,3,16] x [16] x [1,48,48,16]"]
    built = run_cli("deploy/check.py", "--model", other, "--tuning-log", tmp_path / "db", "--out", tmp_path / "dist")
    assert built.returncode == 0 and ": OK: " in built.stdout, built.stderr + built.stdout
    manifest = Manifest.read(tmp_path / "dist" / "host" / other.stem)
    database = tuning.TuningDatabase(tmp_path / "db").open()
    # Whatever measured fastest, the transferred record is in the database, measured, with its source
    held = [transfer.source_of(transfer.load(tmp_path / "db"), tuning.workload_key(stem), record.trace)
            for record in tuning.records_for(database, stem, 10)]
    assert "[1,96,96,3] x [3,3,3,16] x [16] x [1,48,48,16]" in held, held
    best = tuning.records_for(database, stem, 1)[0]
    from_transfer = transfer.source_of(transfer.load(tmp_path / "db"), tuning.workload_key(stem), best.trace)
    # The database applies whichever measured fastest: the transferred record, or the default
    # schedule, and then the build gives the task the rule as the code has it now.
    assert manifest.schedules[stem.task_name] == ("transferred" if from_transfer else "DirectConv")
    assert manifest.tuning["transferred"] == ({stem.task_name: from_transfer} if from_transfer else {})
    if from_transfer:
        assert "1 transferred from similar tasks" in built.stdout


def test_a_database_keeps_one_way_of_timing(tmp_path):
    """Records timed with cold caches (--cache-flush) and warm ones are not comparable: a database
    keeps the way it was first timed, and one from before measurement.json was timed warm."""
    from mnv2_edge.targets.errors import UserError

    cold = tmp_path / "cold"
    cold.mkdir()
    tuning.check_measurement(cold, cache_flush=True)
    tuning.check_measurement(cold, cache_flush=True)  # the same way again: fine
    with pytest.raises(UserError, match="timed with --cache-flush; this run would time without"):
        tuning.check_measurement(cold, cache_flush=False)
    older = tmp_path / "older"
    older.mkdir()
    (older / tuning.WORKLOAD_FILE).write_text("")
    with pytest.raises(UserError, match="timed without --cache-flush"):
        tuning.check_measurement(older, cache_flush=True)
    tuning.check_measurement(older, cache_flush=False)
    assert json.loads((older / tuning.MEASUREMENT_FILE).read_text()) == {"cache_flush": False,
                                                                          "timed_by": tuning.MEASURED}
    # Estimates (mnv2-estimate --tune) and measurements never share a database, either way round.
    estimated = tmp_path / "estimated"
    estimated.mkdir()
    tuning.check_measurement(estimated, cache_flush=False, timed_by="estimated on a model")
    assert tuning.timing_of(estimated) == "estimated on a model"
    with pytest.raises(UserError, match="holds times estimated on a model; this run's would be measured"):
        tuning.check_measurement(estimated, cache_flush=False)
    with pytest.raises(UserError, match="holds times measured on the device"):
        tuning.check_measurement(older, cache_flush=False, timed_by="estimated on a model")


@pytest.mark.slow
def test_remeasure_replaces_times_that_no_longer_hold(tmp_path, small_model, host_stem_db):
    """A record timed impossibly fast (as a lucky moment on a busy machine, or an older way of timing,
    leaves one) wins every build until --remeasure times it again: then its old time is gone from
    the files, and the stem's best is a real time again."""
    shutil.copytree(host_stem_db, tmp_path / "db")
    records = tmp_path / "db" / tuning.RECORD_FILE
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    index, (trace, run_secs, *rest) = lines[0]
    lucky = [index, [trace, [1e-9] * len(run_secs), *rest]]
    records.write_text("".join(json.dumps(line) + "\n" for line in [lucky, *lines[1:]]))
    mod, _ = load_relax(small_model)
    stem = next(task for task, kind in tuning.classified_tasks(mod, load_profile("host").tvm_target())
                if kind == "stem")
    assert tuning.best_seconds(tuning.TuningDatabase(tmp_path / "db").open(), stem) == pytest.approx(1e-9)
    again = tune(tmp_path, small_model, "--target", "host", "--trials", "0", "--remeasure")
    assert again.returncode == 0, again.stderr + again.stdout
    assert re.search(r"\(stem, x1\): \d record\(s\) and the default schedule measured again: best 0\.000 ms "
                     r"before, [0-9.]+ ms now", again.stdout), again.stdout
    assert "1e-09" not in records.read_text()
    best = tuning.best_seconds(tuning.TuningDatabase(tmp_path / "db").open(), stem)
    assert 1e-6 < best < 1.0
