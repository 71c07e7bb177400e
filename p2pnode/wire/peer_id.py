"""libp2p peer ids for ed25519 keys, without importing libp2p (the pure core stays I/O-free).

An ed25519 peer id is the *identity* multihash of the protobuf-encoded public key::

    0x00 0x24 | 0x08 0x01 0x12 0x20 | <32-byte public key>
    identity  | KeyType=Ed25519, Data=32 bytes

so the key can be read straight out of the id: a receiver verifies a signature from the id alone.
Its base58btc text form starts with ``12D3KooW``.
"""

from __future__ import annotations

import base58

from p2pnode.errors import CodecError

_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
PEER_ID_LEN = len(_PREFIX) + 32


def peer_id_from_public_key(public_key: bytes) -> bytes:
    if len(public_key) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return _PREFIX + public_key


def public_key_from_peer_id(peer_id: bytes) -> bytes:
    """Return the ed25519 public key inside ``peer_id``; ``CodecError`` for any other id."""
    if len(peer_id) != PEER_ID_LEN or not peer_id.startswith(_PREFIX):
        raise CodecError("peer id is not an inline ed25519 identity multihash")
    return peer_id[len(_PREFIX) :]


def to_base58(peer_id: bytes) -> str:
    return base58.b58encode(peer_id).decode("ascii")


def from_base58(text: str) -> bytes:
    try:
        return base58.b58decode(text)
    except ValueError as exc:
        raise CodecError(f"not a base58 peer id: {text!r}") from exc
