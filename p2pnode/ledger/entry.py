"""Ledger entries and the chain rules (pure: no I/O, no clock).

A record is a signed envelope ``[body: bstr, sig: bstr .size 64]`` (see ``specs/ledger.md``)::

    body = {v: 1, seq: uint, prev: bstr .size 32, t: uint (ms), kind: tstr, peer: bstr, data: map}
    sig  = ed25519(owner key, "p2pnode/ledger/1\\n" || body)
    hash = SHA-256(record)

Entry ``seq`` 0 is the genesis (``kind = "genesis"``, ``prev`` = 32 zero bytes, ``data.owner`` = the
owner's peer id). Entry n > 0 has ``prev`` = hash of entry n-1 and ``t`` not before entry n-1's.
Every record is signed by the owner. :class:`ChainVerifier` checks a chain record by record, so
a whole ledger or another node's export is checked in one pass with constant memory; anything
wrong raises :class:`~p2pnode.errors.ChainError` naming the first bad entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from p2pnode.errors import ChainError, PeerError
from p2pnode.wire import codec, envelope
from p2pnode.wire.jsonview import jsonable
from p2pnode.wire.peer_id import (
    PEER_ID_LEN,
    peer_id_from_public_key,
    public_key_from_peer_id,
    to_base58,
)

DOMAIN = b"p2pnode/ledger/1\n"
VERSION = 1
HASH_LEN = 32
ZERO_HASH = bytes(HASH_LEN)
MAX_RECORD = 256 * 1024  # dispute evidence holds up to three signed results of at most 64 KiB
MAX_TEXT = 256
MAX_EVIDENCE = 4

# What each kind's ``data`` must hold (further keys are allowed and kept); ``peer`` is the other
# party (empty for genesis).
SCHEMAS: dict[str, dict[str, str]] = {
    "genesis": {"owner": "peer"},
    # a signed receipt we gave (role requester) or got (role provider)
    "receipt": {"role": "text", "job": "bytes", "receipt": "bytes", "workload": "text"},
    # a check of a provider's result: method digest | freivalds | rerun | calibration
    "verification": {"job": "bytes", "method": "text", "passed": "bool", "detail": "text"},
    # an awarded provider that failed, cancelled, stalled or overran
    "failure": {"job": "bytes", "reason": "text"},
    # a disagreement settled by a referee run: the signed results of all parties
    "dispute": {"job": "bytes", "checker": "peer", "referee": "peer", "wrong": "text", "results": "list"},
    # a signed report from another peer, as received on the reports topic
    "report": {"report": "bytes"},
    # protocol abuse by a peer
    "penalty": {"code": "text"},
    # credits earned (> 0, as provider) or spent (< 0, as requester)
    "credit": {"job": "bytes", "amount": "int"},
}
KINDS = tuple(SCHEMAS)


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    prev: bytes
    t_ms: int
    kind: str
    peer: bytes
    data: dict[str, Any]
    raw: bytes  # the signed record
    hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "t_ms": self.t_ms, "kind": self.kind,
                "peer": to_base58(self.peer) if self.peer else "", "hash": self.hash.hex(),
                "prev": self.prev.hex(), "data": jsonable(self.data)}


def record_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def make_entry(key: SigningKey, *, seq: int, prev: bytes, t_ms: int, kind: str, peer: bytes = b"",
               data: Mapping[str, Any]) -> Entry:
    """Sign a new entry. It is checked first by the rules a verifier applies to the record (plain
    CBOR data, the kind's schema, peer ids, the size), so nothing is written that fails them; the
    record is not decoded again (that doubled the cost of an append)."""
    plain = dict(data)
    body = {"v": VERSION, "seq": seq, "prev": prev, "t": t_ms, "kind": kind, "peer": peer, "data": plain}
    try:
        codec.check_plain(body)
    except PeerError as exc:
        raise ChainError(f"malformed record: {exc}", seq=seq) from exc
    if not 0 <= seq < 2**63 or not 0 <= t_ms < 2**63 or len(prev) != HASH_LEN or len(peer) > PEER_ID_LEN:
        raise ChainError("malformed record: seq, t, prev or peer out of range", seq=seq)
    _check_content(kind, peer, plain, seq)
    raw = envelope.seal(DOMAIN, codec.encode(body), key)
    if len(raw) > MAX_RECORD:
        raise ChainError(f"malformed record: {len(raw)} bytes exceeds the limit of {MAX_RECORD}", seq=seq)
    return Entry(seq=seq, prev=prev, t_ms=t_ms, kind=kind, peer=peer, data=plain, raw=raw,
                 hash=record_hash(raw))


def genesis(key: SigningKey, t_ms: int) -> Entry:
    owner = peer_id_from_public_key(bytes(key.verify_key))
    return make_entry(key, seq=0, prev=ZERO_HASH, t_ms=t_ms, kind="genesis", data={"owner": owner})


def decode_record(raw: object, *, seq_hint: int = -1) -> Entry:
    """Parse a record's structure and schema (not its signature or its place in a chain)."""
    return _decode(raw, seq_hint)[0]


def _decode(raw: object, seq_hint: int) -> tuple[Entry, envelope.Envelope]:
    try:
        env = envelope.unwrap(raw, max_size=MAX_RECORD)
        f = codec.Fields(codec.decode(env.body, max_size=MAX_RECORD), "ledger-entry")
        if f.uint("v", maximum=255) != VERSION:
            raise ChainError("unsupported version", seq=seq_hint)
        seq = f.uint("seq", maximum=2**63 - 1)
        kind = f.text("kind", max_len=32)
        peer = f.blob("peer", max_len=PEER_ID_LEN)
        data = dict(f.require_sub("data").items())
        _check_content(kind, peer, data, seq)
        record = bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else b""
        entry = Entry(seq=seq, prev=f.blob("prev", max_len=HASH_LEN, exact=True), t_ms=f.uint("t", maximum=2**63 - 1),
                      kind=kind, peer=peer, data=data, raw=record, hash=record_hash(record))
    except ChainError:
        raise
    except PeerError as exc:
        raise ChainError(f"malformed record: {exc}", seq=seq_hint) from exc
    return entry, env


def _check_content(kind: str, peer: bytes, data: dict[str, Any], seq: int) -> None:
    """What a record holds, as a verifier and the maker of a new entry both check it."""
    if kind not in SCHEMAS:
        raise ChainError(f"unknown kind {kind!r}", seq=seq)
    if peer:
        _check_peer(peer, seq)
    _check_schema(kind, data, seq)


def _check_peer(value: bytes, seq: int) -> None:
    try:
        public_key_from_peer_id(value)
    except PeerError as exc:
        raise ChainError(f"not an ed25519 peer id: {exc}", seq=seq) from exc


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "text": lambda v: isinstance(v, str) and len(v) <= MAX_TEXT,
    "bytes": lambda v: isinstance(v, bytes),
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "list": lambda v: isinstance(v, list) and len(v) <= MAX_EVIDENCE,
    "peer": lambda v: isinstance(v, bytes) and len(v) == PEER_ID_LEN,
}


