"""The demo: a local swarm of real node processes on 127.0.0.1-N (``p2pnode swarm``, ``tools/demo``).

It starts the nodes with the launcher (parallel waves, each its own process, data dir, port and
control socket), shows the market converge live, has a trained classifier label real handwritten
digits in shards across every provider (rows checked by other providers; node 1 may cheat and is
caught), has a tiny transformer generate text the same way (checked by teacher-forced passes,
``demo_text.py``), trains a model on the digits across two providers in rounds (``demo_train.py``),
submits seeded jobs from the last node (auctions, execution in the providers' executors,
Freivalds checks, re-runs, signed receipts), shows the reputation table, reports how fast ads
travelled, then stops every node with SIGTERM and checks that each exited cleanly. ``--keep``
leaves it running until SIGINT, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from p2pnode.control.client import call
from p2pnode.errors import ControlError, LocalError
from p2pnode.swarm.demo_text import demo_generate
from p2pnode.swarm.demo_train import demo_train
from p2pnode.swarm.launcher import Launcher, NodeProc, NodeSpec, Stopped, stop_on_signals
from p2pnode.ui import market_table, reputation_table, short_peer

AD_INTERVAL_S = 3.0


def _query(node: NodeProc, cmd: str, timeout: float = 5, **args: Any) -> Any:
    return call(node.socket, cmd, timeout=timeout, **args)


def _submit(node: NodeProc, workload: str, params: dict[str, Any]) -> Any:
    return call(node.socket, "submit", timeout=90, workload=workload, params=params, max_price=10**9, deadline=60, k=3)


def _view(nodes: list[NodeProc], n: int) -> tuple[Table, list[int]]:
    t = Table(title=f"Local swarm: {n} nodes on 127.0.0.1-{n}", title_justify="left")
    for col in ("node", "peer id", "tcp port", "peers", "providers known", "status"):
        t.add_column(col)
    counts = []
    for node in nodes:
        try:
            s = _query(node, "status")
            counts.append(int(s["market"]))
            colour = {"healthy": "green", "issues": "yellow"}.get(s["state"], "red")
            reasons = "; ".join(r for r in s["reasons"] if "GPU" not in r and "NVML" not in r)
            if any("GPU" in r or "NVML" in r for r in s["reasons"]):
                reasons = "; ".join(filter(None, [reasons, "CPU only"]))
            t.add_row(str(node.index), short_peer(node.peer), node.addr.split("/")[4],
                      str(s["peers"]), f"{s['market']}/{n}",
                      f"[{colour}]{s['state']}[/] {reasons}".strip())
        except ControlError as exc:
            counts.append(0)
            t.add_row(str(node.index), short_peer(node.peer), "-", "-", "-", f"[red]{exc}[/]")
    return t, counts


def _histogram(nodes: list[NodeProc]) -> tuple[dict[float, float], float, float]:
    """Ad propagation histogram (cumulative buckets, sum, count), added up over all nodes."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for node in nodes:
        try:
            text = _query(node, "metrics")
        except ControlError:
            continue
        for line in text.splitlines():
            if line.startswith("p2pnode_ad_propagation_seconds_bucket"):
                le = line.split('le="')[1].split('"')[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + float(line.split()[-1])
            elif line.startswith("p2pnode_ad_propagation_seconds_sum"):
                total += float(line.split()[-1])
            elif line.startswith("p2pnode_ad_propagation_seconds_count"):
                count += float(line.split()[-1])
    return buckets, total, count


def _latency_between(before: tuple[dict[float, float], float, float],
                     after: tuple[dict[float, float], float, float]) -> dict[str, float]:
    """Mean and the histogram bounds holding p50/p99 of the ads accepted between two snapshots."""
    buckets = {b: v - before[0].get(b, 0.0) for b, v in after[0].items()}
    total, count = after[1] - before[1], after[2] - before[2]
    out = {"ads_measured": count, "mean_ms": 1000 * total / count if count else float("nan")}
    for q in (0.5, 0.99):
        bound = next((b for b in sorted(buckets) if count and buckets[b] >= q * count), float("nan"))
        out[f"p{int(q * 100)}_le_ms"] = bound * 1000
    return out


def run_swarm(n: int, *, keep: bool, as_json: bool, timeout: float, base: Path | None,
              seed: int = 1, cheat: str = "") -> int:
    """``cheat``: an adversary mode for node 1 (``p2pnode/adversary.py``), to watch checks catch it."""
    console = Console(stderr=as_json)
    own_base = base is None
    base = base or Path(tempfile.mkdtemp(prefix="p2pswarm-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    launcher = Launcher(base, ad_interval=AD_INTERVAL_S, ad_ttl=10.0, seed=seed)
    nodes: list[NodeProc] = []
    result: dict[str, Any] = {"nodes": n, "converged": False}
    progress = Progress(TextColumn("market convergence"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    task = progress.add_task("conv", total=n * n)
    # each node on its own loopback address: checkers must not share the provider's address; the
    # requester (the last node) checks every result it can, so the demo shows each kind of check
    specs = [NodeSpec(i, "provider", f"127.0.0.{i + 1}",
                      (["--adversary", cheat] if cheat and i == 1 else [])
                      + (["--check-rate-min", "1"] if i == n - 1 else []))
             for i in range(n)]
    try:
        with stop_on_signals():
            with Live(console=console, refresh_per_second=8, transient=False) as live:
                t_start = time.monotonic()

                def on_wave(launched: Launcher) -> None:
                    nodes[:] = sorted(launched.nodes.values(), key=lambda x: x.index)
                    table, counts = _view(nodes, n)
                    progress.update(task, completed=sum(counts))
                    live.update(Group(table, progress))

                launcher.start(specs, on_wave=on_wave)
                t_all_started = time.monotonic()
                result["start_s"] = round(t_all_started - t_start, 3)
                deadline = t_all_started + timeout
                while time.monotonic() < deadline:
                    table, counts = _view(nodes, n)
                    progress.update(task, completed=sum(counts))
                    live.update(Group(table, progress))
                    if all(c == n for c in counts):
                        result["converged"] = True
                        result["converge_after_last_start_s"] = round(time.monotonic() - t_all_started, 3)
                        break
                    time.sleep(0.1)
                if result["converged"]:
                    live.update(Group(table, progress, market_table(_query(nodes[-1], "market"),
                                                                   title=f"Market as node {n - 1} sees it")))
            if result["converged"]:
                cheat_peer = nodes[1].peer if cheat and n > 1 else ""
                result["text"] = demo_generate(nodes, console, base, cheater=cheat_peer)
                result["model"] = _demo_model(nodes, console, base, cheater=cheat_peer)
                result["train"] = demo_train(nodes, console, base)
                result["jobs"] = _demo_jobs(nodes, console)
                result["reputation"] = _query(nodes[-1], "reputation")
                names = {node.peer: f"node {node.index}" for node in nodes}
                console.print(reputation_table([{**r, "peer": names.get(r["peer"], r["peer"])}
                                                for r in result["reputation"]]))
                # Steady state: ads accepted during one more ad interval after convergence (the
                # first minutes include ads replayed to late joiners: start-up, not gossip).
                before = _histogram(nodes)
                time.sleep(AD_INTERVAL_S + 0.5)
                result["propagation"] = _latency_between(before, _histogram(nodes))
            if keep and result["converged"]:
                console.print("[bold]swarm running; Ctrl-C stops it[/]")
                while True:  # until SIGINT, SIGTERM or SIGHUP (Stopped)
                    time.sleep(3600)
    except Stopped:
        pass
    finally:
        result["clean_exit"] = launcher.stop_all()
        if own_base:
            shutil.rmtree(base, ignore_errors=True)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _summary(console, result)
    # with a cheater, a job it won may be rejected by the check: that is the check working
    cheater = nodes[1].peer if cheat and len(nodes) > 1 else None
    jobs_ok = all(j["state"] == "done" or (j["state"] == "rejected" and j["provider"] == cheater)
                  for j in result.get("jobs", []))
    model_ok = all(result.get(k) is None or result[k].get("state") in ("done", "skipped") for k in ("model", "text"))
    train = result.get("train")
    train_ok = train is None or train.get("state") == "skipped" or bool(train.get("equal_to_local"))
    return 0 if result["converged"] and result["clean_exit"] and jobs_ok and model_ok and train_ok else 1


def _demo_model(nodes: list[NodeProc], console: Console, base: Path, cheater: str) -> dict[str, Any]:
    """A real model on a real dataset across the swarm: an MLP trained here on scikit-learn's
    handwritten digits classifies the held-out digits in shards on every provider at once, each
    shard checked on 90 sampled rows by another provider; a cheater's shard is caught and redone."""
    import numpy as np
    from rich.progress import MofNCompleteColumn

    from p2pnode import models
    from p2pnode.exec import onnx_model

    try:
        data = models.digits()
    except LocalError as exc:
        console.print(f"[yellow]model stage skipped: {exc}[/]")
        return {"state": "skipped", "reason": str(exc)}
    raw, _ = onnx_model.unpack(data.model)
    (base / "digits.onnx").write_bytes(raw)
    np.save(base / "digits.npy", data.x)
    out_path = base / "labels.npy"
    requester = nodes[-1]
    providers = len(nodes) - 1
    names = {node.peer: f"node {node.index}" for node in nodes}
    console.print(f"[bold]A real model[/]: an MLP trained here on scikit-learn's handwritten digits "
                  f"(accuracy {data.accuracy:.3f}) classifies {len(data.x)} held-out digits on {providers} "
                  "providers at once; each shard is checked on 90 rows sampled after its provider committed")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                        console=console)
    redone: list[str] = []
    with progress:
        task = progress.add_task("digits", total=len(data.x))

        def on_event(e: dict[str, Any]) -> None:
            if e.get("event") != "shard":
                return
            who = names.get(str(e.get("provider", "")), "?")
            if e["state"] == "done":
                progress.update(task, completed=e["rows_done"], description=f"shards {e['done']}/{e['shards']}")
                progress.console.print(f"  shard {e['shard']} by {who}: {e['rows']} rows, "
                                       f"{str(e['outcome']).split(' by ')[0]}")
            elif e["state"] == "retry":
                redone.append(who)
                progress.console.print(f"  [red]shard {e['shard']} by {who} rejected[/] ({e['outcome']}); "
                                       "done again elsewhere")

        try:
            r = call(requester.data_dir / "control.sock", "map", timeout=300, on_event=on_event,
                     model=str(base / "digits.onnx"), input=str(base / "digits.npy"), output=str(out_path),
                     shard_rows=-(-len(data.x) // (2 * providers)), providers=providers, max_price=10**9,
                     deadline=120)
        except ControlError as exc:
            console.print(f"[red]model stage failed: {exc}[/]")
            return {"state": "error", "reason": str(exc)}
    labels = np.load(out_path)
    accuracy = float((labels == data.y).mean())
    console.print(f"[green]{len(labels)} digits classified across the swarm[/]: accuracy {accuracy:.3f} "
                  f"(the model itself: {data.accuracy:.3f}), {r['rows_per_s']:.0f} rows/s, "
                  f"{r['checked_rows']} rows re-checked by other providers"
                  + (f"; the cheater ({names.get(cheater, '?')}) was caught on model work" if cheater in
                     {n.peer for n in nodes if names.get(n.peer) in redone} else ""))
    return {"state": "done", "rows": r["rows"], "shards": r["shards"], "accuracy": accuracy,
            "model_accuracy": data.accuracy, "redone": r["retries"], "rejected_providers": redone,
            "by_node": {names.get(k, k): v for k, v in r["by_provider"].items()},
            "cheater_caught": bool(cheater) and names.get(cheater) in redone, "rows_per_s": r["rows_per_s"]}


DEMO_JOBS = (
    ("matmul", {"m": 64, "n": 64, "k": 512, "dtype": "int8", "seed": 7}),
    ("matmul", {"m": 48, "n": 48, "k": 256, "dtype": "fp32", "seed": 8}),
    ("infer", {"batch": 32, "d_in": 128, "d_hidden": 256, "d_out": 16, "layers": 4, "seed": 9}),
    ("matmul", {"m": 96, "n": 96, "k": 128, "dtype": "fp32", "seed": 11}),
    ("infer", {"batch": 64, "d_in": 64, "d_hidden": 128, "d_out": 8, "layers": 3, "seed": 12}),
    ("train_step", {"steps": 50, "lr": 0.05, "seed": 10}),
)


def _demo_jobs(nodes: list[NodeProc], console: Console) -> list[dict[str, Any]]:
    """Real jobs from the last node through the market: auction, execution, verification."""
    requester = nodes[-1]
    names = {n.peer: n.index for n in nodes}
    out = []
    t = Table(title=f"Jobs submitted by node {requester.index}", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("job", "bids", "node", "µcr", "kernel ms", "wall ms", "result"):  # wraps, never drops, at 80 columns
        t.add_column(col, overflow="fold", min_width=8 if col == "result" else None)
    for workload, params in DEMO_JOBS:
        try:
            r = _submit(requester, workload, params)
        except ControlError as exc:
            out.append({"workload": workload, "state": "error", "outcome": str(exc)})
            t.add_row(workload, "", "", "", "", "", f"[red]{exc}[/]")
            continue
        bids = sum(1 for e in r["events"] if e["event"] == "bid")
        wall = (r["ended"] - r["started"]) * 1000
        out.append({"workload": workload, "state": r["state"], "outcome": r["outcome"], "provider": r["peer"],
                    "price": r["price"], "kernel_ms": r["kernel_ms"], "wall_ms": round(wall, 1)})
        colour = "green" if r["state"] == "done" else "red"
        t.add_row(_describe(workload, params), str(bids), str(names.get(r["peer"], "?")), str(r["price"]),
                  str(r["kernel_ms"]), f"{wall:.0f}", f"[{colour}]{r['outcome'].split(' (')[0]}[/]")
    console.print(t)
    return out


def _describe(workload: str, p: dict[str, Any]) -> str:
    if workload == "matmul":
        return f"matmul {p['m']}×{p['n']}×{p['k']} {p['dtype']}"
    if workload == "infer":
        return f"infer {p['layers']}×{p['d_hidden']} b{p['batch']}"
    return f"train_step {p['steps']} steps"


def _summary(console: Console, r: dict[str, Any]) -> None:
    console.print()
    if r["converged"]:
        console.print(f"[green]converged[/]: all {r['nodes']} nodes list all {r['nodes']} providers, "
                      f"{r['converge_after_last_start_s'] * 1000:.0f} ms after the last node started "
                      f"(starting took {r['start_s']:.1f} s)")
    else:
        console.print("[red]did not converge[/] within the timeout")
    p = r.get("propagation") or {}
    if p.get("ads_measured"):
        console.print(f"ad propagation in steady state (issue → accepted, {p['ads_measured']:.0f} ads): mean "
                      f"{p['mean_ms']:.1f} ms, p50 ≤ {p['p50_le_ms']:.0f} ms, p99 ≤ {p['p99_le_ms']:.0f} ms")
    jobs = r.get("jobs") or []
    if jobs:
        done = sum(1 for j in jobs if j["state"] == "done")
        console.print(f"jobs: {done}/{len(jobs)} done, "
                      f"{sum(1 for j in jobs if str(j.get('outcome', '')).startswith('verified'))} verified "
                      "(Freivalds, or a re-run by an independent checker)")
    console.print("all nodes stopped cleanly" if r["clean_exit"] else "[red]some nodes did not exit cleanly[/]")
