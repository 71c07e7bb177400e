"""Token buckets keyed by peer, with time passed in (no clock reads)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """``burst`` tokens per key, refilled at ``rate`` tokens per second.

    Memory is bounded: past ``max_keys`` keys, the buckets that have refilled completely (and so
    carry no information) are dropped first, then the least recently used.
    """

    def __init__(self, *, burst: float, rate: float, max_keys: int = 4096) -> None:
        if burst <= 0 or rate <= 0 or max_keys <= 0:
            raise ValueError("burst, rate and max_keys must be positive")
        self.burst = burst
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}

    def _level(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(0.0, now - bucket.updated)
        return min(self.burst, bucket.tokens + elapsed * self.rate)

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens of ``key``'s bucket if it has them; report whether it did."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        bucket.tokens = self._level(bucket, now)
        bucket.updated = max(bucket.updated, now)
        allowed = bucket.tokens >= cost
        if allowed:
            bucket.tokens -= cost
        self._buckets[key] = bucket  # re-inserted last: dict order is recency order
        if len(self._buckets) > self.max_keys:
            self._shrink(now)
        return allowed

    def available(self, key: Hashable, now: float) -> float:
        """The tokens ``key`` could spend now (``burst`` for a key never seen), spending none."""
        bucket = self._buckets.get(key)
        return self.burst if bucket is None else self._level(bucket, now)

    def _shrink(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if self._level(b, now) >= self.burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
