"""py-libp2p's yamux with less work per byte: larger frames, no sleeping writers, fewer copies.

Measured on one stream between two processes (``tools/bench/run net --throughput``), three things
of py-libp2p 0.8.1's ``libp2p.stream_muxer.yamux.yamux`` cost most of a stream's speed besides the
Noise layer (:mod:`p2pnode.net.noise_session`):

* **64 KiB frames.** Every frame costs two locks, a header, a copy, a muxer task hand-off and a
  window update on the other side. A frame may be as large as the receiver's window (the spec sets
  no other bound; go-yamux and js-libp2p's yamux check only the window), so frames here carry up to
  :data:`FRAME` bytes. A 64 KiB frame also did not fit one Noise message (65,519 bytes of
  plaintext), so each was sent as two.
* **Sleeping writers.** A writer that finds the send window empty polls it every 10 ms; the window
  update that refills it usually comes within microseconds. Here it waits on an event that the
  window update (or the stream's end) sets, with upstream's 5 s limit.
* **Copies.** ``read_exactly`` copies what it reads twice even when one read returns it all; the
  writer slices the data and then copies the slice behind the header. Here neither copies more
  than once.

And one fix: upstream's receive-window auto-tuning can grant a sender more credit than
``MAX_WINDOW_SIZE`` (16 MiB), while its reader refuses any frame larger than that and closes the
connection. js-libp2p's yamux sends frames as large as its whole window, so a large transfer from
a js-libp2p peer broke the connection about one time in two. Here no update leaves the peer more
than ``MAX_WINDOW_SIZE`` of credit.

:func:`speed_up_yamux` installs all of it (for every yamux connection of the process, like
:func:`~p2pnode.net.workarounds.market_dht_protocol`); the bytes on the wire stay yamux's.
"""

from __future__ import annotations

import struct
from typing import Any

import trio

FRAME = 256 * 1024  # bytes of a DATA frame, header included (upstream: 64 KiB)
WINDOW_WAIT_S = 5.0  # as upstream: a writer whose window stays empty this long fails


async def read_exactly(reader: Any, n: int, retry_count: int = 0) -> bytes:
    """Exactly ``n`` bytes from ``reader``: what one read returns when it is all, else joined once.
    ``IncompleteReadError`` when the reader ends first (upstream's contract; ``retry_count`` is
    ignored: a reader that returns data is read until it ends)."""
    from libp2p.io.exceptions import IncompleteReadError

    data: bytes = await reader.read(n)
    if len(data) == n:
        return data
    buf = bytearray(data)
    while len(buf) < n:
        more = await reader.read(n - len(buf))
        if not more:
            raise IncompleteReadError(f"connection closed after {len(buf)} of {n} bytes",
                                      expected_bytes=n, received_bytes=len(buf))
        buf += more
    return bytes(buf)


def _stream_class() -> type:
    from libp2p.stream_muxer.exceptions import MuxedStreamError
    from libp2p.stream_muxer.yamux import yamux as y

    class WakingYamuxStream(y.YamuxStream):
        """A yamux stream whose writer is woken when its send window grows or the stream ends."""

        _window_event: trio.Event | None = None

        @property
        def send_window(self) -> int:
            return self._send_window

        @send_window.setter
        def send_window(self, value: int) -> None:
            self._send_window = value
            if value > 0:
                self._wake()

        @property
        def closed(self) -> bool:
            return self._closed

        @closed.setter
        def closed(self, value: bool) -> None:
            self._closed = value
            if value:
                self._wake()

        def _wake(self) -> None:
            if self._window_event is not None:
                self._window_event.set()

        async def _wait_for_window(self) -> None:
            with trio.move_on_after(WINDOW_WAIT_S):
                while not (self.send_window > 0 or self.closed):
                    self._window_event = trio.Event()
                    await self._window_event.wait()
                return
            raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")

        async def send_window_update(self, increment: int, skip_lock: bool = False) -> None:
            """Send ``increment`` of credit, less whatever would leave the peer more than
            ``MAX_WINDOW_SIZE`` in all (upstream's auto-tuning can count a read twice and grant
            past it; js-libp2p then sends one frame of its whole window, which upstream refuses
            as oversized, closing the connection)."""
            excess = self.recv_window - y.MAX_WINDOW_SIZE
            if excess > 0:
                cut = min(excess, increment)
                self.recv_window -= cut
                increment -= cut
            await super().send_window_update(increment, skip_lock)

        async def write(self, data: bytes) -> None:
            if self.send_closed:
                raise MuxedStreamError("Stream is closed for sending")
            view = memoryview(data)
            total, sent = len(view), 0
            while sent < total:
                frame: bytes | None = None
                while frame is None:
                    async with self.rw_lock.write_lock():
                        if self.send_closed:
                            raise MuxedStreamError("Stream is closed for sending")
                        async with self.window_lock:
                            if self.closed:
                                raise MuxedStreamError("Stream is closed")
                            if self.send_window > 0:
                                n = min(self.send_window, y.MAX_MESSAGE_SIZE - y.HEADER_SIZE, total - sent)
                                self.send_window -= n
                                frame = struct.pack(y.YAMUX_HEADER_FORMAT, 0, y.TYPE_DATA, 0, self.stream_id,
                                                    n) + view[sent:sent + n]
                    if frame is None:
                        self._zero_window_waits += 1
                        await self._wait_for_window()
                await self.conn._write_frame(frame)
                sent += len(frame) - y.HEADER_SIZE

    return WakingYamuxStream


_installed: list[bool] = []


def speed_up_yamux() -> None:
    """Install the changes (once per process)."""
    from libp2p.stream_muxer.yamux import yamux as y

    if _installed:
        return
    y.MAX_MESSAGE_SIZE = FRAME
    setattr(y, "read_exactly", read_exactly)  # noqa: B010 - the module's own name for it
    setattr(y, "YamuxStream", _stream_class())  # noqa: B010 - the class its muxer makes streams of
    _installed.append(True)
