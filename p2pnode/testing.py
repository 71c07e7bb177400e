"""Hypothesis strategies for every wire message, for our tests and for researchers' fuzzers.

``capacity_ads(key)`` draws valid ads signed by ``key``; ``ad_bodies()`` draws the CBOR maps;
combine them with byte-level mutations to fuzz decoders.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.wire import capacity_ad as ca
from p2pnode.wire.peer_id import peer_id_from_public_key

_short = st.text(max_size=12)
_u63 = st.integers(min_value=0, max_value=ca.MAX_U63)


@st.composite
def gpus(draw: Any, index: int = 0) -> ca.GpuInfo:
    total = draw(st.integers(min_value=0, max_value=2**40))
    return ca.GpuInfo(
        index=index,
        name=draw(st.text(max_size=16)),
        memory_total=total,
        memory_free=draw(st.integers(min_value=0, max_value=total)),
        utilization=draw(st.integers(min_value=0, max_value=100)),
        compute_capability=draw(st.sampled_from(["7.0", "8.0", "8.6", "9.0", ""])),
        driver=draw(st.text(max_size=8)),
    )


@st.composite
def cpus(draw: Any) -> ca.CpuInfo:
    total = draw(st.integers(min_value=0, max_value=2**42))
    return ca.CpuInfo(
        model=draw(st.text(max_size=16)),
        cores=draw(st.integers(min_value=1, max_value=512)),
        memory_total=total,
        memory_free=draw(st.integers(min_value=0, max_value=total)),
    )


offers = st.builds(
    ca.Offer,
    workload=st.sampled_from(["matmul", "infer", "train_step"]),
    backend=st.sampled_from(["cuda", "cupy", "numpy"]),
    price=st.integers(min_value=0, max_value=ca.MAX_PRICE),
    unit=st.just("gflop"),
)


@st.composite
def capacity_ads(draw: Any, key: SigningKey | None = None, now_ms: int | None = None) -> ca.CapacityAd:
    key = key or SigningKey(draw(st.binary(min_size=32, max_size=32)))
    issued = now_ms if now_ms is not None else draw(st.integers(min_value=0, max_value=2**45))
    n_gpus = draw(st.integers(min_value=0, max_value=4))
    return ca.CapacityAd(
        peer_id=peer_id_from_public_key(bytes(key.verify_key)),
        seq=draw(_u63),
        issued_at_ms=issued,
        expires_at_ms=issued + draw(st.integers(min_value=1, max_value=300_000)),
        cpu=draw(cpus()),
        gpus=tuple(draw(gpus(i)) for i in range(n_gpus)),
        offers=tuple(draw(st.lists(offers, max_size=3))),
        addrs=tuple(draw(st.lists(st.just("/ip4/127.0.0.1/tcp/4001"), max_size=2))),
        speed=tuple(sorted(draw(st.dictionaries(
            st.sampled_from(["matmul_f32_numpy", "matmul_f32_cuda", "matmul_bf16_cuda"]),
            st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=3)).items())),
        load=draw(st.floats(min_value=0.0, max_value=1.0, allow_nan=False)),
    )


def sign(ad: ca.CapacityAd, key: SigningKey) -> bytes:
    return ca.encode_ad(ad, key)


# ledger ---------------------------------------------------------------------------------------

_peer_keys = st.binary(min_size=32, max_size=32).map(lambda s: peer_id_from_public_key(bytes(SigningKey(s).verify_key)))
_job_ids = st.binary(min_size=16, max_size=16)


def ledger_data() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(kind, data) pairs that satisfy each entry kind's schema."""
    text = st.text(max_size=40)
    return st.one_of(
        st.tuples(st.just("receipt"), st.fixed_dictionaries({
            "role": st.sampled_from(["requester", "provider"]), "job": _job_ids, "receipt": st.binary(max_size=64),
            "workload": st.sampled_from(["matmul", "infer", "train_step"]), "accepted": st.booleans()})),
        st.tuples(st.just("verification"), st.fixed_dictionaries({
            "job": _job_ids, "method": st.sampled_from(["digest", "freivalds", "rerun", "calibration"]),
            "passed": st.booleans(), "detail": text})),
        st.tuples(st.just("failure"), st.fixed_dictionaries({"job": _job_ids, "reason": text})),
        st.tuples(st.just("penalty"), st.fixed_dictionaries({"code": text})),
        st.tuples(st.just("credit"), st.fixed_dictionaries({"job": _job_ids, "amount": st.integers(-10**9, 10**9)})),
        st.tuples(st.just("dispute"), st.fixed_dictionaries({
            "job": _job_ids, "checker": _peer_keys, "referee": _peer_keys,
            "wrong": st.sampled_from(["provider", "checker", "inconclusive"]),
            "results": st.lists(st.binary(max_size=32), max_size=3)})),
    )


@st.composite
def ledger_chains(draw: Any, max_entries: int = 12) -> list[bytes]:
    """A valid chain of signed ledger records (genesis first) by a drawn key."""
    from p2pnode.ledger.entry import genesis, make_entry

    key = SigningKey(draw(st.binary(min_size=32, max_size=32)))
    t = draw(st.integers(0, 2**40))
    g = genesis(key, t)
    records, prev = [g.raw], g.hash
    for seq in range(1, draw(st.integers(0, max_entries)) + 1):
        kind, data = draw(ledger_data())
        t += draw(st.integers(0, 10**6))
        e = make_entry(key, seq=seq, prev=prev, t_ms=t, kind=kind, peer=draw(_peer_keys), data=data)
        records.append(e.raw)
        prev = e.hash
    return records
