"""How ledger entries become reputation evidence (pure).

A node's reputation table is a fold of its own ledger: replaying the ledger from the genesis gives
the same table the running node built entry by entry, so scores survive restarts and can be
recomputed by anyone holding the ledger (``specs/reputation.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from p2pnode.errors import PeerError
from p2pnode.ledger.entry import Entry
from p2pnode.market.reputation import Opinion, Reputation
from p2pnode.wire.report import Report, decode_report

_PASSED = {"freivalds": "checked_ok", "rerun": "checked_ok", "rows": "checked_ok", "steps": "checked_ok",
           "calibration": "calibrated"}
# Ad rejections that honest peers cause in normal gossip (a replayed or late ad, a burst over the
# rate at start-up, a stream that timed out on a bad link): remembered in the ledger, but no
# evidence against the peer.
BENIGN_PENALTIES = frozenset({"stale", "expired", "future", "rate_limited", "table_full", "idle_stream"})


class Folded(Protocol):
    """What folding reads of an entry (a stored :class:`Entry`, or one the simulator has not signed)."""

    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def peer(self) -> bytes: ...
    @property
    def t_ms(self) -> int: ...


def apply(rep: Reputation, entry: Entry | Folded, report: Report | None = None) -> None:
    """Fold one entry into ``rep`` (``report``: a ``report`` entry's report, where it was decoded
    already: it is decoded and its signatures checked again otherwise)."""
    t, d, peer = entry.t_ms / 1000.0, entry.data, entry.peer
    what: str | None = None
    if entry.kind == "verification":
        if d["passed"]:
            what = _PASSED.get(d["method"])
        else:
            # a first failed calibration is unconfirmed: no evidence (protocol/calibration.py)
            what = ("overclaim" if d.get("confirmed", True) else None) if d["method"] == "calibration" else "cheat"
    elif entry.kind == "receipt":
        if d["role"] == "provider":
            what = "paid"
        elif d.get("accepted"):
            what = "accepted"
    elif entry.kind == "failure" and d.get("overrun") is True:
        pass  # a job that took longer than estimated: no evidence of anything but a low estimate
    elif entry.kind == "failure" or (entry.kind == "penalty" and d["code"] not in BENIGN_PENALTIES):
        what = entry.kind
    elif entry.kind == "dispute" and d["wrong"] == "checker":
        rep.observe(d["checker"], "cheat", t)
    elif entry.kind == "report":
        try:
            r = report if report is not None and report.raw == d["report"] else decode_report(d["report"])
        except PeerError:
            return  # stored before a rule change; not evidence
        rep.report(r.reporter, r.subject, Opinion(r.pos, r.neg, min(r.t_ms / 1000.0, t), r.witnesses))
    if what is not None and peer:
        rep.observe(peer, what, t)
