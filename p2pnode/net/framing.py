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
BIG_PAYLOAD = 65536  # written on its own rather than copied behind its length
READ_SIZE = 65536  # bytes asked of the stream at a time (more while the rest of a big frame is due)


class StreamGone(Exception):
    """The peer closed or reset the stream, or it broke."""


def frame_length(n: int) -> bytes:
    """The unsigned LEB128 length prefix of an ``n``-byte frame."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    return frame_length(len(payload)) + payload


class FramedStream:
    def __init__(self, stream: Any, *, max_frame: int, frame_timeout: float = math.inf) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self._buf = bytearray()

    async def _fill(self, want: int = READ_SIZE) -> None:
        self._buf += await self._read(want)

    async def _read(self, want: int) -> bytes:
        from libp2p.network.stream.exceptions import StreamError

        try:
            chunk = await self.stream.read(max(READ_SIZE, want))
        except StreamError as exc:
            raise StreamGone(type(exc).__name__) from exc
        except Exception as exc:  # muxer-level failures of a dying connection
            raise StreamGone(f"{type(exc).__name__}: {exc}") from exc
        if not chunk:
            raise StreamGone("end of stream")
        return bytes(chunk)

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
        end = i + length
        if length >= BIG_PAYLOAD and len(self._buf) < end:
            return await self._big_frame(i, length)
        while len(self._buf) < end:
            await self._fill(end - len(self._buf))
        with memoryview(self._buf) as view:
            frame = bytes(view[i:end])  # one copy, not two
        if end == len(self._buf):
            self._buf = bytearray()
        else:
            del self._buf[:end]
        return frame

    async def _big_frame(self, start: int, length: int) -> bytes:
        """A big frame from the pieces the stream hands over, joined once (one copy of it)."""
        pieces: list[bytes] = [bytes(self._buf[start:])]
        have = len(pieces[0])
        self._buf = bytearray()
        while have < length:
            pieces.append(await self._read(length - have))
            have += len(pieces[-1])
        extra = have - length
        if extra:  # the start of the next frame came with the last piece
            last = pieces[-1]
            pieces[-1] = last[:len(last) - extra]
            self._buf = bytearray(last[len(last) - extra:])
        return b"".join(pieces)

    async def send(self, payload: bytes | memoryview, *, head: bytes = b"") -> None:
        """Send one frame: ``head`` then ``payload`` (a big payload is written as it is, not
        copied behind its head)."""
        from libp2p.network.stream.exceptions import StreamError

        from p2pnode.net import impair

        bad = impair.current()
        if bad is not None and await bad.before_send():
            await self.reset()
            raise StreamGone("impaired network: stream broken on purpose")
        try:
            prefix = frame_length(len(head) + len(payload)) + head
            if len(payload) >= BIG_PAYLOAD:
                await self.stream.write(prefix)
                await self.stream.write(payload)
            else:
                await self.stream.write(prefix + bytes(payload))
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
