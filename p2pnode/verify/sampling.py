"""Which results to check, and what that buys (pure).

The policy (``specs/verification.md`` derives the numbers):

* ``matmul`` is checked with Freivalds' algorithm, which costs O(k·n²) against the job's O(n³):
  cheap enough to check **every** result (p = 1).
* Model jobs (``onnx``) commit to their output rows; a sample of rows the provider could not
  predict is re-run (:mod:`p2pnode.verify.rows`): about 1 % of a large job, so every result is
  checked (p = 1). A model that couples its rows falls back to re-runs.
* Other workloads are re-run by an independent checker peer, which costs a whole job. The
  probability follows the provider's record, like BOINC's adaptive replication: a new or
  low-scoring peer is always checked; each consecutive valid check halves the probability every
  ``half_streak`` results, down to ``p_min``; a caught cheat resets the streak.

If a provider cheats on a fraction f of its jobs and a check with detection probability d runs with
probability p, each job independently exposes it with probability q = f·p·d, so it survives n jobs
with probability (1 − q)^n and is caught after 1/q jobs on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingPolicy:
    p_max: float = 1.0
    p_min: float = 0.1
    half_streak: float = 4.0
    trust_floor: float = 0.6  # below this reputation score a provider is always checked
    freivalds_rounds: int = 20
    fixed_rate: float | None = None  # check every workload at this rate (experiments, benchmarks)

    def method(self, workload: str) -> str:
        return {"matmul": "freivalds", "onnx": "rows", "generate": "tokens", "train": "steps"}.get(workload, "rerun")

    def probability(self, workload: str, *, streak: int, score: float) -> float:
        """Probability of checking a result of ``workload`` from a provider with this record."""
        if self.fixed_rate is not None:
            return self.fixed_rate
        if self.method(workload) in ("freivalds", "rows", "tokens", "steps"):
            return 1.0
        if score < self.trust_floor:
            return self.p_max
        return max(self.p_min, self.p_max * float(2.0 ** (-streak / self.half_streak)))

    def should_check(self, workload: str, *, streak: int, score: float, u: float) -> bool:
        """``u`` is a uniform draw in [0, 1) from the caller's random source."""
        return u < self.probability(workload, streak=streak, score=score)

    def detection(self, workload: str) -> float:
        """Probability that one check exposes one wrong result (d)."""
        return 1.0 - 2.0 ** -self.freivalds_rounds if self.method(workload) == "freivalds" else 1.0


def catch_rate(f: float, p: float, d: float = 1.0) -> float:
    """Per-job probability q = f·p·d that a provider cheating on a fraction ``f`` is exposed."""
    return f * p * d


def caught_within(n: int, f: float, p: float, d: float = 1.0) -> float:
    """Probability that the cheat is exposed at least once in ``n`` jobs: 1 − (1 − q)^n."""
    return 1.0 - (1.0 - catch_rate(f, p, d)) ** n


def jobs_until_caught(f: float, p: float, d: float = 1.0) -> float:
    """Expected number of jobs before the first exposure: 1/q (geometric)."""
    q = catch_rate(f, p, d)
    return math.inf if q <= 0 else 1.0 / q


def rerun_overhead(p: float, *, dispute_rate: float = 0.0) -> float:
    """Checking compute as a share of the jobs' own compute for re-run checks at rate ``p``: one
    re-run per check, plus a referee run per dispute."""
    return p * (1.0 + dispute_rate)


def wilson_interval(successes: int, n: int, z: float = 3.29) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (z = 3.29: 99.9 % two-sided)."""
    if n == 0:
        return 0.0, 1.0
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
