"""Bytes filled in place: what was written through the view is what the bytes object holds."""

from __future__ import annotations

import gc
import hashlib
import os

from p2pnode.wire.fresh_bytes import fault_in, fresh_bytes


def test_bytes_written_through_the_view_are_the_object_given_out() -> None:
    data = os.urandom(3 << 20)
    view, result = fresh_bytes(len(data))
    assert not view.readonly and view.nbytes == len(data)
    fault_in(view[100:])  # the contents are left as they are: written after, or before
    view[: 1 << 20] = data[: 1 << 20]
    fault_in(view)
    view[1 << 20:] = data[1 << 20:]
    blob = result()
    assert type(blob) is bytes and blob == data and result() is blob
    assert hashlib.sha256(blob).digest() == hashlib.sha256(data).digest()
    assert {blob: 1}[bytes(data)] == 1  # hashes as bytes do


def test_the_view_keeps_its_bytes_alive() -> None:
    view, result = fresh_bytes(1 << 16)
    del result
    gc.collect()
    view[:] = b"x" * (1 << 16)  # writes into live memory (a freed object would corrupt the heap)
    assert bytes(view[:4]) == b"xxxx"


def test_empty_and_tiny() -> None:
    view, result = fresh_bytes(0)
    assert view.nbytes == 0 and result() == b""
    for n in (1, 4095, 4096):
        view, result = fresh_bytes(n)
        view[:] = b"\x07" * n
        assert result() == b"\x07" * n
    assert bytes([0]) == b"\x00" and bytes(1) == b"\x00"  # no shared object was written
