"""The node's memory and judgement: its ledger, the reputation folded from it, and reports.

:class:`TrustService` is the shell around the pure pieces (``ledger.entry``, ``ledger.evidence``,
``market.reputation``, ``wire.report``):

* every interaction worth remembering is appended to the ledger (:meth:`record`, off the trio
  thread: an append returns after its fsync), and each appended entry is folded into the
  reputation table, which is also rebuilt from the whole ledger at start;
* reports from other peers arrive on ``p2pnode/reports/1``; the gossip validator checks them
  (size, signature, evidence, a per-reporter rate) and only then are they forwarded, stored and
  weighed; invalid ones count against the forwarder like bad ads;
* the node publishes its own opinion of a peer after checking its work (never faster than every
  receiver takes reports: one that must wait goes out later, as it then stands), and a ``cheat``
  report with the signed evidence after a dispute; as a provider, its opinion of a requester that paid it
  (at first payment, then hourly: ``Reputation.vouch_due``), so that requesters, who do no work,
  are vouched for and their reports count.

Collaborators: this node's id and key, the ledger's path, a fresh :class:`Reputation` and the
:class:`SamplingPolicy` (settings), ``now``, ``penalise``, ``is_banned`` and ``publish``. It is the
:class:`~p2pnode.services.ports.Judge` the requester side asks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from p2pnode.config import Config
from p2pnode.errors import PeerError
from p2pnode.ledger import evidence
from p2pnode.ledger.credits import Credits
from p2pnode.ledger.entry import Entry
from p2pnode.ledger.store import FILE_NAME, Ledger
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.market.reputation import CHEAT_WEIGHT, TRUST_REFRESH_S, Reputation
from p2pnode.services.ports import IsBanned, Now, Penalise, Publish
from p2pnode.verify.sampling import SamplingPolicy
from p2pnode.wire import report as rpt
from p2pnode.wire.names import REPORTS_TOPIC
from p2pnode.wire.peer_id import from_base58, to_base58

log = logging.getLogger("p2pnode.trust")
PENALTY_RECORD_INTERVAL_S = 60.0  # one ledger entry per peer and offence code per minute at most
REPORT_BURST, REPORT_RATE = 20, 1.0  # what a node takes from one reporter; beyond: not stored, not forwarded
# What this node publishes: under what every receiver takes, so that none of its reports is dropped
# (a map of many quick shards once published one per shard, and peers dropped all but the first 20).
# An opinion over this rate waits for a token and goes out as it then stands: one report of a
# peer, however many jobs it did meanwhile.
OWN_BURST, OWN_RATE = 16, 0.8
MAX_WAITING = 4096  # peers whose opinion waits (the oldest is dropped past this)


class _Pending:
    """An entry waiting for its group commit."""

    def __init__(self, kind: str, data: Mapping[str, Any], peer: bytes) -> None:
        self.kind, self.data, self.peer = kind, data, peer
        self.done = trio.Event()
        self.entry: Entry | None = None
        self.error: Exception | None = None


def reputation_for(config: Config, me: bytes) -> Reputation:
    return Reputation(me, pretrusted=frozenset(from_base58(p) for p in config.pretrusted),
                      half_life_s=config.reputation_half_life * 86400.0, trust_refresh_s=TRUST_REFRESH_S)


def table_json(rep: Reputation, now: float) -> list[dict[str, Any]]:
    return [{**s.to_json(), "peer": to_base58(s.peer), "distrusted": rep.distrusted(s.peer, now)}
            for s in rep.table(now)]


def offline_credits(config: Config) -> dict[str, Any]:
    """The credit balances folded from the ledger on disk (the node need not run)."""
    with Ledger.inspect(config.data_dir / FILE_NAME) as ledger:
        credits = Credits(ledger.owner)
        for entry in ledger.entries():
            credits.apply(entry)
    return credits.to_json()


def offline_table(config: Config) -> list[dict[str, Any]]:
    """The reputation table folded from the ledger on disk (the node need not run)."""
    with Ledger.inspect(config.data_dir / FILE_NAME) as ledger:
        rep = reputation_for(config, ledger.owner)
        for entry in ledger.entries():
            evidence.apply(rep, entry)
    return table_json(rep, time.time())


class TrustService:
    def __init__(self, *, me: bytes, key: SigningKey, ledger_path: Path, reputation: Reputation,
                 policy: SamplingPolicy, now: Now, penalise: Penalise, is_banned: IsBanned,
                 publish: Publish) -> None:
        self.me, self._key, self.ledger_path = me, key, ledger_path
        self.rep = reputation
        self.credits = Credits(me)
        self.policy = policy
        self.now = now
        self._penalise, self._is_banned, self._publish_on = penalise, is_banned, publish
        self.ledger: Ledger | None = None
        self.report_buckets = TokenBuckets(burst=REPORT_BURST, rate=REPORT_RATE)
        self._own = TokenBuckets(burst=OWN_BURST, rate=OWN_RATE, max_keys=1)
        self._waiting: dict[bytes, None] = {}  # peers whose opinion waits for a token, oldest first
        self._wake = trio.Event()
        self.opinions_coalesced = 0  # opinions folded into a later report of the same peer
        self._recent_penalties: dict[tuple[bytes, str], float] = {}
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[str, Any, bytes]](1024)
        self._vouch_send, self._vouches = trio.open_memory_channel[bytes](256)
        self.reports_received = 0
        self.reports_published = 0
        self.on_entry: list[Callable[[Entry], None]] = []
        self._queued: list[_Pending] = []
        self._writing = False

    # lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        self.ledger = Ledger.open(self.ledger_path, self._key)
        if self.ledger.repaired:
            log.warning("ledger: %d damaged record(s) at the tail moved to quarantine", self.ledger.repaired)
        for entry in self.ledger.entries():
            evidence.apply(self.rep, entry)
            self.credits.apply(entry)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    def _applied(self, entry: Entry) -> None:
        evidence.apply(self.rep, entry)
        self.credits.apply(entry)
        for listener in self.on_entry:
            listener(entry)
        d = entry.data
        if entry.kind == "receipt" and d.get("role") == "provider" and d.get("paid") and entry.peer \
                and self._publish_on is not None and self.rep.vouch_due(entry.peer, entry.t_ms / 1000.0):
            try:  # vouch for a requester that paid: its reports then count where this node is trusted
                self._vouch_send.send_nowait(entry.peer)
            except trio.WouldBlock:
                self.rep.vouched.pop(entry.peer, None)

    async def run(self) -> None:
        """Store received reports and penalties in order (appends are fsynced off the trio thread),
        and publish this node's opinion of the requesters that paid it (``Reputation.vouch_due``)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._vouch)
            nursery.start_soon(self._pace)
            async for kind, data, peer in self._inbox:
                await self.record(kind, data, peer)
            nursery.cancel_scope.cancel()

    async def _vouch(self) -> None:
        async for peer in self._vouches:
            await self.publish_opinion(peer)

    # writing ------------------------------------------------------------------------------
    async def record(self, kind: str, data: Mapping[str, Any], peer: bytes = b"") -> Entry | None:
        """Append to the ledger; returns once the entry is durable (None without a ledger).

        Group commit: while one batch is being written (one transaction, one fsync), entries from
        other tasks queue up and go in the next batch together. The first caller with nothing in
        flight writes batches until the queue is empty (shielded: an entry once queued is written);
        every caller returns only when its own entry is on disk."""
        ledger = self.ledger
        if ledger is None:
            return None
        mine = _Pending(kind, data, peer)
        self._queued.append(mine)
        if not self._writing:
            self._writing = True
            try:
                with trio.CancelScope(shield=True):
                    while self._queued:
                        # the callers the last batch woke run first and queue their next entries:
                        # they go in this batch, not in one of their own (two scheduler rounds, no wait)
                        for _ in range(2):
                            await trio.lowlevel.checkpoint()
                        batch, self._queued = self._queued, []
                        try:
                            entries = await trio.to_thread.run_sync(
                                lambda: ledger.append_many([(p.kind, p.data, p.peer) for p in batch]))
                        except Exception as exc:  # noqa: BLE001 - each waiter gets the writer's error
                            for p in batch:
                                p.error = exc
                                p.done.set()
                            continue
                        for p, entry in zip(batch, entries, strict=True):
                            p.entry = entry
                            self._applied(entry)  # on the trio thread, like every other reader of the table
                            p.done.set()
            finally:
                self._writing = False
        await mine.done.wait()
        if mine.error is not None:
            raise mine.error
        return mine.entry

    def penalty(self, peer: bytes, code: str, now: float) -> None:
        """Remember protocol abuse (rate-limited, so a flood of bad messages is not a flood of writes)."""
        last = self._recent_penalties.get((peer, code))
        if last is not None and now - last < PENALTY_RECORD_INTERVAL_S:
            return
        if len(self._recent_penalties) > 4096:
            self._recent_penalties.clear()
        self._recent_penalties[(peer, code)] = now
        self._queue("penalty", {"code": code[:64]}, peer)

    def _queue(self, kind: str, data: dict[str, Any], peer: bytes) -> None:
        try:
            self._inbox_send.send_nowait((kind, data, peer))
        except trio.WouldBlock:
            log.warning("ledger queue full: dropped a %s entry", kind)

    # reading (the Judge the requester side asks) ------------------------------------------
    def adjust(self, peer: bytes) -> float:
        return self.rep.adjust(peer, self.now())

    def distrusted(self, peer: bytes) -> bool:
        return self.rep.distrusted(peer, self.now())

    def known(self, peer: bytes) -> bool:
        return peer in self.rep.own

    def worked_with(self, peer: bytes) -> bool:
        return self.rep.worked_with(peer)

    def score(self, peer: bytes) -> float:
        return self.rep.score(peer, self.now()).score

    def table(self) -> list[dict[str, Any]]:
        return table_json(self.rep, self.now())

    def check_probability(self, workload: str, peer: bytes) -> float:
        s = self.rep.score(peer, self.now())
        return self.policy.probability(workload, streak=s.streak, score=s.score)

    def verify_method(self, workload: str) -> str:
        return self.policy.method(workload)

    @property
    def freivalds_rounds(self) -> int:
        return self.policy.freivalds_rounds

    # reports ------------------------------------------------------------------------------
    def validate_report(self, forwarder: Any, msg: Any) -> bool:
        """GossipSub validator for the reports topic."""
        fwd = forwarder.to_bytes()
        now = self.now()
        if fwd != self.me and self._is_banned(fwd):
            return False
        try:
            r = rpt.decode_report(msg.data)
        except PeerError as exc:
            if fwd != self.me:
                self._penalise(fwd, exc.code)
            return False
        if r.reporter != bytes(msg.from_id):
            if fwd != self.me:
                self._penalise(fwd, "wrong_origin")
            return False
        if r.reporter == self.me:
            return True
        if not self.report_buckets.take(r.reporter, now):
            return False  # over the reporter's rate: not stored, not forwarded
        self.reports_received += 1
        self._queue("report", {"report": r.raw}, r.reporter)
        return True

    async def publish_opinion(self, subject: bytes) -> None:
        """Publish this node's opinion of ``subject``: now, or, over the rate every receiver takes
        (``OWN_RATE``), once a token frees, as the opinion then stands (:meth:`run` paces them)."""
        if self.opinion_turn(subject, self.now()):
            await self._publish_opinion(subject)

    def opinion_turn(self, subject: bytes, now: float) -> bool:
        """Whether an opinion of ``subject`` goes out now (its token taken); if not, it waits, one
        per peer (a newer one folds into the one waiting), until :meth:`next_waiting` gives it."""
        if subject not in self._waiting and self._own.take(b"", now):
            return True
        if subject in self._waiting:
            self.opinions_coalesced += 1
        self._waiting[subject] = None
        while len(self._waiting) > MAX_WAITING:
            self._waiting.pop(next(iter(self._waiting)))
        self._wake.set()
        return False

    @property
    def opinions_waiting(self) -> int:
        return len(self._waiting)

    def next_waiting(self, now: float) -> bytes | None:
        """The peer whose waiting opinion goes out now (the oldest; its token taken), or None."""
        if not self._waiting or not self._own.take(b"", now):
            return None
        subject = next(iter(self._waiting))
        del self._waiting[subject]
        return subject

    async def _publish_opinion(self, subject: bytes) -> None:
        op = self.rep.opinion(subject, self.now())
        r = rpt.make_report(self._key, subject=subject, t_ms=int(op.t * 1000), pos=op.pos, neg=op.neg)
        await self._publish(r)

    async def _pace(self) -> None:
        """Publish the opinions that wait, oldest first, as tokens free."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._waiting:
                subject = self.next_waiting(self.now())
                if subject is None:
                    await trio.sleep(1 / OWN_RATE)
                else:
                    await self._publish_opinion(subject)

    async def publish_cheat(self, subject: bytes, job: bytes, results: tuple[bytes, bytes, bytes]) -> None:
        """Gossip a dispute's evidence (at once: it counts against the pace of opinions, never
        waits for it); the opinion it carries counts the cheat it proves."""
        self._own.take(b"", self.now())
        op = self.rep.opinion(subject, self.now())
        r = rpt.make_report(self._key, subject=subject, t_ms=int(op.t * 1000), pos=op.pos,
                            neg=op.neg + CHEAT_WEIGHT, verdict="cheat", job=job, evidence=results)
        await self._publish(r)

    async def _publish(self, r: rpt.Report) -> None:
        try:
            await self._publish_on(REPORTS_TOPIC, r.raw)
            self.reports_published += 1
        except Exception as exc:  # noqa: BLE001 - gossip is best effort; the ledger has it
            log.info("publishing a report failed: %s", exc)
