"""A site process's own run directory, in the schema of :mod:`hospitalnet.rundir_schema`.

``hospitalnet report OUT --site n3`` renders it; the multi-process launcher merges eight of them
(:mod:`hospitalnet.deploy.collect`). Written once, at the end of the run (or on SIGTERM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hospitalnet.algorithms import SERVER
from hospitalnet.config import dump_config
from hospitalnet.labels import LABELS
from hospitalnet.rundir import atomic_write_bytes, write_arrays
from hospitalnet.rundir_schema import (
    GLOBAL,
    DataSummary,
    EdgeRecord,
    GlobalTestData,
    History,
    MethodNetwork,
    NetworkRecord,
    NodeStatus,
    RunInfo,
    SiteData,
    Status,
    TopologyRecord,
    Versions,
    WallSeconds,
    event_records,
    final_key,
    label_key,
    local_testset,
    loss_points,
    patient_key,
)
from hospitalnet.site import Event
from hospitalnet.training.torch_objectives import predict_proba
from hospitalnet.transport.base import EdgeStats
from hospitalnet.world import Split

if TYPE_CHECKING:
    from hospitalnet.deploy.site_process import SiteProcess


def edge_record(
    owner: str,
    peer: str,
    pair: tuple[str, str],
    sent: dict[tuple[str, str], EdgeStats],
    received: dict[tuple[str, str], EdgeStats],
    active: bool,
    inactive_events: int,
) -> EdgeRecord:
    """One process's view of one edge: what it sent, and what it did with what it received
    (transport and loop counters together)."""
    out = sent.get((owner, peer), EdgeStats())
    inn = sent.get((peer, owner), EdgeStats())
    book = received.get((peer, owner), EdgeStats())
    rejected = {**inn.rejected}
    for reason, n in book.rejected.items():
        rejected[reason] = rejected.get(reason, 0) + n
    return EdgeRecord(
        a=pair[0],
        b=pair[1],
        messages={f"{owner}->{peer}": out.messages_sent},
        bytes={f"{owner}->{peer}": out.bytes_sent},
        received_messages={f"{peer}->{owner}": inn.messages_delivered},
        received_bytes={f"{peer}->{owner}": getattr(inn, "bytes_received", 0)},
        dropped=out.dropped,
        stale=book.stale,
        duplicates=book.duplicates + inn.duplicates,
        rejected=sum(rejected.values()),
        rejected_reasons=rejected,
        failures=dict(getattr(out, "failures", {})),
        inactive_events=inactive_events,
        active_at_end=active,
    )


def transport_events(transport: object, site: str, wall0: float) -> list[Event]:
    """A real network's neighbour state changes (gRPC, NVFlare), on the process's clock."""
    events = getattr(transport, "neighbour_events", None)
    if events is None:  # the simulated network or a site without neighbours
        return []
    return [
        Event(t - wall0, site, f"transport_{new}", nbr, detail=f"was {old}")
        for t, nbr, old, new in events()
    ]


def write_site_outputs(run: SiteProcess, status: Status, detail: str, wall: float) -> None:
    """config.yaml, testsets.npz, predictions, history, network.json, data.json, run.json and
    node.json of one site process."""
    method, site, rd, node, rec = run.opts.method, run.site, run.run, run.node, run.record
    final = node.finalize()
    testsets: dict[str, np.ndarray] = {}
    sets = {local_testset(site): run.data.local_test}
    if run.data.global_test is not None:
        sets = {GLOBAL: run.data.global_test, **sets}
    for name, split in sets.items():
        testsets[label_key(name)] = split.labels.numpy()
        testsets[patient_key(name)] = split.patients.numpy()
        rec.preds[final_key(site, name)] = predict_proba(
            run.flat, final, split.images, threads=run.threads
        ).numpy()
    atomic_write_bytes(rd.config, dump_config(run.cfg).encode())
    write_arrays(rd.testsets, testsets)
    write_arrays(rd.predictions(method), rec.preds)
    events = sorted([*node.events, *rec.events], key=lambda e: (e.time, e.kind, e.peer or ""))
    events += transport_events(run.transport, site, run.wall0)
    steps_run = max(len(rec.step_seconds), 1)
    rate = steps_run * run.cfg.training.batch_size / max(sum(rec.step_seconds), 1e-9)
    History(
        eval_points=rec.eval_points,
        loss=loss_points(site, node.losses),
        events=event_records(events),
        images_per_second=rate,
    ).write(rd.history(method))
    _network(run).write(rd.network_json)
    _data(run).write(rd.data_json)
    RunInfo(
        seed=run.cfg.seed,
        mode="deployment",
        methods=[method],
        sites=[site],
        started=run.started,
        command=run.opts.command,
        device="cpu",
        wall_seconds=WallSeconds(total=wall, per_method={method: wall}),
        images_per_second={method: rate},
        versions=Versions.current(thread_seconds=run.threads.summary()),
    ).write(rd.run_json)
    NodeStatus(
        site=site,
        method=method,
        status=status,
        detail=detail,
        steps=node.step,
        serving_ticks=node.serving_ticks,
        resumed_from_checkpoint=rec.resumed_from,
        incarnation=rec.incarnation,
        isolated=node.isolated,
        nonfinite_steps=node.nonfinite_steps,
        active_neighbours=node.active_neighbours(),
        neighbours=list(node.neighbours),
        wall_seconds=wall,
    ).write(rd.root / "node.json")


def _network(run: SiteProcess) -> NetworkRecord:
    """This site's view of its edges."""
    site, node = run.site, run.node
    sent, received = run.transport.stats(), node.book.stats()
    order = {s: k for k, s in enumerate(run.plan.sites)}  # the server sorts last

    def pair(j: str) -> tuple[str, str]:
        a, b = sorted((site, j), key=lambda s: order.get(s, len(order)))
        return a, b

    edges = [
        edge_record(
            site,
            j,
            pair(j),
            sent,
            received,
            node.book.peers[j].active,
            sum(1 for e in node.events if e.kind == "edge_inactive" and e.peer == j),
        )
        for j in node.neighbours
    ]
    nodes = [s for s in [*run.plan.sites, SERVER] if s == site or s in node.neighbours]
    return NetworkRecord(
        topology=TopologyRecord(
            kind=run.cfg.topology.kind, nodes=nodes, edges=[[e.a, e.b] for e in edges]
        ),
        methods={
            run.opts.method: MethodNetwork(
                edges=edges,
                isolated_sites=[site] if node.isolated else [],
                dead_sites=[],
                inactive_neighbours=[j for j, p in node.book.peers.items() if not p.active],
            )
        },
    )


def _prevalence(split: Split) -> dict[str, float | None]:
    lab = split.labels.numpy()
    with np.errstate(invalid="ignore"):
        values = np.nanmean(lab, axis=0) if len(lab) else np.zeros(len(LABELS))
    return {n: float(v) if np.isfinite(v) else 0.0 for n, v in zip(LABELS, values)}


def _data(run: SiteProcess) -> DataSummary:
    data = run.data
    patients = np.concatenate([data.train.patients.numpy(), data.local_test.patients.numpy()])
    shared = {}
    if data.global_test is not None:
        shared["global_test"] = GlobalTestData(
            images=len(data.global_test),
            patients=int(np.unique(data.global_test.patients.numpy()).size),
            prevalence=_prevalence(data.global_test),
        )
    return DataSummary(
        labels=list(LABELS),
        sites={
            run.site: SiteData(
                description=data.manifest.description,
                loader=data.manifest.data.loader,
                patients=int(np.unique(patients).size),
                train_images=len(data.train),
                test_images=len(data.local_test),
                prevalence=_prevalence(data.train),
                skipped=data.skipped,
                converted=data.converted,
            )
        },
        **shared,
    )


__all__ = ["edge_record", "transport_events", "write_site_outputs"]
