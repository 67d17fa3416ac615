"""The one loop a hospital runs, in the simulation and in a deployment alike.

:class:`SiteNode.tick` is the whole loop body, in four phases::

    1. receive   poll the transport; apply each message by the rules below
    2. liveness  an edge silent for longer than D goes inactive (z frozen, out of E_i)
    3. step      one local step on one minibatch (non-finite loss/gradient: step rolled back)
    4. send      per-edge payloads for the edges whose exchange is due at this step

Receive rules (rejection, replay, staleness, liveness) live in :mod:`hospitalnet.peers`, shared
with the FedAvg server's loop (:class:`ServerNode`). The linger/stop rule after the last step is
:meth:`SiteNode.linger_over`, the same in both runners.

The clock is injected: virtual time in the simulation (in nominal step units), seconds
(``time.monotonic``) in a deployment, so ``inactive_after`` D means steps or seconds accordingly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from hospitalnet.algorithms.base import Algorithm, Outgoing, SiteContext, is_finite_tensor
from hospitalnet.algorithms.fedavg import FedAvgServer, ServerState
from hospitalnet.errors import HospitalnetError
from hospitalnet.messages import Message, MessageKind
from hospitalnet.objective import LocalObjective
from hospitalnet.peers import PeerBook, SiteRules, Verdict
from hospitalnet.seeding import numpy_rng
from hospitalnet.transport.base import Transport

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class SiteFailure(HospitalnetError):
    """A site had to stop (e.g. repeated non-finite losses); the other sites carry on."""


class ExchangeSchedule:
    """When a site sends on each edge: after local step k if ``k % K == offset`` of that edge.

    Offsets are drawn per edge from the run's seed and the two site ids (sorted by name), so both
    ends of an edge fire on the same step numbers and different edges are staggered.
    """

    def __init__(self, every: int, offsets: dict[str, int], final_step: int | None = None) -> None:
        if every < 1:
            raise ValueError("exchange schedule: every must be >= 1")
        self.every = int(every)
        self.offsets = dict(offsets)
        self.final_step = final_step  # every edge also fires after this step (FedAvg's last round)
        by_residue: list[list[str]] = [[] for _ in range(self.every)]
        for nb, off in self.offsets.items():
            by_residue[off % self.every].append(nb)
        self._by_residue = [tuple(x) for x in by_residue]

    @classmethod
    def for_site(
        cls,
        site: str,
        neighbours: Sequence[str],
        every: int,
        seed: int,
        staggered: bool = True,
        final_step: int | None = None,
    ) -> ExchangeSchedule:
        offsets = {}
        for nb in neighbours:
            a, b = sorted((site, nb))
            offsets[nb] = (
                int(numpy_rng(seed, "exchange", a, b).integers(0, every)) if staggered else 0
            )
        return cls(every, offsets, final_step)

    def due(self, step: int) -> tuple[str, ...]:
        """Neighbours whose exchange is due after local step ``step`` (in neighbour order)."""
        if step == self.final_step:
            return tuple(self.offsets)
        return self._by_residue[step % self.every]

    def count(self, neighbour: str, steps: int) -> int:
        """How many sends to ``neighbour`` happen in steps 1..``steps``."""
        first = self.offsets[neighbour] % self.every or self.every
        regular = 0 if steps < first else (steps - first) // self.every + 1
        final = self.final_step
        extra = final is not None and final <= steps and final % self.every != first % self.every
        return regular + int(extra)


@dataclass(frozen=True)
class Event:
    """Something that happened, for the run's history (failures are data)."""

    time: float
    site: str
    kind: str  # edge_inactive | edge_active | isolated | reconnected | failed | ...
    peer: str | None = None
    detail: str = ""


class TickResult(Enum):
    STEPPED = "stepped"
    ROLLED_BACK = "rolled_back"  # non-finite loss or gradient: nothing applied
    IDLE = "idle"  # nothing to do (waiting for a server, or all steps done)
    SERVING = "serving"  # all steps done; still exchanging on schedule, model unchanged


