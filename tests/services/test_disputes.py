"""Disputes settled by referees, with the checking jobs themselves faked: which peers run a re-run,
who is marked when they disagree, and that two liars cannot frame an honest provider. The verdict
machine decides; the node's :class:`Checks` runs what it asks for and carries out what it leaves."""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from p2pnode.exec.workloads import Output
from p2pnode.identity import Identity
from p2pnode.protocol import verdict as verdict_mod
from p2pnode.protocol.requester_actions import Question, Settle
from p2pnode.protocol.verdict import Verdict
from p2pnode.services.checks import Checks, carry_out
from p2pnode.services.records import JobRecord
from p2pnode.verify.check import Comparison
from tests.services.fakes import ListJudge, ad_for, virtual_now

PARAMS = {"m": 8, "n": 8, "k": 8, "dtype": "fp32", "seed": 1}
RIGHT = Output({"c": np.ones((8, 8), np.float32)}, {})


def wrong(i: int) -> Output:
    return Output({"c": np.full((8, 8), 10.0 + i, np.float32)}, {})


class Market:
    """Providers at their own addresses, each answering a re-run with a fixed output (or failing)."""

    def __init__(self, answers: list[Output | None]) -> None:
        self.ids = [Identity.generate() for _ in answers]
        self.ads = []
        for i, ident in enumerate(self.ids):
            ad = ad_for(ident, virtual_now(), price=100 + i)
            self.ads.append(dataclasses.replace(ad, addrs=(f"/ip4/127.0.0.{i + 2}/tcp/1",)))
        self.answers = {ad.peer_id: a for ad, a in zip(self.ads, answers, strict=True)}
        self.asked: list[bytes] = []

    def candidates(self, workload: str, *_: Any) -> list[Any]:
        return list(self.ads)

    async def submit(self, workload: str, params: dict[str, Any], *, only: list[Any], deadline_s: float,
                     **_: Any) -> JobRecord:
        (ad,) = only
        assert 0 < deadline_s <= verdict_mod.CHECK_DEADLINE_S
        self.asked.append(ad.peer_id)
        out = self.answers[ad.peer_id]
        rec = JobRecord(job=ad.peer_id[:16].hex(), role="requester", workload=workload, params=params, started=0.0)
        if out is not None:
            rec.state, rec.output, rec.result_raw = "done", out, b"signed result of " + ad.peer_id
        else:
            rec.state = "failed"
        return rec


class Checking(ListJudge):
    def check_probability(self, workload: str, peer: bytes) -> float:
        return 1.0  # every result is re-run


async def dispute(answers: list[Output | None]) -> tuple[Settle, Market, ListJudge]:
    """Node 0 is the provider whose result (``answers[0]``) is checked; the rest may be asked."""
    market, judge = Market(answers), Checking()
    checks = Checks(me=b"requester", now=virtual_now, judge=judge, candidates=market.candidates,
                    submit=market.submit, latency_ms=lambda p: 1.0, calibrate_providers=False)
    assert answers[0] is not None
    result = SimpleNamespace(raw=b"provider's result", body={"provider": market.ads[0].peer_id})
    verdict = Verdict(b"requester", b"\xab" * 16, "matmul", "rerun", "job", market.ads[0], result,  # type: ignore[arg-type]
                      PARAMS, {}, checks.checkers("matmul", ""), Comparison("matmul"), random.Random(1))
    verdict.start()
    actions = verdict.opened(True, "accepted (unchecked)", answers[0], "", virtual_now())
    while verdict.pending is not None:
        actions += await checks.answer(verdict, verdict.pending, workload="matmul", backend="", max_price=10**6)
    for action in actions:
        assert isinstance(action, Question) or await carry_out(judge, action)
    assert verdict.settled is not None
    return verdict.settled, market, judge


def disputes(judge: ListJudge) -> list[str]:
    return [d["wrong"] for k, d, _ in judge.entries if k == "dispute"]


async def test_an_agreeing_checker_verifies_without_a_referee() -> None:
    out, market, judge = await dispute([RIGHT, RIGHT, RIGHT])
    assert out.accepted and out.checked == "rerun" and len(market.asked) == 1 and not judge.entries


async def test_the_referee_sides_with_the_honest_run() -> None:
    out, _, judge = await dispute([RIGHT, wrong(1), RIGHT])  # the checker lies
    assert out.accepted and out.checked == "rerun" and disputes(judge) == ["checker"]
    assert judge.published == [("cheat", judge.entries[0][1]["checker"])]
    out, market, judge = await dispute([wrong(0), RIGHT, RIGHT])  # the provider lies
    assert not out.accepted and out.checked == "rerun" and disputes(judge) == ["provider"]
    assert judge.published == [("cheat", market.ads[0].peer_id)]


async def test_a_lying_checker_and_referee_cannot_frame_an_honest_provider() -> None:
    # checker and first referee lie (differently); the second referee is honest and settles it
    out, market, judge = await dispute([RIGHT, wrong(1), wrong(2), RIGHT])
    assert out.accepted and out.checked == "rerun" and len(market.asked) == 3
    assert disputes(judge) == ["inconclusive", "checker"]
    # only liars left to ask: inconclusive, not paid, and nobody marked
    out, market, judge = await dispute([RIGHT, wrong(1), wrong(2), wrong(3)])
    assert not out.accepted and not out.checked and len(market.asked) == 1 + verdict_mod.MAX_REFEREES
    assert disputes(judge) == ["inconclusive"] * verdict_mod.MAX_REFEREES and not judge.published


async def test_a_referee_that_fails_is_replaced_and_none_left_settles_nothing() -> None:
    out, market, judge = await dispute([RIGHT, wrong(1), None, RIGHT])
    assert out.accepted and disputes(judge) == ["checker"] and len(market.asked) == 3
    out, _, judge = await dispute([RIGHT, wrong(1)])  # no referee at all
    assert not out.accepted and not out.checked and not judge.entries


@pytest.mark.parametrize("answers", [[RIGHT, None], [RIGHT]])
async def test_a_check_that_cannot_run_accepts_unverified(answers: list[Output | None]) -> None:
    out, _, judge = await dispute(answers)
    assert out.accepted and not out.checked and not judge.entries
