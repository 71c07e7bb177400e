"""``/p2pnode/blob/1``: serve and fetch content-addressed blobs (see :mod:`p2pnode.wire.blob`).

:class:`BlobStore` keeps blobs by id in memory, bounded by bytes (least recently used go first), so a
repeated blob is never sent twice. :meth:`BlobService.fetch` reads a blob from a peer chunk by chunk,
checks every chunk, and after a broken stream resumes from the first missing chunk (up to
``RESUMES`` times); a peer that sends a bad manifest or chunk (or a second manifest) is penalised and
the fetch fails with ``BlobError``. A holder that cannot be reached, keeps breaking the stream, says
it does not hold the blob, or is slower than ``MIN_RATE`` overall makes it fail with
``BlobUnavailable`` (no penalty: that is not proof of bad faith).

Serving is bounded too (``specs/blobs.md``): a reader must ask within ``REQUEST_TIMEOUT_S`` and take
each chunk within ``CHUNK_TIMEOUT_S``, and the node serves at most ``MAX_STREAMS_PER_PEER`` streams
to one peer and ``MAX_STREAMS`` in all (enforced by the guard at the handler, with :attr:`limits`).

Collaborators: ``streams`` (to open streams to holders) and ``penalise``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import trio

from p2pnode.errors import PeerError
from p2pnode.net.framing import FramedStream, StreamGone
from p2pnode.protocol.limits import StreamLimits
from p2pnode.services.ports import Penalise, Streams
from p2pnode.wire import blob as wb
from p2pnode.wire.blob import MAX_BLOB, MAX_FRAME, BlobError, BlobUnavailable, Manifest
from p2pnode.wire.names import BLOB_PROTOCOL

log = logging.getLogger("p2pnode.blobs")
RESUMES = 5
REQUEST_TIMEOUT_S = 10.0
CHUNK_TIMEOUT_S = 30.0  # a chunk (1 MiB) must move within this, either way
MIN_RATE = 256 * 1024  # bytes/s: a whole fetch may take FETCH_GRACE_S + size / MIN_RATE at most
FETCH_GRACE_S = 30.0
MAX_STREAMS_PER_PEER, MAX_STREAMS = 8, 64


class BlobStore:
    def __init__(self, max_bytes: int = 2 * MAX_BLOB) -> None:
        self.max_bytes = max_bytes
        self._blobs: OrderedDict[bytes, tuple[Manifest, bytes]] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def put(self, data: bytes, manifest: wb.Manifest | None = None) -> bytes:
        """Keep ``data``; ``manifest``: its manifest, already checked chunk by chunk (a fetched
        blob), so it is not hashed again."""
        manifest = manifest or wb.manifest_for(data)
        if manifest.id not in self._blobs:
            self._blobs[manifest.id] = (manifest, data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._blobs) > 1:
                _, (_, old) = self._blobs.popitem(last=False)
                self._bytes -= len(old)
        self._blobs.move_to_end(manifest.id)
        return manifest.id

    def get(self, blob_id: bytes) -> tuple[Manifest, bytes] | None:
        item = self._blobs.get(blob_id)
        if item is not None:
            self._blobs.move_to_end(blob_id)
        return item

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._blobs


class BlobService:
    def __init__(self, streams: Streams, penalise: Penalise, store: BlobStore | None = None) -> None:
        self.streams = streams
        self.penalise = penalise
        self.store = store or BlobStore()
        self.fetched_bytes = 0
        self.limits = StreamLimits(per_peer=MAX_STREAMS_PER_PEER, total=MAX_STREAMS)

    # serving -------------------------------------------------------------------------------
    async def handle_stream(self, stream: Any, peer: bytes) -> None:
        """Serve one ``get`` (the guard in ``net/guard.py`` contains what the reader does wrong)."""
        fs = FramedStream(stream, max_frame=MAX_FRAME, frame_timeout=REQUEST_TIMEOUT_S)
        with trio.fail_after(REQUEST_TIMEOUT_S):
            blob_id, start = wb.decode_get(await fs.receive())
        item = self.store.get(blob_id)
        if item is None:
            await fs.send(wb.MISSING)
            await fs.close()
            return
        manifest, data = item
        await fs.send(wb.encode_manifest(manifest))
        for i in range(start, len(manifest.hashes)):
            a, b = manifest.chunk_range(i)
            with trio.fail_after(CHUNK_TIMEOUT_S):  # a reader that stops reading is dropped
                await self._send_chunk(fs, i, memoryview(data)[a:b])  # a view: no copy of the chunk
        await fs.close()

    async def _send_chunk(self, fs: FramedStream, i: int, data: bytes | memoryview) -> None:
        await fs.send(data, head=wb.chunk_head(i, len(data)))

    # fetching ------------------------------------------------------------------------------
    async def fetch(self, peer_id: bytes, blob_id: bytes, *, max_size: int = MAX_BLOB) -> bytes:
        """Fetch a blob from ``peer_id`` (or the local store), every chunk checked, resuming."""
        local = self.store.get(blob_id)
        if local is not None:
            self.store.hits += 1
            return local[1]
        manifest: Manifest | None = None
        chunks: list[bytes | memoryview] = []  # views of the frames they came in
        breaks = 0
        deadline = trio.current_time() + FETCH_GRACE_S + max_size / MIN_RATE
        while True:
            try:
                with trio.fail_after(CHUNK_TIMEOUT_S):
                    stream = await self.streams.open(peer_id, BLOB_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - gone, refusing, or not answering
                raise BlobUnavailable(f"cannot reach the blob's holder: {exc or type(exc).__name__}") from exc
            fs = FramedStream(stream, max_frame=MAX_FRAME, frame_timeout=CHUNK_TIMEOUT_S)
            manifest_seen = False  # one manifest per stream, first
            try:
                await fs.send(wb.encode_get(blob_id, len(chunks)))
                while manifest is None or len(chunks) < len(manifest.hashes):
                    with trio.fail_at(min(deadline, trio.current_time() + CHUNK_TIMEOUT_S)):
                        reply = wb.decode_reply(await fs.receive(),
                                                max_chunk=manifest.chunk if manifest else wb.CHUNK)
                    if reply.kind == "missing":
                        raise BlobUnavailable("the peer does not hold that blob")
                    if reply.kind == "manifest":
                        if manifest_seen:
                            raise BlobError("a second manifest on one stream")
                        got = wb.parse_manifest(reply.raw, blob_id, max_size=max_size)
                        if manifest is not None and got.raw != manifest.raw:
                            raise BlobError("manifest changed between resumes")
                        manifest, manifest_seen = got, True
                        deadline = min(deadline, trio.current_time() + FETCH_GRACE_S + got.size / MIN_RATE)
                        continue
                    if manifest is None or not manifest_seen:
                        raise BlobError("a chunk before the manifest")
                    if reply.index != len(chunks):
                        raise BlobError(f"chunk {reply.index} out of order (expected {len(chunks)})")
                    wb.check_chunk(manifest, reply.index, reply.data)
                    chunks.append(reply.data)
                break
            except PeerError as exc:
                self.penalise(peer_id, exc.code)
                await fs.reset()
                raise BlobError(str(exc)) from exc
            except (StreamGone, trio.TooSlowError) as exc:
                breaks += 1
                if trio.current_time() >= deadline:
                    raise BlobUnavailable(f"slower than {MIN_RATE // 1024} KiB/s; giving up") from exc
                if breaks > RESUMES:
                    raise BlobUnavailable(f"stream broke {breaks} times; giving up") from exc
                log.info("blob %s: stream broke after %d chunks; resuming", blob_id.hex()[:8], len(chunks))
            finally:
                await fs.close()
        data = b"".join(chunks)
        self.fetched_bytes += len(data)
        assert manifest is not None  # the loop ends with every chunk of it checked
        self.store.put(data, manifest)
        return data
