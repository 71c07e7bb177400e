"""Checking providers, the node's side: the checking jobs, the ledger and gossip a verdict leaves,
and the calibration job sent at first contact (``specs/verification.md``).

Every decision is the pure core's: whom a result is re-run on, when a referee is asked and who is
in the wrong (:mod:`p2pnode.protocol.verdict`), and whom to calibrate, how, and the verdict on it
(:mod:`p2pnode.protocol.calibration`). This module carries those decisions out on the node:

* :meth:`Checks.answer`: run a re-run or a referee's run as a job of purpose ``check`` on the
  provider named (``submit`` with ``only``), or a row sample on this node's own runtime, and tell
  the machine what came back;
* :func:`carry_out`: the ledger entries, cheat reports and opinions it returns;
* :meth:`Checks.calibrate`: the calibration job, with fresh random inputs sent as blobs.

Collaborators: this node's id, ``now``, the :class:`~p2pnode.services.ports.Judge` (reputation,
ledger, gossip), ``candidates`` (providers from the market), ``submit`` (the requester's, for the
checking jobs themselves), ``latency_ms`` (observed round trips) and whether to calibrate.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np
import trio

from p2pnode.protocol import calibration
from p2pnode.protocol.requester_actions import (
    Action,
    PublishCheat,
    PublishOpinion,
    Question,
    Ran,
    Record,
    RunElsewhere,
    RunHere,
)
from p2pnode.services.ports import Judge, Now
from p2pnode.services.records import JobRecord
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.checks")
Event = Callable[[str, dict[str, object]], None]
Submit = Callable[..., Awaitable[JobRecord]]
Candidates = Callable[[str, int, int, str], list[Any]]


class Answerable(Protocol):
    """What takes the answers to check questions: a job's pipeline, or a verdict on its own."""

    def ran(self, run: Ran | None, now: float) -> list[Action]: ...
    def ran_here(self, output: Any, why: str, now: float) -> list[Action]: ...


class _Market:
    """The verdict machine's view of the market for one workload (``protocol.verdict.Checkers``)."""

    def __init__(self, checks: Checks, workload: str, backend: str) -> None:
        self.checks, self.workload, self.backend = checks, workload, backend

    def pool(self) -> Sequence[Any]:
        return self.checks.candidates(self.workload, 0, 64, self.backend)

    def score(self, peer: bytes) -> float:
        return self.checks.judge.score(peer)

    def check_probability(self, peer: bytes) -> float:
        return self.checks.judge.check_probability(self.workload, peer)


