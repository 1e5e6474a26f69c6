"""Timing that fits the device (number x repeat shrink to fit --timeout on a slow device), and one
protocol for both runtimes: the same plan, interleaved turns, the order rotated."""

from mnv2_edge.deploy.comparison import Plan, fit as fit_timing, interleave, plan


def test_fast_devices_keep_the_timing_asked_for():
    assert fit_timing(10, 20, 0.004, 150) == (10, 20)  # 0.8 s of runs


def test_slow_devices_run_fewer_runs_per_repeat_first_then_fewer_repeats():
    # 1.0/224 at 1.5 s per run (an untuned Pi, or the emulated board): 10 x 20 runs would take 300 s.
    number, repeat = fit_timing(10, 20, 1.5, 140)
    assert (number, repeat) == (4, 20) and number * repeat * 1.5 <= 140
    number, repeat = fit_timing(10, 20, 5.0, 60)
    assert number == 1 and repeat == 12 and number * repeat * 5.0 <= 60
    assert fit_timing(10, 20, 50.0, 60) == (1, 3)  # never fewer than 3 repeats: a median needs them
    assert fit_timing(10, 2, 50.0, 60) == (1, 2)  # nor more repeats than asked for


def test_the_time_limit_grows_with_the_models_work():
    from mnv2_edge.deploy.sweep import SweepConfig, time_limit
    from mnv2_edge.compile.generation.variants import Variant

    config = SweepConfig(target="host", endpoint=None, timeout=300)
    assert time_limit(config, Variant(0.35, 96).macs) == 300 and time_limit(config, None) == 300
    assert 570 < time_limit(config, Variant(1.4, 224).macs) < 600  # 582M multiply-adds: about twice


def test_both_runtimes_get_one_plan_fitted_to_their_sum():
    # ours 4 ms, LiteRT 6 ms a run: 10 x 20 runs of both take 2 s; a 1 s budget halves the runs per sample
    both = plan(10, 20, {"ours": 0.004, "LiteRT": 0.006}, 1.0)
    assert (both.number, both.samples) == (5, 20) and both.number * both.samples * 0.010 <= 1.0
    # --min-repeat-ms grows the runs per sample for both alike, from the faster runtime
    assert plan(1, 20, {"ours": 0.001, "LiteRT": 0.002}, 100, min_repeat_ms=10).number == 10
    # shares no longer than the heartbeat: 20 samples of 10 x 0.5 s need 20 turns, not 10
    assert plan(10, 20, {"ours": 0.5, "LiteRT": 0.5}, 1e6).turns == 20
    assert plan(10, 20, {"ours": 0.001}, 100).turns == 10


def test_turns_interleave_the_runtimes_and_rotate_their_order():
    order = []

    def timer(name):
        def run(number, count, cooldown_ms):
            order.append((name, number, count, cooldown_ms))
            return [0.001 * (name == "LiteRT") + 0.002] * count
        return run

    samples = interleave({"ours": timer("ours"), "LiteRT": timer("LiteRT")}, Plan(3, 7, 3, cooldown_ms=5))
    assert [name for name, *_ in order] == ["ours", "LiteRT", "LiteRT", "ours", "ours", "LiteRT"]
    assert [count for _, _, count, _ in order] == [3, 3, 2, 2, 2, 2]  # 7 samples in 3 turns
    assert {(number, cooldown) for _, number, _, cooldown in order} == {(3, 5)}  # the same for both
    assert len(samples["ours"]) == len(samples["LiteRT"]) == 7
