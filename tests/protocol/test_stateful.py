"""Several pure nodes through arbitrary interleavings (hypothesis stateful testing).

One requester and three providers (any of them may cheat) run one job's machines. Hypothesis
decides, step by step, what the network does with each message in flight (deliver, drop,
duplicate, corrupt, replay an old one, reorder), when providers work and when time passes. The
shell's reactions are modelled as the node has them: a message that does not decode ends that
peer's part (the provider aborts; the requester counts the provider as lost). After every step:

* no double award: at most one provider holds a live award at a time;
* no payment without a receipt: a provider is paid only by a receipt the requester signed, and the
  requester pays at most once;
* no accepted wrong result: an accepted receipt is for a correct digest;
* no job stuck past its deadline: once it has passed, every machine has ended;
* every node's ledger chain verifies.

``tools/fuzz`` runs this with many more examples (``HYPOTHESIS_PROFILE=fuzz``).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from p2pnode.errors import PeerError, ProtocolError
from p2pnode.ledger.entry import genesis, make_entry, verify_chain
from p2pnode.protocol.job_provider import P, ProviderJob
from p2pnode.protocol.job_requester import R, RequesterJob, Step
from p2pnode.testing import mutated
from p2pnode.wire import job as m
from tests.protocol.job_pair import T0, identity

CORRECT = b"C" * 32
DEADLINE_S = 60.0
LATE = DEADLINE_S + 62  # past the deadline and every state's own timeout


class Ledger:
    """A node's chain of signed entries, as the store would append them (pure)."""

    def __init__(self, key: Any) -> None:
        self.key = key
        g = genesis(key, int(T0 * 1000))
        self.records, self.prev, self.seq = [g.raw], g.hash, 0

    def append(self, kind: str, data: dict[str, Any], peer: bytes, now: float) -> None:
        self.seq += 1
        e = make_entry(self.key, seq=self.seq, prev=self.prev, t_ms=int(now * 1000), kind=kind, peer=peer, data=data)
        self.records.append(e.raw)
        self.prev = e.hash


