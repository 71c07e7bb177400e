"""The training service with a fake market: a stopped run resumes inside a round without sending a
finished shard again (nor one paid for just as the run was stopped), a provider that fails or is caught is replaced in the same round and never
given that job again (nor is one whose weights are not the model's), and a job nobody can finish fails naming its shard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from p2pnode.exec import train_model as tm
from p2pnode.exec.work import Output
from p2pnode.protocol import rounds
from p2pnode.services.records import JobRecord
from p2pnode.services.trainer import TrainCancelled, TrainError, TrainService
from p2pnode.wire.peer_id import to_base58
from tests.services.fakes import thread_aware_clock

SPEC = tm.parse({"inputs": 5, "layers": [["dense", 4], ["relu"], ["dense", 3]], "optimizer": "momentum"})
PLAN = rounds.Plan(SPEC, rounds=2, local_steps=3, shards=2, lr=0.1, batch=4, seed=2)


@dataclass(frozen=True)
class Ad:
    peer_id: bytes


ADS = [Ad(bytes([38 - i]) + bytes([i]) * 33) for i in range(4)]  # any 34 bytes name a peer here


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.random.default_rng(0)
    return g.standard_normal((20, 5)).astype(np.float32), g.integers(0, 3, 20), tm.init_weights(SPEC, 1)


class Market:
    """Providers that train honestly (the ``train`` workload here), unless told to fail or cheat."""

    def __init__(self, bad: dict[bytes, str] | None = None) -> None:
        self.bad = bad or {}
        self.sent: list[tuple[int, int, bytes]] = []  # (first step, batch seed, provider)
        self.slow: tuple[int, int] | None = None  # (first step, batch seed) of a job that takes 10 s
        self.stop_when_paid: tuple[tuple[int, int], Any] | None = None  # (that job, what stops the run as it is paid)

    def candidates(self, workload: str, need: int, k: int, backend: str) -> list[Ad]:
        return list(ADS)

    async def submit(self, workload: str, params: dict[str, Any], *, inputs: dict[str, np.ndarray], only: list[Ad],
                     **kw: Any) -> JobRecord:
        assert workload == "train" and kw["verify"] == "steps"
        peer = only[0].peer_id
        self.sent.append((params["first"], int(params["seed"]), peer))
        await trio.sleep(10 if (params["first"], params["seed"]) == self.slow else 0)
        rec = JobRecord(f"{len(self.sent):032x}", "requester", workload, params, 0.0, peer=to_base58(peer))
        what = self.bad.get(peer)
        if what == "fails":
            rec.state, rec.outcome = "failed", "failed: oom"
            return rec
        if what == "cheats":
            rec.state, rec.outcome, rec.checked = "rejected", "wrong: sampled steps disagree", "steps"
            return rec
        states, losses = tm.run(SPEC, inputs["state"], inputs["x"], inputs["y"], first=params["first"],
                                steps=params["steps"], batch=params["batch"], seed=params["seed"], lr=params["lr"],
                                wd=params["wd"])
        rec.state, rec.checked, rec.outcome = "done", "steps", "verified"
        weights = np.array(states[-1][:SPEC.params] if what != "odd" else states[-1])  # odd: not this model's
        rec.output = Output({"weights": weights}, {"loss": losses})
        if kw.get("keep") is not None:  # as the requester: the caller keeps it, then the receipt pays
            with trio.CancelScope(shield=True):
                await kw["keep"](rec)
        if self.stop_when_paid is not None and self.stop_when_paid[0] == (params["first"], params["seed"]):
            self.stop_when_paid[1]()  # the run is stopped just as this result's receipt is in the ledger
        return rec


@pytest.fixture
def autojump_clock(monkeypatch: Any) -> trio.testing.MockClock:
    """Virtual time that stands still while the service writes its files in a thread."""
    return thread_aware_clock(monkeypatch)


def _service(market: Market, tmp_path: Path) -> TrainService:
    return TrainService(submit=market.submit, candidates=market.candidates, now=trio.current_time,
                        state_dir=tmp_path)


async def test_a_run_stopped_mid_round_resumes_without_sending_a_finished_shard_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    x, y, w0 = _data()
    market = Market()
    service = _service(market, tmp_path)
    tid = rounds.job_id(PLAN, w0, x, y)
    second_round = PLAN.local_steps + 1
    market.slow = (second_round, rounds.shard_seed(PLAN.seed, 1, 1))

    def stop_when_round_two_is_half_done(e: dict[str, Any]) -> None:
        if e["event"] == "shard" and e["state"] == "done" and e["round"] == 2:
            service.runs.live[tid].cancel("stopped by the test")

    with pytest.raises(TrainCancelled, match="after round 1 of 2"):
        await service.run(PLAN, w0, x, y, max_price=10**6, deadline_s=10, on_event=stop_when_round_two_is_half_done)
    sent_before = list(market.sent)
    assert len(sent_before) == 4  # round 1: two shards; round 2: one done, one stopped in flight
    market.slow = None
    result = await service.run(PLAN, w0, x, y, max_price=10**6, deadline_s=10)
    again = market.sent[len(sent_before):]
    assert [(f, s) for f, s, _ in again] == [(second_round, rounds.shard_seed(PLAN.seed, 1, 1))]
    assert result.resumed_from == 1 and np.array_equal(result.weights, rounds.train_locally(PLAN, w0, x, y))
    done = await service.run(PLAN, w0, x, y, max_price=10**6, deadline_s=10)  # all done: nothing sent
    assert len(market.sent) == len(sent_before) + 1 and done.resumed_from == 2


async def test_a_shard_paid_for_as_the_run_is_stopped_is_kept_and_not_trained_again(tmp_path: Path) -> None:
    x, y, w0 = _data()
    market = Market()
    service = _service(market, tmp_path)
    tid = rounds.job_id(PLAN, w0, x, y)
    paid = (1, rounds.shard_seed(PLAN.seed, 0, 0))
    market.stop_when_paid = (paid, lambda: service.runs.live[tid].cancel("stopped by the test"))
    with pytest.raises(TrainCancelled, match="after round 0 of 2"):
        await service.run(PLAN, w0, x, y, max_price=10**6, deadline_s=10)
    assert (tmp_path / tid / "round-000000-0000.npy").is_file()
    market.stop_when_paid = None
    result = await service.run(PLAN, w0, x, y, max_price=10**6, deadline_s=10)
    assert [(f, s) for f, s, _ in market.sent].count(paid) == 1  # paid once, trained once
    assert np.array_equal(result.weights, rounds.train_locally(PLAN, w0, x, y))


class Killed(BaseException):
    """The requester's process dies: nothing after this point runs, shielded or not."""


