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
  replaces an unsent older one, counted as ``dropped``), as on gRPC: both are
  :class:`~hospitalnet.transport.edges.EdgeTransport`. Requests are fire-and-forget
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

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from hospitalnet.messages import Message, MessageKind
from hospitalnet.transport.edge_status import Edge, TransportLimits
from hospitalnet.transport.edges import EdgeTransport, PostFailed
from hospitalnet.transport.grpc_wire import PayloadSizes, Rejected, same_header
from hospitalnet.transport.proto import hospitalnet_pb2 as pb

log = logging.getLogger(__name__)

TOPIC = "hospitalnet.message"  # the aux topic of site-to-site messages
FRAMES = "frames"  # the Shareable key holding the list of serialised envelopes

#: posts ``frames`` to the named NVFlare site without waiting; raises when it cannot
Post = Callable[[str, list[bytes]], None]


class AuxTransport(EdgeTransport):
    """One site's end of its edges over NVFlare aux messages (see the module docstring)."""

    posts_are_answered = False  # fire-and-forget: only what is heard from a neighbour counts

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
        super().__init__(site, tuple(neighbours), model_fingerprint, numel, limits)
        self._post_frames = post
        for nbr in self.neighbours:
            self._add_edge(Edge(nbr))
        self._start_edges(thread_prefix="hn-aux-")

    def _post(self, edge: Edge, envs: list[pb.Envelope], *, heartbeat: bool) -> None:
        try:
            self._post_frames(edge.neighbour, [e.SerializeToString() for e in envs])
        except Exception as err:  # NVFlare raised: count it, back off, keep the message queued
            log.debug("%s: posting to %s failed: %s", self.site, edge.neighbour, type(err).__name__)
            raise PostFailed(type(err).__name__) from err

    # ---- receiving --------------------------------------------------------------------------

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
        return self._admit(peer, env, message)

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
        expected = self._check_first(first, peer)
        if first.schema.chunk_index != 0 or first.schema.chunk_count != len(envs):
            raise Rejected("chunking")
        if not all(same_header(first, e, i) for i, e in enumerate(envs)):
            raise Rejected("chunking")
        message = self._unpack(peer, first, b"".join(e.payload for e in envs), expected)
        return first, None if message.kind is MessageKind.HEARTBEAT else message


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
