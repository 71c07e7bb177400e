from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pnode.protocol.job_provider import P
from p2pnode.protocol.job_requester import R, Scorer
from p2pnode.wire import job as m
from tests.protocol.job_pair import T0, Conversation


def run_auction(c: Conversation, prices: list[int], now: float = T0 + 0.1) -> None:
    c.deliver(c.requester.start(), T0)
    for (peer, prov), price in zip(c.providers.items(), prices, strict=True):
        c.reply(peer, prov.bid(price, 100, now + 30, "numpy"), now)


def test_the_whole_conversation() -> None:
    c = Conversation.make(3)
    run_auction(c, [300, 200, 250])
    r = c.requester
    winner = r.provider
    assert r.state is R.RUNNING and r.bids[winner].price == 200  # type: ignore[index]
    prov = c.providers[winner]  # type: ignore[index]
    assert prov.state is P.RUNNING  # award and inputs arrived
    c.reply(winner, prov.progress(0.5), T0 + 1)  # type: ignore[arg-type]
    assert r.progress == 0.5
    c.reply(winner, prov.done(c.result_for(winner, T0 + 2), T0 + 2), T0 + 2)  # type: ignore[arg-type]
    assert r.state is R.VERIFYING and r.result is not None
    c.deliver(r.verified(True, "verified"), T0 + 3)
    assert r.state is R.DONE and prov.state is P.DONE
    assert r.receipt is not None and r.receipt.body["paid"] == 200
    losers = [p for p in c.providers.values() if p.rfb.job and p is not prov]
    for loser in losers:  # the others never got an award; their bids simply expire
        assert loser.state is P.BID_SENT
        loser.tick(T0 + 31)
        assert loser.state is P.NOT_AWARDED
    assert [d for d, _, msg in c.wire if isinstance(msg, m.Award)] == ["->"]


def test_reaward_when_the_winner_fails() -> None:
    c = Conversation.make(3)
    run_auction(c, [100, 200, 300])
    first = c.requester.provider
    c.reply(first, c.providers[first].failed("oom", "out of memory"), T0 + 1)  # type: ignore[arg-type, index]
    second = c.requester.provider
    assert second != first and c.requester.bids[second].price == 200  # type: ignore[index]
    assert c.providers[second].state is P.RUNNING  # type: ignore[index]
    assert c.requester.failed[first].startswith("oom")  # type: ignore[index]


def test_reaward_when_the_winner_goes_quiet() -> None:
    c = Conversation.make(2, stall_s=5.0)
    run_auction(c, [100, 200])
    first = c.requester.provider
    c.deliver(c.requester.tick(T0 + 6), T0 + 6)
    assert c.requester.provider != first and c.requester.state is R.RUNNING
    assert c.providers[first].state is P.CANCELLED  # type: ignore[index]  # told to stop


def test_an_overrun_with_moving_progress_gets_more_time_and_one_without_is_no_fault() -> None:
    c = Conversation.make(3, overdue_grace_s=1.0, stall_s=100.0)
    run_auction(c, [100, 200, 300])  # awarded at T0 + 0.1 on a 100 ms estimate: due 1.3 s later
    r = c.requester
    first = r.provider
    assert first is not None
    c.reply(first, c.providers[first].progress(0.3), T0 + 1.0)
    c.deliver(r.tick(T0 + 1.5), T0 + 1.5)
    assert r.provider == first and r.state is R.RUNNING and not r.failed  # slower, but working
    c.reply(first, c.providers[first].progress(0.3), T0 + 2.0)  # talking, not moving
    c.deliver(r.tick(T0 + 2.9), T0 + 2.9)
    assert r.provider != first and "overran" in r.failed[first] and r.overran == {first}
    second = r.provider
    assert second is not None  # its own executor stopped it at its limit: ran long, no fault either
    c.reply(second, c.providers[second].failed("timeout", "exceeded its 60 s timeout"), T0 + 3.0)
    third = r.provider
    assert third is not None and r.overran == {first, second}
    c.reply(third, c.providers[third].failed("kernel_error", "boom"), T0 + 3.5)  # a failure is one
    assert r.state is R.NO_PROVIDER and third in r.failed and third not in r.overran


