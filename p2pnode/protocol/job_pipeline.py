"""The requester's whole job as one pure machine: the conversation with the providers, the verdict
on each result, and what the job leaves behind.

:class:`RequesterPipeline` composes :class:`~p2pnode.protocol.job_requester.RequesterJob` (bids,
award, re-awards, overruns, reserves) and a :class:`~p2pnode.protocol.verdict.Verdict` for each
result it receives, and returns :mod:`~p2pnode.protocol.requester_actions` for a driver to carry
out. The node's driver (``services/conversation.py``) carries them over libp2p streams; the
simulator's (``sim/ask.py``) over its modelled network. Neither decides anything: who is dialed
(the first candidates, then reserves in batches when nobody acceptable answers), who counts as
having answered or is set aside, who is penalised, when a result is checked and how, who is
blamed, what is paid and what the ledger remembers are all decided here.

Feeding it, in a driver's words:

* ``start(now)``: dial the first candidates (:class:`Dial`);
* ``receive(peer, msg, now, rtt_ms=...)``: a provider's message, the first with its round trip
  (the provider answered: its latency is observed and its standing marked);
* ``dial_failed`` / ``stream_lost``: a provider could not be reached, or its stream broke;
* ``tick(now)`` at ``next_wakeup()``; ``cancel(reason, now)``;
* the answers to :attr:`pending`, the one question a verdict waits on (``opened``,
  ``unavailable``, ``ran``, ``ran_here``). While it waits the conversation's clocks wait too
  (``next_wakeup`` is infinite), as the provider waits for its receipt;
* ``close(now)`` once it is terminal: set aside the candidates that never answered, and the
  ledger entries, charges and opinion the job leaves.

Misuse by our own code raises :class:`~p2pnode.errors.LocalProtocolError`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from p2pnode.errors import LocalProtocolError
from p2pnode.market.scoring import ObservedScorer
from p2pnode.market.selection import advertised_speed
from p2pnode.market.standing import PeerStanding
from p2pnode.protocol.job_requester import R, RequesterJob, Step
from p2pnode.protocol.requester_actions import (
    Action,
    Charge,
    Dial,
    Penalise,
    PublishOpinion,
    Question,
    Ran,
    Record,
    Send,
    receipt_records,
)
from p2pnode.protocol.verdict import Checkers, Outputs, V, Verdict
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import to_base58

OVERDUE_GRACE_S = 10.0  # an award overruns at three times its bid's estimate plus this
STALL_S = max(15.0, 3 * m.HEARTBEAT_S)  # no word from the awarded provider for this long: it is lost
CHECKED = ("rerun", "freivalds", "rows", "tokens")  # checks after which this node gossips its opinion


@dataclass(frozen=True)
class Order:
    """What the requester asks for, already checked by its workload's rules."""

    workload: str
    params: dict[str, Any]
    max_price: int
    deadline_s: float
    backend: str = ""
    policy: str = "none"  # how the result is checked: freivalds, rows, rerun, none
    purpose: str = "job"  # job, check or calibration: only a job is checked by others and gossiped about
    flops: float = 0.0  # the work's size, for the observed speed of the provider that did it
    inputs: Any = None  # the input arrays, opaque here: what a checker is sent again
    keys: dict[str, bytes] = field(default_factory=dict)  # each input blob's key, sealed to the winner
    input_blobs: tuple[bytes, ...] = ()
    input_bytes: int = 0
    bid_window_s: float = 2.0
    stall_s: float = STALL_S
    overdue_grace_s: float = OVERDUE_GRACE_S


