from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import PeerError
from p2pnode.wire import blob


@given(st.binary(max_size=5000), st.integers(1, 1024))
def test_manifest_round_trip_and_chunks_check(data: bytes, chunk: int) -> None:
    man = blob.manifest_for(data, chunk)
    again = blob.parse_manifest(man.raw, man.id)
    assert again == man
    for i in range(len(man.hashes)):
        a, b = man.chunk_range(i)
        blob.check_chunk(man, i, data[a:b])
    assert b"".join(data[slice(*man.chunk_range(i))] for i in range(len(man.hashes))) == data


@given(st.binary(max_size=3000))
def test_any_bytes_as_a_manifest_fail_cleanly(raw: bytes) -> None:
    import hashlib

    try:
        blob.parse_manifest(raw, hashlib.sha256(raw).digest())
    except PeerError:
        pass


def test_a_wrong_chunk_or_id_is_a_blob_error() -> None:
    man = blob.manifest_for(b"a" * 3000, 1024)
    with pytest.raises(blob.BlobError):
        blob.check_chunk(man, 1, b"b" * 1024)
    with pytest.raises(blob.BlobError):
        blob.check_chunk(man, 9, b"")
    with pytest.raises(blob.BlobError):
        blob.parse_manifest(man.raw, b"\x00" * 32)


def _generic(data: bytes, max_chunk: int) -> object:
    """What the strict general decoder makes of a holder's message (the fast path's reference)."""
    from p2pnode.wire import codec

    f = codec.Fields(codec.decode(data, max_size=blob.MAX_FRAME), "blob")
    if f.text("t", max_len=8) != "chunk":
        return None
    return f.uint("i", maximum=blob.MAX_CHUNKS), f.blob("data", max_len=max_chunk)


@given(st.integers(0, blob.MAX_CHUNKS + 3), st.binary(max_size=600), st.integers(0, 700))
def test_chunks_sent_as_head_then_data_decode_as_the_general_decoder_does(i: int, data: bytes, limit: int) -> None:
    sent = blob.chunk_head(i, len(data)) + data
    assert sent == blob.encode_chunk(i, data)  # the head is exactly canonical CBOR's
    try:
        want = _generic(sent, limit)
    except PeerError:
        want = "error"
    try:
        r = blob.decode_reply(sent, max_chunk=limit)
        got: object = (r.index, bytes(r.data)) if r.kind == "chunk" else None
    except PeerError:
        got = "error"
    assert got == want


@given(st.binary(max_size=64), st.integers(0, 40), st.sampled_from([(0x18, 1), (0x19, 2), (0x1A, 4)]))
def test_non_canonical_chunks_take_the_strict_path(data: bytes, i: int, wide: tuple[int, int]) -> None:
    # the index in a longer form than it needs: not the fast path's shape, so the general decoder decides
    code, size = wide
    sent = b"\xa3\x61i" + bytes([code]) + i.to_bytes(size, "big") + b"\x61t\x65chunk\x64data" + \
        blob._head(2, len(data)) + data
    try:
        want = _generic(sent, 1 << 20)
    except PeerError:
        want = "error"
    try:
        r = blob.decode_reply(sent)
        got: object = (r.index, bytes(r.data))
    except PeerError:
        got = "error"
    assert got == want
