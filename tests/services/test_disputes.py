"""Disputes settled by referees, with the checking jobs themselves faked: which peers run a re-run,
who is marked when they disagree, and that two liars cannot frame an honest provider."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from p2pnode.exec.workloads import Output
from p2pnode.identity import Identity
from p2pnode.services import checks as checks_mod
from p2pnode.services.checks import Checks
from p2pnode.services.records import JobRecord
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
        assert 0 < deadline_s <= checks_mod.CHECK_DEADLINE_S
        self.asked.append(ad.peer_id)
        out = self.answers[ad.peer_id]
        rec = JobRecord(job=ad.peer_id[:16].hex(), role="requester", workload=workload, params=params, started=0.0)
        if out is not None:
            rec.state, rec.output, rec.result_raw = "done", out, b"signed result of " + ad.peer_id
        else:
            rec.state = "failed"
        return rec


async def dispute(answers: list[Output | None]) -> tuple[checks_mod.CheckOutcome, Market, ListJudge]:
    """Node 0 is the provider whose result (``answers[0]``) is checked; the rest may be asked."""
    market, judge = Market(answers), ListJudge()
    checks = Checks(me=b"requester", now=virtual_now, judge=judge, candidates=market.candidates,
                    submit=market.submit, latency_ms=lambda p: 1.0, calibrate_providers=False)
    rec = JobRecord(job="ab" * 16, role="requester", workload="matmul", params=PARAMS, started=0.0)
    assert answers[0] is not None
    out = await checks.rerun(rec, market.ads[0], b"provider's result", answers[0], PARAMS, {}, 10**6, "",
                             lambda e, d: None)
    return out, market, judge


def disputes(judge: ListJudge) -> list[str]:
    return [d["wrong"] for k, d, _ in judge.entries if k == "dispute"]


async def test_an_agreeing_checker_verifies_without_a_referee() -> None:
    out, market, judge = await dispute([RIGHT, RIGHT, RIGHT])
    assert out.passed and out.settled and len(market.asked) == 1 and not judge.entries


async def test_the_referee_sides_with_the_honest_run() -> None:
    out, _, judge = await dispute([RIGHT, wrong(1), RIGHT])  # the checker lies
    assert out.passed and out.settled and disputes(judge) == ["checker"]
    assert judge.published == [("cheat", judge.entries[0][1]["checker"])]
    out, market, judge = await dispute([wrong(0), RIGHT, RIGHT])  # the provider lies
    assert not out.passed and out.settled and disputes(judge) == ["provider"]
    assert judge.published == [("cheat", market.ads[0].peer_id)]


async def test_a_lying_checker_and_referee_cannot_frame_an_honest_provider() -> None:
    # checker and first referee lie (differently); the second referee is honest and settles it
    out, market, judge = await dispute([RIGHT, wrong(1), wrong(2), RIGHT])
    assert out.passed and out.settled and len(market.asked) == 3
    assert disputes(judge) == ["inconclusive", "checker"]
    # only liars left to ask: inconclusive, not paid, and nobody marked
    out, market, judge = await dispute([RIGHT, wrong(1), wrong(2), wrong(3)])
    assert not out.passed and not out.settled and len(market.asked) == 1 + checks_mod.MAX_REFEREES
    assert disputes(judge) == ["inconclusive"] * checks_mod.MAX_REFEREES and not judge.published


async def test_a_referee_that_fails_is_replaced_and_none_left_settles_nothing() -> None:
    out, market, judge = await dispute([RIGHT, wrong(1), None, RIGHT])
    assert out.passed and disputes(judge) == ["checker"] and len(market.asked) == 3
    out, _, judge = await dispute([RIGHT, wrong(1)])  # no referee at all
    assert not out.passed and not out.settled and not judge.entries


@pytest.mark.parametrize("answers", [[RIGHT, None], [RIGHT]])
async def test_a_check_that_cannot_run_accepts_unverified(answers: list[Output | None]) -> None:
    out, _, judge = await dispute(answers)
    assert out.passed and not out.ran and not judge.entries
