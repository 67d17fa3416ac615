"""One hospital as its own process: the simulation's site loop over gRPC with mutual TLS.

``hospitalnet site run sites/n3.yaml`` calls :func:`run_site`. What runs is exactly what the
simulation runs: :class:`~hospitalnet.site.SiteNode` driving the same algorithm transitions with
the same context (edge signs, weights, coupling), schedule offsets and w0. Only two things differ:
the transport (:class:`~hospitalnet.transport.grpc.GrpcTransport` instead of the simulated
network) and the clock (``time.monotonic`` seconds instead of virtual steps, so the inactivity
deadline D is ``deploy.inactive_after_s``).

Around the loop:

- **Start.** Data from the manifest's loader; the plan (:mod:`hospitalnet.plan`) gives the site
  order, edges and addresses; before step 1 the site waits (at most ``deploy.startup_wait_s``)
  until every neighbour has answered once.
- **Checkpoints** every ``deploy.checkpoint_every`` steps, at the end and on SIGTERM
  (:mod:`hospitalnet.checkpoint`): the algorithm state (model, duals), the minibatch sampler, the
  loop counters, the per-edge sequence numbers and receive marks. ``--resume`` continues from the
  newest good one. Sequence numbers restart above ``incarnation << 40`` after every resume, so the
  neighbours' replay rule (a ``seq`` not newer than the last one taken is a duplicate) never eats
  the messages of a restarted site.
- **The end.** After its last step an ECL site keeps exchanging (model unchanged, as in the
  simulation's linger) until each neighbour has reached the last step too or gone inactive, for
  at least ``linger_grace_s`` and at most ``linger_max_s``.
- **Outputs.** The site's own run directory (:mod:`hospitalnet.rundir` layout): its test sets,
  predictions, history (losses, events, liveness), its edges' counters in ``network.json``, and
  ``node.json`` (how the site ended). ``hospitalnet report OUT --site n3`` renders its page.

Every wait has a deadline; nothing is unpickled; logs name sites, never patients or image paths.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hospitalnet import __version__
from hospitalnet.algorithms import make_algorithm
from hospitalnet.algorithms.fedavg import SERVER
from hospitalnet.assembly import (
    build_site,
    initial_model,
    site_neighbours,
    site_objective,
    site_rules,
)
from hospitalnet.checkpoint import (
    load_latest,
    save_checkpoint,
)
from hospitalnet.config import ExperimentConfig, dump_config
from hospitalnet.data.dataset import load_site
from hospitalnet.data.manifest import load_manifest
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS
from hospitalnet.messages import Message
from hospitalnet.pki import credentials_from_identity, site_credentials
from hospitalnet.plan import NetworkPlan, plan_from_manifest
from hospitalnet.rundir import (
    RunDir,
    atomic_write_bytes,
    key,
    read_arrays,
    write_arrays,
    write_json,
)
from hospitalnet.rundir_schema import GLOBAL
from hospitalnet.site import (
    Event,
    PeerBook,
    SiteFailure,
    TickResult,
)
from hospitalnet.training.objective import predict_proba
from hospitalnet.transport.base import EdgeStats, Transport
from hospitalnet.transport.grpc import GrpcTransport, TransportLimits
from hospitalnet.world import Split

log = logging.getLogger(__name__)

SEQ_EPOCH_BITS = 40  # a restarted site's sequence numbers start above incarnation << 40
_CACHES = ("coupling", "received")  # algorithm-state fields recomputed from the rest
_IDLE_SLEEP_S = 0.005


class _NoNetwork(Transport):
    """The transport of a site without neighbours (method ``local``)."""

    def __init__(self, site: str) -> None:
        self.site = site

    def send(self, message: Message) -> None:
        raise ValueError(f"{self.site} has no neighbours to send to")

    def poll(self) -> list[Message]:
        return []

    def stats(self) -> dict[tuple[str, str], EdgeStats]:
        return {}


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
        ``ecl`` (default), ``gossip`` or ``local``; server methods need a server node (not built).
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
        Wall-clock time (epoch seconds) before which training does not start: hospitals that
        agree on a start time begin in step (see :meth:`_SiteRun.wait_for_start`).
    start_file:
        For launchers: once its neighbours answered, the site writes ``OUT/ready.json`` and waits
        until this file exists; it holds the start time (epoch seconds).
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


@dataclass
class SiteOutcome:
    site: str
    status: str  # finished | stopped | failed
    steps: int
    resumed_from: int | None
    wall_seconds: float
    detail: str = ""


# ---- algorithm state <-> checkpoint ------------------------------------------------------------


def state_to_checkpoint(state: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A dataclass algorithm state as safetensors tensors plus JSON (caches left out)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if f.name in _CACHES or value is None:
            continue
        if isinstance(value, torch.Tensor):
            tensors[f"state.{f.name}"] = value
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, torch.Tensor) for v in value.values())
        ):
            for k, v in value.items():
                tensors[f"state.{f.name}.{k}"] = v
        else:
            meta[f.name] = value
    return tensors, meta


def restore_state(state: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Any:
    """Overwrite a freshly initialised state with a checkpoint's values (in place)."""
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if f.name in _CACHES:
            setattr(state, f.name, None)
        elif isinstance(value, torch.Tensor):
            value.copy_(tensors[f"state.{f.name}"])
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, torch.Tensor) for v in value.values())
        ):
            for k, v in value.items():
                v.copy_(tensors[f"state.{f.name}.{k}"])
        elif f.name in meta:
            setattr(state, f.name, type(value)(meta[f.name]) if value is not None else meta[f.name])
    if hasattr(state, "dirty"):
        state.dirty = True  # caches are re-summed exactly before the next step
    if hasattr(state, "updates"):
        state.updates = 0
    return state


