"""The requester's whole job as one pure machine: whom it dials, what it asks its driver, and
what a job leaves behind (the node's services and the simulator both carry out exactly this)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from p2pnode.errors import LocalProtocolError
from p2pnode.market.scoring import ObservedScorer
from p2pnode.market.standing import PeerStanding
from p2pnode.protocol.job_pipeline import Order, RequesterPipeline
from p2pnode.protocol.requester_actions import (
    Charge,
    Dial,
    OpenOutput,
    Penalise,
    PublishCheat,
    PublishOpinion,
    Ran,
    Record,
    RunElsewhere,
    Send,
)
from p2pnode.wire import job as m
from tests.protocol.job_pair import T0, identity
from tests.protocol.test_verdict import Market, Tokens


@dataclass(frozen=True)
class Ad:
    peer_id: bytes
    addrs: tuple[str, ...]
    offers: tuple[Any, ...] = ()
    speed: tuple[tuple[str, float], ...] = ()


def _pipeline(n: int, asked: int, *, policy: str = "none", probability: float = 1.0) -> tuple[RequesterPipeline, list[Ad]]:
    key, me = identity(0)
    ads = [Ad(identity(i)[1], (f"/ip4/10.0.0.{i}/tcp/1",)) for i in range(1, n + 1)]
    pipe = RequesterPipeline(me=me, key=key, order=Order("infer", {"seed": 1}, 1000, 60.0, policy=policy),
                             asked=ads[:asked], reserves=ads[asked:], job_id=b"J" * 16, nonce=b"N" * 16, now=T0,
                             scorer=ObservedScorer(), standing=PeerStanding(), checkers=Market(ads, probability),
                             outputs=Tokens(), rng=random.Random(1))
    return pipe, ads


def _bid(pipe: RequesterPipeline, ad: Ad, price: int = 10) -> m.Bid:
    return m.Bid(pipe.job.job, price, 1000, int((T0 + 30) * 1000), "numpy")


def _result(pipe: RequesterPipeline, i: int) -> m.Result:
    job = pipe.job
    key, peer = identity(i)
    return m.make_result(job.job, key, requester=job.me, provider=peer, nonce=job.rfb.nonce, digest=b"d" * 32,
                         output=b"out", kernel_ms=5, backend="numpy")


def test_reserves_are_dialed_only_when_nobody_acceptable_answers() -> None:
    pipe, ads = _pipeline(3, 1)
    assert pipe.start(T0) == [Dial(ads[0])]
    out = pipe.receive(ads[0].peer_id, m.Decline(pipe.job.job, "busy", "full"), T0 + 0.1, rtt_ms=5.0)
    assert out == [Dial(ads[1])]  # a batch as large as the first: each dial sends its own request for bids
    assert pipe.standing.has_answered(ads[0].peer_id)
    assert pipe.dial_failed(ads[1].peer_id, "refused", T0 + 0.2) == [Dial(ads[2])]
    assert pipe.standing.is_aside(ads[1].peer_id, T0 + 0.2)


def test_a_bid_from_a_reserve_that_was_not_asked_is_a_violation() -> None:
    pipe, ads = _pipeline(2, 1)
    pipe.start(T0)
    out = pipe.receive(ads[1].peer_id, _bid(pipe, ads[1]), T0 + 0.1, rtt_ms=5.0)
    assert [a.peer for a in out if isinstance(a, Penalise)] == [ads[1].peer_id]


def test_an_unavailable_output_is_re_awarded_and_its_provider_not_blamed() -> None:
    pipe, ads = _pipeline(2, 2, policy="rerun", probability=0.0)
    pipe.start(T0)
    for ad in ads:
        pipe.receive(ad.peer_id, _bid(pipe, ad, 10 if ad is ads[0] else 20), T0 + 0.1, rtt_ms=5.0)
    first = pipe.job.provider
    assert first == ads[0].peer_id
    out = pipe.receive(first, _result(pipe, 1), T0 + 1)
    assert isinstance(pipe.pending, OpenOutput) and pipe.pending in out
    assert pipe.next_wakeup() == float("inf")  # the conversation waits for the verdict
    out = pipe.unavailable("output unavailable: gone", T0 + 2)
    assert pipe.job.provider == ads[1].peer_id and any(isinstance(a.msg, m.Award) for a in out if isinstance(a, Send))
    pipe.receive(ads[1].peer_id, _result(pipe, 2), T0 + 3)
    pipe.opened(True, "accepted (unchecked)", 0, "", T0 + 4)
    assert pipe.terminal and pipe.state == "done" and pipe.price == 20
    left = pipe.close(T0 + 5)
    assert [(a.kind, a.data["reason"]) for a in left if isinstance(a, Record) and a.peer == first] == \
        [("failure", "output unavailable: gone")]
    assert [a.kind for a in left if isinstance(a, Record) and a.peer == ads[1].peer_id] == ["receipt", "credit"]
    assert Charge("job", 20) in left and not [a for a in left if isinstance(a, (PublishOpinion, PublishCheat))]


def test_a_checked_job_leaves_its_verification_receipt_charge_and_opinion() -> None:
    pipe, ads = _pipeline(4, 3, policy="rerun")
    pipe.start(T0)
    for ad in ads[:2]:  # the third never answers
        pipe.receive(ad.peer_id, _bid(pipe, ad, 10 if ad is ads[0] else 20), T0 + 0.1, rtt_ms=5.0)
    pipe.tick(T0 + 2.5)  # the bid window closes: the best bid wins
    pipe.receive(ads[0].peer_id, _result(pipe, 1), T0 + 3)
    out = pipe.opened(True, "accepted (unchecked)", 0, "", T0 + 4)
    (check,) = [a for a in out if isinstance(a, RunElsewhere)]
    assert check.ad.peer_id != ads[0].peer_id and pipe.pending == check
    pipe.ran(Ran(0, b"checker's result", b"K" * 16), T0 + 5)
    assert pipe.state == "done" and pipe.checked == "rerun" and pipe.outcome.startswith("verified:")
    left = pipe.close(T0 + 6)
    assert [(a.kind, a.data.get("passed")) for a in left if isinstance(a, Record)] == \
        [("verification", True), ("receipt", None), ("credit", None)]
    assert Charge("job", 10) in left and PublishOpinion(ads[0].peer_id) in left
    assert pipe.standing.is_aside(ads[2].peer_id, T0 + 6)  # asked and silent
    assert not pipe.standing.is_aside(ads[1].peer_id, T0 + 6)


def test_answers_nobody_asked_for_and_an_early_close_are_refused() -> None:
    pipe, _ = _pipeline(1, 1)
    pipe.start(T0)
    with pytest.raises(LocalProtocolError):
        pipe.opened(True, "", 0, "", T0)
    with pytest.raises(LocalProtocolError):
        pipe.ran(None, T0)
    with pytest.raises(LocalProtocolError):
        pipe.close(T0)
    with pytest.raises(LocalProtocolError):
        _pipeline(1, 0)
