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

The wire format (envelopes, chunking, payload decoding) is :mod:`hospitalnet.transport.grpc_wire`;
the per-edge outboxes, threads, liveness, counters and replay marks are
:class:`~hospitalnet.transport.edges.EdgeTransport`. What is left here is gRPC's own: the server
and its checks, the channels, and posting a message as one ``Deliver`` or ``Heartbeat`` call.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import cast

import grpc
from google.protobuf.message import DecodeError

from hospitalnet.errors import NetworkError
from hospitalnet.messages import Message
from hospitalnet.pki import SITE_URI_PREFIX, TlsCredentials
from hospitalnet.transport.edge_status import (  # re-exported: callers import them from here
    Edge,
    GrpcEdgeStats,
    NeighbourStatus,
    PeerState,
    TransportLimits,
    max_state,
)
from hospitalnet.transport.edges import EdgeTransport, PostFailed
from hospitalnet.transport.grpc_wire import (
    PROTOCOL_VERSION,  # noqa: F401 (re-exported: imported from here by tests)
    SERVICE,
    PayloadSizes,
    Rejected,
    same_header,
)
from hospitalnet.transport.proto import hospitalnet_pb2 as pb
from hospitalnet.transport.proto import hospitalnet_pb2_grpc as pb_grpc

_ACK_LIMIT = 64 << 10  # acks are tiny; nothing larger is accepted back from a server


@dataclass(kw_only=True)
class _GrpcEdge(Edge):
    """An edge and the channel its calls go over."""

    address: str
    channel: grpc.Channel
    stub: pb_grpc.ExchangeStub


class GrpcTransport(EdgeTransport):
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
        super().__init__(site, dict(neighbours), model_fingerprint, numel, limits)
        for nbr, addr in neighbours.items():  # all edges exist before the server can call _heard()
            channel = self._open_channel(nbr, addr, credentials)
            stub = pb_grpc.ExchangeStub(channel)
            self._add_edge(_GrpcEdge(nbr, address=addr, channel=channel, stub=stub))
        try:
            self._server = self._start_server(listen_address, credentials)
        except NetworkError:
            for edge in self._edges.values():
                cast(_GrpcEdge, edge).channel.close()
            raise
        self._start_edges(thread_prefix="hn-")

    @property
    def address(self) -> str:
        """``host:port`` the server actually listens on (port 0 in the config -> a free port)."""
        return f"{self._host}:{self.port}"

    def __enter__(self) -> GrpcTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _abort_post(self, edge: Edge) -> None:
        cast(_GrpcEdge, edge).channel.close()  # cancels a call in flight

    def _stop_receiving(self) -> None:
        self._server.stop(grace=0.2).wait(timeout=self.limits.close_timeout_s)

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

    def _post(self, edge: Edge, envs: list[pb.Envelope], *, heartbeat: bool) -> pb.Ack:
        stub = cast(_GrpcEdge, edge).stub
        try:
            if heartbeat:
                return stub.Heartbeat(envs[0], timeout=self.limits.heartbeat_timeout_s)
            return stub.Deliver(iter(envs), timeout=self.limits.call_timeout_s)
        except (grpc.RpcError, ValueError) as err:  # ValueError: channel closed by close()
            code = err.code() if isinstance(err, grpc.Call) else None
            raise PostFailed(code.name if code is not None else type(err).__name__) from err

    # ---- receiving --------------------------------------------------------------------------

    def _refuse(self, peer: str, reason: str) -> pb.Ack:
        return pb.Ack(accepted=False, reason=self._reject(peer, reason))

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

    def _handle_heartbeat(self, request: bytes, context: grpc.ServicerContext) -> pb.Ack:
        peer = self._peer_site(context)
        if peer is None:
            return self._refuse("?", "identity")
        try:
            env = pb.Envelope.FromString(request)
        except DecodeError:
            return self._refuse(peer, "malformed")
        try:
            self._check_first(env, peer)
            if env.kind != pb.KIND_HEARTBEAT:
                raise Rejected("kind")
        except Rejected as r:
            return self._refuse(peer, r.reason)
        self._heard(peer, env)
        return pb.Ack(accepted=True)

    def _handle_deliver(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> pb.Ack:
        peer = self._peer_site(context)
        if peer is None:
            return self._refuse("?", "identity")
        remaining = context.time_remaining()
        if remaining is None or remaining > self.limits.max_call_s:
            return self._refuse(peer, "no_deadline")
        try:
            env, message = self._receive(peer, requests, context)
        except Rejected as r:
            return self._refuse(peer, r.reason)
        refused = self._admit(peer, env, message)  # "" or "duplicate" (not counted as rejected)
        return pb.Ack(accepted=not refused, reason=refused)

    def _receive(
        self, peer: str, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> tuple[pb.Envelope, Message]:
        """One message's stream of envelopes, checked as it arrives; :class:`Rejected` else."""
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
                    expected = self._check_first(env, peer)
                    count = env.schema.chunk_count
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
        return first, self._unpack(peer, first, b"".join(parts), expected)


__all__ = [
    "GrpcEdgeStats",
    "GrpcTransport",
    "NeighbourStatus",
    "PeerState",
    "TransportLimits",
    "max_state",
]
