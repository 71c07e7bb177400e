"""Training across providers: time to a target loss, bytes per round, the step check's cost and catch rate.

* **network**: scikit-learn's digits trained by 1, 2 and 4 providers (real nodes on loopback in
  this process, with their step checks) against training locally with the same seeds: wall time
  and rounds to ``--target`` loss, and the weights compared with local training's.
* **bytes**: what crosses per provider per round (the state sent, the weights and commitments
  returned; the shard's rows only once, cached by content id) against sending a gradient and
  receiving the mean gradient after every one of the H steps, as data-parallel training does.
* **check cost**: steps re-run per result over the steps trained (the share of training compute),
  and the measured kernel time of the check jobs over the round jobs.
* **catch rate** per adversary mode: results of ``--local-steps`` steps checked by the verdict
  machine in process (``p2pnode.verify.train_audit``), ``--trials`` each; and what it gives over a
  job of ``--rounds`` rounds. ``--other-kernels``: the provider names other kernels than its
  checker's, so that states are compared within the tolerance (the honest one runs on
  float64-accumulated products, each cheater computes here and names them).

Prints a table, writes ``--json`` and a PNG (``--png``). On one machine every node shares its
cores: K providers cannot beat one here (``specs/training.md`` says what does and does not carry).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from p2pnode.adversary import Adversary
from p2pnode.exec import train_model as tm
from p2pnode.exec import workloads
from p2pnode.protocol import rounds, step_checks
from p2pnode.verify.train_audit import audit, run, run_on

MODES = ["skip:0.05", "skip:0.25", "garbage", "scale:2", "stale", "lr:2", "lowprec", "replay"]
SPEC = {"inputs": 64, "layers": [["dense", 32], ["relu"], ["dense", 10]], "loss": "xent", "optimizer": "adamw"}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def catch_rates(local_steps: int, trials: int, rounds_per_job: int, other_kernels: bool = False) -> list[dict[str, Any]]:
    x, y = _digits()
    spec = tm.parse(SPEC)
    out = []
    for mode in ["honest", *MODES]:
        caught = 0
        for trial in range(trials):
            plan = rounds.Plan(spec, rounds=1, local_steps=local_steps, shards=1, lr=0.01, batch=32, seed=trial)
            params = workloads.get("train").check(plan.params(0, 0, len(x)))
            inputs = {"state": tm.fresh_state(spec, tm.init_weights(spec, trial)), "x": x, "y": y}
            adv = Adversary.parse(mode, seed=trial) if mode != "honest" else None
            result = run_on(params, inputs) if other_kernels else run(params, inputs)
            if adv is not None:
                before = dict(inputs, state=tm.fresh_state(spec, tm.init_weights(spec, trial + 1000)))
                adv.tamper("train", params, run(params, before), True, inputs=before)  # a job before
                p, cheat = adv.run_params("train", params)
                result = adv.tamper("train", p, run(p, inputs), cheat, inputs=inputs)
                if other_kernels:
                    result.extra["kernels"] = "float64-accumulated products"
            caught += audit(params, inputs, result, seed=trial).refused
        rate = caught / trials
        out.append({"mode": mode, "trials": trials, "refused": round(rate, 4), "other_kernels": other_kernels,
                    f"job_of_{rounds_per_job}_rounds": round(1 - (1 - rate) ** rounds_per_job, 4)})
    return out


async def _node(nursery: trio.Nursery, folder: Path, **flags: Any) -> Any:
    from p2pnode.config import load
    from p2pnode.node import Node

    base: dict[str, Any] = {"listen": ["/ip4/127.0.0.1/tcp/0"], "mdns": False, "metrics": "", "ui": "",
                            "ad_interval": 2.0, "ad_ttl": 6.0, "calibrate_seconds": 0.02, "heartbeat": 0.5,
                            "calibrate_providers": False, "dht": False}
    base.update(flags)
    node = Node(load(folder, env={}, flags=base))
    await nursery.start(lambda task_status: node.run(task_status=task_status))
    return node


async def _network(k: int, plan: rounds.Plan, w0: np.ndarray, x: np.ndarray, y: np.ndarray,
                   target: float) -> dict[str, Any]:
    """``plan`` on ``k`` providers (and two more, so checkers and referees are independent)."""
    with tempfile.TemporaryDirectory(prefix="p2pn-bench-") as tmp:
        async with trio.open_nursery() as nursery:
            providers = [await _node(nursery, Path(tmp) / f"p{i}", listen=[f"/ip4/127.0.0.{60 + i}/tcp/0"])
                         for i in range(k + 2)]
            req = await _node(nursery, Path(tmp) / "req", listen=["/ip4/127.0.0.70/tcp/0"], provide=False,
                              bootstrap=[p.addrs()[0] for p in providers])
            await req.wait_until(lambda: len(req.table) >= k + 2, 60)
            fetched0 = sum(p.blobs.fetched_bytes for p in providers)
            times: list[float] = []
            t0 = time.perf_counter()
            res = await req.trainer.run(plan, w0, x, y, max_price=10**12, deadline_s=120,
                                        on_event=lambda e: times.append(time.perf_counter() - t0)
                                        if e["event"] == "round" else None)
            fetched = sum(p.blobs.fetched_bytes for p in providers) - fetched0
            recs = [r for r in req.jobs.records if r.workload == "train" and r.role == "requester"]
            round_ms = sum(r.kernel_ms for r in recs if r.purpose == "job")
            check_ms = sum(r.kernel_ms for r in recs if r.purpose == "check")
            nursery.cancel_scope.cancel()
    reached = next((i for i, v in enumerate(res.losses) if v <= target), None)
    return {"providers": k, "seconds": round(times[-1], 3), "losses": [round(v, 5) for v in res.losses],
            "round_seconds": [round(t, 3) for t in times],
            "to_target_s": round(times[reached], 3) if reached is not None else None,
            "rounds_to_target": reached + 1 if reached is not None else None,
            "inputs_fetched_bytes_per_shard_round": int(fetched / (plan.rounds * plan.shards)),
            "check_kernel_share": round(check_ms / max(1, round_ms), 4), "weights": res.weights}


def network(ks: list[int], rounds_n: int, local_steps: int, target: float) -> list[dict[str, Any]]:
    x, y = _digits()
    spec = tm.parse(SPEC)
    w0 = tm.init_weights(spec, 0)
    out = []
    for k in ks:
        plan = rounds.Plan(spec, rounds=rounds_n, local_steps=local_steps, shards=k, lr=0.01, batch=32, seed=1)
        t0 = time.perf_counter()
        times, losses = [], []

        def on_round(r: int, w: np.ndarray, t0: float = t0, times: list[float] = times,
                     losses: list[float] = losses) -> None:
            losses.append(tm.evaluate(spec, w, x, y))
            times.append(time.perf_counter() - t0)

        local = rounds.train_locally(plan, w0, x, y, on_round=on_round)
        row = trio.run(_network, k, plan, w0, x, y, target)
        reached = next((i for i, v in enumerate(losses) if v <= target), None)
        row["equal_to_local"] = bool(np.array_equal(row.pop("weights"), local))
        row["local_seconds"] = round(times[-1], 3)
        row["local_to_target_s"] = round(times[reached], 3) if reached is not None else None
        row["local_losses"] = [round(v, 5) for v in losses]
        p, s = spec.params, spec.state_len
        row["bytes_per_round"] = {"state_in": 4 * s, "weights_out": 4 * p, "commits_out": 32 * local_steps,
                                  "total": 4 * s + 4 * p + 32 * local_steps,
                                  "per_step_gradients": 2 * 4 * p * local_steps,
                                  "fold": round(2 * 4 * p * local_steps / (4 * s + 4 * p + 32 * local_steps), 1)}
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--providers", default="1,2,4", help="provider counts to train with (default 1,2,4)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=100)
    ap.add_argument("--target", type=float, default=0.3, help="the loss over all rows to reach")
    ap.add_argument("--trials", type=int, default=30, help="results checked per adversary mode")
    ap.add_argument("--job-rounds", type=int, default=25, help="rounds of a job, for its catch rate")
    ap.add_argument("--skip-network", action="store_true", help="only the check's catch rates")
    ap.add_argument("--other-kernels", action="store_true",
                    help="catch rates with provider and checker on other kernels (states compared within the tolerance)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    n = step_checks.checks(args.local_steps)
    report: dict[str, Any] = {"local_steps": args.local_steps, "step_checks": n,
                              "check_compute_share": round(n / args.local_steps, 4)}
    report["catch"] = catch_rates(args.local_steps, args.trials, args.job_rounds, args.other_kernels)
    for row in report["catch"]:
        print(f"{row['mode']:>10}: refused {row['refused']:.0%} of {row['trials']} results; "
              f"over a job of {args.job_rounds} rounds {row[f'job_of_{args.job_rounds}_rounds']:.2%}")
    print(f"checks: {n} of {args.local_steps} steps re-run per result "
          f"= {report['check_compute_share']:.1%} of the training compute")
    if not args.skip_network:
        report["network"] = network([int(k) for k in args.providers.split(",")], args.rounds, args.local_steps,
                                    args.target)
        for row in report["network"]:
            b = row["bytes_per_round"]
            print(f"{row['providers']} provider(s): {row['seconds']} s for {args.rounds} rounds (local "
                  f"{row['local_seconds']} s); to loss {args.target}: {row['to_target_s']} s (local "
                  f"{row['local_to_target_s']} s); equal to local: {row['equal_to_local']}; "
                  f"{b['total']} B/round vs {b['per_step_gradients']} B of per-step gradients ({b['fold']}x); "
                  f"check kernels {row['check_kernel_share']:.1%} of round kernels")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.png:
        _plot(report, args.png)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in report.get("network", []):
        axes[0].plot(row["round_seconds"], row["losses"], marker="o", label=f"{row['providers']} provider(s)")
    if report.get("network"):
        first = report["network"][0]
        axes[0].plot(np.linspace(0, first["local_seconds"], len(first["local_losses"]) + 1)[1:],
                     first["local_losses"], "k--", label="local (1 shard)")
    axes[0].set(xlabel="seconds", ylabel="loss over all rows", title="digits, time to loss")
    axes[0].legend()
    modes = [r["mode"] for r in report["catch"]]
    axes[1].bar(modes, [r["refused"] for r in report["catch"]])
    axes[1].set(ylabel="results refused", title=f"{report['step_checks']} of {report['local_steps']} steps re-run")
    axes[1].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
