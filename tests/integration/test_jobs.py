"""Real jobs between real nodes on loopback: auction, execution, verification, failures."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import trio

from p2pnode.errors import WorkloadError
from p2pnode.exec import backends, workloads
from p2pnode.services.requester import JobError
from p2pnode.wire.names import JOB_PROTOCOL
from tests.integration.swarm import all_list_all, node_config, start_node, swarm
from tests.integration.test_cli import NodeProcess

LONG = {"steps": 4000, "batch": 4096, "d_in": 128, "d_hidden": 16}  # ~20 s of work, a small output
RICH = 10**9


async def _wait_running(provider: object, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not provider.executor.running:  # type: ignore[attr-defined]
            await trio.sleep(0.02)


async def _wait_idle(provider: object, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while provider.executor.running:  # type: ignore[attr-defined]
            await trio.sleep(0.02)


@pytest.mark.parametrize(("workload", "params"), [
    ("matmul", {"m": 48, "n": 40, "k": 64, "dtype": "int8", "seed": 3}),
    ("matmul", {"m": 32, "n": 32, "k": 96, "dtype": "fp32", "seed": 4}),
    ("infer", {"batch": 16, "d_in": 32, "d_hidden": 64, "d_out": 8, "layers": 3, "seed": 5}),
    ("train_step", {"steps": 25, "lr": 0.05, "seed": 6}),
])
async def test_each_workload_completes_with_a_checked_result(workload: str, params: dict[str, object]) -> None:
    async with swarm(3, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        rec = await nodes[0].node.jobs.submit(workload, params, max_price=RICH, deadline_s=30)
        assert rec.state == "done", rec.outcome
        wl = workloads.get(workload)
        p = wl.check(params)
        local = wl.run(p, backends.ops("numpy"), lambda f: None)
        assert rec.output is not None and wl.agree(p, rec.output, local)
        if wl.comparison(p) == "exact" or workload == "train_step":
            assert rec.output.digest == local.digest  # same backend: bit for bit
        if workload == "matmul":
            assert rec.outcome.startswith("verified (Freivalds")
        kinds = [e["event"] for e in rec.events]
        assert kinds[0] == "request" and "award" in kinds and kinds[-1] == "done"
        provider = next(r.node for r in nodes if r.node.peer_id == rec.peer)
        assert provider.jobs.records[-1].state == "done"  # it got the signed receipt
        # privacy: the seed (hence the inputs and the output) reached the winner alone, sealed
        for r in nodes[1:]:
            seen = [j for j in r.node.jobs.records if j.job == rec.job]
            assert seen and "seed" not in seen[0].params


async def test_bad_input_is_refused_before_the_network() -> None:
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        jobs = nodes[0].node.jobs
        with pytest.raises(WorkloadError, match="unknown workload"):
            await jobs.submit("nope", {}, max_price=RICH, deadline_s=10)
        with pytest.raises(WorkloadError) as info:
            await jobs.submit("matmul", {"m": 0, "n": 1, "k": 1}, max_price=RICH, deadline_s=10)
        assert info.value.code == "bad_params"
        with pytest.raises(JobError, match="already past"):
            await jobs.submit("matmul", {"m": 4, "n": 4, "k": 4}, max_price=RICH, deadline_s=0)
        with pytest.raises(JobError, match="no provider"):
            await jobs.submit("matmul", {"m": 4, "n": 4, "k": 4}, max_price=RICH, deadline_s=10, backend="cupy")


async def test_a_price_nobody_meets_and_an_output_over_the_limit() -> None:
    async with swarm(3, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        jobs = nodes[0].node.jobs
        rec = await jobs.submit("matmul", {"m": 64, "n": 64, "k": 4096}, max_price=1, deadline_s=10)
        assert rec.state == "no_provider"
        assert {e["code"] for e in rec.events if e["event"] == "decline"} == {"price"}
        rec = await jobs.submit("matmul", {"m": 16384, "n": 16384, "k": 8}, max_price=RICH, deadline_s=10)  # 1 GiB out
        assert rec.state == "no_provider"
        assert {e["code"] for e in rec.events if e["event"] == "decline"} == {"bad_params"}


async def test_cancel_from_the_requester_stops_the_work() -> None:
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run() -> None:
                with scope:
                    await requester.jobs.submit("train_step", LONG, max_price=RICH, deadline_s=600, k=1)

            nursery.start_soon(run)
            await _wait_running(provider)
            scope.cancel()
        await _wait_idle(provider)
        with trio.fail_after(10):
            while provider.jobs.records[-1].state != "cancelled":
                await trio.sleep(0.02)


async def test_a_requester_that_vanishes_frees_the_provider(data_dir: Path) -> None:
    import subprocess
    import sys

    from tests.integration.test_cli import ENV

    async with trio.open_nursery() as nursery:
        provider = (await start_node(nursery, node_config())).node
        requester = NodeProcess(data_dir, "--no-provide", "--bootstrap", provider.addrs()[0])
        try:
            with trio.fail_after(30):
                while not requester.json("market"):
                    await trio.sleep(0.1)
            submit = subprocess.Popen(
                [sys.executable, "-m", "p2pnode", "submit", "train_step", "--data-dir", str(data_dir),
                 "--max-price", str(RICH), "--deadline", "600", "--json",
                 *[f"-p{k}={v}" for k, v in LONG.items()]],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
            await _wait_running(provider)
            os.kill(requester.proc.pid, signal.SIGKILL)  # the requester's node dies mid-job
            await _wait_idle(provider)
            with trio.fail_after(10):  # the executor frees its slot a moment before the record ends
                while provider.jobs.records[-1].state == "running":
                    await trio.sleep(0.02)
            assert provider.jobs.records[-1].state == "cancelled"
            assert provider.jobs.records[-1].outcome == "requester gone"
            submit.wait(timeout=30)
        finally:
            requester.proc.kill()
            requester.proc.wait()
        nursery.cancel_scope.cancel()


async def test_reaward_when_a_provider_node_stops_mid_job() -> None:
    async with trio.open_nursery() as nursery:
        providers = [await start_node(nursery, node_config()) for _ in range(2)]
        requester = await start_node(nursery, node_config(bootstrap=[p.node.addrs()[0] for p in providers],
                                                          provide=False))
        await requester.node.wait_until(lambda: all(p.node.identity.peer_id in requester.node.table
                                                    for p in providers), 20)
        awarded: list[str] = []

        def on_event(e: dict[str, object]) -> None:
            if e["event"] == "award":
                awarded.append(str(e["provider"]))
                if len(awarded) == 1:
                    next(p for p in providers if p.node.peer_id == e["provider"]).stop()

        rec = await requester.node.jobs.submit("train_step", {"steps": 30}, max_price=RICH, deadline_s=60,
                                               on_event=on_event)
        assert rec.state == "done" and len(awarded) == 2 and rec.peer == awarded[1] != awarded[0]
        assert any(e["event"] == "lost" for e in rec.events)
        nursery.cancel_scope.cancel()


async def test_reaward_when_a_provider_process_is_killed(data_dir: Path) -> None:
    procs = [NodeProcess(Path(f"{data_dir}-{i}")) for i in range(2)]
    try:
        async with trio.open_nursery() as nursery:
            requester = await start_node(nursery, node_config(bootstrap=[p.addrs[0] for p in procs], provide=False))
            ids = {p.addrs[0].split("/p2p/")[1]: p for p in procs}
            await requester.node.wait_until(lambda: len(requester.node.table) >= 2, 30)
            awarded: list[str] = []

            def on_event(e: dict[str, object]) -> None:
                if e["event"] == "progress" and len(awarded) == 1 and ids[awarded[0]].proc.poll() is None:
                    os.kill(ids[awarded[0]].proc.pid, signal.SIGKILL)  # mid-job, for real
                elif e["event"] == "award":
                    awarded.append(str(e["provider"]))

            params = {"steps": 600, "batch": 2048, "d_in": 128, "d_hidden": 16}  # ~2 s of work
            rec = await requester.node.jobs.submit("train_step", params, max_price=RICH, deadline_s=120,
                                                   on_event=on_event)
            assert ids[awarded[0]].proc.wait(timeout=10) == -signal.SIGKILL
            assert rec.state == "done" and len(awarded) == 2 and rec.peer == awarded[1]
            local = workloads.get("train_step")
            assert rec.output.digest == local.run(local.check(params), backends.ops("numpy"),  # type: ignore[union-attr]
                                                  lambda f: None).digest
            nursery.cancel_scope.cancel()
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


async def test_garbage_on_the_job_protocol_is_penalised_and_the_node_carries_on() -> None:
    from libp2p.peer.id import ID

    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        stream = await requester.host.new_stream(ID(provider.identity.peer_id), [JOB_PROTOCOL])
        await stream.write(b"\x05hello")
        with trio.fail_after(10):
            while provider.penalties.score(requester.identity.peer_id, provider._clock()) == 0:
                await trio.sleep(0.02)
        rec = await requester.jobs.submit("matmul", {"m": 8, "n": 8, "k": 8}, max_price=RICH, deadline_s=20)
        assert rec.state == "done"


async def test_what_a_caller_keeps_of_an_output_is_kept_before_the_receipt_pays_for_it() -> None:
    """A map or a training writes each shard's output to disk in ``keep``: that happens before the
    provider is sent its paying receipt, so a requester killed at any moment has paid nothing it
    did not keep."""
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        seen: list[tuple[str, bool, list[str]]] = []

        async def keep(rec: object) -> None:
            job = getattr(rec, "job")
            theirs = [r.state for r in provider.jobs.records if r.job == job]
            seen.append((job, getattr(rec, "output") is not None, theirs))

        params = {"m": 32, "n": 32, "k": 64, "dtype": "int8", "seed": 12}
        rec = await requester.jobs.submit("matmul", params, max_price=RICH, deadline_s=30, keep=keep)
        assert rec.state == "done", rec.outcome
        assert len(seen) == 1 and seen[0][0] == rec.job and seen[0][1]
        assert seen[0][2] and "done" not in seen[0][2]  # the provider had not been paid yet
        await requester.wait_until(lambda: any(r.job == rec.job and r.state == "done" for r in provider.jobs.records),
                                   timeout=10)
        # stopped while it keeps the output (Ctrl-C, a client gone): the output kept is still paid for
        kept: list[str] = []
        with trio.CancelScope() as stop:
            async def keep_and_stop(rec: object) -> None:
                kept.append(getattr(rec, "job"))
                stop.cancel()
                await trio.sleep(0.2)  # shielded: the write finishes

            await requester.jobs.submit("matmul", {**params, "seed": 13}, max_price=RICH, deadline_s=30,
                                        keep=keep_and_stop)
        assert stop.cancelled_caught and len(kept) == 1
        await requester.wait_until(lambda: any(r.job == kept[0] and r.state == "done" for r in provider.jobs.records),
                                   timeout=10)
        assert requester.trust.ledger is not None
        paid = [e for e in requester.trust.ledger.entries() if e.kind == "receipt" and e.data["job"].hex() == kept[0]]
        assert len(paid) == 1 and paid[0].data["paid"] > 0


async def test_a_large_output_comes_back_as_a_blob() -> None:
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester = nodes[0].node
        params = {"m": 512, "n": 512, "k": 256, "dtype": "fp32", "seed": 11}  # 1 MiB of output
        rec = await requester.jobs.submit("matmul", params, max_price=RICH, deadline_s=30)
        assert rec.state == "done" and rec.outcome.startswith("verified (Freivalds")
        assert requester.blobs.fetched_bytes > 512 * 512 * 4  # it came as a (sealed) blob
        wl = workloads.get("matmul")
        p = wl.check(params)
        assert np.allclose(rec.output.arrays["c"], wl.run(p, backends.ops("numpy"), lambda f: None).arrays["c"])  # type: ignore[union-attr]


async def test_inputs_supplied_as_blobs_are_sent_once() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, size=(96, 64), dtype=np.int8)
    b = rng.integers(-128, 128, size=(64, 80), dtype=np.int8)
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        params = {"m": 96, "n": 80, "k": 64, "dtype": "int8", "inputs": "blob"}
        rec = await requester.jobs.submit("matmul", params, max_price=RICH, deadline_s=30, inputs={"a": a, "b": b})
        assert rec.state == "done" and rec.outcome.startswith("verified (Freivalds")
        assert np.array_equal(rec.output.arrays["c"], a.astype(np.int32) @ b.astype(np.int32))  # type: ignore[union-attr]
        fetched = provider.blobs.fetched_bytes
        assert fetched >= a.nbytes + b.nbytes
        rec = await requester.jobs.submit("matmul", params, max_price=RICH, deadline_s=30, inputs={"a": a, "b": b})
        assert rec.state == "done"
        assert provider.blobs.fetched_bytes == fetched and provider.blobs.store.hits == 2  # not sent twice
        # what the provider holds is ciphertext: the raw matrix bytes appear nowhere in its store
        assert all(a.tobytes()[:64] not in data for _, data in provider.blobs.store._blobs.values())
        with pytest.raises(WorkloadError, match="needs arrays"):
            await requester.jobs.submit("matmul", params, max_price=RICH, deadline_s=30)


async def test_a_large_input_is_opened_straight_into_its_workers_spool() -> None:
    """The provider opens a fetched input blob into a spool file, which its worker maps: the
    plaintext is written once, while the job still waits for its slot, and never copied again."""
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, size=(2048, 1024), dtype=np.int8)  # 2 MiB: spooled
    b = rng.integers(-128, 128, size=(1024, 16), dtype=np.int8)
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        spool = provider.executor._spool
        assert spool is not None
        copied: list[int] = []
        put = spool.put
        spool.put = lambda array: copied.append(array.nbytes) or put(array)  # type: ignore[method-assign]
        params = {"m": 2048, "n": 16, "k": 1024, "dtype": "int8", "inputs": "blob"}
        rec = await requester.jobs.submit("matmul", params, max_price=RICH, deadline_s=30, inputs={"a": a, "b": b})
        assert rec.state == "done", rec.outcome
        assert np.array_equal(rec.output.arrays["c"], a.astype(np.int32) @ b.astype(np.int32))  # type: ignore[union-attr]
        assert copied == []  # a went into the spool as it was opened; b is too small to be spooled
        assert not list(spool.dir.glob("in-*"))  # and its file went with the job
        # the provider keeps them as inputs used once: within its budget for those
        store = provider.blobs.store
        assert store._transient_bytes >= a.nbytes and set(store._transient) <= set(store._blobs)


async def test_infer_with_weights_from_blobs() -> None:
    rng = np.random.default_rng(1)
    params = {"batch": 4, "d_in": 8, "d_hidden": 16, "d_out": 3, "layers": 2, "inputs": "blob"}
    inputs = {"x": rng.standard_normal((4, 8), dtype=np.float32),
              "w0": rng.standard_normal((8, 16), dtype=np.float32), "b0": rng.standard_normal(16, dtype=np.float32),
              "w1": rng.standard_normal((16, 3), dtype=np.float32), "b1": rng.standard_normal(3, dtype=np.float32)}
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        rec = await nodes[0].node.jobs.submit("infer", params, max_price=RICH, deadline_s=30, inputs=inputs)
        assert rec.state == "done"
        expected = np.maximum(inputs["x"] @ inputs["w0"] + inputs["b0"], 0) @ inputs["w1"] + inputs["b1"]
        assert np.allclose(rec.output.arrays["y"], expected, rtol=1e-5, atol=1e-6)  # type: ignore[union-attr]


async def test_a_job_past_its_deadline_expires_on_both_sides(tmp_path: Path) -> None:
    # a provider that believes itself fast bids on a job it cannot finish in time (what its start-up
    # calibration measures on a busy machine would make it decline instead)
    fast = tmp_path / "speeds.json"
    fast.write_text('{"matmul_f32_numpy": 100000.0}')
    async with swarm(2, line=False, calibration_file=str(fast)) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        rec = await requester.jobs.submit("train_step", LONG, max_price=RICH, deadline_s=3)
        assert rec.state == "expired"
        await _wait_idle(provider)
        with trio.fail_after(10):
            while provider.jobs.records[-1].state not in ("cancelled", "expired"):
                await trio.sleep(0.02)


async def test_a_provider_killed_after_its_result_is_replaced_not_blamed(data_dir: Path) -> None:
    """The provider dies after sending a result whose output is a blob, before the requester has
    fetched it: the fetch fails because the provider is gone, so the job is re-awarded (and nothing
    is paid for the lost result), not rejected as a bad one."""
    procs = [NodeProcess(Path(f"{data_dir}-{i}")) for i in range(2)]
    try:
        async with trio.open_nursery() as nursery:
            requester = await start_node(nursery, node_config(bootstrap=[p.addrs[0] for p in procs], provide=False))
            ids = {p.addrs[0].split("/p2p/")[1]: p for p in procs}
            await requester.node.wait_until(lambda: len(requester.node.table) >= 2, 30)
            awarded: list[str] = []

            def on_event(e: dict[str, object]) -> None:
                if e["event"] == "award":
                    awarded.append(str(e["provider"]))
                elif e["event"] == "result" and len(awarded) == 1:
                    os.kill(ids[str(e["provider"])].proc.pid, signal.SIGKILL)  # before the output is fetched

            params = {"m": 256, "n": 256, "k": 64, "dtype": "fp32", "seed": 21}  # 256 KiB out: a blob
            rec = await requester.node.jobs.submit("matmul", params, max_price=RICH, deadline_s=60,
                                                   on_event=on_event)
            assert ids[awarded[0]].proc.wait(timeout=10) == -signal.SIGKILL
            assert rec.state == "done" and len(awarded) == 2 and rec.peer == awarded[1], rec.outcome
            lost = [e for e in rec.events if e["event"] == "lost"]
            assert lost and "output unavailable" in str(lost[0]["reason"])
            wl = workloads.get("matmul")
            p = wl.check(params)
            assert np.allclose(rec.output.arrays["c"], wl.run(p, backends.ops("numpy"), lambda f: None).arrays["c"])  # type: ignore[union-attr]
            # the dead provider is remembered as a failure, not as a cheat, and was not paid
            from p2pnode.wire.peer_id import from_base58

            dead = from_base58(awarded[0])
            kinds = [e.kind for e in requester.node.trust.ledger.entries(peer=dead)]  # type: ignore[union-attr]
            assert "failure" in kinds and "receipt" not in kinds and "verification" not in kinds
            nursery.cancel_scope.cancel()
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


async def test_reserves_are_asked_only_when_the_first_candidates_do_not_answer() -> None:
    """One provider asked (``k=1``) and two held in reserve: the first bids, so the reserves are
    never sent the request, and no provider is penalised for a bid it was asked for."""
    async with swarm(4, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester = nodes[0].node
        rec = await requester.jobs.submit("matmul", {"m": 8, "n": 8, "k": 8}, max_price=RICH, deadline_s=30, k=1)
        assert rec.state == "done", rec.outcome
        asked = [r.node for r in nodes[1:] if any(j.job == rec.job for j in r.node.jobs.records)]
        assert [p.identity.peer_id_b58 for p in asked] == [rec.peer]
        now = requester._clock()
        assert [requester.penalties.score(r.node.identity.peer_id, now) for r in nodes[1:]] == [0, 0, 0]
