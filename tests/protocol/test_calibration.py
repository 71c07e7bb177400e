"""Calibration's two strikes: one slow run is recorded unconfirmed and calibrated again; a second
failure in a row is the over-claim."""

from __future__ import annotations

from types import SimpleNamespace

from nacl.signing import SigningKey

from p2pnode.ledger import evidence
from p2pnode.ledger.entry import genesis, make_entry
from p2pnode.market.reputation import Reputation
from p2pnode.protocol import calibration
from p2pnode.wire.capacity_ad import Offer
from p2pnode.wire.peer_id import peer_id_from_public_key

PEER = peer_id_from_public_key(bytes(SigningKey(b"p" * 32).verify_key))


def _ad(claim: float = 100.0) -> SimpleNamespace:
    return SimpleNamespace(peer_id=PEER, offers=(Offer("matmul", "numpy", 1, "gflop"),),
                           speed=(("matmul_f32_numpy", claim), ("onnx_f32_ort-cpu", 50 * claim)))


def _ran(p: calibration.Plan, kernel_ms: int, strike: bool) -> calibration.Record:
    entry = calibration.judge(p, done=True, job=b"j" * 16, award_t=0.0, result_t=kernel_ms / 1000 + 1.0,
                              kernel_ms=kernel_ms, latency_ms=1.0, strike=strike)
    assert entry is not None
    return entry


def test_the_claim_is_the_matrix_products_on_its_backend_not_another_kernels() -> None:
    n, claimed = calibration.calibration_size(_ad(100.0))
    assert claimed == 100.0 and n == calibration.CALIBRATION_MAX_N


def test_a_first_failure_is_unconfirmed_and_a_second_is_the_over_claim() -> None:
    suspects: dict[bytes, float] = {}
    p = calibration.plan(_ad(100_000.0), 10**9)
    first = _ran(p, 1000, strike=PEER in suspects)
    assert first.data["passed"] is False and first.data["confirmed"] is False
    calibration.after(first, PEER, suspects, now=10.0)
    known = lambda peer: True  # noqa: E731 - the job's receipt made it known
    needs = dict(enabled=True, calibrated={PEER}, known=known, suspects=suspects)
    assert not calibration.needs(_ad(), **needs, now=10.0 + calibration.RECHECK_S - 1)
    assert calibration.needs(_ad(), **needs, now=10.0 + calibration.RECHECK_S)
    second = _ran(p, 1000, strike=PEER in suspects)
    assert second.data["passed"] is False and "confirmed" not in second.data
    calibration.after(second, PEER, suspects, now=80.0)
    assert PEER not in suspects
    # in the ledger: the first is no evidence, the second is an over-claim
    key = SigningKey(b"k" * 32)
    rep = Reputation(b"me")
    g = genesis(key, 0)
    e1 = make_entry(key, seq=1, prev=g.hash, t_ms=1, kind="verification", peer=PEER, data=first.data)
    evidence.apply(rep, e1)
    assert PEER not in rep.own
    e2 = make_entry(key, seq=2, prev=e1.hash, t_ms=2, kind="verification", peer=PEER, data=second.data)
    evidence.apply(rep, e2)
    assert rep.own[PEER].neg > 0 and rep.distrusted(PEER, 1.0)


def test_a_pass_clears_a_suspect() -> None:
    suspects = {PEER: 5.0}
    p = calibration.plan(_ad(1.0), 10**9)
    ok = _ran(p, 10, strike=True)
    assert ok.data["passed"]
    calibration.after(ok, PEER, suspects, now=100.0)
    assert not suspects
