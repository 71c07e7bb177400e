"""Paced capacity ads: the whole market publishes about ``AD_BUDGET_PER_S`` ads a second, however
many providers it has, so what gossip costs one node stays bounded as the market grows.

A provider's periodic ad interval is the market size it observes divided by the budget, never less
than the operator's ``ad_interval`` and never more than ``MAX_INTERVAL_S``. Every provider sees
about the same market, so together they publish about the budget. An ad lives as many intervals as
the operator's ``ad_ttl`` / ``ad_interval`` ratio, so a listed provider stays listed between its ads.
Ads on a change of load or free memory are paced the same way, against a budget
``CHANGE_BUDGET_PER_S``; what changes by the second (load, free memory) reaches a requester in the
bid round, which asks the provider directly. ``specs/capacity-ad.md#paced-ads`` gives the design and
why it was chosen. Pure: the market size and the operator's settings come in, seconds go out.
"""

from __future__ import annotations

AD_BUDGET_PER_S = 2.0  # periodic ads a second across the whole market
CHANGE_BUDGET_PER_S = 8.0  # ads on changes of load or free memory a second across the whole market
MIN_GAP_S = 2.0  # between two ads of one provider, whatever the market size (peers accept 0.5/s)
MAX_INTERVAL_S = 3600.0  # the longest periodic interval: an idle provider still says it is alive hourly
MAX_TTL_RATIO = 3.0  # the longest ad life, in intervals (the default ad_ttl / ad_interval)
MAX_TTL_S = MAX_INTERVAL_S * MAX_TTL_RATIO  # the network's longest ad life


def interval(market: int, base_interval: float) -> float:
    """Seconds between a provider's periodic ads in a market of ``market`` providers."""
    return min(max(base_interval, market / AD_BUDGET_PER_S), max(base_interval, MAX_INTERVAL_S))


def gap(market: int, paced_for: int, base_interval: float) -> float:
    """Seconds from a provider's last ad, paced for a market of ``paced_for``, to its next periodic
    one, in a market of ``market`` now: the interval grows with the market, but never past what the
    last ad's TTL was made to cover, so a provider is never dropped from tables between its own ads."""
    return min(interval(market, base_interval), interval(paced_for, base_interval))


def ttl(market: int, base_interval: float, base_ttl: float) -> float:
    """How long an ad published now lives: the operator's TTL, stretched with the interval."""
    return min(base_ttl * interval(market, base_interval) / base_interval, max(base_ttl, MAX_TTL_S))


def change_gap(market: int) -> float:
    """Seconds a provider waits after its last ad before an ad on a change of load or memory."""
    return min(max(MIN_GAP_S, market / CHANGE_BUDGET_PER_S), MAX_INTERVAL_S)
