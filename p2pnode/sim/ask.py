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

    def rows(self, params: dict[str, Any], inputs: Any, output: Any, idx: Sequence[int]) -> tuple[dict[str, Any], Any, Any]:
        return dict(params, rows=len(idx)), inputs, output  # row jobs are not simulated


class Ask:
    """The simulated counterpart of ``JobRequester.submit``: whom to ask, then the pipeline's driver."""

    def __init__(self, world: World, me: Node, workload: str, params: dict[str, Any], *, purpose: str = "job",
                 only: list[Any] | None = None, verify: str = "auto", on_end: Done | None = None,
                 extra_input_bytes: int = 0, deadline_s: float = DEADLINE_S) -> None:
        self.w, self.me, self.workload, self.purpose, self.deadline_s = world, me, workload, purpose, deadline_s
        self.wl = workloads.get(workload)
        self.params = self.wl.check(params)
        self.only, self.verify, self.on_end, self.extra_input_bytes = only, verify, on_end, extra_input_bytes
        self.submitted, self.ended, self.state, self.outcome, self.checked = world.t, 0.0, "pending", "", ""
        self.provider, self.digest, self.kernel_ms, self.calibrating = b"", b"", 0, 0
        self.declines: dict[str, int] = {}
        self.events: list[tuple[float, str, dict[str, object]]] = []
        self.pipe: RequesterPipeline | None = None
        self.broken: set[int] = set()
        self.dialed: dict[bytes, float] = {}  # when each provider was sent the request for bids
        self._tick_at = math.inf

    # whom to ask -----------------------------------------------------------------------------
    def start(self) -> None:
        self.w.asks.add(self)
        self.w.drain(self.me)
        if self.only is not None:
            self._auction([ad for ad in self.only if ad.peer_id != self.me.peer_id], first=len(self.only))
            return
        req = self.me.requester
        assert req is not None
        ads = req.candidates(self.workload, self.wl.memory(self.params), K, "", reserves=RESERVES * K)
        fresh = calibration.first_contact(ads, K, self.purpose, req.checks.needs_calibration)
        self.calibrating = len(fresh)
        for ad in fresh:
            Calibration(self.w, self.me, ad, self._calibrated).start()
        if not fresh:
            self._auction(ads)

    def _calibrated(self) -> None:
        self.calibrating -= 1
        if self.calibrating == 0 and self.me.requester is not None:
            self.w.drain(self.me)
            self._auction(self.me.requester.candidates(self.workload, self.wl.memory(self.params), K, "",
                                                       reserves=RESERVES * K))

    def _auction(self, ads: list[Any], first: int = K) -> None:
        me, req, trust = self.me, self.me.requester, self.me.trust
        assert req is not None and trust is not None
        if not me.alive or not ads:
            self._end("error", "requester down" if not me.alive else f"no provider in the market offers {self.workload}")
            return
        policy = trust.verify_method(self.workload) if self.verify == "auto" else self.verify
        order = Order(self.workload, self.params, MAX_PRICE, self.deadline_s, "", policy, self.purpose,
                      self.wl.flops(self.params), bid_window_s=BID_WINDOW_S, overdue_grace_s=OVERDUE_GRACE_S)
        assert me.table is not None
        self.pipe = RequesterPipeline(me=me.peer_id, key=me.identity.signing_key, order=order, asked=ads[:first],
                                      reserves=ads[first:], job_id=me.rng.randbytes(16), nonce=me.rng.randbytes(16),
                                      now=self.w.now(), scorer=req.scorer, standing=me.table.standing,
                                      checkers=req.checks.checkers(self.workload, ""), outputs=Digests(),
                                      rng=req.checks.rng, on_event=self._event)
        self._do(self.pipe.start(self.w.now()))

    # the driver ------------------------------------------------------------------------------
    def _do(self, actions: list[Action]) -> None:
        """Carry out what the pipeline says, then answer its question, finish, or wait."""
        pipe = self.pipe
        assert pipe is not None
        self._carry(actions)
        if pipe.terminal:
            self._finish()
        elif pipe.pending is not None and pipe.pending in actions:
            self._answer(pipe.pending)
        else:
            self._schedule()

    def _carry(self, actions: list[Action]) -> None:
        w = self.w
        for a in actions:
            if isinstance(a, Send):
                w.deliver(self, a.peer, a.msg, self.extra_input_bytes if isinstance(a.msg, m.Inputs) else 0)
            elif isinstance(a, Dial):
                w.engine.after(0.0, w.dial, self, a.ad, self.pipe.job.rfb)  # type: ignore[union-attr]
            elif isinstance(a, Penalise):
                w.violations += 1
            elif isinstance(a, Record):
                w.record(self.me, a.kind, a.data, a.peer)
            elif isinstance(a, PublishCheat):
                w.publish_cheat(self.me, a.subject, a.job, a.results)
            elif isinstance(a, PublishOpinion):
                w.publish_opinion(self.me, a.subject)

    def _answer(self, q: Question) -> None:
        pipe, me = self.pipe, self.me
        assert pipe is not None and me.trust is not None
        if isinstance(q, OpenOutput):
            digest = q.result.body["digest"]
            if q.check != "freivalds":
                self._do(pipe.opened(True, "accepted (unchecked)", digest, "", self.w.now()))
                return
            honest = self.w.honest_digest(self.workload, self.params)
            ok = digest == honest or me.rng.random() < 2.0 ** -me.trust.freivalds_rounds
            self._do(pipe.opened(ok, "verified (freivalds)" if ok else "wrong: Freivalds' check failed", digest,
                                 "freivalds", self.w.now()))
        elif isinstance(q, RunElsewhere):
            Ask(self.w, me, self.workload, q.params, purpose="check", only=[q.ad], verify="none",
                deadline_s=q.deadline_s, on_end=self._ran).start()
        else:
            self._do(pipe.ran_here(None, "row jobs are not simulated", self.w.now()))

    def _ran(self, sub: Ask) -> None:
        if self.state != "pending" or self.pipe is None:
            return
        if not self.me.alive:
            self._end("error", "requester down")
            return
        done = sub.state == "done" and sub.pipe is not None and sub.pipe.job.result is not None
        self._do(self.pipe.ran(Ran(sub.digest, sub.result_raw, sub.job_id) if done else None, self.w.now()))

    # what the network says -------------------------------------------------------------------
    def from_provider(self, p: int, msg: m.Message) -> None:
        if not self.me.alive or p in self.broken or self.pipe is None or self.state != "pending":
            return
        peer = self.w.nodes[p].peer_id
        rtt = (self.w.t - self.dialed[peer]) * 1000 if peer in self.dialed else None
        self._do(self.pipe.receive(peer, msg, self.w.now(), rtt_ms=rtt))

    def dial_failed(self, peer: bytes, why: str) -> None:
        if self.pipe is not None and self.state == "pending":
            self._do(self.pipe.dial_failed(peer, why, self.w.now()))

    def stream_lost(self, p: int) -> None:
        if self.pipe is None or self.state != "pending" or not self.me.alive:
            return
        self.broken.add(p)
        self._do(self.pipe.stream_lost(self.w.nodes[p].peer_id, "stream lost", self.w.now()))

    def peer_gone(self, i: int) -> None:
        """Node ``i`` died: its streams to us end now (the kernel resets them)."""
        pipe = self.pipe
        if i == self.me.index:
            if pipe is not None and not pipe.terminal:
                self.w.abort(self, pipe.job.job, [p for p in (self.w.by_id.get(c) for c in pipe.job.candidates)
                                                  if p is not None and p not in self.broken])
            self._end("error", "requester down")
        elif pipe is not None and self.w.nodes[i].peer_id in pipe.job.candidates and i not in self.broken:
            self.w.engine.after(self.w.net.base_s, self.stream_lost, i)

    def _schedule(self) -> None:
        assert self.pipe is not None
        t = self.pipe.next_wakeup() - EPOCH
        if t < self._tick_at:
            self._tick_at = t
            self.w.engine.at(t, self._tick, t)

    def _tick(self, t: float) -> None:
        if t != self._tick_at or self.pipe is None or self.state != "pending":
            return
        self._tick_at = math.inf
        self._do(self.pipe.tick(self.w.now()))

    def _event(self, what: str, data: dict[str, object]) -> None:
        self.events.append((self.w.t, what, data))
        if what == "decline":
            code = str(data.get("code", ""))
            self.declines[code] = self.declines.get(code, 0) + 1

    # the end ---------------------------------------------------------------------------------
    @property
    def result_raw(self) -> bytes:
        return self.pipe.job.result.raw if self.pipe is not None and self.pipe.job.result is not None else b""

    @property
    def job_id(self) -> bytes:
        return self.pipe.job.job if self.pipe is not None else b""

    def _finish(self) -> None:
        pipe = self.pipe
        assert pipe is not None
        if self.state != "pending":
            return
        actions = pipe.close(self.w.now())
        if self.me.alive and self.me.ledger is not None:
            self._carry(actions)
        job = pipe.job
        if job.result is not None:
            self.digest, self.kernel_ms = job.result.body["digest"], job.result.body["kernel_ms"]
        self.provider, self.checked = job.provider or b"", pipe.checked
        self._end(pipe.state, pipe.outcome)

    def _end(self, state: str, outcome: str) -> None:
        if self.state != "pending":
            return
        self.state, self.ended, self.outcome = state, self.w.t, self.outcome or outcome
        self.w.asks.discard(self)
        if self.on_end is not None:
            self.on_end(self)


