"""A site in its own process for the multi-process tests: echoes every message back.

    python echo_peer.py SITE LISTEN_PORT NEIGHBOUR NEIGHBOUR_ADDRESS PKI_DIR NUMEL

Prints ``ready`` once it listens; exits when stdin closes or after 60 s.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hospitalnet import pki  # noqa: E402
from hospitalnet.messages import Message  # noqa: E402
from hospitalnet.transport.grpc import GrpcTransport, TransportLimits  # noqa: E402

FINGERPRINT = "test-model-fp-1"


def main() -> None:
    site, port, nbr, nbr_address, folder, numel = sys.argv[1:7]
    limits = TransportLimits(
        heartbeat_interval_s=0.2, retry_interval_s=0.2, reconnect_backoff_max_s=0.3
    )
    transport = GrpcTransport(
        site, f"127.0.0.1:{port}", {nbr: nbr_address}, pki.site_credentials(folder, site),
        FINGERPRINT, int(numel), limits,
    )  # fmt: skip
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            for m in transport.poll():
                transport.send(Message(site, m.sender, m.kind, m.step, m.seq, m.payload))
            time.sleep(0.005)
    finally:
        transport.close()


if __name__ == "__main__":
    main()
