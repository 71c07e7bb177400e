"""The bulk channel's pure parts: offers, hellos, keys bound to both peers, numbered records."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import PeerError
from p2pnode.wire import blob as wb
from p2pnode.wire import bulk, codec

HOLDER, READER, OTHER = b"h" * 38, b"r" * 38, b"o" * 38


def test_an_offer_goes_through_a_blob_reply_and_a_get_can_ask_for_one() -> None:
    offer = bulk.Offer(4002, os.urandom(16), os.urandom(32))
    assert wb.decode_reply(bulk.encode_offer(offer)).offer == offer
    assert wb.decode_request(wb.encode_get(b"i" * 32, 3, bulk=True)) == (b"i" * 32, 3, True)
    assert wb.decode_request(wb.encode_get(b"i" * 32, 3)) == (b"i" * 32, 3, False)
    assert wb.decode_get(wb.encode_get(b"i" * 32, 3, bulk=True)) == (b"i" * 32, 3)  # older readers' view


@pytest.mark.parametrize("fields", [
    {"port": 0}, {"port": 65536}, {"ticket": b"short"}, {"key": b"k" * 31}, {"port": "4002"}, {"bulk": 1},
])
def test_a_bad_offer_or_get_is_a_peer_error(fields: dict[str, object]) -> None:
    offer = {"t": "bulk", "port": 4002, "ticket": b"t" * 16, "key": b"k" * 32}
    get = {"t": "get", "id": b"i" * 32, "from": 0, "bulk": True}
    target = get if "bulk" in fields else offer
    with pytest.raises(PeerError):
        (wb.decode_request if target is get else wb.decode_reply)(codec.encode(target | fields))


def test_a_hello_names_a_ticket_and_nothing_else_is_one() -> None:
    ticket = os.urandom(16)
    assert bulk.parse_hello(bulk.hello(ticket)) == ticket
    for other in (b"", bulk.hello(ticket)[:-1], b"GET / HTTP/1.1\r\n\r\n" + bytes(8), b"x" * bulk.HELLO):
        assert bulk.parse_hello(other) is None


def test_keys_differ_by_direction_ticket_and_either_peer() -> None:
    secret, ticket = os.urandom(32), os.urandom(16)
    to_holder, to_reader = bulk.keys(secret, ticket, HOLDER, READER)
    assert to_holder != to_reader and len(to_holder) == len(to_reader) == 32
    others = [bulk.keys(secret, os.urandom(16), HOLDER, READER), bulk.keys(secret, ticket, OTHER, READER),
              bulk.keys(secret, ticket, HOLDER, OTHER), bulk.keys(secret, ticket, READER, HOLDER),
              bulk.keys(os.urandom(32), ticket, HOLDER, READER)]
    assert all(to_holder not in pair and to_reader not in pair for pair in others)
    assert bulk.keys(secret, ticket, HOLDER, READER) == (to_holder, to_reader)


def _split(record: bytes) -> tuple[bytes, bytes]:
    return record[:bulk.HEADER], record[bulk.HEADER:]


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=5))
def test_records_open_in_order_with_their_key(messages: list[bytes]) -> None:
    key = os.urandom(32)
    sealer, opener = bulk.Sealer(key), bulk.Opener(key)
    for m in messages:
        header, body = _split(sealer.seal(m))
        assert bulk.record_length(header, maximum=3000) == len(body)
        assert opener.open(header, body) == m


def test_a_record_out_of_place_tampered_or_under_another_key_does_not_open() -> None:
    key = os.urandom(32)
    sealer = bulk.Sealer(key)
    first, second = sealer.seal(b"first"), sealer.seal(b"second")
    with pytest.raises(bulk.BulkError):  # reordered (or the first dropped)
        bulk.Opener(key).open(*_split(second))
    opener = bulk.Opener(key)
    opener.open(*_split(first))
    with pytest.raises(bulk.BulkError):  # replayed
        opener.open(*_split(first))
    tampered = bytearray(second)
    tampered[-1] ^= 1
    with pytest.raises(bulk.BulkError):
        opener.open(*_split(bytes(tampered)))
    assert opener.open(*_split(second)) == b"second"  # a failure does not move the count on
    with pytest.raises(bulk.BulkError):
        bulk.Opener(os.urandom(32)).open(*_split(first))
    _, body = _split(first)
    with pytest.raises(bulk.BulkError):  # the length is authenticated too
        bulk.Opener(key).open((len(body) + 1).to_bytes(4, "big"), body + b"\0")


def test_record_lengths_are_bounded_before_anything_is_read() -> None:
    with pytest.raises(bulk.BulkError):
        bulk.record_length((15).to_bytes(4, "big"), maximum=100)
    with pytest.raises(bulk.BulkError):
        bulk.record_length((117).to_bytes(4, "big"), maximum=100)
    assert bulk.record_length((116).to_bytes(4, "big"), maximum=100) == 116


def test_a_record_opens_into_a_buffer_of_exactly_its_size() -> None:
    key = os.urandom(32)
    header, body = _split(bulk.Sealer(key).seal(b"x" * 100))
    out = bytearray(100)
    bulk.Opener(key).open_into(header, body, memoryview(out))
    assert out == b"x" * 100
    with pytest.raises(bulk.BulkError, match="size"):
        bulk.Opener(key).open_into(header, body, memoryview(bytearray(99)))
