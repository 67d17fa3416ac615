"""The receive side of every edge: which messages a node applies, and who it still hears.

:class:`PeerBook` is shared by the site loop (:class:`hospitalnet.site.SiteNode`) and the FedAvg
server loop (:class:`hospitalnet.site.ServerNode`). Per edge (counted in that edge's
:class:`~hospitalnet.transport.base.EdgeStats`):

- wrong receiver, unknown sender, missing payload, wrong shape/dtype, non-finite values:
  *rejected* (counted per reason), state untouched;
- a sequence number not newer than the last one taken on that edge: *duplicate*, ignored;
- staleness: a message that arrives more than S of the receiver's steps later than the
  previous one on that edge did, relative to the sender's own progress
  (``age = (own_step - own_step_then) - (msg.step - msg_step_then)``), is *stale* and dropped.
  This catches messages held back in a queue, on a slow link or in a frozen process, without
  needing synchronised clocks, and it tolerates steady speed differences between sites (their
  drift per message is K * |1 - speed ratio| steps, far below S);
- anything in order from a neighbour (applied or stale) proves it alive; a peer not heard for
  longer than D goes inactive (:meth:`PeerBook.went_silent`). With ``SiteRules.inactive_cap``
  set, D is per edge: learned from the gaps between that neighbour's messages
  (:class:`hospitalnet.deadline.GapDeadline`, TCP's RTO rule) between the fixed D and the cap.

Messages that arrive in the same poll are applied in a canonical order (neighbour order, then
sequence number), so delivery order inside one poll never changes the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from hospitalnet.algorithms.base import is_finite_tensor
from hospitalnet.deadline import GapDeadline
from hospitalnet.messages import Message, MessageKind
from hospitalnet.transport.base import EdgeStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteRules:
    """The timing and robustness rules of the site loop.

    Attributes
    ----------
    staleness_bound:
        S, in the receiver's steps (see the module docstring for how a message's age is measured).
    inactive_after:
        D, in clock units: an edge with nothing heard for longer goes inactive.
    max_nonfinite_steps:
        Consecutive rolled-back steps after which the site stops with :class:`SiteFailure`.
    inactive_cap:
        None: D is ``inactive_after`` on every edge. Else each edge's D is learned from the gaps
        between its messages, at least ``inactive_after`` and at most this.
    """

    staleness_bound: int = 64
    inactive_after: float = 200.0
    max_nonfinite_steps: int = 10
    inactive_cap: float | None = None

    def edge_deadline(self) -> GapDeadline | None:
        if self.inactive_cap is None:
            return None
        return GapDeadline(
            floor=self.inactive_after, cap=max(self.inactive_cap, self.inactive_after)
        )


class Verdict(Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REJECTED = "rejected"


@dataclass
class _Peer:
    stats: EdgeStats
    last_seq: int = 0
    own_step_then: int = 0
    msg_step_then: int = 0
    last_heard: float = 0.0
    active: bool = True
    deadline: GapDeadline | None = None  # per-edge D (SiteRules.inactive_cap), else fixed


class PeerBook:
    """Receive-side rules and counters of one node (shared by :class:`SiteNode` and
    :class:`ServerNode`)."""

    def __init__(
        self,
        owner: str,
        peers: Sequence[str],
        rules: SiteRules,
        like: torch.Tensor,
        now: float,
        staleness: bool = True,
        payload_spec: Callable[[MessageKind], tuple[int, torch.dtype]] | None = None,
    ) -> None:
        self.owner = owner
        self.rules = rules
        self.staleness = staleness
        self.order = {p: k for k, p in enumerate(peers)}
        self.peers = {
            p: _Peer(stats=EdgeStats(), last_heard=now, deadline=rules.edge_deadline())
            for p in peers
        }
        self.strangers: dict[str, EdgeStats] = {}
        self._numel = like.numel()
        self._dtype = like.dtype
        # what each payload kind must look like (compressed duals differ from the model)
        self._spec = payload_spec or (lambda kind: (self._numel, self._dtype))

    def canonical(self, messages: Iterable[Message]) -> list[Message]:
        """Neighbour order, then sequence number; unknown senders last (they are rejected)."""
        far = len(self.order)
        return sorted(messages, key=lambda m: (self.order.get(m.sender, far), m.sender, m.seq))

    def _reject(self, msg: Message, reason: str) -> Verdict:
        peer = self.peers.get(msg.sender)
        stats = peer.stats if peer else self.strangers.setdefault(msg.sender, EdgeStats())
        stats.rejected[reason] = stats.rejected.get(reason, 0) + 1
        log.debug("%s: rejected a message from %s (%s)", self.owner, msg.sender, reason)
        return Verdict.REJECTED

    def admit(self, msg: Message, own_step: int, now: float) -> Verdict:
        peer = self.peers.get(msg.sender)
        if peer is None:
            return self._reject(msg, "unknown_sender")
        if msg.receiver != self.owner:
            return self._reject(msg, "wrong_receiver")
        if msg.seq <= peer.last_seq:
            peer.stats.duplicates += 1
            return Verdict.DUPLICATE
        if msg.kind is not MessageKind.HEARTBEAT:
            p = msg.payload
            if p is None:
                return self._reject(msg, "missing_payload")
            numel, dtype = self._spec(msg.kind)
            if p.dim() != 1 or p.numel() != numel:
                return self._reject(msg, "shape")
            if p.dtype != dtype:
                return self._reject(msg, "dtype")
            if not is_finite_tensor(p):
                return self._reject(msg, "non_finite")
        age = (own_step - peer.own_step_then) - (msg.step - peer.msg_step_then)
        peer.last_seq = msg.seq
        peer.own_step_then, peer.msg_step_then = own_step, msg.step
        if peer.deadline is not None and peer.active:
            # a gap that ended an inactive spell measures the outage, not the edge's pace
            peer.deadline.observe(now - peer.last_heard)
        peer.last_heard = now
        if self.staleness and age > self.rules.staleness_bound:
            peer.stats.stale += 1
            return Verdict.STALE
        return Verdict.APPLY

    def went_silent(self, now: float) -> list[str]:
        """Active peers not heard for longer than D (they are marked inactive here)."""
        out = []
        for name, peer in self.peers.items():
            if peer.active and now - peer.last_heard > self.silence_allowed(name):
                peer.active = False
                out.append(name)
        return out

    def silence_allowed(self, peer: str) -> float:
        """D of the edge from ``peer``: learned (within floor and cap) or the fixed value."""
        deadline = self.peers[peer].deadline
        return self.rules.inactive_after if deadline is None else deadline.deadline

    def stats(self) -> dict[tuple[str, str], EdgeStats]:
        out = {(p, self.owner): peer.stats for p, peer in self.peers.items()}
        out.update({(s, self.owner): st for s, st in self.strangers.items()})
        return out

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Each peer's receive marks (replay and staleness) and liveness, for checkpoints."""
        return {
            name: {
                "last_seq": p.last_seq,
                "own_step_then": p.own_step_then,
                "msg_step_then": p.msg_step_then,
                "active": p.active,
                **({"deadline": p.deadline.state_dict()} if p.deadline is not None else {}),
            }
            for name, p in self.peers.items()
        }

    def load_state_dict(self, saved: dict[str, dict[str, Any]], now: float) -> list[str]:
        """Restore the marks of :meth:`state_dict`; silence is measured from ``now``. Returns the
        peers that were inactive (the caller tells its algorithm)."""
        inactive = []
        for name, p in self.peers.items():
            marks = saved.get(name)
            if marks is None:
                continue
            p.last_seq = int(marks["last_seq"])
            p.own_step_then = int(marks.get("own_step_then", 0))
            p.msg_step_then = int(marks.get("msg_step_then", 0))
            p.last_heard = now
            if p.deadline is not None and isinstance(marks.get("deadline"), dict):
                p.deadline.load_state_dict(marks["deadline"])
            if not marks.get("active", True):
                p.active = False
                inactive.append(name)
        return inactive

    def restart_silence(self, now: float) -> None:
        """Measure every peer's silence from ``now`` (the start of training)."""
        for p in self.peers.values():
            p.last_heard = now

    def all_finished(self, steps: int | None) -> bool:
        """Every peer is inactive or has sent a message stamped at step ``steps`` or later."""
        return steps is not None and all(
            (not p.active) or p.msg_step_then >= steps for p in self.peers.values()
        )


__all__ = ["PeerBook", "SiteRules", "Verdict"]
