"""Paced ads: the whole market publishes a bounded number of ads a second, and a provider's ad
never lapses between its own ads, however the market grows or shrinks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pnode.market import pacing


def test_a_small_market_keeps_the_operators_interval_and_a_large_one_shares_a_budget() -> None:
    assert pacing.interval(1, 60.0) == 60.0 and pacing.interval(120, 60.0) == 60.0
    assert pacing.interval(1_000, 60.0) == 500.0
    assert pacing.interval(10**6, 60.0) == pacing.MAX_INTERVAL_S
    assert pacing.ttl(1_000, 60.0, 180.0) == 1_500.0  # three intervals, as the operator's 60 s / 180 s
    assert pacing.change_gap(10) == pacing.MIN_GAP_S and pacing.change_gap(8_000) == 1_000.0


@given(market=st.integers(1, 10**6), base=st.floats(2.0, 299.0))
def test_the_whole_market_publishes_within_the_budget_once_it_outgrows_the_base_interval(market: int,
                                                                                        base: float) -> None:
    rate = market / pacing.interval(market, base)  # periodic ads a second, the whole market
    if market / base > pacing.AD_BUDGET_PER_S and market <= pacing.AD_BUDGET_PER_S * pacing.MAX_INTERVAL_S:
        assert rate <= pacing.AD_BUDGET_PER_S * (1 + 1e-9)
    else:
        assert rate <= max(market / base, market / pacing.MAX_INTERVAL_S) * (1 + 1e-9)
    assert market / pacing.change_gap(market) <= max(pacing.CHANGE_BUDGET_PER_S, market / pacing.MIN_GAP_S,
                                                      market / pacing.MAX_INTERVAL_S) * (1 + 1e-9)


@given(sizes=st.lists(st.integers(1, 100_000), min_size=1, max_size=60), base=st.sampled_from([2.0, 10.0, 60.0]),
       ratio=st.sampled_from([1.5, 3.0]))
def test_a_provider_following_due_is_never_dropped_between_its_own_ads(sizes: list[int], base: float,
                                                                       ratio: float) -> None:
    """The market size changes every ``step`` seconds (hypothesis picks how); the provider checks
    every second, as the node's loop does, whether the gap has passed. Its newest ad must outlive
    the gap to the next one."""
    step = 97.0
    t, last, paced_for, expires = 0.0, -1e18, 1, 0.0
    end = step * len(sizes)
    while t < end:
        market = sizes[int(t // step)]
        if t - last >= pacing.gap(market, paced_for, base):
            assert t < expires or last < 0, (t, expires)
            paced_for, last = market, t
            expires = t + pacing.ttl(market, base, base * ratio)
        t += 1.0
