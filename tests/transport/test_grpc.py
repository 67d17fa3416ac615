"""The gRPC + mutual TLS transport against RELIABILITY.md's checklist (in-process servers, 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import pickle
import random
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import torch
from grpc_helpers import (
    FINGERPRINT,
    RecordingProxy,
    client_channel,
    envelopes,
    free_port,
    raw_credentials,
    raw_deliver,
    wait_until,
)

from hospitalnet import __version__
from hospitalnet.errors import NetworkError
from hospitalnet.messages import Message, MessageKind
from hospitalnet.transport.grpc import SERVICE, GrpcTransport, PeerState, TransportLimits
from hospitalnet.transport.proto import hospitalnet_pb2 as pb

N = 1000  # payload elements of the receiver's model in the message-check tests
FAST = TransportLimits(
    chunk_bytes=64 << 10,
    max_message_bytes=(64 << 10) + 8192,
    call_timeout_s=3.0,
    heartbeat_interval_s=0.2,
    heartbeat_timeout_s=0.5,
    retry_interval_s=0.2,
    suspect_after_s=1.0,
    inactive_after_s=2.0,
    reconnect_backoff_max_s=0.3,
)


def transport(net_pki, site, port, neighbours, numel=N, limits=FAST) -> GrpcTransport:
    nbrs = {s: f"127.0.0.1:{p}" for s, p in neighbours.items()}
    return GrpcTransport(
        site, f"127.0.0.1:{port}", nbrs, net_pki.creds(site), FINGERPRINT, numel, limits
    )


def f32(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def frames(envs) -> list[bytes]:
    return [e.SerializeToString() for e in envs]


@pytest.fixture
def receiver(net_pki):
    """Site a (neighbour b, which is not running) and a raw mTLS client holding b's certificate."""
    a = transport(net_pki, "a", 0, {"b": free_port()})
    channel = client_channel(net_pki.creds("b"), a.address, "a")
    try:
        yield a, channel
    finally:
        channel.close()
        a.close()


def assert_still_serving(a: GrpcTransport, channel: grpc.Channel, seq: int) -> None:
    """A valid message from b is still accepted and delivered (the receiver is alive)."""
    ack = raw_deliver(channel, frames(envelopes("b", "a", f32(np.ones(N)), numel=N, seq=seq)))
    assert ack.accepted, ack.reason
    got = a.poll()
    assert [m.seq for m in got] == [seq]
    assert torch.equal(got[0].payload, torch.ones(N))


# ---- exchange ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_two_sites_exchange_bit_exact_over_mtls_and_count_bytes(net_pki):
    n = 100_000
    port_a, port_b = free_port(), free_port()
    a = b = None
    try:
        a = transport(net_pki, "a", port_a, {"b": port_b}, numel=n)
        b = transport(net_pki, "b", port_b, {"a": port_a}, numel=n)
        x = torch.randn(n, generator=torch.Generator().manual_seed(0))
        x[:5] = torch.tensor([-0.0, 1e-45, 6.5e4, -1.1754944e-38, 0.0])  # edge bit patterns
        h = x.to(torch.float16)
        a.send(Message("a", "b", MessageKind.DUAL, 3, 1, x))
        a.send(Message("a", "b", MessageKind.MODEL, 3, 2, h))
        b.send(Message("b", "a", MessageKind.HEARTBEAT, 9, 1))

        got_b: list[Message] = []
        got_a: list[Message] = []
        assert wait_until(lambda: got_b.extend(b.poll()) or len(got_b) == 2, 20)
        assert wait_until(lambda: got_a.extend(a.poll()) or len(got_a) == 1, 20)

        by_kind = {m.kind: m for m in got_b}
        dual, model = by_kind[MessageKind.DUAL], by_kind[MessageKind.MODEL]
        assert (dual.sender, dual.receiver, dual.step, dual.seq) == ("a", "b", 3, 1)
        assert dual.payload.dtype == torch.float32
        assert torch.equal(dual.payload.view(torch.int32), x.view(torch.int32))  # bit-exact
        assert model.payload.dtype == torch.float16
        assert torch.equal(model.payload.view(torch.int16), h.view(torch.int16))
        assert got_a[0].kind is MessageKind.HEARTBEAT and got_a[0].payload is None

        sent, recv = a.stats()[("a", "b")], b.stats()[("a", "b")]
        assert sent.messages_sent == 2 and recv.messages_delivered == 2
        payload = n * 4 + n * 2
        assert sent.bytes_sent == recv.bytes_received  # both ends count the same envelopes
        assert payload < sent.bytes_sent < payload * 1.01  # chunk headers are small
        assert a.neighbour_states()["b"].state is PeerState.ACTIVE
        assert b.neighbour_states()["a"].toolkit_version == __version__
    finally:
        for t in (a, b):
            if t is not None:
                t.close()


