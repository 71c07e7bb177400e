"""The capacity ad: what a provider offers, signed by the provider.

Wire form (see ``specs/capacity-ad.md`` for the CDDL)::

    envelope = [body: bstr, sig: bstr]          ; sig = ed25519(DOMAIN || body)
    body     = CBOR map {v, peer, seq, iat, exp, addrs, cpu, gpus, offers, speed, load}

:func:`decode_ad` checks structure, bounds and the signature. It does *not* look at the clock or at
what was seen before: time and history checks are the capacity table's job
(:mod:`p2pnode.market.capacity_table`), which is given ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from p2pnode.errors import CodecError
from p2pnode.wire import codec, envelope
from p2pnode.wire.peer_id import PEER_ID_LEN, public_key_from_peer_id, to_base58

DOMAIN = b"p2pnode/capacity-ad/1\n"
VERSION = 1

# Limits. Every one is in specs/capacity-ad.md; change both together.
MAX_AD_BYTES = 4096
MAX_BODY_BYTES = MAX_AD_BYTES - 80
MAX_GPUS = 16
MAX_GPU_SLOTS = 64
MAX_OFFERS = 16
MAX_ADDRS = 8
MAX_SPEEDS = 16
MAX_NAME = 64
MAX_ADDR = 128
MAX_SHORT = 32
MAX_U63 = 2**63 - 1
MAX_PRICE = 10**12
MAX_GFLOPS = 1e9


def _memory(f: codec.Fields) -> tuple[int, int]:
    """``(mem_total, mem_free)`` in bytes; free can never exceed total."""
    total = f.uint("mem_total", maximum=MAX_U63)
    free = f.uint("mem_free", maximum=MAX_U63)
    if free > total:
        raise CodecError(f.where(".mem_free: exceeds mem_total"))
    return total, free


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    memory_total: int  # bytes
    memory_free: int  # bytes
    utilization: int  # percent, 0..100
    compute_capability: str  # "9.0"
    driver: str
    slots: int = 0  # jobs this GPU takes at once (0: not stated, as in ads before job slots)
    busy: int = 0  # of those slots, how many run a job now

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "idx": self.index,
            "name": self.name,
            "mem_total": self.memory_total,
            "mem_free": self.memory_free,
            "util": self.utilization,
            "cc": self.compute_capability,
            "driver": self.driver,
        }
        if self.slots:
            out["slots"], out["busy"] = self.slots, self.busy
        return out

    @classmethod
    def from_wire(cls, f: codec.Fields) -> GpuInfo:
        total, free = _memory(f)
        slots = f.uint("slots", maximum=MAX_GPU_SLOTS, optional=True)
        busy = f.uint("busy", maximum=MAX_GPU_SLOTS, optional=True)
        if busy > slots:
            raise CodecError(f.where(".busy: exceeds slots"))
        return cls(
            index=f.uint("idx", maximum=255),
            name=f.text("name", max_len=MAX_NAME),
            memory_total=total,
            memory_free=free,
            utilization=f.uint("util", maximum=100),
            compute_capability=f.text("cc", max_len=8),
            driver=f.text("driver", max_len=MAX_SHORT),
            slots=slots,
            busy=busy,
        )


@dataclass(frozen=True, slots=True)
class CpuInfo:
    model: str
    cores: int
    memory_total: int  # bytes
    memory_free: int  # bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cores": self.cores,
            "mem_total": self.memory_total,
            "mem_free": self.memory_free,
        }

    @classmethod
    def from_wire(cls, f: codec.Fields) -> CpuInfo:
        total, free = _memory(f)
        return cls(
            model=f.text("model", max_len=MAX_NAME),
            cores=f.uint("cores", maximum=65535),
            memory_total=total,
            memory_free=free,
        )


@dataclass(frozen=True, slots=True)
class Offer:
    """One workload offered, with its price per unit of work."""

    workload: str
    backend: str  # "cuda", "cupy", "numpy"
    price: int  # micro-credits per unit
    unit: str  # what one unit is, e.g. "gflop"

    def to_wire(self) -> dict[str, Any]:
        return {"wl": self.workload, "backend": self.backend, "price": self.price, "unit": self.unit}

    @classmethod
    def from_wire(cls, f: codec.Fields) -> Offer:
        return cls(
            workload=f.text("wl", max_len=MAX_SHORT),
            backend=f.text("backend", max_len=MAX_SHORT),
            price=f.uint("price", maximum=MAX_PRICE),
            unit=f.text("unit", max_len=MAX_SHORT),
        )


@dataclass(frozen=True, slots=True)
class CapacityAd:
    peer_id: bytes
    seq: int
    issued_at_ms: int
    expires_at_ms: int
    cpu: CpuInfo
    gpus: tuple[GpuInfo, ...] = ()
    offers: tuple[Offer, ...] = ()
    addrs: tuple[str, ...] = ()
    speed: tuple[tuple[str, float], ...] = ()  # (benchmark name, GFLOP/s), sorted by name
    load: float = 0.0  # 0..1, share of the executor in use

    @property
    def peer(self) -> str:
        return to_base58(self.peer_id)

    def body_map(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "peer": self.peer_id,
            "seq": self.seq,
            "iat": self.issued_at_ms,
            "exp": self.expires_at_ms,
            "addrs": list(self.addrs),
            "cpu": self.cpu.to_wire(),
            "gpus": [g.to_wire() for g in self.gpus],
            "offers": [o.to_wire() for o in self.offers],
            "speed": dict(self.speed),
            "load": float(self.load),
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view for the CLI and control API."""
        m = self.body_map()
        m["peer"] = self.peer
        return m


