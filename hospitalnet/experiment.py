"""The main job: train every configured method on the eight-hospital world and write a run.

One function per phase, in the order the data flows: world -> site tensors -> per-method training
(the same site loop for every method, pooled included) -> predictions -> run directory. Numbers
and pictures are the ``evaluation`` package's job (``hospitalnet report`` re-renders them).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from tqdm import tqdm

from hospitalnet.assembly import (
    evaluation_every,
    initial_model,
    site_objective,
    thread_governor,
)
from hospitalnet.config import ExperimentConfig, dump_config
from hospitalnet.errors import ConfigError
from hospitalnet.models.flat import FlatParams
from hospitalnet.rundir import RunDir, atomic_write_bytes, write_arrays
from hospitalnet.rundir_schema import (
    GLOBAL,
    EdgeRecord,
    EvalPoint,
    History,
    MethodNetwork,
    NetworkRecord,
    RunInfo,
    TopologyRecord,
    Versions,
    WallSeconds,
    curve_key,
    event_records,
    final_key,
    local_testset,
    loss_points,
)
from hospitalnet.simulation import SimulationResult, run_network, run_pooled
from hospitalnet.threads import ThreadGovernor
from hospitalnet.training.schedule import lr_schedule
from hospitalnet.training.torch_objectives import predict_proba
from hospitalnet.world import World, ensure_world, load_world, write_testsets_and_data

log = logging.getLogger(__name__)
POOLED = "pooled"


class MethodOutputs(TypedDict):
    """What one method's training stores: ``predictions/<method>.npz`` and its history."""

    predictions: dict[str, np.ndarray]
    history: History


def train_method(
    method: str,
    cfg: ExperimentConfig,
    world: World,
    flat: FlatParams,
    w0: torch.Tensor,
    *,
    progress: bool,
    threads: ThreadGovernor | None = None,
) -> tuple[SimulationResult, MethodOutputs, float]:
    """Train one method; return its result, its stored predictions and history, its wall
    seconds. ``threads`` (:func:`~hospitalnet.assembly.thread_governor`) is polled between
    steps and evaluation minibatches."""
    sites = list(world.train)
    steps = cfg.training.local_steps
    batch = cfg.training.batch_size
    n_train = sum(len(t) for t in world.train.values())
    preds: dict[str, np.ndarray] = {}
    eval_points: list[EvalPoint] = []
    # The pooled reference takes the same number of steps as every site, each on a batch as large
    # as all sites' batches together: what synchronous data-parallel training on the pooled data
    # would do with the same hardware, images and updates (FedAvg with K = 1 on IID sites is
    # exactly this). A serial pooled run with n_sites times the steps at the site batch would win
    # on sequential updates alone, which no parallel method can match at an equal learning rate.
    total_steps = steps
    images_per_step = batch * len(sites)
    every = evaluation_every(cfg)

    def on_eval(k: int, params: dict[str, torch.Tensor]) -> None:
        point = len(eval_points)
        eval_points.append(EvalPoint(k=point, virtual_time=float(k)))
        shared = None
        if method == POOLED:  # one model scored at every site: predict once
            shared = predict_proba(flat, params[POOLED], world.global_test.images, threads=threads)
        for site in sites:
            p = (
                shared
                if shared is not None
                else predict_proba(flat, params[site], world.global_test.images, threads=threads)
            )
            preds[curve_key(point, site, GLOBAL)] = p.numpy().astype(np.float16)

    bar = tqdm(total=total_steps, desc=f"train {method}", unit="step", disable=not progress)

    def on_progress(done: int, total: int) -> None:
        # ``done`` counts local steps summed over sites; show it as steps of the whole network.
        bar.update(round(done * total_steps / max(total, 1)) - bar.n)

    schedule = lr_schedule(cfg.training, steps)
    t0 = time.perf_counter()
    seed = cfg.seed
    if method == POOLED:
        pooled = world.pooled_train()
        obj = site_objective(
            cfg,
            flat,
            pooled.images,
            pooled.labels,
            POOLED,
            batch_size=images_per_step,
            threads=threads,
        )
        result = run_pooled(
            obj,
            total_steps,
            seed,
            training=cfg.training,
            w0=w0,
            eval_every=every,
            eval_fn=on_eval,
            progress=on_progress,
            lr_schedule=schedule,
        )
        finals = {site: result.params[POOLED] for site in sites}
    else:
        objectives = {
            site: site_objective(
                cfg, flat, world.train[site].images, world.train[site].labels, site, threads=threads
            )
            for site in sites
        }
        result = run_network(
            method,
            objectives,
            cfg.topology,
            steps,
            seed,
            training=cfg.training,
            ecl=cfg.ecl,
            fedprox=cfg.fedprox,
            network=cfg.network,
            w0=w0,
            eval_every=every,
            eval_fn=on_eval,
            progress=on_progress,
            lr_schedule=schedule,
        )
        finals = result.params
    bar.update(total_steps - bar.n)
    bar.close()
    wall = time.perf_counter() - t0
    # the x axis is work done, not virtual time: FedAvg's rounds wait for the slowest site, so
    # its clock runs ahead of its steps
    for point, done in zip(eval_points, result.evaluation_steps, strict=True):
        point.local_steps = round(done, 1)
        point.epochs = done * images_per_step / n_train
    on_global: dict[int, np.ndarray] = {}  # pooled: one model shared by every site
    for site in sites:
        w = finals[site]
        if id(w) not in on_global:
            on_global[id(w)] = predict_proba(
                flat, w, world.global_test.images, threads=threads
            ).numpy()
        preds[final_key(site, GLOBAL)] = on_global[id(w)]
        preds[final_key(site, local_testset(site))] = predict_proba(
            flat, finals[site], world.local_test[site].images, threads=threads
        ).numpy()
    history = History(
        eval_points=eval_points,
        loss=[p for s, v in result.losses.items() for p in loss_points(s, v)],
        events=event_records(result.events),
        images_per_second=total_steps * images_per_step / max(wall, 1e-9),
    )
    return result, MethodOutputs(predictions=preds, history=history), wall


