"""Dataset jobs from fakes: a submit that runs shards here (or fails on purpose), a market of named
providers, and a state directory; no network."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from p2pnode import models
from p2pnode.exec import backends, model_jobs, workloads
from p2pnode.services import mapper, operations
from p2pnode.services.mapper import MapCancelled, MapError, MapService, _atomic, map_id
from p2pnode.services.operations import AlreadyRunning, Hangup
from p2pnode.services.records import JobRecord, JobRecords
from p2pnode.wire.peer_id import to_base58
from tests.services.fakes import virtual_now

ROWS = 100


@dataclass(frozen=True)
class Ad:
    peer_id: bytes


def _peer(i: int) -> bytes:
    return bytes([0, 36, 8, 1, 18, 32]) + bytes([i]) * 32  # the shape of an ed25519 peer id


class Market:
    """``submit`` and ``candidates`` for MapService, with providers that can be made to fail."""

    def __init__(self, n: int, bad: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.ads = [Ad(_peer(i)) for i in range(n)]
        self.bad = {_peer(i) for i in bad}
        self.calls: list[tuple[bytes, int]] = []
        self.in_flight: dict[bytes, int] = {}  # shards running per provider
        self.most_at_once = 0  # providers at once
        self.deepest = 0  # shards at once on one provider
        self.ort = backends.ops("ort-cpu")
        self.stop_after: int | None = None
        self.gate: trio.Event | None = None  # shards after the first ``hold_after`` wait for it
        self.hold_after = 0
        self.asked: list[dict[str, Any]] = []  # each submit's max_price and verify
        self.on_paid: Any = None  # called with the shard's call number once its job is paid
        self.keeps = True  # awaits the caller's keep before paying, as the requester does

    def candidates(self, workload: str, need: int, k: int, backend: str) -> list[Any]:
        return list(self.ads)

    async def submit(self, workload: str, params: dict[str, Any], *, inputs: dict[str, Any], only: list[Any],
                     **kw: Any) -> JobRecord:
        peer = only[0].peer_id
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            await trio.sleep_forever()  # the requester is about to be killed
        self.calls.append((peer, params["rows"]))
        nth = len(self.calls)
        self.asked.append({"max_price": kw["max_price"], "verify": kw["verify"], "digests": kw.get("digests")})
        self.in_flight[peer] = self.in_flight.get(peer, 0) + 1
        self.most_at_once = max(self.most_at_once, sum(1 for n in self.in_flight.values() if n))
        self.deepest = max(self.deepest, self.in_flight[peer])
        try:
            await trio.sleep(0.01)
            if self.gate is not None and nth > self.hold_after:
                await self.gate.wait()
            rec = JobRecord("ab" * 16, "requester", workload, params, started=virtual_now(), peer=to_base58(peer))
            if peer in self.bad:
                rec.state, rec.outcome = "rejected", "wrong: sampled rows disagree"
                return rec
            wl = workloads.get(workload)
            rec.output = wl.run(wl.check(params), self.ort, lambda f: None, inputs)
            rec.state, rec.outcome, rec.price = "done", "verified", kw["max_price"]
            rec.events.append({"event": "sample", "rows": min(90, params["rows"])})  # checked, then kept
            if kw.get("keep") is not None and self.keeps:  # as the requester: kept, then the receipt
                with trio.CancelScope(shield=True):
                    await kw["keep"](rec)
            operations.charge("job", rec.price)  # as the requester charges a paid receipt
            if self.on_paid is not None:
                self.on_paid(nth)
            return rec
        finally:
            self.in_flight[peer] -= 1


def _job() -> model_jobs.ModelJob:
    return model_jobs.prepare(models.cnn(channels=4), {"": models.images(ROWS, seed=3)})


def _local(job: model_jobs.ModelJob) -> np.ndarray:
    params, inputs = job.shard(0, job.rows)
    wl = workloads.get("onnx")
    return wl.run(wl.check(params), backends.ops("ort-cpu"), lambda f: None, inputs).arrays["probabilities"]


async def test_shards_spread_over_providers_and_come_back_in_order(tmp_path: Path) -> None:
    market, job = Market(3), _job()
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    result = await maps.run(job, shard_rows=9, providers=3, max_price=10**6, deadline_s=60)
    assert result.shards == 12 and result.resumed == 0 and result.retries == 0
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)
    assert market.most_at_once == 3 and len(result.by_provider) == 3
    assert market.deepest == 2  # each holds a second shard while the first runs
    assert sum(result.by_provider.values()) == ROWS and result.checked_rows == ROWS  # shards under 90 rows: whole


async def test_every_shard_names_its_model_by_one_digest_hashed_once_for_the_map(tmp_path: Path) -> None:
    """The model is the same in every shard: the requester is given its SHA-256, hashed once with
    the map's identity, instead of hashing the model again for each shard (a 2 GB model: 1 s each)."""
    import hashlib

    market, job = Market(2), _job()
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    await maps.run(job, shard_rows=10, providers=2, max_price=10**6, deadline_s=60)
    assert len(market.asked) == 10
    assert all(a["digests"] == {"model": hashlib.sha256(job.blob).digest()} for a in market.asked)


