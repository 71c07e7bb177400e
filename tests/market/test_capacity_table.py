from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.errors import AdRejected
from p2pnode.market.capacity_table import CapacityTable, TableLimits
from p2pnode.wire import capacity_ad as ca
from p2pnode.wire.peer_id import peer_id_from_public_key

NOW = 1_700_000_000.0


def make(key: SigningKey, seq: int, *, issued: float = NOW, ttl: float = 30.0, host: str = "") -> ca.SignedAd:
    ad = ca.CapacityAd(
        peer_id=peer_id_from_public_key(bytes(key.verify_key)), seq=seq,
        issued_at_ms=int(issued * 1000), expires_at_ms=int((issued + ttl) * 1000),
        cpu=ca.CpuInfo("cpu", 4, 8 << 30, 4 << 30), addrs=(f"/ip4/{host}/tcp/4001",) if host else (),
    )
    return ca.decode_ad(ca.encode_ad(ad, key))


A = SigningKey(b"\x01" * 32)
B = SigningKey(b"\x02" * 32)


def code_of(table: CapacityTable, signed: ca.SignedAd, now: float = NOW, **kw: object) -> str:
    with pytest.raises(AdRejected) as info:
        table.offer(signed, now, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_newest_sequence_wins_and_replays_are_stale() -> None:
    t = CapacityTable()
    t.offer(make(A, 5), NOW)
    t.offer(make(A, 6), NOW + 1)
    assert t.get(make(A, 1).ad.peer_id).ad.seq == 6  # type: ignore[union-attr]
    assert code_of(t, make(A, 6), NOW + 2) == "stale"
    assert code_of(t, make(A, 5), NOW + 2) == "stale"


def test_replay_is_refused_even_after_the_entry_expired() -> None:
    t = CapacityTable()
    old = make(A, 5, ttl=10)
    t.offer(old, NOW)
    t.offer(make(A, 6, ttl=10), NOW + 1)
    t.expire(NOW + 20)
    assert len(t) == 0
    assert code_of(t, make(A, 6, issued=NOW + 15, ttl=10), NOW + 20) == "stale"


def test_time_rules() -> None:
    t = CapacityTable(TableLimits(max_ttl_s=300, max_clock_skew_s=30))
    assert code_of(t, make(A, 1, issued=NOW - 100, ttl=30)) == "expired"
    assert code_of(t, make(A, 1, issued=NOW + 60, ttl=30)) == "future"
    assert code_of(t, make(A, 1, ttl=301)) == "ttl_too_long"
    t.offer(make(A, 2, issued=NOW + 10, ttl=30), NOW)  # within skew


def test_originator_must_be_the_ads_peer() -> None:
    t = CapacityTable()
    other = peer_id_from_public_key(bytes(B.verify_key))
    assert code_of(t, make(A, 1), origin=other) == "wrong_origin"


def test_entries_expire() -> None:
    t = CapacityTable()
    t.offer(make(A, 1, ttl=10), NOW)
    t.offer(make(B, 1, ttl=20), NOW)
    assert len(t.entries(NOW + 5)) == 2
    assert t.expire(NOW + 10) == [make(A, 1).ad.peer_id]
    assert [e.ad.peer_id for e in t.entries(NOW + 10)] == [make(B, 1).ad.peer_id]


def test_expiry_is_capped_by_max_ttl_from_receipt() -> None:
    t = CapacityTable(TableLimits(max_ttl_s=60, max_clock_skew_s=30))
    entry = t.offer(make(A, 1, issued=NOW + 25, ttl=60), NOW)  # skewed clock: exp = now + 85
    assert entry.expires_at == NOW + 60


def test_table_is_bounded() -> None:
    t = CapacityTable(TableLimits(max_peers=1))
    t.offer(make(A, 1), NOW)
    assert code_of(t, make(B, 1)) == "table_full"
    t.offer(make(A, 2), NOW + 1)  # a known peer can still refresh


def test_rate_limit_per_peer() -> None:
    t = CapacityTable(TableLimits(rate_burst=3, rate_per_s=1.0))
    for seq in range(1, 4):
        t.offer(make(A, seq), NOW)
    assert code_of(t, make(A, 4)) == "rate_limited"
    t.offer(make(B, 1), NOW)  # other peers are not affected
    t.offer(make(A, 5), NOW + 1.0)  # one token back after a second


@given(st.lists(st.tuples(st.sampled_from([A, B]), st.integers(0, 50), st.floats(0, 100)), max_size=40))
def test_table_invariants_under_any_sequence(events: list[tuple[SigningKey, int, float]]) -> None:
    limits = TableLimits(rate_burst=5, rate_per_s=0.5)
    t = CapacityTable(limits)
    now = NOW
    best: dict[bytes, int] = {}
    accepted_at: dict[bytes, float] = {}
    for key, seq, dt in events:
        now += dt
        signed = make(key, seq, issued=now)
        peer = signed.ad.peer_id
        # Sequence memory lasts until no older ad can still be valid; after that a freshly
        # signed ad with any sequence is no replay.
        if now >= accepted_at.get(peer, -1e18) + limits.max_ttl_s + limits.max_clock_skew_s:
            best.pop(peer, None)
        try:
            t.offer(signed, now)
        except AdRejected as exc:
            assert exc.code in {"stale", "rate_limited"}
        else:
            assert seq > best.get(peer, -1)
            best[peer] = seq
            accepted_at[peer] = now
        t.expire(now)
        for e in t.entries(now):
            assert e.expires_at > now
            assert e.ad.seq == best[e.ad.peer_id]


def test_signed_ad_is_immutable() -> None:
    signed = make(A, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        signed.ad.seq = 2  # type: ignore[misc]


def test_the_market_size_counts_providers_a_full_table_has_no_room_for_until_their_ads_expire() -> None:
    t = CapacityTable(TableLimits(max_peers=3))
    keys = [SigningKey(bytes([i + 10]) * 32) for i in range(5)]
    for i, key in enumerate(keys):
        signed = make(key, 1, ttl=30.0 + i)
        if i < 3:
            t.offer(signed, NOW)
        else:
            assert code_of(t, signed) == "table_full"
    assert len(t) == 3 and t.market_size(NOW) == 5
    assert t.market_size(NOW + 32.5) == 2  # ads of 30, 31 and 32 s are gone
    t.expire(NOW + 32.5)
    assert len(t) == 0 and t.market_size(NOW + 32.5) == 2
    assert t.market_size(NOW + 40) == 0


def test_ads_may_live_as_long_as_pacing_stretches_them_and_no_longer() -> None:
    from p2pnode.market.pacing import MAX_TTL_S

    t = CapacityTable()
    t.offer(make(A, 1, ttl=MAX_TTL_S), NOW)
    assert t.get(make(A, 1).ad.peer_id).expires_at == NOW + MAX_TTL_S  # type: ignore[union-attr]
    assert code_of(t, make(B, 1, ttl=MAX_TTL_S + 1)) == "ttl_too_long"


# admission ------------------------------------------------------------------------------------
ATTACKER, HONEST_FWD = b"attacker-connection", b"honest-forwarder"


def keys(n: int, base: int = 0) -> list[SigningKey]:
    return [SigningKey((base + i).to_bytes(4, "big") * 8) for i in range(n)]


def test_one_introducer_cannot_fill_the_table() -> None:
    t = CapacityTable(TableLimits(max_peers=64))  # one introducer holds at most 16 unproven places
    taken = 0
    for key in keys(200, 1000):
        try:
            t.offer(make(key, 1), NOW, via=ATTACKER)
            taken += 1
        except AdRejected as exc:
            assert exc.code == "table_full"
    assert taken == 16 == len(t)
    # an honest provider arriving later, through anyone, still finds a place
    honest = make(A, 1)
    t.offer(honest, NOW + 1, via=HONEST_FWD)
    assert honest.ad.peer_id in t


def test_a_full_table_gives_the_most_prolific_introducers_place_to_a_newcomer_of_another() -> None:
    t = CapacityTable(TableLimits(max_peers=8, source_share=1.0))
    sybils = [make(k, 1) for k in keys(8, 2000)]
    for s in sybils:
        t.offer(s, NOW, via=ATTACKER)
    assert len(t) == 8
    for i, key in enumerate(keys(3, 3000)):  # three honest ones through other peers
        t.offer(make(key, 1), NOW + 1 + i, via=HONEST_FWD + bytes([i]))
    assert len(t) == 8
    listed = {e.ad.peer_id for e in t.entries(NOW + 5)}
    assert {make(k, 1).ad.peer_id for k in keys(3, 3000)} <= listed
    # the oldest of the attacker's went first
    assert sybils[0].ad.peer_id not in listed and sybils[-1].ad.peer_id in listed
    # the attacker cannot take places back from introducers holding fewer than it
    assert code_of(t, make(SigningKey(b"\x77" * 32), 1), NOW + 6, via=ATTACKER) == "table_full"


def test_direct_and_answered_providers_displace_unproven_ones_and_are_not_displaced() -> None:
    t = CapacityTable(TableLimits(max_peers=4, source_share=1.0))
    for key in keys(4, 4000):
        t.offer(make(key, 1), NOW, via=ATTACKER)
    direct = make(A, 1)
    t.offer(direct, NOW + 1)  # came over its own connection
    assert direct.ad.peer_id in t and len(t) == 4
    t.standing.answered(make(B, 1).ad.peer_id, NOW)
    t.offer(make(B, 1), NOW + 2, via=HONEST_FWD)  # answered this node before: proven
    assert make(B, 1).ad.peer_id in t
    for key in keys(6, 5000):  # unproven newcomers, however many, do not push them out
        try:
            t.offer(make(key, 1), NOW + 3, via=HONEST_FWD)
        except AdRejected:
            pass
    assert direct.ad.peer_id in t and make(B, 1).ad.peer_id in t


def test_a_provider_set_aside_is_evicted_first() -> None:
    t = CapacityTable(TableLimits(max_peers=3, source_share=1.0))
    ads = [make(k, 1) for k in keys(3, 6000)]
    for a in ads:
        t.offer(a, NOW)  # all direct
    t.standing.set_aside(ads[1].ad.peer_id, NOW)
    newcomer = make(A, 1)
    t.offer(newcomer, NOW + 1)
    assert ads[1].ad.peer_id not in t and newcomer.ad.peer_id in t


def test_a_provider_that_comes_over_its_own_connection_stops_counting_against_its_introducer() -> None:
    t = CapacityTable(TableLimits(max_peers=8))  # 2 unproven places per introducer
    first, second, third = (make(k, 1) for k in keys(3, 7000))
    t.offer(first, NOW, via=ATTACKER)
    t.offer(second, NOW, via=ATTACKER)
    assert code_of(t, third, NOW, via=ATTACKER) == "table_full"
    t.offer(make(keys(1, 7000)[0], 2), NOW + 1)  # ``first`` again, from itself
    assert t.source_of(first.ad.peer_id) == first.ad.peer_id
    t.offer(third, NOW + 2, via=ATTACKER)
    assert third.ad.peer_id in t


def test_one_host_cannot_fill_the_table_through_many_introducers() -> None:
    t = CapacityTable(TableLimits(max_peers=64, source_share=1.0))  # one host: 4 unproven places
    taken = 0
    for i, key in enumerate(keys(40, 11000)):
        try:
            t.offer(make(key, 1, host="127.0.0.9"), NOW, via=bytes([i]))  # each through another peer
            taken += 1
        except AdRejected as exc:
            assert exc.code == "table_full"
    assert taken == 4 == t.on_host("127.0.0.9")


def test_a_full_table_gives_the_largest_hosts_place_to_a_newcomer_from_another() -> None:
    t = CapacityTable(TableLimits(max_peers=8, source_share=1.0, host_share=1.0))
    crowd = [make(k, 1, host="127.0.0.9") for k in keys(8, 12000)]
    for i, c in enumerate(crowd):
        t.offer(c, NOW + i, via=bytes([i]))
    lone = make(A, 1, host="127.0.0.10")
    t.offer(lone, NOW + 10, via=b"somebody")
    assert lone.ad.peer_id in t and crowd[0].ad.peer_id not in t and t.on_host("127.0.0.9") == 7


HOSTS = ["127.0.0.9", "127.0.0.10", ""]


@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([ATTACKER, HONEST_FWD, b"x", None]),
                          st.sampled_from(HOSTS)), max_size=120))
