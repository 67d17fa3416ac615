"""PDMM-family edge consensus: linearised PDMM / relaxed PDMM with one dual variable per edge.

This was hospitalnet's ``ecl`` until the two-way exchange (:mod:`hospitalnet.algorithms.ecl`)
replaced it as the default; it stays as the presets ``ecl-pdmm`` (theta 1), ``ecl-pdmm-damped``
(theta 0.8, the old default), ``ecl-relaxed-pdmm`` (theta 1/2, formerly ``ecl-admm``: relaxing
the received dual is not the authors' ADMM) and ``ecl-isvr``. Why it lost (measured in
benchmarks/ecl_dynamics.py): every step is divided by ``1 + sum_j eta_ij`` (the common mode of
all sites moves at 0.65-0.72 of SGD's speed at the default latency), and a one-way dual that
arrives K steps late carries a stale correction into every step.

ALGORITHMS.md section 2, at site i with neighbours j (A = A_{i|j}, E_i = active edges):

    local step   w_i <- ( w_i/mu - g + sum_j eta_ij A z_{i|j} + rho sum_j w_j^rcv )
                        / ( 1/mu + sum_j eta_ij + rho E_i )
                 g = s_i * grad f_i(w_i) + lambda * w_i     (s_i = N p_i, weight decay in the loss)
    send to j    y_{i|j} = z_{i|j} - 2 A w_i                (edge-specific; plus w_i when rho > 0)
    receive      z_{i|j} <- (1 - theta) z_{i|j} + theta y_{j|i}   (theta 1 = PDMM, 1/2 = ADMM)

Choices (each measured or argued in ALGORITHMS.md / the tests):
- ``dual_init="model"``: z_{i|j} = A w0, so the first steps do not pull w towards 0;
  ``"zero"`` is the authors' choice.
- The coupling is per edge and the same at both ends (eta_{ij} = eta_{ji}), because the fixed
  point satisfies ``sum_i s_i grad f_i(w) / eta_i = 0`` when each node uses its own eta_i: the
  ISVR rule as published (eta_i = 1 / (mu E_i (K - 1)), one value per node) therefore minimises
  a *degree-weighted* loss on an irregular graph (measured: error 0.098 on a random 8-site
  graph, exact on regular ones). ``eta="auto"`` here is the edge-symmetric form of that rule,
  ``eta_{ij} = 1 / (mu (K - 1) max(deg_i, deg_j))`` (Metropolis-Hastings style, topology
  degrees so both ends agree); on a regular graph it IS the ISVR rule. A fixed eta is the same
  on every edge. Either way eta * mu stays constant under a learning-rate schedule.
- Inactive edges leave E_i and the sums; their z and received model are frozen, not deleted.
  With no active edge the step is exactly plain SGD (:func:`sgd_update`), bit-identical to the
  ``local`` method.
- The coupling sum ``sum_j eta_ij mu A z_{i|j}`` is cached: a received dual updates it
  incrementally (two vector passes) and it is re-summed exactly in neighbour order after an
  edge changes state and every REFRESH_EVERY updates, so a step costs three vector operations.

Compression of the duals on the wire (``compression``; C-ECL, Takezawa, Niwa, Yamada 2023, in
spirit), applied here in the pure transitions so a simulation and a deployment send the same
bytes:

- ``none``     y as float32 (4 bytes per parameter).
- ``float16``  y rounded to float16 (2 bytes per parameter: half the bytes). Stateless, so it is
               as robust to lost or late messages as ``none``; the rounding (relative 2^-11)
               leaves a small noise floor on the consensus.
- ``topk``     only the k = ceil(topk_fraction * n) entries where y differs most from what the
               receiver already holds: both ends keep the same reconstruction y^_{i|j}; the
               sender picks the k largest |y - y^|, sends their *values* (not differences) and
               indices, and both ends overwrite y^ there; the receiver then relaxes z towards
               y^ as usual. Payload: k float32 values then k indices (as float32, exact below
               2^24 parameters), i.e. 8k bytes; topk_fraction 0.25 halves and 0.125 quarters
               the bytes. Sending values rather than differences means a lost message only
               leaves those k entries stale until they are picked again (no accumulated drift).
               y^ starts at the value of y at w0 that both ends can compute.
MODEL payloads of the optional proximity term (rho > 0) are never compressed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from hospitalnet.algorithms.base import (
    Algorithm,
    Outgoing,
    SiteContext,
    SiteWeighting,
    sgd_update,
)
from hospitalnet.algorithms.edge_sums import set_edge_active_marking_dirty
from hospitalnet.errors import ConfigError
from hospitalnet.messages import Message, MessageKind

#: Incremental coupling updates between two exact re-sums (bounds float round-off drift).
REFRESH_EVERY = 64

Compression = Literal["none", "float16", "topk"]
#: Indices travel as float32, exact for every integer below this.
MAX_TOPK_PARAMS = 1 << 24


@dataclass
class PDMMState:
    w: torch.Tensor
    z: dict[str, torch.Tensor]  # z_{i|j}
    signs: dict[str, int]  # A_{i|j}
    active: dict[str, bool]
    lr: float
    weight: float
    weight_decay: float
    exchange_every: int
    eta_lr: dict[str, float]  # eta_ij * mu per edge (constant under a step-size schedule)
    w_rcv: dict[str, torch.Tensor] = field(default_factory=dict)  # only when rho > 0
    coupling: torch.Tensor | None = None  # sum_j eta_ij mu A z_{i|j} over active edges
    received: torch.Tensor | None = None  # sum_j w_j^rcv over active edges (rho > 0)
    dirty: bool = True  # coupling must be re-summed before the next step
    updates: int = 0  # incremental coupling updates since the last re-sum
    steps: int = 0
    sent: dict[str, torch.Tensor] = field(default_factory=dict)  # topk: y^_{i|j} (receiver's view)
    heard: dict[str, torch.Tensor] = field(default_factory=dict)  # topk: y^_{j|i} from j
    y_rcv: dict[str, torch.Tensor] = field(default_factory=dict)  # dual_averaging: last y
    scale: torch.Tensor | None = None  # eta_scaling sqrt_fan_in: eta's per-parameter factor


def topk_size(numel: int, fraction: float) -> int:
    """k, the number of entries a top-k dual payload keeps (at least one)."""
    return max(1, min(numel, math.ceil(fraction * numel)))


def encode_topk(y: torch.Tensor, view: torch.Tensor, k: int) -> torch.Tensor:
    """The k entries of ``y`` farthest from ``view`` as ``[values, indices]``; updates ``view``."""
    idx = torch.topk((y - view).abs_(), k, sorted=False).indices.sort().values
    values = y[idx]
    view[idx] = values
    return torch.cat([values, idx.to(torch.float32)])


def decode_topk(payload: torch.Tensor, view: torch.Tensor) -> None:
    """Overwrite ``view`` with the entries carried by a top-k ``payload`` (in place)."""
    k = payload.numel() // 2
    view[payload[k:].to(torch.int64)] = payload[:k].to(view.dtype)


class PDMM(Algorithm):
    """Linearised PDMM (theta 1) / ADMM (theta 1/2) / damped in between.

    Parameters
    ----------
    theta:
        Relaxation of the dual update, in (0, 1].
    eta:
        Coupling weight, or ``"auto"`` for the ISVR rule (needs K >= 2).
    rho:
        Optional proximity to the neighbours' received models (0 = off; > 0 doubles traffic).
    site_weighting:
        ``samples`` (loss scaled by N p_i, consensus optimum = pooled optimum) or ``uniform``.
    dual_init:
        ``model`` (z = A w0) or ``zero``.
    compression:
        ``none``, ``float16`` or ``topk`` (see the module docstring).
    topk_fraction:
        Share of the entries a ``topk`` payload carries, in (0, 1].
    eta_scaling:
        ``none``, or ``sqrt_fan_in``: eta multiplied per tensor by sqrt(fan-in) as in the
        authors' KDD 2020 code (``SiteContext.coupling_scale``; the fixed point is unchanged, the
        coupling is per coordinate and the same at both ends). Needs an objective that gives
        ``coupling_scale()`` (the chest objective does).
    dual_averaging:
        False: a received dual relaxes z once, on receipt (``z <- (1 - theta) z + theta y``).
        True: the authors' "ADMM" (ICML 2021 code): the last received y is kept and z moves
        towards it by theta at *every* local step (a running average updated each step, so z
        reaches y within a few steps whatever theta; ``ecl-authors-admm``).
    """

    def __init__(
        self,
        theta: float = 0.8,
        eta: float | Literal["auto"] = "auto",
        rho: float = 0.0,
        site_weighting: SiteWeighting = "samples",
        dual_init: Literal["model", "zero"] = "model",
        name: str = "ecl-pdmm-damped",
        compression: Compression = "none",
        topk_fraction: float = 0.25,
        dual_averaging: bool = False,
        eta_scaling: Literal["none", "sqrt_fan_in"] = "none",
    ) -> None:
        if eta_scaling not in ("none", "sqrt_fan_in"):
            raise ConfigError(f"ecl.eta_scaling: unknown value {eta_scaling!r}")
        self.eta_scaling = eta_scaling
        self.lingers = True  # receive only touches the duals
        self.dual_averaging = bool(dual_averaging)
        # re-summed on load; the scale is the context's
        self.derived_state = ("coupling", "received", "dirty", "updates", "scale")
        if not 0.0 < theta <= 1.0:
            raise ConfigError(f"ecl.theta: {theta} is not in (0, 1]")
        if eta != "auto" and not float(eta) > 0:
            raise ConfigError(f"ecl.eta: {eta} must be > 0 or 'auto'")
        if rho < 0:
            raise ConfigError(f"ecl.rho: {rho} must be >= 0")
        self.theta = float(theta)
        self.eta = eta
        if compression not in ("none", "float16", "topk"):
            raise ConfigError(f"ecl.compression: unknown value {compression!r}")
        if not 0.0 < topk_fraction <= 1.0:
            raise ConfigError(f"ecl.topk_fraction: {topk_fraction} is not in (0, 1]")
        self.rho = float(rho)
        self.compression = compression
        self.topk_fraction = float(topk_fraction)
        self.site_weighting = site_weighting
        self.dual_init = dual_init
        self.name = name

    # ---- state -----------------------------------------------------------------------------
    def init(self, ctx: SiteContext) -> PDMMState:
        if self.eta == "auto" and ctx.neighbours and ctx.exchange_every < 2:
            raise ConfigError(
                "network.exchange_every: eta 'auto' (ISVR rule) needs K >= 2 local steps "
                f"per exchange, got {ctx.exchange_every}"
            )
        w = ctx.w0.detach().clone()
        z = {
            j: (ctx.signs[j] * w if self.dual_init == "model" else torch.zeros_like(w))
            for j in ctx.neighbours
        }
        if self.compression == "topk" and w.numel() >= MAX_TOPK_PARAMS:
            raise ConfigError(
                f"ecl.compression: topk supports models below {MAX_TOPK_PARAMS} parameters, "
                f"this one has {w.numel()}"
            )
        state = PDMMState(
            w=w,
            z=z,
            signs=dict(ctx.signs),
            active={j: True for j in ctx.neighbours},
            lr=ctx.lr,
            weight=ctx.weight,
            weight_decay=ctx.weight_decay,
            exchange_every=ctx.exchange_every,
            eta_lr={j: self._eta_lr(ctx, j) for j in ctx.neighbours},
            w_rcv={j: w.clone() for j in ctx.neighbours} if self.rho > 0 else {},
            # y from j at w0 equals z0 (either dual_init), so averaging starts at rest
            y_rcv={j: z[j].clone() for j in ctx.neighbours} if self.dual_averaging else {},
            scale=self._scale(ctx),
        )
        if self.compression == "topk":
            # y at w0 as both ends compute it: y_{i|j} = z0_{i|j} - 2 A_{i|j} w0, and from j
            # y_{j|i} = z0_{j|i} + 2 A_{i|j} w0 with z0_{j|i} = -A_{i|j} w0 (or 0)
            for j in ctx.neighbours:
                a = ctx.signs[j]
                state.sent[j] = z[j] - 2 * a * w
                state.heard[j] = (-z[j]) + 2 * a * w
        return state

    def payload_spec(self, kind: MessageKind, like: torch.Tensor) -> tuple[int, torch.dtype]:
        """Length and dtype of a ``kind`` payload for a model shaped like ``like``."""
        if kind is MessageKind.DUAL and self.compression == "float16":
            return like.numel(), torch.float16
        if kind is MessageKind.DUAL and self.compression == "topk":
            return 2 * topk_size(like.numel(), self.topk_fraction), like.dtype
        return like.numel(), like.dtype

    def _scale(self, ctx: SiteContext) -> torch.Tensor | None:
        if self.eta_scaling == "none":
            return None
        if ctx.coupling_scale is None:
            raise ConfigError(
                "ecl.eta_scaling: sqrt_fan_in needs the model's tensor shapes; this site's "
                "objective gives no coupling_scale()"
            )
        return ctx.coupling_scale.to(ctx.w0.dtype)

    def _eta_lr(self, ctx: SiteContext, j: str) -> float:
        if self.eta == "auto":
            hub = max(ctx.degree, ctx.neighbour_degrees[j], 1)
            return 1.0 / ((ctx.exchange_every - 1) * hub)
        return float(self.eta) * ctx.lr

    def params(self, state: PDMMState) -> torch.Tensor:
        return state.w

    # ---- local step ------------------------------------------------------------------------
    def _refresh(self, state: PDMMState, live: list[str]) -> None:
        if state.coupling is None:
            state.coupling = torch.empty_like(state.w)
            if self.rho > 0:
                state.received = torch.empty_like(state.w)
        state.coupling.zero_()
        for j in live:
            state.coupling.add_(state.z[j], alpha=state.signs[j] * state.eta_lr[j])
        if self.rho > 0:
            assert state.received is not None
            state.received.zero_()
            for j in live:
                state.received.add_(state.w_rcv[j])
        state.dirty = False
        state.updates = 0

    def local_step(self, state: PDMMState, loss: float, grad: torch.Tensor) -> PDMMState:
        state.steps += 1
        live = [j for j, on in state.active.items() if on]
        if not live:  # isolated or no neighbours: exactly plain SGD
            sgd_update(state.w, grad, state.lr, state.weight, state.weight_decay)
            return state
        if self.dual_averaging:  # every step: z moves by theta towards the last y received
            for j in live:
                state.z[j].lerp_(state.y_rcv[j], self.theta)
            state.dirty = True
        if state.dirty:
            self._refresh(state, live)
        assert state.coupling is not None
        inv_lr = 1.0 / state.lr
        if state.scale is not None:
            self._scaled_step(state, grad, live)
            return state
        inv = 1.0 / (inv_lr * (1.0 + sum(state.eta_lr[j] for j in live)) + self.rho * len(live))
        w = state.w
        w.mul_((inv_lr - state.weight_decay) * inv)
        w.add_(grad, alpha=-state.weight * inv)
        w.add_(state.coupling, alpha=inv_lr * inv)
        if self.rho > 0:
            assert state.received is not None
            w.add_(state.received, alpha=self.rho * inv)
        return state

    def _scaled_step(self, state: PDMMState, grad: torch.Tensor, live: list[str]) -> None:
        """The local step with eta per coordinate (eta_ij * scale): the same formula, with the
        denominator a vector."""
        assert state.scale is not None and state.coupling is not None
        inv_lr = 1.0 / state.lr
        den = state.scale * (inv_lr * sum(state.eta_lr[j] for j in live))
        den.add_(inv_lr + self.rho * len(live))
        num = state.w * (inv_lr - state.weight_decay)
        num.add_(grad, alpha=-state.weight).addcmul_(state.scale, state.coupling, value=inv_lr)
        if self.rho > 0:
            assert state.received is not None
            num.add_(state.received, alpha=self.rho)
        torch.div(num, den, out=state.w)

    # ---- exchange --------------------------------------------------------------------------
    def outgoing(self, state: PDMMState, neighbour: str) -> list[Outgoing]:
        y = torch.add(state.z[neighbour], state.w, alpha=-2.0 * state.signs[neighbour])
        if self.compression == "float16":
            y = y.to(torch.float16)
        elif self.compression == "topk":
            k = topk_size(y.numel(), self.topk_fraction)
            y = encode_topk(y, state.sent[neighbour], k)
        out = [Outgoing(MessageKind.DUAL, y)]
        if self.rho > 0:
            out.append(Outgoing(MessageKind.MODEL, state.w.clone()))
        return out

    def receive(self, state: PDMMState, message: Message) -> PDMMState:
        j = message.sender
        if message.payload is None or j not in state.z:
            return state
        y, z = message.payload, state.z[j]
        if message.kind is MessageKind.DUAL:
            if self.compression == "topk":
                decode_topk(y, state.heard[j])
                y = state.heard[j]
            elif y.dtype != z.dtype:
                y = y.to(z.dtype)
            if self.dual_averaging:
                state.y_rcv[j].copy_(y)  # z follows at every local step
                return state
            if state.active[j] and not state.dirty and state.coupling is not None:
                # keep the cached coupling in step: + eta_ij mu A theta (y - z), two passes
                # instead of a full re-sum; re-summed exactly every REFRESH_EVERY updates
                c = state.signs[j] * state.eta_lr[j] * self.theta
                state.coupling.add_(y, alpha=c).add_(z, alpha=-c)
                state.updates += 1
                state.dirty = state.updates >= REFRESH_EVERY
            elif state.active[j]:
                state.dirty = True
            if self.theta == 1.0:
                z.copy_(y)
            else:
                z.lerp_(y, self.theta)
        elif message.kind is MessageKind.MODEL and self.rho > 0:
            state.w_rcv[j].copy_(y)
            state.dirty = state.dirty or state.active[j]
        return state

    def set_edge_active(self, state: PDMMState, neighbour: str, active: bool) -> PDMMState:
        return set_edge_active_marking_dirty(state, neighbour, active)
