"""People's own models trained across real nodes on loopback: scikit-learn's digits trained by two
providers at a time reach the very weights of training locally with the same seeds, and so does a
tiny transformer trained on the standard library's docstrings, a requester
stopped mid-way resumes from its checkpoint and pays nothing twice, and a cheater's round is
refused, redone by an honest provider, and lands in the ledger and reputation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from p2pnode.exec import train_model as tm
from p2pnode.protocol import rounds
from p2pnode.services.trainer import TrainCancelled, TrainService
from p2pnode.wire.peer_id import from_base58
from tests.integration.swarm import node_config, start_node

RICH = 10**9


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _plan(**kw: Any) -> rounds.Plan:
    spec = tm.parse({"inputs": 64, "layers": [["dense", 16], ["relu"], ["dense", 10]], "loss": "xent",
                     "optimizer": "adamw"})
    base: dict[str, Any] = {"rounds": 3, "local_steps": 6, "shards": 2, "lr": 0.01, "batch": 32, "seed": 7,
                            "outer": "nesterov"}
    base.update(kw)
    return rounds.Plan(spec, **base)


async def _swarm(nursery: trio.Nursery, n: int, adversary: str = "") -> tuple[Any, list[Any]]:
    """``n`` providers on addresses of their own (checkers and referees independent of each other),
    the first one ``adversary``, and a requester that provides nothing."""
    providers = []
    for i in range(n):
        flags = {"adversary": adversary} if i == 0 and adversary else {}
        providers.append((await start_node(nursery, node_config(listen=[f"/ip4/127.0.0.{40 + i}/tcp/0"],
                                                                **flags))).node)
    requester = (await start_node(nursery, node_config(listen=["/ip4/127.0.0.50/tcp/0"], provide=False,
                                                       bootstrap=[p.addrs()[0] for p in providers]))).node
    await requester.wait_until(lambda: len(requester.table) >= n, 30)
    return requester, providers


async def test_providers_train_the_digits_as_local_training_does_and_a_stopped_run_resumes() -> None:
    x, y = _digits()
    plan = _plan()
    w0 = tm.init_weights(plan.spec, 0)
    local = rounds.train_locally(plan, w0, x, y)
    async with trio.open_nursery() as nursery:
        requester, _ = await _swarm(nursery, 3)
        trainer = requester.trainer
        events: list[dict[str, Any]] = []

        def stop_after_round_one(e: dict[str, Any]) -> None:
            events.append(e)
            if e["event"] == "round" and e["round"] == 1:
                trainer.runs.live[rounds.job_id(plan, w0, x, y)].cancel("stopped by the test")

        with pytest.raises(TrainCancelled, match="after round 1 of 3"):
            await trainer.run(plan, w0, x, y, max_price=RICH, deadline_s=60, on_event=stop_after_round_one)
        first_loss = next(e["loss"] for e in events if e["event"] == "round")
        result = await trainer.run(plan, w0, x, y, max_price=RICH, deadline_s=60, on_event=events.append)
        assert result.resumed_from == 1 and len(result.losses) == 3
        assert result.losses[0] == pytest.approx(first_loss, abs=1e-6)
        # bit for bit the weights of training locally with the same seeds (CPU, float32, one NumPy)
        assert np.array_equal(result.weights, local)
        assert result.losses[-1] == pytest.approx(tm.evaluate(plan.spec, local, x, y), abs=1e-6)
        assert result.losses[-1] < result.losses[0] < tm.evaluate(plan.spec, w0, x, y)
        # the second run trained rounds 2 and 3 only: nothing run or paid twice
        assert sum(result.by_provider.values()) == 2 * plan.shards and result.retries == 0
        done = [e for e in events if e["event"] == "shard" and e["state"] == "done"]
        assert len(done) == 3 * plan.shards and all(e["checked"] == "steps" for e in done)
        ledger = requester.trust.ledger
        checks = [e for e in ledger.entries(kind="verification") if e.data["method"] == "steps"]
        assert len(checks) == 3 * plan.shards and all(e.data["passed"] for e in checks)
        nursery.cancel_scope.cancel()


async def test_a_tiny_transformer_trains_on_the_standard_librarys_docstrings_as_locally(tmp_path: Path) -> None:
    """A character-level language model (embedding, one attention block, an MLP block, layer norm)
    trained by two providers, every result's sampled steps re-run by a third."""
    import collections
    import inspect

    from p2pnode import train_io

    text = "\n".join(inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(collections))
    x, y = train_io.text_windows(text, 16, stride=4)
    spec = tm.parse({"inputs": 16, "vocab": len(train_io.TEXT_CHARS), "loss": "xent", "optimizer": "adamw",
                     "layers": [["embed", 16], ["attention", 2], ["mlp", 32], ["layernorm"], ["last"], ["dense", 96]]})
    plan = rounds.Plan(spec, rounds=2, local_steps=8, shards=2, lr=0.01, batch=16, seed=11)
    w0 = tm.init_weights(spec, 11)
    local = rounds.train_locally(plan, w0, x, y)
    async with trio.open_nursery() as nursery:
        requester, _ = await _swarm(nursery, 3)
        trainer = TrainService(submit=requester.jobs.submit, candidates=requester.jobs.candidates, now=requester.now,
                               state_dir=tmp_path)
        events: list[dict[str, Any]] = []
        result = await trainer.run(plan, w0, x, y, max_price=RICH, deadline_s=60, on_event=events.append)
        assert np.array_equal(result.weights, local)  # bit for bit: CPU, float32, one NumPy
        assert result.losses[-1] == pytest.approx(tm.evaluate(spec, local, x, y), abs=1e-6)
        assert result.losses[-1] < result.losses[0] < tm.evaluate(spec, w0, x, y)
        done = [e for e in events if e["event"] == "shard" and e["state"] == "done"]
        assert len(done) == 2 * plan.shards and all(e["checked"] == "steps" for e in done)
        assert all(e["outcome"].startswith("verified") for e in done), done
        nursery.cancel_scope.cancel()


