"""``gossip``: D-PSGD (Gossip-SGD) with Metropolis-Hastings weights, applied edge by edge.

Local step: plain SGD on the site's (weighted) loss. Exchange: on an edge's schedule both ends
send their current model. Synchronous D-PSGD mixes all neighbours at once,
``w_i <- W_ii w_i + sum_j W_ij w_j`` with ``W_ij = 1 / (1 + max(deg_i, deg_j))`` and
``W_ii = 1 - sum_j W_ij``. Asynchronously there is no common instant, so each received model is
mixed in on its own as soon as it arrives:

    on receipt of w_j at site i:   w_i <- w_i + W_ij (w_j - w_i)

Why this is the right asynchronous form: the two ends of an edge exchange on the same schedule
and W_ij = W_ji, so one exchange applies the symmetric, doubly stochastic pairwise matrix
``I - W_ij (e_i - e_j)(e_i - e_j)^T`` (it preserves the sites' average when both messages are
fresh). Over one exchange round every edge fires once, so site i keeps
``prod_j (1 - W_ij) >= 1 - sum_j W_ij = W_ii`` of itself - the synchronous MH mixing to first
order, and never an over-relaxed step (sum_j W_ij < 1 by construction). Degrees are the
topology's static degrees so that both ends always agree on W_ij; an inactive edge simply
delivers nothing. The authors' baseline averaged in edge order with weights that were not
doubly stochastic; this one is the correct baseline.

Gossip's loss is scaled like ECL's (``site_weighting``), so both aim at the same (pooled)
optimum; the remaining gap at a constant step with K > 1 local steps is gossip's own non-IID
bias (measured in tests/algorithms/test_quadratic.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hospitalnet.algorithms.base import (
    Algorithm,
    Outgoing,
    SGDState,
    SiteContext,
    SiteWeighting,
    sgd_update,
)
from hospitalnet.messages import Message, MessageKind


def metropolis_hastings_weight(deg_i: int, deg_j: int) -> float:
    return 1.0 / (1.0 + max(deg_i, deg_j))


@dataclass
class GossipState(SGDState):
    mixing: dict[str, float] = field(default_factory=dict)  # W_ij per neighbour


class Gossip(Algorithm):
    def __init__(self, site_weighting: SiteWeighting = "samples", name: str = "gossip") -> None:
        self.site_weighting = site_weighting
        self.name = name

    def init(self, ctx: SiteContext) -> GossipState:
        return GossipState(
            w=ctx.w0.detach().clone(),
            lr=ctx.lr,
            weight=ctx.weight,
            weight_decay=ctx.weight_decay,
            active={j: True for j in ctx.neighbours},
            mixing={
                j: metropolis_hastings_weight(ctx.degree, ctx.neighbour_degrees[j])
                for j in ctx.neighbours
            },
        )

    def params(self, state: SGDState) -> torch.Tensor:
        return state.w

    def local_step(self, state: SGDState, loss: float, grad: torch.Tensor) -> SGDState:
        state.steps += 1
        sgd_update(state.w, grad, state.lr, state.weight, state.weight_decay)
        return state

    def outgoing(self, state: SGDState, neighbour: str) -> list[Outgoing]:
        return [Outgoing(MessageKind.MODEL, state.w.clone())]

    def receive(self, state: GossipState, message: Message) -> GossipState:
        weight = state.mixing.get(message.sender)
        if message.kind is MessageKind.MODEL and message.payload is not None and weight:
            state.w.lerp_(message.payload, weight)
        return state
