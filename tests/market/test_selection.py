from __future__ import annotations

import contextlib

from hypothesis import given, settings
from nacl.signing import SigningKey

from p2pnode import testing
from p2pnode.errors import AdRejected
from p2pnode.market.capacity_table import CapacityTable, TableLimits
from p2pnode.market.selection import Want, pick, rank
from p2pnode.market.standing import ASIDE_MAX_S, ASIDE_S, PeerStanding, Standing
from p2pnode.wire import capacity_ad as ca
from p2pnode.wire.peer_id import peer_id_from_public_key

NOW = 1_700_000_000.0
WANT = Want("matmul")


def ad(i: int, *, price: int = 100, speed: float = 50.0, addr: str | None = None) -> ca.CapacityAd:
    key = SigningKey(i.to_bytes(4, "big") * 8)
    return ca.CapacityAd(peer_id=peer_id_from_public_key(bytes(key.verify_key)), seq=1,
                         issued_at_ms=int(NOW * 1000), expires_at_ms=int((NOW + 60) * 1000),
                         cpu=ca.CpuInfo("cpu", 4, 8 << 30, 4 << 30),
                         offers=(ca.Offer("matmul", "numpy", price, "gflop"),),
                         addrs=(addr or f"/ip4/127.1.{i // 250}.{i % 250 + 1}/tcp/4001",),
                         speed=(("matmul_f32_numpy", speed),))


def order(ads: list[ca.CapacityAd], standing: dict[bytes, Standing] | None = None,
          source: dict[bytes, bytes] | None = None, aside: set[bytes] | None = None) -> list[ca.CapacityAd]:
    st, src, held = standing or {}, source or {}, aside or set()
    return rank(ads, WANT, standing=lambda p: st.get(p, Standing.UNPROVEN), aside=lambda a: a.peer_id in held,
                salt=b"s", source=lambda p: src.get(p))


def test_claims_of_unproven_providers_buy_nothing_but_their_price() -> None:
    fast_liar = ad(1, price=100, speed=1e9)
    honest = ad(2, price=90, speed=50)
    assert order([fast_liar, honest])[0] is honest
    # once proven, speed counts
    st = {fast_liar.peer_id: Standing.ANSWERED, honest.peer_id: Standing.ANSWERED}
    assert order([fast_liar, honest], st)[0] is fast_liar


def test_standing_comes_before_price() -> None:
    cheap = ad(1, price=1)
    answered, direct = ad(2, price=500), ad(3, price=200)
    st = {answered.peer_id: Standing.ANSWERED, direct.peer_id: Standing.DIRECT}
    assert order([cheap, direct, answered], st) == [answered, direct, cheap]


def test_one_introducers_providers_take_one_turn_in_each_round() -> None:
    sybils = [ad(100 + i, price=1) for i in range(50)]
    honest = [ad(1, price=100), ad(2, price=120)]
    src = {s.peer_id: b"attacker" for s in sybils} | {honest[0].peer_id: b"a", honest[1].peer_id: b"b"}
    top = order(sybils + honest, source=src)[:3]
    assert honest[0] in top and honest[1] in top and sum(a in sybils for a in top) == 1


def test_one_hosts_providers_take_one_turn_in_each_round() -> None:
    sybils = [ad(100 + i, price=1, addr=f"/ip4/127.0.0.9/tcp/{2000 + i}") for i in range(50)]
    honest = [ad(1, price=100), ad(2, price=120)]
    src = {a.peer_id: bytes([i]) for i, a in enumerate(sybils + honest)}  # each told by another peer
    top = order(sybils + honest, source=src)[:3]
    assert honest[0] in top and honest[1] in top and sum(a in sybils for a in top) == 1


def test_one_dial_per_address() -> None:
    third_party = "/ip4/127.0.0.9/tcp/4001"
    sybils = [ad(100 + i, price=1, addr=third_party) for i in range(30)]
    honest = ad(1)
    ranked = order(sybils + [honest])
    assert len(ranked) == 2 and honest in ranked


def test_providers_set_aside_come_last_and_are_not_drawn() -> None:
    ads = [ad(i, price=10 * i) for i in range(1, 8)]
    held = {ads[0].peer_id, ads[1].peer_id}
    ranked = order(ads, aside=held)
    assert ranked[-2:] == ads[:2]
    for n in range(20):
        picked = pick(ranked, 3, aside=lambda a: a.peer_id in held, draw=bytes([n]), reserves=2)
        assert not held & {a.peer_id for a in picked[:3]}
        assert len(picked) == 5 and len({a.peer_id for a in picked}) == 5


def test_set_aside_backs_off_and_an_answer_ends_it() -> None:
    s = PeerStanding()
    p = b"peer"
    assert s.set_aside(p, NOW) == NOW + ASIDE_S
    assert s.set_aside(p, NOW) == NOW + 2 * ASIDE_S
    for _ in range(20):
        until = s.set_aside(p, NOW)
    assert until == NOW + ASIDE_MAX_S
    assert s.is_aside(p, NOW + 1)
    s.answered(p, NOW + 2)
    assert not s.is_aside(p, NOW + 3) and s.has_answered(p)


def test_a_dead_address_sets_aside_every_provider_that_names_only_it() -> None:
    s = PeerStanding()
    s.set_aside(b"sybil-1", NOW, ["/ip4/127.0.0.9/tcp/9"])
    assert s.addresses_dead(["/ip4/127.0.0.9/tcp/9"], NOW + 1)
    assert not s.addresses_dead(["/ip4/127.0.0.9/tcp/9", "/ip4/127.0.0.10/tcp/9"], NOW + 1)
    assert not s.addresses_dead([], NOW + 1)
    assert not s.addresses_dead(["/ip4/127.0.0.9/tcp/9"], NOW + ASIDE_S + 1)


@settings(max_examples=40, deadline=None)
@given(testing.market_arrivals())
def test_a_sybil_operator_in_the_market_leaves_every_honest_provider_listed_and_asked(
        arrivals: list[tuple[bytes, bytes]]) -> None:
    table = CapacityTable(TableLimits(max_peers=64))  # one introducer: 16 unproven places at most
    now = 0.0
    for raw, via in arrivals:
        signed = ca.decode_ad(raw)
        now = signed.ad.issued_at_ms / 1000
        with contextlib.suppress(AdRejected):
            table.offer(signed, now, via=via)
    honest = {ca.decode_ad(raw).ad.peer_id for raw, via in arrivals if via != b"sybil-operator"}
    listed = {e.ad.peer_id for e in table.entries(now)}
    assert honest <= listed
    ranked = rank([e.ad for e in table.entries(now)], WANT, standing=table.standing_of, aside=lambda a: False,
                  salt=b"s", source=table.source_of)
    first = ranked[:3]
    assert sum(a.peer_id not in honest for a in first) <= 1
    assert {a.peer_id for a in ranked} >= honest
