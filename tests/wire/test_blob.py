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
