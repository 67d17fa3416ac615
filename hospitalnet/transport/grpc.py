"""gRPC with mutual TLS between neighbouring sites (one process per hospital).

What the site loop sees is the :class:`~hospitalnet.transport.base.Transport` contract: ``send``
queues and returns at once, ``poll`` returns what arrived. Underneath:

- **Server.** ``grpc.server`` with a small thread pool and ``require_client_auth=True``; only a
  client whose certificate chains to the network CA completes the TLS handshake. Each message is
  one ``Deliver`` stream of chunk envelopes (``proto/hospitalnet.proto``). Requests arrive as raw
  bytes and are parsed here, so junk is counted instead of vanishing inside gRPC.
- **Checks before anything reaches the site**, in this order; each failure is counted in
  ``stats()[(sender, me)].rejected[reason]`` and answered with ``Ack(accepted=False, reason)``:
  ``identity`` (client certificate names no site), ``no_deadline`` (call without a bounded
  deadline), ``malformed`` (not an Envelope), ``protocol_version``, ``sender_mismatch`` (envelope
  sender is not the certificate's site), ``wrong_receiver``, ``not_neighbour``, ``fingerprint``,
  ``kind``, ``dtype``, ``shape`` (numel, or payload bytes that disagree with it), ``chunking``
  (chunk headers that disagree), ``incomplete_stream`` (the stream ended before the whole message:
  an oversized frame, which gRPC answers RESOURCE_EXHAUSTED, or a sender gone mid-message),
  ``digest``, ``non_finite``, ``norm``. Nothing is ever unpickled: a payload is raw little-endian
  floats decoded with ``numpy.frombuffer`` under the explicit schema.
- **Replays.** Per sender the transport keeps the newest ``(sender_incarnation, seq)`` it
  delivered and drops anything not newer (counted as ``duplicates``): exact replays and messages
  overtaken by a newer one never reach the site. ``sender_incarnation`` is the sender process's
  start time, so a restarted site (whose counters restart from its checkpoint) is accepted again.
  The site loop keeps its own per-edge ``seq`` and staleness rules on top (``hospitalnet.site``).
- **Client.** One thread and one channel per neighbour. The outbox of an edge holds at most one
  message per kind; a newer one replaces an unsent older one (counted as ``dropped``). Every call
  has a deadline, so a dead or stalled peer only delays its own edge. After a failed call
  (counted in ``failures[status]``) the edge waits ``retry_interval_s`` and tries the message
  again unless a newer one replaced it; a copy that did arrive is dropped by the replay check.
- **Liveness.** When an edge is idle the thread sends a ``Heartbeat`` every
  ``heartbeat_interval_s``. A neighbour is ``active`` after a successful call, ``suspect`` after a
  failed one or when nothing succeeded for ``suspect_after_s``, ``inactive`` when nothing succeeded
  for ``inactive_after_s``; a successful call makes it ``active`` again. ``neighbour_states()``
  exposes the state, its timestamps and the last error.
- **Sizes.** Payloads are cut into ``chunk_bytes`` chunks; both ends set explicit
  ``max_receive/send_message_length``. The client verifies the server certificate against the
  neighbour's *site id* (``ssl_target_name_override``), so only that site can answer.

The wire format (envelopes, chunking, payload decoding) is :mod:`hospitalnet.transport.grpc_wire`.
This module stays above 500 lines on purpose: the server half (checks, replay marks, inbox) and
the client half (per-edge threads, outboxes, liveness) of :class:`GrpcTransport` share one lock
and one set of counters per edge, and split over two modules that lock's invariants would be too.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from enum import Enum

import grpc
from google.protobuf.message import DecodeError

from hospitalnet.errors import NetworkError
from hospitalnet.messages import Message, MessageKind
from hospitalnet.pki import SITE_URI_PREFIX, TlsCredentials
from hospitalnet.transport.base import EdgeStats, Transport
from hospitalnet.transport.grpc_wire import (
    DTYPES,
    PB_TO_KIND,
    PROTOCOL_VERSION,  # noqa: F401 (re-exported: imported from here by tests)
    SERVICE,
    PayloadSizes,
    Rejected,
    check_header,
    decode_payload,
    heartbeat_envelope,
    kind_sizes,
    payload_bytes,
    same_header,
    size_of,
)
from hospitalnet.transport.grpc_wire import envelopes as wire_envelopes
from hospitalnet.transport.proto import hospitalnet_pb2 as pb
from hospitalnet.transport.proto import hospitalnet_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_ACK_LIMIT = 64 << 10  # acks are tiny; nothing larger is accepted back from a server


@dataclass(frozen=True)
class TransportLimits:
    """Sizes, deadlines and liveness timings of one site's gRPC transport."""

    chunk_bytes: int = 1 << 20  # payload bytes per envelope
    max_message_bytes: int = (1 << 20) + (64 << 10)  # gRPC max message length, both directions
    inbox_size: int = 1024  # received messages waiting for poll(); oldest dropped beyond
    call_timeout_s: float = 30.0  # deadline of one Deliver call (one whole message)
    heartbeat_interval_s: float = 2.0  # heartbeat an idle edge this often
    heartbeat_timeout_s: float = 2.0  # deadline of one Heartbeat call
    retry_interval_s: float = 1.0  # after a failed call, nothing is tried on that edge this long
    suspect_after_s: float = 6.0  # no successful call for this long -> suspect
    inactive_after_s: float = 30.0  # no successful call for this long -> inactive
    max_norm: float = 1e6  # an L2 norm above this is absurd for weights or duals
    max_call_s: float = 300.0  # the server refuses calls without a deadline or a longer one
    server_workers: int = 8  # server threads = concurrent calls served
    reconnect_backoff_max_s: float = 2.0  # how soon a restarted peer is dialled again
    close_timeout_s: float = 2.0  # bounded waits in close()

    def __post_init__(self) -> None:
        if self.chunk_bytes < 1024 or self.max_message_bytes < self.chunk_bytes + 4096:
            raise ValueError("need chunk_bytes >= 1024 and max_message_bytes >= chunk_bytes + 4096")
        if not 0 < self.max_norm <= 1e18:
            raise ValueError("need 0 < max_norm <= 1e18")
        if not (0 < self.suspect_after_s <= self.inactive_after_s):
            raise ValueError("need 0 < suspect_after_s <= inactive_after_s")


