"""The public Python API: train any per-site objectives across a simulated hospital network.

Example
-------
>>> import torch
>>> from hospitalnet.api import train_network
>>> from hospitalnet.objective import QuadraticObjective
>>> sites = {f"n{k}": QuadraticObjective(torch.full((3,), float(k)), num_samples=10 * k)
...          for k in range(1, 5)}
>>> result = train_network(sites, method="ecl", topology="ring", steps=500, seed=0,
...                        lr=0.1, weight_decay=0.0)
>>> [round(float(w[0]), 4) for w in result.params.values()]   # every site: sum_i p_i c_i = 3
[3.0, 3.0, 3.0, 3.0]

Any object with ``num_samples``, ``init_params()`` and ``loss_and_grad(w)`` is an objective
(see :mod:`hospitalnet.objective`). Methods: the presets of :mod:`hospitalnet.algorithms`
(``ecl``, ``ecl-pdmm``, ``ecl-admm``, ``ecl-isvr``, ``gossip``, ``fedavg``, ``fedprox``,
``local``; the ``pooled`` reference is :func:`train_pooled`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from hospitalnet.config import ExperimentConfig, Section, validate
from hospitalnet.objective import LocalObjective
from hospitalnet.simulation import (
    EvalFn,
    Faults,
    LinkFault,
    Partition,
    ProgressFn,
    SimulationResult,
    SiteOutage,
    run_network,
    run_pooled,
)
from hospitalnet.topology import Topology, build_topology
from hospitalnet.transport.simulated import NO_FAULTS

S = TypeVar("S", bound=Section)


def _override(section: S, name: str, **values: Any) -> S:
    """``section`` with the non-None ``values`` replaced, validated like a config file."""
    changed = {k: v for k, v in values.items() if v is not None}
    if not changed:
        return section
    return validate(type(section), section.model_dump() | changed, source=f"train_network({name})")


def train_network(
    objectives: Mapping[str, LocalObjective],
    method: str = "ecl",
    topology: str | Topology = "multiplex_ring",
    steps: int = 1000,
    seed: int = 0,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    exchange_every: int | None = None,
    theta: float | None = None,
    config: ExperimentConfig | None = None,
    faults: Faults = NO_FAULTS,
    w0: torch.Tensor | None = None,
    eval_every: float | None = None,
    eval_fn: EvalFn | None = None,
    progress: ProgressFn | None = None,
    lr_schedule: Callable[[int], float] | None = None,
) -> SimulationResult:
    """Train one model per site with ``method`` over a simulated network.

    Parameters
    ----------
    objectives:
        Site id -> local objective; the dict order is the site order.
    method:
        A preset name (see module docstring).
    topology:
        ``ring``, ``multiplex_ring``, ``complete``, ``random`` or a :class:`Topology`
        (e.g. from :func:`hospitalnet.topology.from_edges`).
    steps:
        Local steps per site.
    seed:
        Root seed of the simulation (latency, drops, speeds, schedule, random topology).
    lr, weight_decay, exchange_every, theta:
        Shortcuts that override ``config.training.lr``, ``config.training.weight_decay``,
        ``config.network.exchange_every`` and ``config.ecl.theta`` (None = keep).
    config:
        Everything else (``ExperimentConfig`` defaults when None): ``ecl``, ``fedprox``,
        ``network`` (latency, drops, site speeds, staleness, inactivity), ``topology``
        (``random_degree``).
    faults, w0, eval_every, eval_fn, progress, lr_schedule:
        As in :func:`hospitalnet.simulation.run_network`.

    Returns
    -------
    SimulationResult
        Final ``params`` per site, ``losses``, ``edge_stats``, ``events``, ``evaluations`` ...
    """
    cfg = config or ExperimentConfig()
    training = _override(cfg.training, "training", lr=lr, weight_decay=weight_decay)
    network = _override(cfg.network, "network", exchange_every=exchange_every)
    ecl = _override(cfg.ecl, "ecl", theta=theta)
    if isinstance(topology, str):
        topo_cfg = _override(cfg.topology, "topology", kind=topology)
        topology = build_topology(topo_cfg, list(objectives), seed)
    return run_network(
        method, objectives, topology, steps, seed,
        training=training, ecl=ecl, fedprox=cfg.fedprox, network=network, faults=faults,
        w0=w0, eval_every=eval_every, eval_fn=eval_fn, progress=progress, lr_schedule=lr_schedule,
    )  # fmt: skip


def train_pooled(
    objective: LocalObjective,
    steps: int = 1000,
    seed: int = 0,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    config: ExperimentConfig | None = None,
    w0: torch.Tensor | None = None,
    eval_every: float | None = None,
    eval_fn: EvalFn | None = None,
    progress: ProgressFn | None = None,
    lr_schedule: Callable[[int], float] | None = None,
) -> SimulationResult:
    """The pooled reference: one model on all data, through the same site loop (key ``pooled``)."""
    cfg = config or ExperimentConfig()
    training = _override(cfg.training, "training", lr=lr, weight_decay=weight_decay)
    return run_pooled(
        objective, steps, seed, training=training, w0=w0, eval_every=eval_every,
        eval_fn=eval_fn, progress=progress, lr_schedule=lr_schedule,
    )  # fmt: skip


__all__ = [
    "Faults",
    "LinkFault",
    "Partition",
    "SimulationResult",
    "SiteOutage",
    "train_network",
    "train_pooled",
]
