"""libp2p's perf protocol (``/perf/1.0.0``), served within bounds when a node is asked to (``perf``).

The protocol (libp2p/specs ``perf/perf.md``): the client sends the number of bytes it wants back
(8 bytes, big-endian), uploads whatever it likes, and closes its side; the server reads to the end,
sends the bytes asked for, and closes. Any libp2p implementation has a client for it, so the same
throughput figure can be taken of a p2pnode and of go-, rust- or js-libp2p side by side
(``tools/bench/run net --throughput``).

py-libp2p's own ``PerfService`` serves any amount both ways with no time limit; this one serves at
most :data:`MAX_BYTES` each way per stream, :data:`MAX_STREAMS_PER_PEER` streams per peer at once,
and ends a stream whose client stays silent for :data:`IDLE_S` (the guard counts it against the
peer). It is off unless the node is started with it: it hands out bandwidth to whoever asks.
"""

from __future__ import annotations

from typing import Any

import trio

from p2pnode.errors import OversizedError
from p2pnode.net.framing import StreamGone
from p2pnode.protocol.limits import StreamLimits

PERF_PROTOCOL = "/perf/1.0.0"
MAX_BYTES = 1 << 30  # each way, per stream
MAX_STREAMS_PER_PEER, MAX_STREAMS = 2, 8
IDLE_S = 10.0
BLOCK = 1 << 20  # bytes written at a time


class PerfServer:
    def __init__(self) -> None:
        self.limits = StreamLimits(per_peer=MAX_STREAMS_PER_PEER, total=MAX_STREAMS)
        self.served = 0  # bytes sent, in all
        self._block = bytes(BLOCK)

    async def handle_stream(self, stream: Any, peer: bytes) -> None:
        """Serve one perf request (behind the guard: ``net/guard.py``)."""
        header = b""
        while len(header) < 8:
            header += await _read(stream, 8 - len(header))
        want = int.from_bytes(header, "big")
        if want > MAX_BYTES:
            raise OversizedError(f"perf: {want} bytes asked for, more than {MAX_BYTES}")
        uploaded = 0
        while True:  # the client's upload, to its end (its side closed)
            try:
                uploaded += len(await _read(stream, BLOCK))
            except StreamGone:
                break
            if uploaded > MAX_BYTES:
                raise OversizedError(f"perf: more than {MAX_BYTES} bytes uploaded")
        while want:
            n = min(want, BLOCK)
            await _write(stream, self._block[:n] if n < BLOCK else self._block)
            want -= n
            self.served += n
        await stream.close()


async def _write(stream: Any, data: bytes) -> None:
    """Write within :data:`IDLE_S`; ``StreamGone`` when the client went away."""
    from libp2p.network.stream.exceptions import StreamError
    from libp2p.stream_muxer.exceptions import MuxedStreamError

    try:
        with trio.fail_after(IDLE_S):
            await stream.write(data)
    except (StreamError, MuxedStreamError) as exc:
        raise StreamGone(type(exc).__name__) from exc


async def _read(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes within :data:`IDLE_S`; ``StreamGone`` at the stream's end."""
    from libp2p.network.stream.exceptions import StreamError

    try:
        with trio.fail_after(IDLE_S):
            data: bytes = await stream.read(n)
    except StreamError as exc:
        raise StreamGone(type(exc).__name__) from exc
    if not data:
        raise StreamGone("end of stream")
    return data
