"""The site loop's transport over NVIDIA FLARE aux messages (``pip install "hospitalnet[nvflare]"``).

What the site loop sees is the :class:`~hospitalnet.transport.base.Transport` contract, as with
gRPC: ``send`` queues and returns at once, ``poll`` returns what arrived. Underneath:

- **Wire.** A message is the gRPC transport's chunk envelopes (:mod:`hospitalnet.transport.
  grpc_wire`), each serialised to protobuf bytes; one NVFlare aux request (topic
  :data:`TOPIC`) carries the list of them under the key ``frames``. Only ``bytes`` cross NVFlare:
  its FOBS serialiser is never asked to decode an object of ours, and nothing is unpickled.
  (Checked with nvflare 2.9.0: a numpy payload sent without waiting for a reply fails on the
  receiver with a FOBS protocol error; bytes arrive.)
- **Checks** before anything reaches the site: the same as gRPC's and counted under the same
  reasons (:func:`hospitalnet.transport.grpc_wire.check_header`, ``chunking``, ``shape``,
  ``digest``, ``non_finite``, ``norm``), plus ``size`` (more frames or bytes than the model can
  need) and ``identity`` (NVFlare gave no sender name). The sender's identity is the one NVFlare
  puts into the request's peer context, declared by the sending job process; in a provisioned or
  POC deployment each client authenticated to the NVFlare server with its provisioned
  certificate (mutual TLS), and the server relays the request, but the name itself is not taken
  from a certificate as on gRPC. The envelope's ``sender`` must name the same site.
- **Replays.** As gRPC: per sender the newest ``(sender_incarnation, seq)`` delivered; anything
  not newer is counted as ``duplicates`` and dropped.
- **Sending.** One thread per edge and an outbox of at most one message per kind (a newer one
  replaces an unsent older one, counted as ``dropped``). Requests are fire-and-forget
  (``timeout=0``): checked with nvflare 2.9.0, ``multicast_aux_requests`` with a non-zero timeout
  raises a TypeError about ``abort_signal``, and a reply would cost a round trip through the
  NVFlare server per message. So the sender learns nothing about delivery.
- **Liveness.** An idle edge sends a heartbeat envelope every ``heartbeat_interval_s``; a
  neighbour is ``active`` while it was heard within ``suspect_after_s``, ``suspect`` after that
  and ``inactive`` after ``inactive_after_s`` of silence (NVFlare itself declares a client dead
  only after 60-600 s, and never tells the other clients). ``neighbour_states()`` has the
  gRPC transport's shape, so :mod:`hospitalnet.deploy.liveness` works unchanged on top.

The NVFlare side is :class:`AuxLink`: it posts frames with the engine of an NVFlare executor or
controller and hands received frames to :meth:`AuxTransport.deliver`. The transport itself does
not import NVFlare, so its checks are tested without it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from hospitalnet.messages import Message, MessageKind
from hospitalnet.transport.base import EdgeStats, Transport
from hospitalnet.transport.grpc import (
    GrpcEdgeStats,
    NeighbourStatus,
    PeerState,
    TransportLimits,
    max_state,
)
from hospitalnet.transport.grpc_wire import (
    DTYPES,
    PB_TO_KIND,
    PayloadSizes,
    Rejected,
    check_header,
    decode_payload,
    envelopes,
    heartbeat_envelope,
    kind_sizes,
    payload_bytes,
    same_header,
    size_of,
)
from hospitalnet.transport.proto import hospitalnet_pb2 as pb

log = logging.getLogger(__name__)

TOPIC = "hospitalnet.message"  # the aux topic of site-to-site messages
FRAMES = "frames"  # the Shareable key holding the list of serialised envelopes

#: posts ``frames`` to the named NVFlare site without waiting; raises when it cannot
Post = Callable[[str, list[bytes]], None]


@dataclass
class _Edge:
    neighbour: str
    cond: threading.Condition = field(default_factory=threading.Condition)
    outbox: OrderedDict[MessageKind, tuple[Message, bytes]] = field(default_factory=OrderedDict)
    status: NeighbourStatus = field(default_factory=NeighbourStatus)
    started: float = 0.0  # monotonic
    heard_at: float | None = None  # monotonic time of the last valid envelope from it
    last_send: float = 0.0
    retry_at: float = 0.0
    in_flight: bool = False
    thread: threading.Thread | None = None


def _inc(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


class AuxTransport(Transport):
    """One site's end of its edges over NVFlare aux messages (see the module docstring)."""

    def __init__(
        self,
        site: str,
        neighbours: tuple[str, ...] | list[str],
        model_fingerprint: str,
        numel: PayloadSizes,
        post: Post,
        limits: TransportLimits | None = None,
    ) -> None:
        if site in neighbours:
            raise ValueError(f"site {site!r} lists itself as a neighbour")
        self.sizes = kind_sizes(numel)  # raises on a size <= 0
        self.site = site
        self.neighbours = tuple(neighbours)
        self.model_fingerprint = model_fingerprint
        self.numel = max(self.sizes.values())  # the largest payload a message can carry
        self.limits = limits or TransportLimits()
        self.incarnation = time.time_ns()
        self._post = post
        self._lock = threading.Lock()  # inbox, stats, replay marks, events
        self._inbox: deque[Message] = deque()
        self._stats: dict[tuple[str, str], GrpcEdgeStats] = {}
        self._last_mark: dict[str, tuple[int, int]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._events: list[tuple[float, str, str, str]] = []
        self._closing = threading.Event()
        now = time.monotonic()
        self._edges = {n: _Edge(n, started=now) for n in self.neighbours}
        for edge in self._edges.values():
            edge.status.since = time.time()
            edge.thread = threading.Thread(
                target=self._run_edge, args=(edge,), name=f"hn-aux-{site}->{edge.neighbour}"
            )
            edge.thread.daemon = True
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
        with edge.cond:
            replaced = edge.outbox.pop(message.kind, None)
            edge.outbox[message.kind] = (message, data)
            edge.cond.notify()
        if replaced is not None or self._closing.is_set():
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
        """Each neighbour's liveness (a snapshot); ``last_ok`` is when it was last heard, since
        a fire-and-forget request has no answer."""
        out = {}
        for nbr, edge in self._edges.items():
            with edge.cond:
                self._refresh(edge, time.monotonic())
                out[nbr] = copy.copy(edge.status)
        return out

    def neighbour_events(self) -> list[tuple[float, str, str, str]]:
        with self._lock:
            return list(self._events)

    def flush(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every queued message was handed to NVFlare;
        edges to inactive neighbours are not waited for."""
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
        if self._closing.is_set():
            return
        self._closing.set()
        for edge in self._edges.values():
            with edge.cond:
                edge.cond.notify_all()
        deadline = time.monotonic() + self.limits.close_timeout_s
        for edge in self._edges.values():
            if edge.thread is not None:
                edge.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # ---- sending ----------------------------------------------------------------------------
    def _run_edge(self, edge: _Edge) -> None:
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
                    elif now >= edge.last_send + interval:
                        break  # idle for an interval: heartbeat
                    else:
                        edge.cond.wait(timeout=edge.last_send + interval - now)
            if item is not None:
                message, data = item
                frames = [
                    e.SerializeToString()
                    for e in envelopes(
                        message,
                        data,
                        sender=self.site,
                        incarnation=self.incarnation,
                        fingerprint=self.model_fingerprint,
                        chunk_bytes=self.limits.chunk_bytes,
                    )
                ]
            else:
                frames = [
                    heartbeat_envelope(
                        self.site,
                        edge.neighbour,
                        incarnation=self.incarnation,
                        fingerprint=self.model_fingerprint,
                    ).SerializeToString()
                ]
            self._post_frames(edge, frames, item)

    def _post_frames(
        self, edge: _Edge, frames: list[bytes], item: tuple[Message, bytes] | None
    ) -> None:
        nbytes = sum(len(f) for f in frames)
        try:
            self._post(edge.neighbour, frames)
            failed = None
        except Exception as err:  # NVFlare raised: count it, back off, keep the message queued
            failed = type(err).__name__
            log.debug("%s: posting to %s failed: %s", self.site, edge.neighbour, failed)
        now = time.monotonic()
        with self._lock:
            st = self._edge_stats(self.site, edge.neighbour)
            if failed is not None:
                _inc(st.failures, failed)
            elif item is not None:
                st.messages_sent += 1
                st.bytes_sent += nbytes
            else:
                st.heartbeats_sent += 1
                st.heartbeat_bytes += nbytes
        with edge.cond:
            edge.last_send = now
            if failed is not None:
                edge.retry_at = now + self.limits.retry_interval_s
                edge.status.last_error = failed
                if item is not None and item[0].kind not in edge.outbox:
                    edge.outbox[item[0].kind] = item
                    edge.outbox.move_to_end(item[0].kind, last=False)
            edge.in_flight = False
            self._refresh(edge, now)
            edge.cond.notify_all()

    # ---- liveness ---------------------------------------------------------------------------
    def _refresh(self, edge: _Edge, now: float) -> None:
        """Time-driven transitions (``now`` is monotonic; caller holds ``edge.cond``)."""
        silent = now - (edge.heard_at if edge.heard_at is not None else edge.started)
        if silent >= self.limits.inactive_after_s:
            self._set_state(edge, PeerState.INACTIVE)
        elif silent >= self.limits.suspect_after_s:
            self._set_state(edge, max_state(edge.status.state, PeerState.SUSPECT))
        elif edge.heard_at is not None:
            self._set_state(edge, PeerState.ACTIVE)

    def _set_state(self, edge: _Edge, state: PeerState) -> None:
        old = edge.status.state
        if state is old:
            return
        now = time.time()
        edge.status.state, edge.status.since = state, now
        log.info("%s: neighbour %s %s -> %s", self.site, edge.neighbour, old.value, state.value)
        with self._lock:
            self._events.append((now, edge.neighbour, old.value, state.value))

    def _heard(self, peer: str, env: pb.Envelope) -> None:
        edge = self._edges.get(peer)
        if edge is None:
            return
        with edge.cond:
            edge.heard_at = time.monotonic()
            edge.status.last_heard = edge.status.last_ok = time.time()
            edge.status.toolkit_version = env.toolkit_version[:64]
            self._refresh(edge, edge.heard_at)

    # ---- receiving --------------------------------------------------------------------------
    def _edge_stats(self, sender: str, receiver: str) -> GrpcEdgeStats:
        """Caller holds ``self._lock``."""
        return self._stats.setdefault((sender, receiver), GrpcEdgeStats())

    def _reject(self, peer: str, reason: str) -> str:
        with self._lock:
            _inc(self._edge_stats(peer, self.site).rejected, reason)
            first = (peer, reason) not in self._warned
            self._warned.add((peer, reason))
        (log.warning if first else log.debug)(
            "%s: rejected a message from %s: %s", self.site, peer, reason
        )
        return reason

    def deliver(self, peer: str | None, frames: Any) -> str:
        """Take one received aux request (``frames`` as it came); returns ``""`` when the message
        was accepted, else the reason it was refused (also counted)."""
        if not peer or not isinstance(peer, str):
            return self._reject("?", "identity")
        if self._closing.is_set():
            return "closing"
        try:
            env, message = self._receive(peer, frames)
        except Rejected as r:
            return self._reject(peer, r.reason)
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

    def _receive(self, peer: str, frames: Any) -> tuple[pb.Envelope, Message | None]:
        """The checked message (None for a heartbeat); :class:`Rejected` otherwise."""
        if not isinstance(frames, list) or not frames:
            raise Rejected("malformed")
        if not all(isinstance(f, bytes) for f in frames):
            raise Rejected("malformed")
        with self._lock:
            self._edge_stats(peer, self.site).bytes_received += sum(len(f) for f in frames)
        # the most a whole model can need: float32 numel, plus one header per chunk
        most = self.numel * 4
        max_frames = max(1, -(-most // self.limits.chunk_bytes))
        if len(frames) > max_frames or any(len(f) > self.limits.max_message_bytes for f in frames):
            raise Rejected("size")
        try:
            envs = [pb.Envelope.FromString(f) for f in frames]
        except DecodeError:
            raise Rejected("malformed") from None
        first = envs[0]
        check_header(
            first,
            peer,
            site=self.site,
            neighbours=self.neighbours,
            fingerprint=self.model_fingerprint,
            numel=size_of(self.sizes, first.kind),
        )
        kind = PB_TO_KIND[first.kind]
        expected = (
            0
            if kind is MessageKind.HEARTBEAT
            else size_of(self.sizes, first.kind) * DTYPES[first.schema.dtype][0].itemsize
        )
        if first.schema.chunk_index != 0 or first.schema.chunk_count != len(envs):
            raise Rejected("chunking")
        if not all(same_header(first, e, i) for i, e in enumerate(envs)):
            raise Rejected("chunking")
        data = b"".join(e.payload for e in envs)
        if len(data) != expected:
            raise Rejected("shape")
        if hashlib.sha256(data).digest() != first.payload_sha256:
            raise Rejected("digest")
        if kind is MessageKind.HEARTBEAT:
            return first, None
        payload = decode_payload(data, first.schema.dtype, self.limits.max_norm)
        return first, Message(peer, self.site, kind, first.sender_step, first.seq, payload)


def multicast(engine: Any, topic: str, targets: list[str], request: Any) -> None:
    """Send ``request`` to the named NVFlare sites without waiting for a reply.

    Checked with nvflare 2.9.0: ``send_aux_request(..., timeout=0)`` goes over NVFlare's
    streaming layer, and in the simulator a client's job cell has no stream callback for the aux
    channel (the receiver logs "No callback is registered for aux_communication/..." and drops
    it); ``multicast_aux_requests(..., timeout=0)`` goes through the core cell and arrives, in the
    simulator and in POC mode. A non-zero timeout raises a TypeError about ``abort_signal``.
    """
    engine.multicast_aux_requests(
        topic=topic,
        target_requests={t: request for t in targets},
        timeout=0.0,
        fl_ctx=engine.new_context(),
    )


class AuxLink:
    """The NVFlare half: posts a transport's frames through an NVFlare engine and hands the
    frames of received aux requests to it. ``engine`` is the executor's or controller's
    ``fl_ctx.get_engine()``; NVFlare is imported only here."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.transport: AuxTransport | None = None
        #: NVFlare identity -> our site name: the NVFlare server's name (``simulator_server`` in
        #: the simulator, the provisioned name otherwise) is ``server`` to the site loop
        self.aliases: dict[str, str] = {}
        self._early: deque[tuple[str | None, list[bytes]]] = deque(maxlen=256)
        self._lock = threading.Lock()

    def post(self, target: str, frames: list[bytes]) -> None:
        from nvflare.apis.shareable import Shareable

        request = Shareable()
        request[FRAMES] = frames
        multicast(self.engine, TOPIC, [target], request)

    def attach(self, transport: AuxTransport) -> None:
        """Route received requests to ``transport``; hand it those that came before."""
        with self._lock:
            self.transport = transport
            early = list(self._early)
            self._early.clear()
        for peer, frames in early:  # (the aliases are known by now)
            transport.deliver(self.aliases.get(peer, peer) if peer else peer, frames)

    def handle(self, topic: str, request: Any, fl_ctx: Any) -> Any:
        """The aux message handler (register it for :data:`TOPIC`)."""
        from nvflare.apis.fl_constant import ReservedKey, ReturnCode
        from nvflare.apis.shareable import make_reply

        peer = request.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default=None)
        peer = self.aliases.get(peer, peer) if isinstance(peer, str) else None
        frames = request.get(FRAMES)
        with self._lock:
            transport = self.transport
            if transport is None:  # a neighbour started first: keep it for attach()
                self._early.append((peer, frames))
                return make_reply(ReturnCode.OK)
        transport.deliver(peer, frames)
        return make_reply(ReturnCode.OK)


__all__ = ["FRAMES", "TOPIC", "AuxLink", "AuxTransport", "Post", "multicast"]
