"""One job on a simulated requester: the simulator's driver of the node's own
:class:`~p2pnode.protocol.job_pipeline.RequesterPipeline` (the node's is
``services/conversation.py``).

The pipeline decides everything, as on the node: whom to dial, the award and re-awards, who is
set aside or penalised, whether and how the result is checked, the referees, who is blamed, what
is paid and what the ledger remembers. This driver only carries its actions over the modelled
network (:meth:`World.dial`, :meth:`World.deliver`), runs the checks it asks for as further
simulated jobs, and answers its questions the way the simulator models work: an output is a
digest, the honest one or a cheater's; Freivalds catches a wrong product unless all its rounds
miss (probability 2^-rounds, drawn); a re-run's digest is compared with the provider's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from p2pnode.exec import workloads
from p2pnode.protocol import calibration
from p2pnode.protocol.job_pipeline import Order, RequesterPipeline
from p2pnode.protocol.requester_actions import (
    Action,
    Dial,
    OpenOutput,
    Penalise,
    PublishCheat,
    PublishOpinion,
    Question,
    Ran,
    Record,
    RunElsewhere,
    Send,
)
from p2pnode.services.requester import OVERDUE_GRACE_S, RESERVES
from p2pnode.sim.world import EPOCH, Node, World
from p2pnode.wire import job as m

K = 3  # providers asked per job, as the swarm runner asks
MAX_PRICE, DEADLINE_S, BID_WINDOW_S, CALIBRATION_DEADLINE_S = 10**9, 60.0, 2.0, 30.0
Done = Callable[["Ask"], None]


class Digests:
    """The simulator's outputs (``protocol.verdict.Outputs``): digests, equal or not."""

    def same(self, params: dict[str, Any], a: Any, b: Any) -> tuple[bool, str]:
        return a == b, f"{'agrees' if a == b else 'disagrees'} with an independent run (digest)"

    def rows(self, params: dict[str, Any], inputs: Any, output: Any,
             idx: Sequence[int]) -> tuple[dict[str, Any], Any, Any]:
        return dict(params, rows=len(idx)), inputs, output  # row jobs are not simulated

    def teacher(self, params: dict[str, Any], inputs: Any, output: Any,
                idx: Sequence[int]) -> tuple[dict[str, Any], Any, Any]:
        return dict(params, prompts=len(idx), mode="score"), inputs, output  # generation is not simulated