# ---- the site run ------------------------------------------------------------------------------


class _SiteRun:
    """Everything one site run holds (internal; :func:`run_site` is the entry point)."""

    def __init__(
        self, opts: SiteRunOptions, cfg: ExperimentConfig, transport: Transport | None = None
    ) -> None:
        self.opts, self.cfg = opts, cfg
        self.t0 = time.monotonic()
        self.wall0 = time.time()  # the transport reports wall-clock times
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.run = RunDir(opts.out)
        self.ckpt_dir = self.run.root / "checkpoints"
        manifest, data_root = load_manifest(opts.manifest)
        self.manifest = manifest
        self.site = manifest.site
        # ---- data ----
        tensors = load_site(opts.manifest, cfg.data.image_size, opts.cache_dir, progress=False)
        self.train, self.local_test = Split.of(tensors, "train"), Split.of(tensors, "test")
        if len(self.train) == 0:
            raise DataError(f"site {self.site}: no training images; it cannot take part")
        gm = opts.global_manifest
        if gm is None:  # the synthetic world's layout: WORLD/sites/{n3,global}/, WORLD/nih/
            guesses = [
                opts.manifest.resolve().parent.parent / GLOBAL / f"{GLOBAL}.yaml",
                data_root.parent / "sites" / GLOBAL / f"{GLOBAL}.yaml",
            ]
            gm = next((g for g in guesses if g.is_file()), None)
        self.global_test = (
            Split.of(load_site(gm, cfg.data.image_size, opts.cache_dir, progress=False), "test")
            if gm is not None
            else None
        )
        # ---- the site, built as every runner builds it (hospitalnet.assembly) ----
        self.flat = initial_model(cfg)
        w0 = self.flat.flat.detach().clone()
        self.algorithm = make_algorithm(opts.method, cfg.ecl, cfg.fedprox)
        plan = opts.plan or plan_from_manifest(manifest)
        if self.site not in plan.sites:
            raise ConfigError(f"network plan: site {self.site!r} is not in it")
        neighbours = site_neighbours(self.site, plan, self.algorithm)
        self.objective = site_objective(
            cfg, self.flat, self.train.images, self.train.labels, self.site
        )
        self.transport = transport or self._grpc_transport(plan, neighbours)
        try:
            self.node = build_site(
                self.site,
                plan,
                cfg,
                self.algorithm,
                self.objective,
                self.transport,
                self._clock,
                site_rules(cfg, "seconds"),
                w0=w0,
            )
        except BaseException:
            self.transport.close()  # a plan this site cannot use: nothing keeps running
            raise
        self.plan = plan
        self.incarnation = 0
        self.resumed_from: int | None = None
        self.preds: dict[str, np.ndarray] = {}
        self.eval_points: list[dict] = []
        self.extra_events: list[Event] = []
        self.step_seconds: list[float] = []

    def _clock(self) -> float:
        return time.monotonic() - self.t0

    def _grpc_transport(self, plan: NetworkPlan, neighbours: tuple[str, ...]) -> Transport:
        """gRPC with mutual TLS to ``neighbours`` (none: a transport that never sends)."""
        opts, manifest = self.opts, self.manifest
        if not neighbours:
            return _NoNetwork(self.site)
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
            self.flat.numel,
            transport_limits(self.cfg),
        )

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path:
        node, sampler = self.node, self.objective.sampler
        tensors, state_meta = state_to_checkpoint(node.state)
        tensors["sampler.generator"] = sampler.generator.get_state()
        tensors["sampler.order"] = sampler._order
        meta = {
            "site": self.site,
            "method": self.opts.method,
            "seed": self.cfg.seed,
            "incarnation": self.incarnation,
            "step": node.step,
            "serving_ticks": node.serving_ticks,
            "lr": node.lr,
            "nonfinite_steps": node.nonfinite_steps,
            "seq": dict(node._seq),
            "peers": {
                j: {
                    "last_seq": p.last_seq,
                    "own_step_then": p.own_step_then,
                    "msg_step_then": p.msg_step_then,
                    "active": p.active,
                }
                for j, p in node.book.peers.items()
            },
            "state": state_meta,
            "sampler_pos": sampler._pos,
            "losses": node.losses,
            "eval_points": self.eval_points,
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
        meta = ckpt.meta
        if meta.get("site") != self.site or meta.get("method") != self.opts.method:
            raise ConfigError(
                f"{ckpt.path}: written by site {meta.get('site')!r} / method "
                f"{meta.get('method')!r}, not {self.site!r} / {self.opts.method!r}"
            )
        node, sampler = self.node, self.objective.sampler
        restore_state(node.state, ckpt.tensors, meta["state"])
        node.state = node.algorithm.restarted(node.state)
        sampler.generator.set_state(ckpt.tensors["sampler.generator"].clone())
        sampler._order = ckpt.tensors["sampler.order"].clone()
        sampler._pos = int(meta["sampler_pos"])
        node.step = int(meta["step"])
        node.serving_ticks = int(meta["serving_ticks"])
        node.lr = float(meta["lr"])
        node.nonfinite_steps = int(meta["nonfinite_steps"])
        node.losses = [float(x) for x in meta["losses"]]
        self.incarnation = int(meta["incarnation"]) + 1
        base = self.incarnation << SEQ_EPOCH_BITS
        node._seq = {j: max(int(meta["seq"].get(j, 0)), base) for j in node._seq}
        now = self._clock()
        for j, p in node.book.peers.items():
            saved = meta["peers"].get(j)
            if saved is None:
                continue
            p.last_seq = int(saved["last_seq"])
            p.own_step_then = int(saved["own_step_then"])
            p.msg_step_then = int(saved["msg_step_then"])
            p.last_heard = now  # silence is measured from this start
            if not saved["active"]:
                p.active = False
                node.state = node.algorithm.set_edge_active(node.state, j, False)
        self.eval_points = list(meta.get("eval_points", []))
        old = self.run.predictions(self.opts.method)
        if old.exists():
            self.preds = {k: v for k, v in read_arrays(old).items() if k.startswith("curve")}
        self.resumed_from = ckpt.index
        self.extra_events.append(
            Event(now, self.site, "resumed", detail=f"checkpoint {ckpt.index} step {node.step}")
        )
        log.info("%s: resumed from checkpoint %d at step %d", self.site, ckpt.index, node.step)

    # ---- evaluation -------------------------------------------------------------------------
    def _eval_steps(self) -> list[int]:
        steps, points = self.cfg.training.local_steps, self.cfg.training.eval_points
        return [math.ceil(steps * (p + 1) / points) for p in range(points)]

    def maybe_evaluate(self) -> None:
        targets = self._eval_steps()
        k = len(self.eval_points)
        if k >= len(targets) or self.node.step < targets[k]:
            return
        testset = GLOBAL if self.global_test is not None else f"local_{self.site}"
        images = (self.global_test or self.local_test).images
        p = predict_proba(self.flat, self.node.params, images)
        self.preds[key("curve", k, self.site, testset)] = p.numpy().astype(np.float16)
        step = self.node.step
        self.eval_points.append(
            {
                "k": k,
                "local_steps": step,
                "virtual_time": float(step),
                "epochs": step * self.cfg.training.batch_size / len(self.train),
            }
        )

    # ---- the loop ---------------------------------------------------------------------------
    def wait_for_neighbours(self, stop: threading.Event) -> None:
        if not isinstance(self.transport, GrpcTransport):
            return
        deadline = time.monotonic() + self.cfg.deploy.startup_wait_s
        while time.monotonic() < deadline and not stop.is_set():
            states = self.transport.neighbour_states()
            if all(s.last_ok is not None for s in states.values()):
                log.info("%s: all %d neighbours answered; starting", self.site, len(states))
                break
            stop.wait(0.1)
        else:
            log.warning("%s: starting without every neighbour (startup wait over)", self.site)

    def wait_for_start(self, stop: threading.Event) -> None:
        """Hold training until the agreed start time (``--start-at`` / ``--start-file``).

        Why: sites that start a second apart (process start-up on a loaded machine) run 20
        steps out of phase for the whole run, and that offset, not the messages' timing, is
        most of the spread between two runs of one config (measured on the deploy tests'
        network: a 7-site mean AUROC SD of 0.006-0.012 without; three runs within 0.0002 with
        a common start).
        """
        opts, d = self.opts, self.cfg.deploy
        write_json(self.run.root / "ready.json", {"site": self.site, "time": time.time()})
        start_at = opts.start_at
        if opts.start_file is not None:
            deadline = time.monotonic() + d.startup_wait_s
            while not opts.start_file.is_file():
                if stop.is_set() or time.monotonic() > deadline:
                    log.warning("%s: no start signal within the startup wait; starting", self.site)
                    return
                stop.wait(0.02)
            try:
                start_at = float(opts.start_file.read_text().strip())
            except (OSError, ValueError):
                raise ConfigError(
                    f"{opts.start_file}: expected a start time in epoch seconds"
                ) from None
        if start_at is None:
            return
        delay = start_at - time.time()
        if delay > d.max_wall_s:
            raise ConfigError(
                f"--start-at: {start_at:.0f} is more than deploy.max_wall_s ({d.max_wall_s:.0f} s) away"
            )
        if delay > 0:
            log.info("%s: training starts in %.1f s (the agreed start time)", self.site, delay)
            stop.wait(delay)

    def mark_start(self) -> None:
        now = self._clock()
        for p in self.node.book.peers.values():
            p.last_heard = now  # silence is measured from the start of training

    def _neighbours_done(self) -> bool:
        steps = self.cfg.training.local_steps
        return all(
            (not p.active) or p.msg_step_then >= steps for p in self.node.book.peers.values()
        )

    def loop(self, stop: threading.Event) -> str:
        d, node = self.cfg.deploy, self.node
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
                hear_heartbeats(node.book, self.transport, self._clock())
            result = node.tick()
            if result is TickResult.STEPPED:
                self.step_seconds.append(time.monotonic() - t)
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
                if not (node.linger and node.algorithm.lingers) or not node.neighbours:
                    return "finished"
                waited = now - lingering_since
                if (waited >= d.linger_grace_s and self._neighbours_done()) or (
                    waited >= d.linger_max_s
                ):
                    return "finished"
                # serving ticks at the pace of training steps (as the simulation's clock does)
                pace = max(d.step_interval_s, float(np.mean(self.step_seconds[-50:] or [0.01])))
                stop.wait(max(pace, 0.002))
                continue
            stop.wait(_IDLE_SLEEP_S)  # IDLE or ROLLED_BACK: nothing to do right now

    # ---- outputs ----------------------------------------------------------------------------
    def write_outputs(self, status: str, detail: str, wall: float) -> None:
        method, site, run = self.opts.method, self.site, self.run
        final = self.node.finalize()
        testsets: dict[str, np.ndarray] = {}
        sets = {f"local_{site}": self.local_test}
        if self.global_test is not None:
            sets = {GLOBAL: self.global_test, **sets}
        for name, split in sets.items():
            testsets[key(name, "labels")] = split.labels.numpy()
            testsets[key(name, "patients")] = split.patients.numpy()
            self.preds[key("final", site, name)] = predict_proba(
                self.flat, final, split.images
            ).numpy()
        atomic_write_bytes(run.config, dump_config(self.cfg).encode())
        write_arrays(run.testsets, testsets)
        write_arrays(run.predictions(method), self.preds)
        losses = self.node.losses
        events = sorted(
            [*self.node.events, *self.extra_events], key=lambda e: (e.time, e.kind, e.peer or "")
        )
        if isinstance(self.transport, GrpcTransport):
            for t, nbr, old, new in self.transport.neighbour_events():
                events.append(
                    Event(t - self.wall0, site, f"transport_{new}", nbr, detail=f"was {old}")
                )
        steps_run = max(len(self.step_seconds), 1)
        write_json(
            run.history(method),
            {
                "eval_points": self.eval_points,
                "loss": [
                    {"site": site, "local_step": i, "loss": float(np.mean(losses[i : i + 10]))}
                    for i in range(0, len(losses), 10)
                ],
                "events": [
                    {
                        "time": e.time,
                        "site": e.site,
                        "kind": e.kind,
                        "peer": e.peer,
                        "detail": e.detail,
                    }
                    for e in events
                ],
                "images_per_second": steps_run
                * self.cfg.training.batch_size
                / max(sum(self.step_seconds), 1e-9),
            },
        )
        write_json(run.network_json, self._network())
        write_json(run.data_json, self._data())
        write_json(
            run.run_json,
            {
                "seed": self.cfg.seed,
                "mode": "deployment",
                "methods": [method],
                "sites": [site],
                "started": self.started,
                "command": self.opts.command,
                "device": "cpu",
                "wall_seconds": {"total": wall, "per_method": {method: wall}},
                "images_per_second": {
                    method: steps_run
                    * self.cfg.training.batch_size
                    / max(sum(self.step_seconds), 1e-9)
                },
                "versions": {
                    "hospitalnet": __version__,
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "platform": f"{platform.system()} {platform.machine()}",
                    "torch_threads": torch.get_num_threads(),
                },
            },
        )
        write_json(
            run.root / "node.json",
            {
                "site": site,
                "method": method,
                "status": status,
                "detail": detail,
                "steps": self.node.step,
                "serving_ticks": self.node.serving_ticks,
                "resumed_from_checkpoint": self.resumed_from,
                "incarnation": self.incarnation,
                "isolated": self.node.isolated,
                "nonfinite_steps": self.node.nonfinite_steps,
                "active_neighbours": self.node.active_neighbours(),
                "neighbours": list(self.node.neighbours),
                "wall_seconds": wall,
            },
        )

    def _network(self) -> dict:
        """This site's view of its edges: what it sent, and what it did with what it received."""
        site = self.site
        sent = self.transport.stats()
        received = self.node.book.stats()
        order = {s: k for k, s in enumerate(self.plan.sites)}  # the server sorts last
        edges = [
            edge_summary(
                site,
                j,
                tuple(sorted((site, j), key=lambda s: order.get(s, len(order)))),
                sent,
                received,
                self.node.book.peers[j].active,
                sum(1 for e in self.node.events if e.kind == "edge_inactive" and e.peer == j),
            )
            for j in self.node.neighbours
        ]
        nodes = [s for s in [*self.plan.sites, SERVER] if s == site or s in self.node.neighbours]
        return {
            "topology": {
                "kind": self.cfg.topology.kind,
                "nodes": nodes,
                "edges": [[e["a"], e["b"]] for e in edges],
            },
            "methods": {
                self.opts.method: {
                    "edges": edges,
                    "isolated_sites": [site] if self.node.isolated else [],
                    "dead_sites": [],
                    "inactive_neighbours": [
                        j for j, p in self.node.book.peers.items() if not p.active
                    ],
                }
            },
        }

    def _data(self) -> dict:
        def prevalence(split: Split) -> dict[str, float]:
            lab = split.labels.numpy()
            with np.errstate(invalid="ignore"):
                values = np.nanmean(lab, axis=0) if len(lab) else np.zeros(len(LABELS))
            return {n: float(v) if np.isfinite(v) else 0.0 for n, v in zip(LABELS, values)}

        info = {
            "description": self.manifest.description,
            "loader": self.manifest.data.loader,
            "patients": int(
                np.unique(
                    np.concatenate([self.train.patients.numpy(), self.local_test.patients.numpy()])
                ).size
            ),
            "train_images": len(self.train),
            "test_images": len(self.local_test),
            "prevalence": prevalence(self.train),
        }
        data: dict[str, Any] = {"labels": list(LABELS), "sites": {self.site: info}}
        if self.global_test is not None:
            data["global_test"] = {
                "images": len(self.global_test),
                "patients": int(np.unique(self.global_test.patients.numpy()).size),
                "prevalence": prevalence(self.global_test),
            }
        return data


def transport_limits(cfg: ExperimentConfig) -> TransportLimits:
    """The gRPC transport's timings from the config's ``deploy`` section."""
    d = cfg.deploy
    return TransportLimits(
        heartbeat_interval_s=d.heartbeat_interval_s,
        heartbeat_timeout_s=min(d.call_timeout_s, 2 * d.heartbeat_interval_s),
        retry_interval_s=min(1.0, d.heartbeat_interval_s),
        suspect_after_s=min(3 * d.heartbeat_interval_s, d.inactive_after_s),
        inactive_after_s=d.inactive_after_s,
        call_timeout_s=d.call_timeout_s,
        reconnect_backoff_max_s=min(2.0, d.heartbeat_interval_s),
    )


def hear_heartbeats(book: PeerBook, transport: Transport, now: float) -> None:
    """Count a neighbour's latest authenticated heartbeat as hearing from it (server edges).

    On a FedAvg edge silence is part of the protocol: a site sends nothing while it waits for
    the global model, and the server nothing while it waits for the slowest site. Heartbeats,
    sent by the transport's own thread, then tell a live but waiting peer from a dead one. Peer
    to peer edges do not use this: there a neighbour whose transport still answers but whose
    messages stopped (a stalled trainer) must go inactive.
    """
    if not isinstance(transport, GrpcTransport):
        return
    wall = time.time()
    for name, status in transport.neighbour_states().items():
        peer = book.peers.get(name)
        if peer is not None and status.last_heard is not None:
            peer.last_heard = max(peer.last_heard, now - (wall - status.last_heard))


def edge_summary(
    owner: str,
    peer_name: str,
    pair: tuple[str, str],
    sent: dict[tuple[str, str], EdgeStats],
    received: dict[tuple[str, str], EdgeStats],
    active: bool,
    inactive_events: int,
) -> dict[str, Any]:
    """One node's view of one edge for ``network.json``: what it sent, and what it did with
    what it received (transport and site-loop counters together)."""
    out = sent.get((owner, peer_name), EdgeStats())
    inn = sent.get((peer_name, owner), EdgeStats())
    book = received.get((peer_name, owner), EdgeStats())
    rejected = {**inn.rejected}
    for reason, n in book.rejected.items():
        rejected[reason] = rejected.get(reason, 0) + n
    return {
        "a": pair[0],
        "b": pair[1],
        "messages": {f"{owner}->{peer_name}": out.messages_sent},
        "bytes": {f"{owner}->{peer_name}": out.bytes_sent},
        "received_messages": {f"{peer_name}->{owner}": inn.messages_delivered},
        "received_bytes": {f"{peer_name}->{owner}": getattr(inn, "bytes_received", 0)},
        "dropped": out.dropped,
        "stale": book.stale,
        "duplicates": book.duplicates + inn.duplicates,
        "rejected": sum(rejected.values()),
        "rejected_reasons": rejected,
        "failures": dict(getattr(out, "failures", {})),
        "inactive_events": inactive_events,
        "active_at_end": active,
    }


def run_site(
    opts: SiteRunOptions, cfg: ExperimentConfig, stop: threading.Event | None = None
) -> SiteOutcome:
    """Run one hospital until its steps are done (and its neighbours too), ``stop`` is set
    (SIGTERM) or ``deploy.max_wall_s`` passes; checkpoint and write its run directory."""
    stop = stop or threading.Event()
    if not opts.resume and (opts.out / "checkpoints").is_dir():
        if any((opts.out / "checkpoints").glob("ckpt-*.json")):
            raise ConfigError(
                f"{opts.out}: holds checkpoints of an earlier run; use --resume or another --out"
            )
    t0 = time.monotonic()
    run = _SiteRun(opts, cfg)
    status, detail = "finished", ""
    try:
        if opts.resume:
            run.resume()
        run.wait_for_neighbours(stop)
        run.wait_for_start(stop)
        run.mark_start()
        try:
            status = run.loop(stop)
        except SiteFailure as err:
            status, detail = "failed", str(err)
            log.error("%s", err)
        if status != "failed":
            run.save()
        run.write_outputs(status, detail, time.monotonic() - t0)
    finally:
        run.transport.close()
    log.info("%s: %s after %d steps", run.site, status, run.node.step)
    return SiteOutcome(
        run.site, status, run.node.step, run.resumed_from, time.monotonic() - t0, detail
    )


def node_status(out: str | Path) -> dict[str, Any] | None:
    """``node.json`` of a site run directory, or None when the site never finished writing it."""
    path = Path(out) / "node.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


__all__ = [
    "SEQ_EPOCH_BITS",
    "SiteOutcome",
    "SiteRunOptions",
    "node_status",
    "restore_state",
    "run_site",
    "state_to_checkpoint",
    "edge_summary",
    "hear_heartbeats",
    "transport_limits",
]
