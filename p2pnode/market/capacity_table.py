"""The live, expiring table of capacity ads: what this node believes the market offers.

Rules, applied in this order by :meth:`CapacityTable.offer` (``specs/capacity-ad.md`` step 5):

1. the ad's peer must be the gossip message's originator (``wrong_origin``);
2. it must not have expired (``expired``), nor be issued in the future beyond the allowed clock
   skew (``future``), nor live longer than the maximum TTL (``ttl_too_long``);
3. its sequence number must be higher than any seen from that peer (``stale``): this is what
   stops replays, and it is remembered after the ad itself expires;
4. a new peer needs room in the table (``table_full``);
5. the peer must have rate budget left (``rate_limited``).

An accepted ad replaces the peer's previous one. Entries disappear at their expiry, which is the
ad's own ``exp`` capped at ``received + max_ttl`` so a peer with a wrong clock cannot pin an entry.

:meth:`CapacityTable.market_size` counts the providers with a live ad, including those a full table
had no room for: it is what paces every provider's ads (``market.pacing``).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pnode.errors import AdRejected
from p2pnode.market.pacing import MAX_TTL_S
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.wire.capacity_ad import CapacityAd, SignedAd


@dataclass(frozen=True, slots=True)
class TableLimits:
    max_peers: int = 1024
    max_ttl_s: float = MAX_TTL_S
    max_clock_skew_s: float = 30.0
    rate_burst: float = 10.0
    rate_per_s: float = 0.5  # 30 ads a minute sustained per peer


@dataclass(frozen=True, slots=True)
class TableEntry:
    ad: CapacityAd
    raw: bytes
    received_at: float
    expires_at: float


class CapacityTable:
    def __init__(self, limits: TableLimits | None = None) -> None:
        self.limits = limits or TableLimits()
        self._entries: dict[bytes, TableEntry] = {}
        # peer -> (highest seq seen, when that memory may be dropped)
        self._high_water: dict[bytes, tuple[int, float]] = {}
        # peer -> when its newest valid ad expires: every provider with a live ad, listed or not
        self._live: dict[bytes, float] = {}
        self._max_live = 16 * self.limits.max_peers
        self._rates = TokenBuckets(
            burst=self.limits.rate_burst,
            rate=self.limits.rate_per_s,
            max_keys=4 * self.limits.max_peers,
        )

    def offer(self, signed: SignedAd, now: float, *, origin: bytes | None = None,
              max_ttl_s: float | None = None) -> TableEntry:
        """Insert ``signed`` if every rule holds; otherwise raise ``AdRejected`` with its code.
        ``max_ttl_s``: a TTL limit tighter than the table's (version 1's topic)."""
        ad = signed.ad
        lim = self.limits
        now_ms = now * 1000.0
        if origin is not None and origin != ad.peer_id:
            raise AdRejected("ad is signed by a peer other than the message's originator",
                             code="wrong_origin")
        if ad.expires_at_ms <= now_ms:
            raise AdRejected("ad has expired", code="expired")
        if ad.issued_at_ms > now_ms + lim.max_clock_skew_s * 1000.0:
            raise AdRejected("ad is issued in the future", code="future")
        if ad.expires_at_ms - ad.issued_at_ms > min(lim.max_ttl_s, max_ttl_s or lim.max_ttl_s) * 1000.0:
            raise AdRejected("ad lives longer than the maximum TTL", code="ttl_too_long")
        known = self._high_water.get(ad.peer_id)
        if known is not None and ad.seq <= known[0]:
            raise AdRejected(f"sequence {ad.seq} is not newer than {known[0]}", code="stale")
        if ad.peer_id not in self._entries and len(self._entries) >= lim.max_peers:
            self._count(ad, now)
            raise AdRejected("capacity table is full", code="table_full")
        if not self._rates.take(ad.peer_id, now):
            raise AdRejected("peer exceeds its ad rate", code="rate_limited")
        expires_at = min(ad.expires_at_ms / 1000.0, now + lim.max_ttl_s)
        entry = TableEntry(ad=ad, raw=signed.raw, received_at=now, expires_at=expires_at)
        self._entries[ad.peer_id] = entry
        self._count(ad, now)
        # Remember the sequence for as long as any older ad of this peer could still be valid.
        self._high_water[ad.peer_id] = (ad.seq, now + lim.max_ttl_s + lim.max_clock_skew_s)
        return entry

    def _count(self, ad: CapacityAd, now: float) -> None:
        if ad.peer_id in self._live or len(self._live) < self._max_live:
            self._live[ad.peer_id] = min(ad.expires_at_ms / 1000.0, now + self.limits.max_ttl_s)

    def market_size(self, now: float) -> int:
        """Providers with a live, valid ad (at most 16 times the table's size are counted)."""
        return sum(1 for until in self._live.values() if until > now)

    def expire(self, now: float) -> list[bytes]:
        """Drop entries whose time is up; return the peers dropped."""
        gone = [p for p, e in self._entries.items() if e.expires_at <= now]
        for p in gone:
            del self._entries[p]
        for p in [p for p, until in self._live.items() if until <= now]:
            del self._live[p]
        for p in [p for p, (_, until) in self._high_water.items() if until <= now]:
            if p not in self._entries:
                del self._high_water[p]
        return gone

    def remove(self, peer_id: bytes) -> None:
        self._entries.pop(peer_id, None)
        self._live.pop(peer_id, None)

    def entries(self, now: float) -> list[TableEntry]:
        """Live entries, newest-issued first."""
        live = [e for e in self._entries.values() if e.expires_at > now]
        return sorted(live, key=lambda e: e.ad.issued_at_ms, reverse=True)

    def get(self, peer_id: bytes) -> TableEntry | None:
        return self._entries.get(peer_id)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries
