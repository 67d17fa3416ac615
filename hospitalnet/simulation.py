"""The hospital network on one machine: the real site loop over a seeded discrete-event clock.

Every site runs :class:`hospitalnet.site.SiteNode` - the same loop a deployment runs - against a
:class:`~hospitalnet.transport.simulated.SimulatedTransport`. Virtual time is in nominal steps:
site i needs ``(1 / site_speed[i]) * (1 +- compute_jitter)`` of it per local step (drawn from
its own seeded stream), links add latency and drop messages (see ``transport.simulated``).
Events (site ticks, server ticks, evaluations, faults) run in virtual-time order from a heap with
deterministic tie-breaking (time, kind priority, insertion counter), so the same seed gives a
bit-identical result.

The overhead per local step is a few dictionary look-ups and one heap push; the numbers are in
``benchmarks/simulation_overhead.py``.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from hospitalnet.algorithms import SERVER, Algorithm, make_algorithm
from hospitalnet.algorithms.base import SiteContext
from hospitalnet.assembly import build_server, build_site, site_rules
from hospitalnet.config import (
    ECLConfig,
    ExperimentConfig,
    FedProxConfig,
    NetworkConfig,
    TopologyConfig,
    TrainingConfig,
)
from hospitalnet.errors import ConfigError
from hospitalnet.objective import LocalObjective
from hospitalnet.plan import NetworkPlan
from hospitalnet.seeding import numpy_rng
from hospitalnet.site import Event, ServerNode, SiteFailure, SiteNode, TickResult
from hospitalnet.topology import Topology, build_topology, isolated
from hospitalnet.transport.base import EdgeStats
from hospitalnet.transport.simulated import (
    NO_FAULTS,
    Faults,
    LinkFault,
    NetworkSplit,
    SimulatedNetwork,
    SiteOutage,
)

log = logging.getLogger(__name__)

EvalFn = Callable[[int, dict[str, torch.Tensor]], Any]
ProgressFn = Callable[[int, int], None]

# event kinds, in the order they run when they share a virtual time
_FAULT, _EVAL, _SERVER, _TICK = 0, 1, 2, 3
_IDLE_WAKE = 1.0  # an idle node re-checks liveness once per nominal step


@dataclass
class SimulationResult:
    """What a simulated run produced.

    Attributes
    ----------
    method:
        The method name.
    params:
        Final flat model per site (for fedavg/fedprox: the last global model each site received).
    steps:
        Local steps each site took.
    losses:
        Per site, the minibatch loss of every local step (unweighted f_i).
    edge_stats:
        Per directed edge (sender, receiver): messages and bytes sent, delivered, dropped, stale,
        duplicates and rejections (transport and receiver counters merged).
    events:
        Edge inactive/active, isolated/reconnected, failures, outages, in time order.
    virtual_time:
        Virtual time (nominal steps) when the last site finished.
    evaluations:
        ``(k, eval_fn(k, params))`` at every evaluation point, k = virtual time in nominal steps;
        the last one is at the end of the run, on the final models.
    evaluation_steps:
        Mean local steps taken per site at each evaluation (virtual time runs ahead of the
        steps when sites wait, e.g. for FedAvg's synchronous rounds).
    failed:
        Site -> error message of sites that stopped with :class:`~hospitalnet.site.SiteFailure`.
    isolated:
        Sites that ended with every edge inactive.
    nonfinite_steps:
        Rolled-back steps per site.
    topology:
        The graph the sites used (empty for local/pooled; the star is implicit for fedavg).
    finish_time:
        Virtual time at which each site finished (absent: it never did).
    contexts:
        What each site started with (neighbours, edge signs, loss weight, w0, step size), as
        built by :func:`hospitalnet.assembly.build_site`.
    """

    method: str
    params: dict[str, torch.Tensor]
    steps: dict[str, int]
    losses: dict[str, list[float]]
    edge_stats: dict[tuple[str, str], EdgeStats]
    events: list[Event]
    virtual_time: float
    evaluations: list[tuple[int, Any]] = field(default_factory=list)
    evaluation_steps: list[float] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    isolated: list[str] = field(default_factory=list)
    nonfinite_steps: dict[str, int] = field(default_factory=dict)
    topology: Topology | None = None
    finish_time: dict[str, float] = field(default_factory=dict)
    contexts: dict[str, SiteContext] = field(default_factory=dict)

    @property
    def messages_sent(self) -> int:
        return sum(s.messages_sent for s in self.edge_stats.values())

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.edge_stats.values())


def _resolve_topology(
    topology: Topology | TopologyConfig | str, sites: list[str], seed: int
) -> Topology:
    if isinstance(topology, Topology):
        if list(topology.nodes) != sites:
            raise ConfigError(
                f"topology: its sites {list(topology.nodes)} differ from the objectives' {sites}"
            )
        return topology
    cfg = TopologyConfig(kind=topology) if isinstance(topology, str) else topology  # type: ignore[arg-type]
    return build_topology(cfg, sites, seed)


def run_network(
    method: str | Algorithm,
    objectives: Mapping[str, LocalObjective],
    topology: Topology | TopologyConfig | str,
    steps: int,
    seed: int,
    *,
    training: TrainingConfig | None = None,
    ecl: ECLConfig | None = None,
    fedprox: FedProxConfig | None = None,
    network: NetworkConfig | None = None,
    faults: Faults = NO_FAULTS,
    w0: torch.Tensor | None = None,
    eval_every: float | None = None,
    eval_fn: EvalFn | None = None,
    progress: ProgressFn | None = None,
    lr_schedule: Callable[[int], float] | None = None,
) -> SimulationResult:
    """Train ``objectives`` (one per site, in site order) with ``method`` in a simulated network.

    Parameters
    ----------
    method:
        A preset name (``hospitalnet.algorithms.PRESETS``) or an :class:`Algorithm` instance.
    objectives:
        Site id -> local objective. Dict order is the site order (edge signs, neighbour order).
    topology:
        A :class:`Topology`, a ``TopologyConfig`` or a kind name. Ignored by methods that do not
        communicate (local, pooled) and by server methods (fedavg, fedprox: a star around
        ``"server"``).
    steps:
        Local steps every site takes.
    seed:
        Root seed of everything random in the simulation (latency, drops, speeds, schedule
        offsets, random topology). The objectives' batch generators are the caller's.
    training:
        Step size (``lr``) and ``weight_decay`` (other fields unused here).
    ecl, fedprox:
        Method settings (see ``hospitalnet.algorithms``).
    network:
        K, latency, drops, speeds, staleness, inactivity (``NetworkConfig``).
    faults:
        Injected outages, network splits and link faults (tests).
    w0:
        Common initial parameters; None = the first site's ``objective.init_params()``.
    eval_every, eval_fn:
        Every ``eval_every`` virtual steps call ``eval_fn(k, {site: params})`` (copies), and
        once more on the final models when the run ends after the last such point.
    progress:
        Called as ``progress(steps_done, steps_total)`` about 100 times per run.
    lr_schedule:
        Optional ``local_step -> mu`` (eta * mu stays constant).
    """
    training = training or TrainingConfig()
    network = network or NetworkConfig()
    if isinstance(method, str):
        algorithm = make_algorithm(method, ecl, fedprox, training)
    else:
        algorithm = method
    name = method if isinstance(method, str) else algorithm.name
    sites = list(objectives)
    if not sites:
        raise ConfigError("run_network: no sites")
    if SERVER in objectives:
        raise ConfigError(f"run_network: {SERVER!r} is reserved for the FedAvg server")
    if steps < 0:
        raise ConfigError(f"run_network: steps must be >= 0, got {steps}")
    for s, obj in objectives.items():
        if int(obj.num_samples) <= 0:
            raise ConfigError(f"site {s}: no training samples (num_samples = {obj.num_samples})")
    unknown = [s for s in network.site_speed if s not in objectives]
    if unknown:
        raise ConfigError(f"network.site_speed: unknown site {unknown[0]!r}")

    server_mode = algorithm.uses_server
    graph = None if not algorithm.communicates or server_mode else topology
    topo = isolated(sites) if graph is None else _resolve_topology(graph, sites, seed)
    start = (w0 if w0 is not None else objectives[sites[0]].init_params()).detach()
    num_samples = {s: int(objectives[s].num_samples) for s in sites}
    plan = NetworkPlan(tuple(sites), topo.edges, {}, num_samples)
    cfg = ExperimentConfig(
        seed=seed,
        training=training,
        ecl=ecl or ECLConfig(),
        fedprox=fedprox or FedProxConfig(),
        network=network,
    )
    rules = site_rules(cfg, "steps")

    sim = _Simulation(sites, network, seed, faults, server_mode)
    for s in sites:
        sim.nodes[s] = build_site(
            s,
            plan,
            cfg,
            algorithm,
            objectives[s],
            sim.net.transport(s),
            sim.clock,
            rules,
            w0=start,
            steps=steps,
            lr_schedule=lr_schedule,
        )
    if server_mode:
        sim.server = build_server(
            plan,
            sim.net.transport(SERVER),
            sim.clock,
            rules,
            w0=start,
            site_weighting=training.site_weighting,
        )
    sim.run(steps, eval_every, eval_fn, progress)
    finals = {s: n.finalize() for s, n in sim.nodes.items()}
    if eval_fn is not None and eval_every and sim.last_eval_time < sim.end_time:
        k = int(round(sim.end_time))
        if sim.evaluations:  # k must grow even when end_time rounds to the last point's k
            k = max(k, sim.evaluations[-1][0] + 1)
        final_copies = {s: w.detach().clone() for s, w in finals.items()}
        sim.evaluations.append((k, eval_fn(k, final_copies)))
        sim.evaluation_steps.append(sim.mean_steps())

    stats = sim.net.stats()
    for node in [*sim.nodes.values(), *([sim.server] if sim.server else [])]:
        for key, st in node.book.stats().items():
            merged = stats.setdefault(key, EdgeStats())
            merged.stale += st.stale
            merged.duplicates += st.duplicates
            for reason, n in st.rejected.items():
                merged.rejected[reason] = merged.rejected.get(reason, 0) + n
    events = [e for node in sim.nodes.values() for e in node.events] + sim.events
    if sim.server is not None:
        events += sim.server.events
    events.sort(key=lambda e: (e.time, e.site, e.kind))
    return SimulationResult(
        method=name,
        params=finals,
        steps={s: n.step for s, n in sim.nodes.items()},
        losses={s: n.losses for s, n in sim.nodes.items()},
        edge_stats=dict(sorted(stats.items())),
        events=events,
        virtual_time=sim.end_time,
        evaluations=sim.evaluations,
        evaluation_steps=sim.evaluation_steps,
        failed=sim.failed,
        isolated=[s for s, n in sim.nodes.items() if n.isolated],
        nonfinite_steps={s: n.nonfinite_steps for s, n in sim.nodes.items()},
        topology=topo,
        finish_time=sim.finish_time,
        contexts={s: n.context for s, n in sim.nodes.items()},
    )


def run_pooled(
    objective: LocalObjective,
    steps: int,
    seed: int,
    *,
    training: TrainingConfig | None = None,
    w0: torch.Tensor | None = None,
    eval_every: float | None = None,
    eval_fn: EvalFn | None = None,
    progress: ProgressFn | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    name: str = "pooled",
) -> SimulationResult:
    """The pooled reference: ``local`` on one site holding all data, through the same loop."""
    return run_network(
        "pooled",
        {name: objective},
        "ring",
        steps,
        seed,
        training=training,
        w0=w0,
        eval_every=eval_every,
        eval_fn=eval_fn,
        progress=progress,
        lr_schedule=lr_schedule,
    )


class _Simulation:
    """The event loop (internal): owns the clock, the heap and the network."""

    def __init__(
        self, sites: list[str], cfg: NetworkConfig, seed: int, faults: Faults, server_mode: bool
    ) -> None:
        self.sites = sites
        self.cfg = cfg
        self.seed = seed
        self.faults = faults
        self.now = 0.0
        nodes = [*sites, SERVER] if server_mode else sites
        self.net = SimulatedNetwork(nodes, cfg, seed, faults, on_arrival=self._on_arrival)
        self.nodes: dict[str, SiteNode] = {}
        self.server: ServerNode | None = None
        self.events: list[Event] = []
        self.evaluations: list[tuple[int, Any]] = []
        self.evaluation_steps: list[float] = []
        self.last_eval_time = -math.inf
        self.failed: dict[str, str] = {}
        self.finish_time: dict[str, float] = {}
        self.end_time = 0.0
        self._heap: list[tuple[float, int, int, str, int]] = []
        self._counter = 0
        self._token: dict[str, int] = {}
        self._pending: dict[str, float] = {}  # time of the node's live tick event
        self._idle: set[str] = set()
        self._live: set[str] = set(sites)  # not finished, failed or dead: the run waits for them
        self._ticking: set[str] = set(sites)  # still scheduled (live, or lingering: linger_over)
        self._speed = {s: float(cfg.site_speed.get(s, 1.0)) for s in sites}
        self._compute_rng = {s: numpy_rng(seed, "sim", "compute", s) for s in sites}

    def clock(self) -> float:
        return self.now

    # ---- the heap ---------------------------------------------------------------------------
    def _push(self, t: float, kind: int, who: str, token: int = 0) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (t, kind, self._counter, who, token))

    def _schedule_tick(self, who: str, t: float) -> None:
        token = self._token.get(who, 0) + 1
        self._token[who] = token
        self._pending[who] = t
        self._push(t, _SERVER if who == SERVER else _TICK, who, token)

    def _on_arrival(self, node: str, t: float) -> None:
        # wake an idle node (a waiting FedAvg site, the server) when something arrives for it
        if node in self._idle and t < self._pending.get(node, math.inf):
            self._schedule_tick(node, t)

    def _compute_time(self, site: str) -> float:
        u = float(self._compute_rng[site].random())
        return (1.0 + self.cfg.compute_jitter * (2.0 * u - 1.0)) / self._speed[site]

    # ---- the loop ---------------------------------------------------------------------------
    def run(
        self,
        steps: int,
        eval_every: float | None,
        eval_fn: EvalFn | None,
        progress: ProgressFn | None,
    ) -> None:
        total = steps * len(self.sites)
        report_every = max(total // 100, 1)
        done_steps = next_report = 0
        for s in self.sites:
            self._schedule_tick(s, 0.0)
        if self.server is not None:
            self._schedule_tick(SERVER, 0.0)
        for o in self.faults.outages:
            self._push(o.start, _FAULT, o.site)
        if eval_fn is not None and eval_every:
            self._push(float(eval_every), _EVAL, "")  # point p at p * eval_every (p = 1, 2 ...)

        while self._heap and self._live:
            t, kind, _, who, token = heapq.heappop(self._heap)
            self.now = t
            if kind == _TICK:
                if token != self._token[who] or who not in self._ticking:
                    continue
                stepped = self._tick_site(who, t)
                if stepped:
                    done_steps += 1
                    if progress is not None and done_steps >= next_report:
                        progress(done_steps, total)
                        next_report = done_steps + report_every
            elif kind == _SERVER:
                if token == self._token[SERVER]:
                    self._tick_server(t)
            elif kind == _EVAL:
                assert eval_fn is not None and eval_every
                params = {s: n.params.detach().clone() for s, n in self.nodes.items()}
                self.evaluations.append((int(round(t)), eval_fn(int(round(t)), params)))
                self.evaluation_steps.append(self.mean_steps())
                self.last_eval_time = t
                self._push((len(self.evaluations) + 1) * float(eval_every), _EVAL, "")
            else:  # _FAULT: an outage starts
                self._outage_starts(who, t)
        self.end_time = max(self.finish_time.values(), default=self.now)
        if progress is not None:
            progress(done_steps, total)

    def mean_steps(self) -> float:
        """Local steps taken so far, averaged over the sites."""
        return sum(n.step for n in self.nodes.values()) / max(len(self.nodes), 1)

    def _tick_site(self, site: str, t: float) -> bool:
        outage = self.faults.down(site, t)
        if outage is not None:
            if math.isinf(outage.end):
                self._live.discard(site)
                self._ticking.discard(site)
                return False
            self._schedule_tick(site, outage.end)
            return False
        node = self.nodes[site]
        dt = self._compute_time(site)
        self.net.poll_time, self.net.send_time = t, t + dt
        try:
            result = node.tick()
        except SiteFailure as err:
            self.failed[site] = str(err)
            self.events.append(Event(t, site, "failed", detail=str(err)))
            log.error("%s", err)
            self._live.discard(site)
            self._ticking.discard(site)
            return False
        if node.done and site in self._live:
            self.finish_time[site] = t + dt if result is TickResult.STEPPED else t
            self._live.discard(site)
        if node.done and node.linger_over():  # the linger/stop rule, as in a deployment
            self._ticking.discard(site)
            return result is TickResult.STEPPED
        if result is TickResult.IDLE:
            self._idle.add(site)
            nxt = self.net.next_arrival(site)
            self._schedule_tick(site, min(nxt if nxt is not None else math.inf, t + _IDLE_WAKE))
            return False
        self._idle.discard(site)
        self._schedule_tick(site, t + dt)
        return result is TickResult.STEPPED

    def _tick_server(self, t: float) -> None:
        assert self.server is not None
        outage = self.faults.down(SERVER, t)
        if outage is not None:
            if not math.isinf(outage.end):
                self._schedule_tick(SERVER, outage.end)
            return
        self.net.poll_time = self.net.send_time = t
        self.server.tick()
        self._idle.add(SERVER)
        nxt = self.net.next_arrival(SERVER)
        self._schedule_tick(SERVER, min(nxt if nxt is not None else math.inf, t + _IDLE_WAKE))

    def _outage_starts(self, site: str, t: float) -> None:
        outage = self.faults.down(site, t)
        if outage is None:
            return
        self.events.append(Event(t, site, "killed" if outage.kind == "kill" else "frozen"))
        if outage.kind == "kill":
            self.net.clear_inbox(site)
        if not math.isinf(outage.end):
            self.events.append(
                Event(outage.end, site, "restarted" if outage.kind == "kill" else "resumed")
            )


__all__ = [
    "Faults",
    "LinkFault",
    "NetworkSplit",
    "SimulationResult",
    "SiteOutage",
    "run_network",
    "run_pooled",
]