class Checks:
    def __init__(self, *, me: bytes, now: Now, judge: Judge, candidates: Candidates, submit: Submit,
                 latency_ms: Callable[[bytes], float], calibrate_providers: bool) -> None:
        self.me, self.now, self.judge = me, now, judge
        self.candidates, self.submit, self.latency_ms = candidates, submit, latency_ms
        self.calibrate_providers = calibrate_providers
        self.rng = random.Random(int.from_bytes(os.urandom(8), "big"))  # the verdicts' draws
        self._calibrated: set[bytes] = set()
        self.suspects: dict[bytes, float] = {}  # failed one calibration: when (calibrated again later)
        self._inputs: dict[int, dict[str, np.ndarray]] = {}

    def checkers(self, workload: str, backend: str) -> _Market:
        return _Market(self, workload, backend)

    # the verdict's questions ---------------------------------------------------------------
    async def answer(self, target: Answerable, question: Question, *, workload: str, backend: str,
                     max_price: int) -> list[Action]:
        """Run what a verdict asked for (a run elsewhere, or here) and give ``target`` the answer."""
        if isinstance(question, RunElsewhere):
            sub = await self.submit(workload, question.params, inputs=question.inputs or None, only=[question.ad],
                                    k=1, verify="none", max_price=max_price, deadline_s=question.deadline_s,
                                    backend=backend, purpose="check")
            done = sub.state == "done" and sub.output is not None and sub.result_raw
            return target.ran(Ran(sub.output, sub.result_raw, bytes.fromhex(sub.job)) if done else None, self.now())
        if isinstance(question, RunHere):
            output, why = await trio.to_thread.run_sync(_run_here, workload, question.params, question.inputs)
            return target.ran_here(output, why, self.now())
        raise TypeError(f"not a check question: {question!r}")

    # calibration --------------------------------------------------------------------------
    def needs_calibration(self, ad: Any) -> bool:
        return calibration.needs(ad, enabled=self.calibrate_providers, calibrated=self._calibrated,
                                 known=self.judge.known, suspects=self.suspects, now=self.now())

    def judge_calibration(self, p: calibration.Plan, **ran: Any) -> Any:
        """The verdict on a calibration that ran (``protocol.calibration.judge``), its second strike
        if the provider failed one before; the suspects kept."""
        entry = calibration.judge(p, strike=p.peer in self.suspects, **ran)
        calibration.after(entry, p.peer, self.suspects, self.now())
        return entry

    def _calibration_inputs(self, n: int) -> dict[str, np.ndarray]:
        """Fresh random fp32 A and B per size for this node's life."""
        if n not in self._inputs:
            g = np.random.default_rng(self.rng.getrandbits(64))
            self._inputs[n] = {"a": g.standard_normal((n, n), dtype=np.float32),
                               "b": g.standard_normal((n, n), dtype=np.float32)}
        return self._inputs[n]

    def plan_calibration(self, ad: Any, limit: int) -> calibration.Plan:
        """``ad``'s calibration for a job that may cost ``limit``; its provider counts as
        calibrated once one is sent (``protocol.calibration.plan``)."""
        p = calibration.plan(ad, limit)
        if p.sent:
            self._calibrated.add(ad.peer_id)
        return p

    async def calibrate(self, ad: Any, event: Event, limit: int) -> None:
        """Send ``ad``'s provider a known-answer job sized by its advertised speed; record the verdict.
        It may cost at most ``limit`` (the job it is made for may cost as much), and is not sent
        when its advertised price is above that: the provider is calibrated by a later, larger job."""
        p = self.plan_calibration(ad, limit)
        if not p.sent:
            event("calibration_skipped", {"peer": ad.peer_id, "n": p.n, "cost": p.cost, "limit": limit})
            return
        event("calibrate", {"peer": ad.peer_id, "n": p.n, "cost": p.cost, "max_price": p.most})
        sub = await self.submit("matmul", p.params, inputs=self._calibration_inputs(p.n), only=[ad], k=1,
                                verify="freivalds", max_price=p.most, deadline_s=30.0, purpose="calibration")
        times = {e["event"]: float(e["t"]) for e in sub.events if e["event"] in ("award", "result")}
        entry = self.judge_calibration(p, done=sub.state == "done", job=bytes.fromhex(sub.job),
                                       award_t=times.get("award"), result_t=times.get("result"),
                                       kernel_ms=sub.kernel_ms, latency_ms=self.latency_ms(ad.peer_id))
        if entry is None:
            return
        await self.judge.record(entry.kind, entry.data, peer=entry.peer)
        event("calibrated", {"peer": ad.peer_id, "passed": entry.data["passed"], "detail": entry.data["detail"]})
        if not entry.data["passed"]:
            again = " (to be calibrated again: one slow run is no proof)" if entry.data.get("confirmed") is False else ""
            log.warning("provider %s over-claims%s: %s", to_base58(ad.peer_id), again, entry.data["detail"])


async def carry_out(judge: Judge, action: Action) -> bool:
    """Carry out what a verdict or a job's end leaves with ``judge``: ledger entries and gossip;
    False for an action that is not of these."""
    if isinstance(action, Record):
        await judge.record(action.kind, action.data, peer=action.peer)
    elif isinstance(action, PublishCheat):
        await judge.publish_cheat(action.subject, action.job, action.results)
    elif isinstance(action, PublishOpinion):
        await judge.publish_opinion(action.subject)
    else:
        return False
    return True


_LOCAL: dict[str, Any] = {}  # this node's own ONNX Runtime sessions, for checks made here


def _run_here(workload: str, params: dict[str, Any], inputs: dict[str, np.ndarray]) -> tuple[Any, str]:
    """Re-run sampled rows on this node's own ONNX Runtime (no independent checker in the market):
    (the output, "") or (None, why it could not)."""
    from p2pnode.errors import P2PNodeError
    from p2pnode.exec import backends, workloads

    try:
        wl = workloads.get(workload)
        if "ort" not in _LOCAL:
            _LOCAL["ort"] = backends.ops("ort-cpu")
        return wl.run(params, _LOCAL["ort"], lambda f: None, inputs), ""
    except (P2PNodeError, ValueError, ImportError) as exc:
        return None, str(exc)
