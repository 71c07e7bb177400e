"""What a request pays (charged from the tasks it starts) and how a running one is found and stopped."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pnode.services import operations
from p2pnode.services.operations import AlreadyRunning, Hangup, Runs


async def test_payments_in_tasks_a_request_starts_are_charged_to_it_and_to_what_it_is_part_of() -> None:
    async def shard(n: int) -> None:
        operations.started(f"job{n}")
        await trio.sleep(0)
        operations.charge("job", 10)
        operations.charge("check", 1)

    with operations.spending() as outer:
        with operations.spending() as inner:
            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(shard, n)
        operations.charge("calibration", 5)
    operations.charge("job", 1000)  # outside any request: nobody's
    assert inner.to_json() == {"job": 30, "check": 3, "total": 33}
    assert outer.to_json() == {"job": 30, "check": 3, "calibration": 5, "total": 38}
    assert sorted(outer.jobs) == ["job0", "job1", "job2"] and operations.current() is None
    assert outer.describe() == "paid 38 µcr (calibration 5, check 3, job 30)"
    assert operations.describe_paid({"total": 0}) == "paid nothing"


async def test_a_run_is_found_by_its_id_or_a_job_it_started_and_stopped_by_a_hangup() -> None:
    runs, hangup = Runs("map"), Hangup()
    stopped = []

    async def work(run_id: str, job: str) -> None:
        with operations.spending() as account, runs.open(run_id, account, 0.0, hangup) as run:
            operations.started(job)
            await trio.sleep_forever()
        stopped.append((run_id, run.reason))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work, "aaaa1111", "cccc3333")
        nursery.start_soon(work, "bbbb2222", "dddd4444")
        await trio.testing.wait_all_tasks_blocked()
        assert runs.find("aaaa").id == "aaaa1111" and runs.find("dddd4").id == "bbbb2222"
        assert runs.find("eeee") is None and runs.find("") is None
        with pytest.raises(AlreadyRunning, match="map aaaa1111 is already running"):
            with runs.open("aaaa1111", operations.Spending(), 0.0):
                pass
        runs.find("cccc").cancel("by p2pnode cancel")
        await trio.testing.wait_all_tasks_blocked()
        assert stopped == [("aaaa1111", "by p2pnode cancel")] and list(runs.live) == ["bbbb2222"]
        hangup.set()
    assert stopped[1] == ("bbbb2222", "its client went away") and not runs.live
    late = Hangup()
    late.set()
    with runs.open("ffff", operations.Spending(), 0.0, late) as run:  # gone before it started: stops at once
        await trio.sleep_forever()
    assert run.cancelled
