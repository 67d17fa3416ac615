"""``fedavg`` and ``fedprox``: a central server averages the site models every K local steps.

Site side (:class:`FedAvg`): K plain SGD steps on the site's own loss, then the model goes to the
server and the site waits for the new global model, which replaces its own (synchronous rounds,
as users know FedAvg from Flower / NVFlare). When the steps are not a multiple of K, the last
step ends one more (shorter) round, so every site ends on the last global model
(``final_round``; the site loop's schedule fires after the last step too). If the server edge goes inactive (the site loop's
liveness rule), the site stops waiting and trains on alone until the server is heard again.
FedProx adds ``(mu_prox / 2) ||w - w_global||^2`` to each site's loss, w_global being the last
global model received (w0 before the first).

Server side (:class:`FedAvgServer`): collects the latest model of every site, and once every
site it considers active has sent one, replaces the global model by the average weighted by n_i
(``training.site_weighting: samples``, the pooled objective) or with equal weights (``uniform``)
and sends it back to every site. A pure state machine like the site algorithms; the loop that
drives it is :class:`hospitalnet.site.ServerNode`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from hospitalnet.algorithms.base import (
    Algorithm,
    Outgoing,
    SiteContext,
    SiteWeighting,
    sgd_update,
)
from hospitalnet.errors import ConfigError
from hospitalnet.messages import Message, MessageKind

SERVER = "server"


@dataclass
class FedAvgState:
    w: torch.Tensor
    lr: float
    weight_decay: float
    exchange_every: int
    w_global: torch.Tensor | None  # FedProx anchor
    total_steps: int = 0  # 0: no limit
    waiting: bool = False
    server_active: bool = True
    steps: int = 0
    rounds: int = 0  # global models received


class FedAvg(Algorithm):
    """Site side of FedAvg (``mu_prox = 0``) and FedProx (``mu_prox > 0``)."""

    staggered = False
    uses_server = True
    final_round = True

    def __init__(
        self, mu_prox: float = 0.0, name: str = "fedavg", site_weighting: SiteWeighting = "samples"
    ) -> None:
        if mu_prox < 0:
            raise ConfigError(f"fedprox.mu_prox: {mu_prox} must be >= 0")
        self.mu_prox = float(mu_prox)
        self.name = name
        # read by the assembly for the server's average; the sites' own losses keep weight 1
        self.server_weighting: SiteWeighting = site_weighting

    def init(self, ctx: SiteContext) -> FedAvgState:
        w = ctx.w0.detach().clone()
        return FedAvgState(
            w=w,
            lr=ctx.lr,
            weight_decay=ctx.weight_decay,
            exchange_every=ctx.exchange_every,
            w_global=w.clone() if self.mu_prox > 0 else None,
            total_steps=int(ctx.total_steps or 0),
        )

    def params(self, state: FedAvgState) -> torch.Tensor:
        return state.w

    def ready(self, state: FedAvgState) -> bool:
        return not (state.waiting and state.server_active)

    def local_step(self, state: FedAvgState, loss: float, grad: torch.Tensor) -> FedAvgState:
        state.steps += 1
        if state.w_global is not None:
            # grad of (mu/2)||w - w_global||^2, added before the shared SGD update
            grad.add_(state.w, alpha=self.mu_prox).add_(state.w_global, alpha=-self.mu_prox)
        sgd_update(state.w, grad, state.lr, 1.0, state.weight_decay)
        if state.steps % state.exchange_every == 0 or state.steps == state.total_steps:
            state.waiting = True  # this step's model goes to the server (aligned schedule)
        return state

    def outgoing(self, state: FedAvgState, neighbour: str) -> list[Outgoing]:
        return [Outgoing(MessageKind.MODEL, state.w.clone())]

    def receive(self, state: FedAvgState, message: Message) -> FedAvgState:
        if message.kind is MessageKind.MODEL and message.payload is not None:
            state.w.copy_(message.payload)
            if state.w_global is not None:
                state.w_global.copy_(message.payload)
            state.waiting = False
            state.rounds += 1
        return state

    def restarted(self, state: FedAvgState) -> FedAvgState:
        # A checkpoint taken right after a send says "waiting", but the global model of that
        # round may have reached the process that died; waiting for it again would wait for
        # ever (the server has moved on and needs this site's next model). Step on instead.
        state.waiting = False
        return state

    def set_edge_active(self, state: FedAvgState, neighbour: str, active: bool) -> FedAvgState:
        state.server_active = active
        return state


@dataclass
class ServerState:
    w: torch.Tensor  # the global model
    num_samples: dict[str, int]  # n_i, in site order
    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    pending_step: int = 0
    rounds: int = 0


class FedAvgServer:
    """The aggregation rule of FedAvg/FedProx as pure transitions (weights: see module doc)."""

    def __init__(self, site_weighting: SiteWeighting = "samples") -> None:
        if site_weighting not in ("samples", "uniform"):
            raise ConfigError(f"training.site_weighting: unknown value {site_weighting!r}")
        self.site_weighting = site_weighting

    def init(self, num_samples: Mapping[str, int], w0: torch.Tensor) -> ServerState:
        return ServerState(w=w0.detach().clone(), num_samples=dict(num_samples))

    def receive(self, state: ServerState, message: Message) -> ServerState:
        if message.kind is MessageKind.MODEL and message.payload is not None:
            if message.sender in state.num_samples:
                state.pending[message.sender] = message.payload
                state.pending_step = max(state.pending_step, message.step)
        return state

    def ready(self, state: ServerState, expected: Iterable[str]) -> bool:
        """True once every site in ``expected`` (the active ones) has sent a model."""
        return bool(state.pending) and all(s in state.pending for s in expected)

    def aggregate(self, state: ServerState) -> ServerState:
        sites = [s for s in state.num_samples if s in state.pending]
        size = {s: state.num_samples[s] if self.site_weighting == "samples" else 1 for s in sites}
        total = float(sum(size.values()))
        state.w.zero_()
        for s in sites:
            state.w.add_(state.pending[s], alpha=size[s] / total)
        state.pending.clear()
        state.rounds += 1
        return state

    def outgoing(self, state: ServerState) -> torch.Tensor:
        return state.w.clone()
