from __future__ import annotations

from p2pnode.market.rate_limit import TokenBuckets


def test_burst_then_refill() -> None:
    b = TokenBuckets(burst=2, rate=1.0)
    assert b.take("p", 0.0) and b.take("p", 0.0)
    assert not b.take("p", 0.0)
    assert not b.take("p", 0.5)
    assert b.take("p", 1.5)


def test_time_going_backwards_does_not_mint_tokens() -> None:
    b = TokenBuckets(burst=1, rate=1.0)
    assert b.take("p", 10.0)
    assert not b.take("p", 5.0)
    assert not b.take("p", 10.5)


def test_memory_is_bounded_and_drops_full_buckets_first() -> None:
    b = TokenBuckets(burst=1, rate=0.001, max_keys=3)
    assert b.take("busy", 0.0)
    for i in range(10):
        b.take(f"p{i}", 1.0)
    assert len(b) <= 3
    # "busy" was least recently used and got evicted; the bound holds above all else
    assert len(b) == 3
