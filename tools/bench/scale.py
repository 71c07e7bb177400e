"""How many nodes one machine holds: real swarms of N providers, as separate processes and in one
in-process host, each measured for start-up, convergence (every sampled node's market holds every
provider), idle CPU and memory per node, and ad propagation (p50/p99 from the nodes' own
histograms). The nodes use the production ad interval and TTL unless told otherwise.

    tools/bench/run scale [--sizes 5,20,50,100] [--modes processes,in-process] [--idle 30] [--json]

Writes ``scale.json`` and ``scale.png`` to ``--out`` (default ./bench-scale). CPU is the nodes'
own (utime + stime of their processes over the idle window, which begins ``--settle`` seconds after
convergence), not the machine's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pnode.config import KEYS
from p2pnode.swarm.inproc import InProcessLauncher
from p2pnode.swarm.launcher import Launcher, NodeSpec
from p2pnode.swarm.runner import address, propagation

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def _pids(launcher: Launcher) -> list[int]:
    hosts = getattr(launcher, "hosts", None)
    if hosts is not None:
        return [p.pid for p in hosts.values()]
    return [n.proc.pid for n in launcher.nodes.values() if n.proc is not None and n.alive]


def _propagation(launcher: Launcher, sample: list[int]) -> dict[str, Any]:
    p = propagation(launcher.try_call(i, "metrics", timeout=10) or "" for i in sample)

    def finite(b: float | None) -> float | None:
        return b if b is not None and math.isfinite(b) else None

    top = max((b for b, _ in p["cdf"] if b is not None), default=None)  # past it: the +Inf bucket
    return {"ads": int(p["ads"]), "p50_le_s": finite(p["p50_le_s"]), "p99_le_s": finite(p["p99_le_s"]),
            "top_bucket_s": top}


def measure(mode: str, n: int, *, idle_s: float, timeout_s: float, ad_interval: float, ad_ttl: float,
            console: Console, dht: bool = False, settle_s: float = 30.0) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="p2pscale-", dir="/tmp"))
    cls = InProcessLauncher if mode == "in-process" else Launcher
    launcher = cls(base, ad_interval=ad_interval, ad_ttl=ad_ttl, dht=dht)
    specs = [NodeSpec(i, "provider", address(i), []) for i in range(n)]
    out: dict[str, Any] = {"mode": mode, "nodes": n, "dht": dht}
    try:
        t0 = time.monotonic()
        launcher.start(specs)
        out["start_s"] = round(time.monotonic() - t0, 2)
        want = {launcher.nodes[i].peer for i in range(n)}
        sample = sorted(set(range(0, n, max(1, n // 10))) | {n - 1})
        t1 = time.monotonic()
        out["converged_s"] = None
        while time.monotonic() - t1 < timeout_s:
            whole = 0
            for i in sample:
                market = launcher.try_call(i, "market", timeout=10) or []
                whole += want <= {e["peer"] for e in market} | {launcher.nodes[i].peer}
            if whole == len(sample):
                out["converged_s"] = round(time.monotonic() - t1, 2)
                break
            time.sleep(1)
        time.sleep(settle_s)  # start-up's tail (the market syncs 5 s and 20 s after connecting) is not idle
        pids = _pids(launcher)
        cpu0, w0 = sum(_cpu_s(p) for p in pids), time.monotonic()
        time.sleep(idle_s)
        cpu1, w1 = sum(_cpu_s(p) for p in pids), time.monotonic()
        out["idle_core_pct_per_node"] = round(100 * (cpu1 - cpu0) / (w1 - w0) / n, 3)
        out["rss_mb_per_node"] = round(sum(_rss_mb(p) for p in pids) / n, 1)
        out["propagation"] = _propagation(launcher, sample)
        console.log(f"{mode} {n}: {out}")
    except Exception as exc:  # noqa: BLE001 - a size that does not fit is a result too
        out["error"] = f"{type(exc).__name__}: {exc}"
        console.log(f"{mode} {n}: failed: {out['error']}")
    finally:
        out["stopped_cleanly"] = launcher.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [("idle_core_pct_per_node", "idle CPU per node, % of a core"), ("rss_mb_per_node", "RSS per node, MB"),
              ("converged_s", "convergence after start, s"), ("p99", "ad propagation p50 (o) / p99 (x), s")]
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for mode in sorted({r["mode"] for r in rows}):
            rs = [r for r in rows if r["mode"] == mode and "error" not in r]
            if key == "p99":
                for q, marker in (("p50_le_s", "o-"), ("p99_le_s", "x--")):
                    pts = [(r["nodes"], r["propagation"][q]) for r in rs if r["propagation"][q] is not None]
                    if pts:
                        ax.plot(*zip(*pts, strict=True), marker, label=f"{mode} {q[:3]}")
            else:
                pts = [(r["nodes"], r[key]) for r in rs if r.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", label=mode)
        ax.set_xlabel("nodes")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="5,20,50,100")
    p.add_argument("--modes", default="processes,in-process")
    p.add_argument("--max-processes", type=int, default=50, help="skip larger sizes as processes")
    p.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured after convergence")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds after convergence before the idle window (start-up's syncs end)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for convergence")
    defaults = {k.name: k.default for k in KEYS}
    p.add_argument("--ad-interval", type=float, default=defaults["ad_interval"])
    p.add_argument("--ad-ttl", type=float, default=defaults["ad_ttl"])
    p.add_argument("--out", type=Path, default=Path("bench-scale"))
    p.add_argument("--dht", action="store_true", help="run the nodes' DHT (off in local swarms: see Launcher)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    console = Console(stderr=True)
    rows = []
    for mode in a.modes.split(","):
        for n in (int(s) for s in a.sizes.split(",")):
            if mode == "processes" and n > a.max_processes:
                continue
            rows.append(measure(mode, n, idle_s=a.idle, timeout_s=a.timeout, ad_interval=a.ad_interval, settle_s=a.settle,
                                ad_ttl=a.ad_ttl, console=console, dht=a.dht))
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"cores": os.cpu_count(), "ad_interval": a.ad_interval, "ad_ttl": a.ad_ttl, "rows": rows}
    (a.out / "scale.json").write_text(json.dumps(result, indent=1))
    plot(rows, a.out / "scale.png")
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    t = Table(title=f"nodes on one machine ({os.cpu_count()} cores, ads every {a.ad_interval:g} s)")
    t.add_column("mode", no_wrap=True)
    for col in ("N", "start s", "conv. s", "idle %core /node", "RSS MB /node", "ads p50 s", "ads p99 s"):
        t.add_column(col, justify="right", overflow="fold")

    def le(pr: dict[str, Any], key: str) -> str:  # a quantile past the top bucket is shown as such
        if pr.get(key) is not None:
            return str(pr[key])
        return f"> {pr['top_bucket_s']:g}" if pr.get("ads") and pr.get("top_bucket_s") else "-"

    for r in rows:
        pr = r.get("propagation", {})
        t.add_row(r["mode"], str(r["nodes"]), str(r.get("start_s", "-")), str(r.get("converged_s") or "no"),
                  str(r.get("idle_core_pct_per_node", "-")), str(r.get("rss_mb_per_node", "-")),
                  le(pr, "p50_le_s"), le(pr, "p99_le_s"))
    Console().print(t)
    console.print(f"wrote {a.out / 'scale.json'} and {a.out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