async def test_one_provider_holds_two_shards_and_no_more_providers_than_asked_are_used(tmp_path: Path) -> None:
    market, job = Market(4), _job()
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    result = await maps.run(job, shard_rows=10, providers=1, max_price=10**6, deadline_s=60)
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)
    assert market.most_at_once == 1 and market.deepest == 2 and len(result.by_provider) == 1


async def test_a_failing_provider_loses_its_shards_to_others(tmp_path: Path) -> None:
    market, job = Market(3, bad={0}), _job()
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    events: list[dict[str, Any]] = []
    result = await maps.run(job, shard_rows=25, providers=2, max_price=10**6, deadline_s=60, on_event=events.append)
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)
    assert result.retries >= 1 and to_base58(_peer(0)) not in result.by_provider
    retried = {e["shard"] for e in events if e.get("state") == "retry"}
    for shard in retried:  # a shard that failed on the bad provider never went back to it
        givers = [p for p, _ in market.calls]
        assert givers.count(_peer(0)) <= len(retried)
    assert any(e.get("state") == "retry" for e in events)


async def test_an_interrupted_dataset_job_resumes_without_redoing_finished_shards(tmp_path: Path) -> None:
    job = _job()
    first = Market(2)
    first.stop_after = 4
    maps = MapService(submit=first.submit, candidates=first.candidates, now=virtual_now, state_dir=tmp_path)
    with trio.move_on_after(5):  # the requester dies with shards in flight
        await maps.run(job, shard_rows=10, providers=2, max_price=10**6, deadline_s=60)
    finished = len(first.calls)
    assert 0 < finished < 10
    second = Market(2)
    maps = MapService(submit=second.submit, candidates=second.candidates, now=virtual_now, state_dir=tmp_path)
    result = await maps.run(job, shard_rows=10, providers=2, max_price=10**6, deadline_s=60)
    assert result.resumed == finished and len(second.calls) == 10 - finished  # nothing run (or paid) twice
    assert sum(result.by_provider.values()) == 10 * (10 - finished)
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)
    # a different shard size is a different dataset job: nothing is resumed from it
    other = await MapService(submit=Market(2).submit, candidates=second.candidates, now=virtual_now,
                             state_dir=tmp_path).run(job, shard_rows=20, providers=2, max_price=10**6, deadline_s=60)
    assert other.resumed == 0 and other.map_id != result.map_id


async def test_a_shard_saved_is_one_line_appended_and_a_torn_line_is_not_a_shard(tmp_path: Path) -> None:
    """A map's state grows by one line a shard (it was rewritten whole for each shard: a map of
    100,000 shards wrote its state 100,000 times over). A node killed mid-line leaves a torn line:
    it is not a shard, and the next line written after it reads whole."""
    from p2pnode.services.mapper import STATE_LOG

    job = _job()
    first = Market(2)
    first.stop_after = 4
    maps = MapService(submit=first.submit, candidates=first.candidates, now=virtual_now, state_dir=tmp_path)
    with trio.move_on_after(5):
        await maps.run(job, shard_rows=10, providers=2, max_price=10**6, deadline_s=60)
    log = next(tmp_path.glob(f"*/{STATE_LOG}"))
    lines = log.read_bytes().splitlines()
    assert len(lines) == len(first.calls) == 4
    assert max(map(len, lines)) < 2 * min(map(len, lines))  # each names one shard, not all before it
    with open(log, "ab") as f:
        f.write(b'{"shard": 9, "file": "shard-0000')  # killed as it wrote
    assert set(MapService._load(log.parent)) == {str(json.loads(x)["shard"]) for x in lines}  # the torn one is not
    second = Market(2)
    result = await MapService(submit=second.submit, candidates=second.candidates, now=virtual_now,
                              state_dir=tmp_path).run(job, shard_rows=10, providers=2, max_price=10**6, deadline_s=60)
    assert result.resumed == 4 and len(second.calls) == 6
    assert len(MapService._load(log.parent)) == 10  # the six lines after the torn one read whole
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)


