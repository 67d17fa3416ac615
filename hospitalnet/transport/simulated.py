"""The simulated network: seeded per-link latency, drops and injected faults, in virtual time.

Virtual time is measured in *nominal steps* (the compute time of one local step at speed 1).
The simulation (:mod:`hospitalnet.simulation`) sets the time at which the current tick polls
(``poll_time``) and at which its sends leave (``send_time``, the end of that step's compute).
A message sent at time t on link (s, r):

1. is lost if a network split separates s and r at t, or with the link's drop probability;
2. otherwise arrives at ``t + latency`` (uniform in ``NetworkConfig.latency_steps``) plus any
   injected extra delay / reordering jitter, unless r is killed at that moment (lost);
3. may be duplicated by an injected fault (the copy arrives with the original).

Every link has its own random stream (``seeding.numpy_rng(seed, "link", s, r)``) and every fault
its own, so injecting a fault on one link never changes what happens on another. Arrivals are
kept in a heap per receiver ordered by (arrival time, send order): deterministic.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hospitalnet.config import NetworkConfig
from hospitalnet.messages import Message
from hospitalnet.seeding import numpy_rng
from hospitalnet.transport.base import EdgeStats, Transport


@dataclass(frozen=True)
class LinkFault:
    """Extra misbehaviour of the directed link ``sender -> receiver`` during [start, end)."""

    sender: str
    receiver: str
    start: float = 0.0
    end: float = math.inf
    extra_delay: float = 0.0  # added to every message's latency
    reorder_jitter: float = 0.0  # extra uniform(0, jitter) delay: later messages may overtake
    duplicate_prob: float = 0.0  # probability that a message arrives twice
    drop_prob: float | None = None  # replaces NetworkConfig.drop_prob on this link


@dataclass(frozen=True)
class SiteOutage:
    """A site stops ticking during [start, end) (end = inf: for good).

    ``kill``: what was waiting in its inbox and what arrives meanwhile is lost; on restart it
    resumes from its state (as from a checkpoint). ``freeze`` (SIGSTOP): arrivals wait in the
    inbox and are applied when it resumes.
    """

    site: str
    start: float
    end: float = math.inf
    kind: Literal["kill", "freeze"] = "kill"


@dataclass(frozen=True)
class NetworkSplit:
    """A network fault: during [start, end) only sites in the same group can reach each other.

    (Not to be confused with the data split into sites, :mod:`hospitalnet.data.partition`.)"""

    groups: tuple[frozenset[str], ...]
    start: float = 0.0
    end: float = math.inf

    def separates(self, a: str, b: str, t: float) -> bool:
        if not self.start <= t < self.end:
            return False
        return not any(a in g and b in g for g in self.groups)


@dataclass(frozen=True)
class Faults:
    """Everything a test may inject into a simulated run."""

    outages: tuple[SiteOutage, ...] = ()
    splits: tuple[NetworkSplit, ...] = ()
    links: tuple[LinkFault, ...] = ()
    shuffle_delivery: bool = False  # hand each poll's messages over in a seeded random order

    def down(self, site: str, t: float, kind: str | None = None) -> SiteOutage | None:
        for o in self.outages:
            if o.site == site and o.start <= t < o.end and (kind is None or o.kind == kind):
                return o
        return None


NO_FAULTS = Faults()


@dataclass(order=True)
class _Arrival:
    time: float
    order: int
    message: Message = field(compare=False)


class SimulatedNetwork:
    """All links of one simulated run; hands out one :class:`SimulatedTransport` per node."""

    def __init__(
        self,
        nodes: Iterable[str],
        cfg: NetworkConfig,
        seed: int,
        faults: Faults = NO_FAULTS,
        on_arrival: Callable[[str, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.faults = faults
        self.on_arrival = on_arrival
        self.poll_time = 0.0
        self.send_time = 0.0
        self._lo, self._hi = float(cfg.latency_steps[0]), float(cfg.latency_steps[1])
        self._inbox: dict[str, list[_Arrival]] = {n: [] for n in nodes}
        self._order = 0
        self._stats: dict[tuple[str, str], EdgeStats] = {}
        self._rng: dict[tuple[str, ...], np.random.Generator] = {}
        self._links = {(f.sender, f.receiver): f for f in faults.links}

    def transport(self, node: str) -> SimulatedTransport:
        return SimulatedTransport(node, self)

    def _stream(self, *names: str) -> np.random.Generator:
        rng = self._rng.get(names)
        if rng is None:
            rng = self._rng[names] = numpy_rng(self.seed, "sim", *names)
        return rng

    def edge_stats(self, key: tuple[str, str]) -> EdgeStats:
        st = self._stats.get(key)
        if st is None:
            st = self._stats[key] = EdgeStats()
        return st

    # ---- moving messages --------------------------------------------------------------------
    def send(self, msg: Message) -> None:
        s, r, t = msg.sender, msg.receiver, self.send_time
        st = self.edge_stats((s, r))
        st.messages_sent += 1
        st.bytes_sent += msg.nbytes
        rng = self._stream("link", s, r)
        u, v = rng.random(2)  # always two draws: the stream does not depend on outcomes
        fault = self._links.get((s, r))
        if fault is not None and not fault.start <= t < fault.end:
            fault = None
        drop = self.cfg.drop_prob
        if fault is not None and fault.drop_prob is not None:
            drop = fault.drop_prob
        if u < drop or any(p.separates(s, r, t) for p in self.faults.splits):
            st.dropped += 1
            return
        arrival = t + self._lo + (self._hi - self._lo) * v
        copies = 1
        if fault is not None:
            frng = self._stream("fault", s, r)
            arrival += fault.extra_delay
            if fault.reorder_jitter > 0:
                arrival += fault.reorder_jitter * float(frng.random())
            if fault.duplicate_prob > 0 and float(frng.random()) < fault.duplicate_prob:
                copies = 2
        if r not in self._inbox or self.faults.down(r, arrival, "kill") is not None:
            st.dropped += 1
            return
        for _ in range(copies):
            self._order += 1
            heapq.heappush(self._inbox[r], _Arrival(arrival, self._order, msg))
        if self.on_arrival is not None:
            self.on_arrival(r, arrival)

    def poll(self, node: str) -> list[Message]:
        box = self._inbox[node]
        out: list[Message] = []
        while box and box[0].time <= self.poll_time:
            msg = heapq.heappop(box).message
            self.edge_stats((msg.sender, node)).messages_delivered += 1
            out.append(msg)
        if self.faults.shuffle_delivery and len(out) > 1:
            perm = self._stream("shuffle", node).permutation(len(out))
            out = [out[int(k)] for k in perm]
        return out

    def next_arrival(self, node: str) -> float | None:
        box = self._inbox[node]
        return box[0].time if box else None

    def clear_inbox(self, node: str) -> None:
        """A killed node loses what was waiting for it (counted as dropped)."""
        for a in self._inbox[node]:
            self.edge_stats((a.message.sender, node)).dropped += 1
        self._inbox[node].clear()

    def stats(self) -> dict[tuple[str, str], EdgeStats]:
        return dict(self._stats)


class SimulatedTransport(Transport):
    """One node's view of the simulated network (never blocks, never sleeps)."""

    def __init__(self, site: str, network: SimulatedNetwork) -> None:
        self.site = site
        self.network = network

    def send(self, message: Message) -> None:
        self.network.send(message)

    def poll(self) -> list[Message]:
        return self.network.poll(self.site)

    def stats(self) -> dict[tuple[str, str], EdgeStats]:
        return {k: v for k, v in self.network.stats().items() if self.site in k}
