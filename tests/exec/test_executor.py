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


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


async def test_jobs_go_to_each_gpus_slots_and_workers_see_only_their_gpu() -> None:
    """Two GPUs offered (0 and 2), one slot each: jobs alternate between them, each worker's
    environment names only its GPU, and a third job waits for a free slot."""
    params = {"m": 64, "n": 64, "k": 64, "dtype": "int8", "seed": 1}
    async with Executor(devices=(0, 2), cpu_threads=1) as ex:
        assert ex.slots == 2 and ex.slots_per_device == 1
        placed = [(await ex.run("matmul", params)).device for _ in range(4)]
        assert placed == [0, 2, 0, 2]  # least busy, then least recently used
        for device, workers in ex._idle.items():
            assert workers, device
            for w in workers:
                env = _environ(w.proc.pid)
                assert env["CUDA_VISIBLE_DEVICES"] == str(device)
                assert env["OMP_NUM_THREADS"] == env["P2PNODE_CPU_THREADS"] == "1"
        # at once: both slots busy, a third job waits until one frees
        results: list[int | None] = []

        async def one() -> None:
            results.append((await ex.run("matmul", {**params, "m": 256, "n": 256, "k": 256})).device)

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            assert ex.running == 2 and ex.busy == {0: 1, 2: 1}
        assert sorted(results) in ([0, 0, 2], [0, 2, 2])
        assert ex.running == 0 and ex.busy == {0: 0, 2: 0}


async def test_max_jobs_caps_slots_across_gpus() -> None:
    async with Executor(devices=(0, 1), slots=2, max_jobs=3) as ex:
        assert ex.slots == 3 and ex.load == 0
        params = {"m": 256, "n": 256, "k": 256, "dtype": "fp32", "seed": 1}
        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(ex.run, "matmul", params)
            await trio.testing.wait_all_tasks_blocked()
            assert ex.running == 3 and max(ex.busy.values()) == 2 and ex.load == 1.0
        assert ex.completed == 4


async def test_speed_is_measured_in_a_worker_which_then_runs_jobs() -> None:
    async with Executor(cpu_threads=1) as ex:
        pids = _worker_pids(ex)
        speeds = await ex.calibrate(0.02, use_gpu=False)
        assert speeds["matmul_f32_numpy"] > 0 and _worker_pids(ex) == pids  # no new process for it
        assert (await ex.run("matmul", {"m": 8, "n": 8, "k": 8, "dtype": "int8", "seed": 1})).output.arrays["c"].shape \
            == (8, 8)


async def test_an_input_written_into_the_spool_reaches_the_worker_without_a_copy() -> None:
    """A provider opens a fetched blob straight into a spool file (``input_buffer``): the worker
    maps that file, no second file is written for it, and the file goes with the last view of it."""
    import gc

    n = 1024  # 4 MiB a matrix: spooled
    p = {"m": n, "n": n, "k": n, "dtype": "fp32", "inputs": "blob", "seed": 1}
    rng = np.random.default_rng(3)
    async with Executor() as ex:
        assert ex._spool is not None
        put = ex._spool.put
        copied: list[int] = []
        ex._spool.put = lambda array: copied.append(array.nbytes) or put(array)  # type: ignore[method-assign]
        a = ex.input_buffer(np.float32, (n, n))
        a[:] = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        own = ex._spool.file_of(a)
        assert own is not None and os.path.getsize(own) == a.nbytes
        assert ex._spool.file_of(b) is None and ex._spool.file_of(a[1:]) is None  # not the whole of a buffer
        r = await ex.run("matmul", p, inputs={"a": a, "b": b})
        assert np.allclose(r.output.arrays["c"], a @ b, rtol=1e-4, atol=1e-3)
        assert copied == [b.nbytes]  # b was written into the spool; a already was
        assert os.path.exists(own)  # still ours while we hold it (a worker may need it again)
        r = await ex.run("matmul", p, inputs={"a": a.reshape(n, n), "b": b})  # a view of the whole: the same file
        assert copied == [b.nbytes] * 2
        del a, r
        gc.collect()
        assert not os.path.exists(own)
        small = ex.input_buffer(np.float32, (4, 4))  # under SPOOL_MIN: plain memory
        assert ex._spool.file_of(small) is None
