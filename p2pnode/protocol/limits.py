"""Per-peer bounds on what a peer can make this node hold: open streams, and jobs already seen.

Both are pure (time passed in) and bounded in memory, so the shell can ask them on every stream.

* :class:`StreamLimits` caps concurrent streams of one protocol per peer and in total. A peer over
  its own cap is refused *and* penalised (code ``stream_cap``): it is the one hogging the node. A
  stream refused because the node as a whole is full costs the peer nothing.
* :class:`SeenJobs` remembers every ``(requester, job id)`` a provider has taken a request for, until
  the job's deadline; a second request for the same job is a replay and is refused, so a job never
  runs twice whatever is replayed on a new stream.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

# the refusal codes, also the penalty reasons (protocol/penalties.py)
PEER_CAP = "stream_cap"
NODE_FULL = "node_full"


@dataclass
class StreamLimits:
    """At most ``per_peer`` concurrent streams from one peer and ``total`` from everyone."""

    per_peer: int
    total: int
    _open: dict[bytes, int] = field(default_factory=dict)
    _total: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per_peer < 1 or self.total < self.per_peer:
            raise ValueError("limits need 1 <= per_peer <= total")

    def acquire(self, peer: bytes) -> str | None:
        """Take a slot for ``peer``: ``None`` when granted, else the refusal code."""
        code = None
        if self._open.get(peer, 0) >= self.per_peer:
            code = PEER_CAP
        elif self._total >= self.total:
            code = NODE_FULL
        if code is not None:
            self.refused[code] = self.refused.get(code, 0) + 1
            return code
        self._open[peer] = self._open.get(peer, 0) + 1
        self._total += 1
        return None

    def release(self, peer: bytes) -> None:
        n = self._open.get(peer, 0)
        if n <= 0:
            raise ValueError("release without acquire")
        if n == 1:
            del self._open[peer]
        else:
            self._open[peer] = n - 1
        self._total -= 1

    def open(self, peer: bytes | None = None) -> int:
        return self._total if peer is None else self._open.get(peer, 0)


@dataclass
class SeenJobs:
    """Job ids taken, each remembered until its deadline (plus ``grace_s``); at most ``max_jobs``.

    When full, the entry closest to expiry is forgotten first. Forgetting early can only let a
    replay through for a job whose deadline is about to pass anyway; ``max_jobs`` is sized so that
    does not happen in practice (a provider takes far fewer jobs than that per deadline).
    """

    max_jobs: int = 65536
    grace_s: float = 60.0
    _until: dict[tuple[bytes, bytes], float] = field(default_factory=dict)
    _heap: list[tuple[float, bytes, bytes]] = field(default_factory=list)

    def add(self, requester: bytes, job: bytes, deadline: float, now: float) -> bool:
        """Remember a job; ``False`` (and nothing changes) when it was already seen and is live."""
        self._expire(now)
        key = (requester, job)
        if key in self._until:
            return False
        until = max(deadline, now) + self.grace_s
        self._until[key] = until
        heapq.heappush(self._heap, (until, requester, job))
        while len(self._until) > self.max_jobs:
            self._pop()
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._until

    def __len__(self) -> int:
        return len(self._until)

    def _pop(self) -> None:
        until, requester, job = heapq.heappop(self._heap)
        if self._until.get((requester, job)) == until:
            del self._until[(requester, job)]

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            self._pop()
