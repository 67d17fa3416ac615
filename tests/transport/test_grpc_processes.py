"""Two sites in two OS processes: a killed peer goes inactive, a restarted one is reached again."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from grpc_helpers import FINGERPRINT, free_port, wait_until

from hospitalnet.messages import Message, MessageKind
from hospitalnet.transport.grpc import GrpcTransport, PeerState, TransportLimits

ECHO = Path(__file__).with_name("echo_peer.py")
N = 10_000
LIMITS = TransportLimits(
    heartbeat_interval_s=0.2,
    heartbeat_timeout_s=0.5,
    retry_interval_s=0.2,
    suspect_after_s=1.0,
    inactive_after_s=2.0,
    call_timeout_s=3.0,
    reconnect_backoff_max_s=0.3,
)


def start_echo(port_b: int, port_a: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ECHO),
            "b",
            str(port_b),
            "a",
            f"127.0.0.1:{port_a}",
            str(folder),
            str(N),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def echo_round(a: GrpcTransport, seq: int, timeout: float = 20) -> list[Message]:
    x = torch.full((N,), float(seq))
    a.send(Message("a", "b", MessageKind.DUAL, seq, seq, x))
    got: list[Message] = []
    wait_until(lambda: got.extend(a.poll()) or got, timeout)
    return got


@pytest.mark.network
@pytest.mark.timeout(120)
def test_killed_peer_process_goes_inactive_and_is_reached_again_after_restart(net_pki):
    port_a, port_b = free_port(), free_port()
    a = GrpcTransport(
        "a",
        f"127.0.0.1:{port_a}",
        {"b": f"127.0.0.1:{port_b}"},
        net_pki.creds("a"),
        FINGERPRINT,
        N,
        LIMITS,
    )
    procs = []
    try:
        procs.append(start_echo(port_b, port_a, net_pki.main))
        got = echo_round(a, 1)
        assert [m.seq for m in got] == [1] and torch.equal(got[0].payload, torch.full((N,), 1.0))

        procs[0].send_signal(signal.SIGKILL)  # no goodbye, no flush
        procs[0].wait(timeout=10)
        assert wait_until(lambda: a.neighbour_states()["b"].state is PeerState.INACTIVE, 15)

        procs.append(start_echo(port_b, port_a, net_pki.main))  # restarted, same address
        assert wait_until(lambda: a.neighbour_states()["b"].state is PeerState.ACTIVE, 15)
        got = echo_round(a, 2)
        assert [m.seq for m in got] == [2]  # the new incarnation's seq 2 is taken
        events = [(old, new) for _, nbr, old, new in a.neighbour_events() if nbr == "b"]
        assert ("suspect", "inactive") in events and events[-1] == ("inactive", "active")
    finally:
        a.close()
        for p in procs:
            stop(p)
