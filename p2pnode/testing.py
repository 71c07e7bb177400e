"""Hypothesis strategies for every wire message, for our tests and for researchers' fuzzers.

* capacity gossip: ``capacity_ads(key)`` (valid ads), ``sign(ad, key)``;
* jobs: ``requests(key)``, ``job_messages(...)`` (every message type of ``/p2pnode/job/1``, the
  signed ones validly signed for the job they name), ``job_message_bytes(...)``;
* blobs: ``blob_messages()`` (every message of ``/p2pnode/blob/1``, as bytes);
* reports: ``reports(key)`` (opinions and cheat reports with evidence);
* ledgers: ``ledger_data()``, ``ledger_chains()``;
* adversaries: ``mutated(data)`` (bit flips, truncations, extensions, splices: what a hostile or
  broken peer sends instead), ``peer_behaviours`` (what a network or a peer does to a message).

Everything decoded from these must either decode or raise a ``PeerError``; ``tests/protocol/
test_stateful.py`` shows how several pure nodes are driven through arbitrary interleavings.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.wire import blob as wb
from p2pnode.wire import capacity_ad as ca
from p2pnode.wire import job as m
from p2pnode.wire import report as rpt
from p2pnode.wire.peer_id import peer_id_from_public_key, to_base58

_short = st.text(max_size=12)
_u63 = st.integers(min_value=0, max_value=ca.MAX_U63)


@st.composite
def gpus(draw: Any, index: int = 0) -> ca.GpuInfo:
    """A GPU as an ad carries it; with job slots and how many are busy, as a provider's executor
    states them (0 slots: not stated, as in ads before slots)."""
    total = draw(st.integers(min_value=0, max_value=2**40))
    slots = draw(st.integers(min_value=0, max_value=ca.MAX_GPU_SLOTS))
    return ca.GpuInfo(
        index=index,
        name=draw(st.text(max_size=16)),
        memory_total=total,
        memory_free=draw(st.integers(min_value=0, max_value=total)),
        utilization=draw(st.integers(min_value=0, max_value=100)),
        compute_capability=draw(st.sampled_from(["7.0", "8.0", "8.6", "9.0", ""])),
        driver=draw(st.text(max_size=8)),
        slots=slots,
        busy=draw(st.integers(min_value=0, max_value=slots)),
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


def offer_kinds() -> list[tuple[str, str, str]]:
    """Every ``(workload, backend, unit)`` a node offers: each workload it knows on each backend
    that runs it (ONNX Runtime's for ``onnx``, the array ones for the rest), sold as work
    (``gflop``) or, by a checker, as re-runs of others' work (``check``)."""
    from p2pnode.config import KEYS
    from p2pnode.exec.backends import BACKENDS, for_workload

    workloads = next(k.default for k in KEYS if k.name == "workloads")
    return [(w, b, unit) for w in workloads for b in for_workload(w, BACKENDS) for unit in ("gflop", "check")]


@st.composite
def offers(draw: Any) -> ca.Offer:
    workload, backend, unit = draw(st.sampled_from(offer_kinds()))
    return ca.Offer(workload, backend, draw(st.integers(min_value=0, max_value=ca.MAX_PRICE)), unit)


# the speeds a node measures at start (telemetry.calibrate): <kernel>_<dtype>_<backend>
SPEED_NAMES = ("matmul_f32_numpy", "matmul_f32_cuda", "matmul_bf16_cuda", "onnx_f32_ort-cpu", "onnx_f32_ort-cuda")


@st.composite
def capacity_ads(draw: Any, key: SigningKey | None = None, now_ms: int | None = None) -> ca.CapacityAd:
    """A valid ad, covering what real nodes publish: every offer kind (:func:`offer_kinds`), GPUs
    with job slots, up to the ad's 8 addresses with the provider's /p2p/ id, measured speeds."""
    key = key or SigningKey(draw(st.binary(min_size=32, max_size=32)))
    issued = now_ms if now_ms is not None else draw(st.integers(min_value=0, max_value=2**45))
    n_gpus = draw(st.integers(min_value=0, max_value=4))
    peer_id = peer_id_from_public_key(bytes(key.verify_key))
    suffix = "/p2p/" + to_base58(peer_id)
    return ca.CapacityAd(
        peer_id=peer_id,
        seq=draw(_u63),
        issued_at_ms=issued,
        expires_at_ms=issued + draw(st.integers(min_value=1, max_value=300_000)),
        cpu=draw(cpus()),
        gpus=tuple(draw(gpus(i)) for i in range(n_gpus)),
        offers=tuple(draw(st.lists(offers(), max_size=ca.MAX_OFFERS,
                                   unique_by=lambda o: (o.workload, o.backend, o.unit)))),
        addrs=tuple(draw(st.lists(st.builds("/ip4/127.0.0.{}/tcp/{}{}".format, st.integers(1, 254),
                                            st.integers(1, 65535), st.just(suffix)),
                                  max_size=ca.MAX_ADDRS, unique=True))),
        speed=tuple(sorted(draw(st.dictionaries(
            st.sampled_from(SPEED_NAMES), st.floats(min_value=0, max_value=1e6, allow_nan=False),
            max_size=len(SPEED_NAMES))).items())),
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


# jobs -----------------------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32).map(SigningKey)


def peer_of(key: SigningKey) -> bytes:
    return peer_id_from_public_key(bytes(key.verify_key))


@st.composite
def requests(draw: Any, key: SigningKey | None = None, job: bytes | None = None) -> m.RequestForBids:
    """A request for bids from ``key``'s peer, for small seeded or model work."""
    key = key or draw(keys)
    workload, params = draw(st.sampled_from([
        ("matmul", {"m": 8, "n": 8, "k": 8, "dtype": "int8"}), ("train_step", {"steps": 3}),
        ("infer", {"batch": 4, "d_in": 8, "d_hidden": 8, "d_out": 2, "layers": 2}),
        ("onnx", {"model_bytes": 100, "rows": 10, "feeds": {"x": ["float32", [4]]}, "inputs": "blob"})]))
    return m.RequestForBids(job or draw(_job_ids), workload, params, peer_of(key), draw(st.binary(min_size=16, max_size=16)),
                            draw(st.integers(1, 10**9)), draw(st.integers(0, 2**42)), 0,
                            draw(st.sampled_from(["", "numpy"])), draw(st.sampled_from(m.VERIFY_POLICIES)))


@st.composite
def job_messages(draw: Any, rfb: m.RequestForBids | None = None, requester_key: SigningKey | None = None,
                 provider_key: SigningKey | None = None) -> m.Message:
    """Any message of the job protocol for ``rfb``'s job (drawn when not given); award, result
    and receipt signed by the right keys for it."""
    rkey = requester_key or draw(keys)
    pkey = provider_key or draw(keys)
    rfb = rfb or draw(requests(rkey))
    job, me, prov = rfb.job, rfb.requester, peer_of(pkey)
    text = st.text(max_size=40)
    kind = draw(st.sampled_from(["rfb", "bid", "decline", "progress", "cancel", "failed", "inputs", "award",
                                 "result", "receipt"]))
    if kind == "rfb":
        return rfb
    if kind == "bid":
        return m.Bid(job, draw(st.integers(0, 10**9)), draw(st.integers(0, 10**7)), draw(st.integers(0, 2**42)),
                     "numpy")
    if kind == "decline":
        return m.Decline(job, draw(st.sampled_from(m.DECLINE_CODES)), draw(text))
    if kind == "progress":
        return m.Progress(job, draw(st.floats(0, 1)))
    if kind == "cancel":
        return m.Cancel(job, draw(text))
    if kind == "failed":
        return m.Failed(job, draw(st.sampled_from(["oom", "timeout", "crashed", "kernel_error"])), draw(text))
    if kind == "inputs":
        return m.Inputs(job, tuple(draw(st.lists(st.binary(min_size=32, max_size=32), max_size=3))),
                        draw(st.binary(max_size=64)))
    if kind == "award":
        return m.make_award(job, rkey, requester=me, provider=prov, nonce=rfb.nonce,
                            price=draw(st.integers(0, 10**9)), deadline_ms=rfb.deadline_ms)
    if kind == "result":
        return m.make_result(job, pkey, requester=me, provider=prov, nonce=rfb.nonce,
                             digest=draw(st.binary(min_size=32, max_size=32)), output=draw(st.binary(max_size=64)),
                             kernel_ms=draw(st.integers(0, 10**6)), backend="numpy",
                             root=draw(st.one_of(st.just(b""), st.binary(min_size=32, max_size=32))))
    return m.make_receipt(job, rkey, requester=me, provider=prov, nonce=rfb.nonce, accepted=draw(st.booleans()),
                          outcome=draw(text), paid=draw(st.integers(0, 10**9)))


def job_message_bytes(**kw: Any) -> st.SearchStrategy[bytes]:
    return job_messages(**kw).map(lambda msg: msg.encode())


# blobs ----------------------------------------------------------------------------------------

@st.composite
def blob_messages(draw: Any) -> bytes:
    """Any message of ``/p2pnode/blob/1`` (get, manifest, chunk, missing), encoded."""
    data = draw(st.binary(max_size=2048))
    manifest = wb.manifest_for(data, chunk=draw(st.sampled_from([256, 1024, wb.CHUNK])))
    kind = draw(st.sampled_from(["get", "manifest", "chunk", "missing"]))
    if kind == "get":
        return wb.encode_get(draw(st.one_of(st.just(manifest.id), st.binary(min_size=32, max_size=32))),
                             draw(st.integers(0, 10)))
    if kind == "manifest":
        return wb.encode_manifest(manifest)
    if kind == "chunk":
        i = draw(st.integers(0, len(manifest.hashes) - 1))
        a, b = manifest.chunk_range(i)
        return wb.encode_chunk(i, data[a:b])
    return wb.MISSING


# reports --------------------------------------------------------------------------------------

@st.composite
def reports(draw: Any, key: SigningKey | None = None) -> rpt.Report:
    """An opinion of another peer, or a cheat report carrying three signed results of one job (the
    subject's first, then two other providers', all made for the reporter)."""
    key = key or draw(keys)
    others = draw(st.lists(keys, min_size=3, max_size=3, unique_by=lambda k: bytes(k))
                  .filter(lambda ks: bytes(key) not in {bytes(k) for k in ks}))
    subject = peer_of(others[0])
    pos, neg = draw(st.floats(0, 1000)), draw(st.floats(0, 1000))
    t_ms = draw(st.integers(0, 2**42))
    if not draw(st.booleans()):
        return rpt.make_report(key, subject=subject, t_ms=t_ms, pos=pos, neg=neg)
    rfb = draw(requests(key))
    evidence = tuple(m.make_result(rfb.job, k, requester=rfb.requester, provider=peer_of(k), nonce=rfb.nonce,
                                   digest=draw(st.binary(min_size=32, max_size=32)), output=b"", kernel_ms=1,
                                   backend="numpy").raw for k in others)
    return rpt.make_report(key, subject=subject, t_ms=t_ms, pos=pos, neg=neg + 10, verdict="cheat", job=rfb.job,
                           evidence=evidence)


# adversaries ----------------------------------------------------------------------------------

@st.composite
def mutated(draw: Any, data: bytes) -> bytes:
    """``data`` as a hostile or broken peer might send it instead: a flipped bit, cut short, with
    bytes added, spliced with garbage, or nothing at all."""
    how = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "empty"]))
    if how == "empty" or not data:
        return b""
    if how == "flip":
        i = draw(st.integers(0, len(data) * 8 - 1))
        return data[: i // 8] + bytes([data[i // 8] ^ (1 << (i % 8))]) + data[i // 8 + 1:]
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "extend":
        return bytes(data + draw(st.binary(min_size=1, max_size=16)))
    i = draw(st.integers(0, len(data)))
    return bytes(data[:i] + draw(st.binary(max_size=16)) + data[i + draw(st.integers(0, 16)):])


# What the network (or a peer in the middle) does with each message it carries.
peer_behaviours = st.sampled_from(["deliver", "drop", "duplicate", "delay", "reorder", "corrupt", "replay"])


@st.composite
def market_arrivals(draw: Any, max_size: int = 200) -> list[tuple[bytes, bytes]]:
    """A market as one node receives it, with a sybil operator in it: ``(signed ad, introducer)``
    pairs, where the made-up providers (the cheapest, the fastest, at one address) come through one
    introducer and honest providers through several. For properties of admission and choice: honest
    providers keep places, and a requester asks one made-up provider at most per round."""
    from p2pnode.adversary import poisoned_ads

    now = draw(st.integers(1_700_000_000, 1_900_000_000))
    sybils = poisoned_ads(draw(st.integers(0, 64)), now, seed=draw(st.integers(0, 2**16)))
    honest = []
    for i in range(draw(st.integers(1, 8))):
        k = SigningKey(bytes([i + 1]) * 32)
        ad = draw(capacity_ads(key=k, now_ms=now * 1000))
        ad = replace(ad, seq=1, expires_at_ms=now * 1000 + 60_000, addrs=(f"/ip4/127.0.1.{i + 1}/tcp/4001",),
                     offers=(ca.Offer("matmul", "numpy", draw(st.integers(1, 1000)), "gflop"),))
        honest.append(sign(ad, k))
    arrivals = [(raw, b"sybil-operator") for raw in sybils]
    arrivals += [(raw, draw(st.sampled_from([b"peer-a", b"peer-b", b"peer-c"]))) for raw in honest]
    shuffled: list[tuple[bytes, bytes]] = draw(st.permutations(arrivals))
    return shuffled[:max_size]
