"""One blob being fetched (pure): its manifest, the chunks checked so far, and the rules a holder
must keep on every connection it answers on (``specs/blobs.md``).

The shell (:mod:`p2pnode.services.blobs`) feeds it what arrives, on a libp2p stream or a bulk
channel alike; whatever a holder gets wrong raises :class:`~p2pnode.wire.blob.BlobError`. The blob
is assembled in place, in the ``bytes`` object it is given out as (:mod:`p2pnode.wire.fresh_bytes`):
a chunk from a stream is copied to its place once, and a channel that can receive into memory
(the bulk channel) receives each chunk into :meth:`BlobFetch.place` directly, so nothing is joined
at the end.
"""

from __future__ import annotations

from collections.abc import Callable

from p2pnode.wire import blob as wb
from p2pnode.wire.blob import BlobError, Manifest
from p2pnode.wire.fresh_bytes import fresh_bytes

MIN_RATE = 256 * 1024  # bytes/s: a whole fetch may take FETCH_GRACE_S + size / MIN_RATE at most
FETCH_GRACE_S = 30.0


class BlobFetch:
    """Chunks ``0 .. next - 1`` are checked against the manifest; the rest are still wanted. The
    fetch must end by :attr:`deadline` (on the caller's clock): ``FETCH_GRACE_S`` plus the time the
    blob takes at ``MIN_RATE``, by ``max_size`` until the manifest says the size."""

    def __init__(self, blob_id: bytes, max_size: int, now: float) -> None:
        self.blob_id = blob_id
        self.max_size = max_size
        self.deadline = now + FETCH_GRACE_S + max_size / MIN_RATE
        self.manifest: Manifest | None = None
        self.next = 0  # chunks checked, in order
        self._manifest_here = False  # a manifest came on the current connection
        self._into = memoryview(b"")  # the blob being assembled (written only here and by place())
        self._blob: Callable[[], bytes] = bytes

    @property
    def done(self) -> bool:
        return self.manifest is not None and self.next == len(self.manifest.hashes)

    def new_connection(self) -> None:
        """A new stream or channel: it must send its manifest first, once."""
        self._manifest_here = False

    def take_manifest(self, raw: bytes, now: float) -> Manifest:
        if self._manifest_here:
            raise BlobError("a second manifest on one stream")
        got = wb.parse_manifest(raw, self.blob_id, max_size=self.max_size)
        if self.manifest is not None and got.raw != self.manifest.raw:
            raise BlobError("manifest changed between resumes")
        if self.manifest is None:
            self._into, self._blob = fresh_bytes(got.size)
        self.manifest, self._manifest_here = got, True
        self.deadline = min(self.deadline, now + FETCH_GRACE_S + got.size / MIN_RATE)
        return got

    def take_chunk(self, index: int, data: bytes | memoryview, digest: bytes | None = None) -> None:
        """Check chunk ``index`` (against ``digest``, its SHA-256, when the caller computed it) and
        copy it to its place in the blob."""
        self._check(index, data, digest)
        a, b = self.manifest.chunk_range(index)  # type: ignore[union-attr]  # checked
        self._into[a:b] = data
        self.next += 1

    def place(self, index: int) -> memoryview:
        """Where chunk ``index`` goes in the blob, for a channel to receive it into; then
        :meth:`take_placed`. Only chunks not yet checked can be written so."""
        if self.manifest is None or not self._manifest_here:
            raise BlobError("a chunk before the manifest")
        if not self.next <= index < len(self.manifest.hashes):
            raise BlobError(f"chunk {index} is not wanted (next {self.next})")
        a, b = self.manifest.chunk_range(index)
        return self._into[a:b]

    def take_placed(self, index: int, digest: bytes | None = None) -> None:
        """Check chunk ``index``, already received into :meth:`place`, where it is."""
        data = self.place(index)
        self._check(index, data, digest)
        self.next += 1

    def _check(self, index: int, data: bytes | memoryview, digest: bytes | None) -> None:
        if self.manifest is None or not self._manifest_here:
            raise BlobError("a chunk before the manifest")
        if index != self.next:
            raise BlobError(f"chunk {index} out of order (expected {self.next})")
        wb.check_chunk(self.manifest, index, data, digest)

    def wanted(self) -> range:
        """The chunks still wanted, in order."""
        assert self.manifest is not None
        return range(self.next, len(self.manifest.hashes))

    def result(self) -> bytes:
        """The blob, once every chunk is checked (never before: its memory is still being written)."""
        if not self.done:
            raise RuntimeError("the blob is not complete")
        return self._blob()