@dataclass(frozen=True, slots=True)
class SignedAd:
    """A decoded, signature-checked ad plus the exact bytes it came from."""

    ad: CapacityAd
    raw: bytes = field(repr=False)


def encode_ad(ad: CapacityAd, key: SigningKey) -> bytes:
    """Serialize and sign ``ad``; the key must be the one named by ``ad.peer_id``."""
    if public_key_from_peer_id(ad.peer_id) != bytes(key.verify_key):
        raise ValueError("ad.peer_id does not belong to the signing key")
    body = codec.encode(ad.body_map())
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"ad body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    return envelope.seal(DOMAIN, body, key)


def ad_peer(data: bytes) -> bytes:
    """The ad's provider, read without verifying anything: enough to find the ad a table holds
    for it, and so to skip a byte-identical copy of an ad already verified."""
    env = envelope.unwrap(data, max_size=MAX_AD_BYTES)
    return codec.Fields(codec.decode(env.body, max_size=MAX_BODY_BYTES), "ad").blob("peer", max_len=PEER_ID_LEN,
                                                                                   exact=True)


def decode_ad(data: object) -> SignedAd:
    """Decode and verify an ad; any failure is a ``CodecError``/``SignatureError`` (``PeerError``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    env = envelope.unwrap(raw, max_size=MAX_AD_BYTES)
    f = codec.Fields(codec.decode(env.body, max_size=MAX_BODY_BYTES), "ad")
    version = f.uint("v", maximum=255)
    if version != VERSION:
        raise CodecError(f"ad.v: unsupported version {version}")
    peer_id = f.blob("peer", max_len=PEER_ID_LEN, exact=True)
    public_key = public_key_from_peer_id(peer_id)
    # Verify before building anything else: a forged ad costs us one signature check, no more.
    envelope.verify(DOMAIN, env, public_key)
    issued = f.uint("iat", maximum=MAX_U63)
    expires = f.uint("exp", maximum=MAX_U63)
    if expires <= issued:
        raise CodecError("ad.exp: must be later than ad.iat")
    cpu = f.require_sub("cpu")
    addrs = tuple(_texts(f.array("addrs", max_items=MAX_ADDRS), "ad.addrs", MAX_ADDR))
    gpus = tuple(
        GpuInfo.from_wire(codec.Fields(g, f"ad.gpus[{i}]"))
        for i, g in enumerate(f.array("gpus", max_items=MAX_GPUS))
    )
    if len({g.index for g in gpus}) != len(gpus):
        raise CodecError("ad.gpus: duplicate GPU index")
    offers = tuple(
        Offer.from_wire(codec.Fields(o, f"ad.offers[{i}]"))
        for i, o in enumerate(f.array("offers", max_items=MAX_OFFERS))
    )
    speed = _speeds(f.require_sub("speed"))
    ad = CapacityAd(
        peer_id=peer_id,
        seq=f.uint("seq", maximum=MAX_U63),
        issued_at_ms=issued,
        expires_at_ms=expires,
        cpu=CpuInfo.from_wire(cpu),
        gpus=gpus,
        offers=offers,
        addrs=addrs,
        speed=speed,
        load=f.number("load", minimum=0.0, maximum=1.0),
    )
    return SignedAd(ad, raw)


def _texts(items: list[Any], where: str, max_len: int) -> list[str]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or len(item.encode("utf-8", "surrogatepass")) > max_len:
            raise CodecError(f"{where}[{i}]: expected text of at most {max_len} bytes")
        out.append(item)
    return out


def _speeds(f: codec.Fields) -> tuple[tuple[str, float], ...]:
    names = f.keys()
    if len(names) > MAX_SPEEDS:
        raise CodecError(f"ad.speed: more than {MAX_SPEEDS} entries")
    out = []
    for name in names:
        if not isinstance(name, str) or len(name.encode("utf-8", "surrogatepass")) > MAX_SHORT:
            raise CodecError("ad.speed: keys must be text of at most 32 bytes")
        out.append((name, f.number(name, minimum=0.0, maximum=MAX_GFLOPS)))
    return tuple(sorted(out))
