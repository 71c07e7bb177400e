"""`p2pnode submit train` against real node processes, stopped every way a user or a machine stops
it: Ctrl-C says what was paid, a killed command or a killed requester node leaves the checkpoint
it had written, and the same command run again goes on from there to the very weights of an
uninterrupted run, with every shard of every round paid for once."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode.control.client import call
from p2pnode.exec import train_model as tm
from p2pnode.ledger.store import FILE_NAME, Ledger
from p2pnode.protocol import rounds
from tests.integration.test_cli import ENV, EXE, NodeProcess

ROUNDS, STEPS, SHARDS, SEED = 8, 6, 2, 5
MODEL = {"inputs": 64, "layers": [["dense", 16], ["relu"], ["dense", 10]], "loss": "xent", "optimizer": "adamw"}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _requester(data_dir: Path, providers: list[NodeProcess]) -> NodeProcess:
    boot = [a for p in providers for a in ("--bootstrap", p.addrs[0])]
    node = NodeProcess(data_dir, "--no-provide", *boot, listen="/ip4/127.0.0.70/tcp/0")
    call(data_dir / "control.sock", "wait", timeout=40, what="offers", count=len(providers), timeout_s=30)
    return node


def _rounds_saved(data_dir: Path) -> int:
    """Training rounds the node has checkpointed since it started."""
    return int(call(data_dir / "control.sock", "wait", timeout=10, what="rounds", count=0, timeout_s=5)["rounds"])


def _checkpoint(folder: Path) -> int:
    with np.load(folder / "checkpoint.npz", allow_pickle=False) as z:
        return int(z["round"])


def _until_stopped(node: NodeProcess) -> dict[str, Any]:
    """The training record once the node has stopped the run whose client went away."""
    call(node.data_dir / "control.sock", "wait", timeout=70, what="trainings", count=0, timeout_s=60)
    jobs = node.json("jobs")
    assert isinstance(jobs, list)
    return [j for j in jobs if j["workload"] == "train" and j["role"] == "requester"][-1]


def _paid_receipts(data_dir: Path) -> list[dict[str, Any]]:
    with Ledger.inspect(data_dir / FILE_NAME) as ledger:
        return [e.data for e in ledger.entries(kind="receipt")
                if e.data["role"] == "requester" and e.data["paid"]]


def test_submit_train_stopped_by_ctrl_c_and_killed_resumes_and_pays_each_round_once(data_dir: Path) -> None:
    x, y = _digits()
    np.savez(data_dir / "digits.npz", x=x, y=y)
    (data_dir / "mlp.json").write_text(json.dumps(MODEL))
    spec = tm.parse(MODEL)
    w0 = tm.init_weights(spec, SEED)
    plan = rounds.Plan(spec, rounds=ROUNDS, local_steps=STEPS, shards=SHARDS, lr=0.01, batch=32, seed=SEED)
    tid = rounds.job_id(plan, w0, x, y)
    folder = data_dir / "train" / tid
    out = data_dir / "trained.npz"
    submit = [*EXE, "submit", "train", "--model", str(data_dir / "mlp.json"), "--data", str(data_dir / "digits.npz"),
              "--rounds", str(ROUNDS), "--local-steps", str(STEPS), "--providers", str(SHARDS), "--lr", "0.01",
              "--seed", str(SEED), "--output", str(out), "--data-dir", str(data_dir)]
    # three providers on addresses of their own, so each result has an independent checker
    providers = [NodeProcess(Path(f"{data_dir}-p{i}"), listen=f"/ip4/127.0.0.{71 + i}/tcp/0") for i in range(3)]
    requester = _requester(data_dir, providers)
    nodes = [*providers, requester]
    try:
        # Ctrl-C after the first checkpoint: the node stops the run, the command says what it paid
        first = subprocess.Popen(submit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        call(data_dir / "control.sock", "wait", timeout=70, what="rounds", count=1, timeout_s=60)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        stopped = re.search(rf"p2pnode: stopped: training {tid} cancelled \(its client went away\) after round "
                            rf"(\d) of {ROUNDS}; paid (\d+) µcr \(.*\); the same command resumes it", err)
        assert stopped, err
        assert int(stopped.group(1)) == _checkpoint(folder) >= 1
        assert int(stopped.group(2)) == sum(r["paid"] for r in _paid_receipts(data_dir)) > 0
        assert _until_stopped(requester)["state"] == "cancelled"

        # the command killed (SIGKILL) after a further checkpoint: the node stops the run all the same
        saved = _rounds_saved(data_dir)
        second = subprocess.Popen([*submit, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        call(data_dir / "control.sock", "wait", timeout=70, what="rounds", count=saved + 1, timeout_s=60)
        second.kill()
        second.communicate(timeout=30)
        assert _until_stopped(requester)["state"] == "cancelled"
        killed_client_at = _checkpoint(folder)

        # the requester's node itself killed after a further checkpoint, then started again
        saved = _rounds_saved(data_dir)
        third = subprocess.Popen([*submit, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        call(data_dir / "control.sock", "wait", timeout=70, what="rounds", count=saved + 1, timeout_s=60)
        requester.proc.kill()
        requester.proc.wait()
        third.communicate(timeout=30)
        assert third.returncode != 0
        killed_node_at = _checkpoint(folder)
        assert 1 <= int(stopped.group(1)) < killed_client_at < killed_node_at < ROUNDS
        requester = _requester(data_dir, providers)
        nodes[-1] = requester

        last = subprocess.run([*submit, "--json"], capture_output=True, text=True, env=ENV, timeout=300, check=False)
        assert last.returncode == 0, last.stderr
        summary = json.loads(last.stdout)
        assert summary["train"] == tid and summary["resumed_from"] == killed_node_at
        assert summary["rounds"] == ROUNDS and len(summary["losses"]) == ROUNDS and summary["caught"] == []
        # the rounds after the checkpoint were trained here: each of the K shards once
        assert sum(summary["by_provider"].values()) == (ROUNDS - killed_node_at) * SHARDS

        # the weights and losses of training without a stop, with the same seeds
        local_losses: list[float] = []
        local = rounds.train_locally(plan, w0, x, y,
                                     on_round=lambda r, w: local_losses.append(tm.evaluate(spec, w, x, y)))
        with np.load(out, allow_pickle=False) as z:
            assert np.array_equal(z["weights"], local)
            assert np.allclose(z["losses"], local_losses, rtol=0, atol=1e-6)

        # every shard of every round paid for exactly once, across four runs and two kills
        shard_jobs: dict[str, tuple[int, int]] = {}
        sent: Counter[tuple[int, int]] = Counter()
        # a provider is not told the batch seed; a shard is known by its rows (899 and 898 of them)
        sizes = {b - a: i for i, (a, b) in enumerate(rounds.shard_bounds(len(x), SHARDS))}
        assert len(sizes) == SHARDS
        for p in providers:
            for j in p.json("jobs"):  # type: ignore[union-attr]
                if j["workload"] == "train" and j["role"] == "provider" and j["params"]["steps"] == STEPS:
                    r, i = (j["params"]["first"] - 1) // STEPS, sizes[j["params"]["rows"]]
                    shard_jobs[j["job"]] = (r, i)
                    sent[(r, i)] += 1
        paid = Counter(shard_jobs[r["job"].hex()] for r in _paid_receipts(data_dir) if r["job"].hex() in shard_jobs)
        assert paid == Counter({(r, i): 1 for r in range(ROUNDS) for i in range(SHARDS)}), paid
        # and trained once, but for a shard under way when a run was stopped
        under_way = {int(stopped.group(1)), killed_client_at, killed_node_at}
        assert all(n == 1 for (r, _), n in sent.items() if r not in under_way), sent
        assert "Traceback" not in "".join(out_line for n in nodes for out_line in n.output)
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
        for p in providers:
            shutil.rmtree(p.data_dir, ignore_errors=True)
