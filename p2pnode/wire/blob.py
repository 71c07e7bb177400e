"""Content-addressed blobs: manifests and chunk checks (pure).

A blob of ``size`` bytes is cut into chunks of ``CHUNK`` bytes. Its manifest is the CBOR map
``{"size": uint, "chunk": uint, "hashes": [bstr .size 32, ...]}`` (SHA-256 of each chunk), and the
blob's id is the SHA-256 of the manifest's bytes. So the id commits to every chunk: a reader checks
the manifest against the id, then each chunk against the manifest as it arrives, and can resume from
any chunk. Stream messages (``/p2pnode/blob/1``), each a length-prefixed CBOR map:

* reader -> holder: ``{"t": "get", "id": bstr .size 32, "from": uint}``, with ``"bulk": true`` from a
  reader that can take the blob over a bulk channel (:mod:`p2pnode.wire.bulk`);
* holder -> reader: ``{"t": "manifest", "m": bstr}``, then ``{"t": "chunk", "i": uint, "data": bstr}``
  for chunks ``from`` .. end, or ``{"t": "missing"}``; or, to a reader that asked for it,
  ``{"t": "bulk", "port": uint, "ticket": bstr, "key": bstr}``, after which the reader either
  takes the blob over the bulk channel (and ends the stream) or sends a plain ``get`` on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from p2pnode.errors import CodecError, P2PNodeError, PeerError
from p2pnode.wire import bulk, codec

CHUNK = 1 << 20
MAX_BLOB = 1 << 30
MAX_CHUNKS = MAX_BLOB // CHUNK
MAX_FRAME = CHUNK + 1024
MAX_MANIFEST = 64 + 35 * MAX_CHUNKS


class BlobError(PeerError):
    """A blob's manifest or a chunk does not match its hash, or the blob exceeds a limit."""

    code = "bad_blob"


class BlobUnavailable(P2PNodeError):
    """The blob could not be had: its holder is unreachable, its streams kept breaking, or it says
    it does not hold the blob. Not proof of bad faith, so no penalty: the caller decides (a job
    whose output cannot be fetched is re-awarded)."""

    code = "blob_unavailable"


