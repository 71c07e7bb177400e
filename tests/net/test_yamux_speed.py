"""Yamux with larger frames, woken writers and fewer copies (p2pnode.net.yamux_speed)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing

from p2pnode.net import yamux_speed


class Conn:
    """What a yamux stream asks of its connection when it writes: frames, collected."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.stream_buffers: dict[int, bytearray] = {}

    async def _write_frame(self, data: bytes) -> None:
        self.frames.append(bytes(data))

    def rtt(self) -> float:
        return 0.0


def stream(window: int) -> tuple[Any, Conn]:
    from libp2p.stream_muxer.yamux import yamux as y

    yamux_speed.speed_up_yamux()
    conn = Conn()
    s = y.YamuxStream(1, conn, True)
    s.send_window = window
    return s, conn


async def test_a_writer_on_an_empty_window_goes_on_when_the_update_comes_not_10_ms_later(
        mock_clock: trio.testing.MockClock) -> None:
    """Upstream: the writer polls the window every 10 ms, so with the clock stopped (the mock
    clock never moves on its own) it never sees the update."""
    s, conn = stream(0)
    async with trio.open_nursery() as n:
        n.start_soon(s.write, b"x" * 1000)
        await trio.testing.wait_all_tasks_blocked()
        assert conn.frames == []
        s.send_window += 1000  # what the window update handler does
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 0.0
        assert [len(f) for f in conn.frames] == [12 + 1000]


async def test_a_writer_whose_stream_ends_while_it_waits_stops() -> None:
    from libp2p.stream_muxer.exceptions import MuxedStreamError

    s, _ = stream(0)
    with trio.fail_after(2):  # the writer's own limit is 5 s
        async with trio.open_nursery() as n:
            async def write() -> None:
                with pytest.raises(MuxedStreamError, match="closed"):
                    await s.write(b"x")
            n.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            s.closed = True


async def test_a_writer_still_gives_up_after_five_seconds_without_window(
        autojump_clock: trio.testing.MockClock) -> None:
    from libp2p.stream_muxer.exceptions import MuxedStreamError

    s, _ = stream(0)
    with pytest.raises(MuxedStreamError, match="5 seconds"):
        await s.write(b"x")
    assert trio.current_time() == pytest.approx(5.0)


@pytest.mark.parametrize(("window", "frames"), [(16 << 20, 5), (300_000, 5)])
async def test_a_megabyte_goes_in_frames_of_a_quarter_megabyte_within_the_window(window: int, frames: int) -> None:
    """Upstream: 17 frames of 64 KiB (each then two Noise messages). Never more than the window."""
    s, conn = stream(window)
    data = os.urandom(1 << 20)
    if window < len(data):
        async with trio.open_nursery() as n:
            n.start_soon(s.write, data)
            await trio.testing.wait_all_tasks_blocked()
            assert sum(len(f) - 12 for f in conn.frames) == window
            s.send_window += len(data)
    else:
        await s.write(data)
    assert len(conn.frames) == frames
    assert max(len(f) for f in conn.frames) <= yamux_speed.FRAME
    assert b"".join(f[12:] for f in conn.frames) == data


async def test_read_exactly_hands_over_a_whole_read_without_copying_it() -> None:
    """Upstream copies it twice (into a bytearray, and out of it)."""
    from libp2p.io.exceptions import IncompleteReadError
    from libp2p.stream_muxer.yamux import yamux as y

    yamux_speed.speed_up_yamux()
    read_exactly = y.read_exactly  # what yamux reads frames with

    class Reader:
        def __init__(self, pieces: list[bytes]) -> None:
            self.pieces = pieces

        async def read(self, n: int | None = None) -> bytes:
            return self.pieces.pop(0) if self.pieces else b""

    whole = os.urandom(100_000)
    assert await read_exactly(Reader([whole]), len(whole)) is whole
    assert await read_exactly(Reader([whole[:10], whole[10:]]), len(whole)) == whole
    with pytest.raises(IncompleteReadError) as caught:
        await read_exactly(Reader([whole[:10]]), 20)
    assert caught.value.received_bytes == 10


async def test_a_peer_is_never_granted_more_than_the_largest_window_it_may_fill() -> None:
    """Upstream: a read that leaves the window a little short grants the shortfall and the read
    again, 17 MiB of credit where frames over 16 MiB are refused (js-libp2p sends one frame of its
    whole window: a large transfer from it broke the connection)."""
    from libp2p.stream_muxer.yamux import yamux as y

    s, conn = stream(0)
    full = y.MAX_WINDOW_SIZE
    s.target_recv_window = s.recv_window = full  # auto-tuned to the largest window, all of it granted
    for _ in range(3):  # 1 MiB arrives, and is read
        s.recv_window -= 1 << 20
        await s._auto_tune_and_send_window_update(bytes_read=1 << 20)
        assert s.recv_window <= full
    granted = sum(int.from_bytes(f[8:12], "big") for f in conn.frames if f[1] == y.TYPE_WINDOW_UPDATE)
    assert full - 3 * (1 << 20) + granted <= full  # what the peer may send now
