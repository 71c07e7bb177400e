"""``/p2pnode/blob/1``: serve and fetch content-addressed blobs (see :mod:`p2pnode.wire.blob`).

:class:`BlobStore` keeps blobs by id in memory, bounded by bytes (least recently used go first), so a
repeated blob is never sent twice. :meth:`BlobService.fetch` reads a blob from a peer chunk by chunk,
checks every chunk, and after a broken stream resumes from the first missing chunk (up to
``RESUMES`` times); a peer that sends a bad manifest or chunk (or a second manifest) is penalised and
the fetch fails with ``BlobError``. A holder that cannot be reached, keeps breaking the stream, says
it does not hold the blob, or is slower than ``MIN_RATE`` overall makes it fail with
``BlobUnavailable`` (no penalty: that is not proof of bad faith).

**Bulk channel.** Between peers connected directly (not through a relay), a reader asks for a bulk
channel and the holder offers one (:mod:`p2pnode.net.bulk`): the chunks then come over a TCP
connection of their own, in AEAD records keyed through the stream, at several times a libp2p
stream's speed. Every chunk is checked the same way: received straight into its place in the blob
(the ``bytes`` it is kept as), hashed in a thread while the next ones arrive, with the blob's fresh
memory faulted in by another thread a few chunks ahead. A holder whose channel cannot be dialed, or
breaks before answering, is read over the libp2p stream instead (on the same stream, at once), and
asked for no bulk channel for ``BULK_RETRY_S``.

Serving is bounded too (``specs/blobs.md``): a reader must ask within ``REQUEST_TIMEOUT_S`` and take
each chunk within ``CHUNK_TIMEOUT_S``, and the node serves at most ``MAX_STREAMS_PER_PEER`` streams
(bulk connections included) to one peer and ``MAX_STREAMS`` in all (enforced by the guard at the
handler, with :attr:`limits`); a banned peer's bulk connection ends at its next chunk.

Collaborators: ``streams`` (to open streams to holders), ``penalise``, ``is_banned``, and the
node's :class:`~p2pnode.net.bulk.BulkServer` (its tickets and port; ``None``: no bulk channel).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import trio

from p2pnode.errors import PeerError
from p2pnode.net import bulk
from p2pnode.net.bulk import BulkConnection, BulkGone, BulkServer
from p2pnode.net.framing import FramedStream, StreamGone
from p2pnode.net.guard import PeerGate, contain, first_leaf
from p2pnode.protocol.blob_fetch import MIN_RATE, BlobFetch
from p2pnode.protocol.bulk_tickets import Ticket
from p2pnode.protocol.limits import StreamLimits
from p2pnode.services.ports import IsBanned, Penalise, Streams
from p2pnode.wire import blob as wb
from p2pnode.wire import bulk as wbulk
from p2pnode.wire.blob import MAX_BLOB, MAX_FRAME, BlobError, BlobUnavailable, Manifest
from p2pnode.wire.fresh_bytes import fault_in
from p2pnode.wire.names import BLOB_PROTOCOL

log = logging.getLogger("p2pnode.blobs")
RESUMES = 5
REQUEST_TIMEOUT_S = 10.0
CHUNK_TIMEOUT_S = 30.0  # a chunk (1 MiB) must move within this, either way
MAX_STREAMS_PER_PEER, MAX_STREAMS = 8, 64
BULK_RETRY_S = 300.0  # a holder whose bulk channel failed is read over libp2p this long
MAX_BULK_FAILURES = 1024  # holders remembered so
MAX_REPLY = wb.MAX_MANIFEST + 64  # the first record on a bulk channel: a manifest or missing
HASH_AHEAD = 16  # chunks received (into their places in the blob) before the one being hashed is done
FAULT_IN_STEP = 8  # chunks whose fresh memory one thread hand-off faults in, ahead of the receive
FAULT_IN_AHEAD = 4  # steps of that faulted in before the receive reaches them, at most
THREAD_HASH = 64 * 1024  # a chunk this large is hashed in a thread
MAX_TRANSIENT = 64 << 20  # fetched blobs kept only in case they are asked for again, in all


class BlobStore:
    """Blobs held, least recently used dropped first past ``max_bytes``. Blobs kept only in case
    they are asked for again (``transient``: a fetched input no job is known to reuse, such as a
    dataset's shard) share a budget of their own, ``max_transient``: a provider that runs a map
    over a large dataset does not keep gigabytes of shards it will never see again."""

    def __init__(self, max_bytes: int = 2 * MAX_BLOB, max_transient: int = MAX_TRANSIENT) -> None:
        self.max_bytes, self.max_transient = max_bytes, max_transient
        self._blobs: OrderedDict[bytes, tuple[Manifest, bytes]] = OrderedDict()
        self._transient: OrderedDict[bytes, int] = OrderedDict()  # id -> size, oldest first
        self._bytes = self._transient_bytes = 0
        self._held: dict[bytes, int] = {}  # transient blobs a job in flight still needs: never dropped
        self.hits = 0

    def hold(self, blob_id: bytes) -> None:
        """A job in flight needs ``blob_id`` (its provider has yet to fetch it): it stays until
        :meth:`release`, whatever the transient budget."""
        self._held[blob_id] = self._held.get(blob_id, 0) + 1

    def release(self, blob_id: bytes) -> None:
        n = self._held.pop(blob_id, 0) - 1
        if n > 0:
            self._held[blob_id] = n
        self._trim()

    def put(self, data: bytes, manifest: wb.Manifest | None = None, *, transient: bool = False,
            hold: bool = False) -> bytes:
        """Keep ``data``; ``manifest``: its manifest, already checked chunk by chunk (a fetched
        blob), so it is not hashed again. A blob put again as not ``transient`` is kept as such.
        ``hold``: :meth:`hold` it too, before any room is made (so it is there, however large)."""
        manifest = manifest or wb.manifest_for(data)
        blob_id = manifest.id
        if hold:
            self.hold(blob_id)
        if blob_id not in self._blobs:
            self._blobs[blob_id] = (manifest, data)
            self._bytes += len(data)
            if transient:
                self._transient[blob_id] = len(data)
                self._transient_bytes += len(data)
        elif not transient and blob_id in self._transient:
            self._transient_bytes -= self._transient.pop(blob_id)
        self._blobs.move_to_end(blob_id)
        self._trim()
        return blob_id

    def _trim(self) -> None:
        if self._transient_bytes > self.max_transient:  # the one just put too, if it alone is over
            for old in [b for b in self._transient if b not in self._held]:
                self._drop(old)
                if self._transient_bytes <= self.max_transient:
                    break
        while self._bytes > self.max_bytes and len(self._blobs) > 1:
            self._drop(next(iter(self._blobs)))

    def _drop(self, blob_id: bytes) -> None:
        _, data = self._blobs.pop(blob_id)
        self._bytes -= len(data)
        size = self._transient.pop(blob_id, None)
        if size is not None:
            self._transient_bytes -= size

    def get(self, blob_id: bytes) -> tuple[Manifest, bytes] | None:
        item = self._blobs.get(blob_id)
        if item is not None:
            self._blobs.move_to_end(blob_id)
        return item

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._blobs


class BlobService:
    def __init__(self, streams: Streams, penalise: Penalise, store: BlobStore | None = None, *,
                 is_banned: IsBanned = lambda peer: False, bulk_server: BulkServer | None = None) -> None:
        self.streams = streams
        self.penalise = penalise
        self.is_banned = is_banned
        self.store = store or BlobStore()
        self.fetched_bytes = 0
        self.bulk_bytes = 0  # of those, fetched over a bulk channel
        self.limits = StreamLimits(per_peer=MAX_STREAMS_PER_PEER, total=MAX_STREAMS)
        self.bulk = bulk_server
        if bulk_server is not None:
            bulk_server.serve = self.serve_bulk
        self._no_bulk: OrderedDict[bytes, float] = OrderedDict()  # holder -> until (trio time)

    # serving -------------------------------------------------------------------------------
    async def handle_stream(self, stream: Any, peer: bytes) -> None:
        """Serve one ``get`` (the guard in ``net/guard.py`` contains what the reader does wrong)."""
        fs = FramedStream(stream, max_frame=MAX_FRAME, frame_timeout=REQUEST_TIMEOUT_S)
        with trio.fail_after(REQUEST_TIMEOUT_S):
            blob_id, start, wants_bulk = wb.decode_request(await fs.receive())
        item = self.store.get(blob_id)
        if item is None:
            await fs.send(wb.MISSING)
            await fs.close()
            return
        offer = self.bulk.offer(peer, blob_id, start) if wants_bulk and self.bulk and bulk.direct_ip(stream) else None
        if offer is not None:
            await fs.send(wbulk.encode_offer(offer))
            try:  # the reader takes the channel and ends this stream, or asks here after all
                with trio.fail_after(REQUEST_TIMEOUT_S + bulk.DIAL_TIMEOUT_S):
                    again, start, _ = wb.decode_request(await fs.receive())
            except StreamGone:
                await fs.close()
                return
            if again != blob_id:
                raise BlobError("a second get for another blob")
        await self._serve(fs, item, start)
        await fs.close()

    async def _serve(self, fs: FramedStream, item: tuple[Manifest, bytes], start: int) -> None:
        manifest, data = item
        await fs.send(wb.encode_manifest(manifest))
        for i in range(start, len(manifest.hashes)):
            a, b = manifest.chunk_range(i)
            with trio.fail_after(CHUNK_TIMEOUT_S):  # a reader that stops reading is dropped
                await self._send_chunk(fs, i, memoryview(data)[a:b])  # a view: no copy of the chunk

    async def _send_chunk(self, fs: FramedStream, i: int, data: bytes | memoryview) -> None:
        await fs.send(data, head=wb.chunk_head(i, len(data)))

    async def serve_bulk(self, conn: BulkConnection, ticket: Ticket, request: bytes) -> None:
        """Serve the blob a ticket was issued for over an authenticated bulk connection (what its
        reader does wrong is counted against it, as on a stream)."""
        peer = ticket.peer
        if self.is_banned(peer) or self.limits.acquire(peer) is not None:
            return
        try:
            await contain("blob-bulk", peer, lambda: self._serve_bulk(conn, ticket, request),
                          PeerGate(self.is_banned, self.penalise))
        finally:
            self.limits.release(peer)

    async def _serve_bulk(self, conn: BulkConnection, ticket: Ticket, request: bytes) -> None:
        blob_id, start, _ = wb.decode_request(request)
        if (blob_id, start) != (ticket.blob_id, ticket.start):
            raise BlobError("a bulk request for another blob than its ticket's")
        item = self.store.get(blob_id)
        if item is None:
            await conn.send(wb.MISSING)
            return
        manifest, data = item
        await conn.send(wb.encode_manifest(manifest))
        view = memoryview(data)
        for i in range(start, len(manifest.hashes)):
            if self.is_banned(ticket.peer):
                return
            a, b = manifest.chunk_range(i)
            with trio.fail_after(CHUNK_TIMEOUT_S):
                await self._send_bulk_chunk(conn, i, view[a:b])

    async def _send_bulk_chunk(self, conn: BulkConnection, i: int, data: memoryview) -> None:
        await conn.send(data)

    # fetching ------------------------------------------------------------------------------
    async def fetch(self, peer_id: bytes, blob_id: bytes, *, max_size: int = MAX_BLOB,
                    transient: bool = False) -> bytes:
        """Fetch a blob from ``peer_id`` (or the local store), every chunk checked, resuming.
        ``transient``: no job is known to use it again (kept within the store's transient budget)."""
        local = self.store.get(blob_id)
        if local is not None:
            self.store.hits += 1
            return local[1]
        got = BlobFetch(blob_id, max_size, trio.current_time())
        breaks = 0
        while not got.done:
            try:
                await self._attempt(peer_id, got)
            except PeerError as exc:
                self.penalise(peer_id, exc.code)
                raise BlobError(str(exc)) from exc
            except (StreamGone, trio.TooSlowError) as exc:  # a bulk channel's end too
                breaks += 1
                if trio.current_time() >= got.deadline:
                    raise BlobUnavailable(f"slower than {MIN_RATE // 1024} KiB/s; giving up") from exc
                if breaks > RESUMES:
                    raise BlobUnavailable(f"stream broke {breaks} times; giving up") from exc
                log.info("blob %s: stream broke after %d chunks; resuming", blob_id.hex()[:8], got.next)
        data = got.result()
        self.fetched_bytes += len(data)
        assert got.manifest is not None  # the loop ends with every chunk of it checked
        self.store.put(data, got.manifest, transient=transient)
        return data

    async def _attempt(self, peer: bytes, got: BlobFetch) -> None:
        """One stream (and the bulk channel it may lead to) of a fetch."""
        try:
            with trio.fail_after(CHUNK_TIMEOUT_S):
                stream = await self.streams.open(peer, BLOB_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - gone, refusing, or not answering
            raise BlobUnavailable(f"cannot reach the blob's holder: {exc or type(exc).__name__}") from exc
        fs = FramedStream(stream, max_frame=MAX_FRAME, frame_timeout=CHUNK_TIMEOUT_S)
        try:
            ip = self._bulk_ip(peer, stream)
            await fs.send(wb.encode_get(got.blob_id, got.next, bulk=ip is not None))
            first = await self._reply(fs, got)
            if first.kind == "bulk":
                assert first.offer is not None
                if ip is None:
                    raise BlobError("a bulk offer to a reader that did not ask for one")
                if await self._fetch_bulk(peer, ip, first.offer, got, fs):
                    return
                await fs.send(wb.encode_get(got.blob_id, got.next))  # on this stream after all
                first = await self._reply(fs, got)
            await self._receive_stream(fs, got, first)
        except PeerError:
            await fs.reset()
            raise
        finally:
            await fs.close()

    async def _reply(self, fs: FramedStream, got: BlobFetch) -> wb.Reply:
        with trio.fail_at(min(got.deadline, trio.current_time() + CHUNK_TIMEOUT_S)):
            reply = wb.decode_reply(await fs.receive(), max_chunk=got.manifest.chunk if got.manifest else wb.CHUNK)
        if reply.kind == "missing":
            raise BlobUnavailable("the peer does not hold that blob")
        return reply

    async def _receive_stream(self, fs: FramedStream, got: BlobFetch, reply: wb.Reply) -> None:
        got.new_connection()
        while True:
            if reply.kind == "manifest":
                got.take_manifest(reply.raw, trio.current_time())
            elif reply.kind == "chunk":
                got.take_chunk(reply.index, reply.data)
            else:
                raise BlobError(f"unexpected {reply.kind!r} during a transfer")
            if got.done:
                return
            reply = await self._reply(fs, got)

    def _bulk_ip(self, peer: bytes, stream: Any) -> str | None:
        """Where to dial ``peer``'s bulk channel, when one may be asked for."""
        if self.bulk is None:
            return None
        until = self._no_bulk.get(peer)
        if until is not None:
            if trio.current_time() < until:
                return None
            del self._no_bulk[peer]
        return bulk.direct_ip(stream)

    def _bulk_failed(self, peer: bytes) -> None:
        self._no_bulk[peer] = trio.current_time() + BULK_RETRY_S
        self._no_bulk.move_to_end(peer)
        while len(self._no_bulk) > MAX_BULK_FAILURES:
            self._no_bulk.popitem(last=False)

    async def _fetch_bulk(self, peer: bytes, ip: str, offer: wbulk.Offer, got: BlobFetch, fs: FramedStream) -> bool:
        """Take the rest of the blob over ``offer``'s channel; False (and the holder remembered) when
        the channel cannot be had, so the caller goes on over the stream."""
        assert self.bulk is not None
        try:
            conn = await bulk.dial(ip, offer, self.bulk.me, peer, wb.encode_get(got.blob_id, got.next))
        except BulkGone as exc:
            log.info("blob %s: no bulk channel to %s (%s); over libp2p", got.blob_id.hex()[:8], ip, exc)
            self._bulk_failed(peer)
            return False
        await fs.close()  # the holder's stream handler ends; the channel carries the rest
        try:
            await self._receive_bulk(conn, got)
        except (BulkGone, wbulk.BulkError) as exc:
            # a record that does not authenticate proves nothing against the holder (anyone on
            # the path can write into a TCP connection): a break, and libp2p from now on
            self._bulk_failed(peer)
            raise BulkGone(str(exc)) from exc
        finally:
            await conn.aclose()
        return True

    async def _receive_bulk(self, conn: BulkConnection, got: BlobFetch) -> None:
        got.new_connection()
        with trio.fail_at(min(got.deadline, trio.current_time() + CHUNK_TIMEOUT_S)):
            reply = wb.decode_reply(await conn.receive(MAX_REPLY))
        if reply.kind == "missing":
            raise BlobUnavailable("the peer does not hold that blob")
        if reply.kind != "manifest":
            raise BlobError(f"a bulk channel opened with {reply.kind!r}")
        got.take_manifest(reply.raw, trio.current_time())
        # each chunk is received straight into its place in the blob, and hashed in a thread
        # (hashlib lets go of the GIL) while the next ones arrive; the blob's fresh memory is
        # faulted in by another thread a few steps ahead of both (never further: a holder that
        # announces a large blob and stops makes the reader commit no more memory than that)
        send, receive = trio.open_memory_channel[int](HASH_AHEAD)
        steps = trio.Semaphore(FAULT_IN_AHEAD)
        broke: Exception | None = None
        async with _nursery() as nursery:
            nursery.start_soon(self._check_chunks, got, receive)
            async with send, _nursery() as ahead:
                ahead.start_soon(_fault_in, got, steps)
                try:
                    for k, i in enumerate(got.wanted(), 1):
                        with trio.fail_at(min(got.deadline, trio.current_time() + CHUNK_TIMEOUT_S)):
                            await conn.receive_into(got.place(i))
                        await send.send(i)
                        if k % FAULT_IN_STEP == 0:
                            steps.release()
                except (BulkGone, trio.TooSlowError) as exc:
                    broke = exc  # the chunks already here are checked first: a resume starts after them
                ahead.cancel_scope.cancel()
        if broke is not None:
            raise broke

    async def _check_chunks(self, got: BlobFetch, chunks: trio.MemoryReceiveChannel[int]) -> None:
        """Check chunks as they are received, all those waiting at once (one thread hand-off)."""
        async with chunks:
            async for first in chunks:
                batch = [first]
                with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                    while True:
                        batch.append(chunks.receive_nowait())
                views = [got.place(i) for i in batch]
                size = sum(len(v) for v in views)
                digests = (await trio.to_thread.run_sync(_sha256_each, views) if size >= THREAD_HASH
                           else [None] * len(views))
                for i, view, digest in zip(batch, views, digests, strict=True):
                    got.take_placed(i, digest)
                    self.bulk_bytes += len(view)


async def _fault_in(got: BlobFetch, steps: trio.Semaphore) -> None:
    """Fault in the memory of the chunks still wanted, ``FAULT_IN_STEP`` at a time, each step
    taken when ``steps`` allows."""
    wanted = got.wanted()
    for k in range(0, len(wanted), FAULT_IN_STEP):
        await steps.acquire()
        views = [got.place(i) for i in wanted[k:k + FAULT_IN_STEP] if i >= got.next]
        await trio.to_thread.run_sync(_fault_in_each, views)


def _fault_in_each(views: list[memoryview]) -> None:
    for view in views:
        fault_in(view)


def _sha256_each(views: list[memoryview]) -> list[bytes | None]:
    return [hashlib.sha256(v).digest() for v in views]


@contextlib.asynccontextmanager
async def _nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose one error comes out as itself, not in a group (a fetch's callers catch
    ``BlobError``, ``BulkGone``, ``TooSlowError``)."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise first_leaf(group) from None
