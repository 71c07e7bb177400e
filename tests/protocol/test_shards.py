"""A dataset job's shard decisions, pure: prices that add up, whom the next shard goes to, and
what an overrun, a busy answer or a fault changes."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from p2pnode.protocol.shards import (
    DEPTH,
    MAX_BUSY,
    MAX_OVERRUNS,
    checked_rows,
    choose,
    cut,
    exhausted,
    price_shares,
    setback,
)


@dataclass(frozen=True)
class Ad:
    peer_id: bytes


A, B, C = Ad(b"a"), Ad(b"b"), Ad(b"c")


@given(rows=st.integers(1, 10_000), shard_rows=st.integers(1, 3_000), max_price=st.integers(1, 10**9))
def test_shards_cover_the_rows_and_their_prices_add_up_to_the_most_the_dataset_pays(
        rows: int, shard_rows: int, max_price: int) -> None:
    shards = cut(rows, shard_rows)
    assert sum(s.rows for s in shards) == rows and all(0 < s.rows <= shard_rows for s in shards)
    shares = price_shares(max_price, rows, shards)
    assert sum(shares) == max_price and all(p >= 0 for p in shares)


def test_the_next_shard_goes_to_a_new_provider_then_to_the_least_busy_and_never_to_one_passed_over() -> None:
    (shard,) = cut(10, 10)
    assert choose([A, B, C], shard, {}, providers=2) == A
    assert choose([A, B, C], shard, {b"a": 1}, providers=2) == B
    assert choose([A, B, C], shard, {b"a": 1, b"b": DEPTH}, providers=2) == A  # two in use: room on A
    assert choose([A, B, C], shard, {b"a": DEPTH, b"b": DEPTH}, providers=2) == C  # no room: an idle one
    shard.excluded |= {b"a", b"b", b"c"}
    assert choose([A, B, C], shard, {}, providers=2) is None
    assert exhausted(shard).startswith("shard 0: no provider left")


def test_an_overrun_prices_again_a_busy_answer_waits_and_a_fault_passes_the_provider_over() -> None:
    (shard,) = cut(10, 10)
    for i in range(MAX_OVERRUNS):
        assert setback(shard, b"a", state="no_provider", outcome="overran", overran=True, declined="") == "overrun"
        assert shard.scale == 2.0 ** (i + 1)
    assert b"a" in shard.excluded  # at most MAX_OVERRUNS times
    for _ in range(MAX_BUSY - 1):
        assert setback(shard, b"b", state="no_provider", outcome="busy", overran=False, declined="busy") == "busy"
    assert b"b" not in shard.excluded
    setback(shard, b"b", state="no_provider", outcome="busy", overran=False, declined="busy")
    assert b"b" in shard.excluded
    assert setback(shard, b"c", state="rejected", outcome="wrong", overran=False, declined="") == "fault"
    assert b"c" in shard.excluded and shard.last == "rejected: wrong"
    assert setback(shard, b"d", state="expired", outcome="deadline passed", overran=False, declined="") == "overrun"


def test_checked_rows_are_read_from_the_sample_event() -> None:
    assert checked_rows([{"event": "award"}, {"event": "sample", "rows": 90, "of": 1000}]) == 90
    assert checked_rows([{"event": "award"}]) == 0