async def test_a_cheating_trainer_is_caught_its_round_redone_and_it_is_distrusted(tmp_path: Path) -> None:
    x, y = _digits()
    plan = _plan(rounds=1, outer="avg")
    w0 = tm.init_weights(plan.spec, 0)
    async with trio.open_nursery() as nursery:
        requester, providers = await _swarm(nursery, 4, adversary="scale:3")
        cheater = providers[0].identity.peer_id
        trainer = TrainService(submit=requester.jobs.submit, now=requester.now, state_dir=tmp_path,
                               candidates=lambda *a: sorted(requester.jobs.candidates(*a),
                                                            key=lambda ad: ad.peer_id != cheater))
        events: list[dict[str, Any]] = []
        result = await trainer.run(plan, w0, x, y, max_price=RICH, deadline_s=60, on_event=events.append)
        assert np.array_equal(result.weights, rounds.train_locally(plan, w0, x, y))
        assert [from_base58(p) for p in result.caught] == [cheater] and result.retries == 1
        assert cheater not in {from_base58(p) for p in result.by_provider}
        caught = [e for e in events if e["event"] == "shard" and e["state"] == "caught"]
        assert len(caught) == 1 and "wrong" in caught[0]["outcome"]
        ledger = requester.trust.ledger
        # caught as a provider; as a checker of another's round (it cheats there too) the referee sides
        # against it as well
        disputes = list(ledger.entries(kind="dispute"))
        assert [e.peer for e in disputes if e.data["wrong"] == "provider"] == [cheater]
        assert all(e.data["checker"] == cheater for e in disputes if e.data["wrong"] == "checker")
        failed = [e for e in ledger.entries(kind="verification") if not e.data["passed"]]
        assert [e.peer for e in failed] == [cheater]
        assert requester.trust.distrusted(cheater)
        # the cheater was not paid for the refused round
        refused = [e for e in ledger.entries(kind="receipt") if e.data["job"] == bytes.fromhex(caught[0]["job"])]
        assert len(refused) == 1 and refused[0].peer == cheater and not refused[0].data["accepted"]
        assert refused[0].data["paid"] == 0
        nursery.cancel_scope.cancel()


async def test_submit_train_on_the_command_line_saves_a_model_that_trains_on(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from p2pnode import train_io
    from p2pnode.cli import main

    x, y = _digits()
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    model = tmp_path / "mlp.json"
    model.write_text(json.dumps({"inputs": 64, "layers": [["dense", 16], ["relu"], ["dense", 10]], "loss": "xent",
                                 "optimizer": "sgd"}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": 64, "layers": [["conv", 3]], "loss": "xent"}))
    out = tmp_path / "trained.npz"
    async with trio.open_nursery() as nursery:
        requester, _ = await _swarm(nursery, 2)
        common = ["--data", str(tmp_path / "digits.npz"), "--rounds", "2", "--local-steps", "4", "--providers", "2",
                  "--lr", "0.1", "--seed", "3", "--data-dir", str(requester.config.data_dir)]
        rc = await trio.to_thread.run_sync(main, ["submit", "train", "--model", str(model), "--output", str(out),
                                                  "--json", *common])
        assert rc == 0
        summary = json.loads(capsys.readouterr().out)
        spec, weights = train_io.read_model(str(out), 0)
        plan = rounds.Plan(spec, rounds=2, local_steps=4, shards=2, lr=0.1, batch=32, seed=3)
        assert np.array_equal(weights, rounds.train_locally(plan, tm.init_weights(spec, 3), x, y))
        assert summary["rounds"] == 2 and summary["saved"]["path"] == str(out) and summary["caught"] == []
        # a model that is not one: refused in one line, before anything is sent
        rc = await trio.to_thread.run_sync(main, ["submit", "train", "--model", str(bad), *common])
        err = capsys.readouterr().err
        assert rc != 0 and "p2pnode: error:" in err and "kind one of dense" in err and "Traceback" not in err
        nursery.cancel_scope.cancel()
