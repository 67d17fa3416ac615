"""Bytes on the wire and loopback latency of the gRPC + mutual TLS transport.

    python benchmarks/grpc_transport.py [--reps 20] [--out benchmarks/results/grpc_transport.json]

For payloads of 100k and 1M float32 it reports, per message:
- payload bytes, envelope bytes (what the transport counts in ``bytes_sent``: protobuf envelopes,
  one per 1 MiB chunk) and bytes on the wire (TLS records both ways, counted by a TCP proxy
  between the two sites, heartbeats switched off during the measurement);
- the ping-pong round trip: site a sends, site b polls and sends the payload back, a polls it
  (encode, TLS, checks, decode, both ways; the polling loops sleep 0.2 ms), and the same with
  payload-free messages (the fixed cost of a call).
Everything runs on 127.0.0.1 with a throw-away CA in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hospitalnet import pki  # noqa: E402
from hospitalnet.messages import Message, MessageKind  # noqa: E402
from hospitalnet.transport.grpc import GrpcTransport, TransportLimits  # noqa: E402


class CountingProxy:
    """Forwards 127.0.0.1:port -> upstream and counts the bytes in each direction."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.up = 0
        self.down = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for s in (client, server):  # no Nagle delay added by the proxy itself
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(1 << 16):
                with self.lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.up, self.down

    def close(self) -> None:
        self.listener.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(transport: GrpcTransport, timeout: float = 30.0) -> Message:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        got = transport.poll()
        if got:
            return got[0]
        time.sleep(0.0002)
    raise TimeoutError("message did not arrive")


def measure(numel: int, reps: int, folder: Path) -> dict[str, float]:
    limits = TransportLimits(
        heartbeat_interval_s=3600.0, suspect_after_s=3600.0, inactive_after_s=7200.0
    )
    port_a, port_b = _free_port(), _free_port()
    b = GrpcTransport(
        "b", f"127.0.0.1:{port_b}", {"a": f"127.0.0.1:{port_a}"},
        pki.site_credentials(folder, "b"), "bench", numel, limits,
    )  # fmt: skip
    proxy = CountingProxy(port_b)
    a = GrpcTransport(
        "a", f"127.0.0.1:{port_a}", {"b": f"127.0.0.1:{proxy.port}"},
        pki.site_credentials(folder, "a"), "bench", numel, limits,
    )  # fmt: skip
    try:
        x = torch.randn(numel, generator=torch.Generator().manual_seed(0))
        seq = 1
        a.send(Message("a", "b", MessageKind.DUAL, seq, seq, x))  # warm up: TLS handshake
        _wait(b)
        time.sleep(0.2)
        up0, down0 = proxy.snapshot()
        sent0 = a.stats()[("a", "b")].bytes_sent
        rtts = []
        for _ in range(reps):
            seq += 1
            t0 = time.perf_counter()
            a.send(Message("a", "b", MessageKind.DUAL, seq, seq, x))
            m = _wait(b)
            b.send(Message("b", "a", MessageKind.DUAL, seq, seq, m.payload))
            _wait(a)
            rtts.append(time.perf_counter() - t0)
        time.sleep(0.3)  # let the last acks pass the proxy
        up1, down1 = proxy.snapshot()
        envelope = (a.stats()[("a", "b")].bytes_sent - sent0) / reps
        small = []  # the same ping-pong with payload-free heartbeat-kind messages
        for _ in range(reps):
            seq += 1
            t0 = time.perf_counter()
            a.send(Message("a", "b", MessageKind.HEARTBEAT, seq, seq))
            _wait(b)
            b.send(Message("b", "a", MessageKind.HEARTBEAT, seq, seq))
            _wait(a)
            small.append(time.perf_counter() - t0)
    finally:
        a.close()
        b.close()
        proxy.close()
    payload = numel * 4
    return {
        "numel": numel,
        "payload_bytes": payload,
        "envelope_bytes": envelope,
        "envelope_overhead_bytes": envelope - payload,
        "wire_bytes_sender_to_receiver": (up1 - up0) / reps,
        "wire_bytes_receiver_to_sender": (down1 - down0) / reps,
        "wire_overhead_fraction": ((up1 - up0) / reps - payload) / payload,
        "round_trip_ms_median": 1000 * statistics.median(rtts),
        "round_trip_ms_min": 1000 * min(rtts),
        "round_trip_ms_max": 1000 * max(rtts),
        "empty_message_round_trip_ms_median": 1000 * statistics.median(small),
        "empty_message_round_trip_ms_min": 1000 * min(small),
        "reps": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/grpc_transport.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pki.create_ca(folder)
        for site in ("a", "b"):
            pki.issue_site_certificate(site, folder)
        rows = [measure(n, args.reps, folder) for n in (100_000, 1_000_000)]
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, shared",
        "python": platform.python_version(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['numel']:>9} floats: payload {r['payload_bytes']} B, envelope +"
            f"{r['envelope_overhead_bytes']:.0f} B, wire a->b {r['wire_bytes_sender_to_receiver']:.0f} B"
            f" ({100 * r['wire_overhead_fraction']:.2f}% over payload), b->a "
            f"{r['wire_bytes_receiver_to_sender']:.0f} B; ping-pong median "
            f"{r['round_trip_ms_median']:.1f} ms (min {r['round_trip_ms_min']:.1f}); empty message "
            f"{r['empty_message_round_trip_ms_median']:.1f} ms (min "
            f"{r['empty_message_round_trip_ms_min']:.1f})"
        )
    print(f"written {out}")


if __name__ == "__main__":
    main()
