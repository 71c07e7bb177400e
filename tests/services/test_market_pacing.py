"""What the market costs a node as it grows: a provider's ads paced by the market it sees (its own
interval in a small market, the market's budget in a large one, a TTL stretched to match), the
version-1 topic's 300 s limit, and market syncs that check only the ads not already held."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio
import trio.testing

from p2pnode.identity import Identity
from p2pnode.market import pacing
from p2pnode.market.capacity_table import CapacityTable
from p2pnode.services import market as market_mod
from p2pnode.services.market import AdSettings, MarketService, Resources
from p2pnode.telemetry.metrics import NodeMetrics
from p2pnode.telemetry.probe import Hardware, HardwareProbe
from p2pnode.wire.capacity_ad import CpuInfo, decode_ad, encode_ad
from p2pnode.wire.names import MARKET_PROTOCOL
from tests.services.fakes import MemoryNet, Msg, Offences, Peer, ad_for, virtual_now

BASE, TTL = 10.0, 30.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class SteadyMarket(MarketService):
    """The market service on a machine whose hardware does not change (read without a thread, so
    the mock clock's jumps are not taken while a reading is under way)."""

    async def read_hardware(self) -> Hardware:
        assert self.resources.hardware is not None
        return self.resources.hardware


def _market(published: list[tuple[float, Any]], streams: Any = None, me: Identity | None = None,
            peers: Any = lambda: 1, connected: Any = list) -> MarketService:
    async def publish(topic: str, data: bytes) -> None:
        published.append((trio.current_time(), decode_ad(data).ad))

    offences = Offences()
    return SteadyMarket(
        identity=me or Identity.generate(), now=virtual_now, table=CapacityTable(), metrics=NodeMetrics(),
        is_banned=offences.is_banned, penalise=offences.penalise, publish=publish,
        settings=AdSettings(price=7, workloads=("matmul",), checker=False, ad_interval=BASE, ad_ttl=TTL),
        resources=Resources(Hardware(cpu=CpuInfo("cpu", 2, 8 << 30, 4 << 30), gpus=()), {"numpy-fp32": 9.0}),
        probe=HardwareProbe(None, use_gpu=False), executor=None, adversary=None,
        addrs=lambda: ["/ip4/127.0.0.1/tcp/4001"], peers=peers, connected=connected, streams=streams)


def _fill(market: MarketService, n: int, life: float) -> None:
    """``n`` other providers' ads, each living ``life`` seconds, as gossip would bring them."""
    now = virtual_now()
    for _ in range(n):
        p = Identity.generate()
        ad = ad_for(p, now, life=life)
        assert market.validate(Peer(p.peer_id), Msg(encode_ad(ad, p.signing_key), p.peer_id))


async def test_a_growing_market_stretches_the_interval_and_the_ad_never_lapses(autojump_clock: Any) -> None:
    published: list[tuple[float, Any]] = []
    market = _market(published)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(market.advertise)
        await trio.sleep(25)  # virtual seconds (mock clock): a market of one, every BASE seconds
        _fill(market, 300, life=2000.0)  # now a market of 300: 150 s between ads
        await trio.sleep(600)
        nursery.cancel_scope.cancel()
    times = [t for t, _ in published]
    lives = [(ad.expires_at_ms - ad.issued_at_ms) / 1000 for _, ad in published]
    # at start (once more when its first peer can take it), then every BASE
    assert times[:4] == pytest.approx([0, 2, 2 + BASE, 2 + 2 * BASE], abs=1.5) and lives[:4] == [TTL] * 4
    # the ad after the market grew was due by the last one's pacing; then the market's pace
    assert lives[4] == pytest.approx(pacing.ttl(300, BASE, TTL)) == 450.0
    gaps = [b - a for a, b in zip(times[4:], times[5:], strict=False)]
    assert gaps and all(g == pytest.approx(150.0, abs=1.5) for g in gaps)
    # at every moment the provider's newest ad is live: each lives past the next one
    assert all(t + life > nxt for t, life, nxt in zip(times, lives, times[1:], strict=False))


async def test_ads_over_the_version_1_ttl_are_refused_on_that_topic_only() -> None:
    market = _market([])
    p, q = Identity.generate(), Identity.generate()
    now = virtual_now()
    short, long = ad_for(p, now), ad_for(q, now, life=1000.0)
    assert market.validate_v1(Peer(p.peer_id), Msg(encode_ad(short, p.signing_key), p.peer_id))
    assert not market.validate_v1(Peer(q.peer_id), Msg(encode_ad(long, q.signing_key), q.peer_id))
    assert market.rejected == {"ttl_too_long": 1}
    assert market.validate(Peer(q.peer_id), Msg(encode_ad(long, q.signing_key), q.peer_id))


async def test_a_sync_checks_only_the_ads_it_does_not_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[bytes] = []
    decode = market_mod.decode_ad

    def counting(raw: Any) -> Any:
        checked.append(raw)
        return decode(raw)

    async with trio.open_nursery() as nursery:
        net = MemoryNet(nursery)
        a, b = Identity.generate(), Identity.generate()
        holder, reader = _market([], me=a), _market([], net.streams(b.peer_id), me=b)
        net.serve(a.peer_id, MARKET_PROTOCOL, holder.handle_sync)
        _fill(holder, 40, life=300.0)
        monkeypatch.setattr(market_mod, "decode_ad", counting)
        assert await reader.sync_from(a.peer_id) == 40 and len(checked) == 40
        _fill(holder, 2, life=300.0)
        checked.clear()
        assert await reader.sync_from(a.peer_id) == 2 and len(checked) == 2  # the 40 held: not checked again
        assert len(reader.table) == 42 and not reader.rejected
        nursery.cancel_scope.cancel()


async def test_a_sync_that_times_out_is_tried_again_later(autojump_clock: Any) -> None:
    """A peer too busy to answer the sync at the connection (a swarm starting on one machine) is
    synced again at the later delays instead of being left to gossip."""
    async with trio.open_nursery() as nursery:
        net = MemoryNet(nursery)
        a, b = Identity.generate(), Identity.generate()
        holder = _market([], me=a)
        reader = _market([], net.streams(b.peer_id), me=b, connected=lambda: [a.peer_id])
        _fill(holder, 5, life=300.0)
        asked: list[float] = []

        async def busy_at_first(stream: Any, peer: bytes) -> None:
            asked.append(trio.current_time())
            if len(asked) == 1:
                await trio.sleep_forever()  # the reader gives up after SYNC_TIMEOUT_S
            await holder.handle_sync(stream, peer)

        net.serve(a.peer_id, MARKET_PROTOCOL, busy_at_first)
        nursery.start_soon(reader.sync_new_peers)
        await trio.sleep(60)
        assert len(asked) == len(market_mod.SYNC_AGAIN_S) and asked[1] - asked[0] >= market_mod.SYNC_TIMEOUT_S
        assert len(reader.table) == 5 and reader.synced == 5 and not reader.rejected
        nursery.cancel_scope.cancel()


async def test_gossip_bringing_an_ad_a_sync_brought_first_is_no_offence() -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNet(nursery)
        a, b, p = Identity.generate(), Identity.generate(), Identity.generate()
        holder, reader = _market([], me=a), _market([], net.streams(b.peer_id), me=b)
        net.serve(a.peer_id, MARKET_PROTOCOL, holder.handle_sync)
        now = virtual_now()
        old = ad_for(p, now)
        new = dataclasses.replace(old, seq=old.seq + 1)
        raw_old, raw_new = encode_ad(old, p.signing_key), encode_ad(new, p.signing_key)
        assert holder.validate(Peer(p.peer_id), Msg(raw_new, p.peer_id))
        assert await reader.sync_from(a.peer_id) == 1
        # gossip then brings the same ad: dropped, not forwarded, not a refusal
        assert not reader.validate(Peer(a.peer_id), Msg(raw_new, p.peer_id))
        assert reader.rejected == {} and reader.metrics.ads_duplicate._value.get() == 1
        # an older ad is still a refusal (a replay), counted as such
        assert not reader.validate(Peer(a.peer_id), Msg(raw_old, p.peer_id))
        assert reader.rejected == {"stale": 1}
        # the held ad's very bytes, published under someone else's name, are still refused as such
        assert not reader.validate(Peer(a.peer_id), Msg(raw_new, a.peer_id))
        assert reader.rejected == {"stale": 1, "wrong_origin": 1}
        nursery.cancel_scope.cancel()


async def test_an_ad_published_before_any_peer_goes_out_once_more_when_one_is_there(autojump_clock: Any) -> None:
    published: list[tuple[float, Any]] = []
    connected = [0]
    market = _market(published, peers=lambda: connected[0])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(market.advertise)
        await trio.sleep(4.5)
        assert len(published) == 1  # at start, alone: it reached nobody
        connected[0] = 2
        await trio.sleep(4)
        assert [round(t) for t, _ in published] == [0, 6]  # once more, a grace second after connecting
        await trio.sleep(8)
        assert [round(t) for t, _ in published] == [0, 6, 6 + BASE]  # then only the interval
        nursery.cancel_scope.cancel()
