"""Views of a running node that its dashboard shows beside ``status``: the hardware and what of it
is offered, the ledger's tail, and the credits over time, folded from the ledger.

Each is a plain function of the collaborators it reads (the resources, the executor, the ledger);
:class:`~p2pnode.control.views.ControlViews` answers the control commands with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pnode.ledger.store import Ledger

MAX_LEDGER_TAIL = 500
MAX_HISTORY_POINTS = 400
SCAN_PER_UPDATE = 2000  # ledger entries read by one update of the credit history
MAX_DATA_TEXT = 160  # a ledger entry's data, shown: each value cut to this many characters


def gpus(hardware: Any, executor: Any, offered: tuple[str, ...], price: int, paused: bool) -> dict[str, Any]:
    """Each device: memory, utilisation, slots and slots in use; and what is offered, at what price."""
    busy = executor.busy if executor is not None else {}
    per = executor.slots_per_device if executor is not None else 0
    out: dict[str, Any] = {"gpus": [], "cpu": None, "offered": list(offered), "price": price, "paused": paused,
                           "running": executor.running if executor is not None else 0,
                           "slots": executor.slots if executor is not None else 0}
    if hardware is None:
        return out
    c = hardware.cpu
    out["cpu"] = {"model": c.model, "cores": c.cores, "mem_total": c.memory_total, "mem_free": c.memory_free,
                  "busy": busy.get(None, 0) if None in busy else None, "slots": per if None in busy else 0}
    for g in hardware.gpus:
        out["gpus"].append({"index": g.index, "name": g.name, "mem_total": g.memory_total, "mem_free": g.memory_free,
                            "util": g.utilization, "cc": g.compute_capability, "driver": g.driver,
                            "slots": per if g.index in busy else 0, "busy": busy.get(g.index, 0)})
    out["problems"] = list(hardware.problems)
    return out


def ledger_tail(ledger: Ledger | None, last: int) -> dict[str, Any]:
    """The newest ``last`` entries, newest first, their data cut short (a receipt's bytes are
    not for reading here: ``p2pnode ledger show`` has them whole)."""
    if ledger is None:
        return {"entries": [], "count": 0}
    last = max(0, min(last, MAX_LEDGER_TAIL))
    count = ledger.count  # entries a write in flight appends come after it: not shown yet
    rows = [e.to_json() for e in ledger.entries(since=max(0, count - last), limit=min(last, count))]
    for r in rows:
        r["data"] = {k: _short(v) for k, v in r["data"].items()}
    rows.reverse()
    return {"entries": rows, "count": count}


def _short(value: Any) -> Any:
    text = value if isinstance(value, str) else None
    if text is not None and len(text) > MAX_DATA_TEXT:
        return text[:MAX_DATA_TEXT] + "…"
    if isinstance(value, (dict, list)):
        import json

        dumped = json.dumps(value, default=str)
        return value if len(dumped) <= MAX_DATA_TEXT else dumped[:MAX_DATA_TEXT] + "…"
    return value


@dataclass
class CreditHistory:
    """Cumulative credits given and received over time, from the ledger's ``credit`` entries
    (positive: this node gave compute and was paid; negative: it received and paid), read
    incrementally: each call reads only the entries appended since the last."""

    next_seq: int = 0
    given: int = 0
    received: int = 0
    points: list[tuple[float, int, int]] = field(default_factory=list)  # (unix s, given, received)

    def update(self, ledger: Ledger | None) -> dict[str, Any]:
        if ledger is not None:
            # At most SCAN_PER_UPDATE entries a call: a node with a long ledger catches up over a
            # few updates instead of stalling its loop on the first (each entry is decoded).
            end = min(ledger.count, self.next_seq + SCAN_PER_UPDATE)
            for e in ledger.entries(since=self.next_seq):
                if e.seq >= end:
                    break
                if e.kind != "credit":
                    continue
                amount = int(e.data.get("amount", 0))
                if amount >= 0:
                    self.given += amount
                else:
                    self.received -= amount
                self.points.append((e.t_ms / 1000, self.given, self.received))
            self.next_seq = end
            if len(self.points) > 2 * MAX_HISTORY_POINTS:
                self.points = _thin(self.points, MAX_HISTORY_POINTS)
        return {"t": [p[0] for p in self.points], "given": [p[1] for p in self.points],
                "received": [p[2] for p in self.points], "total": {"given": self.given, "received": self.received}}


def _thin(points: list[tuple[float, int, int]], n: int) -> list[tuple[float, int, int]]:
    """Every k-th point and the last: a cumulative series keeps its shape."""
    step = max(1, -(-len(points) // n))  # ceil: at most n points, and the last
    out = points[::step]
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out
