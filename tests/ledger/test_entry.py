from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.errors import ChainError, PeerError
from p2pnode.ledger.entry import (
    MAX_RECORD,
    ChainVerifier,
    decode_record,
    genesis,
    make_entry,
    verify_chain,
)
from p2pnode.testing import ledger_chains, ledger_data

KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))


def chain(n: int, key: SigningKey = KEY) -> list[bytes]:
    g = genesis(key, 1000)
    out, prev = [g.raw], g.hash
    for i in range(1, n):
        e = make_entry(key, seq=i, prev=prev, t_ms=1000 + i, kind="penalty", peer=g.data["owner"],
                       data={"code": f"c{i}"})
        out.append(e.raw)
        prev = e.hash
    return out


def test_a_chain_verifies_and_reports_owner_count_and_head() -> None:
    records = chain(10)
    v = verify_chain(records)
    assert v.count == 10
    assert v.owner == decode_record(records[0]).data["owner"]
    assert v.head == decode_record(records[-1]).hash


@pytest.mark.parametrize("mutate, where", [
    (lambda r: r[:3] + r[4:], 3),  # an entry removed
    (lambda r: r[:3] + [r[4], r[3]] + r[5:], 3),  # two swapped
    (lambda r: r[:5] + [chain(6, OTHER)[5]] + r[6:], 5),  # foreign record
    (lambda r: [chain(1, OTHER)[0]] + r[1:], 1),  # genesis of another owner: entry 1 fails its signature
])
def test_tampered_chains_fail_at_the_first_bad_entry(mutate, where) -> None:
    with pytest.raises(ChainError) as err:
        verify_chain(mutate(chain(8)))
    assert err.value.seq == where


def test_owner_is_enforced_when_given() -> None:
    with pytest.raises(ChainError, match="another owner"):
        verify_chain(chain(3), owner=genesis(OTHER, 0).data["owner"])


def test_every_single_byte_flip_is_detected() -> None:
    records = chain(3)
    raw = records[2]
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1:]
        with pytest.raises(ChainError):
            verify_chain(records[:2] + [flipped])


def test_make_entry_refuses_data_outside_the_kind_schema() -> None:
    with pytest.raises(ChainError, match="receipt.data.job"):
        make_entry(KEY, seq=1, prev=bytes(32), t_ms=0, kind="receipt", data={"role": "x", "job": 5})
    with pytest.raises(ChainError, match="unknown kind"):
        make_entry(KEY, seq=1, prev=bytes(32), t_ms=0, kind="gossip", data={})


def test_time_running_backwards_is_refused() -> None:
    g = genesis(KEY, 5000)
    e = make_entry(KEY, seq=1, prev=g.hash, t_ms=4000, kind="penalty", data={"code": "x"})
    with pytest.raises(ChainError, match="backwards"):
        verify_chain([g.raw, e.raw])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoding_random_bytes_either_parses_or_raises_chain_error(data: bytes) -> None:
    try:
        decode_record(data)
    except ChainError:
        pass


@settings(max_examples=60, deadline=None)
@given(ledger_chains(), st.data())
def test_any_corruption_of_a_valid_chain_is_caught(records: list[bytes], data: st.DataObject) -> None:
    verify_chain(records)
    i = data.draw(st.integers(0, len(records) - 1))
    j = data.draw(st.integers(0, len(records[i]) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = list(records)
    bad[i] = bad[i][:j] + bytes([bad[i][j] ^ (1 << bit)]) + bad[i][j + 1:]
    v = ChainVerifier()
    with pytest.raises(PeerError):
        for r in bad:
            v.feed(r)
    assert v.count == i


@settings(max_examples=150, deadline=None)
@given(ledger_data(), st.integers(1, 2**40), st.integers(0, 2**40))
def test_a_made_entry_is_what_its_record_decodes_to(item: tuple[str, dict[str, Any]], seq: int, t: int) -> None:
    # make_entry checks by the verifier's rules instead of decoding what it just wrote: the two agree
    kind, data = item
    peer = genesis(KEY, 0).data["owner"]
    e = make_entry(KEY, seq=seq, prev=bytes(range(32)), t_ms=t, kind=kind, peer=peer, data=data)
    assert decode_record(e.raw) == e


def test_make_entry_refuses_what_a_verifier_would() -> None:
    for data, why in (({"code": (1, 2)}, "tuple"), ({"code": "x", "extra": float("nan")}, "non-finite"),
                      ({"code": "x" * (MAX_RECORD + 1)}, "penalty.data.code")):
        with pytest.raises(ChainError, match=why):
            make_entry(KEY, seq=1, prev=bytes(32), t_ms=0, kind="penalty", data=data)
    with pytest.raises(ChainError, match="exceeds the limit"):
        make_entry(KEY, seq=1, prev=bytes(32), t_ms=0, kind="penalty", data={"code": "x", "blob": bytes(MAX_RECORD)})
    with pytest.raises(ChainError, match="not an ed25519 peer id"):
        make_entry(KEY, seq=1, prev=bytes(32), t_ms=0, kind="penalty", peer=b"\x01" * 38, data={"code": "x"})