def test_the_first_allowance_gives_the_inputs_time_to_cross() -> None:
    """The bid estimates the compute; 10 MiB of inputs get 10 s more (at 1 MiB/s) before an overrun."""
    c = Conversation.make(2, overdue_grace_s=1.0, stall_s=100.0, input_bytes=10 << 20)
    run_auction(c, [100, 200])  # awarded at T0 + 0.1: due at T0 + 1.4 + 10
    first = c.requester.provider
    c.deliver(c.requester.tick(T0 + 11.0), T0 + 11.0)
    assert c.requester.provider == first and not c.requester.failed
    c.deliver(c.requester.tick(T0 + 11.6), T0 + 11.6)
    assert c.requester.provider != first and c.requester.overran == {first}


def test_no_provider_when_all_fail_or_decline() -> None:
    c = Conversation.make(2)
    c.deliver(c.requester.start(), T0)
    (a, pa), (b, pb) = c.providers.items()
    c.reply(a, pa.decline("busy"), T0)
    c.reply(b, pb.bid(10, 1, T0 + 30, "numpy"), T0)
    c.reply(b, c.providers[b].failed("kernel_error", "boom"), T0 + 1)
    assert c.requester.state is R.NO_PROVIDER and c.requester.declines == {a: "busy"}


def test_reserves_are_asked_when_nobody_acceptable_answers() -> None:
    c = Conversation.make(6, reserve=4)  # two asked first, then the reserves two at a time
    r = c.requester
    c.deliver(r.start(), T0)
    assert set(c.providers) == set(r.candidates) and len(r.candidates) == 2
    first = list(r.candidates)
    c.reply(first[0], c.providers[first[0]].decline("busy", "unreachable"), T0)
    step = r.tick(T0 + 2.5)  # the other stayed silent through the bid window
    c.deliver(step, T0 + 2.5)
    assert r.state is R.COLLECTING and len(step.ask) == 2 and set(step.ask) <= set(c.providers)
    assert all(isinstance(msg, m.RequestForBids) for _, msg in step.send)
    late = step.ask[1]
    c.reply(late, c.providers[late].bid(50, 100, T0 + 30, "numpy"), T0 + 3)
    c.deliver(r.tick(T0 + 5), T0 + 5)
    assert r.state is R.RUNNING and r.provider == late
    assert c.providers[late].state is P.RUNNING


def test_reserves_are_asked_when_every_bidder_failed() -> None:
    c = Conversation.make(3, reserve=2)
    r = c.requester
    run_auction(c, [100])
    only = r.provider
    step = c.reply(only, c.providers[only].failed("crashed", "gone"), T0 + 1)  # type: ignore[arg-type, index]
    assert r.state is R.COLLECTING and r.provider is None and len(step.ask) == 1
    nxt = step.ask[0]
    c.reply(nxt, c.providers[nxt].bid(100, 100, T0 + 30, "numpy"), T0 + 1.5)
    assert r.state is R.RUNNING and r.provider == nxt


def test_a_bid_that_comes_after_the_window_still_wins_when_nothing_else_came() -> None:
    c = Conversation.make(2)  # a busy machine: the providers answer after the bid window
    r = c.requester
    c.deliver(r.start(), T0)
    (a, pa), (b, pb) = c.providers.items()
    c.reply(a, pa.decline("busy"), T0 + 1)
    c.deliver(r.tick(T0 + 2.5), T0 + 2.5)
    assert r.state is R.COLLECTING and r.next_wakeup() == T0 + 4.5
    c.deliver(r.tick(T0 + 4.5), T0 + 4.5)  # still waiting, a window at a time
    c.reply(b, pb.bid(50, 100, T0 + 30, "numpy"), T0 + 5)
    assert r.state is R.RUNNING and r.provider == b
    # and once nobody is left to answer, no more waiting
    d = Conversation.make(1)
    d.deliver(d.requester.start(), T0)
    (p, pp), = d.providers.items()
    d.reply(p, pp.decline("busy"), T0 + 3)
    assert d.requester.state is R.NO_PROVIDER


