"""The simulated market: nodes built from the node's own core, driven by the event engine.

What runs is the node's code, not a model of it:

* capacity ads are real :class:`~p2pnode.wire.capacity_ad.CapacityAd` objects, signed and encoded
  by ``encode_ad`` and verified by ``decode_ad`` (once per ad: every receiver would get the same
  answer), and offered to each observing node's real :class:`CapacityTable` (its limits, rates,
  sequence and expiry rules);
* each job is the node's own :class:`~p2pnode.protocol.job_pipeline.RequesterPipeline` on the
  requester (``sim/ask.py`` drives it: whom to ask, award, re-awards, the verdict with its checks
  and referees, what the ledger remembers are all its decisions) and a real :class:`ProviderJob`
  machine on every provider it asks, exchanging real signed messages (their encoded sizes are
  what the network carries); providers answer with ``market.bidding.decide``;
* requesters pick candidates with the node's own :class:`JobRequester`, decide calibrations with
  ``protocol.calibration``, rank bids with its :class:`ObservedScorer` and judge with its
  :class:`TrustService` (reputation, sampling policy);
* every interaction a requester learns from is a signed, hash-chained ledger entry
  (``ledger.entry.make_entry``) folded into its reputation by ``ledger.evidence.apply``, and its
  opinions and cheat reports are real signed reports, gossiped and folded into the other
  requesters' reputation the same way;
* flooders meet their mesh peers' rate limits (``TokenBuckets`` as the table's) and
  :class:`PeerPenalties`, which ban them and cut them out of the mesh.

What is modelled: the network (``engine.py``), and execution: a job takes its FLOPs over the
provider's true speed plus a worker overhead, and its output is a digest of the job (the honest
one, or a wrong one when a cheater tampers). A check's verdict follows its method: Freivalds
catches a wrong product unless all its rounds miss (probability 2^-rounds, drawn); a re-run
compares the checker's digest with the provider's.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from p2pnode.errors import AdRejected, PeerError, ProtocolError
from p2pnode.exec import workloads
from p2pnode.identity import Identity
from p2pnode.ledger import evidence
from p2pnode.ledger.entry import Entry, genesis, make_entry
from p2pnode.market import pacing
from p2pnode.market.bidding import Capacity, decide
from p2pnode.market.capacity_table import CapacityTable, TableLimits
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.market.reputation import CHEAT_WEIGHT, TRUST_REFRESH_S, Reputation
from p2pnode.protocol.job_provider import P, ProviderJob
from p2pnode.protocol.penalties import PeerPenalties
from p2pnode.scenario import CHEATER_KINDS
from p2pnode.services.market import MAX_NEW_PER_SYNC
from p2pnode.services.provider import BID_TTL_S
from p2pnode.services.records import JobRecords
from p2pnode.services.requester import JobRequester
from p2pnode.services.trust import OWN_RATE, TrustService
from p2pnode.sim.engine import CLASSES, Engine, Mesh, Network
from p2pnode.verify.sampling import SamplingPolicy
from p2pnode.wire import job as m
from p2pnode.wire import report as rpt
from p2pnode.wire.capacity_ad import CapacityAd, CpuInfo, Offer, SignedAd, decode_ad, encode_ad

EPOCH = 1_800_000_000.0
ADS, REPORTS, CONTROL, JOBS = (CLASSES.index(c) for c in CLASSES)
PRICE = 100
WORKER_OVERHEAD_S = 0.08  # a worker's round trip for a small job (executor on loopback)
VALIDATE_S = 0.0003  # one gossip hop's validation, on top of the link (measured per run too)
HONEST = ("provider", "checker", "requester", "crash")


class JobStreams(Protocol):
    """A job's streams on its requester, as the world's network and providers see them
    (``sim/ask.py``'s ``Talk``)."""

    me: Node
    broken: set[int]
    dialed: dict[bytes, float]

    def from_provider(self, p: int, msg: m.Message) -> None: ...
    def stream_lost(self, p: int) -> None: ...
    def dial_failed(self, peer: bytes, why: str) -> None: ...


class Job(Protocol):
    """A job on its requester, as the world's faults see it (``sim/ask.py``'s ``Ask``)."""

    def peer_gone(self, i: int) -> None: ...


class Pending(NamedTuple):
    """An entry appended but not signed yet: what the reputation folds (``ledger.evidence.apply``)."""

    kind: str
    data: dict[str, Any]
    peer: bytes
    t_ms: int


REPORT = "report"  # a report entry is kept as (REPORT, its bytes, ...) until signed: most entries are
                   # reports, and a dict each held most of a 1,000-node run's 8 GB


@dataclass
class SimLedger:
    """A node's ledger in memory: the same signed, chained entries the SQLite store keeps, signed
    when read (a node at 1,000 nodes stores hundreds of thousands of reports that nobody reads)."""

    key: Any
    _signed: list[Entry] = field(default_factory=list)
    _pending: list[Pending] = field(default_factory=list)

    def append(self, kind: str, data: dict[str, Any], peer: bytes, t: float) -> Pending:
        last = self._pending[-1].t_ms if self._pending else self._signed[-1].t_ms if self._signed else 0
        entry = Pending(kind, data, peer, max(int(t * 1000), last))
        compact = list(data) == [REPORT] and kind == REPORT
        self._pending.append(Pending(kind, data[REPORT], peer, entry.t_ms) if compact else entry)
        return entry

    def __len__(self) -> int:
        return len(self._signed) + len(self._pending) + (not self._signed and bool(self._pending))

    @property
    def entries(self) -> list[Entry]:
        for p in self._pending:
            if not self._signed:
                self._signed.append(genesis(self.key, p.t_ms))
            head = self._signed[-1]
            data = {REPORT: p.data} if isinstance(p.data, bytes) else p.data
            self._signed.append(make_entry(self.key, seq=head.seq + 1, prev=head.hash, t_ms=p.t_ms,
                                           kind=p.kind, peer=p.peer, data=data))
        self._pending.clear()
        return self._signed


@dataclass
class Node:
    index: int
    role: str
    identity: Identity
    host: str
    rng: random.Random
    speed: float = 20.0  # true GFLOP/s
    claim: float = 1.0  # advertised speed over true speed (over-claimers)
    cheat: str = ""
    cheat_rate: float = 0.0
    flood: float = 0.0  # ads a second
    poison: int = 0  # made-up providers in each market sync it serves (a poisoner)
    provides: bool = True
    checker: bool = False
    alive: bool = True
    seq: int = 0
    paced_for: int = 1  # the market size its last ad was paced for
    slots: int = 1
    running: int = 0
    started: set[bytes] = field(default_factory=set)  # jobs holding one of the slots
    queue: deque[Any] = field(default_factory=deque)
    jobs: dict[bytes, tuple[JobStreams, ProviderJob]] = field(default_factory=dict)
    # observers (requesters and a sample of others) hold a market table
    table: CapacityTable | None = None
    # a provider's own evidence of the requesters that paid it, for its vouches (``World.paid``)
    paid_by: Reputation | None = None
    inbox: list[tuple[float, int, SignedAd, bytes]] = field(default_factory=list)  # (at, n, ad, via)
    rejected: dict[str, int] = field(default_factory=dict)
    # requesters
    trust: TrustService | None = None
    pacing: bool = False  # its waiting opinions are being published as its pace allows
    requester: JobRequester | None = None
    ledger: SimLedger | None = None
    # what this node's gossip validator holds against the peers it hears from (flooders)
    penalties: PeerPenalties = field(default_factory=PeerPenalties)
    buckets: TokenBuckets = field(default_factory=lambda: TokenBuckets(burst=TableLimits().rate_burst,
                                                                        rate=TableLimits().rate_per_s))
    last_heard: dict[int, float] = field(default_factory=dict)  # provider index -> arrival

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id


class World:
    """Nodes, the network, the mesh and the clock of one simulated run."""

    def __init__(self, *, seed: int, n: int, base_ms: float, bandwidth_bps: float, ad_interval: float,
                 ad_ttl: float, policy: SamplingPolicy | None = None, paced: bool = True) -> None:
        """``paced``: providers pace their ads by the market's size (``market.pacing``), as nodes
        do; without it every provider publishes every ``ad_interval`` (the version-1 market)."""
        self.engine = Engine(seed)
        self.nrng = np.random.default_rng(seed)
        self.net = Network(self.engine, n, base_ms=base_ms, bandwidth_bps=bandwidth_bps)
        self.mesh = Mesh(self.net, random.Random(seed + 1))
        self.nodes: list[Node] = []
        self.by_id: dict[bytes, int] = {}
        self.ad_interval, self.ad_ttl, self.paced = ad_interval, ad_ttl, paced
        self._market: tuple[float, int] = (-math.inf, 1)
        # a run starts in a market that existed before it: providers pace by its size from their first ad
        self.market_hint = 1
        self.policy = policy or SamplingPolicy()
        self.observers: list[int] = []
        self.asks: set[Job] = set()
        self.ads_published = 0
        self.ad_bytes = 0
        self.reports_published = 0
        self.validate_s = VALIDATE_S
        self._n = 0
        self.digests: dict[tuple[str, str], bytes] = {}
        self.violations = 0
        self.propagation: list[float] = []  # seconds from publishing an ad to an observer holding it
        self.third_party_dials = 0  # requesters' dials of made-up providers (a poisoner's third party)

    # time ------------------------------------------------------------------------------------
    def now(self) -> float:
        return EPOCH + self.engine.t

    @property
    def t(self) -> float:
        return self.engine.t

    # building --------------------------------------------------------------------------------
    def add(self, role: str, host: str, rng: random.Random, **kw: Any) -> Node:
        node = Node(len(self.nodes), role, Identity(rng.randbytes(32)), host, random.Random(rng.random()), **kw)
        self.nodes.append(node)
        self.by_id[node.peer_id] = node.index
        return node

    def make_observer(self, node: Node) -> None:
        node.table = CapacityTable()
        self.observers.append(node.index)

    def make_requester(self, node: Node) -> None:
        ident = node.identity
        node.trust = TrustService(me=ident.peer_id, key=ident.signing_key, ledger_path=None,  # type: ignore[arg-type]
                                  reputation=Reputation(ident.peer_id, trust_refresh_s=TRUST_REFRESH_S), policy=self.policy, now=self.now,
                                  penalise=lambda peer, code: None, is_banned=lambda peer: False,
                                  publish=None)  # type: ignore[arg-type]
        assert node.table is not None
        node.requester = JobRequester(identity=ident, now=self.now, table=node.table, is_banned=lambda p: False,
                                      judge=node.trust, blobs=None, streams=None,  # type: ignore[arg-type]
                                      penalise=lambda peer, code: None, records=JobRecords(16))
        node.requester.checks.rng = random.Random(node.rng.random())
        node.ledger = SimLedger(ident.signing_key)

    def record(self, node: Node, kind: str, data: dict[str, Any], peer: bytes = b"",
               report: rpt.Report | None = None) -> None:
        """Append to ``node``'s ledger and fold the entry into its reputation, as TrustService does
        (``report``: the entry's report, decoded once for every node that stores it)."""
        assert node.ledger is not None and node.trust is not None
        entry = node.ledger.append(kind, data, peer, self.now())
        evidence.apply(node.trust.rep, entry, report)

    # capacity gossip -------------------------------------------------------------------------
    def market_size(self) -> int:
        """The market's size as a provider's table counts it (``CapacityTable.market_size``). Every
        node hears the same ads, so one observer's count stands for all (refreshed each second)."""
        at, size = self._market
        if self.t - at >= 1.0 or at > self.t:
            node = next((self.nodes[o] for o in self.observers if self.nodes[o].alive), None)
            if node is not None and node.table is not None:
                self.drain(node)
                size = max(1, node.table.market_size(self.now()))
            self._market = (self.t, size)
        return max(size, self.market_hint)

    def ad_period(self, node: Node) -> float:
        """Seconds to ``node``'s next periodic ad."""
        if node.flood:
            return 1.0 / node.flood
        base = pacing.gap(self.market_size(), node.paced_for, self.ad_interval) if self.paced else self.ad_interval
        return base * node.rng.uniform(0.98, 1.02)

    def build_ad(self, node: Node) -> bytes:
        now = self.now()
        node.seq = max(node.seq + 1, int(now * 1000))
        offers = [Offer(w, "numpy", PRICE, "gflop") for w in ("matmul", "infer", "train_step")]
        if node.checker:
            offers += [Offer(o.workload, o.backend, PRICE, "check") for o in list(offers)]
        speed = node.speed * node.claim
        node.paced_for = self.market_size()
        ad = CapacityAd(peer_id=node.peer_id, seq=node.seq, issued_at_ms=int(now * 1000),
                        expires_at_ms=int((now + self.ad_life(node)) * 1000),
                        cpu=CpuInfo("simulated", 2, 8 << 30, 6 << 30), offers=tuple(offers),
                        addrs=(f"/ip4/{node.host}/tcp/4001",),
                        speed=(("matmul_f32_numpy", round(speed, 2)), ("matmul_i8_numpy", round(speed / 2, 2))),
                        load=min(1.0, node.running / max(node.slots, 1)))
        return encode_ad(ad, node.identity.signing_key)

    def ad_life(self, node: Node) -> float:
        return pacing.ttl(node.paced_for, self.ad_interval, self.ad_ttl) if self.paced else self.ad_ttl

    def publish_ad(self, node: Node) -> None:
        if not node.alive:
            return
        raw = self.build_ad(node)
        signed = decode_ad(raw)
        self.ads_published += 1
        self.ad_bytes += len(raw)
        if node.flood:
            self._flooded(node, signed, len(raw))
            return
        self._spread(node.index, signed, len(raw))

    def _spread(self, origin: int, signed: SignedAd, nbytes: int) -> None:
        self.mesh.publish(origin, nbytes, ADS)
        hop = self.net.base_s + self.validate_s + self._mean_delay(origin)
        for o, arrival in self.mesh.arrivals(origin, hop, self.nrng):
            self._n += 1
            heapq.heappush(self.nodes[o].inbox, (self.t + arrival, self._n, signed, self._via(o, origin)))
            if len(self.propagation) < 200_000:
                self.propagation.append(arrival)

    def _via(self, o: int, origin: int) -> bytes:
        """The mesh peer an ad from ``origin`` reaches ``o`` through: the origin itself when it is a
        mesh peer of ``o``, else one of ``o``'s mesh peers (a fixed one per origin)."""
        adj = self.mesh.adj[o]
        if origin in adj or not adj:
            return self.nodes[origin].peer_id
        return self.nodes[sorted(adj)[(origin * 7919 + o) % len(adj)]].peer_id

    def _mean_delay(self, origin: int) -> float:
        imp = self.net.impair.get(origin)
        return imp.delay_ms / 1000.0 if imp is not None else 0.0

    def _flooded(self, node: Node, signed: SignedAd, nbytes: int) -> None:
        """A flooder's ad meets its mesh peers' validators: within the peer's rate it spreads, past
        it each mesh peer counts a ``rate_limited`` offence, and bans the flooder at the threshold."""
        now = self.now()
        spread = False
        for v in list(self.mesh.adj[node.index]):
            peer = self.nodes[v]
            self.net.traffic.count(node.index, v, ADS, nbytes)
            if peer.buckets.take(node.peer_id, now):
                spread = True
            elif peer.penalties.record(node.peer_id, "rate_limited", now):
                self.mesh.cut(v, node.index)
        if spread:
            self._spread(node.index, signed, nbytes)

    def drain(self, node: Node) -> None:
        """Offer ``node``'s table the ads that have reached it by now."""
        inbox, table = node.inbox, node.table
        if table is None:
            return
        t = self.t
        while inbox and inbox[0][0] <= t:
            at, _, signed, via = heapq.heappop(inbox)
            if signed.ad.peer_id in self.by_id:
                node.last_heard[self.by_id[signed.ad.peer_id]] = at
            try:
                table.offer(signed, EPOCH + at, via=via)
            except AdRejected as exc:
                node.rejected[exc.code] = node.rejected.get(exc.code, 0) + 1

    def sync(self, node: Node, server: Node, ads: list[SignedAd]) -> int:
        """``node`` takes a market sync of ``ads`` from ``server``, as ``MarketService.sync_from``
        does: at most ``MAX_NEW_PER_SYNC`` providers new to its table, each ad offered via the server."""
        table = node.table
        if table is None or not node.alive:
            return 0
        self.drain(node)
        now, new, taken = self.now(), 0, 0
        for signed in ads:
            if signed.ad.peer_id == node.peer_id:
                continue
            fresh = signed.ad.peer_id not in table
            if fresh and new >= MAX_NEW_PER_SYNC:
                node.rejected["sync_new_cap"] = node.rejected.get("sync_new_cap", 0) + 1
                continue
            try:
                table.offer(signed, now, origin=signed.ad.peer_id, via=server.peer_id)
            except AdRejected as exc:
                node.rejected[exc.code] = node.rejected.get(exc.code, 0) + 1
                continue
            taken += 1
            new += fresh
        return taken

    def publish_report(self, node: Node, report: rpt.Report) -> None:
        self.reports_published += 1
        self.mesh.publish(node.index, len(report.raw), REPORTS)
        hop = self.net.base_s + self.validate_s
        for o, arrival in self.mesh.arrivals(node.index, hop, self.nrng):
            if self.nodes[o].trust is not None:
                self.engine.after(arrival, self._report_arrives, self.nodes[o], report)

    def _report_arrives(self, node: Node, report: rpt.Report) -> None:
        if node.alive and node.trust is not None and node.trust.report_buckets.take(report.reporter, self.t):
            self.record(node, "report", {"report": report.raw}, report.reporter, report)

    def publish_opinion(self, node: Node, subject: bytes) -> None:
        """``node`` gossips its opinion of ``subject``, as ``TrustService.publish_opinion`` does:
        now, or once the pace of its reports allows, as the opinion then stands."""
        assert node.trust is not None
        if node.trust.opinion_turn(subject, self.now()):
            self._opinion_now(node, subject)
        elif not node.pacing:
            node.pacing = True
            self.engine.after(1 / OWN_RATE, self._pace, node)

    def _pace(self, node: Node) -> None:
        assert node.trust is not None
        subject = node.trust.next_waiting(self.now()) if node.alive else None
        if subject is not None:
            self._opinion_now(node, subject)
        if node.alive and node.trust.opinions_waiting:
            self.engine.after(0.0 if subject is not None else 1 / OWN_RATE, self._pace, node)
        else:
            node.pacing = False

    def _opinion_now(self, node: Node, subject: bytes) -> None:
        assert node.trust is not None
        op = node.trust.rep.opinion(subject, self.now())
        self.publish_report(node, rpt.make_report(node.identity.signing_key, subject=subject, t_ms=int(op.t * 1000),
                                                  pos=op.pos, neg=op.neg))

    def paid(self, node: Node, requester: bytes) -> None:
        """A provider was paid by ``requester``: it vouches for it when due, as ``TrustService`` does."""
        rep = node.paid_by = node.paid_by or Reputation(node.peer_id)
        rep.observe(requester, "paid", self.now())
        if rep.vouch_due(requester, self.now()):
            op = rep.opinion(requester, self.now())
            self.publish_report(node, rpt.make_report(node.identity.signing_key, subject=requester,
                                                      t_ms=int(op.t * 1000), pos=op.pos, neg=op.neg))

    def publish_cheat(self, node: Node, subject: bytes, job: bytes, results: tuple[bytes, bytes, bytes]) -> None:
        """``node`` gossips a cheat report on ``subject``, as ``TrustService.publish_cheat`` does."""
        assert node.trust is not None
        op = node.trust.rep.opinion(subject, self.now())
        self.publish_report(node, rpt.make_report(node.identity.signing_key, subject=subject, t_ms=int(op.t * 1000),
                                                  pos=op.pos, neg=op.neg + CHEAT_WEIGHT, verdict="cheat", job=job,
                                                  evidence=results))

    # requesters' streams ---------------------------------------------------------------------
    def dial(self, ask: JobStreams, ad: Any, rfb: m.RequestForBids) -> None:
        """``ask`` dials ``ad``'s provider and sends the request for bids. A made-up provider (a
        poisoner's) cannot be dialed: its address is a third party's, which counts the dial."""
        me, peer = ask.me, ad.peer_id
        p = self.by_id.get(peer)
        ask.dialed[peer] = self.t
        if p is None:
            self.third_party_dials += 1
            ask.dial_failed(peer, "unreachable")
        elif not self.net.send(me.index, p, len(rfb.encode()), self.on_rfb, self.nodes[p], ask, rfb):
            ask.broken.add(p)
            ask.dial_failed(peer, "unreachable")

    def deliver(self, ask: JobStreams, peer: bytes, msg: m.Message, extra: int = 0) -> None:
        """``ask`` sends ``msg`` to ``peer`` on their stream; a stream that breaks ends the
        provider's part, and the requester hears of it."""
        p = self.by_id.get(peer)
        if p is None or p in ask.broken:
            return
        if not self.net.send(ask.me.index, p, len(msg.encode()) + extra, self.on_job_msg, self.nodes[p], ask, msg):
            ask.broken.add(p)
            self.abort(msg.job, [p])
            self.engine.after(self.net.base_s, ask.stream_lost, p)

    def abort(self, job: bytes, providers: list[int]) -> None:
        """The streams of ``job`` to ``providers`` are gone: each drops its part."""
        for p in providers:
            node = self.nodes[p]
            entry = node.jobs.pop(job, None)
            if entry is not None:
                entry[1].abort("stream lost")
                self._free(node, entry)

    # faults ----------------------------------------------------------------------------------
    def kill(self, i: int) -> None:
        node = self.nodes[i]
        if not node.alive:
            return
        node.alive = False
        self.net.alive[i] = False
        for ask in list(self.asks):
            ask.peer_gone(i)
        node.jobs.clear()
        node.queue.clear()
        node.started.clear()
        node.running = 0
        self.mesh.refresh(self.observers)

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        if node.alive:
            return
        node.alive = True
        self.net.alive[i] = True
        self.mesh.refresh(self.observers)
        if node.provides:
            self.engine.after(node.rng.uniform(0.5, 1.5), self.publish_ad, node)

    # providers -------------------------------------------------------------------------------
    def capacity(self, node: Node) -> Capacity:
        speeds = (("matmul_f32_numpy", node.speed * node.claim),)
        return Capacity(backends=("numpy",), free_memory=int((6 << 30) * 0.8), gflops=node.speed * node.claim,
                        price_per_gflop=PRICE, busy=node.running + len(node.queue) >= 2 * node.slots,
                        offered=("matmul", "infer", "train_step") if node.provides else (), speeds=speeds)

    def honest_digest(self, workload: str, params: dict[str, Any]) -> bytes:
        key = (workload, repr(sorted(params.items())))
        if key not in self.digests:
            self.digests[key] = hashlib.sha256(key[1].encode() + workload.encode()).digest()
        return self.digests[key]

    def output_digest(self, node: Node, workload: str, params: dict[str, Any]) -> bytes:
        """What ``node`` returns: the honest digest, or a wrong one when it cheats on this job."""
        honest = self.honest_digest(workload, params)
        kind = node.cheat
        if kind in ("", "overclaim", "stall"):
            return honest
        if kind == "skip" or node.rng.random() < node.cheat_rate:
            tag = b"collude" if kind == "collude" else node.peer_id + node.rng.randbytes(4)
            return hashlib.sha256(honest + tag).digest()
        return honest

    def on_rfb(self, node: Node, ask: JobStreams, rfb: m.RequestForBids) -> None:
        if not node.alive:
            return
        pj = ProviderJob(node.peer_id, rfb, self.now(), key=node.identity.signing_key)
        d = decide(rfb, self.capacity(node), self.now())
        msg: m.Message = pj.bid(d.price, d.estimate_ms, self.now() + BID_TTL_S, d.backend) if d.bid else \
            pj.decline(d.code, d.reason)
        if d.bid:
            node.jobs[rfb.job] = (ask, pj)
            self.engine.at(pj.until - EPOCH, self._provider_tick, node, rfb.job, pj.until)
        self.reply(node, ask, msg)

    def reply(self, node: Node, ask: JobStreams, msg: m.Message, extra: int = 0) -> None:
        raw = msg.encode()
        if not self.net.send(node.index, ask.me.index, len(raw) + extra, ask.from_provider, node.index, msg):
            self._broken(node, ask, msg.job)

    def _broken(self, node: Node, ask: JobStreams, job: bytes) -> None:
        """A stream broke: the provider drops its part; the requester hears of it."""
        entry = node.jobs.pop(job, None)
        if entry is not None:
            entry[1].abort("stream lost")
            self._free(node, entry)
        self.engine.after(self.net.base_s, ask.stream_lost, node.index)

    def on_job_msg(self, node: Node, ask: JobStreams, msg: m.Message) -> None:
        entry = node.jobs.get(msg.job)
        if not node.alive or entry is None:
            return
        _, pj = entry
        before = pj.state
        try:
            pj.receive(msg, self.now())
        except (PeerError, ProtocolError):
            self.violations += 1
            node.jobs.pop(msg.job, None)
            return
        if isinstance(msg, m.Receipt) and msg.body["paid"]:
            self.paid(node, msg.body["requester"])
        if pj.state is P.RUNNING and before is not P.RUNNING:
            node.queue.append(entry)
            self._start_next(node)
        if pj.terminal:
            node.jobs.pop(msg.job, None)
            if before is P.RUNNING:
                self._free(node, entry)

    def _free(self, node: Node, entry: tuple[JobStreams, ProviderJob]) -> None:
        if entry in node.queue:
            node.queue.remove(entry)
        elif entry[1].job in node.started:
            node.started.discard(entry[1].job)
            node.running = max(0, node.running - 1)
            self._start_next(node)

    def _start_next(self, node: Node) -> None:
        while node.running < node.slots and node.queue:
            ask, pj = node.queue.popleft()
            if pj.terminal:
                continue
            node.running += 1
            node.started.add(pj.job)
            wl = workloads.get(pj.rfb.workload)
            p = wl.check(pj.params)
            kernel = wl.flops(p) / (node.speed * 1e9)
            took = kernel + WORKER_OVERHEAD_S * node.rng.uniform(0.7, 1.5)
            if node.cheat == "stall":
                took = math.inf
            self.engine.after(m.HEARTBEAT_S, self._heartbeat, node, ask, pj, self.t, took)
            if math.isfinite(took):
                self.engine.after(took, self._finished, node, ask, pj, kernel, wl.output_bytes(p))

    def _heartbeat(self, node: Node, ask: JobStreams, pj: ProviderJob, started: float, took: float) -> None:
        if not node.alive or pj.state is not P.RUNNING or node.jobs.get(pj.job, (None, None))[1] is not pj:
            return
        frac = min(0.99, (self.t - started) / took) if math.isfinite(took) else 0.5
        self.reply(node, ask, pj.progress(frac))
        self.engine.after(m.HEARTBEAT_S, self._heartbeat, node, ask, pj, started, took)

    def _finished(self, node: Node, ask: JobStreams, pj: ProviderJob, kernel_s: float, out_bytes: int) -> None:
        if not node.alive or pj.state is not P.RUNNING or node.jobs.get(pj.job, (None, None))[1] is not pj:
            return
        digest = self.output_digest(node, pj.rfb.workload, pj.params)
        result = pj.finish(digest=digest, output=b"", kernel_ms=max(1, int(kernel_s * 1000)), backend="numpy",
                           blob=b"", now=self.now())
        self.engine.at(pj.until - EPOCH, self._provider_tick, node, pj.job, pj.until)
        node.running = max(0, node.running - 1)
        node.started.discard(pj.job)
        self._start_next(node)
        self.reply(node, ask, result, extra=out_bytes)

    def _provider_tick(self, node: Node, job: bytes, due: float) -> None:
        entry = node.jobs.get(job)
        if entry is None or not node.alive:
            return
        ask, pj = entry
        if pj.until != due:
            self.engine.at(pj.until - EPOCH, self._provider_tick, node, job, pj.until)
            return
        was_running = pj.state is P.RUNNING
        msg = pj.tick(self.now())
        if msg is not None:
            self.reply(node, ask, msg)
        if pj.terminal:
            node.jobs.pop(job, None)
            if was_running:
                self._free(node, entry)


def roles_of(nodes: list[Node]) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = {"providers": [], "requesters": [], "checkers": [], "adversaries": []}
    for n in nodes:
        key = {"provider": "providers", "requester": "requesters", "checker": "checkers"}.get(n.role, "adversaries")
        roles[key].append(n.index)
    return roles


def is_cheater(node: Node) -> bool:
    return node.role in CHEATER_KINDS
