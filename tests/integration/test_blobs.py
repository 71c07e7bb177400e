"""Blob transfer between real nodes: chunks checked, resumable, cached, bad holders penalised."""

from __future__ import annotations

import os

import pytest

from p2pnode.services.blobs import BlobService
from p2pnode.wire.blob import CHUNK, BlobError, BlobUnavailable
from tests.integration.swarm import all_list_all, swarm

DATA = os.urandom(5 * CHUNK + 12345)


async def test_transfer_checks_every_chunk_and_caches() -> None:
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(DATA)
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == DATA
        assert reader.blobs.fetched_bytes == len(DATA) and blob_id in reader.blobs.store
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == DATA  # from the cache
        assert reader.blobs.store.hits == 1 and reader.blobs.fetched_bytes == len(DATA)
        with pytest.raises(BlobUnavailable, match="does not hold"):  # not proof of bad faith: no penalty
            await reader.blobs.fetch(holder.identity.peer_id, b"\x01" * 32)
        assert reader.penalties.score(holder.identity.peer_id, reader._clock()) == 0


async def test_a_broken_stream_resumes_from_the_next_chunk() -> None:
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(DATA)
        requests: list[int] = []
        original_send = BlobService._send_chunk

        async def breaking_send(self: BlobService, fs: object, i: int, data: bytes) -> None:
            if i == 2 and len(requests) == 0:
                requests.append(i)
                await fs.reset()  # type: ignore[attr-defined]  # the connection drops mid-blob
                return
            await original_send(self, fs, i, data)  # type: ignore[arg-type]

        holder.blobs._send_chunk = breaking_send.__get__(holder.blobs)  # type: ignore[method-assign]
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == DATA
        assert requests == [2]
        assert reader.blobs.fetched_bytes == len(DATA)


@pytest.mark.parametrize(("bad", "then_break"), [(1, False), (5, False), (1, True)],
                         ids=["mid-blob", "last chunk", "then the stream breaks"])
async def test_a_corrupt_chunk_is_rejected_and_its_sender_penalised(bad: int, then_break: bool) -> None:
    """A bad chunk is refused wherever it is (the last one too), and a stream that breaks right
    after it does not make the reader resume past it."""
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        holder, reader = nodes[0].node, nodes[1].node
        blob_id = holder.blobs.store.put(DATA)
        original_send = BlobService._send_chunk

        async def corrupting_send(self: BlobService, fs: object, i: int, data: bytes) -> None:
            if then_break and i == bad + 1:
                await fs.reset()  # type: ignore[attr-defined]
                return
            if i == bad:
                data = bytes([data[0] ^ 1]) + data[1:]
            await original_send(self, fs, i, data)  # type: ignore[arg-type]

        holder.blobs._send_chunk = corrupting_send.__get__(holder.blobs)  # type: ignore[method-assign]
        with pytest.raises(BlobError, match=f"chunk {bad} does not match"):
            await reader.blobs.fetch(holder.identity.peer_id, blob_id)
        assert blob_id not in reader.blobs.store
        assert reader.penalties.score(holder.identity.peer_id, reader._clock()) > 0
