"""Checking a row job by sampling rows (pure; ``specs/verification.md`` derives the numbers).

A provider that fakes ``k`` of a job's ``n`` rows (returns anything but the model's output for them)
is caught when the requester re-runs ``s`` rows drawn uniformly without replacement, *after* the
provider signed its Merkle root over all rows, and finds one of the faked ones. It escapes with the
hypergeometric probability

    P(miss) = C(n − k, s) / C(n, s)  ≤  (1 − k/n)^s,

so ``s = ⌈ln(1 − P) / ln(1 − f)⌉`` rows catch any provider faking a fraction ``f`` or more of a job
with probability at least ``P``, whatever ``n``: 90 rows for P = 99 %, f = 5 %. The checking
compute is ``s / n`` of the job's (plus a referee's ``s`` rows when a check disagrees), so a job of
9 000 rows or more is checked for at most 1 % extra.
"""

from __future__ import annotations

import math
import random

TARGET_CATCH = 0.99
TARGET_FRACTION = 0.05


def sample_size(catch: float = TARGET_CATCH, fraction: float = TARGET_FRACTION) -> int:
    """Rows to check so that faking ``fraction`` of any job's rows is caught with ``catch``."""
    if not (0 < catch < 1 and 0 < fraction < 1):
        raise ValueError("catch and fraction must be in (0, 1)")
    return math.ceil(math.log(1 - catch) / math.log(1 - fraction))


def sample(n: int, s: int, rng: random.Random) -> list[int]:
    """``min(s, n)`` distinct row indices in ``range(n)``, sorted."""
    return sorted(rng.sample(range(n), min(s, n)))


def miss_probability(n: int, faked: int, s: int) -> float:
    """Exact probability that ``s`` sampled rows miss all ``faked`` of ``n`` (hypergeometric)."""
    s = min(s, n)
    if faked <= 0:
        return 1.0
    if faked > n - s:
        return 0.0
    p = 1.0
    for i in range(s):
        p *= (n - faked - i) / (n - i)
    return p


def catch_probability(n: int, faked: int, s: int) -> float:
    return 1.0 - miss_probability(n, faked, s)


def overhead(n: int, s: int) -> float:
    """Checking compute as a share of the job's: ``min(s, n) / n``."""
    return min(s, n) / n if n else 0.0
