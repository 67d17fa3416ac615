"""CPU threads for the processes hospitalnet runs, chosen for a machine that other work shares.

Measured (benchmarks/contention.py, README "A busy CPU"): with torch's default of one intra-op
thread per core, a short ECL run on a 2-core machine became many times slower beside a single
other CPU-bound process, because each of the many small parallel regions of a training step waits
for its slowest thread, and that thread is the one sharing a core with the other process. One
thread per process keeps the slowdown near the fair share. So:

- the in-process simulation trains with ``training.threads`` (default 1);
- ``site run`` / ``server run`` take ``--threads`` (default 1) and ``simulate --processes`` gives
  each of its processes :func:`thread_budget` threads (1 unless the machine has more cores than
  processes);
- every process started through ``python -m hospitalnet`` (and its children) runs OpenMP with
  ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy: an idle OpenMP thread then sleeps
  instead of spinning on a core another process needs. OpenMP reads this once, when torch is
  imported, so :func:`configure_openmp` runs before that.

A fixed thread count also keeps results reproducible: the reduction order, and so the last bits,
of a run would otherwise depend on the machine's load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

OPENMP_DEFAULTS: Mapping[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_openmp(environ: MutableMapping[str, str] | None = None) -> None:
    """Set :data:`OPENMP_DEFAULTS` where the user has not chosen (call before importing torch)."""
    env = os.environ if environ is None else environ
    for name, value in OPENMP_DEFAULTS.items():
        env.setdefault(name, value)


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
    configure_openmp(env)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env
