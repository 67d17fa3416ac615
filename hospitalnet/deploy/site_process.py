"""One hospital as its own process: ``hospitalnet site run`` (:func:`run_site`).

What runs is what the simulation runs: the site is built by :func:`hospitalnet.assembly.
build_site` from the same config, plan and seed, and :class:`~hospitalnet.site.SiteNode` drives
the same algorithm transitions. Only the transport (:class:`~hospitalnet.transport.grpc.
GrpcTransport` with mutual TLS instead of the simulated network) and the clock (seconds instead of
virtual steps, so D is ``deploy.inactive_after_s``) differ.

Around the loop, in the order a run goes:

1. **Data.** The manifest's loader; the shared evaluation set when one is known (``--global-test``,
   or the synthetic world's ``sites/global/global.yaml``).
2. **Site.** The plan (:mod:`hospitalnet.plan`) gives site order, edges, sizes and addresses.
3. **Start.** Wait (``deploy.startup_wait_s``) until every neighbour answered, then for the agreed
   start (:mod:`hospitalnet.deploy.liveness`).
4. **Loop.** Evaluate at the shared evaluation points (:func:`hospitalnet.assembly.
   evaluation_points`); checkpoint every ``deploy.checkpoint_every`` steps; after the last step
   linger by :meth:`~hospitalnet.site.SiteNode.linger_over`, for at least ``linger_grace_s`` and at
   most ``linger_max_s``.
5. **End.** A final checkpoint (also on SIGTERM) and the site's own run directory
   (:mod:`hospitalnet.deploy.site_outputs`).

Checkpoints go through the public ``state_dict`` / ``load_state_dict`` of the site loop (algorithm
state, counters, sequence numbers, receive marks) and of the minibatch sampler. ``--resume``
continues from the newest good one. Every wait has a deadline; nothing is unpickled; logs name
sites, never patients or image paths.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from hospitalnet.algorithms import SERVER, make_algorithm
from hospitalnet.assembly import (
    build_site,
    evaluation_points,
    initial_model,
    site_context,
    site_neighbours,
    site_objective,
    site_rules,
    thread_governor,
)
from hospitalnet.checkpoint import load_latest, save_checkpoint
from hospitalnet.config import ExperimentConfig
from hospitalnet.data.dataset import load_site
from hospitalnet.data.manifest import SiteManifest, load_manifest
from hospitalnet.deploy.liveness import (
    NoNetwork,
    hear_heartbeats,
    seq_floor,
    transport_limits,
    wait_for_neighbours,
    wait_for_start,
)
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.messages import MessageKind
from hospitalnet.pki import credentials_from_identity, site_credentials
from hospitalnet.plan import NetworkPlan, plan_from_manifest
from hospitalnet.rundir import RunDir, read_arrays
from hospitalnet.rundir_schema import (
    GLOBAL,
    EvalPoint,
    NodeStatus,
    Status,
    curve_key,
    local_testset,
)
from hospitalnet.site import Event, SiteFailure, TickResult
from hospitalnet.threads import ThreadSetting
from hospitalnet.training.torch_objectives import predict_proba
from hospitalnet.transport.base import Transport
from hospitalnet.transport.grpc import GrpcTransport
from hospitalnet.transport.grpc_wire import PayloadSizes
from hospitalnet.world import Split

#: Tests only: a site process whose environment sets this kills itself with SIGKILL right after
#: that local step (a crash at a deterministic point; ``launcher.start_node(test_exit_at_step=)``).
TEST_EXIT_AT_STEP = "HOSPITALNET_TEST_EXIT_AT_STEP"

log = logging.getLogger(__name__)

_IDLE_SLEEP_S = 0.005

#: builds a site's transport from (site, neighbours, model fingerprint, payload sizes): another engine's
#: messaging (:mod:`hospitalnet.transport.nvflare`) instead of gRPC
TransportFactory = Callable[[str, tuple[str, ...], str, PayloadSizes], Transport]


@dataclass(frozen=True)
class SiteRunOptions:
    """What ``hospitalnet site run`` was asked to do.

    Attributes
    ----------
    manifest:
        The site manifest (data source, identity, neighbours).
    out:
        This site's run directory (checkpoints under ``out/checkpoints``).
    method:
        ``ecl`` (default), its variants, ``gossip``, ``local``, ``fedavg`` or ``fedprox`` (the
        last two need the server process and the plan's ``server.address``).
    plan:
        The network plan; None = the manifest's own (see :mod:`hospitalnet.plan`).
    pki_dir:
        Folder with ``ca.pem``, ``SITE.pem``, ``SITE.key``; None = the manifest's ``network``.
    listen:
        ``host:port`` to listen on; None = the plan's / manifest's address for this site.
    global_manifest:
        Manifest of the shared evaluation set; None = the synthetic world's, when it exists:
        ``../global/global.yaml`` next to the manifest's folder, or ``sites/global/global.yaml``
        beside the data root (what the shipped ``sites/n*.yaml`` read).
    cache_dir:
        Decoded-tensor cache; None = no cache.
    start_at:
        Wall-clock time (epoch seconds) before which training does not start.
    start_file:
        For launchers: once its neighbours answered, the site writes ``OUT/ready.json`` and waits
        until this file exists; it holds the start time (epoch seconds).
    threads:
        torch threads: ``"config"`` (default) = the config's ``training.threads``; else a number,
        ``"auto"`` or None as there (:func:`hospitalnet.assembly.thread_governor`).
    """

    manifest: Path
    out: Path
    method: str = "ecl"
    resume: bool = False
    plan: NetworkPlan | None = None
    pki_dir: Path | None = None
    listen: str | None = None
    global_manifest: Path | None = None
    cache_dir: Path | None = None
    start_at: float | None = None
    start_file: Path | None = None
    command: str = "hospitalnet site run"
    threads: ThreadSetting | Literal["config"] = "config"


@dataclass
class SiteOutcome:
    site: str
    status: Status
    steps: int
    resumed_from: int | None
    wall_seconds: float
    detail: str = ""


@dataclass(frozen=True)
class SiteData:
    """A site's decoded data in a deployment (its own images, and the shared test set)."""

    manifest: SiteManifest
    train: Split
    local_test: Split
    global_test: Split | None
    skipped: dict[str, int] = field(default_factory=dict)  # images left out, by reason
    converted: dict[str, int] = field(default_factory=dict)  # converted or dropped, by kind


def load_site_data(opts: SiteRunOptions, cfg: ExperimentConfig) -> SiteData:
    """Decode the site's images (and the shared evaluation set, when one is known)."""
    manifest, data_root = load_manifest(opts.manifest)
    tensors = load_site(opts.manifest, cfg.data.image_size, opts.cache_dir, progress=False)
    train, local_test = Split.of(tensors, "train"), Split.of(tensors, "test")
    if len(train) == 0:
        raise DataError(f"site {manifest.site}: no training images; it cannot take part")
    gm = opts.global_manifest
    if gm is None:  # the synthetic world's layout: WORLD/sites/{n3,global}/, WORLD/nih/
        guesses = [
            opts.manifest.resolve().parent.parent / GLOBAL / f"{GLOBAL}.yaml",
            data_root.parent / "sites" / GLOBAL / f"{GLOBAL}.yaml",
        ]
        gm = next((g for g in guesses if g.is_file()), None)
    global_test = (
        Split.of(load_site(gm, cfg.data.image_size, opts.cache_dir, progress=False), "test")
        if gm is not None
        else None
    )
    return SiteData(
        manifest,
        train,
        local_test,
        global_test,
        dict(tensors.skip_reasons),
        dict(tensors.notes),
    )


@dataclass
class SiteRecord:
    """What the site process keeps for its run directory besides the loop's own state."""

    preds: dict[str, np.ndarray] = field(default_factory=dict)
    eval_points: list[EvalPoint] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    incarnation: int = 0
    resumed_from: int | None = None


class SiteProcess:
    """One site run: its data, the assembled site, its transport, checkpoints and the loop.

    ``transport`` None = gRPC with mutual TLS to the plan's addresses (a test may inject one);
    ``transport_factory`` builds it instead, once the neighbours are known (NVFlare).
    """

    def __init__(
        self,
        opts: SiteRunOptions,
        cfg: ExperimentConfig,
        data: SiteData,
        transport: Transport | None = None,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.opts, self.cfg, self.data = opts, cfg, data
        self.site = data.manifest.site
        self.t0 = time.monotonic()
        self.wall0 = time.time()  # the transport reports wall-clock times
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.run = RunDir(opts.out)
        self.ckpt_dir = self.run.root / "checkpoints"
        self.record = SiteRecord()
        self.test_exit_at = int(os.environ.get(TEST_EXIT_AT_STEP, "0")) or None
        # ---- the site, built as every runner builds it (hospitalnet.assembly) ----
        self.flat = initial_model(cfg)
        self.algorithm = make_algorithm(opts.method, cfg.ecl, cfg.fedprox, cfg.training)
        self.plan = opts.plan or plan_from_manifest(data.manifest)
        if self.site not in self.plan.sites:
            raise ConfigError(f"network plan: site {self.site!r} is not in it")
        self.threads = thread_governor(cfg, self.flat, [len(data.train)], opts.threads)
        self.objective = site_objective(
            cfg, self.flat, data.train.images, data.train.labels, self.site, threads=self.threads
        )
        w0 = self.flat.flat.detach().clone()
        # a plan this site cannot use (e.g. sizes missing) fails before any socket opens
        site_context(self.site, self.plan, cfg, self.algorithm, w0, len(data.train))
        neighbours = site_neighbours(self.site, self.plan, self.algorithm)
        # elements per payload kind on the wire (an ECL request is [w, lam]: twice the model)
        self.payload_sizes = {
            kind: self.algorithm.payload_spec(kind, w0)[0]
            for kind in (MessageKind.DUAL, MessageKind.MODEL)
        }
        if transport is None and transport_factory is not None and neighbours:
            transport = transport_factory(
                self.site, neighbours, self.flat.fingerprint(), self.payload_sizes
            )
        self.transport = transport or self._grpc_transport(neighbours)
        try:
            self.node = build_site(
                self.site,
                self.plan,
                cfg,
                self.algorithm,
                self.objective,
                self.transport,
                self.clock,
                site_rules(cfg, "seconds"),
                w0=w0,
            )
        except BaseException:
            self.transport.close()  # a plan this site cannot use: nothing keeps running
            raise

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def _grpc_transport(self, neighbours: tuple[str, ...]) -> Transport:
        """gRPC with mutual TLS to ``neighbours`` (none: a transport that never sends)."""
        opts, manifest, plan = self.opts, self.data.manifest, self.plan
        if not neighbours:
            return NoNetwork(self.site)
        creds = (
            site_credentials(opts.pki_dir, self.site)
            if opts.pki_dir is not None
            else credentials_from_identity(manifest.network, self.site, opts.manifest.parent)
        )
        addresses = dict(plan.addresses)
        if plan.server_address:
            addresses[SERVER] = plan.server_address
        missing = [j for j in neighbours if j not in addresses]
        if missing == [SERVER]:
            raise ConfigError(
                f"network plan: server.address: method {opts.method!r} needs the server's "
                "address (give --network FILE)"
            )
        if missing:
            raise ConfigError(f"network plan: no address for neighbour {missing[0]!r}")
        listen = opts.listen or plan.addresses.get(self.site) or manifest.network.address
        return GrpcTransport(
            self.site,
            listen,
            {j: addresses[j] for j in neighbours},
            creds,
            self.flat.fingerprint(),
            self.payload_sizes,
            transport_limits(self.cfg),
        )

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path:
        tensors, meta = self.node.state_dict()
        sampler_tensors, sampler_meta = self.objective.sampler.state_dict()
        tensors.update({f"sampler.{k}": v for k, v in sampler_tensors.items()})
        meta = {
            "site": self.site,
            "method": self.opts.method,
            "seed": self.cfg.seed,
            "incarnation": self.record.incarnation,
            **meta,
            "sampler_pos": sampler_meta["pos"],
            "eval_points": [p.to_json() for p in self.record.eval_points],
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
            log.info("%s: no checkpoint to resume from; starting fresh", self.site)
            return
        meta, rec = ckpt.meta, self.record
        if meta.get("site") != self.site or meta.get("method") != self.opts.method:
            raise ConfigError(
                f"{ckpt.path}: written by site {meta.get('site')!r} / method "
                f"{meta.get('method')!r}, not {self.site!r} / {self.opts.method!r}"
            )
        rec.incarnation = int(meta["incarnation"]) + 1
        self.node.load_state_dict(ckpt.tensors, meta, seq_floor=seq_floor(rec.incarnation))
        sampler = {k.removeprefix("sampler."): v for k, v in ckpt.tensors.items()}
        self.objective.sampler.load_state_dict(sampler, {"pos": meta["sampler_pos"]})
        rec.eval_points = [EvalPoint.parse(p, ckpt.path) for p in meta.get("eval_points", [])]
        old = self.run.predictions(self.opts.method)
        if old.exists():
            rec.preds = {k: v for k, v in read_arrays(old).items() if k.startswith("curve")}
        rec.resumed_from = ckpt.index
        step = self.node.step
        rec.events.append(
            Event(self.clock(), self.site, "resumed", detail=f"checkpoint {ckpt.index} step {step}")
        )
        log.info("%s: resumed from checkpoint %d at step %d", self.site, ckpt.index, step)

    # ---- evaluation -------------------------------------------------------------------------
    def maybe_evaluate(self) -> None:
        """Evaluate once the site's steps reach the next shared evaluation point."""
        targets = [math.ceil(x) for x in evaluation_points(self.cfg)]
        k = len(self.record.eval_points)
        if k >= len(targets) or self.node.step < targets[k]:
            return
        data = self.data
        testset = GLOBAL if data.global_test is not None else local_testset(self.site)
        images = (data.global_test or data.local_test).images
        p = predict_proba(self.flat, self.node.params, images, threads=self.threads)
        self.record.preds[curve_key(k, self.site, testset)] = p.numpy().astype(np.float16)
        step = self.node.step
        self.record.eval_points.append(
            EvalPoint(
                k=k,
                local_steps=step,
                virtual_time=float(step),
                epochs=step * self.cfg.training.batch_size / len(data.train),
            )
        )

    # ---- the loop ---------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        """Wait for the neighbours and the agreed start; silence is measured from then on."""
        d = self.cfg.deploy
        wait_for_neighbours(self.site, self.transport, d.startup_wait_s, stop)
        opts = self.opts
        wait_for_start(
            self.site,
            self.run.root,
            self.cfg,
            stop,
            start_at=opts.start_at,
            start_file=opts.start_file,
        )
        self.node.book.restart_silence(self.clock())

    def loop(self, stop: threading.Event) -> Status:
        d, node, rec = self.cfg.deploy, self.node, self.record
        deadline = time.monotonic() + d.max_wall_s
        lingering_since: float | None = None
        last_ckpt_step = node.step
        while True:
            if stop.is_set():
                return "stopped"
            if time.monotonic() > deadline:
                log.warning("%s: deploy.max_wall_s reached; stopping", self.site)
                return "stopped"
            t = time.monotonic()
            if self.algorithm.uses_server:
                hear_heartbeats(node.book, self.transport, self.clock())
            result = node.tick()
            if result is TickResult.STEPPED:
                if node.step == self.test_exit_at:  # tests only: a crash at a known step
                    os.kill(os.getpid(), signal.SIGKILL)
                rec.step_seconds.append(time.monotonic() - t)
                self.maybe_evaluate()
                if d.checkpoint_every and node.step - last_ckpt_step >= d.checkpoint_every:
                    self.save()
                    last_ckpt_step = node.step
                if d.step_interval_s:
                    stop.wait(max(0.0, d.step_interval_s - (time.monotonic() - t)))
                continue
            # done: all steps taken and not waiting for anything (FedAvg: the last global model)
            if node.done:
                now = time.monotonic()
                if lingering_since is None:
                    lingering_since = now
                    self.maybe_evaluate()
                if not node.lingering:
                    return "finished"
                # the linger rule (SiteNode.linger_over) within wall-clock bounds
                waited = now - lingering_since
                if (waited >= d.linger_grace_s and node.linger_over()) or (
                    waited >= d.linger_max_s
                ):
                    return "finished"
                # serving ticks at the pace of training steps (as the simulation's clock does)
                pace = max(d.step_interval_s, float(np.mean(rec.step_seconds[-50:] or [0.01])))
                stop.wait(max(pace, 0.002))
                continue
            stop.wait(_IDLE_SLEEP_S)  # IDLE or ROLLED_BACK: nothing to do right now


def run_site(
    opts: SiteRunOptions,
    cfg: ExperimentConfig,
    stop: threading.Event | None = None,
    transport_factory: TransportFactory | None = None,
) -> SiteOutcome:
    """Run one hospital until its steps are done (and its neighbours too), ``stop`` is set
    (SIGTERM) or ``deploy.max_wall_s`` passes; checkpoint and write its run directory.
    ``transport_factory`` None = gRPC with mutual TLS (see :class:`SiteProcess`)."""
    from hospitalnet.deploy.site_outputs import write_site_outputs

    stop = stop or threading.Event()
    if not opts.resume and any((opts.out / "checkpoints").glob("ckpt-*.json")):
        raise ConfigError(
            f"{opts.out}: holds checkpoints of an earlier run; use --resume or another --out"
        )
    t0 = time.monotonic()
    run = SiteProcess(opts, cfg, load_site_data(opts, cfg), transport_factory=transport_factory)
    status: Status = "finished"
    detail = ""
    try:
        if opts.resume:
            run.resume()
        run.start(stop)
        try:
            status = run.loop(stop)
        except SiteFailure as err:
            status, detail = "failed", str(err)
            log.error("%s", err)
        if status != "failed":
            run.save()
        write_site_outputs(run, status, detail, time.monotonic() - t0)
    finally:
        run.transport.close()
    log.info("%s: %s after %d steps", run.site, status, run.node.step)
    return SiteOutcome(
        run.site, status, run.node.step, run.record.resumed_from, time.monotonic() - t0, detail
    )


def node_status(out: str | Path) -> NodeStatus | None:
    """``node.json`` of a process's run directory, or None when it never finished writing it."""
    path = Path(out) / "node.json"
    try:
        return NodeStatus.read(path)
    except DataError:
        return None


__all__ = [
    "SiteData",
    "SiteOutcome",
    "SiteProcess",
    "SiteRunOptions",
    "TransportFactory",
    "load_site_data",
    "node_status",
    "run_site",
]
