"""What this node has seen of a provider itself, as opposed to what its ad claims (pure).

A validly signed ad proves only that somebody holds a key; keys are free. So the market table and
the choice of whom to ask for bids weigh a provider by what this node saw:

* ``ANSWERED``: it answered this node on the job protocol (a bid, a decline, a result), or this
  node's ledger knows it. It is a real node that can be dialed.
* ``DIRECT``: its ad came from the provider itself, over its own connection to this node (gossip
  whose forwarder is the originator, or the provider's own ad in its market sync). It holds a
  connection, which costs an identity something.
* ``UNPROVEN``: heard of through another peer only (a gossip forwarder, somebody's market sync).
  Anyone can hand over any number of these.

"Told of by several peers" is deliberately not a standing: honest nodes forward and sync every ad
that validates, so an ad one attacker handed to one honest node reaches everyone through honest
peers, and would count as vouched by all of them.

A provider that was asked and did not answer (the dial failed, the stream broke before any answer,
silence through the bid window) is **set aside**: not asked again for a back-off that doubles with
each miss (``ASIDE_S`` up to ``ASIDE_MAX_S``), and evicted first from a full table. An answer ends
the back-off. An address whose dial failed is set aside the same way, and with it every unproven
provider that names only such addresses. These memories are bounded and outlive the provider's ad.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import Any

ASIDE_S = 60.0
ASIDE_MAX_S = 3600.0


class Standing(IntEnum):
    UNPROVEN = 0
    DIRECT = 1
    ANSWERED = 2


class PeerStanding:
    """Answered and set-aside providers; ``known`` adds the ledger's (a pure lookup)."""

    def __init__(self, max_peers: int = 4096, known: Callable[[bytes], bool] | None = None) -> None:
        self.max_peers = max_peers
        self.known = known
        self._answered: dict[bytes, float] = {}  # peer -> when it last answered
        self._aside: dict[bytes, tuple[float, int]] = {}  # peer -> (set aside until, misses in a row)
        self._dead: dict[str, tuple[float, int]] = {}  # address -> the same, for dials that failed
        self.on_aside: Callable[[bytes], None] | None = None  # told of each provider set aside

    def answered(self, peer: bytes, now: float) -> None:
        """``peer`` answered this node: proven, and no longer set aside."""
        self._answered.pop(peer, None)
        self._answered[peer] = now
        self._aside.pop(peer, None)
        _bound(self._answered, self.max_peers)

    def has_answered(self, peer: bytes) -> bool:
        return peer in self._answered or (self.known is not None and self.known(peer))

    def set_aside(self, peer: bytes, now: float, addrs: Iterable[str] = ()) -> float:
        """``peer`` was asked and did not answer (at ``addrs``, when the dial failed); returns
        until when it is set aside."""
        until = _miss(self._aside, peer, now, self.max_peers)
        if self.on_aside is not None:
            self.on_aside(peer)
        for a in addrs:
            _miss(self._dead, a, now, self.max_peers)
        return until

    def is_aside(self, peer: bytes, now: float) -> bool:
        held = self._aside.get(peer)
        return held is not None and held[0] > now

    def addresses_dead(self, addrs: Iterable[str], now: float) -> bool:
        """Whether every one of ``addrs`` failed a dial lately: an unproven provider that names only
        such addresses (a thousand made-up providers at one third party's address) is set aside
        with them. Not a proven one: anyone can name anyone's address in a made-up ad."""
        addrs = list(addrs)
        return bool(addrs) and all(a in self._dead and self._dead[a][0] > now for a in addrs)

    def aside_count(self, now: float) -> int:
        return sum(1 for until, _ in self._aside.values() if until > now)


def _miss(d: dict[Any, tuple[float, int]], key: object, now: float, limit: int) -> float:
    _, misses = d.pop(key, (0.0, 0))
    until = now + min(ASIDE_MAX_S, ASIDE_S * 2.0 ** misses)
    d[key] = (until, misses + 1)
    _bound(d, limit)
    return until


def _bound(d: dict[Any, Any], limit: int) -> None:
    while len(d) > limit:
        del d[next(iter(d))]  # oldest first: dicts keep insertion order, and marks re-insert
