"""Every command, the benchmarks included, answers bad flags with one clear paragraph and exit code 2."""

import pytest
from conftest import assert_clean_error, run_cli


@pytest.mark.parametrize("command,words", [
    (["benchmarks/tuned_vs_litert.py", "--variants", "1.0-224"], ["WIDTH/RESOLUTION", "1.0-224"]),
    (["benchmarks/tuned_vs_litert.py", "--dtypes", "int4"], ["--dtypes", "int4"]),
    (["benchmarks/farm_scaling.py", "--servers", "two"], ["--servers", "two"]),
    (["benchmarks/fuzz_frontend.py", "--mutants", "0"], ["--mutants", "at least 1"]),
    (["benchmarks/int8_fidelity.py", "--images", "-1"], ["--images"]),
    (["deploy/bench.py", "--repeat", "0"], ["--repeat", "at least 1"]),
    (["deploy/bench.py", "--timeout", "-5"], ["--timeout"]),
], ids=["variants", "dtypes", "servers", "mutants", "images", "repeat", "timeout"])
def test_bad_numbers_and_lists_are_clear_errors(command, words):
    assert_clean_error(run_cli(*command, timeout=120), *words)
