"""The algorithm protocol: a site's training as pure state transitions.

An :class:`Algorithm` holds only hyper-parameters; everything that changes lives in a per-site
state object created by :meth:`Algorithm.init`. The site loop (:mod:`hospitalnet.site`) drives it::

    state = algo.init(context)
    loop:
        for message in arrived:             state = algo.receive(state, message)
        on liveness change of an edge:      state = algo.set_edge_active(state, j, active)
        loss, grad = objective(algo.params(state))
        if algo.ready(state):               state = algo.local_step(state, loss, grad)
        for j whose exchange is due:        send algo.outgoing(state, j)
    w_final = algo.finalize(state)

Transitions are pure in the sense that matters here: no I/O, no sleeping, no sockets, no clock,
no global random state; the result depends only on the state and the arguments. For speed with
large models they update the state's own tensors in place and return the same state object, so a
caller must not keep references into a state it still wants unchanged (the site loop never does).
``grad`` handed to :meth:`local_step` belongs to the algorithm afterwards (it may be scaled in
place). Payloads returned by :meth:`outgoing` are fresh tensors, safe to send.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from hospitalnet.messages import Message, MessageKind
from hospitalnet.topology import Topology

SiteWeighting = Literal["samples", "uniform"]


@dataclass(frozen=True)
class SiteContext:
    """What a site knows when it starts (site-local; nothing here leaves the site).

    Attributes
    ----------
    site:
        This site's id.
    neighbours:
        Adjacent sites in site order (for FedAvg/FedProx: ``("server",)``).
    signs:
        ``A_{i|j}`` per neighbour, from :meth:`hospitalnet.topology.Topology.edge_sign`.
    degree, neighbour_degrees:
        Degrees in the topology (Metropolis-Hastings weights of gossip).
    weight:
        Scale of the site's loss in the consensus problem (see :func:`site_weights`).
    num_samples:
        n_i.
    w0:
        The common initial parameters (the state copies it).
    lr:
        Initial step size mu.
    weight_decay:
        lambda of the ``0.5 * lambda * ||w||^2`` term added to the loss.
    exchange_every:
        K, local steps between two exchanges on an edge.
    total_steps:
        The local steps the site will take (None: no limit, a deployment that stops on a
        signal); ECL freezes a finished site's model, FedAvg ends on a last global round.
    coupling_scale:
        Optional per-parameter factor of the PDMM coupling (``eta_scaling: sqrt_fan_in``), from
        the objective's optional ``coupling_scale()``; None where it has none.
    """

    site: str
    neighbours: tuple[str, ...]
    signs: Mapping[str, int]
    degree: int
    neighbour_degrees: Mapping[str, int]
    weight: float
    num_samples: int
    w0: torch.Tensor
    lr: float
    weight_decay: float = 0.0
    exchange_every: int = 8
    total_steps: int | None = None
    coupling_scale: torch.Tensor | None = None


@dataclass(frozen=True)
class Outgoing:
    """One payload to send on an edge."""

    kind: MessageKind
    payload: torch.Tensor


@dataclass
class SGDState:
    """State of the algorithms whose only per-site variable is the model."""

    w: torch.Tensor
    lr: float
    weight: float = 1.0
    weight_decay: float = 0.0
    steps: int = 0
    active: dict[str, bool] = field(default_factory=dict)


class Algorithm(ABC):
    """Hyper-parameters plus the transitions of one training method (see module docstring)."""

    name: str = "algorithm"
    #: False: the method never sends (local, pooled); the simulation gives it no edges.
    communicates: bool = True
    #: False: all of a site's edges fire on the same steps (FedAvg rounds) instead of staggered.
    staggered: bool = True
    #: True: the site's only neighbour is a central server (FedAvg, FedProx).
    uses_server: bool = False
    #: True: receiving never changes the model, so a site that finished its steps can keep
    #: answering its neighbours (see ``SiteNode(linger=...)``).
    lingers: bool = False
    #: True: every edge also exchanges after the last local step (FedAvg's last round).
    final_round: bool = False
    #: How ``SiteContext.weight`` is chosen; None = every site weight 1 (plain local losses).
    site_weighting: SiteWeighting | None = None
    #: State fields that are caches recomputed from the rest: left out of :meth:`state_dict`,
    #: left at their :meth:`init` values by :meth:`load_state_dict`.
    derived_state: tuple[str, ...] = ()

    @abstractmethod
    def init(self, ctx: SiteContext) -> Any:
        """A fresh state for the site described by ``ctx``."""

    @abstractmethod
    def params(self, state: Any) -> torch.Tensor:
        """The current model (a view into the state: read it, do not keep or modify it)."""

    @abstractmethod
    def local_step(self, state: Any, loss: float, grad: torch.Tensor) -> Any:
        """One local update with the minibatch gradient ``grad`` of the unweighted f_i."""

    def ready(self, state: Any) -> bool:
        """False while the site must not step (a FedAvg site waiting for the global model)."""
        return True

    def outgoing(self, state: Any, neighbour: str) -> list[Outgoing]:
        """Payloads for ``neighbour`` when that edge's exchange is due (may be empty)."""
        return []

    def receive(self, state: Any, message: Message) -> Any:
        """Apply a validated, in-order message from a neighbour."""
        return state

    def take_replies(self, state: Any) -> list[tuple[str, Outgoing]]:
        """Payloads :meth:`receive` wants sent at once (ECL's answer to a request), emptied."""
        return []

    def payload_spec(self, kind: MessageKind, like: torch.Tensor) -> tuple[int, torch.dtype]:
        """Length and dtype of a ``kind`` payload on the wire for a model shaped like ``like``.

        The receiver rejects anything else. Default: the flat model itself; compressed duals
        (``PDMM(compression=...)``) are shorter or narrower.
        """
        return like.numel(), like.dtype

    def set_edge_active(self, state: Any, neighbour: str, active: bool) -> Any:
        """The site loop's liveness verdict on an edge changed."""
        if hasattr(state, "active"):
            state.active[neighbour] = active
        return state

    def set_step_size(self, state: Any, lr: float) -> Any:
        """A learning-rate schedule changed mu."""
        state.lr = float(lr)
        return state

    def restarted(self, state: Any) -> Any:
        """The site resumed from a checkpoint: whatever was sent to it since is lost."""
        return state

    def finalize(self, state: Any) -> torch.Tensor:
        """The site's final model (a new tensor)."""
        return self.params(state).detach().clone()

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self, state: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The state as named tensors (``w``, ``z.n2`` ...) plus JSON values, caches left out.

        Works for any dataclass state whose fields are tensors, dicts of tensors or JSON values;
        None fields are left out. Nothing here is pickled (checkpoints: safetensors + JSON).
        """
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        for f in dataclasses.fields(state):
            value = getattr(state, f.name)
            if f.name in self.derived_state or value is None:
                continue
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value
            elif _tensor_dict(value):
                for k, v in value.items():
                    tensors[f"{f.name}.{k}"] = v
            else:
                meta[f.name] = value
        return tensors, meta

    def load_state_dict(
        self, state: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
    ) -> Any:
        """Overwrite ``state``, fresh from :meth:`init` with the same context, with the values of
        a :meth:`state_dict` (tensors are copied in place; caches keep their initial values)."""
        for f in dataclasses.fields(state):
            value = getattr(state, f.name)
            if f.name in self.derived_state:
                continue
            if isinstance(value, torch.Tensor):
                value.copy_(tensors[f.name])
            elif _tensor_dict(value):
                for k, v in value.items():
                    v.copy_(tensors[f"{f.name}.{k}"])
            elif f.name in meta:
                saved = meta[f.name]
                setattr(state, f.name, type(value)(saved) if value is not None else saved)
        return state


def _tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def sgd_update(
    w: torch.Tensor, grad: torch.Tensor, lr: float, weight: float, weight_decay: float
) -> None:
    """In place: ``w <- w - lr * (weight * grad + weight_decay * w)``.

    The single SGD update shared by local, pooled, gossip, FedAvg and an isolated ECL site, so
    that they are bit-identical where they should be.
    """
    if weight_decay:
        w.mul_(1.0 - lr * weight_decay)
    w.add_(grad, alpha=-lr * weight)


def is_finite_tensor(t: torch.Tensor) -> bool:
    """One reduction: a sum is finite only if every element is (and nothing overflowed)."""
    return math.isfinite(float(t.sum()))


def site_weights(
    topology: Topology, num_samples: Mapping[str, int], mode: SiteWeighting | None
) -> dict[str, float]:
    """The loss scale of every site so that the consensus optimum is the pooled optimum.

    ``samples``: site i in connected component C gets ``|C| * n_i / sum_{k in C} n_k``; summing
    the scaled losses over C gives ``|C| * sum_k p_k f_k``, the pooled loss of that component
    (ALGORITHMS.md section 1 with N p_i, taken per component so that a disconnected part is its
    own pooled problem and a site without neighbours keeps weight 1, i.e. plain local training).
    ``uniform`` or None: every weight is 1 (the authors' equal weighting).
    """
    if mode is None or mode == "uniform":
        return {site: 1.0 for site in topology.nodes}
    out: dict[str, float] = {}
    for comp in topology.components():
        total = sum(int(num_samples[s]) for s in comp)
        for s in comp:
            out[s] = 1.0 if len(comp) == 1 else len(comp) * int(num_samples[s]) / total
    return out


def make_context(
    topology: Topology,
    site: str,
    *,
    w0: torch.Tensor,
    num_samples: Mapping[str, int],
    weights: Mapping[str, float],
    lr: float,
    weight_decay: float,
    exchange_every: int,
    neighbours: tuple[str, ...] | None = None,
    total_steps: int | None = None,
    coupling_scale: torch.Tensor | None = None,
) -> SiteContext:
    """The :class:`SiteContext` of ``site`` in ``topology`` (``neighbours`` overrides, e.g. server)."""
    nbs = topology.neighbours(site) if neighbours is None else neighbours
    in_topology = neighbours is None
    return SiteContext(
        site=site,
        neighbours=tuple(nbs),
        signs={j: topology.edge_sign(site, j) if in_topology else 1 for j in nbs},
        degree=len(nbs),
        neighbour_degrees={j: topology.degree(j) if in_topology else 0 for j in nbs},
        weight=float(weights[site]),
        num_samples=int(num_samples[site]),
        w0=w0,
        lr=float(lr),
        weight_decay=float(weight_decay),
        exchange_every=int(exchange_every),
        total_steps=None if total_steps is None else int(total_steps),
        coupling_scale=coupling_scale,
    )
