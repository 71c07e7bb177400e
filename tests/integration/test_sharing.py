"""A node shares what its operator chooses: which GPUs, how many jobs on each, how much GPU memory,
how many CPU threads, and when; the ad says exactly that, and jobs run within it."""

from __future__ import annotations

from datetime import datetime, timedelta

import trio

from tests.integration.swarm import node_config, start_node
from tests.telemetry.test_probe import H100, fake_nvml

RICH = 10**9


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item)


async def test_the_ad_offers_the_chosen_gpus_slots_memory_and_threads() -> None:
    nv = fake_nvml([H100, dict(H100, util=3), dict(H100, util=9)])
    async with trio.open_nursery() as nursery:
        gpu = await start_node(nursery, node_config(gpus="0,2", slots=2, max_jobs=3, max_gpu_mem="16G",
                                                    cpu_threads=1), nvml=nv)
        me = await start_node(nursery, node_config(provide=False, bootstrap=[gpu.node.addrs()[0]]))
        pid = gpu.node.identity.peer_id
        await me.node.wait_until(lambda: pid in me.node.table, timeout=15)
        ad = me.node.table.get(pid).ad  # type: ignore[union-attr]
        assert [(g.index, g.utilization) for g in ad.gpus] == [(0, 37), (2, 9)]
        assert all(g.memory_total == g.memory_free == 16 << 30 for g in ad.gpus)
        assert all((g.slots, g.busy) == (2, 0) for g in ad.gpus)
        assert ad.cpu.cores == 1
        ex = gpu.node.executor
        assert ex is not None and ex.devices == (0, 2) and ex.slots == 3
        slots = gpu.node.status_view()["slots"]
        assert slots == {"total": 3, "per_device": 2, "devices": [{"gpu": 0, "busy": 0}, {"gpu": 2, "busy": 0}]}
        # a job runs in a worker that sees one offered GPU and the thread cap
        rec = await me.node.jobs.submit("matmul", {"m": 32, "n": 32, "k": 32, "dtype": "int8", "seed": 2},
                                        max_price=RICH, deadline_s=30, k=1)
        assert rec.state == "done", rec.outcome
        envs = [_environ(w.proc.pid) for w in ex._all]
        assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} <= {"0", "2"}
        assert all(e["OMP_NUM_THREADS"] == "1" for e in envs)
        nursery.cancel_scope.cancel()


def _window_excluding_now() -> str:
    later = datetime.now() + timedelta(hours=2)
    return f"{later:%H}:00-{(later + timedelta(hours=1)):%H}:00"


async def test_outside_its_schedule_a_node_offers_nothing_until_its_window() -> None:
    async with trio.open_nursery() as nursery:
        off = await start_node(nursery, node_config(schedule=[_window_excluding_now()]))
        on = await start_node(nursery, node_config(schedule=["00:00-24:00"], bootstrap=[off.node.addrs()[0]]))
        pid = off.node.identity.peer_id
        await on.node.wait_until(lambda: pid in on.node.table, timeout=15)
        assert on.node.table.get(pid).ad.offers == ()  # type: ignore[union-attr]
        assert off.node._capacity().paused and not on.node._capacity().paused
        notes = off.node.status_view()["notes"]
        assert any(n.startswith("outside its schedule: no new jobs until") for n in notes), notes
        # resume does not override the schedule; pause and resume still work inside it
        answer = await off.node.pause(False)
        assert answer["paused"] and answer["off_schedule"] and not answer["operator"]
        assert (await on.node.pause(True))["paused"]
        assert not (await on.node.pause(False))["paused"]
        nursery.cancel_scope.cancel()
