"""What the calibration job sent at first contact may cost: said before it is sent, and never more
than the job it is made for may cost (else it waits for a larger job)."""

from __future__ import annotations

from typing import Any

from p2pnode.identity import Identity
from p2pnode.services.checks import Checks
from p2pnode.services.records import JobRecord
from tests.services.fakes import ListJudge, ad_for, virtual_now


class Submits:
    def __init__(self) -> None:
        self.max_prices: list[int] = []

    async def __call__(self, workload: str, params: dict[str, Any], *, max_price: int, **kw: Any) -> JobRecord:
        self.max_prices.append(max_price)
        return JobRecord("ab" * 16, "requester", workload, params, started=0.0, state="no_provider")


class Stranger(ListJudge):
    def known(self, peer: bytes) -> bool:
        return False  # no history with anyone: everyone met is calibrated


def _checks(submit: Submits) -> Checks:
    return Checks(me=b"requester", now=virtual_now, judge=Stranger(), candidates=lambda *a: [], submit=submit,
                  latency_ms=lambda p: 1.0, calibrate_providers=True)


async def test_calibration_is_said_before_bounded_by_the_jobs_max_price_or_left_for_a_larger_job() -> None:
    # a fast provider at 100 µcr/GFLOP: its calibration, a 1024³ fp32 product (2.15 GFLOP), costs 215 µcr
    ad = ad_for(Identity.generate(), virtual_now(), price=100, gflops=10_000.0)
    submit, events = Submits(), []
    checks = _checks(submit)
    await checks.calibrate(ad, lambda what, data: events.append((what, data)), 4)  # for a job of at most 4 µcr
    assert submit.max_prices == []  # not sent: it would cost 50 times the job
    assert events == [("calibration_skipped", {"peer": ad.peer_id, "n": 1024, "cost": 215, "limit": 4})]
    assert checks.needs_calibration(ad)  # a later, larger job calibrates it
    events.clear()
    await checks.calibrate(ad, lambda what, data: events.append((what, data)), 300)
    assert events[0] == ("calibrate", {"peer": ad.peer_id, "n": 1024, "cost": 215, "max_price": 300})
    assert submit.max_prices == [300] and not checks.needs_calibration(ad)
    rich = Submits()
    await _checks(rich).calibrate(ad, lambda what, data: None, 10**6)
    assert rich.max_prices == [430]  # room for its price to double before it bids, no more (it was 1000 + 2x)
