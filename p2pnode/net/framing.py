"""Length-prefixed messages on a libp2p stream: unsigned LEB128 length, then the message.

py-libp2p's ``stream.read()`` raises ``StreamEOF`` at the end of a stream instead of returning
``b""``; :class:`FramedStream` turns that, a reset, and a frame over the limit into
:class:`StreamGone` / ``OversizedError`` so callers deal with two outcomes, not the library's zoo.

A frame that has begun must end within ``frame_timeout`` seconds (``trio.TooSlowError`` otherwise),
so a peer cannot hold a stream open by trickling one frame a byte at a time. How long a stream may
wait *between* frames is the caller's business (each protocol state has its own deadline).
"""

from __future__ import annotations

import math
from typing import Any

import trio

from p2pnode.errors import CodecError, OversizedError

MAX_VARINT_BYTES = 10


class StreamGone(Exception):
    """The peer closed or reset the stream, or it broke."""


def encode_frame(payload: bytes) -> bytes:
    n = len(payload)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + payload


class FramedStream:
    def __init__(self, stream: Any, *, max_frame: int, frame_timeout: float = math.inf) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self._buf = bytearray()

    async def _fill(self) -> None:
        from libp2p.network.stream.exceptions import StreamError

        try:
            chunk = await self.stream.read(65536)
        except StreamError as exc:
            raise StreamGone(type(exc).__name__) from exc
        except Exception as exc:  # muxer-level failures of a dying connection
            raise StreamGone(f"{type(exc).__name__}: {exc}") from exc
        if not chunk:
            raise StreamGone("end of stream")
        self._buf += chunk

    async def receive(self) -> bytes:
        while not self._buf:
            await self._fill()
        with trio.fail_after(self.frame_timeout):
            return await self._rest_of_frame()

    async def _rest_of_frame(self) -> bytes:
        length = shift = 0
        i = 0
        while True:
            while i >= len(self._buf):
                await self._fill()
            byte = self._buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if i >= MAX_VARINT_BYTES:
                raise CodecError("frame length varint too long")
        if length > self.max_frame:
            raise OversizedError(f"frame of {length} bytes exceeds {self.max_frame}")
        while len(self._buf) < i + length:
            await self._fill()
        frame = bytes(self._buf[i:i + length])
        del self._buf[:i + length]
        return frame

    async def send(self, payload: bytes) -> None:
        from libp2p.network.stream.exceptions import StreamError

        from p2pnode.net import impair

        bad = impair.current()
        if bad is not None and await bad.before_send():
            await self.reset()
            raise StreamGone("impaired network: stream broken on purpose")
        try:
            await self.stream.write(encode_frame(payload))
        except StreamError as exc:
            raise StreamGone(type(exc).__name__) from exc
        except Exception as exc:  # noqa: BLE001
            raise StreamGone(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        try:
            await self.stream.close()
        except Exception:  # noqa: BLE001 - closing a dead stream is fine
            pass

    async def reset(self) -> None:
        try:
            await self.stream.reset()
        except Exception:  # noqa: BLE001
            pass
