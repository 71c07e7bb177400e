"""The bulk channel for blobs (pure): its hello, its keys, and its records (``specs/blobs.md``).

A reader that asks for a blob over ``/p2pnode/blob/1`` may be offered a **bulk channel**: a plain
TCP connection to the holder, beside libp2p, that carries the same blob in large AEAD records. The
offer travels inside the libp2p stream, so inside the Noise session that authenticated both peers'
identity keys: a random 16-byte ``ticket`` and a random 32-byte ``secret``, known to those two
peers alone. Keys are derived from the secret with HKDF-SHA256, bound to both peer ids, the ticket
and the direction, so a record is only ever accepted by the peer it was sealed for, in its place.

On the connection (reader -> holder first):

* the reader's hello: ``MAGIC`` (8 bytes) ‖ ticket (16 bytes), then a record holding the ``get``
  (proof that it knows the secret, and what it wants);
* the holder's records: the reply (``manifest`` or ``missing``, as on the stream), then the data of
  chunks ``from``, ``from + 1``, ... in order, one chunk a record, nothing else.

A record is ``len`` (4 bytes, big-endian: the ciphertext's length) ‖ AES-256-GCM(key, nonce, ``len``,
plaintext); the nonce is the record's number in its direction (12 bytes, big-endian), so records
cannot be dropped, repeated or reordered without failing. Everything here is pure: bytes in, bytes
or a typed error out.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pnode.errors import CodecError, PeerError
from p2pnode.wire import codec

MAGIC = b"p2pblk/1"
TICKET = 16
SECRET = 32
HELLO = len(MAGIC) + TICKET
TAG = 16
HEADER = 4
MAX_OFFER = 128


class BulkError(PeerError):
    """A bulk record that does not authenticate, or is out of its bounds."""

    code = "bad_bulk"


@dataclass(frozen=True)
class Offer:
    """What a holder offers on the stream: where to dial (its port; the address is the one the
    reader's connection to it already uses), the ticket to show, and the secret to key records."""

    port: int
    ticket: bytes
    secret: bytes


def encode_offer(offer: Offer) -> bytes:
    return codec.encode({"t": "bulk", "port": offer.port, "ticket": offer.ticket, "key": offer.secret})


def decode_offer(fields: codec.Fields) -> Offer:
    """An offer's fields (a reply whose ``t`` is ``bulk``)."""
    port = fields.uint("port", maximum=65535)
    if port == 0:
        raise CodecError("bulk offer: port 0")
    return Offer(port, fields.blob("ticket", max_len=TICKET, exact=True), fields.blob("key", max_len=SECRET, exact=True))


def hello(ticket: bytes) -> bytes:
    return MAGIC + ticket


def parse_hello(data: bytes) -> bytes | None:
    """The ticket of a hello, or None for anything else."""
    if len(data) != HELLO or not data.startswith(MAGIC):
        return None
    return data[len(MAGIC):]


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # one block: 32 bytes


def keys(secret: bytes, ticket: bytes, holder: bytes, reader: bytes) -> tuple[bytes, bytes]:
    """(reader -> holder key, holder -> reader key) for one ticket between two peers."""
    base = b"p2pnode/bulk/1" + len(holder).to_bytes(1, "big") + holder + len(reader).to_bytes(1, "big") + reader
    return _hkdf(secret, ticket, base + b"/to-holder"), _hkdf(secret, ticket, base + b"/to-reader")


class Sealer:
    """Seals records in one direction, numbering them."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.count = 0

    def seal_into(self, plaintext: bytes | memoryview, out: bytearray) -> memoryview:
        """The record of ``plaintext`` written into ``out`` (at least ``record_size`` bytes long);
        returns the view of ``out`` it fills (no copy of the plaintext)."""
        n = len(plaintext) + TAG
        header = n.to_bytes(HEADER, "big")
        view = memoryview(out)[:HEADER + n]
        view[:HEADER] = header
        self._aead.encrypt_into(self._nonce(), plaintext, header, view[HEADER:])
        return view

    def seal(self, plaintext: bytes | memoryview) -> bytes:
        out = bytearray(record_size(len(plaintext)))
        return bytes(self.seal_into(plaintext, out))

    def _nonce(self) -> bytes:
        nonce = self.count.to_bytes(12, "big")
        self.count += 1
        return nonce


class Opener:
    """Opens records in one direction, in order."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.count = 0

    def open_into(self, header: bytes, ciphertext: bytes | bytearray | memoryview, out: memoryview) -> None:
        """Check and decrypt the record ``header ‖ ciphertext`` into ``out`` (exactly its
        plaintext's length), or raise :class:`BulkError`."""
        if len(out) != len(ciphertext) - TAG:
            raise BulkError("bulk record of the wrong size")
        try:
            self._aead.decrypt_into(self.count.to_bytes(12, "big"), ciphertext, header, out)
        except (InvalidTag, ValueError) as exc:
            raise BulkError("bulk record failed authentication") from exc
        self.count += 1

    def open(self, header: bytes, ciphertext: bytes | bytearray | memoryview) -> bytes:
        if len(ciphertext) < TAG:
            raise BulkError("bulk record shorter than its tag")
        out = bytearray(len(ciphertext) - TAG)
        self.open_into(header, ciphertext, memoryview(out))
        return bytes(out)


def record_size(plaintext: int) -> int:
    return HEADER + plaintext + TAG


def record_length(header: bytes, *, maximum: int) -> int:
    """The ciphertext length a record header announces, within ``maximum`` bytes of plaintext."""
    n = int.from_bytes(header, "big")
    if n < TAG or n - TAG > maximum:
        raise BulkError(f"bulk record of {n} bytes is outside its bounds")
    return n
