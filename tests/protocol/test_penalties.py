from __future__ import annotations

from p2pnode.protocol.penalties import PeerPenalties


def test_ten_forgeries_ban_a_peer_and_the_ban_lifts() -> None:
    p = PeerPenalties(ban_threshold=100, ban_s=60, half_life_s=300)
    banned = [p.record(b"x", "bad_signature", 0.0) for _ in range(10)]
    assert banned == [False] * 9 + [True]
    assert p.is_banned(b"x", 30.0)
    assert not p.is_banned(b"x", 61.0)
    assert p.score(b"x", 61.0) == 0.0


def test_honest_races_cost_nothing() -> None:
    p = PeerPenalties()
    for _ in range(1000):
        assert not p.record(b"y", "stale", 0.0)
    assert p.score(b"y", 0.0) == 0.0
    assert p.counts["stale"] == 1000


def test_scores_decay() -> None:
    p = PeerPenalties(half_life_s=10)
    p.record(b"z", "malformed", 0.0)
    assert abs(p.score(b"z", 10.0) - 5.0) < 1e-9
    # slow offences never add up to a ban
    for i in range(200):
        assert not p.record(b"z", "malformed", 100.0 * i)