class Ask:
    """The simulated counterpart of ``JobRequester.submit``: whom to ask (after calibrating the
    providers met for the first time), then a :class:`Talk` drives the job's pipeline; what the
    run's summary reads of the job when it ends."""

    def __init__(self, world: World, me: Node, workload: str, params: dict[str, Any], *, purpose: str = "job",
                 only: list[Any] | None = None, verify: str = "auto", on_end: Done | None = None,
                 extra_input_bytes: int = 0, deadline_s: float = DEADLINE_S) -> None:
        self.w, self.me, self.workload, self.purpose, self.deadline_s = world, me, workload, purpose, deadline_s
        self.wl = workloads.get(workload)
        self.params = self.wl.check(params)
        self.only, self.verify, self.on_end, self.extra_input_bytes = only, verify, on_end, extra_input_bytes
        self.submitted, self.ended, self.state, self.outcome, self.checked = world.t, 0.0, "pending", "", ""
        self.provider, self.digest, self.result_raw, self.job_id, self.kernel_ms = b"", b"", b"", b"", 0
        self.declines: dict[str, int] = {}
        self.events: list[tuple[float, str, dict[str, object]]] = []
        self.talk: Talk | None = None

    def start(self) -> None:
        self.w.asks.add(self)
        if self.only is not None:
            self._auction([ad for ad in self.only if ad.peer_id != self.me.peer_id], first=len(self.only))
            return
        assert self.me.requester is not None
        ads, needs = self._market(), self.me.requester.checks.needs_calibration
        fresh = calibration.first_contact(ads, K, self.purpose, needs)
        if not fresh:
            self._auction(ads)
        for ad in list(fresh):  # all at once: the last to end asks the market again
            Calibration(self.w, self.me, ad, fresh, lambda: self._auction(self._market())).start()

    def _market(self) -> list[Any]:
        assert self.me.requester is not None
        self.w.drain(self.me)
        return self.me.requester.candidates(self.workload, self.wl.memory(self.params), K, "", reserves=RESERVES * K)

    def _auction(self, ads: list[Any], first: int = K) -> None:
        me, req, trust = self.me, self.me.requester, self.me.trust
        assert req is not None and trust is not None and me.table is not None
        if self.state != "pending" or not me.alive or not ads:
            self._end("error", f"no provider in the market offers {self.workload}" if me.alive else "requester down")
            return
        policy = trust.verify_method(self.workload) if self.verify == "auto" else self.verify
        order = Order(self.workload, self.params, MAX_PRICE, self.deadline_s, "", policy, self.purpose,
                      self.wl.flops(self.params), bid_window_s=BID_WINDOW_S, overdue_grace_s=OVERDUE_GRACE_S)
        pipe = RequesterPipeline(me=me.peer_id, key=me.identity.signing_key, order=order, asked=ads[:first],
                                 reserves=ads[first:], job_id=me.rng.randbytes(16), nonce=me.rng.randbytes(16),
                                 now=self.w.now(), scorer=req.scorer, standing=me.table.standing,
                                 checkers=req.checks.checkers(self.workload, ""), outputs=Digests(),
                                 rng=req.checks.rng,
                                 on_event=lambda what, data: self.events.append((self.w.t, what, data)))
        self.talk = Talk(self, pipe)
        self.talk.do(pipe.start(self.w.now()))

    def peer_gone(self, i: int) -> None:
        """Node ``i`` died: its streams to us end now (the kernel resets them)."""
        if self.talk is not None:
            self.talk.peer_gone(i)
        if i == self.me.index:
            self._end("error", "requester down")

    def finished(self, pipe: RequesterPipeline) -> None:
        """The job is over: what it leaves is in the ledger; the summary reads the rest here."""
        job, body = pipe.job, pipe.job.result.body if pipe.job.result is not None else {}
        self.digest, self.kernel_ms, self.result_raw = body.get("digest", b""), body.get("kernel_ms", 0), \
            job.result.raw if job.result is not None else b""
        self.provider, self.checked, self.job_id = job.provider or b"", pipe.checked, job.job
        self._end(pipe.state, pipe.outcome)

    def _end(self, state: str, outcome: str) -> None:
        if self.state != "pending":
            return
        self.state, self.ended, self.outcome = state, self.w.t, self.outcome or outcome
        self.declines = dict(Counter(str(d.get("code", "")) for _, what, d in self.events if what == "decline"))
        self.w.asks.discard(self)
        if self.on_end is not None:
            self.on_end(self)


