"""Messages of the job protocol ``/p2pnode/job/1`` (see specs/job-protocol.md).

Framing: each message is an unsigned LEB128 length, then one restricted-CBOR map of at most
``MAX_MESSAGE`` bytes. Every map has ``t`` (type), ``v`` (1) and ``job`` (16 bytes).
``award``, ``result`` and ``receipt`` are signed by their author: their map carries ``env``, a signed
envelope (specs/cbor.md) whose body repeats the job id and names both peers and the requester's
nonce, so none can be replayed into another job or forged by a relay.

:func:`decode` turns bytes from a peer into a message object or raises ``CodecError`` /
``SignatureError``; nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from nacl.signing import SigningKey

from p2pnode.errors import CodecError
from p2pnode.wire import codec, envelope
from p2pnode.wire.peer_id import PEER_ID_LEN, public_key_from_peer_id

VERSION = 1
HEARTBEAT_S = 2.0  # a running job's provider sends progress at least this often
FIRST_MESSAGE_TIMEOUT_S = 10.0  # a job stream must open with its request for bids within this
FRAME_TIMEOUT_S = 10.0  # a message, once begun, must arrive whole within this
MAX_MESSAGE = 64 * 1024
MAX_INLINE_OUTPUT = 48 * 1024
MAX_PARAMS_BYTES = 4096
JOB_ID_LEN = 16
NONCE_LEN = 16
DIGEST_LEN = 32
MAX_U63 = 2**63 - 1
MAX_TEXT = 64
MAX_REASON = 256
DOMAINS = {
    "award": b"p2pnode/job-award/1\n",
    "result": b"p2pnode/job-result/1\n",
    "receipt": b"p2pnode/job-receipt/1\n",
}
DECLINE_CODES = ("unknown_workload", "bad_params", "busy", "price", "deadline", "no_capacity",
                 "backend_unavailable", "not_providing")
VERIFY_POLICIES = ("none", "freivalds", "rerun", "rows", "tokens", "steps")
# Parameters that never appear in a request for bids: they travel sealed to the awarded provider.
PRIVATE_PARAMS = ("seed", "keys")


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    job: bytes

    def fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self) -> bytes:
        return codec.encode({"t": self.TYPE, "v": VERSION, "job": self.job, **self.fields()})


@dataclass(frozen=True)
class RequestForBids(Message):
    TYPE: ClassVar[str] = "rfb"
    workload: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    requester: bytes = b""
    nonce: bytes = b""
    max_price: int = 0  # micro-credits for the whole job
    deadline_ms: int = 0  # Unix ms by which the result must be in
    min_memory: int = 0  # bytes of GPU memory (or RAM for numpy) the job needs at least
    backend: str = ""  # "" = any
    verify: str = "none"

    def fields(self) -> dict[str, Any]:
        return {"wl": self.workload, "params": self.params, "requester": self.requester, "nonce": self.nonce,
                "max_price": self.max_price, "deadline": self.deadline_ms, "min_mem": self.min_memory,
                "backend": self.backend, "verify": self.verify}


@dataclass(frozen=True)
class Bid(Message):
    TYPE: ClassVar[str] = "bid"
    price: int = 0
    estimate_ms: int = 0
    expires_ms: int = 0
    backend: str = ""

    def fields(self) -> dict[str, Any]:
        return {"price": self.price, "est_ms": self.estimate_ms, "expires": self.expires_ms, "backend": self.backend}


@dataclass(frozen=True)
class Decline(Message):
    TYPE: ClassVar[str] = "decline"
    code: str = "busy"
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}


@dataclass(frozen=True)
class Progress(Message):
    TYPE: ClassVar[str] = "progress"
    fraction: float = 0.0

    def fields(self) -> dict[str, Any]:
        return {"frac": float(self.fraction)}


@dataclass(frozen=True)
class Cancel(Message):
    TYPE: ClassVar[str] = "cancel"
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True)
class Failed(Message):
    """The provider could not run the job (executor failure): a terminal answer, not a result."""

    TYPE: ClassVar[str] = "failed"
    code: str = "kernel_error"
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}


@dataclass(frozen=True)
class Inputs(Message):
    """Inputs follow the award: the private parameters (the seed), sealed to the awarded
    provider, and references to input blobs."""

    TYPE: ClassVar[str] = "inputs"
    blobs: tuple[bytes, ...] = ()
    sealed: bytes = b""

    def fields(self) -> dict[str, Any]:
        return {"blobs": list(self.blobs), "sealed": self.sealed}


@dataclass(frozen=True)
class Signed(Message):
    """A message whose content is a signed body: ``award``, ``result`` or ``receipt``."""

    body: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""  # the envelope, as signed

    def fields(self) -> dict[str, Any]:
        return {"env": self.raw}

    @property
    def signer(self) -> bytes:
        signer: bytes = self.body["provider"] if self.TYPE == "result" else self.body["requester"]
        return signer


@dataclass(frozen=True)
class Award(Signed):
    TYPE: ClassVar[str] = "award"


@dataclass(frozen=True)
class Result(Signed):
    TYPE: ClassVar[str] = "result"


@dataclass(frozen=True)
class Receipt(Signed):
    TYPE: ClassVar[str] = "receipt"


def _signed(cls: type[Signed], job: bytes, body: dict[str, Any], key: SigningKey) -> Signed:
    full = {"job": job, **body}
    raw = envelope.seal(DOMAINS[cls.TYPE], codec.encode(full), key)
    return cls(job=job, body=full, raw=raw)


def make_award(job: bytes, key: SigningKey, *, requester: bytes, provider: bytes, nonce: bytes,
               price: int, deadline_ms: int) -> Award:
    return _signed(Award, job, {"requester": requester, "provider": provider, "nonce": nonce,
                                "price": price, "deadline": deadline_ms}, key)  # type: ignore[return-value]


def make_result(job: bytes, key: SigningKey, *, requester: bytes, provider: bytes, nonce: bytes,
                digest: bytes, output: bytes, kernel_ms: int, backend: str, blob: bytes = b"",
                root: bytes = b"") -> Result:
    """``output`` inline, or ``blob``: the id of the (sealed) output on ``/p2pnode/blob/1``.
    ``root``: for row jobs, the Merkle root over the output's rows (``wire/merkle.py``), the
    provider's commitment before any row is checked."""
    body = {"requester": requester, "provider": provider, "nonce": nonce, "digest": digest, "output": output,
            "kernel_ms": kernel_ms, "backend": backend, "blob": blob}
    if root:  # signed only when there is one, so results of other workloads stay as they were
        body["root"] = root
    result = _signed(Result, job, body, key)
    result.body.setdefault("root", b"")  # as decode gives it
    return result  # type: ignore[return-value]