class RequesterPipeline:
    def __init__(self, *, me: bytes, key: SigningKey, order: Order, asked: Sequence[Any], reserves: Sequence[Any],
                 job_id: bytes, nonce: bytes, now: float, scorer: ObservedScorer, standing: PeerStanding,
                 checkers: Checkers, outputs: Outputs, rng: random.Random,
                 on_event: Callable[[str, dict[str, object]], None] | None = None) -> None:
        """``asked``: the candidates asked first (ads); ``reserves``: asked in batches of as many
        when nobody acceptable answers. The scorer, the standing, the checkers and ``rng`` are the
        requester's own (pure state it keeps across jobs)."""
        if not asked:
            raise LocalProtocolError("a job needs at least one candidate provider")
        self.me, self.order, self.scorer, self.standing = me, order, scorer, standing
        self.checkers, self.outputs, self.rng, self.on_event = checkers, outputs, rng, on_event
        self.ads = {a.peer_id: a for a in [*asked, *reserves]}
        for ad in self.ads.values():
            scorer.advertised[ad.peer_id] = advertised_speed(ad, order.workload)
        public = {k: v for k, v in order.params.items() if k not in m.PRIVATE_PARAMS}
        private: dict[str, object] = {k: v for k, v in order.params.items() if k in m.PRIVATE_PARAMS}
        if order.keys:
            private["keys"] = dict(order.keys)
        rfb = m.RequestForBids(job_id, order.workload, public, me, nonce, order.max_price,
                               int((now + order.deadline_s) * 1000), 0, order.backend, order.policy)
        self.job = RequesterJob(me, key, rfb, [a.peer_id for a in asked], now,
                                reserves=[a.peer_id for a in reserves], bid_window_s=order.bid_window_s,
                                stall_s=order.stall_s, overdue_grace_s=order.overdue_grace_s, scorer=scorer,
                                private_params=private, input_blobs=order.input_blobs,
                                input_bytes=order.input_bytes, on_event=on_event)
        self.answered: set[bytes] = set()
        self.verdict: Verdict | None = None
        self.settled_outcome = ""  # the verdict's words, when a result was judged
        self.checked = ""  # the method whose verdict that is (empty: nobody is marked by it)
        self.output: Any = None  # the judged result's output

    # the conversation ----------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        job = self.job
        self._emit("request", candidates=[to_base58(p) for p in job.candidates], max_price=job.rfb.max_price)
        return [Dial(self.ads[p]) for p in job.candidates]

    def receive(self, peer: bytes, msg: m.Message, now: float, *, rtt_ms: float | None = None) -> list[Action]:
        """A message from ``peer``; ``rtt_ms`` with its first, from sending the request for bids."""
        if rtt_ms is not None and peer not in self.answered:
            self.answered.add(peer)
            self.scorer.observe_latency(peer, rtt_ms)
            self.standing.answered(peer, now)
        return self._after(self.job.receive(peer, msg, now), now)

    def dial_failed(self, peer: bytes, why: str, now: float) -> list[Action]:
        """``peer`` could not be reached: it is out of this job, and set aside for a while with the
        addresses it names."""
        ad = self.ads.get(peer)
        self.standing.set_aside(peer, now, ad.addrs if ad is not None else ())
        return self._after(self.job.receive(peer, m.Decline(self.job.job, "busy", f"unreachable: {why}"), now), now)

    def stream_lost(self, peer: bytes, why: str, now: float) -> list[Action]:
        """``peer``'s stream broke: the awarded provider failed, or a candidate declined."""
        job = self.job
        if job.provider == peer and job.state is R.RUNNING:
            return self._after(job.receive(peer, m.Failed(job.job, "crashed", why), now), now)
        if job.state is R.COLLECTING and peer not in job.bids and peer not in job.declines:
            return self._after(job.receive(peer, m.Decline(job.job, "busy", why), now), now)
        return []

    def tick(self, now: float) -> list[Action]:
        if self.pending is not None:
            return []
        return self._after(self.job.tick(now), now)

    def next_wakeup(self) -> float:
        return math.inf if self.pending is not None else self.job.next_wakeup()

    def cancel(self, reason: str, now: float) -> list[Action]:
        return self._after(self.job.cancel(reason), now)

    @property
    def terminal(self) -> bool:
        return self.job.terminal

    @property
    def pending(self) -> Question | None:
        """The question the verdict waits on (none once the job is over)."""
        if self.verdict is None or self.job.terminal:
            return None
        return self.verdict.pending

    # the verdict's answers -----------------------------------------------------------------
    def opened(self, ok: bool, detail: str, output: Any, method: str, now: float) -> list[Action]:
        return self._judged(self._verdict().opened(ok, detail, output, method, now), now)

    def unavailable(self, why: str, now: float) -> list[Action]:
        return self._judged(self._verdict().unavailable(why, now), now)

    def ran(self, run: Ran | None, now: float) -> list[Action]:
        return self._judged(self._verdict().ran(run, now), now)

    def ran_here(self, output: Any, why: str, now: float) -> list[Action]:
        return self._judged(self._verdict().ran_here(output, why, now), now)

    def state_opened(self, data: bytes | None, why: str, now: float) -> list[Action]:
        return self._judged(self._verdict().state_opened(data, why, now), now)

    # what it leaves ------------------------------------------------------------------------
    def close(self, now: float) -> list[Action]:
        """The job is over: set aside the candidates asked that never answered, and return what
        the ledger remembers of it (failures, with no evidence against an overrun; the check; the
        receipt and its credit), what it is charged, and the opinion to gossip after a check."""
        job = self.job
        if not job.terminal:
            raise LocalProtocolError(f"cannot close a job in state {job.state.value}")
        for peer in job.candidates:
            if peer not in self.answered and not self.standing.is_aside(peer, now):
                self.standing.set_aside(peer, now)
        out: list[Action] = []
        for peer, why in job.failed.items():
            data = {"job": job.job, "reason": why[:250]} | ({"overrun": True} if peer in job.overran else {})
            out.append(Record("failure", data, peer))
        provider, receipt = job.provider, job.receipt
        if provider is None or receipt is None:
            return out
        if self.checked:
            out.append(Record("verification", {"job": job.job, "method": self.checked, "passed": job.state is R.DONE,
                                               "detail": self.outcome[:250]}, provider))
        out += receipt_records(receipt, "requester", self.order.workload, provider)
        if receipt.body["paid"]:
            out.append(Charge(self.order.purpose, int(receipt.body["paid"])))
        if self.checked in CHECKED and self.order.purpose == "job":
            out.append(PublishOpinion(provider))
        return out

    @property
    def state(self) -> str:
        return self.job.state.value

    @property
    def outcome(self) -> str:
        """What to tell the user: the verdict in full when a result was judged, else why it ended."""
        job = self.job
        if job.state in (R.DONE, R.REJECTED):
            return self.settled_outcome or (job.receipt.body["outcome"] if job.receipt else job.state.value)
        return job.reason or job.state.value

    @property
    def price(self) -> int:
        job = self.job
        return job.bids[job.provider].price if job.provider is not None and job.provider in job.bids else 0

    # internals -----------------------------------------------------------------------------
    def _after(self, step: Step, now: float) -> list[Action]:
        """A conversation step as actions; a result that has just arrived starts its verdict."""
        job = self.job
        out: list[Action] = []
        if step.violation is not None:
            out.append(Penalise(*step.violation))
        # reserves now asked: a Dial sends each its request for bids, on the stream it opens
        out += [Send(peer, msg) for peer, msg in step.send if not isinstance(msg, m.RequestForBids)]
        out += [Dial(self.ads[p]) for p in step.ask if p in self.ads]
        if job.state is R.VERIFYING and job.result is not None and \
                (self.verdict is None or self.verdict.result is not job.result):
            provider = self.ads[job.result.body["provider"]]
            self.verdict = Verdict(self.me, job.job, self.order.workload, self.order.policy, self.order.purpose,
                                   provider, job.result, self.order.params, self.order.inputs, self.checkers,
                                   self.outputs, self.rng, on_event=self.on_event)
            out += self.verdict.start()
        return out

    def _verdict(self) -> Verdict:
        if self.verdict is None or self.job.terminal or self.verdict.final:
            raise LocalProtocolError(f"no result is being judged in state {self.job.state.value}")
        return self.verdict

    def _judged(self, actions: list[Action], now: float) -> list[Action]:
        """The verdict moved: re-award on an unavailable output, sign the receipt on a settlement."""
        v = self.verdict
        assert v is not None
        if v.state is V.UNAVAILABLE:
            self.verdict = None
            return actions + self._after(self.job.output_unavailable(v.reason, now), now)
        if v.settled is None:
            return actions
        s = v.settled
        self.settled_outcome, self.checked, self.output = s.outcome, s.checked, v.output
        if s.accepted:
            self.scorer.observe_speed(v.provider.peer_id, self.order.flops, v.result.body["kernel_ms"] / 1000)
        return actions + self._after(self.job.verified(s.accepted, s.outcome), now)

    def _emit(self, what: str, **data: object) -> None:
        if self.on_event is not None:
            self.on_event(what, data)
