"""``local``: every site trains alone; ``pooled`` is the same algorithm on one site holding all data.

Plain SGD with weight decay in the loss. No messages. The pooled reference runs through the very
same site loop and simulation (one site, no edges) so that throughput comparisons are fair.
"""

from __future__ import annotations

import torch

from hospitalnet.algorithms.base import Algorithm, SGDState, SiteContext, sgd_update


class Local(Algorithm):
    communicates = False

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def init(self, ctx: SiteContext) -> SGDState:
        return SGDState(
            w=ctx.w0.detach().clone(),
            lr=ctx.lr,
            weight=ctx.weight,
            weight_decay=ctx.weight_decay,
        )

    def params(self, state: SGDState) -> torch.Tensor:
        return state.w

    def local_step(self, state: SGDState, loss: float, grad: torch.Tensor) -> SGDState:
        state.steps += 1
        sgd_update(state.w, grad, state.lr, state.weight, state.weight_decay)
        return state
