"""Ledger append cost: ``synchronous=FULL`` (what the node uses) against ``NORMAL`` and against
signing alone, in the same run, on the same disk (``--dir``, default the system temp dir).

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
    return {"dir": str(args.dir), "entries": args.n, "full_per_s": full, "normal_per_s": normal,
            "sign_per_s": sign, "full_vs_normal": normal / full, "full_vs_sign": sign / full}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
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
        t.add_row("WAL, synchronous=FULL (the node)", f"{r['full_per_s']:.0f}", "1.0x")
        Console().print(t)