def network_record(result: SimulationResult) -> MethodNetwork:
    """Every edge's counters of a simulated method (both directions merged)."""
    edges: dict[tuple[str, str], EdgeRecord] = {}
    for (a, b), st in result.edge_stats.items():
        lo, hi = sorted((a, b))
        e = edges.get((lo, hi))
        if e is None:
            e = edges[(lo, hi)] = EdgeRecord(
                a=lo, b=hi, messages={}, bytes={}, dropped=0, stale=0, duplicates=0,
                rejected=0, inactive_events=0, active_at_end=True,
            )  # fmt: skip
        e.messages[f"{a}->{b}"] = st.messages_sent
        e.bytes[f"{a}->{b}"] = st.bytes_sent
        e.dropped += st.dropped
        e.stale += st.stale
        e.duplicates += st.duplicates
        e.rejected += sum(st.rejected.values())
    for ev in result.events:
        if ev.peer is None:
            continue
        lo, hi = sorted((ev.site, ev.peer))
        edge = edges.get((lo, hi))
        if edge is None:
            continue
        if ev.kind == "edge_inactive":
            edge.inactive_events += 1
            edge.active_at_end = False
        elif ev.kind == "edge_active":
            edge.active_at_end = True
    return MethodNetwork(
        edges=list(edges.values()),
        isolated_sites=list(result.isolated),
        dead_sites=sorted(result.failed),
    )


def run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    *,
    progress: bool = True,
    command: str = "hospitalnet simulate",
) -> RunDir:
    """Run every method of ``cfg`` and write the run directory ``out`` (without the report)."""
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not cfg.methods:
        raise ConfigError("methods: at least one method is needed")
    if cfg.training.device not in ("cpu", "auto") and not torch.cuda.is_available():
        raise ConfigError(
            f"training.device: {cfg.training.device!r} requested but CUDA is not available"
        )
    run = RunDir(out)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.config, dump_config(cfg).encode())

    root = ensure_world(cfg, progress=progress)
    world = load_world(cfg, root, progress=progress)
    sites = list(world.train)

    want_cuda = cfg.training.device == "cuda" or (
        cfg.training.device == "auto" and torch.cuda.is_available()
    )
    device = torch.device("cuda" if want_cuda else "cpu")
    # Site images stay on the host as uint8; each minibatch moves to the device when drawn.
    flat = initial_model(cfg, device)
    w0 = flat.flat.detach().clone()
    threads = thread_governor(cfg, flat, [len(t) for t in world.train.values()], pooled=True)

    write_testsets_and_data(run, world)
    network = NetworkRecord(methods={})
    walls: dict[str, float] = {}
    throughput: dict[str, float] = {}
    for method in cfg.methods:
        result, stored, walls[method] = train_method(
            method, cfg, world, flat, w0, progress=progress, threads=threads
        )
        throughput[method] = stored["history"].images_per_second or 0.0
        write_arrays(run.predictions(method), stored["predictions"])
        stored["history"].write(run.history(method))
        if result.edge_stats:
            network.methods[method] = network_record(result)
        if result.topology is not None and result.topology.edges and network.topology is None:
            network.topology = TopologyRecord(
                kind=cfg.topology.kind,
                nodes=list(result.topology.nodes),
                edges=[list(e) for e in result.topology.edges],
            )
        log.info("%s: %.1f s, %.0f images/s", method, walls[method], throughput[method])
    if network.topology is None:
        network.topology = TopologyRecord(kind=cfg.topology.kind, nodes=sites, edges=[])
    network.write(run.network_json)
    RunInfo(
        seed=cfg.seed,
        mode="simulation",
        methods=list(cfg.methods),
        sites=sites,
        started=started,
        command=command,
        device=device.type,
        wall_seconds=WallSeconds(total=time.perf_counter() - t_start, per_method=walls),
        images_per_second=throughput,
        versions=Versions.current(thread_seconds=threads.summary()),
        argv=sys.argv[1:],
    ).write(run.run_json)
    return run