class SiteNode:
    """One hospital: its algorithm state, its data (objective) and its side of every edge.

    Parameters
    ----------
    context:
        The site's id, neighbours, signs, weight, w0 and step size (see ``SiteContext``).
    algorithm:
        The training method (pure transitions).
    objective:
        The site's local objective (draws its own minibatches).
    transport:
        Where messages go and come from (simulated or gRPC); never blocks.
    schedule:
        When each edge's exchange is due.
    rules:
        Staleness bound, inactivity deadline, non-finite tolerance.
    clock:
        Virtual time (simulation) or ``time.monotonic`` (deployment).
    steps:
        Local steps to take; None = no limit (a deployment stops on a signal).
    lr_schedule:
        Optional ``step -> mu``; eta * mu is kept constant by the algorithm.
    linger:
        After the last step, keep ticking without local steps: receive, and send on the edges'
        schedule (message step counters keep advancing), for algorithms whose receive never
        touches the model (ECL). A straggler then converges onto its neighbours' consensus
        instead of finishing alone. The caller decides when to stop ticking.
    """

    def __init__(
        self,
        context: SiteContext,
        algorithm: Algorithm,
        objective: LocalObjective,
        transport: Transport,
        schedule: ExchangeSchedule,
        rules: SiteRules,
        clock: Clock,
        steps: int | None = None,
        lr_schedule: Callable[[int], float] | None = None,
        linger: bool = True,
    ) -> None:
        self.context = context
        self.site = context.site
        self.neighbours = context.neighbours
        self.algorithm = algorithm
        self.objective = objective
        self.transport = transport
        self.schedule = schedule
        self.rules = rules
        self.clock = clock
        self.steps = steps
        self.lr_schedule = lr_schedule
        self.linger = linger
        self.serving_ticks = 0
        self.lr = context.lr
        self.state: Any = algorithm.init(context)
        self.book = PeerBook(
            self.site,
            self.neighbours,
            rules,
            context.w0,
            clock(),
            payload_spec=lambda kind: algorithm.payload_spec(kind, context.w0),
        )
        self.step = 0
        self.losses: list[float] = []
        self.events: list[Event] = []
        self.nonfinite_steps = 0  # rolled back, in total
        self.blocked_sends = 0  # outgoing payloads refused because they were not finite
        self.isolated = False
        self._bad_in_a_row = 0
        self._seq = {j: 0 for j in self.neighbours}

    # ---- what the outside reads -------------------------------------------------------------
    @property
    def params(self) -> torch.Tensor:
        return self.algorithm.params(self.state)

    @property
    def done(self) -> bool:
        """All steps taken and not waiting for anything (FedAvg: the last global model)."""
        return (
            self.steps is not None and self.step >= self.steps and self.algorithm.ready(self.state)
        )

    def active_neighbours(self) -> list[str]:
        return [j for j, p in self.book.peers.items() if p.active]

    def finalize(self) -> torch.Tensor:
        return self.algorithm.finalize(self.state)

    @property
    def lingering(self) -> bool:
        """All steps taken, and still exchanging (model unchanged) by the linger rule."""
        return self.done and self.linger and self.algorithm.lingers and bool(self.neighbours)

    def linger_over(self) -> bool:
        """THE linger/stop rule of both runners: a site that took all its steps keeps exchanging
        (model unchanged) until every neighbour has taken all its steps too - it heard a message
        stamped at step ``steps`` or later from it - or went inactive. Before that, a neighbour
        still stepping may need its duals; after it, no model can change through this site
        (receiving never touches a model). A deployment adds wall-clock bounds around it
        (``deploy.linger_grace_s`` / ``linger_max_s``)."""
        return not self.lingering or self.book.all_finished(self.steps)

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything the loop needs to continue: algorithm state (tensors ``state.*``),
        counters, per-edge sequence numbers and receive marks, the losses so far."""
        tensors, state_meta = self.algorithm.state_dict(self.state)
        meta = {
            "step": self.step,
            "serving_ticks": self.serving_ticks,
            "lr": self.lr,
            "nonfinite_steps": self.nonfinite_steps,
            "seq": dict(self._seq),
            "peers": self.book.state_dict(),
            "state": state_meta,
            "losses": list(self.losses),
        }
        return {f"state.{k}": v for k, v in tensors.items()}, meta

    def load_state_dict(
        self,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any],
        *,
        seq_floor: int = 0,
    ) -> None:
        """Continue from :meth:`state_dict` (the node is fresh from the same assembly).

        ``seq_floor``: outgoing sequence numbers continue above it, so that the neighbours'
        replay rule never takes a restarted process's messages for old ones.
        """
        state_tensors = {k.removeprefix("state."): v for k, v in tensors.items()}
        self.state = self.algorithm.load_state_dict(self.state, state_tensors, meta["state"])
        self.state = self.algorithm.restarted(self.state)
        self.step = int(meta["step"])
        self.serving_ticks = int(meta["serving_ticks"])
        self.lr = float(meta["lr"])
        self.nonfinite_steps = int(meta["nonfinite_steps"])
        self.losses = [float(x) for x in meta["losses"]]
        self._seq = {j: max(int(meta["seq"].get(j, 0)), seq_floor) for j in self._seq}
        for j in self.book.load_state_dict(meta["peers"], self.clock()):
            self.state = self.algorithm.set_edge_active(self.state, j, False)

    # ---- the loop body ----------------------------------------------------------------------
    def tick(self) -> TickResult:
        """One pass of the loop: receive, liveness, one local step, send."""
        now = self.clock()

        # ---- 1. receive: apply what arrived, by the rules ----
        for msg in self.book.canonical(self.transport.poll()):
            self._receive(msg, now)

        # ---- 2. liveness: edges silent for longer than D go inactive ----
        for j in self.book.went_silent(now):
            self.state = self.algorithm.set_edge_active(self.state, j, False)
            self.events.append(Event(now, self.site, "edge_inactive", j))
            log.info(
                "%s: edge to %s inactive (silent > %s)", self.site, j, self.rules.inactive_after
            )
        self._update_isolation(now)

        # ---- 3. one local step (or, once done, a serving tick without one) ----
        if self.steps is not None and self.step >= self.steps:
            if not (self.linger and self.algorithm.lingers and self.algorithm.ready(self.state)):
                return TickResult.IDLE
            self.serving_ticks += 1
        elif not self.algorithm.ready(self.state):
            return TickResult.IDLE
        elif not self._local_step(now):
            return TickResult.ROLLED_BACK

        # ---- 4. send: per-edge payloads whose exchange is due at this step ----
        clock_step = self.step + self.serving_ticks
        for j in self.schedule.due(clock_step):
            self._send(j, clock_step)
        return TickResult.SERVING if self.serving_ticks else TickResult.STEPPED

    # ---- phases -----------------------------------------------------------------------------
    def _receive(self, msg: Message, now: float) -> None:
        verdict = self.book.admit(msg, self.step, now)
        if verdict is Verdict.DUPLICATE or verdict is Verdict.REJECTED:
            return
        peer = self.book.peers[msg.sender]
        if not peer.active:
            peer.active = True
            self.state = self.algorithm.set_edge_active(self.state, msg.sender, True)
            self.events.append(Event(now, self.site, "edge_active", msg.sender))
            log.info("%s: edge to %s active again", self.site, msg.sender)
        if verdict is Verdict.APPLY and msg.kind is not MessageKind.HEARTBEAT:
            self.state = self.algorithm.receive(self.state, msg)
            for j, out in self.algorithm.take_replies(self.state):
                self._emit(j, out, self.step + self.serving_ticks)

    def _update_isolation(self, now: float) -> None:
        isolated = bool(self.neighbours) and not any(p.active for p in self.book.peers.values())
        if isolated != self.isolated:
            self.isolated = isolated
            kind = "isolated" if isolated else "reconnected"
            self.events.append(Event(now, self.site, kind))
            if isolated:
                log.warning("%s: all neighbours silent; training on alone (isolated)", self.site)

    def _local_step(self, now: float) -> bool:
        if self.lr_schedule is not None:
            lr = float(self.lr_schedule(self.step))
            if lr != self.lr:
                self.lr = lr
                self.state = self.algorithm.set_step_size(self.state, lr)
        loss, grad = self.objective.loss_and_grad(self.algorithm.params(self.state))
        if not (_finite(loss) and is_finite_tensor(grad)):
            # roll back: nothing of this step is applied or sent
            self.nonfinite_steps += 1
            self._bad_in_a_row += 1
            self.events.append(Event(now, self.site, "nonfinite_step", detail=str(self.step)))
            if self._bad_in_a_row >= self.rules.max_nonfinite_steps:
                raise SiteFailure(
                    f"site {self.site}: {self._bad_in_a_row} consecutive non-finite "
                    f"losses/gradients at local step {self.step}; this site stops"
                )
            return False
        self._bad_in_a_row = 0
        self.state = self.algorithm.local_step(self.state, loss, grad)
        self.step += 1
        self.losses.append(float(loss))
        return True

    def _send(self, j: str, clock_step: int) -> None:
        for out in self.algorithm.outgoing(self.state, j):
            self._emit(j, out, clock_step)

    def _emit(self, j: str, out: Outgoing, clock_step: int) -> None:
        if not is_finite_tensor(out.payload):
            self.blocked_sends += 1
            return
        self._seq[j] += 1
        self.transport.send(Message(self.site, j, out.kind, clock_step, self._seq[j], out.payload))


def _finite(x: float) -> bool:
    return math.isfinite(x)


class ServerNode:
    """The FedAvg/FedProx server's loop: collect, aggregate when every active site sent, reply."""

    def __init__(
        self,
        name: str,
        server: FedAvgServer,
        state: ServerState,
        sites: Sequence[str],
        transport: Transport,
        rules: SiteRules,
        clock: Clock,
    ) -> None:
        self.site = name
        self.server = server
        self.state = state
        self.sites = tuple(sites)
        self.transport = transport
        self.clock = clock
        self.book = PeerBook(name, self.sites, rules, state.w, clock(), staleness=False)
        self.events: list[Event] = []
        self._seq = {s: 0 for s in self.sites}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The global model (``state.w``), the round count and the per-site marks."""
        meta = {
            "rounds": self.state.rounds,
            "pending_step": self.state.pending_step,
            "seq": dict(self._seq),
            "peers": {
                s: {"last_seq": p.last_seq, "active": p.active} for s, p in self.book.peers.items()
            },
        }
        return {"state.w": self.state.w}, meta

    def load_state_dict(
        self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, seq_floor: int = 0
    ) -> None:
        """Continue from :meth:`state_dict` (see :meth:`SiteNode.load_state_dict`)."""
        self.state.w.copy_(tensors["state.w"])
        self.state.rounds = int(meta["rounds"])
        self.state.pending_step = int(meta["pending_step"])
        self._seq = {s: max(int(meta["seq"].get(s, 0)), seq_floor) for s in self._seq}
        for s, p in self.book.peers.items():
            if s in meta["peers"]:
                p.last_seq = int(meta["peers"][s]["last_seq"])

    def tick(self) -> bool:
        """Returns True when a round was aggregated and sent."""
        now = self.clock()
        # ---- 1. receive ----
        for msg in self.book.canonical(self.transport.poll()):
            verdict = self.book.admit(msg, 0, now)
            if verdict is Verdict.APPLY or verdict is Verdict.STALE:
                peer = self.book.peers[msg.sender]
                if not peer.active:
                    peer.active = True
                    self.events.append(Event(now, self.site, "edge_active", msg.sender))
                if verdict is Verdict.APPLY:
                    self.state = self.server.receive(self.state, msg)
        # ---- 2. liveness ----
        for s in self.book.went_silent(now):
            self.events.append(Event(now, self.site, "edge_inactive", s))
        # ---- 3. aggregate once every active site has reported ----
        expected = [s for s, p in self.book.peers.items() if p.active]
        if not self.server.ready(self.state, expected):
            return False
        step = self.state.pending_step
        self.state = self.server.aggregate(self.state)
        # ---- 4. send the global model to every site ----
        payload = self.server.outgoing(self.state)  # one copy, shared read-only by all messages
        for s in self.sites:
            self._seq[s] += 1
            self.transport.send(
                Message(self.site, s, MessageKind.MODEL, step, self._seq[s], payload)
            )
        return True


__all__ = [
    "Event",
    "ExchangeSchedule",
    "PeerBook",
    "ServerNode",
    "SiteFailure",
    "SiteNode",
    "SiteRules",
    "TickResult",
]
