"""The bulk channel between real nodes on loopback: its fallback to the stream, and what it refuses
from hostile readers and holders."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import trio

from p2pnode.net import bulk
from p2pnode.net.bulk import BulkConnection
from p2pnode.services.blobs import BlobService
from p2pnode.wire import blob as wb
from p2pnode.wire import bulk as wbulk
from p2pnode.wire.blob import CHUNK, BlobError
from p2pnode.wire.names import BLOB_PROTOCOL
from tests.integration.hostile import hostile_peer
from tests.integration.swarm import all_list_all, node_config, start_node, swarm

DATA = os.urandom(3 * CHUNK + 777)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # free again when this returns: nobody listens there


async def test_a_holder_whose_channel_cannot_be_dialed_is_read_over_the_stream() -> None:
    """As behind a router that forwards the libp2p port only: the same stream goes on at once, no
    one is penalised, and that holder is not asked for a channel again for a while."""
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        assert holder.bulk is not None
        holder.bulk.port = _dead_port()  # its offers name a port nobody listens on
        first, second = holder.blobs.store.put(DATA), holder.blobs.store.put(DATA[::-1])
        assert await reader.blobs.fetch(holder.identity.peer_id, first) == DATA
        assert reader.blobs.bulk_bytes == 0 and len(holder.bulk.tickets) == 1  # offered, never taken
        assert holder.identity.peer_id in reader.blobs._no_bulk
        assert await reader.blobs.fetch(holder.identity.peer_id, second) == DATA[::-1]
        assert len(holder.bulk.tickets) == 1  # not asked again
        assert reader.penalties.score(holder.identity.peer_id, reader._clock()) == 0
        assert holder.penalties.score(reader.identity.peer_id, holder._clock()) == 0


async def test_a_record_written_into_the_connection_on_the_way_costs_the_holder_nothing() -> None:
    """A record that does not authenticate may come from anyone on the path: the reader takes the
    rest over the stream and penalises no one."""
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(DATA)
        original = BlobService._send_bulk_chunk

        async def injected(self: BlobService, conn: BulkConnection, i: int, data: memoryview) -> None:
            if i == 1:
                await conn.stream.send_all(wbulk.record_size(len(data) - wbulk.TAG).to_bytes(4, "big")
                                           + os.urandom(len(data)))
                return
            await original(self, conn, i, data)

        holder.blobs._send_bulk_chunk = injected.__get__(holder.blobs)  # type: ignore[method-assign]
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == DATA
        assert reader.blobs.bulk_bytes == CHUNK  # chunk 0; the rest over the stream
        assert reader.penalties.score(holder.identity.peer_id, reader._clock()) == 0


async def test_an_offer_nobody_asked_for_is_a_peer_error() -> None:
    """A reader without a bulk channel (or over a relay) never dials what a holder offers it."""
    async with trio.open_nursery() as nursery:
        reader = (await start_node(nursery, node_config(bulk=False, provide=False))).node
        async with hostile_peer(reader) as hostile:
            async def offer_anyway(stream: Any) -> None:
                from p2pnode.net.framing import FramedStream

                fs = FramedStream(stream, max_frame=wb.MAX_FRAME)
                await fs.receive()
                await fs.send(wbulk.encode_offer(wbulk.Offer(_dead_port(), os.urandom(16), os.urandom(32))))

            hostile.host.set_stream_handler(BLOB_PROTOCOL, offer_anyway)
            with pytest.raises(BlobError, match="did not ask"):
                await reader.blobs.fetch(hostile.peer_id, b"\x02" * 32)
            assert reader.penalties.score(hostile.peer_id, reader._clock()) > 0
        nursery.cancel_scope.cancel()


async def _offer(hostile: Any, blob_id: bytes) -> wb.Reply:
    fs = await hostile.blob_stream()
    await fs.send(wb.encode_get(blob_id, 0, bulk=True))
    with trio.fail_after(10):
        reply = wb.decode_reply(await fs.receive())
    await fs.close()
    return reply


async def _served(offer: wbulk.Offer, reader: bytes, holder: bytes, request: bytes) -> bytes:
    """What the holder sends back over its channel for ``request``: b"" when it hangs up."""
    conn = await bulk.dial("127.0.0.1", offer, reader, holder, request)
    try:
        with trio.fail_after(10):
            return await conn.receive(wb.MAX_MANIFEST + 64)
    except bulk.BulkGone:
        return b""
    finally:
        await conn.aclose()


async def test_a_hostile_reader_is_served_only_what_its_ticket_is_for_and_not_once_banned() -> None:
    async with trio.open_nursery() as nursery:
        holder = (await start_node(nursery, node_config(provide=False))).node
        blob_id = holder.blobs.store.put(DATA)
        me = holder.identity.peer_id
        async with hostile_peer(holder) as hostile:
            honest = await _offer(hostile, blob_id)
            assert honest.kind == "bulk" and honest.offer is not None
            manifest = wb.decode_reply(await _served(honest.offer, hostile.peer_id, me, wb.encode_get(blob_id, 0)))
            assert manifest.kind == "manifest"
            other = await _offer(hostile, blob_id)
            assert other.offer is not None
            assert await _served(other.offer, hostile.peer_id, me, wb.encode_get(b"\x03" * 32, 0)) == b""
            with trio.fail_after(10):
                while holder.penalties.score(hostile.peer_id, holder._clock()) == 0:
                    await trio.sleep(0.02)  # the penalty is counted as the connection ends
            late = await _offer(hostile, blob_id)
            assert late.offer is not None
            for _ in range(11):
                holder.penalise(hostile.peer_id, "bad_signature")
            assert holder.is_banned(hostile.peer_id)
            assert await _served(late.offer, hostile.peer_id, me, wb.encode_get(blob_id, 0)) == b""
        nursery.cancel_scope.cancel()


async def test_a_reader_holds_a_few_tickets_at_most_then_is_served_on_the_stream() -> None:
    async with trio.open_nursery() as nursery:
        holder = (await start_node(nursery, node_config(provide=False))).node
        blob_id = holder.blobs.store.put(DATA)
        async with hostile_peer(holder) as hostile:
            kinds = [(await _offer(hostile, blob_id)).kind for _ in range(9)]
            assert kinds == ["bulk"] * 8 + ["manifest"]
            assert holder.bulk is not None and len(holder.bulk.tickets) == 8
        nursery.cancel_scope.cancel()
