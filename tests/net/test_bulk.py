"""The bulk channel's listener on loopback: what it accepts, what it refuses, and whom a reader dials."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from p2pnode.errors import NetworkSetupError
from p2pnode.net import bulk
from p2pnode.net.bulk import BulkConnection, BulkServer
from p2pnode.protocol.bulk_tickets import Ticket
from p2pnode.wire import blob as wb
from p2pnode.wire import bulk as wbulk

HOLDER, READER = b"h" * 38, b"r" * 38
BLOB = b"i" * 32


class Served:
    """The holder's serve callback: records what reached it, answers with one record."""

    def __init__(self) -> None:
        self.calls: list[tuple[Ticket, bytes]] = []

    async def __call__(self, conn: BulkConnection, ticket: Ticket, request: bytes) -> None:
        self.calls.append((ticket, request))
        await conn.send(b"served " + request)


async def _server(nursery: trio.Nursery) -> tuple[BulkServer, Served]:
    served = Served()
    server = BulkServer(HOLDER, now=trio.current_time, serve=served)
    await nursery.start(server.run, ["127.0.0.1"], 0)
    return server, served


async def _nothing_comes_back(stream: trio.SocketStream) -> bool:
    """True when the holder closes the connection without sending a byte."""
    with trio.fail_after(10):
        try:
            return await stream.receive_some(1024) == b""
        except trio.BrokenResourceError:
            return True


async def test_a_reader_with_its_ticket_is_served_over_the_channel_once() -> None:
    async with trio.open_nursery() as nursery:
        server, served = await _server(nursery)
        offer = server.offer(READER, BLOB, 2)
        assert offer is not None and offer.port == server.port
        request = wb.encode_get(BLOB, 2)
        conn = await bulk.dial("127.0.0.1", offer, READER, HOLDER, request)
        assert await conn.receive(1024) == b"served " + request
        await conn.aclose()
        (ticket, got), = served.calls
        assert (ticket.peer, ticket.blob_id, ticket.start, got) == (READER, BLOB, 2, request)
        again = await trio.open_tcp_stream("127.0.0.1", offer.port)  # the same ticket again
        await again.send_all(wbulk.hello(offer.ticket) + wbulk.Sealer(wbulk.keys(
            offer.secret, offer.ticket, HOLDER, READER)[0]).seal(request))
        assert await _nothing_comes_back(again)
        assert len(served.calls) == 1 and server.refused["unauthenticated"] == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("attempt", ["unknown ticket", "wrong key", "another peer's keys", "not a hello", "silence"])
async def test_anything_unauthenticated_is_closed_without_a_byte(attempt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "HELLO_TIMEOUT_S", 0.3)
    async with trio.open_nursery() as nursery:
        server, served = await _server(nursery)
        offer = server.offer(READER, BLOB, 0)
        assert offer is not None
        to_holder = wbulk.keys(offer.secret, offer.ticket, HOLDER, READER)[0]
        hello = {
            "unknown ticket": wbulk.hello(os.urandom(16)) + wbulk.Sealer(to_holder).seal(wb.encode_get(BLOB, 0)),
            "wrong key": wbulk.hello(offer.ticket) + wbulk.Sealer(os.urandom(32)).seal(wb.encode_get(BLOB, 0)),
            "another peer's keys": wbulk.hello(offer.ticket) + wbulk.Sealer(wbulk.keys(
                offer.secret, offer.ticket, HOLDER, b"x" * 38)[0]).seal(wb.encode_get(BLOB, 0)),
            "not a hello": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "silence": b"",
        }[attempt]
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(hello)
        assert await _nothing_comes_back(stream)
        assert served.calls == []
        if attempt == "wrong key":  # the ticket is spent: its owner falls back to the stream
            assert server.tickets.take(offer.ticket, trio.current_time()) is None
        with trio.fail_after(5):
            while server.pending:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_connections_without_a_ticket_yet_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "MAX_PENDING", 4)
    async with trio.open_nursery() as nursery:
        server, _ = await _server(nursery)
        silent = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(4)]
        with trio.fail_after(5):
            while server.pending < 4:
                await trio.sleep(0.01)
        extra = await trio.open_tcp_stream("127.0.0.1", server.port)
        assert await _nothing_comes_back(extra)
        assert server.refused["busy"] == 1 and server.pending == 4
        for s in silent:
            await s.aclose()
        nursery.cancel_scope.cancel()


def test_no_offer_without_a_listener_or_past_the_peers_tickets() -> None:
    server = BulkServer(HOLDER, now=lambda: 0.0, serve=Served())
    assert server.offer(READER, BLOB, 0) is None  # not listening
    server.port = 4002
    offers = [server.offer(READER, BLOB, 0) for _ in range(9)]
    assert all(offers[:8]) and offers[8] is None
    assert server.offer(HOLDER, BLOB, 0) is not None  # another peer has its own


async def test_a_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(NetworkSetupError, match=f"bulk channel on port {port}"):
            await BulkServer(HOLDER, now=lambda: 0.0).run(["127.0.0.1"], port)


async def test_a_reader_that_cannot_reach_the_port_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(bulk.BulkGone, match="cannot reach"):
            await bulk.dial("127.0.0.1", wbulk.Offer(port, os.urandom(16), os.urandom(32)), READER, HOLDER, b"")


def _stream(kind: str, address: Any) -> Any:
    from libp2p.connection_types import ConnectionType

    secured = SimpleNamespace(get_connection_type=lambda: ConnectionType[kind], get_remote_address=lambda: address)
    return SimpleNamespace(muxed_conn=SimpleNamespace(secured_conn=secured))


def test_a_reader_dials_only_the_address_of_a_direct_connection() -> None:
    """The offer names a port only: the address is the one the libp2p connection is on, and a
    relayed connection's (the relay's) is never used."""
    assert bulk.direct_ip(_stream("DIRECT", ("127.0.0.5", 4001))) == "127.0.0.5"
    assert bulk.direct_ip(_stream("DIRECT", ("::1", 4001))) == "::1"
    assert bulk.direct_ip(_stream("RELAYED", ("127.0.0.5", 4001))) is None
    assert bulk.direct_ip(_stream("DIRECT", None)) is None
    assert bulk.direct_ip(_stream("DIRECT", ("not an ip", 1))) is None
    assert bulk.direct_ip(object()) is None


async def test_a_relayed_noise_session_is_no_direct_connection() -> None:
    """The same through the real session classes: a circuit's raw connection says RELAYED."""
    from libp2p.connection_types import ConnectionType
    from libp2p.relay.circuit_v2.transport import TrackedRawConnection

    from tests.net.test_noise_session import sessions

    a, _, raw, _ = sessions()
    raw.get_connection_type = lambda: ConnectionType.DIRECT  # type: ignore[attr-defined]
    raw.get_remote_address = lambda: ("127.0.0.7", 4001)  # type: ignore[method-assign]
    assert bulk.direct_ip(SimpleNamespace(muxed_conn=SimpleNamespace(secured_conn=a))) == "127.0.0.7"
    relayed = TrackedRawConnection(raw, None, None)  # type: ignore[arg-type]
    a.conn.conn = relayed
    assert bulk.direct_ip(SimpleNamespace(muxed_conn=SimpleNamespace(secured_conn=a))) is None
