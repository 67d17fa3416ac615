"""Merge the run directories of a process network into one run directory.

Each site process (and the FedAvg server) writes its own run directory under
``RUN_DIR/nodes/<method>/<site>/``; :func:`collect_method` reads them through the schema types
(:mod:`hospitalnet.rundir_schema`) and :func:`write_network_run` writes the merged run in the
layout the in-process simulation writes, so both are compared by the same evaluation.
:func:`run_and_collect` is the loop around them that the process launcher and the NVFlare engine
share: run each method, train the pooled reference here, write the merged run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

import numpy as np

from hospitalnet.algorithms import SERVER
from hospitalnet.assembly import initial_model
from hospitalnet.config import ExperimentConfig
from hospitalnet.deploy.site_process import node_status
from hospitalnet.experiment import train_method
from hospitalnet.rundir import RunDir, read_arrays, write_arrays
from hospitalnet.rundir_schema import (
    EdgeRecord,
    History,
    MethodNetwork,
    NetworkRecord,
    NodeStatus,
    RunInfo,
    TopologyRecord,
    Versions,
    WallSeconds,
)
from hospitalnet.world import World, write_testsets_and_data

if TYPE_CHECKING:
    from hospitalnet.deploy.launcher import NetworkLayout

POOLED = "pooled"
_COUNTERS = ("dropped", "stale", "duplicates", "rejected", "inactive_events")


@dataclass
class MethodRun:
    """One method's merged outputs (and how its processes ended)."""

    method: str
    finished: list[str]
    dead: list[str]
    returncodes: dict[str, int | None]
    wall: float
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    history: History = field(default_factory=History)
    network: MethodNetwork = field(default_factory=MethodNetwork)
    torch_threads: int | None = None  # what the site processes ran with


def _merge_edge(edges: dict[tuple[str, str], EdgeRecord], e: EdgeRecord) -> None:
    """Add one process's view of an edge to the network's (both ends' sends, summed counters)."""
    m = edges.get((e.a, e.b))
    if m is None:
        m = edges[(e.a, e.b)] = EdgeRecord(
            a=e.a, b=e.b, messages={}, bytes={}, **{c: 0 for c in _COUNTERS}, active_at_end=True
        )
    m.messages.update(e.messages)
    m.bytes.update(e.bytes)
    for counter in _COUNTERS:
        setattr(m, counter, getattr(m, counter) + getattr(e, counter))
    m.active_at_end = m.active_at_end and e.active_at_end


def collect_method(layout: NetworkLayout, method: str, n_train: int, batch: int) -> MethodRun:
    """Gather the processes' run directories of ``method`` (``layout.node_dir(method, site)``)."""
    node_dir, sites = layout.node_dir, layout.sites
    finished, dead, isolated = [], [], []
    preds: dict[str, np.ndarray] = {}
    history = History()
    edges: dict[tuple[str, str], EdgeRecord] = {}
    threads: set[int] = set()
    for site in sites:
        status = node_status(node_dir(method, site))
        if status is None or status.status != "finished":
            dead.append(site)
            continue
        finished.append(site)
        run = RunDir(node_dir(method, site))
        preds.update(read_arrays(run.predictions(method)))
        own = History.read(run.history(method))
        history.loss += own.loss
        history.events += own.events
        if not history.eval_points:
            history.eval_points = own.eval_points
        if status.isolated:
            isolated.append(site)
        for e in NetworkRecord.read(run.network_json).methods[method].edges:
            _merge_edge(edges, e)
        versions = RunInfo.read(run.run_json).versions
        if versions is not None and versions.torch_threads is not None:
            threads.add(versions.torch_threads)
    server_dir = node_dir(method, SERVER)
    server_status: NodeStatus | None = node_status(server_dir)
    if server_status is not None:  # FedAvg / FedProx: the server's side of every edge
        for e in NetworkRecord.read(RunDir(server_dir).network_json).methods[method].edges:
            _merge_edge(edges, e)  # a dead site's edge: only the server saw it
        history.events += History.read(RunDir(server_dir).history(method)).events
    for m in edges.values():
        if m.a in dead or m.b in dead:
            m.active_at_end = False
    for p in history.eval_points:  # epochs of the network: every site's images
        p.epochs = float(p.local_steps or 0) * batch * len(sites) / max(n_train, 1)
    history.events.sort(key=lambda e: (e.time, e.site, e.kind))
    network = MethodNetwork(edges=list(edges.values()), isolated_sites=isolated, dead_sites=dead)
    if server_status is not None:
        network.server = server_status
    return MethodRun(
        method=method,
        finished=finished,
        dead=dead,
        returncodes={},
        wall=0.0,
        predictions=preds,
        history=history,
        network=network,
        torch_threads=max(threads) if threads else None,
    )


