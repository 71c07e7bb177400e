from __future__ import annotations

from p2pnode.market.scoring import ObservedScorer
from p2pnode.wire import job as m

J = b"J" * 16
FAST, SLOW = b"f" * 38, b"s" * 38


def test_a_provider_slower_than_it_claims_loses_its_edge() -> None:
    s = ObservedScorer(alpha=1.0)
    s.advertised = {FAST: 100.0, SLOW: 100.0}
    bid = m.Bid(J, 100, 1000, 0, "numpy")
    assert s.score(FAST, bid, 1000, 10_000) == s.score(SLOW, bid, 1000, 10_000)
    s.observe_speed(SLOW, flops=1e11, kernel_s=10.0)  # 10 GFLOP/s observed against 100 claimed
    s.observe_speed(FAST, flops=1e11, kernel_s=0.5)  # faster than claimed: not rewarded beyond the claim
    assert s.seen[SLOW].slowdown == 10.0 and s.seen[FAST].slowdown == 1.0
    assert s.score(SLOW, bid, 1000, 10_000) > s.score(FAST, bid, 1000, 10_000)


def test_latency_counts() -> None:
    s = ObservedScorer(alpha=0.5)
    bid = m.Bid(J, 10, 10, 0, "numpy")
    s.observe_latency(SLOW, 400.0)
    s.observe_latency(SLOW, 200.0)
    assert s.seen[SLOW].latency_ms == 300.0
    assert s.score(SLOW, bid, 1000, 1000) > s.score(FAST, bid, 1000, 1000)


def test_memory_is_bounded() -> None:
    s = ObservedScorer(max_peers=2)
    for i in range(5):
        s.observe_latency(bytes([i]) * 38, 1.0)
    assert len(s.seen) == 2


def _winner(s: ObservedScorer, bids: dict[bytes, m.Bid]) -> bytes:
    best = min(bids, key=lambda p: s.score(p, bids[p], 1000, 10_000))
    s.awarded(best)
    return best


def test_recent_awards_spread_work_but_a_clearly_better_offer_still_wins_most() -> None:
    s = ObservedScorer()
    same = {bytes([i]) * 38: m.Bid(J, 100, 1000, 0, "numpy") for i in range(3)}
    wins = [_winner(s, same) for _ in range(30)]
    assert {wins.count(p) for p in same} == {10}  # equal offers take turns
    s = ObservedScorer()
    bids = {FAST: m.Bid(J, 50, 1000, 0, "numpy"), SLOW: m.Bid(J, 100, 1000, 0, "numpy")}  # half the price
    wins = [_winner(s, bids) for _ in range(32)]
    assert wins.count(FAST) >= 24 and wins.count(SLOW) >= 1
    assert ObservedScorer(spread=0.0).load(FAST) == 1.0
