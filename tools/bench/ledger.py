"""Ledger append cost: one entry per fsync (``synchronous=FULL``) against group commit (what the
node does: concurrent appends share one transaction and one fsync, each acknowledged only once
durable), against ``NORMAL`` and against signing alone, in the same run, on the same disk
(``--dir``, default the system temp dir).

Prints a table or ``--json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from p2pnode.ledger.entry import genesis, make_entry
from p2pnode.ledger.store import Ledger

DATA = {"job": b"j" * 16, "method": "freivalds", "passed": True, "detail": "verified (Freivalds, 20 rounds)"}


def appends(directory: Path, n: int, sync: str) -> float:
    key = SigningKey.generate()
    with tempfile.TemporaryDirectory(dir=directory) as d:
        ledger = Ledger.open(Path(d) / "ledger.sqlite", key)
        ledger._conn.execute(f"PRAGMA synchronous={sync}")
        t0 = time.perf_counter()
        for _ in range(n):
            ledger.append("verification", DATA, peer=ledger.owner)
        elapsed = time.perf_counter() - t0
        ledger.close()
    return n / elapsed


def group_commit(directory: Path, n: int, tasks: int) -> float:
    """``tasks`` trio tasks each recording its share of ``n`` entries through the node's
    TrustService (group commit, synchronous=FULL): entries acknowledged per second."""
    import trio

    from p2pnode.market.reputation import Reputation
    from p2pnode.services.trust import TrustService
    from p2pnode.verify.sampling import SamplingPolicy

    key = SigningKey.generate()
    with tempfile.TemporaryDirectory(dir=directory) as d:
        me = bytes(key.verify_key)
        svc = TrustService(me=me, key=key, ledger_path=Path(d) / "ledger.sqlite", reputation=Reputation(me),
                           policy=SamplingPolicy(), now=time.time, penalise=lambda p, c: None,
                           is_banned=lambda p: False, publish=_no_publish)
        svc.open()
        assert svc.ledger is not None
        owner = svc.ledger.owner

        async def one(k: int) -> None:
            for _ in range(k):
                await svc.record("verification", DATA, peer=owner)

        async def run() -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(one, n // tasks)
            return (n // tasks * tasks) / (time.perf_counter() - t0)

        rate = trio.run(run)
        svc.close()
    return rate


async def _no_publish(topic: str, data: bytes) -> None:
    return None


def signing_only(n: int) -> float:
    key = SigningKey.generate()
    g = genesis(key, 0)
    t0 = time.perf_counter()
    prev = g.hash
    for i in range(1, n + 1):
        prev = make_entry(key, seq=i, prev=prev, t_ms=i, kind="verification", peer=g.data["owner"], data=DATA).hash
    return n / (time.perf_counter() - t0)


def main(args: argparse.Namespace) -> dict[str, Any]:
    full = appends(args.dir, args.n, "FULL")
    normal = appends(args.dir, args.n, "NORMAL")
    sign = signing_only(args.n)
    group = group_commit(args.dir, args.n * 4, args.tasks)
    return {"dir": str(args.dir), "entries": args.n, "full_per_s": full, "normal_per_s": normal,
            "sign_per_s": sign, "group_per_s": group, "tasks": args.tasks,
            "full_vs_normal": normal / full, "full_vs_sign": sign / full, "group_vs_full": group / full}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--tasks", type=int, default=64, help="concurrent appenders for group commit")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = main(a)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"Ledger appends ({r['entries']} entries in {r['dir']})", title_justify="left")
        for col in ("mode", "entries/s", "vs FULL"):
            t.add_column(col, justify="right" if col != "mode" else "left")
        t.add_row("sign + chain only (no disk)", f"{r['sign_per_s']:.0f}", f"{r['full_vs_sign']:.1f}x")
        t.add_row("WAL, synchronous=NORMAL", f"{r['normal_per_s']:.0f}", f"{r['full_vs_normal']:.1f}x")
        t.add_row(f"group commit, FULL, {r['tasks']} tasks (the node)", f"{r['group_per_s']:.0f}",
                  f"{r['group_vs_full']:.1f}x")
        t.add_row("WAL, synchronous=FULL, one entry per fsync", f"{r['full_per_s']:.0f}", "1.0x")
        Console().print(t)
