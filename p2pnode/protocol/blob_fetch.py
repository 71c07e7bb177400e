"""One blob being fetched (pure): its manifest, the chunks checked so far, and the rules a holder
must keep on every connection it answers on (``specs/blobs.md``).

The shell (:mod:`p2pnode.services.blobs`) feeds it what arrives, on a libp2p stream or a bulk
channel alike; whatever a holder gets wrong raises :class:`~p2pnode.wire.blob.BlobError`.
"""

from __future__ import annotations

from p2pnode.wire import blob as wb
from p2pnode.wire.blob import BlobError, Manifest

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
        self.chunks: list[bytes | memoryview] = []
        self._manifest_here = False  # a manifest came on the current connection

    @property
    def next(self) -> int:
        return len(self.chunks)

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
        self.manifest, self._manifest_here = got, True
        self.deadline = min(self.deadline, now + FETCH_GRACE_S + got.size / MIN_RATE)
        return got

    def take_chunk(self, index: int, data: bytes | memoryview, digest: bytes | None = None) -> None:
        """Check chunk ``index`` (against ``digest``, its SHA-256, when the caller computed it) and
        keep it (a view is kept as it is, not copied)."""
        if self.manifest is None or not self._manifest_here:
            raise BlobError("a chunk before the manifest")
        if index != self.next:
            raise BlobError(f"chunk {index} out of order (expected {self.next})")
        wb.check_chunk(self.manifest, index, data, digest)
        self.chunks.append(data)

    def rest(self) -> tuple[int, list[tuple[int, int]]]:
        """(bytes, [(start, end) of each chunk]) of the chunks still wanted, relative to the first
        of them: where a channel that sends them in order can put them."""
        assert self.manifest is not None
        first = self.manifest.chunk_range(self.next)[0]
        ranges = [self.manifest.chunk_range(i) for i in range(self.next, len(self.manifest.hashes))]
        return self.manifest.size - first, [(a - first, b - first) for a, b in ranges]

    def result(self) -> bytes:
        return b"".join(self.chunks)
