"""100 jobs over a terrible network (as trio's DTLS tests do): 70% of messages delivered, 10% dropped,
10% duplicated, 10% delayed up to 3 s; fixed seed, virtual clock. Every job on every side must end
in a terminal state."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pnode.errors import ProtocolError
from p2pnode.protocol.job_provider import P, ProviderJob
from p2pnode.protocol.job_requester import R, RequesterJob, Step
from p2pnode.wire import job as m
from tests.protocol.job_pair import T0, identity


@dataclass
class Sim:
    rng: random.Random
    now: float = T0
    queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    counter: itertools.count = field(default_factory=itertools.count)
    fate: Counter[str] = field(default_factory=Counter)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self.counter), action))

    def send(self, deliver: Callable[[m.Message], None], msg: m.Message) -> None:
        data = msg.encode()  # over the wire: every message is encoded and decoded
        roll = self.rng.random()
        latency = self.rng.uniform(0.001, 0.05)
        if roll < 0.7:
            copies = [latency]
            self.fate["delivered"] += 1
        elif roll < 0.8:
            copies = []
            self.fate["dropped"] += 1
        elif roll < 0.9:
            copies = [latency, latency + self.rng.uniform(0, 0.5)]
            self.fate["duplicated"] += 1
        else:
            copies = [self.rng.uniform(0, 3.0)]
            self.fate["delayed"] += 1
        for delay in copies:
            self.at(self.now + delay, lambda: deliver(m.decode(data)))

    def run(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            self.now, _, action = heapq.heappop(self.queue)
            action()


def test_every_job_ends_in_a_terminal_state_over_a_terrible_network() -> None:
    sim = Sim(random.Random(20261122))
    requesters: list[RequesterJob] = []
    providers: list[ProviderJob] = []
    key, me = identity(0)

    def setup_job(j: int) -> None:
        pks = dict(identity(i)[::-1] for i in range(1, 4))
        rfb = m.RequestForBids(j.to_bytes(16, "big"), "matmul", {"m": 8, "n": 8, "k": 8}, me, b"N" * 16,
                               1000, int((T0 + 60) * 1000), 0, "", "none")
        req = RequesterJob(me, key, rfb, list(pks), T0, bid_window_s=2.0, stall_s=5.0)
        requesters.append(req)
        mine: dict[bytes, ProviderJob] = {}

        def to_requester(peer: bytes) -> Callable[[m.Message], None]:
            def deliver(msg: m.Message) -> None:
                step = req.receive(peer, msg, sim.now)
                if req.state is R.VERIFYING:
                    step.send += req.verified(True, "accepted").send
                carry(req, step)
            return deliver

        def to_provider(peer: bytes) -> Callable[[m.Message], None]:
            def deliver(msg: m.Message) -> None:
                prov = mine.get(peer)
                if isinstance(msg, m.RequestForBids):
                    if prov is None:  # a duplicate request is the same job: ignore it
                        prov = mine[peer] = ProviderJob(peer, msg, sim.now)
                        providers.append(prov)
                        reply = prov.bid(sim.rng.randint(10, 900), 500, sim.now + 30, "numpy")
                        sim.send(to_requester(peer), reply)
                        schedule_tick(prov)
                    return
                if prov is None or prov.terminal:
                    return
                was = prov.state
                try:
                    prov.receive(msg, sim.now)
                except ProtocolError:
                    return  # duplicates and strays end in ERROR, a terminal state
                if was is not P.RUNNING and prov.state is P.RUNNING:
                    work(prov, peer, pks[peer], req, sim.now + sim.rng.uniform(0.5, 3.0))
                schedule_tick(prov)
            return deliver

        def work(prov: ProviderJob, peer: bytes, pkey, req: RequesterJob, finish: float) -> None:
            def beat() -> None:
                if prov.state is not P.RUNNING:
                    return
                if sim.now >= finish:
                    res = m.make_result(prov.job, pkey, requester=req.me, provider=peer, nonce=req.rfb.nonce,
                                        digest=b"d" * 32, output=b"", kernel_ms=1, backend="numpy")
                    sim.send(to_requester(peer), prov.done(res, sim.now))
                    schedule_tick(prov)
                    return
                sim.send(to_requester(peer), prov.progress(0.5))
                sim.at(sim.now + 1.0, beat)
            sim.at(sim.now + 0.1, beat)

        def schedule_tick(prov: ProviderJob) -> None:
            def tick() -> None:
                prov.tick(sim.now)
                if not prov.terminal:
                    schedule_tick(prov)
            if not prov.terminal:
                sim.at(max(prov.until, sim.now + 0.01), tick)

        def carry(req: RequesterJob, step: Step) -> None:
            for peer, msg in step.send:
                sim.send(to_provider(peer), msg)

        def req_tick() -> None:
            carry(req, req.tick(sim.now))
            if not req.terminal:
                sim.at(max(req.next_wakeup(), sim.now + 0.01), req_tick)

        carry(req, req.start())
        sim.at(req.next_wakeup(), req_tick)

    for j in range(100):
        setup_job(j)

    sim.run(until=T0 + 60 + 120)
    assert all(r.terminal for r in requesters), Counter(r.state for r in requesters)
    assert all(p.terminal for p in providers), Counter(p.state for p in providers)
    outcomes = Counter(r.state for r in requesters)
    # The protocol runs over a reliable, ordered libp2p stream; here messages are also lost and
    # reordered (inputs overtaking their award), which no retransmission repairs. Re-awarding still
    # completes most jobs; this floor guards against regressions (61 with this seed).
    assert outcomes[R.DONE] >= 55, outcomes
    assert sim.fate["dropped"] > 0 and sim.fate["duplicated"] > 0 and sim.fate["delayed"] > 0
    reawarded = sum(1 for r in requesters if r.failed)
    print(f"outcomes {dict(outcomes)}; re-awarded {reawarded}; network {dict(sim.fate)}")