class PeerState(str, Enum):
    ACTIVE = "active"
    SUSPECT = "suspect"
    INACTIVE = "inactive"


@dataclass
class NeighbourStatus:
    """What this site knows about one neighbour (times are ``time.time()`` seconds)."""

    state: PeerState = PeerState.ACTIVE  # optimistic until the first call says otherwise
    since: float = 0.0  # when the state last changed
    last_ok: float | None = None  # last call the neighbour answered
    last_heard: float | None = None  # last valid envelope received from it
    toolkit_version: str = ""  # the version it reported in its last valid envelope
    consecutive_failures: int = 0
    last_error: str = ""


@dataclass
class GrpcEdgeStats(EdgeStats):
    """:class:`EdgeStats` plus what only a real network shows."""

    bytes_received: int = 0  # envelope bytes received on this edge (also rejected ones)
    heartbeats_sent: int = 0
    heartbeat_bytes: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # gRPC status of failed calls -> count
    peer_rejected: dict[str, int] = field(default_factory=dict)  # reasons the peer gave -> count


@dataclass
class _Edge:
    """Outgoing side of one edge: its channel, outbox, thread and liveness."""

    neighbour: str
    address: str
    channel: grpc.Channel
    stub: pb_grpc.ExchangeStub
    cond: threading.Condition = field(default_factory=threading.Condition)
    outbox: OrderedDict[MessageKind, tuple[Message, bytes]] = field(default_factory=OrderedDict)
    status: NeighbourStatus = field(default_factory=NeighbourStatus)
    # Scheduling uses time.monotonic() (immune to clock changes); NeighbourStatus reports wall time.
    started: float = 0.0
    ok_at: float | None = None  # last successful call
    last_attempt: float = 0.0  # when the last call finished
    retry_at: float = 0.0  # after a failure: no call before this time
    in_flight: bool = False  # a message was taken from the outbox and its call has not ended
    thread: threading.Thread | None = None


