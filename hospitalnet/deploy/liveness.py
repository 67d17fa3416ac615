"""Liveness of a deployment: deadlines, heartbeats, the common start, restart-safe numbering.

Every wait here has a deadline (RELIABILITY.md). The site loop's own liveness rule (an edge
silent for longer than D goes inactive) is :class:`hospitalnet.peers.PeerBook`; this module holds
what only a real network needs around it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hospitalnet.config import ExperimentConfig
from hospitalnet.errors import ConfigError
from hospitalnet.messages import Message
from hospitalnet.peers import PeerBook
from hospitalnet.rundir import write_json
from hospitalnet.transport.base import EdgeStats, Transport
from hospitalnet.transport.grpc import TransportLimits

log = logging.getLogger(__name__)

#: A restarted process numbers its messages above ``incarnation << SEQ_EPOCH_BITS``, so that the
#: neighbours' replay rule (a ``seq`` not newer than the last one taken is a duplicate) never eats
#: the messages of a process that resumed from an older checkpoint.
SEQ_EPOCH_BITS = 40


def seq_floor(incarnation: int) -> int:
    """The lowest sequence number a process of this incarnation sends."""
    return int(incarnation) << SEQ_EPOCH_BITS


def transport_limits(cfg: ExperimentConfig) -> TransportLimits:
    """The gRPC transport's timings from the config's ``deploy`` section."""
    d = cfg.deploy
    return TransportLimits(
        heartbeat_interval_s=d.heartbeat_interval_s,
        heartbeat_timeout_s=min(d.call_timeout_s, 2 * d.heartbeat_interval_s),
        retry_interval_s=min(1.0, d.heartbeat_interval_s),
        suspect_after_s=min(3 * d.heartbeat_interval_s, d.inactive_after_s),
        inactive_after_s=d.inactive_after_s,
        call_timeout_s=d.call_timeout_s,
        reconnect_backoff_max_s=min(2.0, d.heartbeat_interval_s),
    )


class NoNetwork(Transport):
    """The transport of a site without neighbours (method ``local``)."""

    def __init__(self, site: str) -> None:
        self.site = site

    def send(self, message: Message) -> None:
        raise ValueError(f"{self.site} has no neighbours to send to")

    def poll(self) -> list[Message]:
        return []

    def stats(self) -> dict[tuple[str, str], EdgeStats]:
        return {}


def hear_heartbeats(book: PeerBook, transport: Transport, now: float) -> None:
    """Count a neighbour's latest authenticated heartbeat as hearing from it (server edges).

    On a FedAvg edge silence is part of the protocol: a site sends nothing while it waits for
    the global model, and the server nothing while it waits for the slowest site. Heartbeats,
    sent by the transport's own thread, then tell a live but waiting peer from a dead one. Peer
    to peer edges do not use this: there a neighbour whose transport still answers but whose
    messages stopped (a stalled trainer) must go inactive.
    """
    states = getattr(transport, "neighbour_states", None)  # gRPC, NVFlare: heartbeats
    if states is None:
        return
    wall = time.time()
    for name, status in states().items():
        peer = book.peers.get(name)
        if peer is not None and status.last_heard is not None:
            peer.last_heard = max(peer.last_heard, now - (wall - status.last_heard))


def wait_for_neighbours(
    site: str, transport: Transport, timeout_s: float, stop: threading.Event
) -> None:
    """Before step 1, wait (at most ``timeout_s``) until every neighbour has answered once."""
    neighbour_states = getattr(transport, "neighbour_states", None)  # gRPC, NVFlare
    if neighbour_states is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        states = neighbour_states()
        if all(s.last_ok is not None for s in states.values()):
            log.info("%s: all %d neighbours answered; starting", site, len(states))
            return
        stop.wait(0.1)
    log.warning("%s: starting without every neighbour (startup wait over)", site)


def wait_for_start(
    site: str,
    out: Path,
    cfg: ExperimentConfig,
    stop: threading.Event,
    *,
    start_at: float | None,
    start_file: Path | None,
) -> None:
    """Hold training until the agreed start time (``--start-at`` / ``--start-file``).

    Writes ``OUT/ready.json`` first (launchers wait for it). Why a common start: sites that
    start a second apart (process start-up on a loaded machine) run 20 steps out of phase for
    the whole run, and that offset, not the messages' timing, is most of the spread between two
    runs of one config (measured on the deploy tests' network: a 7-site mean AUROC SD of
    0.006-0.012 without; three runs within 0.0002 with a common start).
    """
    d = cfg.deploy
    write_json(out / "ready.json", {"site": site, "time": time.time()})
    if start_file is not None:
        deadline = time.monotonic() + d.startup_wait_s
        while not start_file.is_file():
            if stop.is_set() or time.monotonic() > deadline:
                log.warning("%s: no start signal within the startup wait; starting", site)
                return
            stop.wait(0.02)
        try:
            start_at = float(start_file.read_text().strip())
        except (OSError, ValueError):
            raise ConfigError(f"{start_file}: expected a start time in epoch seconds") from None
    if start_at is None:
        return
    delay = start_at - time.time()
    if delay > d.max_wall_s:
        raise ConfigError(
            f"--start-at: {start_at:.0f} is more than deploy.max_wall_s ({d.max_wall_s:.0f} s) away"
        )
    if delay > 0:
        log.info("%s: training starts in %.1f s (the agreed start time)", site, delay)
        stop.wait(delay)


__all__ = [
    "SEQ_EPOCH_BITS",
    "NoNetwork",
    "hear_heartbeats",
    "seq_floor",
    "transport_limits",
    "wait_for_neighbours",
    "wait_for_start",
]