class Swarm(RuleBasedStateMachine):
    @initialize(cheaters=st.sets(st.integers(1, 3), max_size=2), window=st.floats(0.5, 3.0))
    def setup(self, cheaters: set[int], window: float) -> None:
        self.now = T0
        self.rkey, self.me = identity(0)
        self.pkeys = dict(identity(i)[::-1] for i in range(1, 4))
        self.order = list(self.pkeys)
        self.cheaters = {self.order[i - 1] for i in cheaters}
        rfb = m.RequestForBids(b"J" * 16, "matmul", {"m": 8, "n": 8, "k": 8}, self.me, b"N" * 16, 1000,
                               int((T0 + DEADLINE_S) * 1000), 0, "", "none")
        self.req = RequesterJob(self.me, self.rkey, rfb, list(self.pkeys), T0, bid_window_s=window, stall_s=10.0)
        self.provs: dict[bytes, ProviderJob] = {}
        self.inflight: list[tuple[bytes, bytes, bytes]] = []  # (to, from, encoded); to == me: the requester
        self.history: list[tuple[bytes, bytes, bytes]] = []
        self.receipts: list[m.Receipt] = []
        self.awarded: list[bytes] = []
        self.ledgers = {self.me: Ledger(self.rkey), **{p: Ledger(k) for p, k in self.pkeys.items()}}
        self.remembered: set[bytes] = set()
        self.carry(self.me, self.req.start())

    # the network ----------------------------------------------------------------------------
    def carry(self, sender: bytes, step: Step) -> None:
        for to, msg in step.send:
            if isinstance(msg, m.Award):
                self.awarded.append(to)
            self.inflight.append((to, sender, msg.encode()))

    def send_to_requester(self, peer: bytes, msg: m.Message) -> None:
        self.inflight.append((self.me, peer, msg.encode()))

    def deliver(self, to: bytes, sender: bytes, data: bytes) -> None:
        self.history.append((to, sender, data))
        try:
            msg = m.decode(data)
        except PeerError:
            msg = None
        if to == self.me:
            if msg is None:  # the shell resets that stream: the provider is lost if it held the award
                if self.req.provider == sender and self.req.state is R.RUNNING:
                    self.carry(self.me, self.req.receive(sender, m.Failed(self.req.job, "crashed", "garbage"),
                                                         self.now))
                return
            self.carry(self.me, self.req.receive(sender, msg, self.now))
            self.verify()
            return
        prov = self.provs.get(to)
        if msg is None:
            if prov is not None:
                prov.abort("garbage from the requester")
            return
        if isinstance(msg, m.RequestForBids):
            if prov is None:
                prov = self.provs[to] = ProviderJob(to, msg, self.now, key=self.pkeys[to])
                if self.now + 0.5 > msg.deadline_ms / 1000:  # as market.bidding.decide: too late to bid
                    self.send_to_requester(to, prov.decline("deadline", "too late"))
                else:
                    self.send_to_requester(to, prov.bid(100 + self.order.index(to), 500, self.now + 30, "numpy"))
            return  # the same request again (a duplicate): the shell refuses it as a replay
        if prov is None or prov.terminal:
            return
        try:
            prov.receive(msg, self.now)
        except ProtocolError:
            pass  # ends in ERROR, a terminal state

    def verify(self) -> None:
        """The requester's shell: a perfect check of the digest."""
        if self.req.state is R.VERIFYING and self.req.result is not None:
            ok = self.req.result.body["digest"] == CORRECT
            self.carry(self.me, self.req.verified(ok, "verified" if ok else "wrong"))
            self.receipts.append(self.req.receipt)  # type: ignore[arg-type]

    @precondition(lambda self: self.inflight)
    @rule(i=st.integers(0, 50))
    def deliver_one(self, i: int) -> None:
        self.deliver(*self.inflight.pop(i % len(self.inflight)))

    @precondition(lambda self: self.inflight)
    @rule(i=st.integers(0, 50))
    def drop_one(self, i: int) -> None:
        self.inflight.pop(i % len(self.inflight))

    @precondition(lambda self: self.inflight)
    @rule(i=st.integers(0, 50))
    def duplicate_one(self, i: int) -> None:
        self.deliver(*self.inflight[i % len(self.inflight)])

    @precondition(lambda self: self.inflight)
    @rule(i=st.integers(0, 50), data=st.data())
    def corrupt_one(self, i: int, data: st.DataObject) -> None:
        to, sender, raw = self.inflight.pop(i % len(self.inflight))
        self.deliver(to, sender, data.draw(mutated(raw)))

    @precondition(lambda self: self.history)
    @rule(i=st.integers(0, 50))
    def replay_old(self, i: int) -> None:
        self.deliver(*self.history[i % len(self.history)])

    @rule(peer=st.integers(0, 2))
    def provider_works(self, peer: int) -> None:
        p = self.order[peer]
        prov = self.provs.get(p)
        if prov is None or prov.state is not P.RUNNING:
            return
        digest = b"W" * 32 if p in self.cheaters else CORRECT
        self.send_to_requester(p, prov.finish(digest=digest, output=b"", kernel_ms=1, backend="numpy", blob=b"",
                                              now=self.now))

    @rule(peer=st.integers(0, 2), fraction=st.floats(0, 1))
    def provider_reports_progress(self, peer: int, fraction: float) -> None:
        prov = self.provs.get(self.order[peer])
        if prov is not None and prov.state is P.RUNNING:
            self.send_to_requester(prov.me, prov.progress(fraction))

    @rule(dt=st.floats(0.01, 40.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.carry(self.me, self.req.tick(self.now))
        for prov in self.provs.values():
            out = prov.tick(self.now)
            if out is not None:
                self.send_to_requester(prov.me, out)
        self.remember()

    def remember(self) -> None:
        """Each node writes what ended to its ledger, once (as the services do)."""
        for peer, prov in self.provs.items():
            if prov.terminal and peer not in self.remembered:
                self.remembered.add(peer)
                if prov.receipt is not None:
                    self.ledgers[peer].append("receipt", {"role": "provider", "job": prov.job, "receipt": prov.receipt.raw,
                                                          "workload": "matmul"}, self.me, self.now)
        if self.req.terminal and self.me not in self.remembered:
            self.remembered.add(self.me)
            for peer, why in self.req.failed.items():
                self.ledgers[self.me].append("failure", {"job": self.req.job, "reason": why[:200]}, peer, self.now)
            if self.req.receipt is not None:
                self.ledgers[self.me].append("receipt", {"role": "requester", "job": self.req.job,
                                                         "receipt": self.req.receipt.raw, "workload": "matmul"},
                                             self.req.provider or b"", self.now)

    # what must always hold ------------------------------------------------------------------
    @invariant()
    def no_double_award(self) -> None:
        live = [p for p in set(self.awarded) if p not in self.req.failed]
        assert len(live) <= 1, (self.awarded, self.req.failed)

    @invariant()
    def no_payment_without_a_receipt(self) -> None:
        paid = [r for r in self.receipts if r.body["paid"] > 0]
        assert len(paid) <= 1
        signed = {r.raw for r in self.receipts}
        for prov in self.provs.values():
            if prov.state is P.DONE:
                assert prov.receipt is not None and prov.receipt.raw in signed
                assert prov.receipt.body["provider"] == prov.me

    @invariant()
    def no_accepted_wrong_result(self) -> None:
        for r in self.receipts:
            if r.body["accepted"]:
                assert self.req.result is None or self.req.result.body["digest"] == CORRECT
                assert r.body["provider"] not in self.cheaters

    @invariant()
    def nothing_outlives_its_deadline(self) -> None:
        if self.now >= T0 + LATE:
            assert self.req.terminal, self.req.state
            assert all(p.terminal for p in self.provs.values()), {p.me[-2:]: p.state for p in self.provs.values()}

    def teardown(self) -> None:
        self.now = max(self.now, T0 + LATE)
        self.time_passes(0.01)
        self.nothing_outlives_its_deadline()
        for ledger in self.ledgers.values():
            verify_chain(ledger.records)


LONG = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"  # tools/fuzz
Swarm.TestCase.settings = settings(max_examples=5000 if LONG else 60, stateful_step_count=80 if LONG else 40,
                                   deadline=None)
TestSwarm = Swarm.TestCase
