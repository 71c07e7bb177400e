"""Sealed payloads: readable only by the peer they are sealed to.

A payload is sealed to a peer under the peer's identity key converted from ed25519 to X25519
(``crypto_sign_ed25519_pk_to_curve25519``), so no key exchange is needed: the peer id is enough. A
fresh random 32-byte key travels in a NaCl sealed box (X25519 + XSalsa20-Poly1305, 80 bytes) and the
payload under it with AEGIS-256, which runs at twice XSalsa20-Poly1305's speed here (a 16 MiB result
is sealed or opened in about 10 ms instead of 20-23). In jobs, the requester seals the private
parameters (the seed, from which the inputs are generated) to the awarded provider, and the provider
seals the output to the requester; other bidders, relays and caches see ciphertext only.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from nacl.bindings import (
    crypto_aead_aegis256_decrypt,
    crypto_aead_aegis256_encrypt,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey

from p2pnode.errors import PeerError
from p2pnode.wire.fresh_bytes import fresh_bytes
from p2pnode.wire.peer_id import public_key_from_peer_id

try:  # libsodium through PyNaCl's own cffi module, to read any buffer and write where we choose
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - PyNaCl without its cffi module: its public binding
    _ffi = _lib = None
_ABYTES = 32  # AEGIS-256's tag
LOCK_OVERHEAD = _ABYTES  # an input blob is its plaintext's length and this


class SealError(PeerError):
    """A sealed payload did not open with our key (not for us, or tampered with)."""

    code = "bad_seal"


SEALED_KEY_BYTES = 32 + 48  # the payload key in a sealed box: ephemeral public key, MAC, key
_SEAL_NONCE_LABEL = b"p2pnode/sealed-payload-nonce/1"


def seal(data: bytes, recipient: bytes) -> bytes:
    """``sealed box(key) ‖ AEGIS-256(data)`` under a fresh random ``key``, readable by ``recipient`` alone."""
    pk = crypto_sign_ed25519_pk_to_curve25519(public_key_from_peer_id(recipient))
    key = os.urandom(32)
    boxed = bytes(SealedBox(PublicKey(pk)).encrypt(key))
    return _encrypt(data, _nonce(key, _SEAL_NONCE_LABEL), key, prefix=boxed)


def unseal(data: bytes, key: SigningKey) -> bytes:
    sk = crypto_sign_ed25519_sk_to_curve25519(bytes(key) + bytes(key.verify_key))
    try:
        payload_key = bytes(SealedBox(PrivateKey(sk)).decrypt(data[:SEALED_KEY_BYTES]))
        return _decrypt(memoryview(data)[SEALED_KEY_BYTES:], _nonce(payload_key, _SEAL_NONCE_LABEL), payload_key)
    except (CryptoError, ValueError, TypeError) as exc:
        raise SealError("sealed payload does not open with this node's key") from exc


# Input blobs: convergent encryption under a per-requester secret. The same data from the same
# requester always encrypts to the same bytes, hence the same blob id, so a provider that holds it
# never fetches it again; without the key (sealed to the awarded provider) the blob is unreadable.
# AEGIS-256 (libsodium): an AEAD that runs at memory speed on CPUs with AES instructions, twice
# XSalsa20-Poly1305 here, and one pass, since the nonce is derived from the key (which is unique
# to the content, so a nonce is never reused for different data).

_NONCE_LABEL = b"p2pnode/input-blob-nonce/1"


def blob_secret(identity_seed: bytes) -> bytes:
    return hmac.new(identity_seed, b"p2pnode/input-blob/1", hashlib.sha256).digest()


def blob_key(data: bytes | memoryview, secret: bytes) -> bytes:
    return blob_key_for(hashlib.sha256(data).digest(), secret)


def blob_key_for(digest: bytes, secret: bytes) -> bytes:
    """:func:`blob_key` of the data whose SHA-256 is ``digest`` (known already: not hashed again)."""
    return hmac.new(secret, digest, hashlib.sha256).digest()


def _nonce(key: bytes, label: bytes = _NONCE_LABEL) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()  # 32 bytes: AEGIS-256's nonce


def lock(data: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """Encrypt ``data`` deterministically; return (key, ciphertext)."""
    key = blob_key(data, secret)
    return key, lock_with(data, key)


def lock_with(data: bytes | memoryview, key: bytes) -> bytes:
    """Encrypt ``data`` (any contiguous buffer: an array's memory as it is) under its ``blob_key``
    (when the caller already has the key)."""
    return _encrypt(data, _nonce(key), key)


def unlock(ciphertext: bytes | memoryview, key: bytes) -> bytes:
    try:
        return _decrypt(ciphertext, _nonce(key), key)
    except (CryptoError, ValueError, TypeError) as exc:
        raise SealError("input blob does not open with the key it was sent with") from exc


def unlock_into(ciphertext: bytes | memoryview, key: bytes, out: memoryview) -> None:
    """:func:`unlock` straight into ``out``, a writable buffer of the plaintext's length (a worker's
    spool file, mapped): one pass, no plaintext object of its own. ``SealError`` when it does not
    open, or is not ``out``'s length."""
    try:
        if _lib is None:  # pragma: no cover
            plain = crypto_aead_aegis256_decrypt(bytes(ciphertext), None, _nonce(key), key)
            if len(plain) != out.nbytes:
                raise ValueError("plaintext length")
            out[:] = plain
            return
        _decrypt_into(ciphertext, _nonce(key), key, out)
    except (CryptoError, ValueError, TypeError) as exc:
        raise SealError("input blob does not open with the key it was sent with, "
                        "or is not the size its job says") from exc


