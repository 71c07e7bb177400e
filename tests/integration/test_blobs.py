"""Blob transfer between real nodes: chunks checked, resumable, cached, bad holders penalised; over
the libp2p stream and over the bulk channel alike."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from p2pnode.services.blobs import BlobService
from p2pnode.wire.blob import CHUNK, BlobError, BlobUnavailable
from tests.integration.swarm import all_list_all, swarm

DATA = os.urandom(5 * CHUNK + 12345)
PATHS = ["stream", "bulk"]


def _sender(path: str) -> str:
    """The holder's method that sends one chunk on this path (a test wraps it to misbehave)."""
    return "_send_chunk" if path == "stream" else "_send_bulk_chunk"


async def _break(path: str, conn: Any) -> None:
    """Break the connection a chunk goes on, as a dropped connection does."""
    if path == "stream":
        await conn.reset()
    else:
        await conn.stream.aclose()


@pytest.mark.parametrize("path", PATHS)
async def test_transfer_checks_every_chunk_and_caches(path: str) -> None:
    async with swarm(2, line=False, bulk=path == "bulk") as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(DATA)
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == DATA
        assert reader.blobs.fetched_bytes == len(DATA) and blob_id in reader.blobs.store
        assert reader.blobs.bulk_bytes == (len(DATA) if path == "bulk" else 0)
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == DATA  # from the cache
        assert reader.blobs.store.hits == 1 and reader.blobs.fetched_bytes == len(DATA)
        with pytest.raises(BlobUnavailable, match="does not hold"):  # not proof of bad faith: no penalty
            await reader.blobs.fetch(holder.identity.peer_id, b"\x01" * 32)
        assert reader.penalties.score(holder.identity.peer_id, reader._clock()) == 0
        empty = holder.blobs.store.put(b"")
        assert await reader.blobs.fetch(holder.identity.peer_id, empty) == b""


@pytest.mark.parametrize("path", PATHS)
async def test_a_broken_stream_resumes_from_the_next_chunk(path: str) -> None:
    """Over the bulk channel, the rest then comes over the libp2p stream."""
    async with swarm(2, line=False, bulk=path == "bulk") as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(DATA)
        requests: list[int] = []
        original_send = getattr(BlobService, _sender(path))

        async def breaking_send(self: BlobService, conn: Any, i: int, data: bytes) -> None:
            if i == 2 and len(requests) == 0:
                requests.append(i)
                await _break(path, conn)  # the connection drops mid-blob
                return
            await original_send(self, conn, i, data)

        setattr(holder.blobs, _sender(path), breaking_send.__get__(holder.blobs))
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == DATA
        assert requests == [2]
        assert reader.blobs.fetched_bytes == len(DATA)
        assert reader.blobs.bulk_bytes == (2 * CHUNK if path == "bulk" else 0)
        assert reader.penalties.score(holder.identity.peer_id, reader._clock()) == 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("bad", "then_break"), [(1, False), (5, False), (1, True)],
                         ids=["mid-blob", "last chunk", "then the stream breaks"])
async def test_a_corrupt_chunk_is_rejected_and_its_sender_penalised(bad: int, then_break: bool, path: str) -> None:
    """A bad chunk is refused wherever it is (the last one too), and a stream that breaks right
    after it does not make the reader resume past it."""
    async with swarm(2, line=False, bulk=path == "bulk") as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(DATA)
        original_send = getattr(BlobService, _sender(path))

        async def corrupting_send(self: BlobService, conn: Any, i: int, data: bytes) -> None:
            if then_break and i == bad + 1:
                await _break(path, conn)
                return
            if i == bad:
                data = bytes([data[0] ^ 1]) + data[1:]
            await original_send(self, conn, i, data)

        setattr(holder.blobs, _sender(path), corrupting_send.__get__(holder.blobs))
        with pytest.raises(BlobError, match=f"chunk {bad} does not match"):
            await reader.blobs.fetch(holder.identity.peer_id, blob_id)
        assert blob_id not in reader.blobs.store
        assert reader.penalties.score(holder.identity.peer_id, reader._clock()) > 0


async def test_a_holder_that_stops_after_announcing_a_large_blob_makes_the_reader_commit_little(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the bulk channel the blob's memory is faulted in ahead of the receive, but only a few
    steps ahead: never the whole size a manifest announces."""
    from p2pnode.services import blobs as blob_service

    monkeypatch.setattr(blob_service, "CHUNK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(blob_service, "RESUMES", 0)
    faulted: list[int] = []
    original = blob_service._fault_in_each

    def recording(views: list[memoryview]) -> None:
        faulted.extend(len(v) for v in views)
        original(views)

    monkeypatch.setattr(blob_service, "_fault_in_each", recording)
    async with swarm(2, line=False, bulk=True) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(os.urandom(96 * CHUNK))

        async def stalling_send(self: BlobService, conn: Any, i: int, data: bytes) -> None:
            if i >= 3:
                await trio.sleep_forever()  # cancelled by the holder's own chunk timeout
            await BlobService._send_bulk_chunk(self, conn, i, data)

        holder.blobs._send_bulk_chunk = stalling_send.__get__(holder.blobs)  # type: ignore[method-assign]
        with pytest.raises(BlobUnavailable):
            await reader.blobs.fetch(holder.identity.peer_id, blob_id)
        steps = blob_service.FAULT_IN_AHEAD * blob_service.FAULT_IN_STEP
        assert reader.blobs.bulk_bytes == 3 * CHUNK
        assert 0 < sum(faulted) <= steps * CHUNK < 96 * CHUNK
