"""Which providers a requester asks for bids, from its capacity table (pure).

An ad says what its provider claims; a requester asks first those it has reason to believe
(``specs/capacity-ad.md``, Choosing whom to ask):

1. **Eligible**: offers the workload (on the backend asked for), has an address, enough memory.
2. **Ranked** by standing first (:mod:`p2pnode.market.standing`: answered before, then direct,
   then unproven), providers set aside (asked lately and silent) last; within a standing by cost,
   price over speed (times one plus load). An unproven provider's claimed speed is not believed at
   all: it is ranked by price alone, so a stranger cannot buy the top of every ranking by claiming
   a speed of 10⁹ GFLOP/s. Unproven providers take turns by introducer (the peer that told this
   node of them) and by host: the best of each introducer and IP address, then the second best of
   each, and so on, so one peer's thousand made-up providers, or a thousand on one host, fill one
   place in K, not K. Ties are broken by a hash of the
   requester's salt, so requesters do not all ask the same few providers.
3. **One per address**: a provider whose every address is one an earlier candidate has is dropped,
   so a thousand identities naming one address (a third party's, say) cost that address one dial.
4. **Picked**: the ``k − 1`` best and one more drawn from the rest (not set aside), so newcomers are
   asked now and then (and get calibrated and checked), then ``reserves`` more in rank order, for
   the requester to ask when the first ones do not answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from p2pnode.market.standing import Standing
from p2pnode.wire.capacity_ad import CapacityAd


@dataclass(frozen=True, slots=True)
class Want:
    workload: str
    need: int = 0  # bytes free
    backend: str = ""


def eligible(ad: CapacityAd, want: Want) -> bool:
    offers = [o for o in ad.offers if o.workload == want.workload and o.unit == "gflop"
              and (not want.backend or o.backend == want.backend)]
    if not offers or not ad.addrs:
        return False
    free = max([g.memory_free for g in ad.gpus], default=ad.cpu.memory_free)
    return free >= want.need


def claimed_speed(ad: CapacityAd, backend: str) -> float:
    """The GFLOP/s ``ad`` claims on ``backend`` (its best claim where it names none for it)."""
    mine = [v for k, v in ad.speed if k.endswith("_" + backend)] if backend else []
    return max(mine) if mine else max((v for _, v in ad.speed), default=1.0)


def cost(ad: CapacityAd, want: Want, standing: Standing) -> float:
    offer = next(o for o in ad.offers if o.workload == want.workload and o.unit == "gflop"
                 and (not want.backend or o.backend == want.backend))
    if standing is Standing.UNPROVEN:
        return float(offer.price)
    speed = claimed_speed(ad, offer.backend)
    return offer.price / max(speed, 1e-3) * (1.0 + ad.load)


def hosts(ad: CapacityAd) -> set[str]:
    """The IP addresses (or DNS names) an ad's multiaddrs name, a relay's excepted: nodes behind
    one relay are not one host."""
    out = set()
    for a in ad.addrs:
        if "/p2p-circuit" in a:
            continue
        parts = a.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6", "dns", "dns4", "dns6"):
            out.add(parts[2])
    return out


def _addresses(ad: CapacityAd) -> set[str]:
    return {a.split("/p2p/")[0] if "/p2p-circuit" not in a else a for a in ad.addrs}


@dataclass(frozen=True, slots=True)
class _Facts:
    """What ranking reads of one ad for one want, worked out once per ad (an ad is immutable)."""

    price: float  # the cost of an unproven provider: its price alone
    cost: float  # of a proven one: price over claimed speed, times one plus load
    addresses: frozenset[str]
    hosts: frozenset[str]


# keyed by the ad object itself (two ads of one sequence number may differ: a liar's), by its id:
# hashing a whole ad for every candidate of every job cost more than the ranking. The entry holds
# the ad, so its id is not reused while the entry lives.
_FACTS: dict[tuple[int, Want], tuple[CapacityAd, _Facts | None]] = {}
_MAX_FACTS = 1 << 16


def _facts(ad: CapacityAd, want: Want) -> _Facts | None:
    """None for an ad that is not eligible for ``want``."""
    key = (id(ad), want)
    hit = _FACTS.get(key)
    if hit is not None and hit[0] is ad:
        return hit[1]
    facts = None
    if eligible(ad, want):
        facts = _Facts(cost(ad, want, Standing.UNPROVEN), cost(ad, want, Standing.DIRECT),
                       frozenset(_addresses(ad)), frozenset(hosts(ad)))
    if len(_FACTS) >= _MAX_FACTS:
        _FACTS.clear()
    _FACTS[key] = (ad, facts)
    return facts


def rank(ads: Iterable[CapacityAd], want: Want, *, standing: Callable[[bytes], Standing],
         aside: Callable[[CapacityAd], bool], salt: bytes,
         source: Callable[[bytes], bytes | None] = lambda peer: peer) -> list[CapacityAd]:
    """Eligible ads, best first, one per address (steps 1–3). ``source``: a provider's introducer."""
    keyed: list[tuple[tuple[bool, int, float, bytes], CapacityAd, _Facts]] = []
    for ad in ads:
        f = _facts(ad, want)
        if f is not None:
            st = standing(ad.peer_id)
            tie = hashlib.blake2b(salt + ad.peer_id, digest_size=8).digest()
            keyed.append(((aside(ad), -int(st), f.price if st is Standing.UNPROVEN else f.cost, tie), ad, f))
    keyed.sort(key=lambda x: x[0])
    turns: dict[tuple[bool, object], int] = {}
    ordered: list[tuple[tuple[bool, int, int, float, bytes], CapacityAd, _Facts]] = []
    for (held, s, c, tie), ad, f in keyed:
        turn = 0
        if s == -int(Standing.UNPROVEN):  # the n-th best of its introducer or host: the n-th round
            keys = [(held, ("via", source(ad.peer_id)))] + [(held, ("ip", h)) for h in f.hosts]
            turn = max(turns.get(k, 0) for k in keys)
            for k in keys:
                turns[k] = turns.get(k, 0) + 1
        ordered.append(((held, s, turn, c, tie), ad, f))
    ordered.sort(key=lambda x: x[0])
    out: list[CapacityAd] = []
    used: set[str] = set()
    for _, ad, f in ordered:
        addrs = f.addresses
        if addrs <= used:
            continue
        used |= addrs
        out.append(ad)
    return out


