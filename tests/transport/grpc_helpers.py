"""Shared pieces of the gRPC transport tests: a throw-away PKI, raw clients, a recording TCP proxy.

Everything listens on 127.0.0.1 with ports chosen by the OS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from hospitalnet import __version__, pki
from hospitalnet.pki import TlsCredentials
from hospitalnet.transport.grpc import PROTOCOL_VERSION, SERVICE
from hospitalnet.transport.proto import hospitalnet_pb2 as pb

FINGERPRINT = "test-model-fp-1"


def raw_credentials(folder: Path, site: str) -> TlsCredentials:
    """Read a site's files without the validity checks of ``load_credentials`` (for expired)."""
    return TlsCredentials(
        site=site,
        ca_pem=(folder / pki.CA_CERT).read_bytes(),
        cert_pem=(folder / f"{site}.pem").read_bytes(),
        key_pem=(folder / f"{site}.key").read_bytes(),
        not_valid_after=dt.datetime.now(dt.timezone.utc),
    )


class Pki:
    """The network CA with sites a, b, c, d; a foreign CA with its own 'b'; an expired 'b'."""

    def __init__(self, root: Path) -> None:
        self.main = root / "main"
        self.other = root / "other"
        self.expired = root / "expired"
        pki.create_ca(self.main)
        for site in ("a", "b", "c", "d"):
            pki.issue_site_certificate(site, self.main)
        pki.create_ca(self.other)
        pki.issue_site_certificate("b", self.other)
        # Same network CA, validity window entirely in the past.
        self.expired.mkdir()
        (self.expired / pki.CA_CERT).write_bytes((self.main / pki.CA_CERT).read_bytes())
        pki.issue_site_certificate(
            "b",
            self.main,
            self.expired,
            days=1,
            not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30),
        )

    def creds(self, site: str) -> TlsCredentials:
        return pki.site_credentials(self.main, site)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def client_channel(creds: TlsCredentials, address: str, server_site: str) -> grpc.Channel:
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(
            root_certificates=creds.ca_pem,
            private_key=creds.key_pem,
            certificate_chain=creds.cert_pem,
        ),
        options=[
            ("grpc.ssl_target_name_override", server_site),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )


def raw_deliver(channel: grpc.Channel, frames: list[bytes], timeout: float = 5.0) -> pb.Ack:
    """One Deliver call whose request messages are the given raw bytes (no serializer)."""
    call = channel.stream_unary(
        f"/{SERVICE}/Deliver", request_serializer=None, response_deserializer=pb.Ack.FromString
    )
    return call(iter(frames), timeout=timeout)


def envelopes(
    sender: str,
    receiver: str,
    data: bytes,
    *,
    numel: int,
    seq: int = 1,
    chunk: int = 1 << 20,
    dtype: str = "float32",
    kind: int = pb.KIND_DUAL,
    incarnation: int = 1,
    digest: bytes | None = None,
    **overrides: object,
) -> list[pb.Envelope]:
    """A valid message as chunk envelopes, built from the .proto alone (not by the transport)."""
    count = max(1, -(-len(data) // chunk))
    out = []
    for i in range(count):
        fields = dict(
            protocol_version=PROTOCOL_VERSION,
            toolkit_version=__version__,
            sender=sender,
            receiver=receiver,
            kind=kind,
            sender_step=7,
            seq=seq,
            sender_incarnation=incarnation,
            model_fingerprint=FINGERPRINT,
            schema=pb.PayloadSchema(dtype=dtype, numel=numel, chunk_index=i, chunk_count=count),
            payload=data[i * chunk : (i + 1) * chunk],
            payload_sha256=digest if digest is not None else hashlib.sha256(data).digest(),
        )
        fields.update(overrides)
        out.append(pb.Envelope(**fields))
    return out


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``upstream`` and records every byte it forwards
    (our stand-in for a packet capture of the loopback traffic)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.to_server = bytearray()
        self.to_client = bytearray()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, fn: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
            self._spawn(self._pump, client, server, self.to_server)
            self._spawn(self._pump, server, client, self.to_client)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._socks:
                s.close()
        for t in self._threads:
            t.join(timeout=2)
