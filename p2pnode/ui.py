"""Terminal rendering (rich) shared by the CLI and the swarm tools."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f}"


def short_peer(peer: str) -> str:
    """Ed25519 peer ids all start 12D3KooW: the tail is what tells them apart."""
    return f"…{peer[-8:]}" if len(peer) > 12 else peer


def market_table(entries: list[dict[str, Any]], title: str = "Market") -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("provider", no_wrap=True)
    any_gpu = any(e.get("gpus") for e in entries)
    t.add_column("hardware", overflow="fold", max_width=20)
    t.add_column("mem GiB", justify="right", no_wrap=True)
    if any_gpu:
        t.add_column("use", justify="right", no_wrap=True)
    t.add_column("offer @ price", overflow="fold")
    t.add_column("Gflop/s", justify="right")
    t.add_column("age/exp s", justify="right", no_wrap=True)
    for e in entries:
        gpus = e.get("gpus") or []
        cpu = e.get("cpu") or {}
        if gpus:
            hw = ", ".join(g["name"].removeprefix("NVIDIA ") for g in gpus)
            mem = ", ".join(f"{_gib(g['mem_free'])}/{_gib(g['mem_total'])}" for g in gpus)
            util = ", ".join(f"{g['util']}%" for g in gpus)
        else:
            hw = f"CPU ×{cpu.get('cores', '?')} {cpu.get('model', '?')}"
            mem = f"{_gib(cpu.get('mem_free', 0))}/{_gib(cpu.get('mem_total', 0))}"
            util = "-"
        by_price: dict[int, list[str]] = {}
        for o in e.get("offers", []):
            by_price.setdefault(o["price"], []).append(o["wl"])
        offers = "; ".join(f"{' '.join(names)} @ {price}" for price, names in sorted(by_price.items()))
        speeds = (e.get("speed") or {}).values()
        row = [short_peer(e["peer"]), hw, mem, *([util] if any_gpu else []), offers,
               f"{max(speeds):.0f}" if speeds else "-",
               f"{e.get('age_s', 0):.1f}/{e.get('expires_in_s', 0):.0f}"]
        t.add_row(*row)
    return t


def peers_table(peers: list[dict[str, Any]]) -> Table:
    t = Table(title="Connected peers", title_justify="left")
    t.add_column("peer", no_wrap=True)  # ids must stay copyable
    t.add_column("address")
    t.add_column("provider")
    t.add_column("penalty", justify="right")
    for p in peers:
        t.add_row(p["peer"], ", ".join(p["addrs"]) or "-", "yes" if p["provider"] else "no",
                  f"{p['penalty']:g}")
    return t


def status_text(s: dict[str, Any]) -> Text:
    colour = {"healthy": "green", "issues": "yellow", "error": "red"}.get(s["state"], "white")
    out = Text()
    out.append(f"{s['state'].upper()}", style=f"bold {colour}")
    out.append(f"  peer {s['peer']}  up {s['uptime_s']:.0f} s\n")
    for reason in s["reasons"]:
        out.append(f"  - {reason}\n", style=colour)
    for note in s.get("notes", []):
        out.append(f"  · {note}\n", style="dim")
    out.append(f"  peers {s['peers']}  market {s['market']} providers  ads published "
               f"{s['ads_published']}  rejected {sum(s['ads_rejected'].values())}\n")
    out.append(f"  listening on {', '.join(s['addrs']) or '-'}\n")
    if s.get("metrics"):
        out.append(f"  metrics http://{s['metrics']}/metrics\n")
    return out


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    t = Table(title="Jobs", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("job", "role", "workload", "peer", "state", "price", "kernel ms", "outcome"):
        t.add_column(col, overflow="fold")  # wraps at 80 columns, never drops one
    for j in jobs:
        role = j["role"] if j.get("purpose", "job") == "job" else f"{j['role']} ({j['purpose']})"
        t.add_row(j["job"][:8], role, j["workload"], short_peer(j.get("peer", "")), j["state"],
                  str(j.get("price", "")), str(j.get("kernel_ms", "")), j.get("outcome", ""))
    return t


def job_summary(j: dict[str, Any]) -> Text:
    ok = j["state"] == "done"
    out = Text()
    out.append(f"{j['state'].upper()}", style="bold green" if ok else "bold red")
    out.append(f"  job {j['job'][:16]}  {j['workload']}  by {j.get('peer') or '-'}\n")
    out.append(f"  outcome: {j.get('outcome', '')}\n")
    if ok:
        out.append(f"  price {j['price']} µcr, kernel {j.get('kernel_ms')} ms on {j.get('backend')}, "
                   f"wall {j['ended'] - j['started']:.3f} s\n")
    if j.get("paid"):
        from p2pnode.services.operations import describe_paid

        out.append(f"  {describe_paid(j['paid'])}\n")
    for name, arr in (j.get("output") or {}).items():
        out.append(f"  {name}: {arr['dtype']}{arr['shape']} = {arr['sample']} …\n")
    if j.get("loss"):
        loss = j["loss"]
        out.append(f"  loss: {loss[0]:.4g} → {loss[-1]:.4g} over {len(loss)} steps\n")
    if j.get("digest"):
        out.append(f"  digest {j['digest']}\n")
    if j.get("saved"):
        out.append(f"  saved {', '.join(j['saved']['outputs'])} to {j['saved']['path']}\n")
    return out


def reputation_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Reputation", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("peer", "score", "±", "own +/−", "reports +/−", "trust", "streak", "cheats"):
        t.add_column(col, justify="left" if col == "peer" else "right", no_wrap=True)
    for r in rows:
        style = "red" if r["distrusted"] else "green" if r["score"] >= 0.75 else ""
        t.add_row(short_peer(r["peer"]), f"{r['score']:.3f}", f"{r['uncertainty']:.3f}",
                  f"{r['own_pos']:.1f}/{r['own_neg']:.1f}", f"{r['hearsay_pos']:.1f}/{r['hearsay_neg']:.1f}",
                  f"{r['trust']:.2f}", str(r["streak"]), str(r["cheats"]), style=style)
    return t


def credits_table(view: dict[str, Any]) -> Table:
    """Given (compute this node ran for the peer), received (the peer ran for us), in µcredits."""
    t = Table(title="Credits (µcr): given = we ran their jobs, received = they ran ours", title_justify="left",
              box=box.SIMPLE_HEAD, show_footer=True)
    total = view["total"]
    t.add_column("peer", footer="total", no_wrap=True)
    t.add_column("given", justify="right", footer=str(total["given"]))
    t.add_column("jobs", justify="right")
    t.add_column("received", justify="right", footer=str(total["received"]))
    t.add_column("jobs ", justify="right")
    t.add_column("balance", justify="right", footer=str(total["balance"]))
    for r in view["peers"]:
        style = "green" if r["balance"] > 0 else "yellow" if r["balance"] < 0 else ""
        t.add_row(short_peer(r["peer"]), str(r["given"]), str(r["jobs_given"]), str(r["received"]),
                  str(r["jobs_received"]), str(r["balance"]), style=style)
    if view.get("refused"):
        t.caption = f"{view['refused']} receipt(s) proved nothing (forged, not ours, or replayed)"
    return t


def ledger_table(entries: list[dict[str, Any]]) -> Table:
    t = Table(title="Ledger", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("seq", "time (UTC)", "kind", "peer", "data"):
        t.add_column(col, no_wrap=col != "data", overflow="fold")
    for e in entries:
        when = dt.datetime.fromtimestamp(e["t_ms"] / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        data = ", ".join(f"{k}={v}" for k, v in e["data"].items()
                         if k not in ("receipt", "results", "report"))[:120]
        t.add_row(str(e["seq"]), when, e["kind"], short_peer(e["peer"]), data)
    return t


def ledger_report(r: dict[str, Any]) -> Text:
    out = Text()
    out.append("OK", style="bold green")
    out.append(f"  {r['entries']} entries by {r['owner']}: chain and every signature verify\n")
    out.append(f"  head {r['head']}\n")
    out.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items())) + "\n")
    if r.get("quarantined"):
        out.append(f"  {r['quarantined']} damaged record(s) were moved to quarantine at a start\n", style="yellow")
    return out


def map_summary(m: dict[str, Any]) -> Any:
    """A model job's or dataset job's outcome: rows, speed, checks, who did what, what was saved."""
    from rich.console import Group

    from p2pnode.services.operations import describe_paid

    head = Text()
    model = m.get("model", {})
    if m.get("already_done"):
        head.append("ALREADY DONE", style="bold green")
        head.append(f"  map {m['map']}: the same model, data and shards finished earlier ({m['rows']} rows in "
                    f"{m['shards']} shard(s), kept in {m.get('state_dir')}); nothing was run, checked or paid now; "
                    "--fresh computes it again\n")
    else:
        head.append("DONE", style="bold green")
        head.append(f"  {m['rows']} rows in {m['shards']} shard(s)"
                    + (f" ({m['resumed']} from an earlier run)" if m["resumed"] else "")
                    + f", {m['seconds']:.2f} s, {m['rows_per_s']:.0f} rows/s\n")
        check = {"rows": f"checked: {m['checked_rows']} sampled rows re-run",
                 "none": "not checked (--verify none)"}.get(m["verify"],
                                                            "checked: whole shards re-run (the model couples its rows)")
        head.append(f"  model {model.get('inputs')} -> {model.get('outputs')}, {model.get('gflop', 0):.3g} GFLOP; "
                    f"{check}; {m['retries']} shard(s) redone elsewhere\n")
        head.append(f"  {describe_paid(m.get('paid') or {})}\n")
    saved = m.get("saved")
    if saved:
        head.append(f"  saved {', '.join(saved['outputs'])} to {saved['path']}")
        if saved["skipped"]:
            head.append(f" (not saved: {', '.join(saved['skipped'])}; use .npz for all outputs)")
        head.append("\n")
    t = Table(box=box.SIMPLE, title="rows by provider")
    t.add_column("provider")
    t.add_column("rows", justify="right")
    for peer, rows in sorted(m["by_provider"].items(), key=lambda x: -x[1]):
        t.add_row(short_peer(peer), str(rows))
    return Group(head, t) if m["by_provider"] else head
