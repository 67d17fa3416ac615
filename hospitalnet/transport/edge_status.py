"""What configures one site's real transport (gRPC or NVFlare) and what it reports per edge:
the limits and timings, each neighbour's liveness, the counters beyond :class:`EdgeStats`, and
the record of one edge (:class:`Edge`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from hospitalnet.messages import Message, MessageKind
from hospitalnet.transport.base import EdgeStats


@dataclass(frozen=True)
class TransportLimits:
    """Sizes, deadlines and liveness timings of one site's transport (gRPC; NVFlare uses the
    sizes, intervals and liveness timings)."""

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
    last_ok: float | None = None  # last call the neighbour answered (NVFlare: last heard)
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
    failures: dict[str, int] = field(default_factory=dict)  # gRPC status / error name -> count
    peer_rejected: dict[str, int] = field(default_factory=dict)  # reasons the peer gave -> count


@dataclass
class Edge:
    """Outgoing side of one edge: its outbox, thread and the neighbour's liveness."""

    neighbour: str
    cond: threading.Condition = field(default_factory=threading.Condition)
    outbox: OrderedDict[MessageKind, tuple[Message, bytes]] = field(default_factory=OrderedDict)
    status: NeighbourStatus = field(default_factory=NeighbourStatus)
    # Scheduling uses time.monotonic() (immune to clock changes); NeighbourStatus reports wall time.
    started: float = 0.0
    alive_at: float | None = None  # last sign of life (see edges.EdgeTransport.posts_are_answered)
    last_attempt: float = 0.0  # when the last post ended
    retry_at: float = 0.0  # after a failure: no post before this time
    in_flight: bool = False  # a message was taken from the outbox and its post has not ended
    thread: threading.Thread | None = None


_ORDER = {PeerState.ACTIVE: 0, PeerState.SUSPECT: 1, PeerState.INACTIVE: 2}


def max_state(a: PeerState, b: PeerState) -> PeerState:
    """The worse of two states."""
    return a if _ORDER[a] >= _ORDER[b] else b
