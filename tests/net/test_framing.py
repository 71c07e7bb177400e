"""Frames come back exactly as sent, however the stream cuts the bytes (big frames take their own
path: read in pieces and joined once)."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import OversizedError
from p2pnode.net.framing import BIG_PAYLOAD, FramedStream, StreamGone, encode_frame


class Scripted:
    """A stream that hands over the bytes in the pieces given, then ends."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.pieces, pos = [], 0
        for cut in cuts:
            if pos < len(data):
                self.pieces.append(data[pos:pos + cut])
                pos += cut
        self.pieces.append(data[pos:])
        self.written: list[bytes] = []

    async def read(self, n: int) -> bytes:
        await trio.lowlevel.checkpoint()
        while self.pieces and not self.pieces[0]:
            self.pieces.pop(0)
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        self.pieces[0] = piece[n:]
        return piece[:n]

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


SIZES = st.lists(st.sampled_from([0, 1, 127, 128, BIG_PAYLOAD - 1, BIG_PAYLOAD, 3 * BIG_PAYLOAD + 7]),
                 min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(SIZES, st.lists(st.integers(1, 5 * BIG_PAYLOAD), max_size=12))
def test_frames_survive_any_cuts(sizes: list[int], cuts: list[int]) -> None:
    frames = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    wire = b"".join(encode_frame(f) for f in frames)

    async def main() -> list[bytes]:
        fs = FramedStream(Scripted(wire, cuts), max_frame=1 << 20)
        got = [await fs.receive() for _ in frames]
        with pytest.raises(StreamGone):
            await fs.receive()
        return got

    assert trio.run(main) == frames


def test_a_frame_over_the_limit_and_a_cut_off_frame() -> None:
    async def main() -> None:
        with pytest.raises(OversizedError):
            await FramedStream(Scripted(encode_frame(b"x" * 100), []), max_frame=99).receive()
        with pytest.raises(StreamGone):  # the stream ends inside a big frame
            await FramedStream(Scripted(encode_frame(b"x" * 200_000)[:150_000], [4096]), max_frame=1 << 20).receive()

    trio.run(main)


def test_a_head_and_a_big_payload_make_one_frame() -> None:
    async def main() -> None:
        out = Scripted(b"", [])
        fs = FramedStream(out, max_frame=1 << 20)
        payload = bytes(range(256)) * 1024
        await fs.send(memoryview(payload)[5:], head=b"head")
        await fs.send(b"small", head=b"h")
        wire = b"".join(out.written)
        assert wire == encode_frame(b"head" + payload[5:]) + encode_frame(b"hsmall")
        assert len(out.written) == 3  # the big payload went out as it was, not copied behind its head

    trio.run(main)
