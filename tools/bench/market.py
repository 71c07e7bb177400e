"""The market at scale, in the simulator: paced ads against flooding, measured in one run.

For each size N, ``tools/scenarios/market.toml`` scaled to N nodes runs twice on the simulator
(``p2pnode.sim``, the node's own core): once with the providers pacing their ads by the market's
size (what nodes do), once flooding every ad every interval (version 1, the baseline). Reported per
node per second, in the steady state after convergence: messages and bytes of every class, ad
messages, and the CPU that validating gossip costs; and the time from a job's submission to its
award (p50, p99). The ratio flood / paced is the gain.

    tools/bench/run market [--sizes 100,1000,10000] [--duration 60] [--ad-interval 60] [--json]

Writes ``market.json`` and ``market.png`` to ``--out`` (default ./bench-market).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pnode import scenario as sc
from p2pnode.sim import simulate

ROOT = Path(__file__).resolve().parents[2]


def measure(n: int, *, paced: bool, duration: float, ad_interval: float, ad_ttl: float) -> dict[str, Any]:
    s = sc.load(ROOT / "tools" / "scenarios" / "market.toml")
    r = simulate(s, nodes=n, duration=duration, ad_interval=ad_interval, ad_ttl=ad_ttl, paced=paced)
    t = r["traffic"]
    st = t["steady"] or t
    return {"nodes": n, "paced": paced, "ad_interval_s": t["ad_interval_s"], "market_size": t["market_size"],
            "msgs_per_node_s": st["msgs_per_node_s"], "bytes_per_node_s": st["bytes_per_node_s"],
            "ad_msgs_per_node_s": st["per_node"]["ads"]["msgs_per_s"],
            "validate_cpu_share": st["validate_cpu_share"],
            "award_p50_s": r["jobs"]["award_p50_s"], "award_p99_s": r["jobs"]["award_p99_s"],
            "jobs": r["jobs"]["submitted"], "done": r["jobs"]["done"], "wrong_accepted": r["jobs"]["wrong_accepted"],
            "sim_wall_s": r["sim"]["wall_s"], "node_seconds_per_s": r["sim"]["node_seconds_per_s"]}


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("msgs_per_node_s", "messages per node per second"), ("bytes_per_node_s", "bytes per node per second"),
              ("validate_cpu_share", "gossip validation, share of a core"), ("award_p99_s", "time to award p99, s")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for paced, label in ((False, "flooding (v1)"), (True, "paced (v2)")):
            pts = [(r["nodes"], r[key]) for r in rows if r["paced"] is paced and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set_xscale("log")
        if key != "award_p99_s":
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("nodes")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of work after convergence")
    p.add_argument("--ad-interval", type=float, default=60.0, help="base ad interval (the node's default)")
    p.add_argument("--ad-ttl", type=float, default=180.0)
    p.add_argument("--out", type=Path, default=Path("bench-market"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    console = Console(stderr=True)
    rows = []
    for n in (int(x) for x in a.sizes.split(",")):
        for paced in (False, True):
            rows.append(measure(n, paced=paced, duration=a.duration, ad_interval=a.ad_interval, ad_ttl=a.ad_ttl))
            console.log(rows[-1])
    for n in sorted({r["nodes"] for r in rows}):
        flood = next(r for r in rows if r["nodes"] == n and not r["paced"])
        paced = next(r for r in rows if r["nodes"] == n and r["paced"])
        for key in ("msgs_per_node_s", "bytes_per_node_s", "validate_cpu_share"):
            paced[f"{key}_flood_over_paced"] = round(flood[key] / paced[key], 2) if paced[key] else None
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"scenario": "tools/scenarios/market.toml", "duration_s": a.duration, "ad_interval": a.ad_interval,
              "ad_ttl": a.ad_ttl, "rows": rows}
    (a.out / "market.json").write_text(json.dumps(result, indent=1))
    plot(rows, a.out / "market.png")
    if a.json:
        print(json.dumps(result, indent=1))
        return
    table = Table(title=f"the market in the simulator, {a.duration:g} s of work (PNG: {a.out / 'market.png'})")
    for col in ("N", "ads", "interval s", "msgs/node/s", "kB/node/s", "validate %core", "award p50 s",
                "award p99 s", "done", "flood/paced msgs"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["nodes"]), "paced" if r["paced"] else "flood", f"{r['ad_interval_s']:g}",
                      f"{r['msgs_per_node_s']:,.1f}", f"{r['bytes_per_node_s'] / 1000:,.1f}",
                      f"{100 * r['validate_cpu_share']:.3f}", str(r["award_p50_s"]), str(r["award_p99_s"]),
                      f"{r['done']}/{r['jobs']}", str(r.get("msgs_per_node_s_flood_over_paced", "")))
    Console(width=max(132, Console().width)).print(table)


if __name__ == "__main__":
    main()