def test_payload_sizes_per_kind_carry_an_ecl_request_and_answer(net_pki):
    # an ecl request is [w, lam] (2n), its answer d (n): each kind is checked against its size
    n = 1_000
    sizes = {MessageKind.DUAL: 2 * n, MessageKind.MODEL: n}
    port_a, port_b = free_port(), free_port()
    a = b = None
    try:
        a = transport(net_pki, "a", port_a, {"b": port_b}, numel=sizes)
        b = transport(net_pki, "b", port_b, {"a": port_a}, numel=sizes)
        request, answer = torch.randn(2 * n), torch.randn(n)
        a.send(Message("a", "b", MessageKind.DUAL, 1, 1, request))
        got: list[Message] = []
        assert wait_until(lambda: got.extend(b.poll()) or len(got) == 1, 20)
        assert torch.equal(got[0].payload, request)
        b.send(Message("b", "a", MessageKind.MODEL, 1, 1, answer))
        got = []
        assert wait_until(lambda: got.extend(a.poll()) or len(got) == 1, 20)
        assert torch.equal(got[0].payload, answer)
        with pytest.raises(ValueError, match="2000 elements"):  # a model-sized request
            a.send(Message("a", "b", MessageKind.DUAL, 2, 2, answer))
    finally:
        for t in (a, b):
            if t is not None:
                t.close()


@pytest.mark.timeout(30)
def test_send_refuses_messages_the_edge_cannot_carry(receiver):
    a, _ = receiver
    with pytest.raises(ValueError, match="1-D with 1000"):
        a.send(Message("a", "b", MessageKind.DUAL, 1, 1, torch.zeros(N + 1)))
    with pytest.raises(ValueError, match="dtype"):
        a.send(Message("a", "b", MessageKind.DUAL, 1, 1, torch.zeros(N, dtype=torch.float64)))
    with pytest.raises(ValueError, match="not a neighbour"):
        a.send(Message("a", "c", MessageKind.DUAL, 1, 1, torch.zeros(N)))
    with pytest.raises(ValueError, match="sender"):
        a.send(Message("b", "a", MessageKind.DUAL, 1, 1, torch.zeros(N)))
    with pytest.raises(ValueError, match="out of range"):
        a.send(Message("a", "b", MessageKind.DUAL, -1, 1, torch.zeros(N)))
    with pytest.raises(ValueError, match="out of range"):
        a.send(Message("a", "b", MessageKind.DUAL, 1, 0, torch.zeros(N)))
    with pytest.raises(ValueError, match="no payload"):
        a.send(Message("a", "b", MessageKind.HEARTBEAT, 1, 1, torch.zeros(N)))


@pytest.mark.timeout(30)
def test_a_taken_port_or_a_foreign_certificate_is_a_clear_error(receiver, net_pki):
    a, _ = receiver
    with pytest.raises(NetworkError, match="cannot listen on"):
        transport(net_pki, "c", int(a.address.rsplit(":", 1)[1]), {"a": free_port()})
    with pytest.raises(NetworkError, match="certificate is for site 'c', not 'd'"):
        GrpcTransport("d", "127.0.0.1:0", {}, net_pki.creds("c"), FINGERPRINT, N)


# ---- messages that must be rejected ------------------------------------------------------------

ONES = f32(np.ones(N))


def _second_chunk_disagrees():
    envs = envelopes("b", "a", ONES, numel=N, chunk=2000)
    envs[1].seq += 1
    return envs


def _extra_chunk():
    envs = envelopes("b", "a", ONES, numel=N, chunk=2000)
    return envs + [envs[1]]


