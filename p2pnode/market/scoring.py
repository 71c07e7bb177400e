"""Ranking bids with what this node observed, not only what providers claim (pure).

:class:`ObservedScorer` extends the neutral :class:`~p2pnode.protocol.job_requester.Scorer`:

* a bid's time estimate is stretched by how much slower the provider turned out than it claimed
  (observed kernel GFLOP/s against advertised; never trusted to be faster than claimed);
* the bid's arrival latency is added (a slow link costs every message of the job);
* :meth:`adjust` applies the reputation hook (a callable given by the shell, which reads the clock;
  1.0 without one);
* :meth:`load` spreads work: a provider that won ``c`` of this node's last ``RECENT_AWARDS`` awards
  scores ``1 + spread · c`` times worse, so equally good offers take turns instead of one provider
  getting every job (and a provider that is clearly better still wins most).

Observations are exponentially weighted (``alpha``) and bounded in number.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pnode.protocol.job_requester import Scorer
from p2pnode.wire import job as m

RECENT_AWARDS = 32


@dataclass
class Observation:
    slowdown: float = 1.0  # observed time / claimed time, >= 1
    latency_ms: float = 0.0


@dataclass
class ObservedScorer(Scorer):
    alpha: float = 0.3
    max_peers: int = 4096
    seen: dict[bytes, Observation] = field(default_factory=dict)
    advertised: dict[bytes, float] = field(default_factory=dict)  # GFLOP/s from the capacity ad
    reputation: Callable[[bytes], float] | None = None
    spread: float = 0.02
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=RECENT_AWARDS))

    def adjust(self, peer: bytes) -> float:
        return self.reputation(peer) if self.reputation is not None else 1.0

    def awarded(self, peer: bytes) -> None:
        self.recent.append(peer)

    def load(self, peer: bytes) -> float:
        """``1 + spread · (awards among the last RECENT_AWARDS)``: the spreading factor."""
        return 1.0 + self.spread * self.recent.count(peer) if self.spread else 1.0

    def observe_latency(self, peer: bytes, ms: float) -> None:
        o = self._get(peer)
        o.latency_ms = ms if o.latency_ms == 0 else (1 - self.alpha) * o.latency_ms + self.alpha * ms

    def observe_speed(self, peer: bytes, flops: float, kernel_s: float) -> None:
        claimed = self.advertised.get(peer)
        if not claimed or kernel_s <= 0 or flops <= 0:
            return
        ratio = max(1.0, claimed / (flops / kernel_s / 1e9))
        o = self._get(peer)
        o.slowdown = (1 - self.alpha) * o.slowdown + self.alpha * ratio

    def _get(self, peer: bytes) -> Observation:
        if peer not in self.seen and len(self.seen) >= self.max_peers:
            self.seen.pop(next(iter(self.seen)))
        return self.seen.setdefault(peer, Observation())

    def score(self, peer: bytes, bid: m.Bid, budget: int, window_ms: float) -> float:
        o = self.seen.get(peer, Observation())
        time_ms = bid.estimate_ms * o.slowdown + o.latency_ms
        return (bid.price / max(budget, 1) + time_ms / max(window_ms, 1.0)) * self.adjust(peer) * self.load(peer)
