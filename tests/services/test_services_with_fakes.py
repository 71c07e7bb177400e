"""Blobs, trust, peers and market services, each built from fakes of its collaborators."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pnode.identity import Identity
from p2pnode.market.capacity_table import CapacityTable
from p2pnode.market.reputation import Reputation
from p2pnode.protocol.penalties import PeerPenalties
from p2pnode.services.blobs import BlobService
from p2pnode.services.market import AdSettings, MarketService, Resources
from p2pnode.services.peers import PeerPolicy
from p2pnode.services.trust import TrustService
from p2pnode.telemetry.metrics import NodeMetrics
from p2pnode.telemetry.probe import Hardware, HardwareProbe
from p2pnode.verify.sampling import SamplingPolicy
from p2pnode.wire import report as rpt
from p2pnode.wire.blob import (
    CHUNK,
    BlobError,
    BlobUnavailable,
    encode_chunk,
    encode_manifest,
    manifest_for,
)
from p2pnode.wire.capacity_ad import CpuInfo, decode_ad, encode_ad
from p2pnode.wire.names import BLOB_PROTOCOL, CAPACITY_TOPIC
from tests.services.fakes import MemoryNet, Msg, Offences, Peer, ad_for, virtual_now

ROOT = Path(__file__).resolve().parents[2]


# blobs --------------------------------------------------------------------------------------

async def test_blobs_move_checked_over_memory_streams() -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNet(nursery)
        a, b = Identity.generate().peer_id, Identity.generate().peer_id
        holder, reader = BlobService(net.streams(a), Offences().penalise), BlobService(net.streams(b), Offences().penalise)
        net.serve(a, BLOB_PROTOCOL, holder.handle_stream)
        data = os.urandom(2 * CHUNK + 7)
        blob = holder.store.put(data)
        assert await reader.fetch(a, blob) == data and reader.fetched_bytes == len(data)
        with pytest.raises(BlobUnavailable):
            await reader.fetch(a, os.urandom(32))
        net.down.add(a)
        with pytest.raises(BlobUnavailable, match="cannot reach"):
            await reader.fetch(a, os.urandom(32))
        nursery.cancel_scope.cancel()


def test_blobs_kept_in_case_share_a_budget_and_the_rest_stay() -> None:
    """A provider keeps a dataset's shards (transient) only within a budget of their own, oldest
    dropped first, never at the cost of a model or an output it holds."""
    from p2pnode.services.blobs import BlobStore

    store = BlobStore(max_bytes=1000, max_transient=250)
    model = store.put(b"m" * 100)
    shards = [store.put(bytes([i]) * 100, transient=True) for i in range(4)]
    assert model in store and [s in store for s in shards] == [False, False, True, True]
    assert store.put(b"m" * 100, transient=True) == model and model in store  # still not transient
    again = store.put(bytes([3]) * 100)  # put for keeps: out of the transient budget
    more = [store.put(bytes([9 + i]) * 100, transient=True) for i in range(2)]
    assert again in store and all(m in store for m in more) and shards[2] not in store
    assert store.put(b"x" * 300, transient=True) not in store  # over the budget alone: not kept
    assert model in store and again in store
    # a requester's shard its provider has yet to fetch is held: never dropped, then released
    held = [store.put(bytes([20 + i]) * 100, transient=True) for i in range(2)]
    for h in held:
        store.hold(h)
    late = [store.put(bytes([30 + i]) * 100, transient=True) for i in range(3)]
    assert all(h in store for h in held) and late[-1] not in store  # held ones fill the budget
    store.release(held[0])  # its job is over: the oldest that may go, when room is needed
    assert held[0] in store
    newest = store.put(b"n" * 100, transient=True)
    assert held[0] not in store and held[1] in store and newest in store


async def test_a_corrupt_chunk_is_refused_and_its_holder_penalised() -> None:
    from p2pnode.net.framing import FramedStream

    async with trio.open_nursery() as nursery:
        net = MemoryNet(nursery)
        a, b = Identity.generate().peer_id, Identity.generate().peer_id
        offences = Offences()
        reader = BlobService(net.streams(b), offences.penalise)
        data = os.urandom(CHUNK + 5)
        manifest = manifest_for(data)

        async def liar(stream: Any, peer: bytes) -> None:
            fs = FramedStream(stream, max_frame=CHUNK + 1024)
            await fs.receive()
            await fs.send(encode_manifest(manifest))
            await fs.send(encode_chunk(0, b"x" + data[1:CHUNK]))

        net.serve(a, BLOB_PROTOCOL, liar)
        with pytest.raises(BlobError, match="does not match"):
            await reader.fetch(a, manifest.id)
        assert offences.got == [(a, "bad_blob")]
        nursery.cancel_scope.cancel()


# trust --------------------------------------------------------------------------------------

def _trust(tmp_path: Path, offences: Offences, published: list[tuple[str, bytes]]) -> TrustService:
    me = Identity.generate()

    async def publish(topic: str, data: bytes) -> None:
        published.append((topic, data))

    return TrustService(me=me.peer_id, key=me.signing_key, ledger_path=tmp_path / "ledger.sqlite",
                        reputation=Reputation(me.peer_id), policy=SamplingPolicy(), now=virtual_now,
                        penalise=offences.penalise, is_banned=offences.is_banned, publish=publish)


async def test_trust_records_folds_and_publishes(tmp_path: Path) -> None:
    offences, published = Offences(), []
    trust = _trust(tmp_path, offences, published)
    trust.open()
    try:
        peer = Identity.generate().peer_id
        before = trust.score(peer)
        for _ in range(5):
            await trust.record("receipt", {"role": "requester", "job": os.urandom(16), "receipt": b"r",
                                           "workload": "matmul", "accepted": True, "paid": 1}, peer=peer)
        assert trust.score(peer) > before and trust.known(peer)
        await trust.publish_opinion(peer)
        assert published and published[0][0] == "p2pnode/reports/1"
        assert rpt.decode_report(published[0][1]).subject == peer
        assert trust.ledger is not None and trust.ledger.count == 6  # genesis + 5
    finally:
        trust.close()


async def test_a_provider_vouches_for_a_requester_that_paid_it_once_an_hour(tmp_path: Path) -> None:
    """Requesters do no work: a provider's opinion of the ones that paid it is how others come to
    trust their reports. Published at the first paid receipt, not at the next, nor for an unpaid one."""
    offences, published = Offences(), []
    trust = _trust(tmp_path, offences, published)
    trust.open()
    try:
        payer, free = Identity.generate().peer_id, Identity.generate().peer_id
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trust.run)
            for peer, paid in ((free, 0), (payer, 3), (payer, 2)):
                await trust.record("receipt", {"role": "provider", "job": os.urandom(16), "receipt": b"r",
                                               "workload": "matmul", "accepted": True, "paid": paid}, peer=peer)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        reports = [rpt.decode_report(data) for _, data in published]
        assert [(r.subject, r.verdict) for r in reports] == [(payer, "opinion")]
        assert reports[0].pos > 0 and reports[0].neg == 0 and reports[0].reporter == trust.me
    finally:
        trust.close()


def _count_commits(trust: Any) -> list[int]:
    """The size of each batch the ledger commits from now on."""
    assert trust.ledger is not None
    commits: list[int] = []
    real = trust.ledger.append_many

    def counting(items: Any) -> Any:
        commits.append(len(items))
        return real(items)

    trust.ledger.append_many = counting
    return commits


async def test_concurrent_records_share_commits_and_each_waits_for_its_own(tmp_path: Path) -> None:
    from p2pnode.ledger.entry import verify_chain

    trust = _trust(tmp_path, Offences(), [])
    trust.open()
    commits = _count_commits(trust)
    got: dict[int, Any] = {}
    try:
        async def one(i: int) -> None:
            got[i] = await trust.record("penalty", {"code": f"c{i}"}, peer=b"")

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert sorted(got) == list(range(40)) and all(got[i].data["code"] == f"c{i}" for i in got)
        assert sum(commits) == 40 and len(commits) < 40  # batched: fewer commits than entries
        assert trust.ledger.count == 41
        verify_chain(trust.ledger.records(), owner=trust.me)
        trust.ledger.close()  # a failing write reaches every waiter of its batch
        from p2pnode.errors import LedgerError

        with pytest.raises(LedgerError, match="cannot append"):
            await trust.record("penalty", {"code": "late"}, peer=b"")
    finally:
        trust.ledger = None


async def test_callers_that_record_again_at_once_share_the_next_commit(tmp_path: Path) -> None:
    """A caller whose entry is durable and that records its next one at once joins the others in
    the next batch, not a batch of its own: 16 callers x 5 entries in about 5 commits, not twice that."""
    trust = _trust(tmp_path, Offences(), [])
    trust.open()
    commits = _count_commits(trust)
    try:
        async def caller(i: int) -> None:
            for k in range(5):
                await trust.record("penalty", {"code": f"c{i}.{k}"}, peer=b"")

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(caller, i)
        assert sum(commits) == 80
        assert len(commits) <= 6, commits
    finally:
        trust.close()


async def test_bad_reports_cost_the_forwarder_and_banned_forwarders_are_ignored(tmp_path: Path) -> None:
    offences, published = Offences(), []
    trust = _trust(tmp_path, offences, published)
    fwd, reporter = Identity.generate(), Identity.generate()
    assert trust.validate_report(Peer(fwd.peer_id), Msg(b"\xff\xff", reporter.peer_id)) is False
    assert offences.got == [(fwd.peer_id, "malformed")]
    good = rpt.make_report(reporter.signing_key, subject=fwd.peer_id, t_ms=1, pos=1.0, neg=0.0)
    assert trust.validate_report(Peer(fwd.peer_id), Msg(good.raw, reporter.peer_id)) is True
    offences.banned.add(fwd.peer_id)
    assert trust.validate_report(Peer(fwd.peer_id), Msg(good.raw, reporter.peer_id)) is False
    assert len(offences.got) == 1


# peers --------------------------------------------------------------------------------------

class FakeNetwork:
    def __init__(self, connected: list[bytes]) -> None:
        self.up, self.black, self.dropped = list(connected), set[bytes](), list[bytes]()

    def connected(self) -> list[bytes]:
        return list(self.up)

    def blacklisted(self) -> list[bytes]:
        return list(self.black)

    def blacklist(self, peer: bytes) -> None:
        self.black.add(peer)

    def unblacklist(self, peer: bytes) -> None:
        self.black.discard(peer)

    async def disconnect(self, peer: bytes) -> None:
        self.dropped.append(peer)
        if peer in self.up:
            self.up.remove(peer)


async def test_a_ban_drops_the_peer_holds_while_it_lasts_and_lifts(autojump_clock: Any) -> None:
    bad = Identity.generate().peer_id
    network = FakeNetwork([bad])
    remembered: list[tuple[bytes, str]] = []
    policy = PeerPolicy(penalties=PeerPenalties(ban_s=600), now=virtual_now, metrics=NodeMetrics(),
                        remember=lambda p, c, t: remembered.append((p, c)), network=network)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(policy.run)
        for _ in range(10):
            policy.penalise(bad, "malformed")
        await trio.sleep(1)
        assert policy.is_banned(bad) and bad in network.black and network.dropped == [bad]
        network.up.append(bad)  # it dials back in
        await trio.sleep(1)
        assert network.dropped == [bad, bad]
        await trio.sleep(600)
        assert not policy.is_banned(bad) and bad not in network.black  # the ban lifted
        nursery.cancel_scope.cancel()
    assert len(remembered) == 10


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# market -------------------------------------------------------------------------------------

def _market(offences: Offences, published: list[tuple[str, bytes]], me: Identity) -> MarketService:
    async def publish(topic: str, data: bytes) -> None:
        published.append((topic, data))

    return MarketService(
        identity=me, now=virtual_now, table=CapacityTable(), metrics=NodeMetrics(), is_banned=offences.is_banned,
        penalise=offences.penalise, publish=publish,
        settings=AdSettings(price=7, workloads=("matmul",), checker=False, ad_interval=10.0, ad_ttl=30.0),
        resources=Resources(Hardware(cpu=CpuInfo("cpu", 2, 8 << 30, 4 << 30), gpus=()), {"numpy-fp32": 9.0}),
        probe=HardwareProbe(None, use_gpu=False), executor=None, adversary=None,
        addrs=lambda: ["/ip4/127.0.0.1/tcp/4001"], peers=lambda: 1)


async def test_the_market_takes_good_ads_refuses_bad_ones_and_publishes_its_own() -> None:
    offences, published, me = Offences(), [], Identity.generate()
    market = _market(offences, published, me)
    provider, fwd = Identity.generate(), Identity.generate()
    good = encode_ad(ad_for(provider, virtual_now()), provider.signing_key)
    assert market.validate(Peer(fwd.peer_id), Msg(good, provider.peer_id))
    assert provider.peer_id in market.table
    assert not market.validate(Peer(fwd.peer_id), Msg(b"junk", provider.peer_id))
    assert offences.got == [(fwd.peer_id, "malformed")] and market.rejected == {"malformed": 1}
    offences.banned.add(fwd.peer_id)
    assert not market.validate(Peer(fwd.peer_id), Msg(good, provider.peer_id))
    await market.publish_ad()
    topic, data = published[-1]
    ad = decode_ad(data).ad
    assert topic == CAPACITY_TOPIC and ad.peer_id == me.peer_id
    assert [(o.workload, o.price) for o in ad.offers] == [("matmul", 7)] and dict(ad.speed) == {"numpy-fp32": 9.0}


# layout -------------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


ALLOWED = {  # which services each service may import (the direction stated in services/__init__)
    "ports": set(), "operations": set(), "records": {"ports"}, "blobs": {"ports"}, "trust": {"ports"},
    "peers": {"ports"}, "market": {"ports"}, "checks": {"ports", "records"}, "provider": {"ports", "records", "blobs"},
    "conversation": {"ports"}, "requester": {"ports", "records", "blobs", "checks", "conversation", "operations"}, "jobs": {"provider", "requester", "records"},
    "mapper": {"ports", "records", "operations"}, "model_prep": {"ports"},
    "trainer": {"ports", "records", "operations", "mapper"},
}


def test_services_import_one_way_and_never_the_node() -> None:
    folder = ROOT / "p2pnode" / "services"
    for path in folder.glob("*.py"):
        if path.name == "__init__.py":
            continue
        imported = _imports(path)
        assert "p2pnode.node" not in imported, path.name
        services = {i.split(".")[2] for i in imported if i.startswith("p2pnode.services.")}
        assert services <= ALLOWED[path.stem], f"{path.name} imports {services - ALLOWED[path.stem]}"
    users = {p.relative_to(ROOT).as_posix() for p in (ROOT / "p2pnode").rglob("*.py")
             if any(i == "p2pnode.node" for i in _imports(p))}
    assert users == {"p2pnode/cli.py", "p2pnode/swarm/inproc.py"}  # the command line and the in-process host build nodes


@pytest.fixture
def ledger_clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """Virtual time that stands still while the ledger's threads work (the test runs under it)."""
    from tests.services.fakes import thread_aware_clock

    return thread_aware_clock(monkeypatch)


