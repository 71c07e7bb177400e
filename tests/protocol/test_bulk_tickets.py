"""Bulk tickets: single use, short lived, bounded per peer and in all; and the pure fetch's rules."""

from __future__ import annotations

import os

import pytest

from p2pnode.protocol.blob_fetch import BlobFetch
from p2pnode.protocol.bulk_tickets import BulkTickets
from p2pnode.wire import blob as wb

A, B = b"a" * 38, b"b" * 38
BLOB = b"i" * 32


def test_a_ticket_is_taken_once_and_only_before_it_expires() -> None:
    tickets = BulkTickets(ttl_s=10.0)
    t = tickets.issue(A, BLOB, 3, now=100.0)
    assert t is not None and (t.peer, t.blob_id, t.start, t.expires) == (A, BLOB, 3, 110.0)
    assert len(t.id) == 16 and len(t.secret) == 32 and t.id != t.secret
    assert tickets.take(t.id, now=109.9) == t
    assert tickets.take(t.id, now=109.9) is None  # used up
    late = tickets.issue(A, BLOB, 0, now=100.0)
    assert late is not None and tickets.take(late.id, now=110.0) is None
    assert tickets.take(b"\0" * 16, now=100.0) is None


def test_tickets_are_bounded_per_peer_and_in_all_and_expired_ones_make_room() -> None:
    tickets = BulkTickets(per_peer=2, total=3)
    assert tickets.issue(A, BLOB, 0, 0.0) and tickets.issue(A, BLOB, 0, 0.0)
    assert tickets.issue(A, BLOB, 0, 0.0) is None and tickets.refused == 1
    assert tickets.issue(B, BLOB, 0, 0.0)
    assert tickets.issue(B, BLOB, 0, 0.0) is None  # everyone's room is full
    assert tickets.issue(B, BLOB, 0, 10.0) is not None  # the others expired
    tickets.forget(B)
    assert len(tickets) == 0


def test_a_fetch_takes_one_manifest_per_connection_and_chunks_in_order() -> None:
    data = os.urandom(5000)
    manifest = wb.manifest_for(data, 1024)
    got = BlobFetch(manifest.id, 1 << 20, now=0.0)
    got.new_connection()
    with pytest.raises(wb.BlobError, match="before the manifest"):
        got.take_chunk(0, data[:1024])
    got.take_manifest(manifest.raw, now=0.0)
    with pytest.raises(wb.BlobError, match="second manifest"):
        got.take_manifest(manifest.raw, now=0.0)
    with pytest.raises(wb.BlobError, match="out of order"):
        got.take_chunk(1, data[1024:2048])
    got.take_chunk(0, data[:1024])
    with pytest.raises(wb.BlobError, match="does not match"):
        got.take_chunk(1, data[:1024], wb.manifest_for(data[:1024], 1024).hashes[0])
    got.new_connection()  # a resume: the manifest again, then the rest
    got.take_manifest(manifest.raw, now=1.0)
    assert list(got.wanted()) == [1, 2, 3, 4]
    got.take_chunk(1, data[1024:2048])
    for i in got.wanted():  # a channel that receives into the blob's memory
        got.place(i)[:] = data[i * 1024:(i + 1) * 1024]
    with pytest.raises(RuntimeError, match="not complete"):
        got.result()
    for i in got.wanted():
        got.take_placed(i)
    assert got.done and got.result() == data and isinstance(got.result(), bytes)


def test_a_chunk_received_in_place_is_checked_where_it_is() -> None:
    data = os.urandom(3000)
    manifest = wb.manifest_for(data, 1024)
    got = BlobFetch(manifest.id, 1 << 20, now=0.0)
    got.new_connection()
    with pytest.raises(wb.BlobError, match="before the manifest"):
        got.place(0)
    got.take_manifest(manifest.raw, now=0.0)
    with pytest.raises(wb.BlobError, match="not wanted"):
        got.place(3)
    got.place(1)[:] = data[1024:2048]  # received ahead of chunk 0: allowed, checked in order
    with pytest.raises(wb.BlobError, match="out of order"):
        got.take_placed(1)
    got.place(0)[:] = data[1:1025]  # a holder's wrong bytes
    with pytest.raises(wb.BlobError, match="chunk 0 does not match"):
        got.take_placed(0)
    got.place(0)[:] = data[:1024]  # the same chunk again, from a resume
    got.take_placed(0)
    with pytest.raises(wb.BlobError, match="not wanted"):
        got.place(0)  # a checked chunk cannot be written again
    got.take_placed(1)
    got.take_chunk(2, data[2048:])
    assert got.result() == data


def test_a_fetch_ends_by_its_deadline_set_by_the_manifests_size() -> None:
    manifest = wb.manifest_for(b"x" * 1000)
    got = BlobFetch(manifest.id, 1 << 30, now=0.0)
    assert got.deadline > 4000  # 30 s + 1 GiB at 256 KiB/s
    got.new_connection()
    got.take_manifest(manifest.raw, now=5.0)
    assert got.deadline == pytest.approx(5.0 + 30.0 + 1000 / (256 * 1024))