async def test_a_shard_nobody_can_do_fails_the_job_with_its_name(tmp_path: Path) -> None:
    market, job = Market(2, bad={0, 1}), _job()
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    with pytest.raises(MapError, match="shard"):
        await maps.run(job, shard_rows=50, providers=2, max_price=10**6, deadline_s=60)


def _maps(market: Market, folder: Path, records: JobRecords | None = None) -> MapService:
    return MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=folder,
                      records=records)


async def test_a_second_run_of_a_running_map_is_refused_and_the_first_goes_on(tmp_path: Path) -> None:
    market, job = Market(2), _job()
    market.gate = trio.Event()
    maps, results = _maps(market, tmp_path), []

    async def first() -> None:
        results.append(await maps.run(job, shard_rows=25, providers=2, max_price=10**6, deadline_s=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        with trio.fail_after(30):
            while not market.calls:  # it runs, its shards held at the gate
                await trio.sleep(0.01)
        mid = map_id(job, 25)
        with pytest.raises(AlreadyRunning, match=f"map {mid} is already running, started .*p2pnode cancel {mid}"):
            await maps.run(job, shard_rows=25, providers=2, max_price=10**6, deadline_s=60)
        # another service over the same folder (a restarted node's): its lock file refuses it too
        with pytest.raises(AlreadyRunning, match=f"map {mid} is already running: wait"):
            await _maps(Market(2), tmp_path).run(job, shard_rows=25, providers=2, max_price=10**6, deadline_s=60)
        market.gate.set()
    (result,) = results
    assert result.shards == 4 and len(market.calls) == 4 and result.resumed == 0
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)


async def test_a_cancelled_map_stops_its_jobs_keeps_its_shards_and_says_what_it_paid(tmp_path: Path) -> None:
    market, job, records = Market(2), _job(), JobRecords()
    market.gate, market.hold_after = trio.Event(), 3  # three shards finish, the rest hang
    maps, hangup, errors = _maps(market, tmp_path, records), Hangup(), []

    async def run() -> None:
        try:
            await maps.run(job, shard_rows=10, providers=2, max_price=1000, deadline_s=60, hangup=hangup)
        except MapCancelled as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(30):
            while maps.shards_saved < 3 or not any(market.in_flight.values()):
                await trio.sleep(0.01)
        hangup.set()  # its client went away
    (error,) = errors
    assert str(error) == (f"map {map_id(job, 10)} cancelled (its client went away): 3 of 10 shards done and kept, "
                          "paid 300 µcr (job 300); the same command resumes it")
    assert not any(market.in_flight.values())  # no shard job left running
    (rec,) = [r for r in records if r.workload == "map"]
    assert rec.state == "cancelled" and rec.price == 300 and rec.paid == {"job": 300, "total": 300}
    assert "3 of 10 shards done and kept" in rec.outcome and not maps.runs.live
    again = Market(2)
    result = await _maps(again, tmp_path).run(job, shard_rows=10, providers=2, max_price=1000, deadline_s=60)
    assert result.resumed == 3 and len(again.calls) == 7 and result.paid["total"] == 700


async def test_a_shard_paid_as_its_map_is_cancelled_is_kept_and_never_paid_again(tmp_path: Path) -> None:
    """The client goes away between a shard's receipt and its output reaching the disk: the paid
    shard is still kept, so the same command does not run (and pay for) it again."""
    market, job = Market(2), _job()
    maps, hangup = _maps(market, tmp_path), Hangup()
    market.on_paid = lambda nth: hangup.set() if nth == 3 else None
    with pytest.raises(MapCancelled) as caught:
        await maps.run(job, shard_rows=10, providers=2, max_price=1000, deadline_s=60, hangup=hangup)
    said = re.search(r"(\d+) of 10 shards done and kept, paid (\d+) µcr", str(caught.value))
    assert said, str(caught.value)
    kept, paid = int(said.group(1)), int(said.group(2))
    assert kept >= 1 and paid == 100 * kept, str(caught.value)  # every shard paid for is on disk
    again = Market(2)
    result = await _maps(again, tmp_path).run(job, shard_rows=10, providers=2, max_price=1000, deadline_s=60)
    assert result.resumed == kept and len(again.calls) == 10 - kept and paid + result.paid["total"] == 1000
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)


class Killed(BaseException):
    """The requester's process dies: nothing after this point runs, shielded or not."""


