"""A fast slice of the front-end fuzzing campaign (benchmarks/fuzz_frontend.py runs hundreds):
structurally valid but mutated files through the command a user runs."""

import pytest

from benchmarks.fuzz_frontend import DEFECTS, judge, litert_accepts, mutants

pytestmark = pytest.mark.slow


def test_mutants_get_a_model_or_a_clear_error(tmp_path):
    outcomes = []
    for mutant in mutants(12, seed=7):  # two of each mutation kind, float32 and int8 bases
        path = tmp_path / f"m{mutant.index}.tflite"
        path.write_bytes(mutant.data)
        outcome, detail = judge(path, tmp_path / "built", timeout=300)
        outcomes.append((mutant.mutation, outcome, detail, litert_accepts(path, timeout=120)))
    defects = [o for o in outcomes if o[1] in DEFECTS]
    assert not defects, defects
    # A verified model is one LiteRT runs too (it is the reference); a refusal is one paragraph.
    assert all(accepted for _, outcome, _, accepted in outcomes if outcome == "verified")
    assert {"refused"} <= {o[1] for o in outcomes}