async def test_a_shard_paid_just_before_the_requester_dies_is_on_disk_and_not_trained_again(tmp_path: Path) -> None:
    x, y, w0 = _data()
    market = Market()
    tid = rounds.job_id(PLAN, w0, x, y)
    paid = (1, rounds.shard_seed(PLAN.seed, 0, 0))

    def die() -> None:
        raise Killed

    market.stop_when_paid = (paid, die)
    with pytest.raises(BaseException) as caught:
        await _service(market, tmp_path).run(PLAN, w0, x, y, max_price=10**6, deadline_s=10)
    assert isinstance(caught.value, Killed) or (isinstance(caught.value, BaseExceptionGroup)
                                               and caught.value.subgroup(Killed) is not None)
    assert (tmp_path / tid / "round-000000-0000.npy").is_file()
    market.stop_when_paid = None
    result = await _service(market, tmp_path).run(PLAN, w0, x, y, max_price=10**6, deadline_s=10)
    assert [(f, s) for f, s, _ in market.sent].count(paid) == 1  # paid once, trained once
    assert np.array_equal(result.weights, rounds.train_locally(PLAN, w0, x, y))


async def test_failed_and_caught_providers_are_replaced_and_not_asked_again(tmp_path: Path) -> None:
    x, y, w0 = _data()
    # one cheats, one fails, one returns weights of another shape, accepted unchecked for want of a checker
    market = Market({ADS[0].peer_id: "cheats", ADS[1].peer_id: "fails", ADS[2].peer_id: "odd"})
    events: list[dict[str, Any]] = []
    result = await _service(market, tmp_path).run(PLAN, w0, x, y, max_price=10**6, deadline_s=10,
                                                  on_event=events.append)
    assert np.array_equal(result.weights, rounds.train_locally(PLAN, w0, x, y))
    assert result.caught == [to_base58(ADS[0].peer_id)] and set(result.by_provider) == {to_base58(ADS[3].peer_id)}
    cheater_jobs = [s for s in market.sent if s[2] == ADS[0].peer_id]
    assert len(cheater_jobs) == 1  # caught once: never asked again in this job, whatever the shard or round
    states = [e["state"] for e in events if e["event"] == "shard" and e["state"] != "start"]
    assert states.count("caught") == 1 and states.count("retry") >= 1 and states.count("done") == 4


async def test_a_shard_nobody_can_train_fails_the_job_naming_it(tmp_path: Path) -> None:
    x, y, w0 = _data()
    market = Market({ad.peer_id: "fails" for ad in ADS})
    with pytest.raises(TrainError, match=r"round 1, shard \d: no provider left"):
        await _service(market, tmp_path).run(PLAN, w0, x, y, max_price=10**6, deadline_s=10)
    with pytest.raises(TrainError, match="less than 1 µcr"):
        await _service(market, tmp_path).run(PLAN, w0, x, y, max_price=3, deadline_s=10)
