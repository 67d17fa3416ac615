"""The interface a site's loop uses to talk to its neighbours.

Implementations: the simulated discrete-event network (``transport.simulated``) and gRPC with
mutual TLS (``transport.grpc``). Both are non-blocking: ``send`` queues into a bounded per-edge
outbox (a newer message replaces an unsent older one on the same edge), ``poll`` returns what has
arrived. Neither ever waits for a neighbour. The real transports (gRPC, NVFlare aux messages)
share their per-edge outboxes, threads and liveness: :mod:`hospitalnet.transport.edges`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from hospitalnet.messages import Message


@dataclass
class EdgeStats:
    """Counters for one direction of one edge (sender -> receiver)."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_delivered: int = 0
    dropped: int = 0  # lost on the link or replaced in the outbox
    stale: int = 0  # arrived older than the staleness bound
    duplicates: int = 0  # sequence number not newer than the last applied
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count


class Transport(ABC):
    site: str

    @abstractmethod
    def send(self, message: Message) -> None:
        """Queue ``message`` for delivery; never blocks."""

    @abstractmethod
    def poll(self) -> list[Message]:
        """Messages that have arrived for this site since the last poll, in arrival order."""

    @abstractmethod
    def stats(self) -> dict[tuple[str, str], EdgeStats]:
        """Per (sender, receiver) counters known to this transport."""

    def close(self) -> None:
        """Release sockets/threads (no-op for the simulation)."""