async def test_opinions_go_out_no_faster_than_receivers_take_them_and_the_newest_last(
        tmp_path: Path, ledger_clock: trio.testing.MockClock) -> None:
    """A map of many quick shards checks a job of the same few providers every few milliseconds.
    Its opinions once went out one per job, and every receiver dropped all but its first 20
    (the per-reporter rate): the newest, most informed ones were lost. Now none goes out faster
    than receivers take, and one that waits goes out later as the opinion then stands."""
    from p2pnode.market.rate_limit import TokenBuckets
    from p2pnode.services.trust import OWN_BURST, REPORT_BURST, REPORT_RATE

    me = Identity.generate()
    published: list[tuple[float, rpt.Report]] = []

    async def publish(topic: str, data: bytes) -> None:
        published.append((virtual_now(), rpt.decode_report(data)))

    trust = TrustService(me=me.peer_id, key=me.signing_key, ledger_path=tmp_path / "ledger.sqlite",
                         reputation=Reputation(me.peer_id), policy=SamplingPolicy(), now=virtual_now,
                         penalise=Offences().penalise, is_banned=Offences().is_banned, publish=publish)
    trust.open()
    providers = [Identity.generate().peer_id for _ in range(3)]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trust.run)
            for n in range(60):  # 60 checked jobs in 6 s, 20 of each provider
                peer = providers[n % 3]
                await trust.record("receipt", {"role": "requester", "job": os.urandom(16), "receipt": b"r",
                                               "workload": "matmul", "accepted": True, "paid": 1}, peer=peer)
                await trust.publish_opinion(peer)
                await trio.sleep(0.1)
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
        receiver = TokenBuckets(burst=REPORT_BURST, rate=REPORT_RATE)
        assert all(receiver.take(me.peer_id, t) for t, _ in published)  # a receiver drops none
        assert OWN_BURST <= len(published) < 60 and trust.opinions_coalesced > 0
        for peer in providers:  # the last word on each is the opinion after its last job
            t, last = [(t, r) for t, r in published if r.subject == peer][-1]
            assert last.pos == pytest.approx(trust.rep.opinion(peer, t).pos, abs=1e-3)
            assert t > 6.0 + min(t for t, _ in published)  # published after the last job (at 6 s)
    finally:
        trust.close()