@dataclass(frozen=True)
class Manifest:
    size: int
    chunk: int
    hashes: tuple[bytes, ...]
    raw: bytes

    @property
    def id(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    def chunk_range(self, i: int) -> tuple[int, int]:
        start = i * self.chunk
        return start, min(self.size, start + self.chunk)


def manifest_for(data: bytes, chunk: int = CHUNK) -> Manifest:
    view = memoryview(data)  # chunks hashed in place, not sliced out
    hashes = tuple(hashlib.sha256(view[i:i + chunk]).digest() for i in range(0, max(len(data), 1), chunk))
    raw = codec.encode({"size": len(data), "chunk": chunk, "hashes": list(hashes)})
    return Manifest(len(data), chunk, hashes, raw)


def parse_manifest(raw: bytes, expected_id: bytes, *, max_size: int = MAX_BLOB) -> Manifest:
    if hashlib.sha256(raw).digest() != expected_id:
        raise BlobError("manifest does not hash to the blob id")
    f = codec.Fields(codec.decode(raw, max_size=MAX_MANIFEST), "manifest")
    size = f.uint("size", maximum=max_size)
    chunk = f.uint("chunk", maximum=CHUNK)
    hashes = f.array("hashes", max_items=MAX_CHUNKS)
    if chunk == 0 or len(hashes) != max(1, -(-size // chunk)):
        raise CodecError("manifest: chunk count does not match the size")
    if not all(isinstance(h, bytes) and len(h) == 32 for h in hashes):
        raise CodecError("manifest: hashes must be 32-byte strings")
    return Manifest(size, chunk, tuple(hashes), raw)


def check_chunk(manifest: Manifest, i: int, data: bytes | memoryview, digest: bytes | None = None) -> None:
    """Chunk ``i`` is ``data``, or :class:`BlobError`. ``digest``: its SHA-256, when the caller
    has hashed it already (in another thread, while the next chunk arrived)."""
    if not 0 <= i < len(manifest.hashes):
        raise BlobError(f"chunk {i} is outside the blob")
    start, end = manifest.chunk_range(i)
    if len(data) != end - start or (digest or hashlib.sha256(data).digest()) != manifest.hashes[i]:
        raise BlobError(f"chunk {i} does not match its hash")


# stream messages (/p2pnode/blob/1) ---------------------------------------------------------------

MAX_GET = 1024


def encode_get(blob_id: bytes, start: int, *, bulk: bool = False) -> bytes:
    return codec.encode({"t": "get", "id": blob_id, "from": start} | ({"bulk": True} if bulk else {}))


def decode_request(data: bytes) -> tuple[bytes, int, bool]:
    """A reader's request: (blob id, first chunk wanted, whether it can take a bulk channel)."""
    f = codec.Fields(codec.decode(data, max_size=MAX_GET), "blob-get")
    if f.text("t", max_len=8) != "get":
        raise BlobError("expected a get")
    wants_bulk = f.boolean("bulk") if f.has("bulk") else False
    return f.blob("id", max_len=32, exact=True), f.uint("from", maximum=MAX_CHUNKS), wants_bulk


def decode_get(data: bytes) -> tuple[bytes, int]:
    """A reader's request: (blob id, first chunk wanted)."""
    blob_id, start, _ = decode_request(data)
    return blob_id, start


def encode_manifest(manifest: Manifest) -> bytes:
    return codec.encode({"t": "manifest", "m": manifest.raw})


def encode_chunk(i: int, data: bytes) -> bytes:
    return codec.encode({"t": "chunk", "i": i, "data": data})


def _head(major: int, n: int) -> bytes:
    """A CBOR item head in its shortest form (as canonical encoding writes it)."""
    if n < 24:
        return bytes([major << 5 | n])
    for code, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | code]) + n.to_bytes(size, "big")
    raise ValueError("too large for CBOR")


_CHUNK_MAP = b"\xa3\x61i"  # map of 3; key "i" (canonical order: "i", "t", "data")
_CHUNK_MID = b"\x61t\x65chunk\x64data"


def chunk_head(i: int, size: int) -> bytes:
    """The bytes of :func:`encode_chunk` before the chunk's data: a holder sends this, then the
    data as it is, so a 1 MiB chunk is not copied into an encoder."""
    return _CHUNK_MAP + _head(0, i) + _CHUNK_MID + _head(2, size)


MISSING = codec.encode({"t": "missing"})


@dataclass(frozen=True)
class Reply:
    """One message from a holder: ``kind`` is ``manifest`` (``raw``), ``chunk`` (``index``,
    ``data``), ``missing`` or ``bulk`` (``offer``)."""

    kind: str
    raw: bytes = b""
    index: int = 0
    data: bytes | memoryview = b""
    offer: bulk.Offer | None = None


def _fast_chunk(data: bytes, max_chunk: int) -> Reply | None:
    """A chunk message in canonical form, its data a view of ``data`` (no copy); None for
    anything else, which then goes through the strict general decoder."""
    if not data.startswith(_CHUNK_MAP):
        return None
    index = _head_at(data, len(_CHUNK_MAP), 0)
    if index is None or not data.startswith(_CHUNK_MID, index[1]):
        return None
    size = _head_at(data, index[1] + len(_CHUNK_MID), 2)
    if size is None or size[0] != len(data) - size[1] or size[0] > max_chunk or index[0] > MAX_CHUNKS:
        return None
    return Reply("chunk", index=index[0], data=memoryview(data)[size[1]:])


def _head_at(data: bytes, pos: int, major: int) -> tuple[int, int] | None:
    """(value, next position) of a shortest-form CBOR head of ``major`` at ``pos``, else None."""
    if pos >= len(data) or data[pos] >> 5 != major:
        return None
    low = data[pos] & 0x1F
    if low < 24:
        return low, pos + 1
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(low)
    if size is None or pos + 1 + size > len(data):
        return None
    value = int.from_bytes(data[pos + 1:pos + 1 + size], "big")
    if _head(major, value) != data[pos:pos + 1 + size]:
        return None  # not the shortest form
    return value, pos + 1 + size


def decode_reply(data: bytes, *, max_chunk: int = CHUNK) -> Reply:
    """A holder's message. A chunk's ``data`` may be a view of ``data`` (bytes-like)."""
    fast = _fast_chunk(data, max_chunk) if len(data) <= MAX_FRAME else None
    if fast is not None:
        return fast
    f = codec.Fields(codec.decode(data, max_size=MAX_FRAME), "blob")
    kind = f.text("t", max_len=8)
    if kind == "missing":
        return Reply("missing")
    if kind == "manifest":
        return Reply("manifest", raw=f.blob("m", max_len=MAX_MANIFEST))
    if kind == "chunk":
        return Reply("chunk", index=f.uint("i", maximum=MAX_CHUNKS), data=f.blob("data", max_len=max_chunk))
    if kind == "bulk":
        return Reply("bulk", offer=bulk.decode_offer(f))
    raise BlobError(f"unexpected {kind!r}")