class Calibration:
    """The first-contact calibration job (``Checks.calibrate``): an n³ fp32 product sized by the
    advertised speed, checked by Freivalds, its timing judged by ``protocol.calibration``."""

    def __init__(self, world: World, me: Node, ad: Any, done: Callable[[], None]) -> None:
        self.w, self.me, self.ad, self.done = world, me, ad, done

    def start(self) -> None:
        assert self.me.requester is not None
        self.plan = self.me.requester.checks.plan_calibration(self.ad, MAX_PRICE)
        n = self.plan.n
        Ask(self.w, self.me, "matmul", {"m": n, "n": n, "k": n, "dtype": "fp32", "seed": self.me.rng.randrange(1 << 30)},
            purpose="calibration", only=[self.ad], verify="freivalds", on_end=self._ended,
            extra_input_bytes=8 * n * n, deadline_s=CALIBRATION_DEADLINE_S).start()

    def _ended(self, sub: Ask) -> None:
        times = {what: t for t, what, _ in sub.events if what in ("award", "result")}
        if self.me.alive and self.me.requester is not None:
            entry = calibration.judge(self.plan, done=sub.state == "done", job=sub.job_id, award_t=times.get("award"),
                                      result_t=times.get("result"), kernel_ms=sub.kernel_ms,
                                      latency_ms=self.me.requester._latency_ms(self.ad.peer_id))
            if entry is not None:
                self.w.record(self.me, entry.kind, entry.data, entry.peer)
        self.done()