async def test_a_shard_paid_just_before_the_requester_dies_is_on_disk_and_never_paid_again(tmp_path: Path) -> None:
    """The process is killed the moment a receipt has paid for a shard: its output was written
    before the receipt went out, so the same command run again neither runs nor pays for it."""
    market, job = Market(2), _job()

    def die(nth: int) -> None:
        if nth == 3:
            raise Killed

    market.on_paid = die
    with pytest.raises(BaseException) as caught:
        await _maps(market, tmp_path).run(job, shard_rows=10, providers=2, max_price=1000, deadline_s=60)
    assert caught.group_contains(Killed) if isinstance(caught.value, BaseExceptionGroup) else \
        isinstance(caught.value, Killed)
    paid = 3  # the third shard's receipt paid, then the process died
    again = Market(2)
    result = await _maps(again, tmp_path).run(job, shard_rows=10, providers=2, max_price=1000, deadline_s=60)
    assert result.resumed >= paid and len(again.calls) == 10 - result.resumed
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)


async def test_p2pnode_cancel_finds_a_map_by_the_start_of_its_id(tmp_path: Path) -> None:
    market, job = Market(1), _job()
    market.gate = trio.Event()
    maps, errors = _maps(market, tmp_path), []

    async def run() -> None:
        with pytest.raises(MapCancelled, match="cancelled \\(by p2pnode cancel\\): 0 of 4 shards done") as caught:
            await maps.run(job, shard_rows=25, providers=1, max_price=1000, deadline_s=60)
        errors.append(caught.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(30):
            while not market.calls:
                await trio.sleep(0.01)
        run_ = maps.runs.find(map_id(job, 25)[:6])
        assert run_ is not None and maps.runs.find("ffffffff") is None
        run_.cancel("by p2pnode cancel")
    assert errors and not any(market.in_flight.values())


async def test_a_finished_map_run_again_says_so_and_fresh_runs_it_again(tmp_path: Path) -> None:
    job = _job()
    first = await _maps(Market(2), tmp_path).run(job, shard_rows=25, providers=2, max_price=1000, deadline_s=60)
    assert not first.already_done and first.paid["total"] == 1000
    market, events = Market(2), []
    again = await _maps(market, tmp_path).run(job, shard_rows=25, providers=2, max_price=1000, deadline_s=60,
                                              on_event=events.append)
    assert again.already_done and again.resumed == again.shards == 4 and not market.calls
    assert again.paid == {"total": 0} and again.checked_rows == 0 and again.folder.endswith(again.map_id)
    assert again.summary()["already_done"] and events[0]["already_done"]
    assert np.array_equal(again.outputs["probabilities"], first.outputs["probabilities"])
    fresh = await _maps(market, tmp_path).run(job, shard_rows=25, providers=2, max_price=1000, deadline_s=60,
                                              fresh=True)
    assert not fresh.already_done and fresh.resumed == 0 and len(market.calls) == 4


async def test_the_shards_prices_add_up_to_the_max_price_and_never_more(tmp_path: Path) -> None:
    market, job = Market(2), _job()
    await _maps(market, tmp_path).run(job, shard_rows=30, providers=2, max_price=101, deadline_s=60)
    prices = sorted(a["max_price"] for a in market.asked)
    assert prices == [11, 30, 30, 30] and sum(prices) == 101  # rounded down, the last shard's remainder its own
    market = Market(2)
    with pytest.raises(MapError, match="--max-price 3 leaves less than 1 µcr for a shard \\(4 shards"):
        await _maps(market, tmp_path).run(job, shard_rows=30, providers=2, max_price=3, deadline_s=60)
    assert not market.calls


async def test_verify_none_is_passed_on_and_freivalds_refused(tmp_path: Path) -> None:
    market, job = Market(2), _job()
    result = await _maps(market, tmp_path).run(job, shard_rows=50, providers=2, max_price=100, deadline_s=60,
                                               verify="none")
    assert result.verify == "none" and {a["verify"] for a in market.asked} == {"none"}
    with pytest.raises(MapError, match="freivalds checks matrix products only"):
        await _maps(market, tmp_path).run(job, shard_rows=50, providers=2, max_price=100, deadline_s=60,
                                          verify="freivalds", fresh=True)


def test_state_files_written_at_once_each_use_their_own_temporary_file(tmp_path: Path) -> None:
    """Two writers of one state file at the same moment (two runs of a map once raced so): each
    writes its own temporary file and renames it; neither finds its file taken by the other."""
    import threading

    both_open = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def write(text: bytes) -> None:
        def slow(f: Any) -> None:
            f.write(text)
            both_open.wait()

        try:
            _atomic(tmp_path / "state.json", slow)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in (b'{"a": 1}', b'{"b": 2}')]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and (tmp_path / "state.json").read_bytes() in (b'{"a": 1}', b'{"b": 2}')
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