def test_no_reserves_are_asked_without_time_for_a_bid_window() -> None:
    c = Conversation.make(2, reserve=1, deadline_s=3.0)
    r = c.requester
    c.deliver(r.start(), T0)
    step = r.tick(T0 + 2.0)  # a window of 2 s would end past the deadline
    assert r.state is R.NO_PROVIDER and not step.ask


def test_overpriced_bids_are_refused_and_reported() -> None:
    c = Conversation.make(1, max_price=100)
    c.deliver(c.requester.start(), T0)
    (peer, prov), = c.providers.items()
    step = c.reply(peer, prov.bid(101, 1, T0 + 30, "numpy"), T0)
    assert step.violation is not None and c.requester.state is R.NO_PROVIDER


def test_cancel_from_the_requester() -> None:
    c = Conversation.make(2)
    run_auction(c, [1, 2])
    winner = c.requester.provider
    c.deliver(c.requester.cancel("changed my mind"), T0 + 1)
    assert c.requester.state is R.CANCELLED and c.providers[winner].state is P.CANCELLED  # type: ignore[index]


def test_cancel_from_the_provider_reawards() -> None:
    c = Conversation.make(2)
    run_auction(c, [1, 2])
    winner = c.requester.provider
    c.reply(winner, c.providers[winner].cancel("shutting down"), T0 + 1)  # type: ignore[arg-type, index]
    assert c.requester.provider != winner and c.requester.state is R.RUNNING


def test_deadlines_end_both_sides() -> None:
    c = Conversation.make(2, deadline_s=10)
    run_auction(c, [1, 2])
    c.deliver(c.requester.tick(T0 + 10), T0 + 10)
    assert c.requester.state is R.EXPIRED
    for prov in c.providers.values():
        prov.tick(T0 + 10)
        assert prov.terminal


def test_requester_vanishing_frees_the_provider() -> None:
    c = Conversation.make(1)
    run_auction(c, [5])
    prov = next(iter(c.providers.values()))
    prov.done(c.result_for(prov.me, T0 + 1), T0 + 1)
    prov.tick(T0 + 1 + 61)  # no receipt ever comes
    assert prov.state is P.UNCONFIRMED


def test_award_checks() -> None:
    c = Conversation.make(1)
    c.deliver(c.requester.start(), T0)
    prov = next(iter(c.providers.values()))
    prov.bid(50, 1, T0 + 30, "numpy")
    wrong_price = m.make_award(prov.job, c.requester.key, requester=c.requester.me, provider=prov.me,
                               nonce=c.requester.rfb.nonce, price=49, deadline_ms=c.requester.rfb.deadline_ms)
    with pytest.raises(RemoteProtocolError, match="price 49"):
        prov.receive(wrong_price, T0 + 1)
    assert prov.state is P.ERROR


def test_local_misuse_is_a_local_error() -> None:
    c = Conversation.make(1)
    c.deliver(c.requester.start(), T0)
    prov = next(iter(c.providers.values()))
    with pytest.raises(LocalProtocolError):
        prov.progress(0.5)
    with pytest.raises(LocalProtocolError):
        c.requester.verified(True, "x")


def test_scorer_plugs_in_reputation() -> None:
    class Distrust(Scorer):
        def adjust(self, peer: bytes) -> float:
            return 10.0 if peer == cheapest else 1.0

    c = Conversation.make(2)
    peers = list(c.provider_keys)
    cheapest = peers[0]
    c.requester.scorer = Distrust()
    c.deliver(c.requester.start(), T0)
    c.reply(peers[0], c.providers[peers[0]].bid(10, 1, T0 + 30, "numpy"), T0)
    c.reply(peers[1], c.providers[peers[1]].bid(20, 1, T0 + 30, "numpy"), T0)
    assert c.requester.provider == peers[1]


# hypothesis: any sequence of events -------------------------------------------------------------

PROVIDER_EVENTS = st.lists(st.sampled_from(
    ["bid", "decline", "progress", "done", "failed", "cancel", "award", "award_bad", "inputs", "receipt",
     "recv_cancel", "recv_bid", "tick"]), max_size=12)


