"""Calibration at first contact: the decisions, pure (``specs/verification.md``, Calibration).

A provider this node has no history with gets a small fp32 matmul before its first job, sized to
take about ``CALIBRATION_TARGET_S`` at its advertised speed and checked by Freivalds. Its signed
kernel time, and the wall time from award to result less an allowance for what is not compute,
bound its real speed from above; a bound ``OVERCLAIM_FACTOR`` times below the advertised speed
means the ad over-claims.

Here: whom to calibrate (:func:`first_contact`), the job and what it may cost (:func:`plan`; a
calibration that would cost more than the job it is made for is left for a larger job), and the
verdict on it (:func:`judge`). The node (``services/checks.py``) and the simulator
(``sim/ask.py``) run the calibration job itself, each its own way.

**Two strikes.** One slow calibration proves little: a cold job in a worker on a busy machine, its
inputs crossing a loaded link, runs ten or fifty times below the best warm run the ad holds, and an
honest provider must not lose its name to a busy afternoon. A first failed calibration is recorded
unconfirmed (``confirmed: false``: no evidence against the provider; the requester's scorer still
learns the slowdown it measured, so the provider loses auctions it cannot win), and the provider is
calibrated again at a contact ``RECHECK_S`` later; only a second failure in a row is an
over-claim. A liar that claims fifty times its speed fails both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2pnode.protocol.requester_actions import Record

CALIBRATION_TARGET_S = 0.25
CALIBRATION_MIN_N, CALIBRATION_MAX_N = 128, 1024
MOVE_BYTES_S = 20e6  # a slow link's throughput, for the inputs and output of a calibration job
OVERCLAIM_FACTOR = 8.0  # advertised speed over the measured upper bound that counts as over-claiming:
# the ad holds the best of many warm in-process runs; one cold job in a worker on a busy CPU measured
# up to 3.6 times less (5 nodes on 2 cores)
ALLOWANCE_S = 0.15  # start-up, input generation and messaging that are not compute
RECHECK_S = 60.0  # a provider whose calibration failed once is calibrated again this long after


def first_contact(ads: Sequence[Any], k: int, purpose: str, needs: Callable[[Any], bool]) -> list[Any]:
    """Of the first ``k`` candidates of a job, those to calibrate before it is asked for (a job of
    the user's only: checks and calibrations are not themselves calibrated for)."""
    return [ad for ad in ads[:k] if needs(ad)] if purpose == "job" else []


def needs(ad: Any, *, enabled: bool, calibrated: set[bytes], known: Callable[[bytes], bool],
          suspects: dict[bytes, float] | None = None, now: float = 0.0) -> bool:
    """Whether ``ad``'s provider is to be calibrated: met for the first time (never calibrated, no
    history), or failed its first calibration at least ``RECHECK_S`` ago (``suspects``: when)."""
    if not enabled:
        return False
    failed = (suspects or {}).get(ad.peer_id)
    if failed is not None:
        return now - failed >= RECHECK_S
    return ad.peer_id not in calibrated and not known(ad.peer_id)


def calibration_size(ad: Any) -> tuple[int, float]:
    """(n, claimed GFLOP/s): the side of the n³ fp32 calibration product for ``ad``'s claim, sized
    to take about ``CALIBRATION_TARGET_S`` at the advertised speed. The claim is the fp32 matrix
    product's on the backend the provider offers matrix products on (the calibration job runs
    there), not another kernel's: ONNX Runtime's MatMul, measured in-process with every core, runs
    up to 30 times NumPy's speed in a worker on a busy machine, and judged against it an honest
    provider was called an over-claimer."""
    backend = next((o.backend for o in ad.offers if o.workload == "matmul"), "")
    matmul = [(k, v) for k, v in ad.speed if k.startswith("matmul_f32")]
    fp32 = [v for k, v in matmul if k.endswith("_" + backend)] or [v for _, v in matmul]
    claimed = max(fp32 or [v for k, v in ad.speed if "f32" in k] or [v for _, v in ad.speed] or [1.0])
    side = round((CALIBRATION_TARGET_S * claimed * 1e9 / 2) ** (1 / 3) / 64) * 64
    return min(max(side, CALIBRATION_MIN_N), CALIBRATION_MAX_N), claimed


@dataclass(frozen=True)
class Plan:
    """One calibration: the product's side, the speed claimed, what it costs at the provider's
    advertised price and the most it may be paid (``sent``: whether it is sent at all)."""

    peer: bytes
    n: int
    claimed: float
    cost: int
    most: int

    @property
    def sent(self) -> bool:
        return self.cost <= self.most

    @property
    def params(self) -> dict[str, Any]:
        """The job, its inputs supplied as blobs: the provider's kernel time is then the product
        alone, not the generation of seeded inputs (which costs more than the product on a CPU)."""
        return {"m": self.n, "n": self.n, "k": self.n, "dtype": "fp32", "inputs": "blob"}


def plan(ad: Any, limit: int) -> Plan:
    """The calibration of ``ad``'s provider for a job that may cost ``limit``: its price as the
    provider computes a bid (``market/bidding.py``) with room for the price to double before the
    bid, but never more than ``limit``."""
    n, claimed = calibration_size(ad)
    per_gflop = max((o.price for o in ad.offers if o.workload == "matmul"), default=0)
    cost = max(1, math.ceil(2.0 * n ** 3 / 1e9 * per_gflop))
    return Plan(ad.peer_id, n, claimed, cost, min(limit, 2 * cost))


def calibration_verdict(n: int, claimed: float, kernel_ms: int, wall_s: float, latency_ms: float) -> dict[str, Any]:
    """The ledger's ``verification`` data for a calibration job that ran: two upper bounds on the
    provider's real speed, its own signed kernel time and the wall time from award to result less
    what is not compute (start-up, round trips, moving 3 n² floats); a bound ``OVERCLAIM_FACTOR``
    times below the claim fails."""
    flops = 2.0 * n**3
    reported = flops / 1e9 / (kernel_ms / 1000) if kernel_ms > 0 else float("inf")
    allowance = ALLOWANCE_S + 2 * latency_ms / 1000 + 12 * n * n / MOVE_BYTES_S
    compute = wall_s - allowance
    bound = min(reported, flops / 1e9 / compute if compute > 0 else float("inf"))
    passed = bound * OVERCLAIM_FACTOR >= claimed
    detail = (f"advertised {claimed:.1f} GFLOP/s; measured at most {bound:.1f} GFLOP/s "
              f"({n}³ fp32: kernel {kernel_ms} ms, {wall_s * 1000:.0f} ms award to result)")
    return {"method": "calibration", "passed": passed, "detail": detail[:250], "claimed": float(claimed),
            "bound": float(min(bound, 1e12))}


def judge(p: Plan, *, done: bool, job: bytes, award_t: float | None, result_t: float | None, kernel_ms: int,
          latency_ms: float, strike: bool = True) -> Record | None:
    """The ledger entry a calibration job earns (``None`` when it did not complete: a failure or a
    wrong answer is already in the ledger as such)."""
    if not done or award_t is None or result_t is None:
        return None
    verdict = calibration_verdict(p.n, p.claimed, kernel_ms, result_t - award_t, latency_ms)
    if not verdict["passed"] and not strike:
        verdict["confirmed"] = False  # a first failure: calibrated again later, no evidence yet
    return Record("verification", {"job": job, **verdict}, p.peer)


def after(entry: Record | None, peer: bytes, suspects: dict[bytes, float], now: float) -> None:
    """Keep ``suspects`` (providers whose calibration failed once, and when) after a verdict."""
    if entry is None:
        return
    if not entry.data["passed"] and entry.data.get("confirmed") is False:
        suspects[peer] = now
    else:
        suspects.pop(peer, None)
