"""Thread settings of the processes hospitalnet runs (the figures behind them:
benchmarks/contention.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from hospitalnet.threads import (
    CpuMeter,
    ThreadGovernor,
    _proc_stat_busy_seconds,
    child_environment,
    governor_for,
    thread_budget,
    thread_setting,
    usable_cores,
)

REPO = Path(__file__).resolve().parents[1]


def test_thread_budget_shares_the_cores_between_processes():
    assert thread_budget(9, cores=2) == 1  # eight sites and a server on a small machine
    assert thread_budget(9, cores=32) == 3
    assert thread_budget(1, cores=4) == 4
    assert thread_budget(0, cores=4) == 4
    assert 1 <= thread_budget(1) == usable_cores() <= (os.cpu_count() or 1)


def test_child_environment_sets_threads_and_keeps_the_rest():
    env = child_environment(2, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env == {
        "PATH": "/bin",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }


# --------------------------------------------------------------------------- the governor


class FakeMeter:
    """Busy CPU seconds as a test scripts them: ``others`` cores busy in each window."""

    def __init__(self) -> None:
        self.machine = 0.0
        self.own = 0.0

    def advance(self, seconds: float, others: float, own: float = 1.0) -> None:
        self.machine += (others + own) * seconds
        self.own += own * seconds

    def machine_busy(self) -> float:
        return self.machine

    def own_busy(self) -> float:
        return self.own


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _governor(**kw):
    meter, clock, calls = FakeMeter(), FakeClock(), []
    gov = ThreadGovernor(4, meter=meter, clock=clock, set_threads=calls.append, **kw)
    return gov, meter, clock, calls


def _window(gov, meter, clock, others: float, seconds: float = 0.5) -> int:
    clock.now += seconds
    meter.advance(seconds, others)
    return gov.poll()


def test_the_governor_takes_every_core_when_the_machine_is_idle_and_gives_way_at_once():
    gov, meter, clock, calls = _governor()
    assert calls == [4] and gov.poll() == 4  # starts at every core; first poll only measures
    assert _window(gov, meter, clock, others=0.1) == 4
    # one other process takes a core: 4 - 1 = 3 left
    assert _window(gov, meter, clock, others=1.0) == 3
    # three others: one thread left; more than every core busy still leaves one
    assert _window(gov, meter, clock, others=3.0) == 1
    assert _window(gov, meter, clock, others=6.0) == 1
    assert calls == [4, 3, 1]


def test_the_governor_climbs_back_one_thread_after_two_quiet_windows():
    gov, meter, clock, calls = _governor()
    gov.poll()
    _window(gov, meter, clock, others=3.0)
    assert gov.threads == 1
    assert _window(gov, meter, clock, others=0.0) == 1  # one quiet window is not enough
    assert _window(gov, meter, clock, others=0.0) == 2
    assert _window(gov, meter, clock, others=0.0) == 2
    assert _window(gov, meter, clock, others=0.0) == 3
    # a burst in between starts the count again
    assert _window(gov, meter, clock, others=0.0) == 3
    assert _window(gov, meter, clock, others=0.6) == 3  # 3.4 free: no room for a 4th, no drop
    assert _window(gov, meter, clock, others=0.0) == 3
    assert _window(gov, meter, clock, others=0.0) == 4
    assert calls == [4, 1, 2, 3, 4]


def test_the_governor_measures_once_per_interval_and_counts_its_own_cpu_out():
    gov, meter, clock, calls = _governor()
    gov.poll()
    clock.now += 0.2
    meter.advance(0.2, others=3.0)
    assert gov.poll() == 4  # inside the window: not measured yet
    clock.now += 0.5
    meter.advance(0.5, others=0.0)
    assert gov.poll() == 3  # the window's mean: 0.6 core-seconds of others in 0.7 s
    # this process itself busy on every core (its own threads): nothing to give way to
    for _ in range(2):
        clock.now += 0.5
        meter.advance(0.5, others=0.0, own=4.0)
        gov.poll()
    assert gov.threads == 4


def test_a_fixed_governor_sets_once_and_never_measures():
    calls: list[int] = []

    class NoMeter:
        def machine_busy(self):
            raise AssertionError("a fixed governor must not measure")

        own_busy = machine_busy

    gov = ThreadGovernor(2, fixed=True, meter=NoMeter(), set_threads=calls.append)
    assert [gov.poll() for _ in range(3)] == [2, 2, 2] and calls == [2]


def test_the_governor_keeps_its_count_without_proc_stat():
    gov, meter, clock, calls = _governor()
    meter.machine_busy = lambda: None  # type: ignore[method-assign]
    for _ in range(3):
        clock.now += 1.0
        assert gov.poll() == 4
    assert calls == [4]


def test_the_summary_adds_up_the_seconds_at_each_count():
    gov, meter, clock, calls = _governor()
    gov.poll()
    _window(gov, meter, clock, others=3.0, seconds=2.0)  # 2 s at 4, then 1
    clock.now += 3.0
    assert gov.summary() == {"1": 3.0, "4": 2.0}
    assert gov.switches == 1


def test_governor_for_settings():
    calls: list[int] = []
    assert governor_for(3).fixed and governor_for(3).threads == 3
    auto = governor_for("auto", max_threads=2, invariant=lambda n: True)
    assert not auto.fixed and auto.threads == 2
    assert governor_for("auto", max_threads=1, invariant=lambda n: calls.append(n)).fixed
    assert calls == []  # one thread cannot change a result: no check
    unsafe = governor_for("auto", max_threads=2, invariant=lambda n: False)
    assert unsafe.fixed and unsafe.threads == 1
    assert governor_for(None).fixed


def test_proc_stat_busy_seconds_counts_only_our_cpus(tmp_path):
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal
    stat.write_text(
        "cpu  10 0 10 1000 0 0 0 0 0 0\n"
        "cpu0 100 2 30 900 50 1 2 5 0 0\n"
        "cpu1 7 0 3 990 0 0 0 0 0 0\n"
        "intr 12345\n"
    )
    assert _proc_stat_busy_seconds(frozenset({0}), stat) == pytest.approx(140 / tick)
    assert _proc_stat_busy_seconds(frozenset({0, 1}), stat) == pytest.approx(150 / tick)
    assert _proc_stat_busy_seconds(frozenset({5}), stat) is None
    assert _proc_stat_busy_seconds(frozenset({0}), tmp_path / "missing") is None


def test_the_cpu_meter_reads_this_machine():
    meter = CpuMeter()
    if meter.machine_busy() is None:
        pytest.skip("no /proc/stat here")
    a = meter.machine_busy()
    sum(i * i for i in range(200_000))
    assert meter.machine_busy() >= a and meter.own_busy() > 0


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("3", 3), ("config", "config")])
def test_thread_setting_on_the_command_line(text, value):
    assert thread_setting(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "many", "1.5"])
def test_a_bad_thread_setting_names_the_value(text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
        thread_setting(text)
