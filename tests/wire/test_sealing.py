from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.wire import sealing
from p2pnode.wire.peer_id import peer_id_from_public_key

ALICE, BOB, EVE = (SigningKey(bytes([i]) * 32) for i in (1, 2, 3))


def pid(key: SigningKey) -> bytes:
    return peer_id_from_public_key(bytes(key.verify_key))


@given(st.binary(max_size=2048))
def test_only_the_recipient_opens_a_sealed_payload(data: bytes) -> None:
    box = sealing.seal(data, pid(BOB))
    assert sealing.unseal(box, BOB) == data
    with pytest.raises(sealing.SealError):
        sealing.unseal(box, EVE)
    with pytest.raises(sealing.SealError):
        sealing.unseal(box, ALICE)  # not even the sender


@pytest.mark.parametrize("where", [0, sealing.SEALED_KEY_BYTES - 1, sealing.SEALED_KEY_BYTES, -1])
def test_tampering_is_detected(where: int) -> None:
    """In the boxed payload key or in the payload itself."""
    box = bytearray(sealing.seal(b"seed=42", pid(BOB)))
    box[where] ^= 1
    with pytest.raises(sealing.SealError):
        sealing.unseal(bytes(box), BOB)


@pytest.mark.parametrize("size", [0, 1, sealing.SEALED_KEY_BYTES - 1, sealing.SEALED_KEY_BYTES,
                                  sealing.SEALED_KEY_BYTES + 31])
def test_a_truncated_payload_is_a_seal_error(size: int) -> None:
    box = sealing.seal(b"seed=42", pid(BOB))
    with pytest.raises(sealing.SealError):
        sealing.unseal(box[:size], BOB)


def test_sealing_twice_differs() -> None:  # ephemeral keys: equal plaintexts are not linkable
    assert sealing.seal(b"x", pid(BOB)) != sealing.seal(b"x", pid(BOB))


@given(st.binary(max_size=3 * 4096), st.binary(min_size=32, max_size=32))
def test_input_blobs_are_libsodiums_aegis_256_from_any_buffer(data: bytes, secret: bytes) -> None:
    """Written in one pass into fresh memory, they are the bytes PyNaCl's own binding gives (what
    any other node reads), and open from bytes or a view alike."""
    import numpy as np
    from nacl.bindings import crypto_aead_aegis256_encrypt

    key, locked = sealing.lock(data, secret)
    assert locked == crypto_aead_aegis256_encrypt(data, None, sealing._nonce(key), key)
    assert sealing.lock_with(memoryview(np.frombuffer(data, dtype="u1")), key) == locked
    assert sealing.unlock(locked, key) == data == sealing.unlock(memoryview(locked), key)
    for bad in (locked[:-1] + bytes([locked[-1] ^ 1]), locked[:31], os.urandom(len(locked))):
        with pytest.raises(sealing.SealError):
            sealing.unlock(bad, key)


def test_a_large_sealed_payload_opens_whole() -> None:
    data = os.urandom(3 << 20)
    assert sealing.unseal(sealing.seal(data, pid(BOB)), BOB) == data


@given(st.binary(max_size=3 * 4096), st.binary(min_size=32, max_size=32))
def test_an_input_blob_opens_straight_into_a_buffer_of_its_length(data: bytes, secret: bytes) -> None:
    """What a provider does with a fetched blob: the plaintext lands in the worker's spool file. A
    forged blob, or one of another length, is a ``SealError``, and no plaintext is left behind."""
    key, locked = sealing.lock(data, secret)
    out = bytearray(len(data))
    sealing.unlock_into(locked, key, memoryview(out))
    assert bytes(out) == data
    for wrong in (len(data) + 1, max(0, len(data) - 1)):
        if wrong != len(data):
            with pytest.raises(sealing.SealError):
                sealing.unlock_into(locked, key, memoryview(bytearray(wrong)))
    forged = bytearray(b"\xaa" * len(data))
    with pytest.raises(sealing.SealError):
        sealing.unlock_into(locked[:-1] + bytes([locked[-1] ^ 1]), key, memoryview(forged))
    assert not any(forged)
