"""The live, expiring table of capacity ads: what this node believes the market offers.

Rules, applied in this order by :meth:`CapacityTable.offer` (``specs/capacity-ad.md`` step 5):

1. the ad's peer must be the gossip message's originator (``wrong_origin``);
2. it must not have expired (``expired``), nor be issued in the future beyond the allowed clock
   skew (``future``), nor live longer than the maximum TTL (``ttl_too_long``);
3. its sequence number must be higher than any seen from that peer (``stale``): this is what
   stops replays, and it is remembered after the ad itself expires;
4. a new peer needs room in the table (``table_full``), and so does the peer that introduced it
   (below);
5. the peer must have rate budget left (``rate_limited``).

An accepted ad replaces the peer's previous one. Entries disappear at their expiry, which is the
ad's own ``exp`` capped at ``received + max_ttl`` so a peer with a wrong clock cannot pin an entry.

**Admission** (``specs/capacity-ad.md``, Admission): every ad comes ``via`` a peer, its
*introducer*: the gossip forwarder, or the peer whose market sync held it. What this node has seen
of a provider (:mod:`p2pnode.market.standing`) decides who keeps a place:

* a provider heard of only through another peer (``UNPROVEN``) takes a place only while its
  introducer holds fewer than ``source_share`` of the table, and its host (the first address its
  ad names) fewer than ``host_share``: one connection, or one machine, cannot fill it;
* in a full table a newcomer takes the place of, in this order: a provider set aside (asked, and
  it did not answer), a provider of lower standing, or, among unproven ones, one of the host or
  introducer with the most entries when it holds at least two more than the newcomer's does.
  Otherwise it is refused (``table_full``). So one attacker's thousand identities, however they
  arrive, end up with one introducer's share of the unproven places, and a provider this node
  can reach or has worked with always finds a place.

:meth:`CapacityTable.market_size` counts the providers with a live ad, including those a full table
had no room for: it is what paces every provider's ads (``market.pacing``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from p2pnode.errors import AdRejected
from p2pnode.market.groups import Groups
from p2pnode.market.pacing import MAX_TTL_S
from p2pnode.market.rate_limit import TokenBuckets
from p2pnode.market.selection import hosts
from p2pnode.market.standing import PeerStanding, Standing
from p2pnode.wire.capacity_ad import CapacityAd, SignedAd

_SCAN = 64  # entries looked at for a victim at most (those answered or no longer set aside skipped)


@dataclass(frozen=True, slots=True)
class TableLimits:
    max_peers: int = 1024
    max_ttl_s: float = MAX_TTL_S
    max_clock_skew_s: float = 30.0
    rate_burst: float = 10.0
    rate_per_s: float = 0.5  # 30 ads a minute sustained per peer
    source_share: float = 0.25  # most of the table one introducer's unproven providers may hold
    host_share: float = 1 / 16  # and one host's (by the first address its ads name)

    @property
    def max_per_source(self) -> int:
        return max(1, int(self.max_peers * self.source_share))

    @property
    def max_per_host(self) -> int:
        return max(1, int(self.max_peers * self.host_share))


@dataclass(frozen=True, slots=True)
class TableEntry:
    ad: CapacityAd
    raw: bytes
    received_at: float
    expires_at: float


class CapacityTable:
    def __init__(self, limits: TableLimits | None = None, known: Callable[[bytes], bool] | None = None) -> None:
        """``known``: whether this node's ledger has history with a peer (it counts as answered)."""
        self.limits = limits or TableLimits()
        self.standing = PeerStanding(4 * self.limits.max_peers, known)
        self._entries: dict[bytes, TableEntry] = {}
        # peer -> the peer that introduced its listing (itself: it came over its own connection)
        self._source: dict[bytes, bytes] = {}
        # the listed providers each introducer introduced, and those on each host, longest listed
        # first (unproven ones: not those that came over their own connection); and the direct ones
        self._by_source = Groups()
        self._by_host = Groups()
        self._host: dict[bytes, str] = {}
        self._direct: dict[bytes, None] = {}
        self._aside_queue: dict[bytes, None] = {}  # listed providers set aside, first evicted
        self.standing.on_aside = self._set_aside
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

    def offer(self, signed: SignedAd, now: float, *, origin: bytes | None = None, via: bytes | None = None,
              max_ttl_s: float | None = None) -> TableEntry:
        """Insert ``signed`` if every rule holds; otherwise raise ``AdRejected`` with its code.
        ``via``: the peer it came from (default: the provider itself); ``max_ttl_s``: a TTL limit
        tighter than the table's (version 1's topic)."""
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
        peer = ad.peer_id
        source = peer if via is None else via
        host = _host_key(ad)
        victim = self._room_for(ad, source, host, now) if peer not in self._entries else None
        moved = self._host.get(peer)
        if moved is not None and moved != host and self._by_host.size(host) >= lim.max_per_host and \
                source != peer:
            raise AdRejected("this provider now names a host that holds its share of the table", code="table_full")
        if not self._rates.take(peer, now):
            raise AdRejected("peer exceeds its ad rate", code="rate_limited")
        if victim is not None:
            self.remove(victim)
        expires_at = min(ad.expires_at_ms / 1000.0, now + lim.max_ttl_s)
        entry = TableEntry(ad=ad, raw=signed.raw, received_at=now, expires_at=expires_at)
        self._entries[peer] = entry
        self._introduced(peer, source, host)
        self._count(ad, now)
        # Remember the sequence for as long as any older ad of this peer could still be valid.
        self._high_water[ad.peer_id] = (ad.seq, now + lim.max_ttl_s + lim.max_clock_skew_s)
        return entry

    def _room_for(self, ad: CapacityAd, source: bytes, host: str, now: float) -> bytes | None:
        """Room for a provider not listed yet: None (there is room) or the entry to evict for it;
        ``table_full`` when it gets no place (it still counts in the market's size)."""
        peer = ad.peer_id
        unproven = source != peer and not self.standing.has_answered(peer)
        lim = self.limits
        if unproven and (self._by_source.size(source) >= lim.max_per_source or
                         self._by_host.size(host) >= lim.max_per_host):
            self._count(ad, now)
            raise AdRejected("the peer that introduced this provider, or its host, holds its share of the table",
                             code="table_full")
        if len(self._entries) < lim.max_peers:
            return None
        rank = Standing.UNPROVEN if unproven else self.standing_of(peer, source)
        victim = self._victim(rank, source, host, now)
        if victim is None:
            self._count(ad, now)
            raise AdRejected("capacity table is full", code="table_full")
        return victim

    def _victim(self, rank: Standing, source: bytes, host: str, now: float) -> bytes | None:
        """The entry a newcomer of standing ``rank`` from ``host`` introduced by ``source``
        displaces, if any: one set aside; else, for a proven newcomer, an unproven one (of the
        largest host, then of the most prolific introducer), then a direct one; else an unproven
        one of the largest host or introducer, when that holds at least two more than the
        newcomer's. The longest listed first. Amortised O(1)."""
        for p in list(self._aside_queue)[:_SCAN]:
            if p not in self._entries or not self.standing.is_aside(p, now):
                del self._aside_queue[p]
            elif self.standing_of(p) <= rank:
                return p
        for groups, mine in ((self._by_host, host), (self._by_source, source)):
            most = groups.largest()
            if most is not None and (rank > Standing.UNPROVEN or groups.size(most) >= groups.size(mine) + 2):
                victim = self._oldest(groups.members(most), Standing.UNPROVEN)
                if victim is not None:
                    return victim
        return self._oldest(list(self._direct), Standing.DIRECT) if rank is Standing.ANSWERED else None

    def _oldest(self, listed: list[bytes], standing: Standing) -> bytes | None:
        """The longest listed of ``listed`` still of ``standing`` (one answered since is skipped)."""
        return next((p for p in listed[:_SCAN] if self.standing_of(p) is standing), None)

    def standing_of(self, peer: bytes, source: bytes | None = None) -> Standing:
        """What this node has seen of ``peer`` (``source``: its introducer, if not listed yet)."""
        if self.standing.has_answered(peer):
            return Standing.ANSWERED
        return Standing.DIRECT if self._source.get(peer, source) == peer else Standing.UNPROVEN

    def source_of(self, peer: bytes) -> bytes | None:
        return self._source.get(peer)

    def introduced(self, source: bytes) -> int:
        """Providers listed that ``source`` introduced (and that did not come over their own connection)."""
        return self._by_source.size(source)

    def on_host(self, host: str) -> int:
        """Unproven providers listed whose ads name ``host`` first."""
        return self._by_host.size(host)

    def _set_aside(self, peer: bytes) -> None:
        if peer in self._entries:
            self._aside_queue[peer] = None

    def _introduced(self, peer: bytes, source: bytes, host: str) -> None:
        old = self._source.get(peer)
        if old is not None and (old == peer or source != peer):
            moved = self._host.get(peer)
            if moved is not None and moved != host:  # a newer ad names another host first
                self._by_host.discard(moved, peer)
                self._by_host.add(host, peer)
                self._host[peer] = host
            return  # it keeps its introducer, unless it now came over its own connection: direct
        self._unlist(peer)
        self._source[peer] = source
        if source == peer:
            self._direct[peer] = None
        else:
            self._by_source.add(source, peer)
            self._by_host.add(host, peer)
            self._host[peer] = host

    def _unlist(self, peer: bytes) -> None:
        source = self._source.pop(peer, None)
        if source == peer:
            self._direct.pop(peer, None)
        elif source is not None:
            self._by_source.discard(source, peer)
            self._by_host.discard(self._host.pop(peer), peer)

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
            self._forget(p)
        for p in [p for p, until in self._live.items() if until <= now]:
            del self._live[p]
        for p in [p for p, (_, until) in self._high_water.items() if until <= now]:
            if p not in self._entries:
                del self._high_water[p]
        return gone

    def remove(self, peer_id: bytes) -> None:
        self._forget(peer_id)
        self._live.pop(peer_id, None)

    def _forget(self, peer: bytes) -> None:
        self._entries.pop(peer, None)
        self._unlist(peer)
        self._aside_queue.pop(peer, None)

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


def _host_key(ad: CapacityAd) -> str:
    """The host an ad's provider is on, by its addresses (the least IP or name they give; an ad
    with relayed addresses only is a host of its own)."""
    named = hosts(ad)
    return min(named) if named else "peer:" + ad.peer_id.hex()
