"""One way to build a site: everything a runner puts around the one loop, written once.

Data flow step: site data -> loader -> **site assembly** -> the loop (:mod:`hospitalnet.site`)
-> simulation (:mod:`hospitalnet.simulation`) | deployment (:mod:`hospitalnet.deploy`).

Every runner builds its sites here: the in-process simulation, a ``hospitalnet site run``
process, the FedAvg server process, and other engines' executors (NVIDIA FLARE). What differs
between them is passed in, never decided here: the transport (simulated network, gRPC, another
engine's), the clock (virtual steps or seconds, see :func:`site_rules`) and where the data come
from. So a deployment runs exactly the code the simulation runs.

- :func:`initial_model`: the run's model at w0, drawn from the run's seed under :data:`W0_SEED`.
- :func:`site_objective`: a site's chest X-ray loss with its own minibatch stream.
- :func:`thread_governor`: the process's torch threads (``training.threads``; ``auto`` follows
  the machine's idle cores).
- :func:`site_rules`: staleness S, inactivity D (steps or seconds), non-finite tolerance.
- :func:`site_context`: what a site knows when it starts (neighbours, signs, loss weight, w0).
- :func:`build_site`: the :class:`~hospitalnet.site.SiteNode` of one site.
- :func:`build_server`: the FedAvg / FedProx :class:`~hospitalnet.site.ServerNode`.

The network is described by a :class:`~hospitalnet.plan.NetworkPlan` (site order, edges,
training-set sizes): the simulation makes one from its topology and objectives, a deployment
reads the plan file every site shares. A plan that lacks a training-set size the weighting
needs is an error (:class:`~hospitalnet.errors.ConfigError` naming the plan key), never a silent
change of weighting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch

from hospitalnet.algorithms import SERVER, Algorithm, make_context, site_weights
from hospitalnet.algorithms.base import SiteContext, SiteWeighting
from hospitalnet.algorithms.fedavg import FedAvgServer
from hospitalnet.config import ExperimentConfig
from hospitalnet.errors import ConfigError
from hospitalnet.models import build_model
from hospitalnet.models.flat import FlatParams
from hospitalnet.models.invariant import same_bits_at_any_thread_count
from hospitalnet.objective import LocalObjective
from hospitalnet.plan import NetworkPlan
from hospitalnet.seeding import int_seed, torch_generator
from hospitalnet.site import Clock, ExchangeSchedule, ServerNode, SiteNode, SiteRules
from hospitalnet.threads import EVAL_QUANTUM, ThreadGovernor, ThreadSetting, governor_for
from hospitalnet.topology import Topology, isolated
from hospitalnet.training.schedule import lr_schedule as config_lr_schedule
from hospitalnet.training.torch_objectives import ChestXrayObjective, minibatch_size
from hospitalnet.transport.base import Transport

#: The seed label of the common initial model: ``int_seed(cfg.seed, *W0_SEED)``.
W0_SEED = ("model", "init")

StepSchedule = Callable[[int], float]


def initial_model(cfg: ExperimentConfig, device: torch.device | str | None = None) -> FlatParams:
    """The run's model at w0 (``cfg.model`` seeded by ``cfg.seed`` and :data:`W0_SEED`).

    Every site, the server and the pooled reference start from this same vector; the model
    fingerprint in every message envelope checks that the processes of a network agree.
    """
    model = build_model(cfg.model, int_seed(cfg.seed, *W0_SEED))
    if device is not None:
        model = model.to(device)
    return FlatParams(model, cfg.model.name)


def site_objective(
    cfg: ExperimentConfig,
    flat: FlatParams,
    images: torch.Tensor,
    labels: torch.Tensor,
    name: str,
    batch_size: int | None = None,
    threads: ThreadGovernor | None = None,
) -> ChestXrayObjective:
    """Site ``name``'s loss on its training images, minibatches from the stream ``("batches",
    name)`` of the run's seed. ``batch_size`` None = ``cfg.training.batch_size`` (the pooled
    reference passes the sites' batches together). ``threads`` (:func:`thread_governor`) is
    polled before every step."""
    return ChestXrayObjective(
        flat,
        images,
        labels,
        cfg.training.batch_size if batch_size is None else batch_size,
        torch_generator(cfg.seed, "batches", name),
        threads=threads,
    )


def thread_governor(
    cfg: ExperimentConfig,
    flat: FlatParams,
    train_sizes: Iterable[int],
    setting: ThreadSetting | Literal["config"] = "config",
    *,
    pooled: bool = False,
    max_threads: int | None = None,
) -> ThreadGovernor:
    """The process's torch threads (``training.threads``, or ``setting`` from a command line).

    With ``auto``: a governor that follows the machine's idle cores, if the model gives the same
    bits at any thread count on the minibatches this process trains with (those of training sets
    of ``train_sizes`` images, and with ``pooled`` the pooled reference's, every site's minibatch
    at once) and on evaluation minibatches; else one thread (:mod:`hospitalnet.threads`)."""
    chosen = cfg.training.threads if setting == "config" else setting
    side = cfg.data.image_size
    sizes, batch = list(train_sizes), cfg.training.batch_size
    train = {minibatch_size(batch, n) for n in sizes}
    if pooled:
        train.add(minibatch_size(batch * len(sizes), sum(sizes)))

    def invariant(threads: int) -> bool:
        return same_bits_at_any_thread_count(
            flat.model, (1, side, side), sorted(train), (EVAL_QUANTUM, 4 * EVAL_QUANTUM), threads
        )

    return governor_for(chosen, max_threads=max_threads, invariant=invariant)


def site_rules(cfg: ExperimentConfig, clock: Literal["steps", "seconds"]) -> SiteRules:
    """The loop's rules. ``clock``: the unit of the injected clock, which sets D: virtual steps in
    the simulation (``network.inactive_after``), seconds in a deployment
    (``deploy.inactive_after_s``). S and the non-finite limit count steps either way."""
    if clock not in ("steps", "seconds"):
        raise ValueError(f"site_rules: clock must be 'steps' or 'seconds', not {clock!r}")
    net = cfg.network
    return SiteRules(
        staleness_bound=net.staleness_bound,
        inactive_after=float(
            net.inactive_after if clock == "steps" else cfg.deploy.inactive_after_s
        ),
        max_nonfinite_steps=net.max_nonfinite_steps,
        # a deployment learns each edge's D from the gaps between its messages (RFC 6298 style,
        # floor inactive_after_s, cap inactive_cap_s); the simulation keeps the fixed D
        inactive_cap=cfg.deploy.inactive_cap_s if clock == "seconds" else None,
    )


def method_graph(plan: NetworkPlan, algorithm: Algorithm) -> Topology:
    """The graph the method trains on: the plan's edges, or none for a method that never sends
    or sends only to the FedAvg server (then every site's loss weight is 1)."""
    if not algorithm.communicates or algorithm.uses_server:
        return isolated(plan.sites)
    return plan.topology()


def site_neighbours(site: str, plan: NetworkPlan, algorithm: Algorithm) -> tuple[str, ...]:
    """Who ``site`` exchanges with: its plan neighbours, the server, or nobody."""
    if algorithm.uses_server:
        return (SERVER,)
    return method_graph(plan, algorithm).neighbours(site)


def _loss_weight(
    graph: Topology, site: str, samples: dict[str, int], algorithm: Algorithm
) -> float:
    component = next(c for c in graph.components() if site in c)
    if algorithm.site_weighting == "samples" and len(component) > 1:
        missing = [s for s in component if s not in samples]
        if missing:
            raise ConfigError(
                f"network plan: sites.{missing[0]}.train_samples: missing; site weighting "
                "'samples' scales each loss by the site's share of the training images (give "
                "a plan with every site's train_samples, or set training.site_weighting: uniform)"
            )
    # sites outside the component do not change this site's weight
    known = {s: samples.get(s, 1) for s in graph.nodes}
    return site_weights(graph, known, algorithm.site_weighting)[site]


def site_context(
    site: str,
    plan: NetworkPlan,
    cfg: ExperimentConfig,
    algorithm: Algorithm,
    w0: torch.Tensor,
    num_samples: int,
    total_steps: int | None = None,
    coupling_scale: torch.Tensor | None = None,
) -> SiteContext:
    """What ``site`` knows when it starts.

    Parameters
    ----------
    plan:
        Site order (edge signs), edges, and the training-set sizes of the other sites of the
        site's connected component when the method weights by samples.
    num_samples:
        This site's own training-set size; a plan that says otherwise is refused (stale sizes
        would silently change every site's weighting).
    total_steps:
        The local steps the site will take; None = ``cfg.training.local_steps``.
    """
    if site not in plan.sites:
        raise ConfigError(f"network plan: site {site!r} is not in it")
    planned = plan.train_samples.get(site)
    if planned is not None and planned != int(num_samples):
        raise ConfigError(
            f"network plan: sites.{site}.train_samples: {planned}, but the site has "
            f"{int(num_samples)} training images; the plan is out of date (every site weights "
            "by these sizes, so update it for all of them)"
        )
    graph = method_graph(plan, algorithm)
    samples = {**plan.train_samples, site: int(num_samples)}
    return make_context(
        graph,
        site,
        w0=w0,
        num_samples=samples,
        weights={site: _loss_weight(graph, site, samples, algorithm)},
        lr=cfg.training.lr,
        weight_decay=cfg.training.weight_decay,
        exchange_every=cfg.network.exchange_every,
        neighbours=(SERVER,) if algorithm.uses_server else None,
        total_steps=cfg.training.local_steps if total_steps is None else total_steps,
        coupling_scale=coupling_scale,
    )


def exchange_schedule(
    context: SiteContext, cfg: ExperimentConfig, algorithm: Algorithm
) -> ExchangeSchedule:
    """When the site sends on each edge (offsets seeded per edge; FedAvg: aligned rounds)."""
    return ExchangeSchedule.for_site(
        context.site,
        context.neighbours,
        cfg.network.exchange_every,
        cfg.seed,
        staggered=algorithm.staggered and cfg.network.stagger_exchanges,
        final_step=context.total_steps if algorithm.final_round else None,
    )


def evaluation_points(cfg: ExperimentConfig) -> list[float]:
    """THE evaluation rule of both runners: point p = 1..P at p * T / P nominal steps (T =
    ``training.local_steps``, P = ``training.eval_points``).

    The simulation reads it on its virtual clock (every site's model at that instant; one more
    point on the final models when a site finished after T), a deployment on the site's own
    local-step count (rounded up to a whole step). A nominal step is one local step of a site
    of speed 1 that never waits, so the two agree where sites keep pace; a learning curve's x
    axis is the local steps actually taken (the mean over sites in the simulation).
    """
    every = evaluation_every(cfg)
    return [p * every for p in range(1, cfg.training.eval_points + 1)]


def evaluation_every(cfg: ExperimentConfig) -> float:
    """The spacing T / P of :func:`evaluation_points` (``run_network(eval_every=...)``)."""
    return cfg.training.local_steps / cfg.training.eval_points


def build_site(
    site: str,
    plan: NetworkPlan,
    cfg: ExperimentConfig,
    algorithm: Algorithm,
    objective: LocalObjective,
    transport: Transport,
    clock: Clock,
    rules: SiteRules,
    *,
    w0: torch.Tensor,
    steps: int | None = None,
    lr_schedule: StepSchedule | None = None,
) -> SiteNode:
    """The site loop of ``site``, ready to tick.

    Parameters
    ----------
    site:
        The site id (must be in ``plan.sites``).
    plan:
        The network (see :func:`site_context`); addresses are not read here.
    cfg:
        Step size, weight decay, K, staggering, linger and seed (``training``, ``network``,
        ``seed``); ``training.local_steps`` and ``training.lr_schedule`` unless overridden.
    algorithm:
        The method's transitions (``hospitalnet.algorithms.make_algorithm``).
    objective:
        The site's local objective; its ``num_samples`` is the site's n_i.
    transport:
        Where messages go (simulated, gRPC, ...); never blocks.
    clock:
        Virtual time or seconds, matching ``rules`` (see :func:`site_rules`).
    rules:
        Staleness, inactivity and non-finite rules.
    w0:
        The common initial parameters (see :func:`initial_model`).
    steps:
        Local steps to take; None = ``cfg.training.local_steps``.
    lr_schedule:
        ``local step -> mu``; None = the schedule ``cfg.training`` describes over ``steps``
        (None for a constant step size).
    """
    total = cfg.training.local_steps if steps is None else int(steps)
    # an optional member of the objective contract (the chest objective has it)
    scale_of = getattr(objective, "coupling_scale", None)
    scale = scale_of() if callable(scale_of) else None
    context = site_context(
        site, plan, cfg, algorithm, w0, int(objective.num_samples), total, coupling_scale=scale
    )
    return SiteNode(
        context,
        algorithm,
        objective,
        transport,
        exchange_schedule(context, cfg, algorithm),
        rules,
        clock,
        steps=total,
        lr_schedule=lr_schedule or config_lr_schedule(cfg.training, total),
        linger=cfg.network.linger,
    )


def server_sample_counts(plan: NetworkPlan) -> dict[str, int]:
    """n_i of every site in site order, which the server's average needs (checked here)."""
    missing = [s for s in plan.sites if s not in plan.train_samples]
    if missing:
        raise ConfigError(
            f"network plan: sites.{missing[0]}.train_samples: the server weights the average "
            "by every site's training-set size"
        )
    return {s: plan.train_samples[s] for s in plan.sites}


def build_server(
    plan: NetworkPlan,
    transport: Transport,
    clock: Clock,
    rules: SiteRules,
    *,
    w0: torch.Tensor,
    site_weighting: SiteWeighting = "samples",
) -> ServerNode:
    """The FedAvg / FedProx server loop: the average is weighted by every site's n_i
    (``samples``, the sizes are checked even for ``uniform``: they are in every plan)."""
    server = FedAvgServer(site_weighting)
    return ServerNode(
        SERVER,
        server,
        server.init(server_sample_counts(plan), w0),
        plan.sites,
        transport,
        rules,
        clock,
    )


__all__ = [
    "W0_SEED",
    "build_server",
    "build_site",
    "evaluation_every",
    "evaluation_points",
    "exchange_schedule",
    "initial_model",
    "method_graph",
    "server_sample_counts",
    "site_context",
    "site_neighbours",
    "site_objective",
    "site_rules",
    "thread_governor",
]
