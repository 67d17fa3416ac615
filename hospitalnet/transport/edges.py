"""The per-edge machinery the real transports share (gRPC with mutual TLS, NVFlare aux messages).

:class:`EdgeTransport` keeps, for each neighbour, one :class:`Edge`: an outbox of at most one
message per kind (a newer one replaces an unsent older one, counted as ``dropped``), one thread
that posts what is queued and heartbeats when the edge is idle, backing off ``retry_interval_s``
after a failed post, and the neighbour's liveness (``active`` / ``suspect`` / ``inactive``).
A received message, once the subclass's checks passed, goes through one replay check per sender
(the newest ``(sender_incarnation, seq)`` delivered; anything not newer is counted as
``duplicates``) into a bounded inbox that ``poll()`` empties.

A subclass adds only what is its own: :meth:`EdgeTransport._post` (how envelopes reach a peer),
the receiving end (which checks frames and hands the message to :meth:`EdgeTransport._admit`),
and its set-up and tear-down. ``posts_are_answered`` says what proves a neighbour alive.

Locks: ``_lock`` guards the inbox, stats, replay marks and events; ``edge.cond`` guards one
edge's outbox and liveness. ``_lock`` may be taken while holding ``edge.cond``, never the reverse.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from abc import abstractmethod
from collections import deque

from hospitalnet.messages import Message
from hospitalnet.transport.base import EdgeStats, Transport
from hospitalnet.transport.edge_status import (
    Edge,
    GrpcEdgeStats,
    NeighbourStatus,
    PeerState,
    TransportLimits,
    max_state,
)
from hospitalnet.transport.grpc_wire import (
    PayloadSizes,
    check_header,
    envelopes,
    heartbeat_envelope,
    kind_sizes,
    payload_bytes,
    payload_size,
    size_of,
    unpack,
)
from hospitalnet.transport.proto import hospitalnet_pb2 as pb


class PostFailed(Exception):
    """A post did not reach the peer; ``name`` is what ``failures`` counts it under."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _inc(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


