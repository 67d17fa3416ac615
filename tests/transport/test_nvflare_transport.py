"""The NVFlare aux transport's contract and checks, without NVFlare: two AuxTransports wired by
their ``post`` functions (what AuxLink does through an NVFlare engine), and hand-made frames."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import torch

from hospitalnet.messages import Message, MessageKind
from hospitalnet.transport.grpc import PeerState, TransportLimits
from hospitalnet.transport.grpc_wire import envelopes
from hospitalnet.transport.nvflare import AuxTransport

N = 1000
FINGERPRINT = "f" * 16
FAST = TransportLimits(
    chunk_bytes=1024,
    max_message_bytes=1024 + 4096,
    heartbeat_interval_s=0.1,
    retry_interval_s=0.1,
    suspect_after_s=0.5,
    inactive_after_s=1.0,
)


class Wire:
    """Delivers what one site posts to the other's ``deliver``, as NVFlare relays it; records
    every request and can be cut (a dead peer)."""

    def __init__(self) -> None:
        self.sites: dict[str, AuxTransport] = {}
        self.posted: list[tuple[str, str, list[bytes]]] = []
        self.cut: set[str] = set()
        self.lock = threading.Lock()

    def post_from(self, sender: str):
        def post(target: str, frames: list[bytes]) -> None:
            with self.lock:
                self.posted.append((sender, target, frames))
            if sender in self.cut or target in self.cut:
                return  # fire and forget: lost without a word
            self.sites[target].deliver(sender, frames)

        return post


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def pair():
    wire = Wire()
    a = AuxTransport("n1", ["n2"], FINGERPRINT, N, wire.post_from("n1"), FAST)
    b = AuxTransport("n2", ["n1"], FINGERPRINT, N, wire.post_from("n2"), FAST)
    wire.sites = {"n1": a, "n2": b}
    yield wire, a, b
    a.close()
    b.close()


def dual(step: int, seq: int, values: torch.Tensor) -> Message:
    return Message("n1", "n2", MessageKind.DUAL, step, seq, values)


def test_a_message_arrives_intact_as_bytes_in_several_chunks(pair):
    wire, a, b = pair
    payload = torch.arange(N, dtype=torch.float32) / 7.0
    a.send(dual(3, 1, payload))
    assert wait_until(
        lambda: (
            b.stats().get(("n1", "n2")) is not None
            and b.stats()[("n1", "n2")].messages_delivered == 1
        )
    )
    (got,) = b.poll()
    assert (got.sender, got.receiver, got.kind, got.step, got.seq) == (
        "n1",
        "n2",
        MessageKind.DUAL,
        3,
        1,
    )
    assert torch.equal(got.payload, payload)
    # on the wire: only bytes, 4000 payload bytes cut into 1024-byte chunks (4 envelopes)
    sent = [f for s, t, f in wire.posted if s == "n1" and len(f) > 1]
    assert len(sent[0]) == 4 and all(isinstance(x, bytes) for x in sent[0])
    assert a.stats()[("n1", "n2")].bytes_sent == sum(len(x) for x in sent[0])


def test_a_newer_message_replaces_an_unsent_older_one_and_replays_are_dropped(pair):
    wire, a, b = pair
    wire.cut.add("n2")  # nothing gets through while both are queued
    a.send(dual(1, 1, torch.ones(N)))
    a.send(dual(2, 2, torch.ones(N)))  # may replace the first while it waits
    wire.cut.clear()
    a.send(dual(3, 3, torch.full((N,), 2.0)))
    assert wait_until(lambda: any(m.seq == 3 for m in b.poll()))
    # replaying an envelope already taken is counted as a duplicate and not delivered
    frames = [f for s, t, f in wire.posted if s == "n1" and len(f) == 4][-1]
    assert b.deliver("n1", frames) == "duplicate"
    assert b.poll() == []
    assert b.stats()[("n1", "n2")].duplicates == 1


def _frames(message: Message, *, sender="n1", fingerprint=FINGERPRINT, chunk=1024) -> list[bytes]:
    data = np.asarray(message.payload, dtype="<f4").tobytes()
    envs = envelopes(
        message, data, sender=sender, incarnation=7, fingerprint=fingerprint, chunk_bytes=chunk
    )
    return [e.SerializeToString() for e in envs]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda m: _frames(m, sender="n3"), "sender_mismatch"),
        (lambda m: _frames(m, fingerprint="other"), "fingerprint"),
        (lambda m: _frames(m)[:-1], "chunking"),  # the last chunk missing
        (lambda m: list(reversed(_frames(m))), "chunking"),
        (lambda m: [b"\x00junk"], "malformed"),
        (lambda m: [pickle.dumps(m.payload.numpy())], "malformed"),  # never unpickled
        (lambda m: "not a list", "malformed"),
        (lambda m: [b"x" * (1024 + 4097)], "size"),
        (lambda m: _frames(m) * 2, "size"),
    ],
)
def test_bad_frames_are_refused_with_their_reason_and_counted(pair, make, reason):
    _, _, b = pair
    message = dual(1, 1, torch.ones(N))
    assert b.deliver("n1", make(message)) == reason
    assert b.poll() == []
    assert b.stats()[("n1", "n2")].rejected == {reason: 1}


def test_a_tampered_payload_fails_the_digest_and_an_absurd_one_the_norm(pair):
    _, _, b = pair
    frames = _frames(dual(1, 1, torch.ones(N)))
    from hospitalnet.transport.proto import hospitalnet_pb2 as pb

    env = pb.Envelope.FromString(frames[0])
    env.payload = bytes(len(env.payload))  # zeros instead of ones
    assert b.deliver("n1", [env.SerializeToString(), *frames[1:]]) == "digest"
    huge = _frames(dual(1, 2, torch.full((N,), 1e5)))
    assert b.deliver("n1", huge) == "norm"
    nan = torch.ones(N)
    nan[5] = float("nan")
    assert b.deliver("n1", _frames(dual(1, 3, nan))) == "non_finite"
    # a right-sized message with the wrong element count
    short = Message("n1", "n2", MessageKind.DUAL, 1, 4, torch.ones(N - 1))
    data = np.ones(N - 1, dtype="<f4").tobytes()
    envs = envelopes(
        short, data, sender="n1", incarnation=7, fingerprint=FINGERPRINT, chunk_bytes=1024
    )
    assert b.deliver("n1", [e.SerializeToString() for e in envs]) == "shape"


def test_no_identity_or_a_stranger_is_refused(pair):
    _, _, b = pair
    frames = _frames(dual(1, 1, torch.ones(N)))
    assert b.deliver(None, frames) == "identity"
    assert b.deliver("n3", _frames(dual(1, 1, torch.ones(N)), sender="n3")) == "not_neighbour"
    assert b.poll() == []


def test_heartbeats_keep_an_idle_edge_active_and_a_silent_one_goes_inactive(pair):
    wire, a, b = pair
    assert wait_until(lambda: b.neighbour_states()["n1"].last_heard is not None)
    time.sleep(FAST.inactive_after_s * 1.5)  # idle, but heartbeats flow
    assert b.neighbour_states()["n1"].state is PeerState.ACTIVE
    assert a.stats()[("n1", "n2")].heartbeats_sent >= 5
    wire.cut.add("n1")  # n1 dies: nothing more from it
    assert wait_until(lambda: b.neighbour_states()["n1"].state is PeerState.INACTIVE, 3.0)
    events = [(nbr, old, new) for _, nbr, old, new in b.neighbour_events()]
    assert ("n1", "suspect", "inactive") in events or ("n1", "active", "inactive") in events
    wire.cut.clear()  # it comes back
    assert wait_until(lambda: b.neighbour_states()["n1"].state is PeerState.ACTIVE, 3.0)


def test_a_failing_post_is_counted_and_the_message_is_tried_again():
    calls: list[str] = []
    fail = {"left": 2}

    def post(target: str, frames: list[bytes]) -> None:
        if len(frames) > 1 and fail["left"]:
            fail["left"] -= 1
            raise ConnectionError("no route")
        calls.append(target)

    t = AuxTransport("n1", ["n2"], FINGERPRINT, N, post, FAST)
    try:
        t.send(dual(1, 1, torch.ones(N)))
        assert wait_until(lambda: t.stats()[("n1", "n2")].messages_sent == 1, 3.0)
        st = t.stats()[("n1", "n2")]
        assert st.failures == {"ConnectionError": 2}
        assert t.flush(1.0)
    finally:
        t.close()


def test_send_refuses_what_the_contract_forbids(pair):
    _, a, _ = pair
    with pytest.raises(ValueError):
        a.send(Message("n2", "n1", MessageKind.DUAL, 1, 1, torch.ones(N)))  # not this site
    with pytest.raises(ValueError):
        a.send(Message("n1", "n9", MessageKind.DUAL, 1, 1, torch.ones(N)))  # not a neighbour
    with pytest.raises(ValueError):
        a.send(dual(1, 1, torch.ones(N + 1)))  # wrong size
    with pytest.raises(ValueError):
        AuxTransport("n1", ["n1"], FINGERPRINT, N, lambda t, f: None, FAST)


class FakeEngine:
    """What AuxLink uses of an NVFlare engine: multicast without waiting, a new context."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def new_context(self):
        return None

    def multicast_aux_requests(self, topic, target_requests, timeout, fl_ctx):
        assert timeout == 0.0  # fire and forget (a non-zero timeout fails in nvflare 2.9.0)
        self.sent.extend((topic, {t: r}) for t, r in target_requests.items())
        return {}