def test_admission_keeps_its_bounds_under_any_arrivals(arrivals: list[tuple[int, bytes | None, str]]) -> None:
    limits = TableLimits(max_peers=10, host_share=0.3)
    t = CapacityTable(limits)
    pool = keys(41, 9000)
    seqs: dict[int, int] = {}
    for step, (i, via, host) in enumerate(arrivals):
        seqs[i] = seqs.get(i, 0) + 1
        try:
            t.offer(make(pool[i], seqs[i], host=host), NOW + step, via=via)
        except AdRejected as exc:
            assert exc.code in {"table_full", "rate_limited"}
        assert len(t) <= limits.max_peers
        per: dict[bytes, int] = {}
        for e in t.entries(NOW + step):
            src = t.source_of(e.ad.peer_id)
            assert src is not None
            if src != e.ad.peer_id:
                per[src] = per.get(src, 0) + 1
        assert all(n <= limits.max_per_source for n in per.values())
        assert all(t.introduced(src) == n for src, n in per.items())
        on = {h: sum(1 for e in t.entries(NOW + step) if e.ad.addrs and h in e.ad.addrs[0]
                     and t.source_of(e.ad.peer_id) != e.ad.peer_id) for h in HOSTS if h}
        assert all(t.on_host(h) == n <= limits.max_per_host for h, n in on.items())
