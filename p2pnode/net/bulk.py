"""The bulk channel: blobs over plain TCP in large AEAD records, beside libp2p (``specs/blobs.md``).

A libp2p stream carries at most a few hundred MB/s in py-libp2p (every 64 KiB Noise message and
yamux frame costs the trio thread its locks, copies and task switches); TCP between the same two
processes carries several GB/s. So a blob between two peers that can dial each other directly
moves over a TCP connection of its own, keyed through the libp2p stream (:mod:`p2pnode.wire.bulk`),
in records of a whole chunk each.

* :class:`BulkServer` (the holder): listens beside the libp2p host, hands out tickets on the blob
  stream (:meth:`BulkServer.offer`) and accepts a connection only with a live ticket and a first
  record that authenticates, then gives it to the blob service. Connections that have not shown
  a ticket are bounded in number and in time, and cost the holder nothing else.
* :func:`dial` (the reader): connects to the holder's port on the address its libp2p connection
  already uses, never an address the holder names; only over a direct connection, never a relay.
* :class:`BulkConnection`: records both ways, received straight into the caller's buffer.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from p2pnode.errors import NetworkSetupError
from p2pnode.net.framing import StreamGone
from p2pnode.protocol.bulk_tickets import BulkTickets, Ticket
from p2pnode.wire import bulk as wbulk

log = logging.getLogger("p2pnode.bulk")
HELLO_TIMEOUT_S = 5.0  # a connection shows its ticket and first record within this, or is closed
DIAL_TIMEOUT_S = 3.0
MAX_PENDING = 32  # connections that have not shown a ticket yet, in all
MAX_REQUEST = 1024  # the reader's first record (a get)
ACCEPT_RETRY = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)
ACCEPT_BACKOFF_S = 0.1


class BulkGone(StreamGone):
    """The bulk connection ended or broke (to its callers, the same as a stream's end)."""


class BulkConnection:
    """Records over one TCP connection: sealed with ``send_key``, opened with ``receive_key``."""

    def __init__(self, stream: trio.SocketStream, send_key: bytes, receive_key: bytes) -> None:
        self.stream = stream
        self._sealer = wbulk.Sealer(send_key)
        self._opener = wbulk.Opener(receive_key)
        self._out = bytearray()
        self._in = bytearray()
        self.received = self.sent = 0  # bytes on the wire

    async def send(self, plaintext: bytes | memoryview) -> None:
        size = wbulk.record_size(len(plaintext))
        if len(self._out) < size:
            self._out = bytearray(size)
        record = self._sealer.seal_into(plaintext, self._out)
        try:
            await self.stream.send_all(record)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise BulkGone(f"{type(exc).__name__}: {exc}") from exc
        self.sent += size

    async def receive(self, maximum: int) -> bytes:
        """The next record's plaintext, at most ``maximum`` bytes."""
        header = await self._exactly_header()
        n = wbulk.record_length(header, maximum=maximum)
        ciphertext = await self._exactly(n)
        out = bytearray(n - wbulk.TAG)
        self._opener.open_into(header, ciphertext, memoryview(out))
        return bytes(out)

    async def receive_into(self, out: memoryview) -> None:
        """The next record, whose plaintext must be exactly ``len(out)`` bytes, decrypted into ``out``."""
        header = await self._exactly_header()
        n = wbulk.record_length(header, maximum=len(out))
        self._opener.open_into(header, await self._exactly(n), out)

    async def _exactly_header(self) -> bytes:
        return bytes(await self._exactly(wbulk.HEADER))

    async def _exactly(self, n: int) -> memoryview:
        """The next ``n`` bytes, in a buffer reused by the next call."""
        if len(self._in) < n:
            self._in = bytearray(n)
        view = memoryview(self._in)[:n]
        sock = self.stream.socket
        got = 0
        try:
            while got < n:
                k = await sock.recv_into(view[got:])
                if not k:
                    raise BulkGone("the connection ended")
                got += k
        except (OSError, trio.ClosedResourceError) as exc:
            raise BulkGone(f"{type(exc).__name__}: {exc}") from exc
        self.received += n
        return view

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


ServeBulk = Callable[[BulkConnection, Ticket, bytes], Awaitable[None]]
"""What the holder does with an authenticated connection: (connection, its ticket, the get)."""


class BulkServer:
    """The holder's side: tickets, the listener, and the first steps of every connection."""

    def __init__(self, me: bytes, *, now: Callable[[], float], serve: ServeBulk | None = None,
                 tickets: BulkTickets | None = None) -> None:
        self.me = me
        self.now = now
        self.serve = serve
        self.tickets = tickets or BulkTickets()
        self.port = 0  # 0 until listening
        self.pending = 0
        self.refused = {"unauthenticated": 0, "busy": 0}

    def offer(self, peer: bytes, blob_id: bytes, start: int) -> wbulk.Offer | None:
        """A ticket for ``peer`` to fetch ``blob_id`` from chunk ``start``; None when not listening
        or the peer holds enough tickets already."""
        if not self.port or self.serve is None:
            return None
        ticket = self.tickets.issue(peer, blob_id, start, self.now())
        return wbulk.Offer(self.port, ticket.id, ticket.secret) if ticket else None

    async def run(self, hosts: Sequence[str], port: int = 0, *,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``hosts`` (one port for all), report the port, and serve until cancelled."""
        listeners: list[trio.SocketListener] = []
        try:
            for host in hosts:
                opened = await trio.open_tcp_listeners(port, host=host)
                listeners += opened
                port = port or opened[0].socket.getsockname()[1]
        except OSError as exc:
            for listener in listeners:
                await listener.aclose()
            raise NetworkSetupError(f"cannot listen for the bulk channel on port {port}: {exc.strerror or exc}") from exc
        self.port = port
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                task_status.started(port)
        finally:
            self.port = 0

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of file descriptors or memory: wait, as trio's servers do
                    if exc.errno not in ACCEPT_RETRY:
                        raise
                    log.warning("bulk channel: cannot accept a connection (%s); retrying", exc.strerror)
                    await trio.sleep(ACCEPT_BACKOFF_S)
                    continue
                if self.pending >= MAX_PENDING:
                    self.refused["busy"] += 1
                    await stream.aclose()
                    continue
                self.pending += 1
                nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn, ticket, request = None, None, b""
        try:
            try:
                with trio.move_on_after(HELLO_TIMEOUT_S):
                    conn, ticket, request = await self._authenticate(stream)
            finally:
                self.pending -= 1
            if conn is None or ticket is None:
                self.refused["unauthenticated"] += 1
                return
            assert self.serve is not None  # no ticket is issued without it
            await self.serve(conn, ticket, request)
        except (BulkGone, wbulk.BulkError) as exc:
            log.debug("bulk connection ended: %s", exc)
        except Exception:  # a bug here: this connection ends, the node goes on
            log.exception("bulk connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _authenticate(self, stream: trio.SocketStream) -> tuple[Any, Any, bytes]:
        """(connection, ticket, its get) once the hello names a live ticket and the first record
        opens with its key; (None, None, b"") for anything else."""
        raw = BulkConnection(stream, b"\0" * 32, b"\0" * 32)  # keys set once the ticket is known
        try:
            ticket_id = wbulk.parse_hello(bytes(await raw._exactly(wbulk.HELLO)))
        except BulkGone:
            return None, None, b""
        ticket = self.tickets.take(ticket_id, self.now()) if ticket_id else None
        if ticket is None:
            return None, None, b""
        to_holder, to_reader = wbulk.keys(ticket.secret, ticket.id, self.me, ticket.peer)
        conn = BulkConnection(stream, to_reader, to_holder)
        try:
            request = await conn.receive(MAX_REQUEST)
        except (BulkGone, wbulk.BulkError):
            return None, None, b""
        return conn, ticket, request


def direct_ip(stream: Any) -> str | None:
    """The IP address of the peer at the other end of a libp2p stream's connection when that
    connection is direct TCP; None when it is relayed or its address is unknown."""
    try:
        from libp2p.connection_types import ConnectionType

        secured = stream.muxed_conn.secured_conn
        if secured.get_connection_type() is not ConnectionType.DIRECT:
            return None
        address = secured.get_remote_address()
        return str(ipaddress.ip_address(address[0])) if address else None
    except Exception:  # noqa: BLE001 - not a TCP connection we know: no bulk channel
        return None


async def dial(ip: str, offer: wbulk.Offer, me: bytes, holder: bytes, request: bytes, *,
               timeout: float = DIAL_TIMEOUT_S) -> BulkConnection:
    """Connect to ``holder``'s bulk port at ``ip`` and present ``offer``'s ticket with ``request``
    (the get). Raises ``BulkGone`` when the holder cannot be reached."""
    to_holder, to_reader = wbulk.keys(offer.secret, offer.ticket, holder, me)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(ip, offer.port)
    except (OSError, trio.TooSlowError) as exc:
        raise BulkGone(f"cannot reach {ip} port {offer.port}: {exc or type(exc).__name__}") from exc
    conn = BulkConnection(stream, to_holder, to_reader)
    try:
        await stream.send_all(wbulk.hello(offer.ticket))
        await conn.send(request)
    except (BulkGone, OSError, trio.BrokenResourceError) as exc:
        await conn.aclose()
        raise BulkGone(f"{type(exc).__name__}: {exc}") from exc
    return conn
