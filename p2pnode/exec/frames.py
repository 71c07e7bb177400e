"""Frames between the executor and its worker processes: 4-byte big-endian length, then CBOR.

Local pipes between our own processes, but still bounded: a frame over ``MAX_FRAME`` is an error.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

import cbor2

MAX_FRAME = 1 << 31  # a 16384x16384 fp32 result is 1 GiB
_LEN = struct.Struct(">I")


def pack(obj: Any) -> bytes:
    body = cbor2.dumps(obj)
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def read_blocking(stream: BinaryIO) -> Any | None:
    """Read one frame; None at a clean end of stream."""
    head = stream.read(4)
    if not head:
        return None
    if len(head) < 4:
        raise EOFError("truncated frame header")
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("truncated frame")
    return cbor2.loads(body)
