"""CPU threads for the processes hospitalnet runs, chosen for a machine that other work shares.

Measured with benchmarks/contention.py on the shared 2-core development machine (README "A busy
CPU" has the figures): a training step is many small parallel regions, and each waits for its
slowest thread. On an idle machine two threads are faster than one; beside one other CPU-bound
process the thread that shares a core with it holds every region up, and two threads were 3-4x
slower than their own quiet speed while one thread lost under 20%. No fixed count is right on a
machine whose load changes, so the default, ``training.threads: auto``, follows it:

- :class:`ThreadGovernor` measures, every ``interval_s`` of wall time, how many of this process's
  cores other processes kept busy (``/proc/stat`` minus this process's own CPU time) and sets
  torch's thread count to the cores left over: all of them when the machine is idle, one when
  another process needs a core. It goes down at once and up only after two quiet windows.
- Changing the thread count mid-run does not change the result: the models' convolution weight
  gradients are computed in a fixed order (:mod:`hospitalnet.models.invariant`) and evaluation
  runs in minibatches of multiples of :data:`EVAL_QUANTUM`. :func:`hospitalnet.models.invariant.
  same_bits_at_any_thread_count` checks this for the run's model and batch shapes when the run
  starts; where it does not hold (e.g. ``densenet121``, whose forward pass differs) the governor
  keeps one thread for the whole run, so that a run stays reproducible bit for bit.
- A number (``training.threads: 2``, ``site run --threads 2``) fixes the count; ``null`` leaves
  torch's default (one per core). ``simulate --processes`` gives each of its processes
  :func:`thread_budget` threads (the usable cores shared between the sites and the server).
- OpenMP keeps its default wait policy (idle threads spin briefly, then sleep). The previous
  release set ``OMP_WAIT_POLICY=PASSIVE``; with the governor it only costs: two passive threads
  took 2.25x as long as two default ones on an idle machine, and under load the governor has
  already dropped to one thread, where the policy does not matter.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

#: ``training.threads``: a fixed count, ``"auto"`` (follow the machine), None (torch's default)
ThreadSetting = int | Literal["auto"] | None

#: Evaluation minibatches are padded to a multiple of this: oneDNN picks its convolution kernel
#: from the minibatch size and thread count, and on minibatches of 5-11 images the kernels it
#: picks at one and two threads sum in different orders (measured with torch 2.14).
EVAL_QUANTUM = 16


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask: taskset, a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(processes: int, cores: int | None = None) -> int:
    """torch threads for each of ``processes`` processes sharing ``cores`` (default: ours)."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, processes))


