"""People's models on people's data across real nodes on loopback: answers equal local ONNX Runtime
row for row, a dataset spread over providers, a cheater caught on model work, a requester that is
killed and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trio

from p2pnode import models
from p2pnode.control.client import call
from p2pnode.exec import backends, model_jobs, onnx_model, workloads
from p2pnode.services import requester as requester_module
from p2pnode.services.mapper import MapService
from p2pnode.wire.peer_id import from_base58
from tests.integration.swarm import all_list_all, node_config, start_node, swarm
from tests.integration.test_cli import ENV, EXE, NodeProcess

RICH = 10**9


def _local(job: model_jobs.ModelJob) -> workloads.Output:
    params, inputs = job.shard(0, job.rows)
    wl = workloads.get("onnx")
    return wl.run(wl.check(params), backends.ops("ort-cpu"), lambda f: None, inputs)


async def test_a_trained_classifier_answers_as_it_does_locally_and_crosses_once() -> None:
    data = models.digits()
    job = model_jobs.prepare(data.model, {"": data.x})
    local = _local(job)
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        params, inputs = job.shard(0, job.rows)
        rec = await requester.jobs.submit("onnx", params, inputs=inputs, max_price=RICH, deadline_s=60,
                                          verify=job.verify)
        assert rec.state == "done" and rec.checked == "rows", rec.outcome
        out = rec.output
        assert out is not None and np.array_equal(out.arrays["label"], local.arrays["label"])
        assert np.allclose(out.arrays["probabilities"], local.arrays["probabilities"], rtol=1e-5, atol=1e-7)
        assert float((out.arrays["label"] == data.y).mean()) == pytest.approx(data.accuracy)
        # the provider got its signed receipt (a long verdict is cut to fit)
        await provider.wait_until(lambda: provider.jobs.records[-1].state == "done", timeout=10)
        assert requester.penalties.score(provider.identity.peer_id, requester.now()) == 0
        assert provider.penalties.score(requester.identity.peer_id, provider.now()) == 0
        fetched = provider.blobs.fetched_bytes
        assert fetched >= len(data.model)
        # the same model on other rows: only the new rows cross the network, the model does not
        params, inputs = job.shard(0, 100)
        rec = await requester.jobs.submit("onnx", params, inputs=inputs, max_price=RICH, deadline_s=60,
                                          verify=job.verify)
        assert rec.state == "done"
        rows_bytes = sum(a.nbytes for k, a in inputs.items() if k != "model")
        assert provider.blobs.store.hits >= 1  # the model came from its cache
        assert rows_bytes <= provider.blobs.fetched_bytes - fetched < rows_bytes + 1024


async def test_a_provider_runs_a_model_again_after_seven_others() -> None:
    """Its worker keeps four models: the first of seven, asked for again, is sent to it again."""
    from tests.exec.test_onnx_models import scale_model

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    jobs = {k: model_jobs.prepare(scale_model(k), {"": x}) for k in range(1, 8)}
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester, provider = nodes[0].node, nodes[1].node
        for k in [*jobs, 1]:
            params, inputs = jobs[k].shard(0, len(x))
            rec = await requester.jobs.submit("onnx", params, inputs=inputs, max_price=RICH, deadline_s=60,
                                              verify=jobs[k].verify)
            assert rec.state == "done" and rec.peer == provider.peer_id, rec.outcome
            assert rec.output is not None and np.array_equal(rec.output.arrays["y"], x * k)
        assert provider.executor is not None and provider.executor.failed == {}
        assert requester.trust.score(provider.identity.peer_id) > 0.5  # nothing held against it


async def test_a_model_its_graph_underprices_is_timed_and_mapped_without_a_provider_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Loop-heavy model counts ~1 FLOP a row by its graph and takes ~20 MFLOP-equivalents. Priced by
    its graph, every shard overran its estimate (3 × est + grace) on every provider and the map ran
    out of providers; priced by a timed probe, no shard overruns and nobody loses reputation."""
    from tests.exec.test_onnx_models import loop_heavy

    monkeypatch.setattr(requester_module, "OVERDUE_GRACE_S", 0.2)  # the overrun shows in a second
    x = np.random.default_rng(6).random((24_000, 64), dtype=np.float32)
    job = model_jobs.prepare(loop_heavy(), {"": x})
    async with swarm(3, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester = nodes[0].node
        result = await requester.maps.run(job, shard_rows=12_000, providers=2, max_price=RICH, deadline_s=120)
        assert result.retries == 0 and sum(result.by_provider.values()) == len(x)
        assert np.allclose(result.outputs["y"], _local(job).arrays["y"], rtol=1e-5, atol=1e-6)
        for r in nodes[1:]:
            assert not list(requester.trust.ledger.entries(kind="failure"))  # type: ignore[union-attr]
            assert requester.trust.score(r.node.identity.peer_id) >= 0.5


async def test_a_model_that_couples_its_rows_runs_whole_on_a_provider() -> None:
    """x − mean over the rows, 2500 rows: one job, one batch on the provider, ONNX Runtime's answer."""
    from tests.exec.test_row_coupling import centre

    x = np.random.default_rng(8).standard_normal((2500, 4)).astype(np.float32)
    job = model_jobs.prepare(centre(), {"": x})
    async with swarm(2, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        result = await nodes[0].node.maps.run(job, shard_rows=500, providers=2, max_price=RICH, deadline_s=60)
    sess, _ = backends.OrtOps("ort-cpu").session(centre())
    assert result.shards == 1 and result.verify == "rerun"
    assert np.allclose(result.outputs["y"], sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


async def test_a_dataset_spreads_over_providers_and_comes_back_in_order(tmp_path: Path) -> None:
    job = model_jobs.prepare(models.attention(tokens=8, dim=16), {"": np.random.default_rng(5).random((240, 8, 16))})
    async with swarm(4, line=False) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        requester = nodes[0].node
        result = await requester.maps.run(job, shard_rows=40, providers=3, max_price=RICH, deadline_s=60)
        assert result.shards == 6 and sum(result.by_provider.values()) == 240
        assert len(result.by_provider) >= 2
        assert np.allclose(result.outputs["y"], _local(job).arrays["y"], rtol=1e-5, atol=1e-6)
        assert result.checked_rows == 240  # shards under 90 rows are checked whole
        receipts = [e for e in requester.trust.ledger.entries(kind="receipt")]  # type: ignore[union-attr]
        assert len(receipts) >= 6


async def test_a_cheater_on_model_work_is_caught_and_its_shards_redone(tmp_path: Path) -> None:
    """Five providers on five loopback addresses, so checkers and referees are independent; one returns
    garbage. Its shard is re-run on sampled rows, the referee agrees with the checker, the cheat is
    gossiped with its evidence, and the shard is done again by an honest provider."""
    data = models.digits()
    job = model_jobs.prepare(data.model, {"": data.x})
    async with trio.open_nursery() as nursery:
        providers = []
        for i in range(5):
            flags = {"adversary": "garbage"} if i == 0 else {}
            providers.append(await start_node(nursery, node_config(listen=[f"/ip4/127.0.0.{20 + i}/tcp/0"], **flags)))
        requester = (await start_node(nursery, node_config(listen=["/ip4/127.0.0.30/tcp/0"], provide=False,
                                                           bootstrap=[p.node.addrs()[0] for p in providers]))).node
        cheater = providers[0].node.identity.peer_id
        await requester.wait_until(lambda: len(requester.table) >= 5, 30)
        # the cheater gets the first shard (as the best ranked provider would)
        requester.jobs.scorer.reputation = lambda peer: 0.01 if peer == cheater else 1.0
        maps = MapService(submit=requester.jobs.submit,
                          candidates=lambda *a: sorted(requester.jobs.candidates(*a),
                                                       key=lambda ad: ad.peer_id != cheater),
                          now=requester.now, state_dir=requester.config.data_dir / "maps")
        events: list[dict[str, object]] = []
        result = await maps.run(job, shard_rows=150, providers=1, max_price=RICH, deadline_s=60,
                                on_event=events.append)
        assert np.array_equal(result.outputs["label"], _local(job).arrays["label"])
        assert from_base58(next(iter(result.by_provider))) != cheater or len(result.by_provider) > 1
        assert cheater not in {from_base58(p) for p in result.by_provider}
        assert result.retries >= 1 and any(e.get("state") == "retry" for e in events)
        disputes = list(requester.trust.ledger.entries(kind="dispute"))  # type: ignore[union-attr]
        assert disputes and disputes[0].peer == cheater and disputes[0].data["wrong"] == "provider"
        assert requester.trust.distrusted(cheater)
        assert requester.trust.reports_published >= 1
        nursery.cancel_scope.cancel()


def test_a_requester_killed_mid_dataset_resumes_where_it_stopped(data_dir: Path) -> None:
    rows, shard = 1200, 40  # 30 shards: enough that the kill lands mid-way, two shards in flight at a time
    job = model_jobs.prepare(models.cnn(channels=16), {"": models.images(rows, seed=9)})
    model_path, data_path, out_path = data_dir / "m.onnx", data_dir / "x.npy", data_dir / "out.npy"
    raw, _ = onnx_model.unpack(job.blob)
    model_path.write_bytes(raw)
    np.save(data_path, job.arrays["image"])
    providers = [NodeProcess(Path(f"{data_dir}-p{i}")) for i in range(2)]
    req_dir = Path(f"{data_dir}-req")
    boot = [a for p in providers for a in ("--bootstrap", p.addrs[0])]
    requester = NodeProcess(req_dir, "--no-provide", *boot)
    submit = [*EXE, "submit", "map", "--model", str(model_path), "--input", str(data_path), "--output", str(out_path),
              "--shard-rows", str(shard), "--providers", "1", "--json", "--data-dir", str(req_dir)]
    try:
        call(req_dir / "control.sock", "wait", timeout=40, what="market", count=2, timeout_s=30)
        first = subprocess.Popen(submit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        # let a few shards finish (the node says when), then kill the requester's node
        call(req_dir / "control.sock", "wait", timeout=70, what="shards", count=3, timeout_s=60)
        assert first.poll() is None, first.communicate()
        os.kill(requester.proc.pid, signal.SIGKILL)
        requester.proc.wait()
        first.communicate(timeout=30)
        assert first.returncode != 0  # the submit lost its node
        finished = MapService._load(next((req_dir / "maps").glob("*/shards.jsonl")).parent)
        requester = NodeProcess(req_dir, "--no-provide", *boot)  # restarted, same data dir
        call(req_dir / "control.sock", "wait", timeout=40, what="market", count=2, timeout_s=30)
        second = subprocess.run(submit, capture_output=True, text=True, env=ENV, timeout=120)
        assert second.returncode == 0, second.stderr
        summary = json.loads(second.stdout)
        assert summary["resumed"] == len(finished) >= 3
        assert sum(summary["by_provider"].values()) == rows - shard * len(finished)  # nothing run or paid twice
        assert np.allclose(np.load(out_path), _local(job).arrays["probabilities"], rtol=1e-5, atol=1e-7)
    finally:
        for p in [*providers, requester]:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
