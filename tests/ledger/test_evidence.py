"""The reputation table is a fold of the ledger: each entry kind moves it as specs/reputation.md says."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from p2pnode.ledger import evidence
from p2pnode.ledger.entry import genesis, make_entry
from p2pnode.market.reputation import Reputation
from p2pnode.wire.peer_id import peer_id_from_public_key
from p2pnode.wire.report import make_report

KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 5)]
ME, A, B, C = (peer_id_from_public_key(bytes(k.verify_key)) for k in KEYS)


def fold(*items: tuple[str, bytes, dict]) -> Reputation:
    rep = Reputation(ME)
    prev = genesis(KEYS[0], 0)
    for seq, (kind, peer, data) in enumerate(items, start=1):
        e = make_entry(KEYS[0], seq=seq, prev=prev.hash, t_ms=seq, kind=kind, peer=peer, data=data)
        evidence.apply(rep, e)
        prev = e
    return rep


def test_each_kind_moves_the_score_as_specified() -> None:
    job = b"j" * 16
    rep = fold(
        ("verification", A, {"job": job, "method": "freivalds", "passed": True, "detail": ""}),
        ("receipt", A, {"role": "requester", "job": job, "receipt": b"", "workload": "matmul", "accepted": True}),
        ("failure", B, {"job": job, "reason": "stalled"}),
        ("failure", B, {"job": job, "reason": "overran three times its estimate", "overrun": True}),  # none
        ("failure", C, {"job": job, "reason": "timeout: past its limit", "overrun": True}),  # none
        ("penalty", B, {"code": "stale"}),  # benign: no evidence
        ("penalty", B, {"code": "malformed"}),
        ("verification", C, {"job": job, "method": "calibration", "passed": False, "detail": ""}),
    )
    a, b, c = (rep.score(p, 1.0) for p in (A, B, C))
    assert (a.own_pos, a.own_neg, a.streak) == (pytest.approx(1.5, rel=1e-4), 0.0, 1)
    assert b.own_neg == pytest.approx(2.0, rel=1e-4)
    assert c.own_neg == pytest.approx(5.0, rel=1e-4) and not c.cheats


def test_a_lost_dispute_marks_the_checker_and_reports_are_weighed() -> None:
    job = b"j" * 16
    report = make_report(KEYS[1], subject=C, t_ms=1, pos=0, neg=7)  # A reports C
    rep = fold(
        ("verification", A, {"job": job, "method": "rerun", "passed": True, "detail": ""}),
        ("dispute", A, {"job": job, "checker": B, "referee": C, "wrong": "checker", "results": []}),
        ("report", A, {"report": report.raw}),
    )
    assert rep.score(B, 1.0).cheats == 1 and rep.distrusted(B, 1.0)
    assert rep.reports[A][C].neg == 7
    assert rep.score(C, 1.0).hearsay_neg > 0  # A is trusted through our own good check of it
