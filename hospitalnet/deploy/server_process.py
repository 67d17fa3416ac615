"""The FedAvg / FedProx aggregation server as its own process: ``hospitalnet server run``.

The peer-to-peer methods need nobody in the middle; FedAvg and FedProx do. This process runs the
server loop the simulation runs (:class:`~hospitalnet.site.ServerNode`, built by
:func:`hospitalnet.assembly.build_server`) over :class:`~hospitalnet.transport.grpc.
GrpcTransport` with mutual TLS under the reserved identity ``server`` (``hospitalnet pki issue
server``), listening on the plan's ``server.address``. The hospitals run ``hospitalnet site run
--method fedavg`` with the same plan.

- **Start.** The global model starts at w0 (:func:`hospitalnet.assembly.initial_model`), as the
  sites' do (the model fingerprint in every envelope checks that they agree). The average is
  weighted by n_i, so the plan must give every site's ``train_samples``.
- **Rounds.** Once every site it considers active has sent its model, the server averages and
  sends the new global model to every site. The run is over after ``local_steps // K`` rounds
  (the last round every site takes part in), when no site has been heard for
  ``deploy.inactive_after_s`` after the first round, at ``deploy.max_wall_s`` or on SIGTERM. It
  then waits (at most ``deploy.linger_max_s``) until the last global model has left for every
  live site.
- **Liveness.** Before the first round the server waits (``deploy.startup_wait_s``) until every
  site answered once, and counts silence from then on. On server edges a heartbeat counts as
  being heard, at both ends
  (:func:`hospitalnet.deploy.liveness.hear_heartbeats`). A killed site goes inactive after D
  seconds and the rounds go on without it; it rejoins with its next model.
- **Checkpoints.** Through the server loop's ``state_dict``: the global model, the round count and
  the per-site receive marks, every ``deploy.checkpoint_every`` local steps' worth of rounds, at
  the end and on SIGTERM; ``--resume`` continues from the newest good one.
- **Outputs.** ``node.json``, ``network.json`` (its side of every edge) and
  ``history/<method>.json`` (events, rounds) in its own run directory.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hospitalnet import __version__
from hospitalnet.algorithms import SERVER, make_algorithm
from hospitalnet.assembly import build_server, initial_model, server_sample_counts, site_rules
from hospitalnet.checkpoint import load_latest, save_checkpoint
from hospitalnet.config import ExperimentConfig, dump_config
from hospitalnet.deploy.liveness import (
    hear_heartbeats,
    seq_floor,
    transport_limits,
    wait_for_neighbours,
)
from hospitalnet.deploy.site_outputs import edge_record, transport_events
from hospitalnet.deploy.site_process import TransportFactory
from hospitalnet.errors import ConfigError
from hospitalnet.pki import site_credentials
from hospitalnet.plan import NetworkPlan
from hospitalnet.rundir import RunDir, atomic_write_bytes
from hospitalnet.rundir_schema import (
    History,
    MethodNetwork,
    NetworkRecord,
    NodeStatus,
    Status,
    TopologyRecord,
    event_records,
)
from hospitalnet.site import Event
from hospitalnet.transport.base import Transport
from hospitalnet.transport.grpc import GrpcTransport

log = logging.getLogger(__name__)

_IDLE_SLEEP_S = 0.002


@dataclass(frozen=True)
class ServerRunOptions:
    """What ``hospitalnet server run`` was asked to do."""

    plan: NetworkPlan
    out: Path
    pki_dir: Path
    method: str = "fedavg"
    resume: bool = False
    listen: str | None = None
    command: str = "hospitalnet server run"


@dataclass
class ServerOutcome:
    status: Status
    rounds: int
    wall_seconds: float
    detail: str = ""


class ServerProcess:
    """One server run: the assembled server loop, its transport, checkpoints and outputs."""

    def __init__(
        self,
        opts: ServerRunOptions,
        cfg: ExperimentConfig,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.opts, self.cfg = opts, cfg
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.run = RunDir(opts.out)
        self.ckpt_dir = self.run.root / "checkpoints"
        if not make_algorithm(opts.method, cfg.ecl, cfg.fedprox, cfg.training).uses_server:
            raise ConfigError(
                f"method {opts.method!r} is peer to peer and has no server; use fedavg or fedprox"
            )
        plan = self.plan = opts.plan
        listen = opts.listen or plan.server_address
        if not listen:
            raise ConfigError("network plan: server.address: needed to run the server")
        no_address = [s for s in plan.sites if s not in plan.addresses]
        if no_address:
            raise ConfigError(f"network plan: sites.{no_address[0]}.address: missing")
        server_sample_counts(plan)  # a plan the server cannot use fails before any socket
        self.flat = initial_model(cfg)
        self.transport: Transport
        if transport_factory is not None:  # another engine's messaging (NVFlare)
            self.transport = transport_factory(
                SERVER, tuple(plan.sites), self.flat.fingerprint(), self.flat.numel
            )
        else:
            self.transport = GrpcTransport(
                SERVER,
                listen,
                {s: plan.addresses[s] for s in plan.sites},
                site_credentials(opts.pki_dir, SERVER),
                self.flat.fingerprint(),
                self.flat.numel,
                transport_limits(cfg),
            )
        try:
            self.node = build_server(
                plan,
                self.transport,
                self.clock,
                site_rules(cfg, "seconds"),
                w0=self.flat.flat.detach().clone(),
                site_weighting=cfg.training.site_weighting,
            )
        except BaseException:
            self.transport.close()  # a plan the server cannot use: nothing keeps running
            raise
        # every K steps, plus the last round after the final step when K does not divide it
        self.target_rounds = -(-cfg.training.local_steps // cfg.network.exchange_every)
        self.incarnation = 0
        self.resumed_from: int | None = None

    def clock(self) -> float:
        return time.monotonic() - self.t0

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path:
        tensors, meta = self.node.state_dict()
        meta = {
            "site": SERVER,
            "method": self.opts.method,
            "seed": self.cfg.seed,
            "incarnation": self.incarnation,
            **meta,
        }
        return save_checkpoint(
            self.ckpt_dir,
            tensors,
            meta,
            model_fingerprint=self.flat.fingerprint(),
            keep=self.cfg.deploy.checkpoints_kept,
        )

    def resume(self) -> None:
        ckpt = load_latest(self.ckpt_dir, self.flat.fingerprint())
        if ckpt is None:
            log.info("server: no checkpoint to resume from; starting fresh")
            return
        meta = ckpt.meta
        if meta.get("site") != SERVER or meta.get("method") != self.opts.method:
            raise ConfigError(
                f"{ckpt.path}: written by {meta.get('site')!r} / method {meta.get('method')!r}, "
                f"not the {self.opts.method} server"
            )
        self.incarnation = int(meta["incarnation"]) + 1
        self.node.load_state_dict(ckpt.tensors, meta, seq_floor=seq_floor(self.incarnation))
        self.resumed_from = ckpt.index
        rounds = self.node.state.rounds
        self.node.events.append(
            Event(self.clock(), SERVER, "resumed", detail=f"checkpoint {ckpt.index} round {rounds}")
        )
        log.info("server: resumed from checkpoint %d at round %d", ckpt.index, rounds)

    # ---- the loop -------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        """Wait (``deploy.startup_wait_s``) until every site answered once; silence counts from
        then on, as at a site. Without it a site slower to start than D was dropped from the
        first rounds, and a short run could end before it joined."""
        wait_for_neighbours(SERVER, self.transport, self.cfg.deploy.startup_wait_s, stop)
        self.node.book.restart_silence(self.clock())

    def loop(self, stop: threading.Event) -> Status:
        d, node = self.cfg.deploy, self.node
        deadline = time.monotonic() + d.max_wall_s
        every = max(1, d.checkpoint_every // self.cfg.network.exchange_every)
        start_rounds = node.state.rounds
        while node.state.rounds < self.target_rounds:
            if stop.is_set():
                return "stopped"
            if time.monotonic() > deadline:
                log.warning("server: deploy.max_wall_s reached; stopping")
                return "stopped"
            hear_heartbeats(node.book, self.transport, self.clock())
            if node.tick():
                if d.checkpoint_every and node.state.rounds % every == 0:
                    self.save()
                continue
            if node.state.rounds > start_rounds and not any(
                p.active for p in node.book.peers.values()
            ):
                log.warning("server: no site heard for %.0f s; stopping", d.inactive_after_s)
                return "finished"
            stop.wait(_IDLE_SLEEP_S)
        if not self.transport.flush(d.linger_max_s):
            log.warning("server: the last global model did not reach every live site")
        return "finished"

    # ---- outputs --------------------------------------------------------------------------
    def write_outputs(self, status: Status, wall: float) -> None:
        method, node, rd = self.opts.method, self.node, self.run
        atomic_write_bytes(rd.config, dump_config(self.cfg).encode())
        sent, received = self.transport.stats(), node.book.stats()
        edges = [
            edge_record(
                SERVER,
                s,
                (s, SERVER),
                sent,
                received,
                node.book.peers[s].active,
                sum(1 for e in node.events if e.kind == "edge_inactive" and e.peer == s),
            )
            for s in self.plan.sites
        ]
        events = [*node.events, *transport_events(self.transport, SERVER, self.wall0)]
        events.sort(key=lambda e: (e.time, e.kind, e.peer or ""))
        History(events=event_records(events), rounds=node.state.rounds).write(rd.history(method))
        NetworkRecord(
            topology=TopologyRecord(
                kind="star",
                nodes=[*self.plan.sites, SERVER],
                edges=[[s, SERVER] for s in self.plan.sites],
            ),
            methods={method: MethodNetwork(edges=edges, isolated_sites=[], dead_sites=[])},
        ).write(rd.network_json)
        NodeStatus(
            site=SERVER,
            method=method,
            status=status,
            rounds=node.state.rounds,
            target_rounds=self.target_rounds,
            resumed_from_checkpoint=self.resumed_from,
            incarnation=self.incarnation,
            active_sites=[s for s, p in node.book.peers.items() if p.active],
            wall_seconds=wall,
            started=self.started,
            command=self.opts.command,
            hospitalnet=__version__,
        ).write(rd.root / "node.json")


def run_server(
    opts: ServerRunOptions,
    cfg: ExperimentConfig,
    stop: threading.Event | None = None,
    transport_factory: TransportFactory | None = None,
) -> ServerOutcome:
    """Serve FedAvg/FedProx rounds until the last one, ``stop`` (SIGTERM) or the deadline;
    checkpoint and write the server's run directory. ``transport_factory`` None = gRPC."""
    stop = stop or threading.Event()
    if not opts.resume and any((opts.out / "checkpoints").glob("ckpt-*.json")):
        raise ConfigError(
            f"{opts.out}: holds checkpoints of an earlier run; use --resume or another --out"
        )
    t0 = time.monotonic()
    run = ServerProcess(opts, cfg, transport_factory)
    try:
        if opts.resume:
            run.resume()
        run.start(stop)
        status = run.loop(stop)
        run.save()
        run.write_outputs(status, time.monotonic() - t0)
    finally:
        run.transport.close()
    log.info("server: %s after %d rounds", status, run.node.state.rounds)
    return ServerOutcome(status, run.node.state.rounds, time.monotonic() - t0)


__all__ = ["ServerOutcome", "ServerProcess", "ServerRunOptions", "run_server"]
