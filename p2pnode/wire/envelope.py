"""Signed envelopes: ``[body: bstr, sig: bstr .size 64]``.

The signature is ed25519 over ``domain || body`` where ``domain`` is a fixed ASCII tag per message
kind (e.g. ``b"p2pnode/capacity-ad/1\\n"``), so a signature made for one kind of message can never be
replayed as another. The body is signed as raw bytes, so no canonical re-encoding is needed to
verify: a second implementation checks the bytes it received.

The signer is named inside the body (its peer id); :func:`verify` is given the key read from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from p2pnode.errors import CodecError, SignatureError
from p2pnode.wire import codec

SIGNATURE_LEN = 64


@dataclass(frozen=True, slots=True)
class Envelope:
    body: bytes
    signature: bytes


def seal(domain: bytes, body: bytes, key: SigningKey) -> bytes:
    """Sign ``body`` under ``domain`` and wrap both in the envelope encoding."""
    signature = key.sign(domain + body).signature
    return codec.encode([body, signature])


def unwrap(data: object, *, max_size: int) -> Envelope:
    """Split envelope bytes into body and signature (no verification yet)."""
    value = codec.decode(data, max_size=max_size, max_depth=1)
    if not isinstance(value, list) or len(value) != 2:
        raise CodecError("envelope: expected [body, signature]")
    body, signature = value
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise CodecError("envelope: body and signature must be byte strings")
    if len(signature) != SIGNATURE_LEN:
        raise SignatureError(f"envelope: signature must be {SIGNATURE_LEN} bytes")
    return Envelope(body, signature)


def verify(domain: bytes, envelope: Envelope, public_key: bytes) -> None:
    """Raise ``SignatureError`` unless ``envelope`` was signed by ``public_key`` under ``domain``."""
    try:
        VerifyKey(public_key).verify(domain + envelope.body, envelope.signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise SignatureError("signature does not verify") from exc