def write_network_run(
    layout: NetworkLayout,
    cfg: ExperimentConfig,
    world: World,
    results: dict[str, MethodRun],
    *,
    started: str,
    command: str,
    total_wall: float,
    argv: Sequence[str] | None = None,
    mode: Literal["processes", "nvflare"] = "processes",
) -> RunDir:
    """The merged run directory (``mode: processes``, or ``nvflare`` when the processes ran
    inside NVIDIA FLARE) at ``layout.root``."""
    run, plan = RunDir(layout.root), layout.plan
    sites = list(plan.sites)
    write_testsets_and_data(run, world)
    network = NetworkRecord(
        topology=TopologyRecord(
            kind=cfg.topology.kind, nodes=sites, edges=[list(e) for e in plan.edges]
        ),
        methods={},
    )
    walls, throughput = {}, {}
    dead: set[str] = set()
    threads = {r.torch_threads for r in results.values() if r.torch_threads is not None}
    for method, res in results.items():
        write_arrays(run.predictions(method), res.predictions)
        res.history.write(run.history(method))
        walls[method] = res.wall
        if method != POOLED:
            network.methods[method] = res.network
            dead.update(res.dead)
        steps = cfg.training.local_steps * len(res.finished)
        throughput[method] = steps * cfg.training.batch_size / max(res.wall, 1e-9)
    network.write(run.network_json)
    RunInfo(
        seed=cfg.seed,
        mode=mode,
        methods=list(results),
        sites=[s for s in sites if s not in dead],
        dead_sites=sorted(dead),
        started=started,
        command=command,
        device="cpu",
        wall_seconds=WallSeconds(total=total_wall, per_method=walls),
        images_per_second=throughput,
        # the site processes' torch threads (the pooled reference trains in the parent)
        versions=Versions.current(max(threads) if threads else None),
        argv=list(sys.argv[1:] if argv is None else argv),
    ).write(run.run_json)
    return run


@dataclass(frozen=True)
class RunStart:
    """When a network run began, taken before its network is prepared (that time counts too)."""

    started: str  # UTC, to the second, as run.json records it
    t0: float  # time.perf_counter() then

    @classmethod
    def now(cls) -> RunStart:
        t0 = time.perf_counter()
        return cls(datetime.now(timezone.utc).isoformat(timespec="seconds"), t0)


def run_and_collect(
    cfg: ExperimentConfig,
    layout: NetworkLayout,
    world: World,
    run_method: Callable[[str, int], MethodRun],
    start: RunStart,
    *,
    log: logging.Logger,
    progress: bool,
    command: str,
    mode: Literal["processes", "nvflare"] = "processes",
) -> RunDir:
    """Run each federated method of ``cfg`` with ``run_method(method, n_train)``, train the
    pooled reference in this process, and write the merged run directory.

    ``log`` is the caller's logger, so the per-method lines keep the caller's name in the log.
    """
    n_train = sum(len(t) for t in world.train.values())
    results: dict[str, MethodRun] = {}
    for method in cfg.methods:
        if method == POOLED:
            continue
        results[method] = run_method(method, n_train)
        log.info(
            "%s: %.1f s, finished %s, dead %s",
            method,
            results[method].wall,
            results[method].finished,
            results[method].dead,
        )
    if POOLED in cfg.methods:
        # the centralised reference is not a hospital: trained here, exactly as in-process
        flat = initial_model(cfg)
        w0 = flat.flat.detach().clone()
        _, stored, wall = train_method(POOLED, cfg, world, flat, w0, progress=progress)
        results[POOLED] = MethodRun(
            POOLED, list(layout.sites), [], {}, wall, stored["predictions"], stored["history"]
        )
    return write_network_run(
        layout,
        cfg,
        world,
        results,
        started=start.started,
        command=command,
        total_wall=time.perf_counter() - start.t0,
        argv=sys.argv[1:],
        mode=mode,
    )


__all__ = [
    "MethodRun",
    "RunStart",
    "collect_method",
    "run_and_collect",
    "write_network_run",
]