class Talk:
    """The driver of one job's pipeline over the modelled network: the simulator's counterpart of
    ``services/conversation.py``. It decides nothing."""

    def __init__(self, ask: Ask, pipe: RequesterPipeline) -> None:
        self.ask, self.pipe, self.w, self.me = ask, pipe, ask.w, ask.me
        self.broken: set[int] = set()
        self.dialed: dict[bytes, float] = {}  # when each provider was sent the request for bids
        self._tick_at = math.inf

    @property
    def live(self) -> bool:
        return self.ask.state == "pending" and self.me.alive

    def do(self, actions: list[Action]) -> None:
        """Carry out what the pipeline says, then answer its question, finish, or wait."""
        if self.ask.state != "pending":
            return
        self._carry(actions)
        pipe = self.pipe
        if pipe.terminal:
            if self.me.alive:
                self._carry(pipe.close(self.w.now()))
            self.ask.finished(pipe)
        elif pipe.pending is not None and pipe.pending in actions:
            self._answer(pipe.pending)
        elif (t := pipe.next_wakeup() - EPOCH) < self._tick_at:
            self._tick_at = t
            self.w.engine.at(t, self._tick, t)

    def _carry(self, actions: list[Action]) -> None:
        w = self.w
        for a in actions:
            if isinstance(a, Send):
                w.deliver(self, a.peer, a.msg, self.ask.extra_input_bytes if isinstance(a.msg, m.Inputs) else 0)
            elif isinstance(a, Dial):
                w.engine.after(0.0, self._dial, a.ad)
            elif isinstance(a, Penalise):
                w.violations += 1
            elif isinstance(a, Record):
                w.record(self.me, a.kind, a.data, a.peer)
            elif isinstance(a, PublishCheat):
                w.publish_cheat(self.me, a.subject, a.job, a.results)
            elif isinstance(a, PublishOpinion):
                w.publish_opinion(self.me, a.subject)

    def _answer(self, q: Question) -> None:
        pipe, me, ask = self.pipe, self.me, self.ask
        assert me.trust is not None
        if isinstance(q, OpenOutput):
            digest = q.result.body["digest"]
            if q.check != "freivalds":
                self.do(pipe.opened(True, "accepted (unchecked)", digest, "", self.w.now()))
                return
            honest = self.w.honest_digest(ask.workload, ask.params)
            ok = digest == honest or me.rng.random() < 2.0 ** -me.trust.freivalds_rounds
            self.do(pipe.opened(ok, "verified (freivalds)" if ok else "wrong: Freivalds' check failed", digest,
                                "freivalds", self.w.now()))
        elif isinstance(q, RunElsewhere):
            Ask(self.w, me, ask.workload, q.params, purpose="check", only=[q.ad], verify="none",
                deadline_s=q.deadline_s, on_end=self._ran).start()
        else:
            self.do(pipe.ran_here(None, "row jobs are not simulated", self.w.now()))

    def _dial(self, ad: Any) -> None:
        if self.live:
            self.w.dial(self, ad, self.pipe.job.rfb)

    def _ran(self, sub: Ask) -> None:
        if not self.live:
            return
        done = sub.state == "done" and sub.result_raw
        self.do(self.pipe.ran(Ran(sub.digest, sub.result_raw, sub.job_id) if done else None, self.w.now()))

    def _tick(self, t: float) -> None:
        if t == self._tick_at and self.live:
            self._tick_at = math.inf
            self.do(self.pipe.tick(self.w.now()))

    # what the network says -------------------------------------------------------------------
    def from_provider(self, p: int, msg: m.Message) -> None:
        if self.live and p not in self.broken:
            peer = self.w.nodes[p].peer_id
            rtt = (self.w.t - self.dialed[peer]) * 1000 if peer in self.dialed else None
            self.do(self.pipe.receive(peer, msg, self.w.now(), rtt_ms=rtt))

    def dial_failed(self, peer: bytes, why: str) -> None:
        if self.live:
            self.do(self.pipe.dial_failed(peer, why, self.w.now()))

    def stream_lost(self, p: int) -> None:
        if self.live:
            self.broken.add(p)
            self.do(self.pipe.stream_lost(self.w.nodes[p].peer_id, "stream lost", self.w.now()))

    def peer_gone(self, i: int) -> None:
        job = self.pipe.job
        if i == self.me.index and not job.terminal:
            self.w.abort(job.job, [p for p in (self.w.by_id.get(c) for c in job.candidates)
                                   if p is not None and p not in self.broken])
        elif i != self.me.index and self.w.nodes[i].peer_id in job.candidates and i not in self.broken:
            self.w.engine.after(self.w.net.base_s, self.stream_lost, i)


class Calibration:
    """The first-contact calibration job (``Checks.calibrate``): an n³ fp32 product sized by the
    advertised speed, checked by Freivalds, its timing judged by ``protocol.calibration``."""

    def __init__(self, world: World, me: Node, ad: Any, batch: list[Any], done: Callable[[], None]) -> None:
        """``batch``: the calibrations started together; ``done`` is called when the last ends."""
        self.w, self.me, self.ad, self.batch, self.done = world, me, ad, batch, done

    def start(self) -> None:
        assert self.me.requester is not None
        self.plan = self.me.requester.checks.plan_calibration(self.ad, MAX_PRICE)
        n = self.plan.n
        seed = self.me.rng.randrange(1 << 30)
        Ask(self.w, self.me, "matmul", {"m": n, "n": n, "k": n, "dtype": "fp32", "seed": seed},
            purpose="calibration", only=[self.ad], verify="freivalds", on_end=self._ended,
            extra_input_bytes=8 * n * n, deadline_s=CALIBRATION_DEADLINE_S).start()

    def _ended(self, sub: Ask) -> None:
        times = {what: t for t, what, _ in sub.events if what in ("award", "result")}
        if self.me.alive and self.me.requester is not None:
            entry = self.me.requester.checks.judge_calibration(
                self.plan, done=sub.state == "done", job=sub.job_id, award_t=times.get("award"),
                result_t=times.get("result"), kernel_ms=sub.kernel_ms,
                latency_ms=self.me.requester._latency_ms(self.ad.peer_id))
            if entry is not None:
                self.w.record(self.me, entry.kind, entry.data, entry.peer)
        self.batch.remove(self.ad)
        if not self.batch:
            self.done()
