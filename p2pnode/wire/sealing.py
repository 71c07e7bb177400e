"""Sealed payloads: readable only by the peer they are sealed to.

A payload is sealed to a peer with a NaCl sealed box (X25519 + XSalsa20-Poly1305) under the peer's
identity key converted from ed25519 to X25519 (``crypto_sign_ed25519_pk_to_curve25519``), so no key
exchange is needed: the peer id is enough. In jobs, the requester seals the private parameters (the
seed, from which the inputs are generated) to the awarded provider, and the provider seals the output
to the requester; other bidders, relays and caches see ciphertext only.
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519, crypto_sign_ed25519_sk_to_curve25519
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey

from p2pnode.errors import PeerError
from p2pnode.wire.peer_id import public_key_from_peer_id

OVERHEAD = SealedBox.NONCE_SIZE if hasattr(SealedBox, "NONCE_SIZE") else 48


class SealError(PeerError):
    """A sealed payload did not open with our key (not for us, or tampered with)."""

    code = "bad_seal"


def seal(data: bytes, recipient: bytes) -> bytes:
    pk = crypto_sign_ed25519_pk_to_curve25519(public_key_from_peer_id(recipient))
    return bytes(SealedBox(PublicKey(pk)).encrypt(data))


def unseal(data: bytes, key: SigningKey) -> bytes:
    sk = crypto_sign_ed25519_sk_to_curve25519(bytes(key) + bytes(key.verify_key))
    try:
        return bytes(SealedBox(PrivateKey(sk)).decrypt(data))
    except (CryptoError, ValueError, TypeError) as exc:
        raise SealError("sealed payload does not open with this node's key") from exc
