"""Credits without a token: bilateral balances folded from the signed receipts in a node's own
ledger (pure), as Bitswap keeps a debt ratio per peer (``specs/ledger.md#credits``).

Each ``receipt`` entry carries the receipt the requester signed. As provider, its ``paid`` is
compute this node *gave* the requester; as requester, compute it *received* from the provider. A
peer's balance is given − received: positive, the peer owes this node work; negative, this node
owes the peer. Only what a receipt proves counts: its signature must verify, its requester and
provider must be this node and the entry's peer in the entry's role, and each (role, job) counts
once, so a forged or replayed receipt earns nothing (it is counted as refused).

Two uses: ``p2pnode credits`` shows the balances, and :meth:`Credits.discount` lets a provider
prefer requesters that gave compute back (reciprocity), while ``budget`` caps what a requester
spends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pnode.errors import PeerError
from p2pnode.ledger.entry import Entry
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import to_base58

MAX_JOBS_REMEMBERED = 1_000_000  # (role, job) pairs kept against replays; older ones fall off first


@dataclass
class Balance:
    given: int = 0  # micro-credits of compute this node gave the peer (it paid us)
    received: int = 0  # micro-credits of compute the peer gave this node (we paid it)
    jobs_given: int = 0
    jobs_received: int = 0

    @property
    def balance(self) -> int:
        return self.given - self.received

    def to_json(self) -> dict[str, int]:
        return {"given": self.given, "received": self.received, "balance": self.balance,
                "jobs_given": self.jobs_given, "jobs_received": self.jobs_received}


@dataclass
class Credits:
    me: bytes
    peers: dict[bytes, Balance] = field(default_factory=dict)
    refused: int = 0  # receipts that proved nothing (forged, not ours, replayed)
    _seen: dict[tuple[str, bytes], None] = field(default_factory=dict)

    def apply(self, entry: Entry) -> None:
        """Fold one ledger entry (only ``receipt`` entries move credits)."""
        if entry.kind != "receipt":
            return
        d = entry.data
        role, peer = d.get("role"), entry.peer
        try:
            r = m.decode_signed("receipt", d["receipt"])
        except (PeerError, KeyError, TypeError, ValueError):
            self.refused += 1
            return
        body = r.body
        mine = (body["provider"] == self.me and body["requester"] == peer) if role == "provider" else \
            (body["requester"] == self.me and body["provider"] == peer) if role == "requester" else False
        key = (str(role), r.job)
        if not mine or key in self._seen:
            self.refused += 1
            return
        self._seen[key] = None
        if len(self._seen) > MAX_JOBS_REMEMBERED:
            self._seen.pop(next(iter(self._seen)))
        paid = int(body["paid"]) if body["accepted"] else 0
        b = self.peers.setdefault(peer, Balance())
        if role == "provider":
            b.given += paid
            b.jobs_given += 1
        else:
            b.received += paid
            b.jobs_received += 1

    @property
    def spent(self) -> int:
        return sum(b.received for b in self.peers.values())

    @property
    def earned(self) -> int:
        return sum(b.given for b in self.peers.values())

    def discount(self, peer: bytes, weight: float) -> float:
        """Price discount in [0, weight] for a requester that gave this node compute: ``weight``
        times the share of the work between us that came from it, when it has given more than it
        received."""
        b = self.peers.get(peer)
        if b is None or weight <= 0 or b.received <= b.given:
            return 0.0
        return weight * (b.received - b.given) / (b.received + b.given)

    def to_json(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = [{"peer": to_base58(p), **b.to_json()} for p, b in self.peers.items()]
        rows.sort(key=lambda r: (-abs(int(r["balance"])), str(r["peer"])))
        return {"peers": rows, "total": {"given": self.earned, "received": self.spent,
                                         "balance": self.earned - self.spent}, "refused": self.refused}
