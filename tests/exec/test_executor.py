from __future__ import annotations

import os
import time

import numpy as np
import pytest
import trio

from p2pnode.errors import ExecFailure, WorkloadError
from p2pnode.exec import workloads
from p2pnode.exec.executor import Executor

BIG = dict(steps=10_000, batch=2048, d_in=2048, d_hidden=2048)  # runs for minutes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _worker_pids(ex: Executor) -> set[int]:
    return {w.proc.pid for w in ex._all}


async def test_a_job_runs_in_a_worker_with_progress() -> None:
    seen: list[float] = []
    async with Executor() as ex:
        assert "numpy" in ex.backends
        r = await ex.run("matmul", {"m": 64, "n": 64, "k": 64, "dtype": "int8", "seed": 4}, on_progress=seen.append)
        a, b = workloads.matmul_inputs(workloads.get("matmul").check({"m": 64, "n": 64, "k": 64, "dtype": "int8", "seed": 4}))
        assert np.array_equal(r.output.arrays["c"], a.astype(np.int32) @ b.astype(np.int32))
        assert seen[-1] == 1.0 and r.backend == "numpy" and r.seconds > 0
        assert ex.completed == 1 and ex.load == 0


async def test_bad_input_is_typed_and_the_executor_carries_on() -> None:
    async with Executor() as ex:
        with pytest.raises(WorkloadError) as info:
            await ex.run("nope", {})
        assert info.value.code == "unknown_workload"
        with pytest.raises(WorkloadError):
            await ex.run("matmul", {"m": -1, "n": 1, "k": 1})
        with pytest.raises(ExecFailure) as fail:
            await ex.run("matmul", {"m": 8, "n": 8, "k": 8}, backend="cuda" if "cuda" not in ex.backends else "nope")
        assert fail.value.code == "backend_unavailable"
        assert (await ex.run("infer", {"batch": 2})).output.arrays["y"].shape == (2, 64)


async def test_timeout_kills_the_work() -> None:
    async with Executor() as ex:
        pids = _worker_pids(ex)
        t0 = time.perf_counter()
        with pytest.raises(ExecFailure) as info:
            await ex.run("train_step", BIG, timeout=0.5)
        assert info.value.code == "timeout"
        assert time.perf_counter() - t0 < 5
        with trio.fail_after(5):
            while any(_alive(p) for p in pids):
                await trio.sleep(0.02)
        await ex.run("matmul", {"m": 4, "n": 4, "k": 4})  # a fresh worker takes over
        assert ex.failed["timeout"] == 1


async def test_cancellation_kills_the_work() -> None:
    async with Executor() as ex:
        pids = _worker_pids(ex)
        with trio.move_on_after(0.5) as scope:
            await ex.run("train_step", BIG)
        assert scope.cancelled_caught
        with trio.fail_after(5):
            while any(_alive(p) for p in pids):
                await trio.sleep(0.02)
        assert ex.running == 0


async def test_a_crashed_worker_fails_only_its_job() -> None:
    async with Executor() as ex:
        async with trio.open_nursery() as nursery:
            async def killer() -> None:
                while ex.running == 0:
                    await trio.sleep(0.01)
                for pid in _worker_pids(ex):
                    os.kill(pid, 9)  # what the kernel's OOM killer or a driver fault does

            nursery.start_soon(killer)
            with pytest.raises(ExecFailure, match="SIGKILL") as info:
                await ex.run("train_step", BIG)
        assert info.value.code == "crashed"
        assert (await ex.run("matmul", {"m": 4, "n": 4, "k": 4})).backend == "numpy"


async def test_admission_by_memory() -> None:
    need = workloads.get("matmul").memory({"m": 256, "n": 256, "k": 256})
    async with Executor(slots=2, memory_limit=int(need * 1.5)) as ex:
        with pytest.raises(ExecFailure) as info:
            await ex.run("matmul", {"m": 512, "n": 512, "k": 512})
        assert info.value.code == "no_capacity"
        most = 0

        def watch(_: float) -> None:
            nonlocal most
            most = max(most, ex.running)

        async with trio.open_nursery() as nursery:
            for seed in range(4):
                nursery.start_soon(lambda s=seed: ex.run("matmul", {"m": 256, "n": 256, "k": 256, "seed": s},
                                                         on_progress=watch))
        assert most == 1  # two slots, but memory admits one such job at a time
        assert ex.completed == 4