async def test_a_model_that_couples_its_rows_gives_onnx_runtimes_answer_on_the_whole_dataset(tmp_path: Path) -> None:
    """y = x − mean over the rows: run in shards or chunks, each piece would subtract its own mean."""
    from tests.exec.test_row_coupling import centre

    x = np.random.default_rng(4).standard_normal((2500, 4)).astype(np.float32)
    market, job = Market(3), model_jobs.prepare(centre(), {"": x})
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    events: list[dict[str, Any]] = []
    result = await maps.run(job, shard_rows=500, providers=3, max_price=10**6, deadline_s=60, on_event=events.append)
    sess, _ = backends.OrtOps("ort-cpu").session(centre())
    assert np.allclose(result.outputs["y"], sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert result.shards == 1 and market.calls == [(market.calls[0][0], 2500)] and result.verify == "rerun"
    assert "ReduceMean" in events[0]["coupling"]


class Setbacks(Market):
    """Providers that take longer than a shard's estimate allows until it is priced at ``need`` times
    the measured one (an honest overrun), or answer busy the first ``busy`` times."""

    def __init__(self, job: model_jobs.ModelJob, *, need: float = 1.0, busy: int = 0) -> None:
        super().__init__(1)
        self.per_row = job.gflop() / job.rows
        self.need, self.busy_left = need, busy
        self.gflops: list[float] = []

    async def submit(self, workload: str, params: dict[str, Any], *, inputs: dict[str, Any], only: list[Any],
                     **kw: Any) -> JobRecord:
        peer = only[0].peer_id
        self.gflops.append(params["gflop"])
        if self.busy_left > 0:
            self.busy_left -= 1
            rec = JobRecord("cd" * 16, "requester", workload, params, started=virtual_now(), state="no_provider",
                            outcome="no acceptable bid", declines={to_base58(peer): "busy"})
            return rec
        measured = self.per_row * params["rows"]
        if params["gflop"] < self.need * measured * 0.999:
            self.calls.append((peer, params["rows"]))
            return JobRecord("ef" * 16, "requester", workload, params, started=virtual_now(), peer=to_base58(peer),
                             state="no_provider", outcome="every awarded provider failed",
                             overran=[to_base58(peer)])
        return await super().submit(workload, params, inputs=inputs, only=only, **kw)


async def test_an_overrun_is_priced_again_on_the_same_provider_not_dropped(tmp_path: Path) -> None:
    """The only provider overran every shard at the estimate it was given (3 times too low): each
    shard goes back to it at twice, then four times the estimate, and the map finishes."""
    job = _job()
    market = Setbacks(job, need=3.0)
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    events: list[dict[str, Any]] = []
    result = await maps.run(job, shard_rows=50, providers=1, max_price=10**6, deadline_s=60, on_event=events.append)
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)
    assert [e["why"] for e in events if e.get("state") == "retry"] == ["overrun"] * 4  # two each
    first = market.per_row * 50
    assert sorted({round(g / first, 6) for g in market.gflops}) == [1.0, 2.0, 4.0]


async def test_a_busy_provider_is_asked_again_after_a_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapper, "BUSY_WAIT_S", 0.01)
    job = _job()
    market = Setbacks(job, busy=3)
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    result = await maps.run(job, shard_rows=100, providers=1, max_price=10**6, deadline_s=60)
    assert result.retries == 3 and sum(result.by_provider.values()) == ROWS


async def test_a_map_goes_on_while_an_honest_provider_remains(tmp_path: Path) -> None:
    """Five bad providers ranked first, one honest one last: every shard fails on the five (each
    dropped for that shard), and the honest one does them all."""
    market, job = Market(6, bad={0, 1, 2, 3, 4}), _job()
    maps = MapService(submit=market.submit, candidates=market.candidates, now=virtual_now, state_dir=tmp_path)
    result = await maps.run(job, shard_rows=50, providers=1, max_price=10**6, deadline_s=60)
    assert result.by_provider == {to_base58(_peer(5)): ROWS} and result.retries == 10
    assert np.allclose(result.outputs["probabilities"], _local(job), rtol=1e-5, atol=1e-7)