def make_receipt(job: bytes, key: SigningKey, *, requester: bytes, provider: bytes, nonce: bytes,
                 accepted: bool, outcome: str, paid: int) -> Receipt:
    """``outcome`` is cut to ``MAX_TEXT`` bytes of UTF-8 (the receiver refuses longer)."""
    short = outcome.encode()[:MAX_TEXT].decode(errors="ignore")
    return _signed(Receipt, job, {"requester": requester, "provider": provider, "nonce": nonce,
                                  "accepted": accepted, "outcome": short, "paid": paid}, key)  # type: ignore[return-value]


# decoding -------------------------------------------------------------------------------------

def _peer(f: codec.Fields, key: str) -> bytes:
    value = f.blob(key, max_len=PEER_ID_LEN, exact=True)
    public_key_from_peer_id(value)  # must be an ed25519 id
    return value


def _signed_body(kind: str, f: codec.Fields, job: bytes) -> tuple[dict[str, Any], bytes]:
    raw = f.blob("env", max_len=MAX_MESSAGE)
    env = envelope.unwrap(raw, max_size=MAX_MESSAGE)
    body_f = codec.Fields(codec.decode(env.body, max_size=MAX_MESSAGE), f"{kind}.env")
    if body_f.blob("job", max_len=JOB_ID_LEN, exact=True) != job:
        raise CodecError(f"{kind}: signed job id differs from the message's")
    body: dict[str, Any] = {"job": job, "requester": _peer(body_f, "requester"),
                            "provider": _peer(body_f, "provider"),
                            "nonce": body_f.blob("nonce", max_len=NONCE_LEN, exact=True)}
    signer = body["provider"] if kind == "result" else body["requester"]
    envelope.verify(DOMAINS[kind], env, public_key_from_peer_id(signer))
    if kind == "award":
        body["price"] = body_f.uint("price", maximum=MAX_U63)
        body["deadline"] = body_f.uint("deadline", maximum=MAX_U63)
    elif kind == "result":
        body["digest"] = body_f.blob("digest", max_len=DIGEST_LEN, exact=True)
        body["output"] = body_f.blob("output", max_len=MAX_INLINE_OUTPUT)
        body["kernel_ms"] = body_f.uint("kernel_ms", maximum=MAX_U63)
        body["backend"] = body_f.text("backend", max_len=MAX_TEXT)
        body["blob"] = body_f.blob("blob", max_len=DIGEST_LEN) if body_f.has("blob") else b""
        if body["blob"] and len(body["blob"]) != DIGEST_LEN:
            raise CodecError("result.blob: expected a 32-byte blob id")
        body["root"] = body_f.blob("root", max_len=DIGEST_LEN, exact=True) if body_f.has("root") else b""
    else:
        body["accepted"] = body_f.boolean("accepted")
        body["outcome"] = body_f.text("outcome", max_len=MAX_TEXT)
        body["paid"] = body_f.uint("paid", maximum=MAX_U63)
    return body, raw