BAD_MESSAGES = {
    "protocol_version": lambda: envelopes("b", "a", ONES, numel=N, protocol_version=2),
    "fingerprint": lambda: envelopes("b", "a", ONES, numel=N, model_fingerprint="other-model"),
    "wrong_receiver": lambda: envelopes("b", "c", ONES, numel=N),
    # b's valid certificate, claiming to be c in the envelope
    "sender_mismatch": lambda: envelopes("c", "a", ONES, numel=N),
    "dtype": lambda: envelopes("b", "a", np.ones(N, "<f8").tobytes(), numel=N, dtype="float64"),
    "shape": lambda: envelopes("b", "a", f32(np.ones(N + 1)), numel=N + 1),
    "short_payload": lambda: envelopes("b", "a", f32(np.ones(N - 1)), numel=N),
    "kind": lambda: envelopes("b", "a", ONES, numel=N, kind=9),
    "digest": lambda: envelopes("b", "a", ONES, numel=N, digest=b"\x00" * 32),
    "nan": lambda: envelopes("b", "a", f32([np.nan] + [1.0] * (N - 1)), numel=N),
    "inf": lambda: envelopes("b", "a", f32([1.0] * (N - 1) + [-np.inf]), numel=N),
    "norm": lambda: envelopes("b", "a", f32(np.full(N, 1e5)), numel=N),
    "norm_overflow": lambda: envelopes("b", "a", f32(np.full(N, 3e19)), numel=N),
    "chunk_header": _second_chunk_disagrees,
    "extra_chunk": _extra_chunk,
    "chunk_index": lambda: envelopes(
        "b", "a", ONES, numel=N, schema=pb.PayloadSchema(dtype="float32", numel=N, chunk_index=1)
    ),
}
EXPECTED_REASON = {
    "short_payload": "shape",
    "nan": "non_finite",
    "norm_overflow": "norm",
    "inf": "non_finite",
    "chunk_index": "chunking",
    "chunk_header": "chunking",
    "extra_chunk": "chunking",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_bad_message_is_rejected_counted_and_never_delivered(receiver, case):
    a, channel = receiver
    ack = raw_deliver(channel, frames(BAD_MESSAGES[case]()))
    reason = EXPECTED_REASON.get(case, case)
    assert not ack.accepted and ack.reason == reason
    assert a.stats()[("b", "a")].rejected == {reason: 1}
    assert a.poll() == []
    assert_still_serving(a, channel, seq=1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("junk", ["random_bytes", "truncated_envelope"])
def test_junk_frames_are_rejected_as_malformed(receiver, junk):
    a, channel = receiver
    valid = frames(envelopes("b", "a", ONES, numel=N))[0]
    data = {
        "random_bytes": random.Random(7).randbytes(3000),
        "truncated_envelope": valid[: len(valid) // 2],
    }[junk]
    ack = raw_deliver(channel, [data])
    assert not ack.accepted and ack.reason == "malformed"
    assert a.stats()[("b", "a")].rejected == {"malformed": 1}
    assert a.poll() == []
    assert_still_serving(a, channel, seq=1)


@pytest.mark.timeout(30)
def test_random_bytes_on_the_raw_socket_do_not_hurt_the_server(receiver):
    import socket

    a, channel = receiver
    host, port = a.address.rsplit(":", 1)
    for size in (1, 5, 4096, 70_000):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(random.Random(size).randbytes(size))
            s.settimeout(0.5)
            try:
                while s.recv(4096):  # the server closes the connection, or waits for more
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    assert a.poll() == []
    assert_still_serving(a, channel, seq=1)


@pytest.mark.timeout(30)
def test_oversized_message_gets_resource_exhausted_and_receiver_keeps_serving(receiver):
    a, channel = receiver
    big = envelopes("b", "a", ONES, numel=N)[0]
    big.payload = b"\x00" * (FAST.max_message_bytes + 1)
    with pytest.raises(grpc.RpcError) as err:
        raw_deliver(channel, [big.SerializeToString()])
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_until(lambda: a.stats()[("b", "a")].rejected == {"incomplete_stream": 1}, 5)
    assert a.poll() == []
    assert_still_serving(a, channel, seq=1)


@pytest.mark.timeout(30)
def test_call_without_deadline_is_refused(receiver):
    a, channel = receiver
    call = channel.stream_unary(f"/{SERVICE}/Deliver", response_deserializer=pb.Ack.FromString)
    ack = call(iter(frames(envelopes("b", "a", ONES, numel=N))))  # no timeout
    assert not ack.accepted and ack.reason == "no_deadline"
    assert a.poll() == []


@pytest.mark.timeout(30)
def test_configured_sites_that_are_not_neighbours_are_refused(receiver, net_pki):
    a, _ = receiver
    c_channel = client_channel(net_pki.creds("c"), a.address, "a")
    try:
        ack = raw_deliver(c_channel, frames(envelopes("c", "a", ONES, numel=N)))
    finally:
        c_channel.close()
    assert not ack.accepted and ack.reason == "not_neighbour"
    assert a.stats()[("c", "a")].rejected == {"not_neighbour": 1}
    assert a.poll() == []


class _Touch:
    """Unpickling this creates the marker file (built here, in the test, never in the library)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.timeout(30)
def test_a_pickle_payload_is_never_unpickled(receiver, tmp_path):
    a, channel = receiver
    marker = tmp_path / "unpickled.marker"
    bomb = pickle.dumps(_Touch(str(marker)))
    # Control (test only, on bytes built just above): this payload really creates the marker.
    pickle.loads(bomb).close()  # noqa: S301
    assert marker.exists()
    marker.unlink()

    padded = bomb + b"." * (N * 4 - len(bomb))  # exactly the expected payload size
    acks = [
        raw_deliver(channel, [bomb]),  # as the whole request
        raw_deliver(channel, frames(envelopes("b", "a", padded, numel=N, seq=1))),  # as payload
    ]
    delivered = a.poll()
    assert not marker.exists()
    assert not acks[0].accepted and acks[0].reason == "malformed"
    # As a payload the bytes are only ever read as little-endian floats.
    for m in delivered:
        assert m.payload.dtype == torch.float32
        assert m.payload.numpy().tobytes() == padded
    assert not marker.exists()


@pytest.mark.timeout(30)
def test_message_cut_off_mid_stream_is_not_applied(receiver):
    """A sender killed while sending: the chunks that arrived are discarded."""
    a, channel = receiver
    data = f32(np.arange(N, dtype=np.float32))
    chunks = frames(envelopes("b", "a", data, numel=N, chunk=1000))
    assert len(chunks) == 4
    release = threading.Event()

    def first_chunk_then_hang():
        yield chunks[0]
        release.wait(10)

    call = channel.stream_unary(
        f"/{SERVICE}/Deliver", request_serializer=None, response_deserializer=pb.Ack.FromString
    )
    future = call.future(first_chunk_then_hang(), timeout=10)
    try:
        assert wait_until(lambda: a.stats().get(("b", "a")) is not None, 10), a.stats()
        future.cancel()
        assert wait_until(lambda: a.stats()[("b", "a")].rejected == {"incomplete_stream": 1}, 10), (
            a.stats()
        )
    finally:
        release.set()
    assert a.poll() == []
    assert_still_serving(a, channel, seq=1)


@pytest.mark.timeout(30)
def test_replays_and_overtaken_messages_are_dropped_restarts_accepted(receiver):
    a, channel = receiver

    def deliver(seq, incarnation=1):
        return raw_deliver(
            channel, frames(envelopes("b", "a", ONES, numel=N, seq=seq, incarnation=incarnation))
        )

    first = frames(envelopes("b", "a", ONES, numel=N, seq=5))
    assert raw_deliver(channel, first).accepted
    replay = raw_deliver(channel, first)  # the exact same bytes again
    assert not replay.accepted and replay.reason == "duplicate"
    assert deliver(4).reason == "duplicate"  # overtaken by seq 5
    assert deliver(6).accepted
    assert deliver(1, incarnation=2).accepted  # b restarted: a new incarnation counts afresh
    assert deliver(7, incarnation=1).reason == "duplicate"  # from before the restart
    assert [m.seq for m in a.poll()] == [5, 6, 1]
    assert a.stats()[("b", "a")].duplicates == 3


# ---- who may talk -----------------------------------------------------------------------------


def _channel_with(creds_kind: str, net_pki, address: str) -> grpc.Channel:
    ca = net_pki.creds("a").ca_pem
    if creds_kind == "no_certificate":
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        folder = net_pki.other if creds_kind == "other_ca" else net_pki.expired
        own = raw_credentials(folder, "b")
        # Trust the real network CA for the server, so only the client's side can fail.
        credentials = grpc.ssl_channel_credentials(ca, own.key_pem, own.cert_pem)
    return grpc.secure_channel(
        address,
        credentials,
        options=[("grpc.ssl_target_name_override", "a"), ("grpc.use_local_subchannel_pool", 1)],
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("creds_kind", ["no_certificate", "other_ca", "expired"])
def test_clients_without_a_valid_network_certificate_fail_the_handshake(
    receiver, net_pki, creds_kind
):
    a, channel = receiver
    bad = _channel_with(creds_kind, net_pki, a.address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            raw_deliver(bad, frames(envelopes("b", "a", ONES, numel=N)), timeout=5)
    finally:
        bad.close()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ("b", "a") not in a.stats()  # refused before any handler ran
    assert_still_serving(a, channel, seq=1)


@pytest.mark.timeout(30)
def test_client_refuses_a_server_that_is_not_the_neighbour_it_dialled(receiver, net_pki):
    a, _ = receiver
    # b dials a's address believing it is c: a's certificate does not name c.
    wrong = client_channel(net_pki.creds("b"), a.address, "c")
    try:
        with pytest.raises(grpc.RpcError) as err:
            raw_deliver(wrong, frames(envelopes("b", "c", ONES, numel=N)), timeout=5)
    finally:
        wrong.close()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ("b", "a") not in a.stats()


@pytest.mark.timeout(60)
def test_tensor_bytes_are_not_visible_on_the_wire(net_pki):
    n = 50_000
    canary = b"DEADBEEF-CAFE-0123-4567-89AB-"  # 29 bytes; read as float32: finite, < 2^15
    pattern = (canary * (n * 4 // len(canary) + 1))[: n * 4]
    values = np.frombuffer(pattern, dtype="<f4")
    assert np.isfinite(values).all()
    limits = dataclasses.replace(FAST, max_norm=1e12)  # ASCII read as floats is large
    port_a, port_b = free_port(), free_port()
    a = b = proxy = None
    try:
        b = transport(net_pki, "b", port_b, {"a": port_a}, numel=n, limits=limits)
        proxy = RecordingProxy(port_b)
        a = GrpcTransport(
            "a",
            f"127.0.0.1:{port_a}",
            {"b": proxy.address},
            net_pki.creds("a"),
            FINGERPRINT,
            n,
            limits,
        )
        a.send(Message("a", "b", MessageKind.DUAL, 1, 1, torch.from_numpy(values.copy())))
        got: list[Message] = []
        assert wait_until(lambda: got.extend(b.poll()) or got, 20)
        assert got[0].payload.numpy().tobytes() == pattern  # it did travel through the proxy
        a.close()
        captured = bytes(proxy.to_server) + bytes(proxy.to_client)
    finally:
        for t in (a, b):
            if t is not None:
                t.close()
        if proxy is not None:
            proxy.close()
    assert len(proxy.to_server) > n * 4  # the payload's worth of bytes went through
    assert proxy.to_server[:1] == b"\x16" and proxy.to_server[1:2] == b"\x03"  # TLS handshake
    assert canary[:12] not in captured
    assert b"hospitalnet.v1" not in captured  # not even the gRPC method name is readable


# ---- liveness ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_dead_peer_goes_suspect_then_inactive_without_blocking_and_comes_back(net_pki):
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    a = b = c = None
    try:
        c = transport(net_pki, "c", port_c, {"a": port_a})
        a = transport(net_pki, "a", port_a, {"b": port_b, "c": port_c})
        t0 = time.perf_counter()
        a.send(Message("a", "b", MessageKind.DUAL, 1, 1, torch.ones(N)))
        a.send(Message("a", "c", MessageKind.DUAL, 1, 1, torch.ones(N)))
        assert time.perf_counter() - t0 < 0.1  # send never waits for a neighbour
        got: list[Message] = []
        assert wait_until(lambda: got.extend(c.poll()) or got, 10)

        assert wait_until(lambda: a.neighbour_states()["b"].state is PeerState.SUSPECT, 5)
        assert wait_until(lambda: a.neighbour_states()["b"].state is PeerState.INACTIVE, 10)
        states = a.neighbour_states()
        assert states["c"].state is PeerState.ACTIVE
        assert states["b"].last_error == "UNAVAILABLE" and states["b"].last_ok is None
        ab = a.stats()[("a", "b")]
        assert ab.failures["UNAVAILABLE"] >= 2 and ab.messages_sent == 0
        assert a.stats()[("a", "c")].failures == {}
        a.send(Message("a", "b", MessageKind.DUAL, 2, 2, torch.ones(N)))  # replaces the unsent one
        assert a.stats()[("a", "b")].dropped == 1

        b = transport(net_pki, "b", port_b, {"a": port_a})  # restarted on its address
        assert wait_until(lambda: a.neighbour_states()["b"].state is PeerState.ACTIVE, 15)
        got_b: list[Message] = []
        assert wait_until(lambda: got_b.extend(b.poll()) or got_b, 10)
        time.sleep(0.5)
        got_b.extend(b.poll())
        assert [m.seq for m in got_b] == [2]  # the newest message, once
        transitions = [(nbr, old, new) for _, nbr, old, new in a.neighbour_events() if nbr == "b"]
        assert transitions[:3] == [
            ("b", "active", "suspect"),
            ("b", "suspect", "inactive"),
            ("b", "inactive", "active"),
        ]
    finally:
        for t in (a, b, c):
            if t is not None:
                t.close()


class _StalledPeer:
    """A server holding b's certificate whose handlers hang (a frozen process, seen from outside)."""

    def __init__(self, creds, port: int) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

        def hang(request, context):
            self.entered.set()
            self.release.wait(20)
            return pb.Ack(accepted=True)

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Deliver": grpc.stream_unary_rpc_method_handler(
                    hang, response_serializer=pb.Ack.SerializeToString
                ),
                "Heartbeat": grpc.unary_unary_rpc_method_handler(
                    hang, response_serializer=pb.Ack.SerializeToString
                ),
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
        self.server.add_secure_port(
            f"127.0.0.1:{port}",
            grpc.ssl_server_credentials(
                [(creds.key_pem, creds.cert_pem)], creds.ca_pem, require_client_auth=True
            ),
        )
        self.server.start()

    def stop(self) -> None:
        self.release.set()
        self.server.stop(0).wait(5)


@pytest.mark.timeout(60)
def test_stalled_peer_times_out_on_its_own_edge_only(net_pki):
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    limits = TransportLimits(
        chunk_bytes=64 << 10,
        max_message_bytes=(64 << 10) + 8192,
        call_timeout_s=1.0,
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=1.0,
        retry_interval_s=0.2,
        suspect_after_s=3.0,
        inactive_after_s=30.0,
    )
    stalled = _StalledPeer(net_pki.creds("b"), port_b)
    a = c = None
    try:
        c = transport(net_pki, "c", port_c, {"a": port_a}, limits=limits)
        a = transport(net_pki, "a", port_a, {"b": port_b, "c": port_c}, limits=limits)
        assert stalled.entered.wait(5)  # a's edge to b is now stuck in a call
        t0 = time.perf_counter()
        for seq in (1, 2, 3):  # newer messages replace unsent older ones in b's outbox
            a.send(Message("a", "b", MessageKind.DUAL, seq, seq, torch.full((N,), float(seq))))
        a.send(Message("a", "c", MessageKind.DUAL, 1, 1, torch.ones(N)))
        assert time.perf_counter() - t0 < 0.1
        assert a.stats()[("a", "b")].dropped == 2

        got: list[Message] = []
        assert wait_until(lambda: got.extend(c.poll()) or got, 5)  # c is not held up by b

        assert wait_until(
            lambda: a.stats()[("a", "b")].failures.get("DEADLINE_EXCEEDED", 0) >= 2, 10
        )
        assert a.neighbour_states()["b"].state is PeerState.SUSPECT
        assert a.neighbour_states()["c"].state is PeerState.ACTIVE
        assert a.stats()[("a", "c")].failures == {}
        t_close = time.perf_counter()
        a.close()  # with a call to the stalled peer in flight
        assert time.perf_counter() - t_close < 3.0
    finally:
        for t in (a, c):
            if t is not None:
                t.close()
        stalled.stop()


@pytest.mark.timeout(60)
def test_flush_waits_for_live_neighbours_and_gives_up_on_dead_ones_by_its_deadline(net_pki):
    # prepare: a with neighbours b (running) and c (never started)
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    a = b = None
    try:
        b = transport(net_pki, "b", port_b, {"a": port_a})
        a = transport(net_pki, "a", port_a, {"b": port_b, "c": port_c})
        a.send(Message("a", "b", MessageKind.MODEL, 1, 1, torch.ones(N)))
        a.send(Message("a", "c", MessageKind.MODEL, 1, 1, torch.ones(N)))

        # execute 1: a deadline shorter than c's inactivity deadline (2 s)
        t0 = time.monotonic()
        early = a.flush(0.3)
        early_s = time.monotonic() - t0
        # execute 2: long enough for c to go inactive
        late = a.flush(10.0)
        late_s = time.monotonic() - t0

        # assert: c's message is still queued at the short deadline, which flush kept; later c
        # is inactive and not waited for; b has its message either way
        assert early is False and early_s < 1.0
        assert late is True and late_s < 5.0
        assert a.neighbour_states()["c"].state is PeerState.INACTIVE
        assert [m.seq for m in b.poll()] == [1]
        assert a.stats()[("a", "b")].messages_sent == 1
    finally:
        for t in (a, b):
            if t is not None:
                t.close()