def test_aux_link_posts_bytes_and_maps_the_nvflare_server_to_server_also_for_early_messages():
    pytest.importorskip("nvflare")
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.shareable import Shareable

    from hospitalnet.transport.nvflare import FRAMES, TOPIC, AuxLink

    engine = FakeEngine()
    link = AuxLink(engine)
    # a server's message that arrives before the site's transport exists (kept, bounded)
    early = Shareable()
    early[FRAMES] = _frames(Message("server", "n1", MessageKind.MODEL, 4, 1, torch.ones(N)),
                            sender="server")  # fmt: skip
    early.set_peer_props({ReservedKey.IDENTITY_NAME: "simulator_server"})
    link.handle(TOPIC, early, None)
    link.aliases["simulator_server"] = "server"
    site = AuxTransport("n1", ["server"], FINGERPRINT, N, link.post, FAST)
    try:
        link.attach(site)
        (got,) = site.poll()
        assert (got.sender, got.kind, got.seq) == ("server", MessageKind.MODEL, 1)
        # what the site posts goes out as a list of bytes under the topic, to the named target
        site.send(Message("n1", "server", MessageKind.MODEL, 4, 1, torch.ones(N)))
        assert wait_until(lambda: any(len(r["server"][FRAMES]) > 1 for _, r in engine.sent))
        topic, request = next((t, r) for t, r in engine.sent if len(r["server"][FRAMES]) > 1)
        assert topic == TOPIC and all(isinstance(f, bytes) for f in request["server"][FRAMES])
    finally:
        site.close()


def test_a_message_sent_after_close_is_dropped_not_left_queued(pair):
    _, a, _ = pair
    a.close()
    a.send(dual(1, 1, torch.ones(N)))  # no edge thread would ever post it
    assert a.stats()[("n1", "n2")].dropped == 1
    assert a.flush(0.5)  # nothing stranded in the outbox