def decode(data: object) -> Message:
    f = codec.Fields(codec.decode(data, max_size=MAX_MESSAGE), "job-message")
    kind = f.text("t", max_len=16)
    if f.uint("v", maximum=255) != VERSION:
        raise CodecError("job-message.v: unsupported version")
    job = f.blob("job", max_len=JOB_ID_LEN, exact=True)
    if kind == "rfb":
        params = f.require_sub("params")
        if len(codec.encode(dict(params.items()))) > MAX_PARAMS_BYTES:
            raise CodecError("rfb.params: too large")
        verify = f.text("verify", max_len=16)
        if verify not in VERIFY_POLICIES:
            raise CodecError(f"rfb.verify: {verify!r} is not one of {VERIFY_POLICIES}")
        return RequestForBids(job, f.text("wl", max_len=32), dict(params.items()), _peer(f, "requester"),
                              f.blob("nonce", max_len=NONCE_LEN, exact=True), f.uint("max_price", maximum=MAX_U63),
                              f.uint("deadline", maximum=MAX_U63), f.uint("min_mem", maximum=MAX_U63),
                              f.text("backend", max_len=MAX_TEXT), verify)
    if kind == "bid":
        return Bid(job, f.uint("price", maximum=MAX_U63), f.uint("est_ms", maximum=MAX_U63),
                   f.uint("expires", maximum=MAX_U63), f.text("backend", max_len=MAX_TEXT))
    if kind == "decline":
        code = f.text("code", max_len=MAX_TEXT)
        if code not in DECLINE_CODES:
            raise CodecError(f"decline.code: unknown code {code!r}")
        return Decline(job, code, f.text("reason", max_len=MAX_REASON))
    if kind == "progress":
        return Progress(job, f.number("frac", minimum=0.0, maximum=1.0))
    if kind == "cancel":
        return Cancel(job, f.text("reason", max_len=MAX_REASON))
    if kind == "failed":
        return Failed(job, f.text("code", max_len=MAX_TEXT), f.text("reason", max_len=MAX_REASON))
    if kind == "inputs":
        blobs = f.array("blobs", max_items=64)
        if not all(isinstance(b, bytes) and len(b) == DIGEST_LEN for b in blobs):
            raise CodecError("inputs.blobs: expected 32-byte digests")
        sealed = f.blob("sealed", max_len=MAX_PARAMS_BYTES + 64) if f.has("sealed") else b""
        return Inputs(job, tuple(blobs), sealed)
    if kind in DOMAINS:
        body, raw = _signed_body(kind, f, job)
        cls = {"award": Award, "result": Result, "receipt": Receipt}[kind]
        return cls(job=job, body=body, raw=raw)
    raise CodecError(f"job-message.t: unknown type {kind!r}")


def decode_signed(kind: str, raw: object) -> Signed:
    """A bare signed envelope of ``kind`` (award, result, receipt), as kept in evidence and ledgers:
    decoded and its signature verified."""
    env = envelope.unwrap(raw, max_size=MAX_MESSAGE)
    body = codec.Fields(codec.decode(env.body, max_size=MAX_MESSAGE), f"{kind}.env")
    job = body.blob("job", max_len=JOB_ID_LEN, exact=True)
    full, raw_env = _signed_body(kind, codec.Fields({"env": raw}, kind), job)
    cls = {"award": Award, "result": Result, "receipt": Receipt}[kind]
    return cls(job=job, body=full, raw=raw_env)