def _check_schema(kind: str, data: dict[str, Any], seq: int) -> None:
    for name, typ in SCHEMAS[kind].items():
        value = data.get(name)
        if not _TYPE_CHECKS[typ](value):
            raise ChainError(f"{kind}.data.{name}: expected {typ}", seq=seq)
        if typ == "peer" and isinstance(value, bytes):
            _check_peer(value, seq)


class ChainVerifier:
    """Checks records one by one: structure, sequence, link, time order and signature.

    ``owner`` (a peer id) is the expected signer; when None it is taken from the genesis entry.
    """

    def __init__(self, owner: bytes | None = None) -> None:
        self.owner = owner
        self._key: bytes | None = public_key_from_peer_id(owner) if owner else None
        self.count = 0
        self.head = ZERO_HASH
        self.last_t = 0

    def feed(self, raw: bytes) -> Entry:
        seq = self.count
        entry, env = _decode(raw, seq)
        if entry.seq != seq:
            raise ChainError(f"sequence number {entry.seq} where {seq} was due", seq=seq)
        if entry.prev != self.head:
            raise ChainError("does not link to the previous entry's hash", seq=seq)
        if seq == 0:
            if entry.kind != "genesis":
                raise ChainError("the first entry must be the genesis", seq=0)
            owner = entry.data["owner"]
            if self.owner is not None and owner != self.owner:
                raise ChainError("genesis names another owner", seq=0)
            self.owner, self._key = owner, public_key_from_peer_id(owner)
        elif entry.kind == "genesis":
            raise ChainError("a second genesis", seq=seq)
        if entry.t_ms < self.last_t:
            raise ChainError("time runs backwards", seq=seq)
        assert self._key is not None
        try:
            envelope.verify(DOMAIN, env, self._key)
        except PeerError as exc:
            raise ChainError("signature does not verify", seq=seq) from exc
        self.count, self.head, self.last_t = seq + 1, entry.hash, entry.t_ms
        return entry


def verify_chain(records: Iterable[bytes], owner: bytes | None = None) -> ChainVerifier:
    """Verify a whole chain; returns the verifier (owner, count, head) or raises ChainError."""
    v = ChainVerifier(owner)
    for raw in records:
        v.feed(raw)
    if v.count == 0:
        raise ChainError("empty ledger: no genesis entry")
    return v
