"""The per-edge silence deadline (TCP's RTO rule, RFC 6298) and how the receive side uses it.
Expected values are computed by hand from the RFC's update equations."""

from __future__ import annotations

import pytest
import torch

from hospitalnet.deadline import GapDeadline
from hospitalnet.messages import Message, MessageKind
from hospitalnet.peers import PeerBook, SiteRules


def test_first_gap_sets_mean_and_half_deviation():
    d = GapDeadline(floor=3.0, cap=30.0)
    assert d.deadline == 3.0  # nothing observed: the floor
    d.observe(2.0)
    assert (d.srtt, d.rttvar) == (2.0, 1.0)
    assert d.deadline == 2.0 + 4 * 1.0


def test_updates_follow_rfc_6298_by_hand():
    d = GapDeadline(floor=1.0, cap=100.0)
    d.observe(2.0)
    d.observe(4.0)
    # rttvar = 3/4 * 1 + 1/4 * |2 - 4| = 1.25 (with the old srtt); srtt = 7/8 * 2 + 1/8 * 4 = 2.25
    assert d.rttvar == pytest.approx(1.25) and d.srtt == pytest.approx(2.25)
    assert d.deadline == pytest.approx(2.25 + 4 * 1.25)
    d.observe(1.0)
    # rttvar = 3/4 * 1.25 + 1/4 * |2.25 - 1| = 1.25; srtt = 7/8 * 2.25 + 1/8 * 1 = 2.09375
    assert d.rttvar == pytest.approx(1.25) and d.srtt == pytest.approx(2.09375)


def test_steady_fast_gaps_fall_to_the_floor_and_slow_gaps_stop_at_the_cap():
    fast = GapDeadline(floor=3.0, cap=30.0)
    for _ in range(50):
        fast.observe(0.2)
    # srtt stays 0.2 and rttvar decays as 0.1 * 0.75**49: the deadline is the floor
    assert fast.srtt == pytest.approx(0.2) and fast.deadline == 3.0

    slow = GapDeadline(floor=3.0, cap=30.0)
    slow.observe(20.0)  # 20 + 4 * 10 = 60 > cap
    assert slow.deadline == 30.0


def test_steady_slow_edge_gets_a_deadline_above_its_gap():
    d = GapDeadline(floor=3.0, cap=30.0)
    for gap in (5.0, 5.5, 4.5, 5.0):
        d.observe(gap)
    assert 5.0 < d.deadline < 30.0


def test_negative_gap_is_ignored_and_bad_limits_refused():
    d = GapDeadline(floor=3.0, cap=30.0)
    d.observe(-1.0)
    assert d.srtt is None
    with pytest.raises(ValueError):
        GapDeadline(floor=0.0, cap=1.0)
    with pytest.raises(ValueError):
        GapDeadline(floor=5.0, cap=1.0)


def test_state_round_trip():
    d = GapDeadline(floor=3.0, cap=30.0)
    d.observe(4.0)
    d.observe(6.0)
    e = GapDeadline(floor=3.0, cap=30.0)
    e.load_state_dict(d.state_dict())
    assert (e.srtt, e.rttvar, e.deadline) == (d.srtt, d.rttvar, d.deadline)


# --------------------------------------------------------------------------- in the PeerBook


def _book(cap: float | None) -> PeerBook:
    rules = SiteRules(inactive_after=3.0, inactive_cap=cap)
    return PeerBook("n1", ["n2", "n3"], rules, torch.zeros(4), now=0.0)


def _hear(book: PeerBook, sender: str, seq: int, now: float) -> None:
    msg = Message(sender, "n1", MessageKind.DUAL, step=seq, seq=seq, payload=torch.zeros(4))
    book.admit(msg, own_step=seq, now=now)


def test_a_slow_but_steady_edge_stays_active_where_a_fixed_d_drops_it():
    for cap, dropped in ((None, ["n2"]), (30.0, [])):
        book = _book(cap)
        for k in range(1, 6):  # n2 every 5 s, n3 every 0.5 s
            _hear(book, "n2", k, now=5.0 * k)
        for k in range(1, 60):
            _hear(book, "n3", k, now=0.5 * k)
        # 4 s after n2's last message: later than the fixed D = 3, within n2's usual pace
        assert book.went_silent(29.0) == dropped, cap


def test_a_fast_edge_still_goes_inactive_after_the_floor():
    book = _book(30.0)
    for k in range(1, 40):
        _hear(book, "n3", k, now=0.1 * k)
        _hear(book, "n2", k, now=0.1 * k)
    last = 3.9
    assert book.silence_allowed("n3") == 3.0
    assert book.went_silent(last + 2.9) == []
    assert book.went_silent(last + 3.1) == ["n2", "n3"]


def test_a_dead_slow_edge_goes_inactive_after_its_learned_deadline():
    book = _book(30.0)
    for k in range(1, 8):
        _hear(book, "n2", k, now=5.0 * k)
        _hear(book, "n3", k, now=5.0 * k)
    allowed = book.silence_allowed("n2")
    assert 5.0 < allowed < 30.0
    assert book.went_silent(35.0 + allowed - 0.01) == []
    assert set(book.went_silent(35.0 + allowed + 0.01)) == {"n2", "n3"}


def test_learned_deadlines_survive_a_checkpoint():
    book = _book(30.0)
    for k in range(1, 6):
        _hear(book, "n2", k, now=5.0 * k)
    saved = book.state_dict()
    again = _book(30.0)
    again.load_state_dict(saved, now=100.0)
    assert again.silence_allowed("n2") == book.silence_allowed("n2") > 3.0
    # a checkpoint written without learned deadlines (older, or fixed D) still loads
    old = {
        name: {k: v for k, v in marks.items() if k != "deadline"} for name, marks in saved.items()
    }
    plain = _book(30.0)
    plain.load_state_dict(old, now=100.0)
    assert plain.silence_allowed("n2") == 3.0