# AEGIS-256 in one pass over fresh memory. PyNaCl's binding takes bytes only, decrypts into memory
# it zeroes first and then copies the result into a new bytes object (holding the GIL for the
# copy): three passes over fresh memory, each costing its page faults, where one will do. A dataset
# job's input blobs cross this twice per shard. Here libsodium reads the caller's buffer as it is
# and writes straight into the bytes returned, without the GIL.

def _encrypt(data: bytes | memoryview, nonce: bytes, key: bytes, *, prefix: bytes = b"") -> bytes:
    """``prefix ‖ AEGIS-256(data)``, written once."""
    if _lib is None:  # pragma: no cover
        return prefix + crypto_aead_aegis256_encrypt(bytes(data), None, nonce, key)
    src = _ffi.from_buffer(data)
    view, result = fresh_bytes(len(prefix) + len(src) + _ABYTES)
    view[:len(prefix)] = prefix
    written = _ffi.new("unsigned long long *")
    out = _ffi.from_buffer(view[len(prefix):], require_writable=True)
    if _lib.crypto_aead_aegis256_encrypt(out, written, src, len(src), _ffi.NULL, 0, _ffi.NULL, nonce, key) != 0 \
            or written[0] != len(src) + _ABYTES:
        raise CryptoError("encryption failed")
    return result()


def _decrypt(ciphertext: bytes | memoryview, nonce: bytes, key: bytes) -> bytes:
    """The plaintext of ``AEGIS-256(ciphertext)``, or ``CryptoError``."""
    if _lib is None:  # pragma: no cover
        return crypto_aead_aegis256_decrypt(bytes(ciphertext), None, nonce, key)
    view, result = fresh_bytes(max(0, len(ciphertext) - _ABYTES))
    _decrypt_into(ciphertext, nonce, key, view)
    return result()


def _decrypt_into(ciphertext: bytes | memoryview, nonce: bytes, key: bytes, view: memoryview) -> None:
    """Open ``AEGIS-256(ciphertext)`` into ``view`` (as long as the plaintext), or ``CryptoError``
    (and ``view`` zeroed: libsodium releases no plaintext of a forged tag)."""
    src = _ffi.from_buffer(ciphertext)
    if len(src) < _ABYTES or view.nbytes != len(src) - _ABYTES:
        raise CryptoError("ciphertext shorter than its tag, or not the plaintext's length")
    got = _ffi.new("unsigned long long *")
    out = _ffi.from_buffer(view, require_writable=True) if view.nbytes else _ffi.new("unsigned char[]", 1)
    if _lib.crypto_aead_aegis256_decrypt(out, got, _ffi.NULL, src, len(src), _ffi.NULL, 0, nonce, key) != 0 \
            or got[0] != len(src) - _ABYTES:
        raise CryptoError("decryption failed")
