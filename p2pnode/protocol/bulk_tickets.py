"""Tickets for the bulk channel (pure; time passed in): who may connect, for what, until when.

A holder issues a ticket inside an authenticated blob stream (``specs/blobs.md``) and accepts a
bulk connection only for a ticket it issued, once, before it expires. Tickets are bounded per peer
and in all, so a peer cannot make the holder hold more than a few: one ticket is one blob stream's
worth of work, and a peer already holds at most ``per_peer`` of those.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pnode.wire.bulk import SECRET, TICKET


@dataclass(frozen=True)
class Ticket:
    id: bytes
    secret: bytes
    peer: bytes  # the reader it was issued to (its libp2p peer id)
    blob_id: bytes
    start: int  # the first chunk it is for
    expires: float


@dataclass
class BulkTickets:
    per_peer: int = 8
    total: int = 64
    ttl_s: float = 10.0
    token: Callable[[int], bytes] = os.urandom
    _by_id: dict[bytes, Ticket] = field(default_factory=dict)
    refused: int = 0

    def issue(self, peer: bytes, blob_id: bytes, start: int, now: float) -> Ticket | None:
        """A new ticket for ``peer``, or None when it (or everyone together) holds too many."""
        self._expire(now)
        mine = sum(t.peer == peer for t in self._by_id.values())
        if mine >= self.per_peer or len(self._by_id) >= self.total:
            self.refused += 1
            return None
        ticket = Ticket(self.token(TICKET), self.token(SECRET), peer, blob_id, start, now + self.ttl_s)
        self._by_id[ticket.id] = ticket
        return ticket

    def take(self, ticket_id: bytes, now: float) -> Ticket | None:
        """The ticket ``ticket_id`` if it is live, used up by this call; else None."""
        self._expire(now)
        return self._by_id.pop(ticket_id, None)

    def forget(self, peer: bytes) -> None:
        """Drop every ticket of ``peer`` (a peer just banned)."""
        for tid in [tid for tid, t in self._by_id.items() if t.peer == peer]:
            del self._by_id[tid]

    def __len__(self) -> int:
        return len(self._by_id)

    def _expire(self, now: float) -> None:
        for tid in [tid for tid, t in self._by_id.items() if t.expires <= now]:
            del self._by_id[tid]
