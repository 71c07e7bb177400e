"""The demo's training stage: scikit-learn's digits trained across the swarm in rounds, each
result's sampled steps re-run by another provider, against the same training done here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from p2pnode.control.client import call
from p2pnode.errors import ControlError
from p2pnode.swarm.launcher import NodeProc

MODEL = {"inputs": 64, "layers": [["dense", 32], ["relu"], ["dense", 10]], "loss": "xent", "optimizer": "adamw"}
ROUNDS, LOCAL_STEPS, LR, SEED = 4, 50, 0.01, 1


def demo_train(nodes: list[NodeProc], console: Console, base: Path) -> dict[str, Any]:
    import numpy as np

    from p2pnode.exec import train_model as tm
    from p2pnode.protocol import rounds

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        console.print("[yellow]training stage skipped: it needs scikit-learn (pip install 'p2pnode[demo]')[/]")
        return {"state": "skipped", "reason": "no scikit-learn"}
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    np.savez(base / "digits-train.npz", x=x, y=y)
    (base / "mlp.json").write_text(json.dumps(MODEL))
    requester, providers = nodes[-1], min(2, len(nodes) - 1)
    names = {node.peer: f"node {node.index}" for node in nodes}
    console.print(f"[bold]Training your own model[/]: an MLP on scikit-learn's {len(x)} digits, {ROUNDS} rounds of "
                  f"{LOCAL_STEPS} local steps on {providers} providers at once; 5 % of each result's steps re-run "
                  "by another provider from the states it committed to")

    def on_event(e: dict[str, Any]) -> None:
        if e.get("event") == "round":
            console.print(f"  round {e['round']}/{e['rounds']}: loss {e['loss']:.4f}, {e['rows_per_s']:.0f} rows/s")
        elif e.get("event") == "shard" and e.get("state") in ("caught", "retry"):
            console.print(f"  [red]shard {e['shard']} by {names.get(e['provider'], '?')} refused[/] "
                          f"({e['outcome']}); trained again elsewhere")

    try:
        r = call(requester.data_dir / "control.sock", "train", timeout=600, on_event=on_event,
                 model=str(base / "mlp.json"), data=str(base / "digits-train.npz"),
                 output=str(base / "trained.npz"), rounds=ROUNDS, local_steps=LOCAL_STEPS, providers=providers,
                 lr=LR, seed=SEED, max_price=10**9, deadline=120, fresh=True)
    except ControlError as exc:
        console.print(f"[red]training stage failed: {exc}[/]")
        return {"state": "error", "reason": str(exc)}
    spec = tm.parse(MODEL)
    plan = rounds.Plan(spec, rounds=ROUNDS, local_steps=LOCAL_STEPS, shards=providers, lr=LR, seed=SEED)
    local = rounds.train_locally(plan, tm.init_weights(spec, SEED), x, y)
    with np.load(base / "trained.npz") as z:
        same = bool(np.array_equal(z["weights"], local))
    console.print(f"[green]trained across the swarm[/]: loss {r['losses'][0]:.4f} → {r['loss']:.4f} in "
                  f"{r['seconds']:.1f} s; {'the same weights as' if same else '[red]not the weights of[/]'} "
                  "training here with the same seeds"
                  + (f"; caught: {', '.join(names.get(p, p) for p in r['caught'])}" if r["caught"] else ""))
    return {"state": "done", "losses": r["losses"], "equal_to_local": same, "retries": r["retries"],
            "caught": [names.get(p, p) for p in r["caught"]], "seconds": r["seconds"],
            "by_node": {names.get(k, k): v for k, v in r["by_provider"].items()}}