def _inc(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


class GrpcTransport(Transport):
    """One site's end of its edges, over gRPC with mutual TLS (see the module docstring)."""

    def __init__(
        self,
        site: str,
        listen_address: str,
        neighbours: dict[str, str],
        credentials: TlsCredentials,
        model_fingerprint: str,
        numel: PayloadSizes,
        limits: TransportLimits | None = None,
    ) -> None:
        if credentials.site != site:
            raise NetworkError(f"certificate is for site {credentials.site!r}, not {site!r}")
        if site in neighbours:
            raise NetworkError(f"site {site!r} lists itself as a neighbour")
        self.sizes = kind_sizes(numel)  # raises on a size <= 0
        self.site = site
        self.neighbours = dict(neighbours)
        self.model_fingerprint = model_fingerprint
        self.numel = max(self.sizes.values())  # the largest payload a message can carry
        self.limits = limits or TransportLimits()
        self.incarnation = time.time_ns()
        self._lock = threading.Lock()  # inbox, stats, replay marks
        self._inbox: deque[Message] = deque()
        self._stats: dict[tuple[str, str], GrpcEdgeStats] = {}
        self._last_mark: dict[str, tuple[int, int]] = {}  # sender -> (incarnation, seq) delivered
        self._warned: set[tuple[str, str]] = set()
        self._events: list[tuple[float, str, str, str]] = []  # (time, neighbour, old, new)
        self._closing = threading.Event()
        self._edges: dict[str, _Edge] = {}  # complete before the server can call _heard()
        for nbr, addr in self.neighbours.items():
            channel = self._open_channel(nbr, addr, credentials)
            edge = _Edge(nbr, addr, channel, pb_grpc.ExchangeStub(channel))
            edge.started = time.monotonic()
            edge.status.since = time.time()
            self._edges[nbr] = edge
        try:
            self._server = self._start_server(listen_address, credentials)
        except NetworkError:
            for edge in self._edges.values():
                edge.channel.close()
            raise
        for edge in self._edges.values():
            edge.thread = threading.Thread(
                target=self._run_edge,
                args=(edge,),
                name=f"hn-{site}->{edge.neighbour}",
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
        if self._closing.is_set():
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
        """Wait until every queued message has been delivered or given up on, at most
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

    @property
    def address(self) -> str:
        """``host:port`` the server actually listens on (port 0 in the config -> a free port)."""
        return f"{self._host}:{self.port}"

    def close(self) -> None:
        """Stop the edge threads and the server; every wait is bounded."""
        if self._closing.is_set():
            return
        self._closing.set()
        for edge in self._edges.values():
            with edge.cond:
                edge.cond.notify_all()
            edge.channel.close()  # cancels a call in flight, so the thread wakes at once
        deadline = time.monotonic() + self.limits.close_timeout_s
        for edge in self._edges.values():
            if edge.thread is not None:
                edge.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._server.stop(grace=0.2).wait(timeout=self.limits.close_timeout_s)

    def __enter__(self) -> GrpcTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- setup ------------------------------------------------------------------------------

    def _start_server(self, listen_address: str, creds: TlsCredentials) -> grpc.Server:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                # request_deserializer=None: the handler gets raw bytes and parses them itself.
                "Deliver": grpc.stream_unary_rpc_method_handler(
                    self._handle_deliver, response_serializer=pb.Ack.SerializeToString
                ),
                "Heartbeat": grpc.unary_unary_rpc_method_handler(
                    self._handle_heartbeat, response_serializer=pb.Ack.SerializeToString
                ),
            },
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.limits.server_workers, thread_name_prefix=f"hn-{self.site}-rx"
            ),
            handlers=[handler],
            options=[
                ("grpc.max_receive_message_length", self.limits.max_message_bytes),
                ("grpc.max_send_message_length", _ACK_LIMIT),
                ("grpc.so_reuseport", 0),  # never share a port with another process silently
            ],
            maximum_concurrent_rpcs=self.limits.server_workers,
        )
        server_creds = grpc.ssl_server_credentials(
            [(creds.key_pem, creds.cert_pem)],
            root_certificates=creds.ca_pem,
            require_client_auth=True,
        )
        host = listen_address.rsplit(":", 1)[0]
        try:
            port = server.add_secure_port(listen_address, server_creds)
        except RuntimeError as err:
            raise NetworkError(f"cannot listen on {listen_address} ({err})") from None
        if port == 0:
            raise NetworkError(f"cannot listen on {listen_address}")
        self._host, self.port = host, port
        server.start()
        return server

    def _open_channel(self, nbr: str, address: str, creds: TlsCredentials) -> grpc.Channel:
        backoff_ms = int(self.limits.reconnect_backoff_max_s * 1000)
        return grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(
                root_certificates=creds.ca_pem,
                private_key=creds.key_pem,
                certificate_chain=creds.cert_pem,
            ),
            options=[
                # Verify the server certificate names the neighbour's site, not the address.
                ("grpc.ssl_target_name_override", nbr),
                ("grpc.max_send_message_length", self.limits.max_message_bytes),
                ("grpc.max_receive_message_length", _ACK_LIMIT),
                ("grpc.initial_reconnect_backoff_ms", min(200, backoff_ms)),
                ("grpc.min_reconnect_backoff_ms", min(200, backoff_ms)),
                ("grpc.max_reconnect_backoff_ms", backoff_ms),
                ("grpc.enable_retries", 0),
                # Separate transports in one process (tests) must not share connections.
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )

    # ---- sending ----------------------------------------------------------------------------

    def _run_edge(self, edge: _Edge) -> None:
        """The one thread of an outgoing edge: deliver queued messages, heartbeat when idle.

        After a failed call nothing is tried on this edge for ``retry_interval_s`` (no busy
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
                if item is not None:
                    self._deliver(edge, *item)
                else:
                    self._heartbeat(edge)
            except Exception:  # a bug must not silently end the edge: log it, back off, go on
                log.exception("%s: edge to %s failed unexpectedly", self.site, edge.neighbour)
                with edge.cond:
                    edge.last_attempt = time.monotonic()
                    edge.retry_at = edge.last_attempt + self.limits.retry_interval_s
            with edge.cond:
                edge.in_flight = False
                self._refresh(edge, time.monotonic())
                edge.cond.notify_all()  # flush() may be waiting for this edge

    def _deliver(self, edge: _Edge, message: Message, data: bytes) -> None:
        envelopes = wire_envelopes(
            message,
            data,
            sender=self.site,
            incarnation=self.incarnation,
            fingerprint=self.model_fingerprint,
            chunk_bytes=self.limits.chunk_bytes,
        )
        nbytes = sum(e.ByteSize() for e in envelopes)
        try:
            ack = edge.stub.Deliver(iter(envelopes), timeout=self.limits.call_timeout_s)
        except (grpc.RpcError, ValueError) as err:  # ValueError: channel closed by close()
            self._call_failed(edge, err, retry=(message, data))
            return
        with self._lock:
            st = self._edge_stats(self.site, edge.neighbour)
            st.messages_sent += 1
            st.bytes_sent += nbytes
            if not ack.accepted:
                _inc(st.peer_rejected, ack.reason or "unknown")
        self._call_ok(edge, "" if ack.accepted else f"rejected by peer: {ack.reason}")

    def _heartbeat(self, edge: _Edge) -> None:
        env = heartbeat_envelope(
            self.site,
            edge.neighbour,
            incarnation=self.incarnation,
            fingerprint=self.model_fingerprint,
        )
        try:
            ack = edge.stub.Heartbeat(env, timeout=self.limits.heartbeat_timeout_s)
        except (grpc.RpcError, ValueError) as err:
            self._call_failed(edge, err, retry=None)
            return
        with self._lock:
            st = self._edge_stats(self.site, edge.neighbour)
            st.heartbeats_sent += 1
            st.heartbeat_bytes += env.ByteSize()
            if not ack.accepted:
                _inc(st.peer_rejected, ack.reason or "unknown")
        self._call_ok(edge, "" if ack.accepted else f"rejected by peer: {ack.reason}")

    def _call_ok(self, edge: _Edge, note: str) -> None:
        now = time.monotonic()
        with edge.cond:
            edge.last_attempt = edge.ok_at = now
            edge.retry_at = 0.0
            edge.status.last_ok = time.time()
            edge.status.consecutive_failures = 0
            edge.status.last_error = note
            self._set_state(edge, PeerState.ACTIVE)

    def _call_failed(
        self, edge: _Edge, err: Exception, *, retry: tuple[Message, bytes] | None
    ) -> None:
        """Count the failure, back off, and re-queue the message unless a newer one replaced it.
        Re-sending is safe: the receiver drops a copy it already took (same incarnation, seq)."""
        if self._closing.is_set():
            return
        code = err.code() if isinstance(err, grpc.Call) else None
        name = code.name if code is not None else type(err).__name__
        now = time.monotonic()
        with self._lock:
            _inc(self._edge_stats(self.site, edge.neighbour).failures, name)
        with edge.cond:
            if retry is not None and retry[0].kind not in edge.outbox:
                edge.outbox[retry[0].kind] = retry
                edge.outbox.move_to_end(retry[0].kind, last=False)
            edge.last_attempt = now
            edge.retry_at = now + self.limits.retry_interval_s
            edge.status.consecutive_failures += 1
            edge.status.last_error = name
            silent = now - (edge.ok_at or edge.started)
            worse = PeerState.INACTIVE if silent >= self.limits.inactive_after_s else None
            self._set_state(edge, worse or max_state(edge.status.state, PeerState.SUSPECT))

    def _refresh(self, edge: _Edge, now: float) -> None:
        """Time-driven transitions (``now`` is monotonic; caller holds ``edge.cond``)."""
        silent = now - (edge.ok_at or edge.started)
        if silent >= self.limits.inactive_after_s:
            self._set_state(edge, PeerState.INACTIVE)
        elif silent >= self.limits.suspect_after_s:
            self._set_state(edge, max_state(edge.status.state, PeerState.SUSPECT))

    def _set_state(self, edge: _Edge, state: PeerState) -> None:
        """Caller holds ``edge.cond``."""
        old = edge.status.state
        if state is old:
            return
        now = time.time()
        edge.status.state = state
        edge.status.since = now
        log.info("%s: neighbour %s %s -> %s", self.site, edge.neighbour, old.value, state.value)
        with self._lock:
            self._events.append((now, edge.neighbour, old.value, state.value))

    # ---- receiving --------------------------------------------------------------------------

    def _edge_stats(self, sender: str, receiver: str) -> GrpcEdgeStats:
        """Caller holds ``self._lock``."""
        return self._stats.setdefault((sender, receiver), GrpcEdgeStats())

    def _reject(self, peer: str, reason: str) -> pb.Ack:
        with self._lock:
            _inc(self._edge_stats(peer, self.site).rejected, reason)
            first = (peer, reason) not in self._warned
            self._warned.add((peer, reason))
        (log.warning if first else log.debug)(
            "%s: rejected a message from %s: %s", self.site, peer, reason
        )
        return pb.Ack(accepted=False, reason=reason)

    def _peer_site(self, context: grpc.ServicerContext) -> str | None:
        """The site named by the verified client certificate (URI SAN, CN must agree)."""
        auth = context.auth_context()
        uris = [
            u.decode("utf-8", "replace")
            for u in auth.get("peer_uri", [])
            if u.startswith(SITE_URI_PREFIX.encode())
        ]
        cns = [c.decode("utf-8", "replace") for c in auth.get("x509_common_name", [])]
        if len(uris) != 1:
            return None
        site = uris[0][len(SITE_URI_PREFIX) :]
        return site if cns == [site] else None

    def _check_header(self, env: pb.Envelope, peer: str) -> None:
        check_header(
            env,
            peer,
            site=self.site,
            neighbours=self.neighbours,
            fingerprint=self.model_fingerprint,
            numel=size_of(self.sizes, env.kind),
        )

    def _handle_heartbeat(self, request: bytes, context: grpc.ServicerContext) -> pb.Ack:
        peer = self._peer_site(context)
        if peer is None:
            return self._reject("?", "identity")
        try:
            env = pb.Envelope.FromString(request)
        except DecodeError:
            return self._reject(peer, "malformed")
        try:
            self._check_header(env, peer)
            if env.kind != pb.KIND_HEARTBEAT:
                raise Rejected("kind")
        except Rejected as r:
            return self._reject(peer, r.reason)
        self._heard(peer, env)
        return pb.Ack(accepted=True)

    def _heard(self, peer: str, env: pb.Envelope) -> None:
        edge = self._edges.get(peer)
        if edge is not None:
            with edge.cond:
                edge.status.last_heard = time.time()
                edge.status.toolkit_version = env.toolkit_version[:64]

    def _handle_deliver(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> pb.Ack:
        peer = self._peer_site(context)
        if peer is None:
            return self._reject("?", "identity")
        remaining = context.time_remaining()
        if remaining is None or remaining > self.limits.max_call_s:
            return self._reject(peer, "no_deadline")
        try:
            message = self._receive(peer, requests, context)
        except Rejected as r:
            return self._reject(peer, r.reason)
        return self._accept(peer, message)

    def _receive(
        self, peer: str, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> tuple[pb.Envelope, Message]:
        first: pb.Envelope | None = None
        parts: list[bytes] = []
        expected = 0
        received = 0
        try:
            for raw in requests:
                with self._lock:
                    self._edge_stats(peer, self.site).bytes_received += len(raw)
                try:
                    env = pb.Envelope.FromString(raw)
                except DecodeError:
                    raise Rejected("malformed") from None
                if first is None:
                    self._check_header(env, peer)
                    count = env.schema.chunk_count
                    if env.kind != pb.KIND_HEARTBEAT:
                        expected = size_of(self.sizes, env.kind)
                        expected *= DTYPES[env.schema.dtype][0].itemsize
                    if env.schema.chunk_index != 0 or not 1 <= count <= max(1, expected):
                        raise Rejected("chunking")
                    first = env
                elif not same_header(first, env, len(parts)):
                    raise Rejected("chunking")
                if len(parts) >= first.schema.chunk_count:
                    raise Rejected("chunking")
                received += len(env.payload)
                if received > expected:
                    raise Rejected("shape")
                parts.append(env.payload)
        except grpc.RpcError:
            raise Rejected("incomplete_stream") from None
        # The stream ended before a whole message arrived: the sender stopped (killed, cancelled)
        # or gRPC cut it (an oversized frame, answered RESOURCE_EXHAUSTED).
        if not context.is_active() or first is None or len(parts) != first.schema.chunk_count:
            raise Rejected("incomplete_stream")
        if received != expected:
            raise Rejected("shape")
        data = b"".join(parts)
        if hashlib.sha256(data).digest() != first.payload_sha256:
            raise Rejected("digest")
        kind = PB_TO_KIND[first.kind]
        payload = None
        if kind is not MessageKind.HEARTBEAT:
            payload = decode_payload(data, first.schema.dtype, self.limits.max_norm)
        return first, Message(peer, self.site, kind, first.sender_step, first.seq, payload)

    def _accept(self, peer: str, received: tuple[pb.Envelope, Message]) -> pb.Ack:
        env, message = received
        mark = (env.sender_incarnation, env.seq)
        self._heard(peer, env)
        with self._lock:
            st = self._edge_stats(peer, self.site)
            last = self._last_mark.get(peer)
            if last is not None and mark <= last:
                st.duplicates += 1
                return pb.Ack(accepted=False, reason="duplicate")
            self._last_mark[peer] = mark
            if len(self._inbox) >= self.limits.inbox_size:
                old = self._inbox.popleft()
                self._edge_stats(old.sender, self.site).dropped += 1
            self._inbox.append(message)
            st.messages_delivered += 1
        return pb.Ack(accepted=True)


_ORDER = {PeerState.ACTIVE: 0, PeerState.SUSPECT: 1, PeerState.INACTIVE: 2}


def max_state(a: PeerState, b: PeerState) -> PeerState:
    """The worse of two states."""
    return a if _ORDER[a] >= _ORDER[b] else b
