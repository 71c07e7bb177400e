"""The job services built from fakes: a requester and providers over memory streams, an in-process
executor, judges with list ledgers, and trio's MockClock, so hours of protocol time pass at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from p2pnode.exec import backends, workloads
from p2pnode.identity import Identity
from p2pnode.market.capacity_table import CapacityTable
from p2pnode.net.framing import FramedStream
from p2pnode.net.guard import PeerGate, guard_stream_handler
from p2pnode.protocol.job_provider import P
from p2pnode.services.blobs import BlobService
from p2pnode.services.market import Resources, capacity_from
from p2pnode.services.provider import JobProvider
from p2pnode.services.records import JobRecords
from p2pnode.services.requester import JobRequester
from p2pnode.telemetry.probe import Hardware
from p2pnode.wire import job as m
from p2pnode.wire.capacity_ad import CpuInfo, decode_ad, encode_ad
from p2pnode.wire.names import BLOB_PROTOCOL, JOB_PROTOCOL
from tests.services.fakes import (
    InlineExecutor,
    ListJudge,
    MemoryNet,
    Offences,
    ad_for,
    thread_aware_clock,
    virtual_now,
)

RICH = 10**9


@pytest.fixture
def autojump_clock(monkeypatch: Any) -> trio.testing.MockClock:
    return thread_aware_clock(monkeypatch)


@dataclass
class Side:
    identity: Identity
    judge: ListJudge
    offences: Offences
    records: JobRecords
    blobs: BlobService
    provider: JobProvider | None = None
    executor: InlineExecutor | None = None


@dataclass
class World:
    net: MemoryNet
    requester: JobRequester
    me: Side
    providers: list[Side] = field(default_factory=list)


def _side(net: MemoryNet) -> Side:
    identity, offences = Identity.generate(), Offences()
    blobs = BlobService(net.streams(identity.peer_id), offences.penalise)
    net.serve(identity.peer_id, BLOB_PROTOCOL, blobs.handle_stream)
    return Side(identity, ListJudge(), offences, JobRecords(), blobs)


@asynccontextmanager
async def world(n: int = 2) -> AsyncIterator[World]:
    async with trio.open_nursery() as nursery:
        net = MemoryNet(nursery)
        me = _side(net)
        table = CapacityTable()
        resources = Resources(Hardware(cpu=CpuInfo("test", 2, 8 << 30, 4 << 30), gpus=()), {"numpy-fp32": 50.0})
        providers = []
        for _ in range(n):
            side = _side(net)
            side.executor = InlineExecutor()
            ex = side.executor
            side.provider = JobProvider(
                identity=side.identity, now=virtual_now, executor=ex,
                capacity=lambda ex=ex: capacity_from(resources, ex, 100, ("matmul", "infer", "train_step"), True),
                blobs=side.blobs, recorder=side.judge, penalise=side.offences.penalise, records=side.records)
            gate = PeerGate(is_banned=side.offences.is_banned, penalise=side.offences.penalise)
            guarded = guard_stream_handler("job", side.provider.handle_stream, gate, side.provider.limits)
            net.serve(side.identity.peer_id, JOB_PROTOCOL, lambda s, p, g=guarded: g(s))
            ad = ad_for(side.identity, virtual_now())
            table.offer(decode_ad(encode_ad(ad, side.identity.signing_key)), virtual_now(), origin=ad.peer_id)
            providers.append(side)
        requester = JobRequester(identity=me.identity, now=virtual_now, table=table, is_banned=me.offences.is_banned,
                                 judge=me.judge, blobs=me.blobs, streams=net.streams(me.identity.peer_id),
                                 penalise=me.offences.penalise, records=me.records, calibrate_providers=False)
        yield World(net, requester, me, providers)
        nursery.cancel_scope.cancel()


def _local(workload: str, params: dict[str, Any]) -> workloads.Output:
    wl = workloads.get(workload)
    return wl.run(wl.check(params), backends.ops("numpy"), lambda f: None)


async def test_a_job_round_trip_leaves_receipts_and_credits_on_both_sides(autojump_clock: Any) -> None:
    async with world(2) as w:
        params = {"m": 16, "n": 8, "k": 32, "dtype": "int8", "seed": 5}
        rec = await w.requester.submit("matmul", params, max_price=RICH, deadline_s=60)
        assert rec.state == "done" and rec.outcome.startswith("verified (Freivalds"), rec.outcome
        assert rec.output is not None and rec.output.digest == _local("matmul", params).digest
        winner = next(s for s in w.providers if s.identity.peer_id_b58 == rec.peer)
        assert winner.records[-1].state == "done"
        assert w.me.judge.kinds() == ["verification", "receipt", "credit"]
        assert winner.judge.kinds() == ["receipt", "credit"]
        assert winner.judge.entries[1][1]["amount"] == -w.me.judge.entries[2][1]["amount"] > 0
        assert w.me.offences.got == [] and winner.offences.got == []


async def test_a_large_output_travels_as_a_blob_over_the_blob_service(autojump_clock: Any) -> None:
    async with world(1) as w:
        params = {"m": 256, "n": 256, "k": 8, "dtype": "fp32", "seed": 2}  # 256 KiB out
        rec = await w.requester.submit("matmul", params, max_price=RICH, deadline_s=60)
        assert rec.state == "done" and w.me.blobs.fetched_bytes > 256 * 256 * 4, rec.outcome
        assert np.allclose(rec.output.arrays["c"], _local("matmul", params).arrays["c"])  # type: ignore[union-attr]


async def test_a_provider_that_goes_silent_is_replaced_after_the_stall_timeout(autojump_clock: Any) -> None:
    async with world(2) as w:
        silent = w.providers[0]

        async def mute(stream: Any, peer: bytes) -> None:
            fs = FramedStream(stream, max_frame=m.MAX_MESSAGE)
            rfb = m.decode(await fs.receive())
            await fs.send(m.Bid(rfb.job, 1, 60_000, rfb.deadline_ms, "numpy").encode())  # the cheapest
            await trio.sleep_forever()  # then not a word

        w.net.serve(silent.identity.peer_id, JOB_PROTOCOL, mute)
        # the requester thinks well of the silent one (as a good record would make it): it wins
        w.requester.scorer.reputation = lambda peer: 0.001 if peer == silent.identity.peer_id else 1.0
        t0 = trio.current_time()
        rec = await w.requester.submit("train_step", {"steps": 3}, max_price=RICH, deadline_s=600)
        assert rec.state == "done" and rec.peer == w.providers[1].identity.peer_id_b58
        lost = [e for e in rec.events if e["event"] == "lost"]
        assert lost and "no word" in lost[0]["reason"]
        assert trio.current_time() - t0 >= 15.0  # virtual seconds: the stall timeout, waited for real
        assert ("failure", silent.identity.peer_id) in [(k, p) for k, _, p in w.me.judge.entries]


async def test_an_unreachable_provider_is_skipped(autojump_clock: Any) -> None:
    async with world(2) as w:
        w.net.down.add(w.providers[0].identity.peer_id)
        rec = await w.requester.submit("matmul", {"m": 4, "n": 4, "k": 4}, max_price=RICH, deadline_s=60)
        assert rec.state == "done" and rec.peer == w.providers[1].identity.peer_id_b58
        assert any(e["event"] == "decline" and e["code"] == "busy" for e in rec.events)


async def test_an_unawarded_bid_expires_and_a_late_award_is_an_offence(autojump_clock: Any) -> None:
    async with world(1) as w:
        side = w.providers[0]
        stream = await w.net.streams(w.me.identity.peer_id).open(side.identity.peer_id, JOB_PROTOCOL)
        fs = FramedStream(stream, max_frame=m.MAX_MESSAGE)
        rfb = m.RequestForBids(b"J" * 16, "matmul", {"m": 4, "n": 4, "k": 4}, w.me.identity.peer_id, b"N" * 16,
                               RICH, int((virtual_now() + 3600) * 1000), 0, "", "none")
        await fs.send(rfb.encode())
        bid = m.decode(await fs.receive())
        assert isinstance(bid, m.Bid)
        await trio.sleep(31)  # the bid lived 30 s
        assert side.records[-1].state == P.NOT_AWARDED.value
        assert side.executor is not None and side.executor.calls == []
        award = m.make_award(rfb.job, w.me.identity.signing_key, requester=w.me.identity.peer_id,
                             provider=side.identity.peer_id, nonce=rfb.nonce, price=bid.price,
                             deadline_ms=rfb.deadline_ms)
        try:
            await fs.send(award.encode())  # too late: the provider has closed the stream
        except Exception:  # noqa: BLE001
            pass
        assert side.executor.calls == []


async def test_a_job_cancelled_while_its_result_is_sealed_ends_quietly(
        autojump_clock: Any, monkeypatch: Any, caplog: Any) -> None:
    """The requester cancels while the provider seals the finished result (in a worker thread):
    the provider drops the result and ends the job as cancelled, without an internal error."""
    import logging
    import threading

    from p2pnode.wire import codec, sealing

    entered, release = trio.Event(), threading.Event()
    real_seal = sealing.seal

    def held_seal(data: bytes, recipient: bytes) -> bytes:  # in the provider's worker thread
        trio.from_thread.run_sync(entered.set)
        release.wait(30)
        return real_seal(data, recipient)

    async with world(1) as w:
        side = w.providers[0]
        fs = FramedStream(await w.net.streams(w.me.identity.peer_id).open(side.identity.peer_id, JOB_PROTOCOL),
                          max_frame=m.MAX_MESSAGE)
        rfb = m.RequestForBids(b"C" * 16, "matmul", {"m": 4, "n": 4, "k": 4}, w.me.identity.peer_id, b"N" * 16,
                               RICH, int((virtual_now() + 600) * 1000), 0, "", "none")
        await fs.send(rfb.encode())
        bid = m.decode(await fs.receive())
        assert isinstance(bid, m.Bid)
        monkeypatch.setattr(sealing, "seal", held_seal)
        await fs.send(m.make_award(rfb.job, w.me.identity.signing_key, requester=w.me.identity.peer_id,
                                   provider=side.identity.peer_id, nonce=rfb.nonce, price=bid.price,
                                   deadline_ms=rfb.deadline_ms).encode())
        await fs.send(m.Inputs(rfb.job, (), real_seal(codec.encode({"seed": 7}), side.identity.peer_id)).encode())
        await entered.wait()  # the result is being sealed (virtual time stands still meanwhile)
        with caplog.at_level(logging.INFO):
            await fs.send(m.Cancel(rfb.job, "changed my mind").encode())
            for _ in range(10_000):  # no sleeping while the clock stands still: yield until it is taken
                if side.records[-1].state == P.CANCELLED.value:
                    break
                await trio.lowlevel.checkpoint()
            assert side.records[-1].state == P.CANCELLED.value
            release.set()
            await trio.sleep(1)  # (virtual) the provider's handler ends once the seal returns
        assert side.records[-1].state == P.CANCELLED.value and side.records[-1].outcome == "changed my mind"
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_the_same_job_id_twice_is_refused_as_a_replay(autojump_clock: Any) -> None:
    async with world(1) as w:
        side = w.providers[0]
        rfb = m.RequestForBids(b"R" * 16, "matmul", {"m": 4, "n": 4, "k": 4}, w.me.identity.peer_id, b"N" * 16,
                               RICH, int((virtual_now() + 60) * 1000), 0, "", "none")
        for _ in range(2):
            stream = await w.net.streams(w.me.identity.peer_id).open(side.identity.peer_id, JOB_PROTOCOL)
            fs = FramedStream(stream, max_frame=m.MAX_MESSAGE)
            await fs.send(rfb.encode())
            with trio.move_on_after(5):
                try:
                    await fs.receive()
                except Exception:  # noqa: BLE001 - the second stream is reset
                    pass
        assert side.offences.got == [(w.me.identity.peer_id, "replay")]
        assert len([r for r in side.records if r.job == rfb.job.hex()]) == 1


async def test_equal_offers_take_turns(autojump_clock: Any) -> None:
    async with world(3) as w:
        won: dict[str, int] = {}
        for seed in range(12):
            params = {"m": 8, "n": 8, "k": 8, "dtype": "int8", "seed": seed}
            rec = await w.requester.submit("matmul", params, max_price=RICH, deadline_s=60)
            assert rec.state == "done", rec.outcome
            won[rec.peer] = won.get(rec.peer, 0) + 1
        assert len(won) == 3 and min(won.values()) >= 3, won  # not all to one provider


async def test_a_budget_caps_spending_and_reciprocity_lowers_the_price(autojump_clock: Any) -> None:
    from p2pnode.services.requester import JobError

    async with world(1) as w:
        params = {"m": 512, "n": 512, "k": 512, "dtype": "int8", "seed": 3}  # 27 µcr
        full = await w.requester.submit("matmul", params, max_price=RICH, deadline_s=60)
        (provider,) = w.providers
        assert provider.provider is not None
        provider.provider.discount = lambda requester: 0.5 if requester == w.me.identity.peer_id else 0.0
        half = await w.requester.submit("matmul", {**params, "seed": 4}, max_price=RICH, deadline_s=60)
        assert full.state == half.state == "done" and full.price > 1
        assert half.price == -(-full.price // 2)  # half, rounded up
        w.requester.budget, w.requester.spent = full.price + half.price, lambda: full.price + half.price
        with pytest.raises(JobError, match="over budget"):
            await w.requester.submit("matmul", {**params, "seed": 5}, max_price=1, deadline_s=60)


async def test_an_input_whose_digest_the_caller_has_is_not_hashed_again(autojump_clock: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A map passes its model's SHA-256 (hashed once for the whole map) with every shard: the
    requester keys that blob from it, to the very key and blob it would have hashed its way to."""
    import hashlib

    from p2pnode.wire import sealing

    rng = np.random.default_rng(8)
    a = rng.integers(-9, 9, (64, 32), dtype=np.int8)
    b = rng.integers(-9, 9, (32, 16), dtype=np.int8)
    hashed: list[int] = []
    blob_key = sealing.blob_key
    monkeypatch.setattr(sealing, "blob_key", lambda data, secret: hashed.append(memoryview(data).nbytes)
                        or blob_key(data, secret))
    async with world(1) as w:
        params = {"m": 64, "n": 16, "k": 32, "dtype": "int8", "inputs": "blob"}
        rec = await w.requester.submit("matmul", params, inputs={"a": a, "b": b}, max_price=RICH, deadline_s=60,
                                       digests={"a": hashlib.sha256(a.data).digest()})
        assert rec.state == "done", rec.outcome
        assert rec.output is not None and np.array_equal(rec.output.arrays["c"], a.astype(np.int32) @ b.astype(np.int32))
        assert hashed == [b.nbytes]  # b hashed; a keyed from its digest
        same = w.requester._seal(a)[:2]
        assert same[1] is not None and same == w.requester._seal(a, hashlib.sha256(a.data).digest())[:2]
        assert not w.me.blobs.store._held  # the job is over: its inputs are no longer held


async def test_an_input_larger_than_the_transient_budget_is_held_while_its_job_needs_it(autojump_clock: Any) -> None:
    """A shard larger than the whole budget for blobs used once is still there for its provider
    (held from the moment it is put), and goes once its job ends."""
    rng = np.random.default_rng(9)
    a = rng.integers(-9, 9, (64, 32), dtype=np.int8)
    b = rng.integers(-9, 9, (32, 16), dtype=np.int8)
    async with world(1) as w:
        store = w.me.blobs.store
        store.max_transient = 256  # smaller than either input
        params = {"m": 64, "n": 16, "k": 32, "dtype": "int8", "inputs": "blob"}
        with trio.fail_after(60):
            rec = await w.requester.submit("matmul", params, inputs={"a": a, "b": b}, max_price=RICH, deadline_s=60)
        assert rec.state == "done", rec.outcome
        assert rec.output is not None and np.array_equal(rec.output.arrays["c"], a.astype(np.int32) @ b.astype(np.int32))
        assert not store._held and store._transient_bytes <= 256  # released, and dropped once it could be
