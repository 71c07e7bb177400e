"""Misbehaviour scores for peers, and when to cut one off.

Each :class:`~p2pnode.errors.PeerError` code has a weight. A peer's score decays exponentially
(half-life ``half_life_s``); when it reaches ``ban_threshold`` the peer is banned for
``ban_s`` seconds: the shell disconnects it and ignores its gossip. Weights are chosen so that
honest races (an older ad arriving by a slower path: ``stale``) cost nothing, while forging or
garbage costs a lot: a dozen forged ads in quick succession get a peer banned
(ten at the same instant exactly reach the threshold; decay between them takes a little off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_WEIGHTS: dict[str, float] = {
    "malformed": 10.0,
    "oversized": 10.0,
    "bad_signature": 10.0,
    "wrong_origin": 10.0,
    "future": 2.0,
    "ttl_too_long": 5.0,
    "expired": 1.0,
    "rate_limited": 2.0,
    "stale": 0.0,
    "table_full": 0.0,
    # streams (protocol/limits.py, net/guard.py): hogging costs a little each time, so a peer that
    # keeps at it is banned; a replayed job or a forged message costs as much as a forged ad
    "stream_cap": 5.0,
    "idle_stream": 2.0,
    "flood": 10.0,
    "replay": 10.0,
    "protocol_violation": 10.0,
    "bad_blob": 10.0,
    "bad_seal": 10.0,
}


@dataclass(slots=True)
class _Score:
    value: float
    updated: float


@dataclass(slots=True)
class PeerPenalties:
    ban_threshold: float = 100.0
    half_life_s: float = 300.0
    ban_s: float = 600.0
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    max_peers: int = 4096
    _scores: dict[bytes, _Score] = field(default_factory=dict)
    _banned_until: dict[bytes, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def score(self, peer: bytes, now: float) -> float:
        s = self._scores.get(peer)
        if s is None:
            return 0.0
        return s.value * math.pow(0.5, max(0.0, now - s.updated) / self.half_life_s)

    def record(self, peer: bytes, code: str, now: float) -> bool:
        """Count one offence; return True when this offence newly bans the peer."""
        self.counts[code] = self.counts.get(code, 0) + 1
        weight = self.weights.get(code, 5.0)
        if weight <= 0:
            return False
        value = self.score(peer, now) + weight
        self._scores[peer] = _Score(value, now)
        if len(self._scores) > self.max_peers:
            lowest = min(self._scores, key=lambda p: self.score(p, now))
            del self._scores[lowest]
        if value >= self.ban_threshold and not self.is_banned(peer, now):
            self._banned_until[peer] = now + self.ban_s
            return True
        return False

    def is_banned(self, peer: bytes, now: float) -> bool:
        until = self._banned_until.get(peer)
        if until is None:
            return False
        if until <= now:
            del self._banned_until[peer]
            self._scores.pop(peer, None)
            return False
        return True

    def banned(self, now: float) -> list[bytes]:
        return [p for p in list(self._banned_until) if self.is_banned(p, now)]
