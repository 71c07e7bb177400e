"""Checking providers: re-runs by independent checkers, disputes settled by a referee, and the
calibration job sent at first contact (the requester's side; ``specs/verification.md``).

* **Re-run** (workloads without a cheap algebraic check): the same job, same seed and inputs, is
  run by a *checker*: a different provider that, as far as this node can tell, is not the same
  party under another id, so it shares no IP address with the provider. Providers that volunteer as
  checkers (``--checker``, offers with unit ``check``) are preferred. The outputs are compared by
  the workload's own rule.
* **Dispute**: when they disagree, a **referee** (independent of both) runs the job too. Whoever
  disagrees with the referee is in the wrong. If the referee agrees with neither, a second one
  (independent of all three) is asked; if it agrees with neither too, or no referee can run it, the
  dispute is inconclusive: the result is not paid, but nobody is marked, so a lying checker and a
  lying referee cannot frame an honest provider. Each referee's three signed results are kept in the
  ledger, and a ``cheat`` report carrying them is gossiped when they settle it.
* **Calibration**: a provider never seen before gets a small fp32 matmul (random inputs sent as
  blobs) sized to take about ``CALIBRATION_TARGET_S`` at its advertised speed, checked by Freivalds.
  Its signed kernel time, and the wall time from award to result less an allowance for what is not
  compute, bound its real speed from above; a bound below a quarter of the advertised speed means
  the ad over-claims.

Collaborators: this node's id, ``now``, the :class:`~p2pnode.services.ports.Judge` (reputation,
ledger, gossip), ``candidates`` (providers from the market), ``submit`` (the requester's, for the
checking jobs themselves), ``latency_ms`` (observed round trips) and whether to calibrate.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from p2pnode.exec.onnx_workload import take_rows
from p2pnode.exec.workloads import Output
from p2pnode.market.selection import hosts
from p2pnode.services.ports import Judge, Now
from p2pnode.services.records import JobRecord
from p2pnode.verify import rows
from p2pnode.verify.check import compare
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.checks")
CALIBRATION_TARGET_S = 0.25
CALIBRATION_MIN_N, CALIBRATION_MAX_N = 128, 1024
MOVE_BYTES_S = 20e6  # a slow link's throughput, for the inputs and output of a calibration job
OVERCLAIM_FACTOR = 8.0  # advertised speed over the measured upper bound that counts as over-claiming:
# the ad holds the best of many warm in-process runs; one cold job in a worker on a busy CPU measured
# up to 3.6 times less (5 nodes on 2 cores)
ALLOWANCE_S = 0.15  # start-up, input generation and messaging that are not compute
CHECK_DEADLINE_S = 40.0  # a whole check, referees included: within the provider's receipt timeout (60 s)
MIN_CHECK_S = 2.0  # less time than this left: ask no one more
MAX_REFEREES = 2  # referees asked, one after another, while none agrees with either run
Event = Callable[[str, dict[str, object]], None]
Submit = Callable[..., Awaitable[JobRecord]]
Candidates = Callable[[str, int, int, str], list[Any]]


@dataclass
class CheckOutcome:
    passed: bool
    detail: str
    method: str
    ran: bool = True  # False: no independent checker could run it
    settled: bool = True  # False: checked, disputed and nobody agreed; no verdict on anyone


class Checks:
    def __init__(self, *, me: bytes, now: Now, judge: Judge, candidates: Candidates, submit: Submit,
                 latency_ms: Callable[[bytes], float], calibrate_providers: bool) -> None:
        self.me, self.now, self.judge = me, now, judge
        self.candidates, self.submit, self.latency_ms = candidates, submit, latency_ms
        self.calibrate_providers = calibrate_providers
        self.rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self._calibrated: set[bytes] = set()
        self._inputs: dict[int, dict[str, np.ndarray]] = {}

    # independent peers --------------------------------------------------------------------
    def independent(self, workload: str, backend: str, exclude: Iterable[Any]) -> Any | None:
        """The best provider of ``workload`` sharing no peer id and no IP address with ``exclude``."""
        excluded = list(exclude)
        ids = {a.peer_id for a in excluded} | {self.me}
        ips = set().union(*(hosts(a) for a in excluded)) if excluded else set()
        best: list[tuple[tuple[int, float], Any]] = []
        for ad in self.candidates(workload, 0, 64, backend):
            if ad.peer_id in ids or hosts(ad) & ips:
                continue
            volunteer = any(o.unit == "check" and o.workload == workload for o in ad.offers)
            best.append(((0 if volunteer else 1, -self.judge.score(ad.peer_id)), ad))
        best.sort(key=lambda x: x[0])
        return best[0][1] if best else None

    # re-run and dispute -------------------------------------------------------------------
    def should_rerun(self, workload: str, provider: bytes) -> bool:
        return self.rng.random() < self.judge.check_probability(workload, provider)

    async def check_rows(self, rec: JobRecord, provider_ad: Any, result_raw: bytes, output: Output,
                         params: dict[str, Any], inputs: dict[str, np.ndarray], max_price: int,
                         backend: str, event: Event) -> CheckOutcome:
        """Re-run a sample of a row job's rows that its provider could not predict (it signed its
        root first): on an independent checker, or here when there is none. A disagreement goes to a
        referee like any re-run (``verify/rows.py`` has the maths)."""
        n = int(params["rows"])
        idx = rows.sample(n, rows.sample_size(), self.rng)
        sub_params, sub_inputs, sub_output = take_rows(params, inputs, output, idx)
        event("sample", {"rows": len(idx), "of": n})
        outcome = await self.rerun(rec, provider_ad, result_raw, sub_output, sub_params, sub_inputs, max_price,
                                   backend, event, method="rows")
        if outcome.ran:
            return outcome
        return await trio.to_thread.run_sync(lambda: _rows_here(rec.workload, sub_params, sub_inputs, sub_output))

    async def rerun(self, rec: JobRecord, provider_ad: Any, result_raw: bytes, output: Output,
                    params: dict[str, Any], inputs: dict[str, np.ndarray], max_price: int,
                    backend: str, event: Event, method: str = "rerun") -> CheckOutcome:
        """Have an independent checker run the job; on a disagreement, referees (up to
        ``MAX_REFEREES``, each independent of everyone asked before) until one agrees with the
        provider or the checker. All of it within ``CHECK_DEADLINE_S``."""
        wl_name = rec.workload
        until = self.now() + CHECK_DEADLINE_S
        checker = self.independent(wl_name, backend, [provider_ad])
        if checker is None:
            return CheckOutcome(True, "accepted (no independent checker)", method, ran=False)
        event("check", {"checker": checker.peer_id, "method": method})
        c = await self._run_elsewhere(rec, checker, params, inputs, max_price, backend, until)
        if c is None:
            return CheckOutcome(True, "accepted (the check did not complete)", method, ran=False)
        same, how = compare(wl_name, params, output, c.output)  # type: ignore[arg-type]
        if same:
            by = to_base58(checker.peer_id)[-6:]
            if method == "rows":
                return CheckOutcome(True, f"verified: {params['rows']} sampled rows agree with {by}'s re-run", method)
            return CheckOutcome(True, f"verified: {how} by {by}", method)
        asked = [provider_ad, checker]
        for _ in range(MAX_REFEREES):
            referee = self.independent(wl_name, backend, asked)
            event("dispute", {"checker": checker.peer_id, "referee": referee.peer_id if referee else b""})
            if referee is None:
                break
            asked.append(referee)
            r = await self._run_elsewhere(rec, referee, params, inputs, max_price, backend, until)
            if r is None:
                continue
            provider_right = compare(wl_name, params, output, r.output)[0]  # type: ignore[arg-type]
            checker_right = compare(wl_name, params, c.output, r.output)[0]  # type: ignore[arg-type]
            wrong = "provider" if checker_right and not provider_right else \
                "checker" if provider_right and not checker_right else "inconclusive"
            evidence = (result_raw, c.result_raw, r.result_raw)
            await self.judge.record("dispute", {
                "job": bytes.fromhex(rec.job), "checker": checker.peer_id, "referee": referee.peer_id,
                "wrong": wrong, "results": list(evidence)}, peer=provider_ad.peer_id)
            event("settled", {"wrong": wrong})
            if wrong == "provider":
                await self.judge.publish_cheat(provider_ad.peer_id, bytes.fromhex(rec.job), evidence)
                return CheckOutcome(False, "wrong: the checker and the referee agree against it", method)
            if wrong == "checker":
                await self.judge.publish_cheat(checker.peer_id, bytes.fromhex(c.job),
                                               (c.result_raw, result_raw, r.result_raw))
                return CheckOutcome(True, "verified by a referee (the checker was wrong)", method)
        # Nobody settled it: not paid, but nobody is marked either, since a checker and a referee
        # that both lie (or both fail) must not be able to frame an honest provider.
        return CheckOutcome(False, "disputed: no referee agrees with either run", method, settled=False)

    async def _run_elsewhere(self, rec: JobRecord, ad: Any, params: dict[str, Any], inputs: dict[str, np.ndarray],
                             max_price: int, backend: str, until: float) -> JobRecord | None:
        deadline_s = until - self.now()
        if deadline_s < MIN_CHECK_S:
            return None
        sub = await self.submit(rec.workload, params, inputs=inputs or None, only=[ad], k=1, verify="none",
                                     max_price=max_price, deadline_s=deadline_s, backend=backend,
                                     purpose="check")
        return sub if sub.state == "done" and sub.output is not None and sub.result_raw else None

    # calibration --------------------------------------------------------------------------
    def needs_calibration(self, ad: Any) -> bool:
        return (self.calibrate_providers and ad.peer_id not in self._calibrated
                and not self.judge.known(ad.peer_id))

    def _calibration_inputs(self, n: int) -> dict[str, np.ndarray]:
        """Fresh random fp32 A and B per size for this node's life. Supplied as blobs, so the
        provider's kernel time is the product alone, not the generation of seeded inputs (which
        costs more than the product on a CPU at these sizes)."""
        if n not in self._inputs:
            g = np.random.default_rng(self.rng.getrandbits(64))
            self._inputs[n] = {"a": g.standard_normal((n, n), dtype=np.float32),
                               "b": g.standard_normal((n, n), dtype=np.float32)}
        return self._inputs[n]

    async def calibrate(self, ad: Any, event: Event, limit: int) -> None:
        """Send ``ad``'s provider a known-answer job sized by its advertised speed; record the verdict.
        It may cost at most ``limit`` (the job it is made for may cost as much), and is not sent
        when its advertised price is above that: the provider is calibrated by a later, larger job."""
        n, claimed = calibration_size(ad)
        params = {"m": n, "n": n, "k": n, "dtype": "fp32", "inputs": "blob"}
        cost, most = calibration_price(ad, params, limit)
        if cost > most:
            event("calibration_skipped", {"peer": ad.peer_id, "n": n, "cost": cost, "limit": limit})
            return
        self._calibrated.add(ad.peer_id)
        event("calibrate", {"peer": ad.peer_id, "n": n, "cost": cost, "max_price": most})
        sub = await self.submit("matmul", params, inputs=self._calibration_inputs(n), only=[ad], k=1,
                                verify="freivalds", max_price=most, deadline_s=30.0, purpose="calibration")
        times = {e["event"]: e["t"] for e in sub.events if e["event"] in ("award", "result")}
        if sub.state != "done" or "award" not in times or "result" not in times:
            return  # a failure or a wrong answer is already in the ledger as such
        wall = float(times["result"]) - float(times["award"])
        verdict = calibration_verdict(n, claimed, sub.kernel_ms, wall, self.latency_ms(ad.peer_id))
        await self.judge.record("verification", {"job": bytes.fromhex(sub.job), **verdict}, peer=ad.peer_id)
        event("calibrated", {"peer": ad.peer_id, "passed": verdict["passed"], "detail": verdict["detail"]})
        if not verdict["passed"]:
            log.warning("provider %s over-claims: %s", to_base58(ad.peer_id), verdict["detail"])


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
    n = int(np.clip(round((CALIBRATION_TARGET_S * claimed * 1e9 / 2) ** (1 / 3) / 64) * 64,
                    CALIBRATION_MIN_N, CALIBRATION_MAX_N))
    return n, claimed


def calibration_price(ad: Any, params: dict[str, Any], limit: int) -> tuple[int, int]:
    """(what the calibration job costs at ``ad``'s advertised matmul price, the most it may be
    paid): its price as the provider computes a bid (``market/bidding.py``), with room for the
    price to double before the bid, but never more than ``limit``."""
    from p2pnode.exec import workloads

    per_gflop = max((o.price for o in ad.offers if o.workload == "matmul"), default=0)
    wl = workloads.get("matmul")
    cost = max(1, math.ceil(wl.flops(wl.check(params)) / 1e9 * per_gflop))
    return cost, min(limit, 2 * cost)


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


_LOCAL: dict[str, Any] = {}  # this node's own ONNX Runtime sessions, for checks made here


def _rows_here(workload: str, params: dict[str, Any], inputs: dict[str, np.ndarray], output: Output) -> CheckOutcome:
    """Re-run sampled rows on this node's own ONNX Runtime (no independent checker in the market)."""
    from p2pnode.errors import P2PNodeError
    from p2pnode.exec import backends, workloads

    try:
        wl = workloads.get(workload)
        if "ort" not in _LOCAL:
            _LOCAL["ort"] = backends.ops("ort-cpu")
        mine = wl.run(params, _LOCAL["ort"], lambda f: None, inputs)
    except (P2PNodeError, ValueError, ImportError) as exc:
        return CheckOutcome(True, f"accepted (could not check here: {exc})", "rows", ran=False)
    same, how = compare(workload, params, output, mine)
    n = params["rows"]
    if same:
        return CheckOutcome(True, f"verified: {n} sampled rows agree with a re-run here", "rows")
    return CheckOutcome(False, "wrong: sampled rows disagree with a re-run here", "rows")