@settings(max_examples=300)
@given(PROVIDER_EVENTS, st.floats(0, 100))
def test_provider_any_events_valid_or_protocol_error_and_ends_by_deadline(events: list[str], dt: float) -> None:
    c = Conversation.make(1, deadline_s=50)
    c.deliver(c.requester.start(), T0)
    prov = next(iter(c.providers.values()))
    r = c.requester
    now = T0
    for e in events:
        now += dt / 10
        try:
            if e == "bid":
                prov.bid(5, 1, now + 10, "numpy")
            elif e == "decline":
                prov.decline("busy")
            elif e == "progress":
                prov.progress(0.3)
            elif e == "done":
                prov.done(c.result_for(prov.me, now), now)
            elif e == "failed":
                prov.failed("oom", "x")
            elif e == "cancel":
                prov.cancel("x")
            elif e in ("award", "award_bad"):
                prov.receive(m.make_award(prov.job, r.key, requester=r.me, provider=prov.me, nonce=r.rfb.nonce,
                                          price=5 if e == "award" else 6, deadline_ms=r.rfb.deadline_ms), now)
            elif e == "inputs":
                prov.receive(m.Inputs(prov.job), now)
            elif e == "receipt":
                prov.receive(m.make_receipt(prov.job, r.key, requester=r.me, provider=prov.me, nonce=r.rfb.nonce,
                                            accepted=True, outcome="ok", paid=5), now)
            elif e == "recv_cancel":
                prov.receive(m.Cancel(prov.job, "x"), now)
            elif e == "recv_bid":
                prov.receive(m.Bid(prov.job, 1, 1, 1, "x"), now)
            else:
                prov.tick(now)
        except ProtocolError:
            pass
        assert isinstance(prov.state, P)
    prov.tick(T0 + 50 + 61)
    assert prov.terminal


REQUESTER_EVENTS = st.lists(st.tuples(
    st.sampled_from(["bid", "decline", "progress", "result", "bad_result", "failed", "cancel_msg", "verified",
                     "cancel", "tick", "stranger", "award_msg"]),
    st.integers(0, 2), st.floats(0, 20)), max_size=15)


@pytest.mark.parametrize("reserve", [0, 2])
@settings(max_examples=300)
@given(REQUESTER_EVENTS)
def test_requester_any_events_valid_or_local_error_and_ends_by_deadline(reserve: int,
                                                                        events: list[tuple[str, int, float]]) -> None:
    c = Conversation.make(3, deadline_s=60, stall_s=5, reserve=reserve)
    r = c.requester
    c.deliver(r.start(), T0)
    peers = list(c.provider_keys)
    now = T0
    for kind, i, dt in events:
        now += dt
        peer = peers[i]
        try:
            if kind == "bid":
                r.receive(peer, m.Bid(r.job, 10 + i, 5, int((now + 30) * 1000), "numpy"), now)
            elif kind == "decline":
                r.receive(peer, m.Decline(r.job, "busy", ""), now)
            elif kind == "progress":
                r.receive(peer, m.Progress(r.job, 0.5), now)
            elif kind in ("result", "bad_result"):
                res = c.result_for(peer, now)
                if kind == "bad_result":
                    res = m.make_result(r.job, c.provider_keys[peer], requester=peer, provider=peer,
                                        nonce=r.rfb.nonce, digest=b"x" * 32, output=b"", kernel_ms=1, backend="x")
                r.receive(peer, res, now)
            elif kind == "failed":
                r.receive(peer, m.Failed(r.job, "oom", ""), now)
            elif kind == "cancel_msg":
                r.receive(peer, m.Cancel(r.job, ""), now)
            elif kind == "award_msg":
                r.receive(peer, m.Inputs(r.job), now)
            elif kind == "stranger":
                r.receive(b"\x00" * 38, m.Progress(r.job, 0.1), now)
            elif kind == "verified":
                r.verified(i == 0, "checked")
            elif kind == "cancel":
                r.cancel("user")
            else:
                r.tick(now)
        except LocalProtocolError:
            assert kind in ("verified", "cancel"), f"a peer's {kind} raised a local error"
        assert isinstance(r.state, R)
    r.tick(T0 + 60)
    assert r.terminal