def child_environment(threads: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a hospitalnet process we start with ``threads`` torch threads."""
    env = dict(os.environ if environ is None else environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def _proc_stat_busy_seconds(cpus: frozenset[int], path: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds ``cpus`` spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    seen = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            cpu = int(name[3:])
            v = [int(x) for x in rest.split()]
        except ValueError:
            continue
        if cpu in cpus and len(v) >= 8:
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # steal: the host took it
            seen += 1
    return busy / tick if seen else None


class CpuMeter:
    """Busy CPU seconds of this process's cores (all processes) and of this process alone."""

    def __init__(self, cpus: frozenset[int] | None = None) -> None:
        if cpus is None:
            try:
                cpus = frozenset(os.sched_getaffinity(0))
            except AttributeError:  # not Linux
                cpus = frozenset(range(os.cpu_count() or 1))
        self.cpus = cpus

    def machine_busy(self) -> float | None:
        return _proc_stat_busy_seconds(self.cpus)

    def own_busy(self) -> float:
        return time.process_time()  # every thread of this process


@dataclass
class ThreadGovernor:
    """Sets torch's thread count to the cores other processes leave free (``threads: auto``).

    Call :meth:`poll` between units of work (a training step, an evaluation minibatch) from the
    thread that runs them: OpenMP's thread count belongs to the calling thread. Every
    ``interval_s`` it measures the cores that others kept busy over the last window and moves to
    ``max_threads - others`` rounded: down at once, up one thread after ``up_windows`` windows in
    a row with room for it, so that a short burst of other work does not make it flap.

    ``fixed`` pins the count (a number in the config, or a model whose results would change with
    it); then :meth:`poll` does nothing after the first call.
    """

    max_threads: int
    fixed: bool = False
    interval_s: float = 0.5
    up_windows: int = 2
    meter: CpuMeter | None = None
    clock: Callable[[], float] = time.monotonic
    set_threads: Callable[[int], None] | None = None
    threads: int = 0
    seconds_at: dict[int, float] = field(default_factory=dict)
    switches: int = 0
    _last: tuple[float, float, float] | None = None
    _room: int = 0
    _since: float = 0.0

    def __post_init__(self) -> None:
        self.max_threads = max(1, int(self.max_threads))
        if self.meter is None and not self.fixed:
            self.meter = CpuMeter()
        if self.set_threads is None:
            import torch  # here, not at import: hospitalnet sets OpenMP's policy before torch loads

            self.set_threads = torch.set_num_threads
        self.threads = self.max_threads
        self.set_threads(self.threads)
        self._since = self.clock()

    def poll(self) -> int:
        """Re-measure when a window has passed; return the thread count now in force."""
        if self.fixed:
            return self.threads
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.interval_s:
            return self.threads
        assert self.meter is not None
        machine, own = self.meter.machine_busy(), self.meter.own_busy()
        if machine is None:  # no /proc/stat: stay where we are
            return self.threads
        last, self._last = self._last, (now, machine, own)
        if last is None:
            return self.threads
        wall = now - last[0]
        others = max(0.0, ((machine - last[1]) - (own - last[2])) / wall)
        self._decide(self.max_threads - others)
        return self.threads

    def _decide(self, free: float) -> None:
        if self.threads > 1 and free < self.threads - 0.5:
            self._set(max(1, math.floor(free + 0.5)))
            self._room = 0
        elif self.threads < self.max_threads and free >= self.threads + 0.75:
            self._room += 1
            if self._room >= self.up_windows:
                self._set(self.threads + 1)
                self._room = 0
        else:
            self._room = 0

    def _set(self, threads: int) -> None:
        now = self.clock()
        self.seconds_at[self.threads] = self.seconds_at.get(self.threads, 0.0) + now - self._since
        self._since = now
        log.debug("torch threads %d -> %d", self.threads, threads)
        assert self.set_threads is not None
        self.set_threads(threads)
        self.threads = threads
        self.switches += 1

    def summary(self) -> dict[str, float]:
        """Seconds spent at each thread count so far (keys are counts, as text)."""
        spent = dict(self.seconds_at)
        spent[self.threads] = spent.get(self.threads, 0.0) + self.clock() - self._since
        return {str(k): round(v, 3) for k, v in sorted(spent.items())}


def governor_for(
    setting: ThreadSetting,
    *,
    max_threads: int | None = None,
    invariant: Callable[[int], bool] | None = None,
) -> ThreadGovernor:
    """The governor for ``training.threads``/``--threads``: ``setting`` is a number (fixed),
    None (torch's default, fixed) or ``"auto"``. ``max_threads`` caps auto (default: the usable
    cores). ``invariant(n)`` says whether results at n threads equal those at one; when it is
    False auto keeps one thread."""
    if setting is None:
        import torch

        return ThreadGovernor(torch.get_num_threads(), fixed=True)
    if setting != "auto":
        return ThreadGovernor(int(setting), fixed=True)
    cap = usable_cores() if max_threads is None else max(1, max_threads)
    if cap > 1 and invariant is not None and not invariant(cap):
        log.info(
            "training.threads auto: results would change with the thread count for this model "
            "and batch; using 1 thread"
        )
        return ThreadGovernor(1, fixed=True)
    return ThreadGovernor(cap, fixed=cap == 1)


def thread_setting(text: str) -> int | Literal["auto", "config"]:
    """``--threads`` on a command line: ``auto``, a whole number >= 1 (or ``config``)."""
    if text in ("auto", "config"):
        return text  # type: ignore[return-value]
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or a whole number >= 1")
    return value