class EdgeTransport(Transport):
    """One site's end of its edges; subclasses say how envelopes travel (module docstring)."""

    #: True: a post returns the peer's answer, so an answered one proves the neighbour alive and
    #: a failed one makes it suspect (gRPC). False: posts are fire-and-forget, and only an
    #: envelope heard from the neighbour says it is alive (NVFlare).
    posts_are_answered: bool = True

    def __init__(
        self,
        site: str,
        neighbours: tuple[str, ...] | dict[str, str],
        model_fingerprint: str,
        numel: PayloadSizes,
        limits: TransportLimits | None,
    ) -> None:
        self.sizes = kind_sizes(numel)  # raises on a size <= 0
        self.site = site
        self.neighbours = neighbours
        self.model_fingerprint = model_fingerprint
        self.numel = max(self.sizes.values())  # the largest payload a message can carry
        self.limits = limits or TransportLimits()
        self.incarnation = time.time_ns()
        self._log = logging.getLogger(type(self).__module__)  # records under the transport's name
        self._lock = threading.Lock()  # inbox, stats, replay marks, events
        self._inbox: deque[Message] = deque()
        self._stats: dict[tuple[str, str], GrpcEdgeStats] = {}
        self._last_mark: dict[str, tuple[int, int]] = {}  # sender -> (incarnation, seq) delivered
        self._warned: set[tuple[str, str]] = set()
        self._events: list[tuple[float, str, str, str]] = []  # (time, neighbour, old, new)
        self._closing = threading.Event()
        self._edges: dict[str, Edge] = {}

    def _add_edge(self, edge: Edge) -> None:
        edge.started = time.monotonic()
        edge.status.since = time.time()
        self._edges[edge.neighbour] = edge

    def _start_edges(self, thread_prefix: str) -> None:
        for edge in self._edges.values():
            edge.thread = threading.Thread(
                target=self._run_edge,
                args=(edge,),
                name=f"{thread_prefix}{self.site}->{edge.neighbour}",
                daemon=True,
            )
            edge.thread.start()

    # ---- the Transport contract -------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Queue ``message`` for its neighbour; never blocks (the payload bytes are copied)."""
        if message.sender != self.site:
            raise ValueError(f"message sender {message.sender!r} is not this site {self.site!r}")
        edge = self._edges.get(message.receiver)
        if edge is None:
            raise ValueError(f"{message.receiver!r} is not a neighbour of {self.site!r}")
        if not (0 <= message.step < 2**63 and 1 <= message.seq < 2**63):
            raise ValueError(f"step {message.step} / seq {message.seq} out of range")
        data = payload_bytes(message, self.sizes.get(message.kind, 0))
        if self._closing.is_set():  # no thread will post it any more
            with self._lock:
                self._edge_stats(self.site, message.receiver).dropped += 1
            return
        with edge.cond:
            replaced = edge.outbox.pop(message.kind, None)
            edge.outbox[message.kind] = (message, data)
            edge.cond.notify()
        if replaced is not None:
            with self._lock:
                self._edge_stats(self.site, message.receiver).dropped += 1

    def poll(self) -> list[Message]:
        with self._lock:
            out = list(self._inbox)
            self._inbox.clear()
        return out

    def stats(self) -> dict[tuple[str, str], EdgeStats]:
        with self._lock:
            return {k: copy.deepcopy(v) for k, v in self._stats.items()}

    def neighbour_states(self) -> dict[str, NeighbourStatus]:
        """Each neighbour's liveness (a snapshot), refreshed for the time now."""
        out = {}
        for nbr, edge in self._edges.items():
            with edge.cond:
                self._refresh(edge, time.monotonic())
                out[nbr] = copy.copy(edge.status)
        return out

    def neighbour_events(self) -> list[tuple[float, str, str, str]]:
        """State transitions so far: (time, neighbour, old state, new state)."""
        with self._lock:
            return list(self._events)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message has been posted or given up on, at most
        ``timeout_s``; edges to inactive neighbours are not waited for. True when all left."""
        deadline = time.monotonic() + timeout_s
        for edge in self._edges.values():
            with edge.cond:
                while (edge.outbox or edge.in_flight) and not self._closing.is_set():
                    now = time.monotonic()
                    self._refresh(edge, now)
                    if edge.status.state is PeerState.INACTIVE or now >= deadline:
                        break
                    edge.cond.wait(timeout=min(0.05, deadline - now))
        return all(
            not (e.outbox or e.in_flight) or e.status.state is PeerState.INACTIVE
            for e in self._edges.values()
        )

    def close(self) -> None:
        """Stop the edge threads and the receiving end; every wait is bounded."""
        if self._closing.is_set():
            return
        self._closing.set()
        for edge in self._edges.values():
            with edge.cond:
                edge.cond.notify_all()
            self._abort_post(edge)
        deadline = time.monotonic() + self.limits.close_timeout_s
        for edge in self._edges.values():
            if edge.thread is not None:
                edge.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._stop_receiving()

    def _abort_post(self, edge: Edge) -> None:
        """Cut a post in flight on ``edge`` so that its thread sees close() at once."""

    def _stop_receiving(self) -> None:
        """Stop taking requests from peers (after the edge threads ended)."""

    # ---- sending ----------------------------------------------------------------------------

    @abstractmethod
    def _post(self, edge: Edge, envs: list[pb.Envelope], *, heartbeat: bool) -> pb.Ack | None:
        """Hand one message's envelopes (or one heartbeat) to ``edge.neighbour``. Returns the
        peer's answer (None where posts get none); raises :class:`PostFailed` when they did
        not leave. Any other exception is a bug: logged, and the edge backs off."""

    def _run_edge(self, edge: Edge) -> None:
        """The one thread of an outgoing edge: post queued messages, heartbeat when idle.

        After a failed post nothing is tried on this edge for ``retry_interval_s`` (no busy
        loop against a dead peer); the failed message stays queued unless a newer one replaced it.
        """
        interval = self.limits.heartbeat_interval_s
        while True:
            item = None
            with edge.cond:
                while True:
                    if self._closing.is_set():
                        return
                    now = time.monotonic()
                    if now < edge.retry_at:
                        edge.cond.wait(timeout=edge.retry_at - now)
                    elif edge.outbox:
                        _, item = edge.outbox.popitem(last=False)
                        edge.in_flight = True
                        break
                    elif now >= edge.last_attempt + interval:
                        break  # idle for an interval: heartbeat
                    else:
                        edge.cond.wait(timeout=edge.last_attempt + interval - now)
            try:
                self._post_counted(edge, item)
            except Exception:  # a bug must not silently end the edge: log it, back off, go on
                self._log.exception("%s: edge to %s failed unexpectedly", self.site, edge.neighbour)
                with edge.cond:
                    edge.last_attempt = time.monotonic()
                    edge.retry_at = edge.last_attempt + self.limits.retry_interval_s
            with edge.cond:
                edge.in_flight = False
                self._refresh(edge, time.monotonic())
                edge.cond.notify_all()  # flush() may be waiting for this edge

    def _post_counted(self, edge: Edge, item: tuple[Message, bytes] | None) -> None:
        """Post ``item`` (a queued message and its payload bytes; None: a heartbeat), count it
        and note what the outcome says about the neighbour."""
        if item is None:
            envs = [
                heartbeat_envelope(
                    self.site,
                    edge.neighbour,
                    incarnation=self.incarnation,
                    fingerprint=self.model_fingerprint,
                )
            ]
        else:
            envs = envelopes(
                *item,
                sender=self.site,
                incarnation=self.incarnation,
                fingerprint=self.model_fingerprint,
                chunk_bytes=self.limits.chunk_bytes,
            )
        nbytes = sum(e.ByteSize() for e in envs)
        try:
            ack = self._post(edge, envs, heartbeat=item is None)
        except PostFailed as failed:
            self._post_failed(edge, failed.name, retry=item)
            return
        refused = None if ack is None or ack.accepted else ack.reason  # the peer's reason
        with self._lock:
            st = self._edge_stats(self.site, edge.neighbour)
            if item is None:
                st.heartbeats_sent += 1
                st.heartbeat_bytes += nbytes
            else:
                st.messages_sent += 1
                st.bytes_sent += nbytes
            if refused is not None:
                _inc(st.peer_rejected, refused or "unknown")
        self._post_ok(edge, "" if refused is None else f"rejected by peer: {refused}")

    def _post_ok(self, edge: Edge, note: str) -> None:
        now = time.monotonic()
        with edge.cond:
            edge.last_attempt = now
            edge.retry_at = 0.0
            if self.posts_are_answered:  # the peer answered: alive, whatever it said
                edge.status.consecutive_failures = 0
                edge.status.last_error = note
                self._mark_alive(edge, now, time.time())

    def _post_failed(self, edge: Edge, name: str, *, retry: tuple[Message, bytes] | None) -> None:
        """Count the failure, back off, and re-queue the message unless a newer one replaced it.
        Re-sending is safe: the receiver drops a copy it already took (same incarnation, seq)."""
        if self._closing.is_set():
            return  # close() cut it (gRPC closes the channel), and no thread will retry
        now = time.monotonic()
        with self._lock:
            _inc(self._edge_stats(self.site, edge.neighbour).failures, name)
        with edge.cond:
            if retry is not None and retry[0].kind not in edge.outbox:
                edge.outbox[retry[0].kind] = retry
                edge.outbox.move_to_end(retry[0].kind, last=False)
            edge.last_attempt = now
            edge.retry_at = now + self.limits.retry_interval_s
            edge.status.last_error = name
            if self.posts_are_answered:  # an unanswered call makes the peer suspect at once
                edge.status.consecutive_failures += 1
                silent = now - (edge.alive_at if edge.alive_at is not None else edge.started)
                worse = PeerState.INACTIVE if silent >= self.limits.inactive_after_s else None
                self._set_state(edge, worse or max_state(edge.status.state, PeerState.SUSPECT))

    # ---- liveness ---------------------------------------------------------------------------

    def _mark_alive(self, edge: Edge, now: float, wall: float) -> None:
        """A sign of life at ``now`` (monotonic) / ``wall`` (caller holds ``edge.cond``)."""
        edge.alive_at = now
        edge.status.last_ok = wall
        self._set_state(edge, PeerState.ACTIVE)

    def _refresh(self, edge: Edge, now: float) -> None:
        """Time-driven transitions (``now`` is monotonic; caller holds ``edge.cond``)."""
        silent = now - (edge.alive_at if edge.alive_at is not None else edge.started)
        if silent >= self.limits.inactive_after_s:
            self._set_state(edge, PeerState.INACTIVE)
        elif silent >= self.limits.suspect_after_s:
            self._set_state(edge, max_state(edge.status.state, PeerState.SUSPECT))

    def _set_state(self, edge: Edge, state: PeerState) -> None:
        """Caller holds ``edge.cond``."""
        old = edge.status.state
        if state is old:
            return
        now = time.time()
        edge.status.state = state
        edge.status.since = now
        self._log.info(
            "%s: neighbour %s %s -> %s", self.site, edge.neighbour, old.value, state.value
        )
        with self._lock:
            self._events.append((now, edge.neighbour, old.value, state.value))

    def _heard(self, peer: str, env: pb.Envelope) -> None:
        """A valid envelope came from ``peer``."""
        edge = self._edges.get(peer)
        if edge is None:
            return
        with edge.cond:
            wall = time.time()
            edge.status.last_heard = wall
            edge.status.toolkit_version = env.toolkit_version[:64]
            if not self.posts_are_answered:  # fire-and-forget: hearing is the only sign of life
                self._mark_alive(edge, time.monotonic(), wall)

    # ---- receiving --------------------------------------------------------------------------

    def _edge_stats(self, sender: str, receiver: str) -> GrpcEdgeStats:
        """Caller holds ``self._lock``."""
        return self._stats.setdefault((sender, receiver), GrpcEdgeStats())

    def _reject(self, peer: str, reason: str) -> str:
        """Count a refused message (warn once per peer and reason); returns ``reason``."""
        with self._lock:
            _inc(self._edge_stats(peer, self.site).rejected, reason)
            first = (peer, reason) not in self._warned
            self._warned.add((peer, reason))
        (self._log.warning if first else self._log.debug)(
            "%s: rejected a message from %s: %s", self.site, peer, reason
        )
        return reason

    def _check_first(self, env: pb.Envelope, peer: str) -> int:
        """Check a message's first envelope (:func:`check_header`); the payload bytes its kind
        and dtype call for (0 for a heartbeat)."""
        numel = size_of(self.sizes, env.kind)
        check_header(
            env,
            peer,
            site=self.site,
            neighbours=self.neighbours,
            fingerprint=self.model_fingerprint,
            numel=numel,
        )
        return payload_size(env, self.sizes)

    def _unpack(self, peer: str, first: pb.Envelope, data: bytes, expected: int) -> Message:
        return unpack(
            first, data, expected, sender=peer, receiver=self.site, max_norm=self.limits.max_norm
        )

    def _admit(self, peer: str, env: pb.Envelope, message: Message | None) -> str:
        """Take a message that passed every check (None: a heartbeat, only heard): ``""`` when
        queued for poll(), ``"duplicate"`` when not newer than the last one taken from ``peer``."""
        self._heard(peer, env)
        if message is None:
            return ""
        mark = (env.sender_incarnation, env.seq)
        with self._lock:
            st = self._edge_stats(peer, self.site)
            last = self._last_mark.get(peer)
            if last is not None and mark <= last:
                st.duplicates += 1
                return "duplicate"
            self._last_mark[peer] = mark
            if len(self._inbox) >= self.limits.inbox_size:
                old = self._inbox.popleft()
                self._edge_stats(old.sender, self.site).dropped += 1
            self._inbox.append(message)
            st.messages_delivered += 1
        return ""
