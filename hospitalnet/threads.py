"""CPU threads for the processes hospitalnet runs, chosen for a machine that other work shares.

Measured with benchmarks/contention.py on the shared 2-core development machine (README "A busy
CPU" has the figures and their caveats): with torch's default of one intra-op thread per core and
OpenMP's default wait policy, a short ECL run took 19-98 s where one thread took 10-12 s, and
beside one other CPU-bound process 62-132 s. A training step is many small parallel regions;
each waits for its slowest thread, the one sharing a core with other work, while the idle
threads spin on the cores that work needs. ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep)
removed most of that, but two threads stayed 2-4x slower than one whenever the machine was
crowded. One thread per process was never far from the best setting in any measured case. So:

- the in-process simulation trains with ``training.threads`` (default 1; ``null`` = one per
  core, for a machine nothing else uses);
- ``site run`` / ``server run`` take ``--threads`` (default 1), and ``simulate --processes``
  gives each of its processes :func:`thread_budget` threads (the usable cores shared between
  the sites and the server, at least 1);
- ``import hospitalnet`` puts ``OMP_WAIT_POLICY=PASSIVE`` in the environment unless the user
  chose a policy (:func:`configure_openmp`), so that a run with more threads does not spin on
  shared cores. OpenMP reads it once, when torch loads; child processes inherit it.

A fixed thread count also keeps a run reproducible bit for bit whatever the machine's load.
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
