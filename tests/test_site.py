"""The site loop's rules, driven by hand with an in-memory transport and a fake clock."""

import math

import pytest
import torch

from hospitalnet.algorithms import ECL, PDMM, Local, make_context
from hospitalnet.algorithms.base import site_weights
from hospitalnet.messages import Message, MessageKind
from hospitalnet.objective import QuadraticObjective
from hospitalnet.site import (
    ExchangeSchedule,
    PeerBook,
    SiteFailure,
    SiteNode,
    SiteRules,
    TickResult,
)
from hospitalnet.topology import from_edges
from hospitalnet.transport.base import Transport

DIM = 3


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: intra-op threads only add contention (10x+ on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Mailbox(Transport):
    """Sends are recorded; what is put in ``inbox`` is returned by the next poll."""

    def __init__(self, site):
        self.site = site
        self.sent: list[Message] = []
        self.inbox: list[Message] = []

    def send(self, message):
        self.sent.append(message)

    def poll(self):
        out, self.inbox = self.inbox, []
        return out

    def stats(self):
        return {}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Flaky(QuadraticObjective):
    """A quadratic whose gradient is NaN on the listed calls (1-based)."""

    def __init__(self, bad_calls, **kw):
        super().__init__(torch.ones(DIM), **kw)
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def loss_and_grad(self, w):
        self.calls += 1
        loss, grad = super().loss_and_grad(w)
        if self.calls in self.bad_calls:
            grad[0] = math.nan
        return loss, grad


def make_node(objective=None, algorithm=None, rules=None, every=2):
    topo = from_edges(["a", "b", "c"], [("a", "b"), ("a", "c")])
    ctx = make_context(
        topo, "a", w0=torch.zeros(DIM), num_samples={"a": 1, "b": 1, "c": 1},
        weights=site_weights(topo, {"a": 1, "b": 1, "c": 1}, "samples"),
        lr=0.1, weight_decay=0.0, exchange_every=every,
    )  # fmt: skip
    clock, box = Clock(), Mailbox("a")
    node = SiteNode(
        ctx, algorithm or PDMM(theta=0.5), objective or QuadraticObjective(torch.ones(DIM)), box,
        ExchangeSchedule(every, {"b": 0, "c": 1}), rules or SiteRules(), clock, steps=100,
    )  # fmt: skip
    return node, box, clock


def dual(sender, seq, step, value=0.0, receiver="a", payload=None):
    p = torch.full((DIM,), value) if payload is None else payload
    return Message(sender, receiver, MessageKind.DUAL, step, seq, p)


# ---- schedule ---------------------------------------------------------------------------------
def test_both_ends_of_an_edge_share_the_seeded_offset():
    a = ExchangeSchedule.for_site("n1", ["n2", "n3"], 8, seed=5)
    b = ExchangeSchedule.for_site("n2", ["n1", "n3"], 8, seed=5)
    assert a.offsets["n2"] == b.offsets["n1"]
    assert [k for k in range(1, 30) if "n2" in a.due(k)] == [
        k for k in range(1, 30) if "n1" in b.due(k)
    ]
    assert ExchangeSchedule.for_site("n1", ["n2"], 8, 5, staggered=False).offsets == {"n2": 0}


def test_schedule_count_matches_enumeration():
    s = ExchangeSchedule(8, {"x": 0, "y": 3})
    for steps in (0, 2, 3, 8, 17, 203):
        for nb in ("x", "y"):
            assert s.count(nb, steps) == sum(1 for k in range(1, steps + 1) if nb in s.due(k))


# ---- receive rules ----------------------------------------------------------------------------
def test_duplicates_and_older_sequence_numbers_are_ignored_and_counted():
    book = PeerBook("a", ["b"], SiteRules(), torch.zeros(DIM), now=0.0)
    assert book.admit(dual("b", 2, 2), own_step=2, now=1.0).value == "apply"
    assert book.admit(dual("b", 2, 2), own_step=3, now=1.0).value == "duplicate"
    assert book.admit(dual("b", 1, 1), own_step=3, now=1.0).value == "duplicate"
    assert book.stats()[("b", "a")].duplicates == 2


@pytest.mark.parametrize(
    "message, reason",
    [
        (dual("z", 1, 1), "unknown_sender"),
        (dual("b", 1, 1, receiver="c"), "wrong_receiver"),
        (Message("b", "a", MessageKind.DUAL, 1, 1, None), "missing_payload"),
        (dual("b", 1, 1, payload=torch.zeros(DIM + 1)), "shape"),
        (dual("b", 1, 1, payload=torch.zeros(DIM, dtype=torch.float64)), "dtype"),
        (dual("b", 1, 1, value=math.inf), "non_finite"),
        (dual("b", 1, 1, value=math.nan), "non_finite"),
    ],
)
def test_malformed_messages_are_rejected_by_reason(message, reason):
    book = PeerBook("a", ["b"], SiteRules(), torch.zeros(DIM), now=0.0)
    assert book.admit(message, own_step=1, now=0.0).value == "rejected"
    assert sum(st.rejected.get(reason, 0) for st in book.stats().values()) == 1


def test_a_message_later_than_the_staleness_bound_is_dropped():
    book = PeerBook("a", ["b"], SiteRules(staleness_bound=10), torch.zeros(DIM), now=0.0)
    assert book.admit(dual("b", 1, 8), own_step=9, now=0.0).value == "apply"
    # the sender advanced 8 steps, the receiver 8 + 11: the message arrived 11 steps late
    assert book.admit(dual("b", 2, 16), own_step=28, now=0.0).value == "stale"
    # the next one is judged against the stale one: the edge recovers
    assert book.admit(dual("b", 3, 24), own_step=37, now=0.0).value == "apply"
    assert book.stats()[("b", "a")].stale == 1


def test_a_steadily_slower_sender_is_not_stale():
    book = PeerBook("a", ["b"], SiteRules(staleness_bound=64), torch.zeros(DIM), now=0.0)
    for k in range(1, 200):  # a third of the receiver's speed: 16 steps of drift per message
        assert book.admit(dual("b", k, 8 * k), own_step=24 * k + 2, now=0.0).value == "apply"


# ---- the loop ---------------------------------------------------------------------------------
def test_tick_steps_and_sends_on_schedule_with_increasing_sequence_numbers():
    node, box, _ = make_node()
    for _ in range(6):
        assert node.tick() is TickResult.STEPPED
    # offsets b:0, c:1 with K=2: b after steps 2,4,6; c after 1,3,5
    assert [(m.receiver, m.step, m.seq) for m in box.sent] == [
        ("c", 1, 1), ("b", 2, 1), ("c", 3, 2), ("b", 4, 2), ("c", 5, 3), ("b", 6, 3),
    ]  # fmt: skip
    assert all(m.kind is MessageKind.DUAL for m in box.sent)


def test_outgoing_dual_is_z_minus_2_a_w():
    node, box, _ = make_node()
    node.tick()  # step 1, sends to c (A_{a|c} = +1)
    w = node.params
    z_c = node.state.z["c"]
    assert torch.equal(box.sent[0].payload, z_c - 2 * w)


def test_nonfinite_gradient_is_rolled_back_and_never_sent():
    node, box, _ = make_node(objective=Flaky(bad_calls={2}))
    assert node.tick() is TickResult.STEPPED
    before = node.params.clone()
    assert node.tick() is TickResult.ROLLED_BACK
    assert torch.equal(node.params, before) and node.step == 1 and node.nonfinite_steps == 1
    assert len(box.sent) == 1
    for _ in range(5):
        node.tick()
    assert node.step == 6
    assert all(torch.isfinite(m.payload).all() for m in box.sent)


def test_repeated_nonfinite_steps_stop_that_site_with_its_name():
    node, _, _ = make_node(
        objective=Flaky(bad_calls=range(3, 100)), rules=SiteRules(max_nonfinite_steps=4)
    )
    node.tick(), node.tick()
    for _ in range(3):
        assert node.tick() is TickResult.ROLLED_BACK
    with pytest.raises(SiteFailure, match="site a: 4 consecutive non-finite"):
        node.tick()


def test_silent_edge_goes_inactive_freezes_its_dual_and_revives_on_a_message():
    node, box, clock = make_node(rules=SiteRules(inactive_after=10))
    clock.t = 5.0
    box.inbox = [dual("c", 1, 1, value=1.0)]
    node.tick()
    clock.t = 12.0  # b silent for 12 > 10, c heard at 5
    node.tick()
    assert node.active_neighbours() == ["c"]
    assert node.state.active == {"b": False, "c": True}
    z_b = node.state.z["b"].clone()
    clock.t = 16.0
    node.tick()
    assert torch.equal(node.state.z["b"], z_b)  # frozen
    assert node.isolated is True  # c silent since 5
    box.inbox = [dual("b", 1, 3, value=2.0)]
    clock.t = 17.0
    node.tick()
    assert node.state.active["b"] is True and not node.isolated
    kinds = [(e.kind, e.peer) for e in node.events]
    assert kinds == [
        ("edge_inactive", "b"), ("edge_inactive", "c"), ("isolated", None),
        ("edge_active", "b"), ("reconnected", None),
    ]  # fmt: skip
    assert node.steps - node.step > 0  # it kept training throughout: one step per tick
    assert node.step == 4


def test_isolated_ecl_site_steps_exactly_like_local_sgd():
    a, _, clock = make_node(rules=SiteRules(inactive_after=1))
    b, _, clock_b = make_node(algorithm=Local(), rules=SiteRules(inactive_after=1))
    clock.t = clock_b.t = 5.0
    for _ in range(4):
        a.tick(), b.tick()
    assert a.isolated and torch.equal(a.params, b.params)


# ---- checkpoints ------------------------------------------------------------------------------
def _feed(node, box, clock, ticks, first_seq):
    """Tick with one dual from b and c every other tick (values from the tick number)."""
    for k in range(ticks):
        clock.t += 1.0
        if k % 2 == 0:
            n = first_seq + k
            box.inbox = [dual("b", n, n, value=0.1 * n), dual("c", n, n, value=-0.05 * n)]
        node.tick()


def test_site_node_state_dict_continues_exactly_where_it_was_taken():
    # prepare: a node after 7 ticks with c gone inactive, and its uninterrupted twin
    node, box, clock = make_node(rules=SiteRules(inactive_after=50))
    _feed(node, box, clock, 7, first_seq=1)
    node.state = node.algorithm.set_edge_active(node.state, "c", False)
    node.book.peers["c"].active = False
    tensors, meta = node.state_dict()
    fresh, fresh_box, fresh_clock = make_node(rules=SiteRules(inactive_after=50))
    fresh_clock.t = clock.t

    # execute: restore into a fresh node; continue both the same way
    fresh.load_state_dict(tensors, meta, seq_floor=1000)
    _feed(node, box, clock, 6, first_seq=20)
    _feed(fresh, fresh_box, fresh_clock, 6, first_seq=20)

    # assert: same model, duals, counters, losses and edge states; sends number above the floor
    assert torch.equal(fresh.params, node.params)
    for j in ("b", "c"):
        assert torch.equal(fresh.state.z[j], node.state.z[j])
    assert fresh.step == node.step == 13 and fresh.losses == node.losses
    assert fresh.state.active == node.state.active == {"b": True, "c": True}  # c heard again
    assert fresh.book.peers["b"].last_seq == node.book.peers["b"].last_seq == 24
    assert [m.seq for m in fresh_box.sent] == [
        1001 + k for k in range(len(fresh_box.sent) // 2) for _ in (0, 1)
    ]
    assert {f"state.{k}" for k in ("w", "z.b", "z.c")} <= set(tensors)
    assert "state.coupling" not in tensors  # a cache, re-summed after the restore


# ---- the two-way ecl exchange through the loop --------------------------------------------------
def test_ecl_answers_a_request_in_the_same_tick_and_both_ends_apply_the_same_difference():
    topo = from_edges(["a", "b"], [("a", "b")])
    assert topo.edge_sign("a", "b") == 1  # a owns the edge: it asks, b answers
    nodes, boxes = {}, {}
    for s in ("a", "b"):
        ctx = make_context(
            topo, s, w0=torch.zeros(DIM), num_samples={"a": 1, "b": 1},
            weights={s: 1.0}, lr=0.1, weight_decay=0.0, exchange_every=2, total_steps=100,
        )  # fmt: skip
        boxes[s] = Mailbox(s)
        centre = torch.ones(DIM) if s == "a" else -torch.ones(DIM)
        nodes[s] = SiteNode(
            ctx, ECL(dual_gain=0.3), QuadraticObjective(centre), boxes[s],
            ExchangeSchedule(2, {"a" if s == "b" else "b": 0}), SiteRules(), Clock(), steps=100,
        )  # fmt: skip
    nodes["a"].tick(), nodes["b"].tick()
    nodes["a"].tick(), nodes["b"].tick()  # step 2: the exchange is due; only the owner sends
    (request,) = boxes["a"].sent
    assert request.kind is MessageKind.DUAL and request.payload.numel() == 2 * DIM
    assert boxes["b"].sent == []
    w_a, w_b = nodes["a"].params.clone(), nodes["b"].params.clone()
    assert torch.equal(request.payload[:DIM], w_a)
    boxes["b"].inbox.append(request)
    nodes["b"].tick()  # receives, answers at once (before its own step 3), mixes, steps
    (answer,) = boxes["b"].sent
    d = w_b - w_a
    assert answer.kind is MessageKind.MODEL and torch.equal(answer.payload, d)
    assert answer.step == 2  # stamped with b's step when it answered
    # b: - W d (W = 1/(1 + 1) for two sites of degree 1), then its SGD step towards -1
    expected_b = w_b - 0.5 * d
    expected_b -= 0.1 * (expected_b + 1)
    assert torch.allclose(nodes["b"].params, expected_b, atol=1e-7)
    boxes["a"].inbox.append(answer)
    nodes["a"].tick()  # a: + W d (the same d), then its step towards +1; its dual is still 0
    expected_a = w_a + 0.5 * d
    expected_a -= 0.1 * (expected_a - 1)
    assert torch.allclose(nodes["a"].params, expected_a, atol=1e-7)


def test_schedule_final_step_fires_every_edge_once_more():
    s = ExchangeSchedule(8, {"x": 0, "y": 3}, final_step=21)
    assert s.due(21) == ("x", "y")
    for steps in (0, 8, 20, 21, 30):
        for nb in ("x", "y"):
            assert s.count(nb, steps) == sum(1 for k in range(1, steps + 1) if nb in s.due(k))
    assert ExchangeSchedule(8, {"x": 0}, final_step=24).count("x", 24) == 3  # on schedule anyway


def test_ecl_state_dict_round_trip_continues_exactly():
    topo = from_edges(["a", "b"], [("a", "b")])
    ctx = make_context(
        topo, "a", w0=torch.zeros(DIM), num_samples={"a": 1, "b": 1}, weights={"a": 1.0},
        lr=0.1, weight_decay=1e-3, exchange_every=2, total_steps=50,
    )  # fmt: skip
    algo = ECL(dual_gain=0.3)

    def work(state, k0):
        for k in range(k0, k0 + 3):
            state = algo.local_step(state, 0.0, torch.full((DIM,), 0.1 * k))
            (request,) = algo.outgoing(state, "b")  # a owns the edge
            d = torch.full((DIM,), -0.05 * k)
            state = algo.receive(state, Message("b", "a", MessageKind.MODEL, k, k, d))
        return state, request

    state, _ = work(algo.init(ctx), 1)
    tensors, meta = algo.state_dict(state)
    assert {"w", "lam.b", "lam_step.b"} <= set(tensors) and "correction" not in tensors
    fresh = algo.load_state_dict(algo.init(ctx), tensors, meta)
    state, req_a = work(state, 4)
    fresh, req_b = work(fresh, 4)
    assert torch.equal(state.w, fresh.w) and torch.equal(req_a.payload, req_b.payload)
    assert torch.equal(state.lam["b"], fresh.lam["b"]) and fresh.steps == state.steps == 6
