"""``ecl``: edge consensus with a two-way, delay-compensated exchange and one dual per edge.

The consensus problem ``min sum_i s_i f_i(w_i)  s.t.  w_i = w_j on every edge`` (s_i the
``training.site_weighting``) has the Lagrangian ``sum_i s_i f_i(w_i) + sum_e lam_e^T (w_o - w_n)``
with o the edge's owner (``A_{o|n} = +1``) and n the other end. ``ecl`` runs a linearised
augmented-Lagrangian (ADMM-style primal-dual) method on it, asynchronously:

    local step (every step, site i)
        w_i <- w_i - mu (s_i grad f_i(w_i) + lambda w_i + sum_j A_{i|j} lam_{ij})
    exchange on edge (o, n), every K steps, initiated by the owner o
        o sends [w_o, lam]
        n computes d = w_n - w_o, replies at once with d, and mixes:
                                    w_n <- w_n - W d;     lam_n <- lam (the owner's)
        o, when the reply arrives:  w_o <- w_o + W d      (the same d)
                                    lam <- lam - g_on d at o's next send,
                                    g_on = kappa(t) M_on / (mu K)

Why this form (each measured in benchmarks/ecl_dynamics.py and the quadratic tests):

- The two ends apply the same d with opposite signs, so one exchange conserves ``w_o + w_n``
  exactly however late the reply comes: the sites' mean moves only by their gradients, at the
  speed of SGD (common-mode speed 1.0). Gossip mixes a stale neighbour model into the current
  one (about 0.82 of SGD's speed at the default latency) and PDMM divides every step by
  ``1 + sum eta`` (0.65-0.72).
- The dual enters the step as a plain additive correction (no 1/(1 + sum eta) factor) and is
  integrated from the disagreement the exchange measured (a PI controller on w_o - w_n: the
  mixing is the proportional part, the dual the integral part). At a fixed point every d is 0,
  the duals cancel in the sum over sites, so ``sum_i s_i grad f_i(w) = 0``: the pooled optimum,
  whatever kappa, W, K or the delays (tests/algorithms/test_quadratic.py). With kappa 0 it is
  delay-compensated gossip, which keeps gossip's non-IID bias.
- The gain is per edge and proportional to the edge's Metropolis-Hastings weight M_on =
  1 / (1 + max(deg_o, deg_n)), so a site's total integral gain stays below kappa / (mu K)
  whatever its degree (sum_j M_ij < 1): one kappa is stable on a ring and on a complete graph
  (with a gain per edge independent of the degree, a complete graph of 8 diverged where a ring
  converged).
- The dual is the owner's: the other end takes it from each request, so a lost message leaves
  the two ends' duals different only until the next request (no drift).
- ``dual_warmup_steps``: kappa ramps up linearly, so the early, fast-changing gradients do not
  wind up the integrator (the stale-control-variate problem of SVRG on deep networks). Default:
  a quarter of the site's steps (on the default chest world, seed 0, the dual from step 0 cost
  0.009 AUROC at 500 steps against no dual; with the warm-up it cost 0.001;
  benchmarks/ecl_diagnostics.py has the paired figures over seeds).
- A site that took all its steps (``SiteContext.total_steps``) answers requests with its frozen
  model and neither mixes nor integrates: stragglers converge onto it (``lingers``).

Messages: a request (``DUAL``) is ``2n`` numbers, a reply (``MODEL``, holding d rather than a
model) ``n``: 1.5x gossip's bytes per exchange, the same number of messages. Since the reply
carries d itself, the owner keeps no snapshot and applies every reply, however late, even one
to a request sent before a restart; only a lost reply (or one overtaken by the next and then
refused by the replay rule) moves n's model alone, a one-off perturbation of the mean of W d.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hospitalnet.algorithms.base import Algorithm, Outgoing, SiteContext, SiteWeighting, sgd_update
from hospitalnet.algorithms.edge_sums import set_edge_active_marking_dirty
from hospitalnet.algorithms.gossip import metropolis_hastings_weight
from hospitalnet.errors import ConfigError
from hospitalnet.messages import Message, MessageKind


@dataclass
class ECLState:
    w: torch.Tensor
    lam: dict[str, torch.Tensor]  # the edge dual (owner: authoritative; other end: last received)
    lam_step: dict[str, torch.Tensor]  # owner: integrated -g d, applied to lam at the next send
    signs: dict[str, int]  # A_{i|j}
    active: dict[str, bool]
    mixing: dict[str, float]  # W_ij
    lr: float
    weight: float
    weight_decay: float
    exchange_every: int
    total_steps: int = 0  # 0: no limit
    warmup: int = 0  # local steps over which the dual gain ramps up
    steps: int = 0
    correction: torch.Tensor | None = None  # sum_j A_{i|j} lam_ij over active edges
    dirty: bool = True  # correction must be re-summed before the next step
    outbox: list[tuple[str, Outgoing]] = field(default_factory=list)  # replies to send now


class ECL(Algorithm):
    """Two-way, delay-compensated edge consensus (see the module docstring).

    Parameters
    ----------
    dual_gain:
        kappa, the integral gain of the dual per exchange, relative to the edge's
        Metropolis-Hastings weight (0 = delay-compensated gossip).
    dual_warmup_steps:
        Local steps over which kappa ramps linearly from 0 (0 = full gain from the start;
        None = a quarter of ``SiteContext.total_steps``, 0 when the site has no step limit).
    mixing_scale:
        Multiplies the Metropolis-Hastings weight ``1 / (1 + max(deg_i, deg_j))``; the pairwise
        weight must stay <= 1/2 (beyond, one exchange overshoots the midpoint).
    site_weighting:
        ``samples`` (loss scaled by N p_i: the fixed point is the pooled optimum) or ``uniform``.
    """

    lingers = True  # a finished site's model is frozen: it only answers
    derived_state = ("correction", "dirty", "outbox")

    def __init__(
        self,
        dual_gain: float = 0.3,
        dual_warmup_steps: int | None = None,
        mixing_scale: float = 1.0,
        site_weighting: SiteWeighting = "samples",
        name: str = "ecl",
    ) -> None:
        if not dual_gain >= 0:
            raise ConfigError(f"ecl.dual_gain: {dual_gain} must be >= 0")
        if dual_warmup_steps is not None and dual_warmup_steps < 0:
            raise ConfigError(f"ecl.dual_warmup_steps: {dual_warmup_steps} must be >= 0")
        if not mixing_scale > 0:
            raise ConfigError(f"ecl.mixing_scale: {mixing_scale} must be > 0")
        self.dual_gain = float(dual_gain)
        self.dual_warmup_steps = dual_warmup_steps
        self.mixing_scale = float(mixing_scale)
        self.site_weighting = site_weighting
        self.name = name

    # ---- state -----------------------------------------------------------------------------
    def init(self, ctx: SiteContext) -> ECLState:
        w = ctx.w0.detach().clone()
        mixing = {}
        for j in ctx.neighbours:
            mixing[j] = self.mixing_scale * metropolis_hastings_weight(
                ctx.degree, ctx.neighbour_degrees[j]
            )
            if mixing[j] > 0.5:
                raise ConfigError(
                    f"ecl.mixing_scale: {self.mixing_scale} gives the edge {ctx.site}-{j} a "
                    f"pairwise weight {mixing[j]:.3f} > 0.5 (an exchange would overshoot)"
                )
        owned = [j for j in ctx.neighbours if ctx.signs[j] > 0]
        return ECLState(
            w=w,
            lam={j: torch.zeros_like(w) for j in ctx.neighbours},
            lam_step={j: torch.zeros_like(w) for j in owned},
            signs=dict(ctx.signs),
            active={j: True for j in ctx.neighbours},
            mixing=mixing,
            lr=ctx.lr,
            weight=ctx.weight,
            weight_decay=ctx.weight_decay,
            exchange_every=ctx.exchange_every,
            total_steps=int(ctx.total_steps or 0),
            warmup=(
                int(ctx.total_steps or 0) // 4
                if self.dual_warmup_steps is None
                else self.dual_warmup_steps
            ),
        )

    def params(self, state: ECLState) -> torch.Tensor:
        return state.w

    def payload_spec(self, kind: MessageKind, like: torch.Tensor) -> tuple[int, torch.dtype]:
        """A request (DUAL) is ``[w, lam]``, a reply (MODEL) is ``d``."""
        n = like.numel()
        return (2 * n if kind is MessageKind.DUAL else n), like.dtype

    def _finished(self, state: ECLState) -> bool:
        return state.total_steps > 0 and state.steps >= state.total_steps

    def gain(self, state: ECLState, neighbour: str) -> float:
        """g = kappa(t) M_ij / (mu K): the edge dual's increment per unit of disagreement."""
        ramp = 1.0
        if state.warmup:
            ramp = min(1.0, state.steps / state.warmup)
        mh = state.mixing[neighbour] / self.mixing_scale
        return self.dual_gain * ramp * mh / (state.lr * state.exchange_every)

    # ---- local step ------------------------------------------------------------------------
    def local_step(self, state: ECLState, loss: float, grad: torch.Tensor) -> ECLState:
        state.steps += 1
        sgd_update(state.w, grad, state.lr, state.weight, state.weight_decay)
        if self.dual_gain > 0 and any(state.active.values()):
            if state.dirty:
                self._resum(state)
            assert state.correction is not None
            state.w.add_(state.correction, alpha=-state.lr)
        return state

    def _resum(self, state: ECLState) -> None:
        if state.correction is None:
            state.correction = torch.zeros_like(state.w)
        state.correction.zero_()
        for j, on in state.active.items():  # neighbour order: bit-reproducible
            if on:
                state.correction.add_(state.lam[j], alpha=float(state.signs[j]))
        state.dirty = False

    # ---- exchange --------------------------------------------------------------------------
    def outgoing(self, state: ECLState, neighbour: str) -> list[Outgoing]:
        """The owner's request on its schedule; the other end only answers (:meth:`receive`)."""
        if state.signs[neighbour] <= 0:
            return []
        lam = state.lam[neighbour]
        if self.dual_gain > 0:
            lam.add_(state.lam_step[neighbour])
            state.lam_step[neighbour].zero_()
            state.dirty = True
        return [Outgoing(MessageKind.DUAL, torch.cat([state.w, lam]))]

    def receive(self, state: ECLState, message: Message) -> ECLState:
        j, y = message.sender, message.payload
        if y is None or j not in state.signs:
            return state
        n = state.w.numel()
        if message.kind is MessageKind.DUAL and state.signs[j] < 0:
            self._answer(state, j, y[:n], y[n:])
        elif message.kind is MessageKind.MODEL and state.signs[j] > 0:
            self._complete(state, j, y)
        return state

    def _answer(self, state: ECLState, j: str, w_owner: torch.Tensor, lam: torch.Tensor) -> None:
        """The other end: reply with d = w_n - w_o, then mix and take the dual."""
        d = state.w - w_owner
        state.outbox.append((j, Outgoing(MessageKind.MODEL, d)))
        if self._finished(state):
            return  # a finished site's model is frozen: it only answers
        state.w.add_(d, alpha=-state.mixing[j])
        state.lam[j].copy_(lam)
        state.dirty = True

    def _complete(self, state: ECLState, j: str, d: torch.Tensor) -> None:
        """The owner: a reply; the same d as the other end applied, with the other sign."""
        if self._finished(state):
            return
        state.w.add_(d, alpha=state.mixing[j])
        if self.dual_gain > 0:
            state.lam_step[j].add_(d, alpha=-self.gain(state, j))

    def take_replies(self, state: ECLState) -> list[tuple[str, Outgoing]]:
        out, state.outbox = state.outbox, []
        return out

    def set_edge_active(self, state: ECLState, neighbour: str, active: bool) -> ECLState:
        return set_edge_active_marking_dirty(state, neighbour, active)

    def restarted(self, state: ECLState) -> ECLState:
        state.outbox.clear()  # answers the dead process owed are lost with it
        return state
