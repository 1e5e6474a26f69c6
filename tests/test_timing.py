"""Timing that fits the device: the sweep's number x repeat shrink to fit --timeout on a slow device."""

from deploy.measure import fit_timing


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
    from deploy.sweep import SweepConfig, time_limit
    from compile.variants import Variant

    config = SweepConfig(target="host", endpoint=None, timeout=300)
    assert time_limit(config, Variant(0.35, 96).macs) == 300 and time_limit(config, None) == 300
    assert 570 < time_limit(config, Variant(1.4, 224).macs) < 600  # 582M multiply-adds: about twice