def pick(ranked: Sequence[CapacityAd], k: int, *, aside: Callable[[CapacityAd], bool], draw: bytes,
         reserves: int = 0) -> list[CapacityAd]:
    """Step 4: the first ``k`` to ask, then up to ``reserves`` more."""
    ads = list(ranked)
    if k < 2 or len(ads) <= k:
        return ads[:k + reserves]
    rest = [ad for ad in ads[k - 1:] if not aside(ad)]
    if not rest:
        return ads[:k + reserves]
    extra = min(rest, key=lambda ad: hashlib.blake2b(draw + ad.peer_id, digest_size=8).digest())
    first = [*ads[:k - 1], extra]
    chosen = {ad.peer_id for ad in first}
    return first + [ad for ad in ads if ad.peer_id not in chosen][:reserves]


def independent(pool: Iterable[CapacityAd], workload: str, exclude: Sequence[CapacityAd], me: bytes,
                score: Callable[[bytes], float]) -> CapacityAd | None:
    """A checker or referee for ``workload``: the first of ``pool`` that is not this node (``me``)
    and shares no peer id and no IP address with ``exclude`` (as far as this node can tell, not
    the same party under another id); volunteers (offers of unit ``check``) first, then by
    ``score`` (reputation), then in ``pool``'s order."""
    ids = {a.peer_id for a in exclude} | {me}
    ips = set().union(*(hosts(a) for a in exclude)) if exclude else set()
    best: list[tuple[tuple[int, float], CapacityAd]] = []
    for ad in pool:
        if ad.peer_id in ids or hosts(ad) & ips:
            continue
        volunteer = any(o.unit == "check" and o.workload == workload for o in ad.offers)
        best.append(((0 if volunteer else 1, -score(ad.peer_id)), ad))
    best.sort(key=lambda x: x[0])
    return best[0][1] if best else None


def advertised_speed(ad: CapacityAd, workload: str) -> float:
    """The GFLOP/s ``ad`` claims for ``workload``: measured on the backend of its first offer of it,
    else its best claim (0 when it claims none), for the bid scorer to compare observed speed with."""
    backends = [o.backend for o in ad.offers if o.workload == workload]
    mine = [v for k, v in ad.speed if backends and k.endswith("_" + backends[0])]
    return max(mine, default=0.0) or max((v for _, v in ad.speed), default=0.0)
