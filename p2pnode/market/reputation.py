"""Local reputation: a score per peer from this node's own history and from others' signed
reports weighted by trust in the reporter (pure: time is passed in).

Own history (see ``specs/reputation.md`` for the formulas):

* every interaction adds decayed evidence, positive (``pos``) or negative (``neg``), halving every
  ``half_life_s``: a checked valid result +1, an unchecked accepted result +0.5, a passed
  calibration +0.5; a failed or stalled job −1 (one that only ran past its estimate: nothing),
  protocol abuse −1, capacity over-claimed −5, cheating caught −10;
* the score is the mean of Beta(1 + pos, 1 + neg), so an unknown peer scores 0.5 and the
  uncertainty (the Beta's standard deviation) shrinks as evidence accumulates.

Reports: each reporter's latest opinion of each subject (its own pos/neg). Trust in reporters is
EigenTrust: the local trust matrix C (rows normalised from max(pos − neg, 0)), with this node's own
row from its own history, iterated as t = (1 − a)·Cᵀt + a·p where p is spread over this node and
the configured pre-trusted peers. A peer caught cheating gets no work for one half-life, however
good its record was, nor does one that two reporters of full weight each caught
(:meth:`Reputation.distrusted`). Trust only enters through p, so a clique that praises itself but
that no trusted peer vouches for keeps zero trust, and its reports weigh nothing. A reporter's
weight is min(1, t_i / t_ref), t_ref the median trust of the peers this node worked with well (a
cheat report whose checker and referee agree against the subject weighs as the less trusted of
those two, where that is more), and second-hand evidence counts ``hearsay`` (one half) of own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

WEIGHTS = {
    "checked_ok": (1.0, 0.0),
    "accepted": (0.5, 0.0),
    "calibrated": (0.5, 0.0),
    "paid": (0.5, 0.0),  # a requester that paid us, as its provider
    "failure": (0.0, 1.0),
    "penalty": (0.0, 1.0),
    "overclaim": (0.0, 5.0),
    "cheat": (0.0, 10.0),
}
CHEAT_WEIGHT = WEIGHTS["cheat"][1]
TRUST_REFRESH_S = 2.0  # how stale a node's trust in reporters may be (``Reputation.trust_refresh_s``)
# A provider vouches for a requester that paid it (publishes its opinion) at first payment and then
# at most this often: requesters do no work, so without it nobody would vouch for them, and what
# each requester learns of cheaters would stay its own (``specs/reputation.md``)
VOUCH_EVERY_S = 3600.0


@dataclass
class _Decayed:
    pos: float = 0.0
    neg: float = 0.0
    at: float = 0.0

    def at_time(self, now: float, half_life: float) -> tuple[float, float]:
        f = 0.5 ** (max(0.0, now - self.at) / half_life)
        return self.pos * f, self.neg * f

    def add(self, pos: float, neg: float, now: float, half_life: float) -> None:
        p, n = self.at_time(now, half_life)
        self.pos, self.neg, self.at = p + pos, n + neg, max(now, self.at)


class _Edges:
    """The reports as a sparse matrix: one edge per (reporter, subject) holding its latest opinion
    (pos, neg, time, witnesses), in growable arrays indexed by peer (peers are never dropped)."""

    _FLOAT = ("pos", "neg", "t")
    _INT = ("src", "dst", "w1", "w2")

    def __init__(self) -> None:
        self.peers: list[bytes] = []
        self._index: dict[bytes, int] = {}
        self._slot: dict[tuple[int, int], int] = {}
        self.edges = 0
        self.pos, self.neg, self.t = np.zeros(64), np.zeros(64), np.zeros(64)
        self.src, self.dst, self.w1, self.w2 = (np.full(64, -1, dtype=np.int64) for _ in range(4))

    def find(self, peer: bytes) -> int | None:
        return self._index.get(peer)

    def index(self, peer: bytes) -> int:
        i = self._index.get(peer)
        if i is None:
            i = self._index[peer] = len(self.peers)
            self.peers.append(peer)
        return i

    def put(self, reporter: bytes, subject: bytes, op: Opinion) -> None:
        key = (self.index(reporter), self.index(subject))
        k = self._slot.get(key)
        if k is None:
            if self.edges == len(self.src):
                for name in self._FLOAT + self._INT:
                    a = getattr(self, name)
                    setattr(self, name, np.concatenate([a, np.full_like(a, -1 if a.dtype == np.int64 else 0)]))
            k = self._slot[key] = self.edges
            self.edges += 1
            self.src[k], self.dst[k] = key
        self.pos[k], self.neg[k], self.t[k] = op.pos, op.neg, op.t
        if len(op.witnesses) == 2:
            self.w1[k], self.w2[k] = self.index(op.witnesses[0]), self.index(op.witnesses[1])

    def __getitem__(self, name: str) -> np.ndarray:
        a: np.ndarray = getattr(self, name)
        return a[:self.edges]


@dataclass(frozen=True, slots=True)
class Opinion:
    """A reporter's (decayed) evidence about a subject, as carried by a report."""

    pos: float
    neg: float
    t: float
    # a cheat report's witnesses (``wire.report.Report.witnesses``): the report weighs as much as
    # the less trusted of the two, where that is more than the reporter
    witnesses: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Score:
    peer: bytes
    score: float  # Beta mean in (0, 1)
    uncertainty: float  # Beta standard deviation
    own_pos: float
    own_neg: float
    hearsay_pos: float
    hearsay_neg: float
    trust: float  # EigenTrust global trust as a reporter, relative to this node (0..1)
    streak: int  # consecutive checked valid results
    cheats: int

    def to_json(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Reputation:
    me: bytes
    pretrusted: frozenset[bytes] = frozenset()
    half_life_s: float = 7 * 86400.0
    teleport: float = 0.2  # EigenTrust's a
    hearsay: float = 0.5
    distrust_below: float = 0.2
    # excluded on hearsay too: this many reporters of at least ``catch_weight`` whose latest report
    # holds a caught cheat's worth of negative evidence (each caught it, or it failed them ten times)
    catchers: int = 2
    catch_weight: float = 0.5
    max_peers: int = 4096
    max_reporters: int = 1024
    max_subjects_per_reporter: int = 256
    # new evidence recomputes trust at most this often (0: at once); a node's reports and ledger
    # entries come many a second in a busy market, and EigenTrust iterates over all of them
    trust_refresh_s: float = 0.0
    own: dict[bytes, _Decayed] = field(default_factory=dict)
    streak: dict[bytes, int] = field(default_factory=dict)
    cheats: dict[bytes, int] = field(default_factory=dict)
    last_cheat: dict[bytes, float] = field(default_factory=dict)
    reports: dict[bytes, dict[bytes, Opinion]] = field(default_factory=dict)  # reporter -> subject -> opinion
    vouched: dict[bytes, float] = field(default_factory=dict)  # requester -> when this node last vouched for it
    # subject -> the reporters with an opinion of it: a score reads those, not every reporter's rows
    _about: dict[bytes, dict[bytes, None]] = field(default_factory=dict)
    _trust_cache: tuple[int, float, dict[bytes, float]] | None = None
    _trust_ref: float = 1.0  # the trust of a full-weight reporter, with the cached trust (``weight``)
    _graph: _Edges = field(default_factory=lambda: _Edges())  # the reports as a sparse matrix
    _trust_vector: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the last power iteration's result
    # every subject's hearsay with the cached trust (``_hearsay_all``), but for the subjects reported
    # on since (``_dirty``), whose sums ``_hearsay_of`` works out one at a time
    _hearsay_vec: tuple[dict[bytes, float], float, np.ndarray, np.ndarray, np.ndarray] | None = None
    _dirty: set[bytes] = field(default_factory=set)
    _version: int = 0
    # subject -> (the trust it was weighed with, t0, hearsay pos and neg at t0, catchers): every
    # report of it is older than t0, so at a later time both sums have only decayed (one factor)
    _hearsay: dict[bytes, tuple[dict[bytes, float], float, float, float, int]] = field(default_factory=dict)

    def worked_with(self, peer: bytes) -> bool:
        """Whether this node's own history holds good evidence of ``peer`` (work done, paid,
        checked, calibrated), as opposed to failures and penalties only."""
        own = self.own.get(peer)
        return own is not None and own.pos > 0

    # evidence -----------------------------------------------------------------------------
    def observe(self, peer: bytes, what: str, now: float) -> None:
        """Record one interaction with ``peer`` (a key of :data:`WEIGHTS`)."""
        if peer == self.me:
            return
        pos, neg = WEIGHTS[what]
        if peer not in self.own and len(self.own) >= self.max_peers:
            self._evict()
        self.own.setdefault(peer, _Decayed()).add(pos, neg, now, self.half_life_s)
        if what == "checked_ok":
            self.streak[peer] = self.streak.get(peer, 0) + 1
        elif what in ("cheat", "overclaim"):
            self.streak[peer] = 0
            if what == "cheat":
                self.cheats[peer] = self.cheats.get(peer, 0) + 1
                self.last_cheat[peer] = max(now, self.last_cheat.get(peer, now))
                if len(self.last_cheat) > self.max_peers:  # forget the oldest cheat first
                    oldest = min(self.last_cheat, key=lambda p: self.last_cheat[p])
                    del self.last_cheat[oldest]
                    self.cheats.pop(oldest, None)
        self._version += 1

    def vouch_due(self, peer: bytes, now: float) -> bool:
        """Whether to publish this node's opinion of ``peer``, a requester that just paid it: the
        first time, then once every :data:`VOUCH_EVERY_S` (marked as done when it says so)."""
        last = self.vouched.get(peer)
        if peer == self.me or (last is not None and 0 <= now - last < VOUCH_EVERY_S):
            return False
        if last is None and len(self.vouched) >= self.max_peers:
            self.vouched.pop(next(iter(self.vouched)))
        self.vouched[peer] = now
        return True

    def report(self, reporter: bytes, subject: bytes, opinion: Opinion) -> bool:
        """Take a reporter's latest opinion of a subject; older or self-serving reports are ignored."""
        if reporter == self.me or subject == reporter:
            return False
        rows = self.reports.get(reporter)
        if rows is None:
            if len(self.reports) >= self.max_reporters:
                return False
            rows = self.reports[reporter] = {}
        old = rows.get(subject)
        if old is not None and old.t >= opinion.t:
            return False
        if old is None and len(rows) >= self.max_subjects_per_reporter:
            return False
        rows[subject] = opinion
        self._graph.put(reporter, subject, opinion)
        self._about.setdefault(subject, {})[reporter] = None
        self._hearsay.pop(subject, None)
        self._dirty.add(subject)
        self._version += 1
        return True

    def opinion(self, peer: bytes, now: float) -> Opinion:
        """This node's own evidence about ``peer``, for a report of its own."""
        pos, neg = self.own[peer].at_time(now, self.half_life_s) if peer in self.own else (0.0, 0.0)
        return Opinion(pos, neg, now)

    def _evict(self) -> None:
        # forget the peer with the least evidence (a caught cheat is remembered in last_cheat)
        victim = min(self.own, key=lambda p: self.own[p].pos + self.own[p].neg)
        del self.own[victim]
        self.streak.pop(victim, None)

    # trust --------------------------------------------------------------------------------
    def trust(self, now: float) -> dict[bytes, float]:
        """EigenTrust global trust of every known peer, normalised so this node has 1.0.

        Reports are kept as a sparse matrix of edges (reporter, subject, pos − neg, t) that a new
        report updates in place, and the power iteration runs over it in NumPy, starting from the
        last result: a market's worth of reports (tens of thousands) costs milliseconds, not seconds."""
        cache = self._trust_cache
        if cache is not None and abs(cache[1] - now) < 60 and \
                (cache[0] == self._version or 0 <= now - cache[1] < self.trust_refresh_s):
            return cache[2]
        g = self._graph
        me = g.index(self.me)
        own = [(g.index(peer), d.at_time(now, self.half_life_s)) for peer, d in self.own.items()]
        own_j = np.array([j for j, (pos, neg) in own if pos > neg], dtype=np.int64)
        own_w = np.array([pos - neg for _, (pos, neg) in own if pos > neg], dtype=np.float64)
        anchors = sorted({me} | {g.index(p) for p in self.pretrusted})
        n = len(g.peers)
        decay = np.exp2(-np.maximum(0.0, now - g["t"]) / self.half_life_s)
        w = np.maximum(0.0, g["pos"] - g["neg"]) * decay
        src, dst, w = np.concatenate([g["src"], np.full(len(own_j), me)]), np.concatenate([g["dst"], own_j]), \
            np.concatenate([w, own_w])
        keep = w > 0
        src, dst, w = src[keep], dst[keep], w[keep]
        total = np.bincount(src, weights=w, minlength=n)
        share = w / total[src]
        pre = np.zeros(n)
        pre[anchors] = 1.0 / len(anchors)
        empty = total <= 0
        t = np.zeros(n)
        last = self._trust_vector
        t[:len(last)] = last
        if not t.any():
            t = pre.copy()
        for _ in range(40):
            nxt = self.teleport * pre + (1 - self.teleport) * (
                np.bincount(dst, weights=share * t[src], minlength=n) + t[empty & (t > 0)].sum() * pre)
            delta = float(np.abs(nxt - t).sum())
            t = nxt
            if delta < 1e-9:
                break
        self._trust_vector = t
        top = float(t[me]) or 1.0
        out = {g.peers[i]: min(1.0, float(t[i]) / top) for i in np.flatnonzero(t > 0)}
        out[self.me] = 1.0
        # a full-weight reporter is one trusted as much as the median peer this node has worked with
        # well: trust is shared out over every such peer, so relative to this node's own it shrinks
        # as the market grows, and hearsay would weigh nothing at a few hundred providers
        known = sorted(out.get(g.peers[j], 0.0) for j in own_j.tolist())
        self._trust_ref = max(known[len(known) // 2], 1e-9) if known else 1.0
        self._trust_cache = (self._version, now, out)
        self._hearsay_all(out, t / top, decay, now)
        return out

    def _hearsay_all(self, trust: dict[bytes, float], rel: np.ndarray, decay: np.ndarray, now: float) -> None:
        """Every subject's hearsay at once, as :meth:`_hearsay_of` sums it for one (``rel``: the
        trust vector relative to this node's, ``decay``: each report's decay to ``now``)."""
        g = self._graph
        n = len(g.peers)
        rel = np.minimum(1.0, np.append(rel, 0.0))  # index -1 (no witness) reads 0
        w = rel[g["src"]]
        witnessed = g["w1"] >= 0
        w[witnessed] = np.maximum(w[witnessed], np.minimum(rel[g["w1"][witnessed]], rel[g["w2"][witnessed]]))
        w = np.minimum(1.0, w / self._trust_ref)
        dst = g["dst"]
        h_pos = self.hearsay * np.bincount(dst, weights=w * g["pos"] * decay, minlength=n)
        h_neg = self.hearsay * np.bincount(dst, weights=w * g["neg"] * decay, minlength=n)
        caught = np.bincount(dst, weights=(w >= self.catch_weight) & (w > 0) & (g["neg"] >= CHEAT_WEIGHT),
                             minlength=n)
        self._hearsay.clear()
        self._dirty = {g.peers[j] for j in np.unique(dst[g["t"] > now]).tolist()}  # grow until their time
        self._hearsay_vec = (trust, now, h_pos, h_neg, caught)

    def weight(self, reporter: bytes, trust: dict[bytes, float], witnesses: tuple[bytes, ...] = ()) -> float:
        """How much a report of ``reporter``'s counts (0..1), ``trust`` being :meth:`trust`'s latest:
        its trust over the median trust of the peers this node worked with well; a cheat report with
        witnesses counts as much as the less trusted witness where that is more."""
        w = trust.get(reporter, 0.0)
        if witnesses:
            w = max(w, min(trust.get(x, 0.0) for x in witnesses))
        return min(1.0, w / self._trust_ref)

    # scores -------------------------------------------------------------------------------
    def score(self, peer: bytes, now: float) -> Score:
        trust = self.trust(now)
        own_pos, own_neg = self.own[peer].at_time(now, self.half_life_s) if peer in self.own else (0.0, 0.0)
        h_pos, h_neg, _ = self._hearsay_of(peer, trust, now)
        a, b = 1.0 + own_pos + h_pos, 1.0 + own_neg + h_neg
        mean = a / (a + b)
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        return Score(peer, mean, sd, own_pos, own_neg, h_pos, h_neg, trust.get(peer, 0.0),
                     self.streak.get(peer, 0), self.cheats.get(peer, 0))

    def _hearsay_of(self, peer: bytes, trust: dict[bytes, float], now: float) -> tuple[float, float, int]:
        """What the reporters say of ``peer``, each weighted by its trust and decayed by its age, and
        how many of full weight caught it (``catchers``)."""
        cached = self._hearsay.get(peer)
        if cached is not None and cached[0] is trust and cached[1] <= now:
            f = 0.5 ** ((now - cached[1]) / self.half_life_s)
            return cached[2] * f, cached[3] * f, cached[4]
        every = self._hearsay_vec
        if every is not None and every[0] is trust and every[1] <= now and peer not in self._dirty:
            i = self._graph.find(peer)
            if i is not None and i < len(every[2]):
                f = 0.5 ** ((now - every[1]) / self.half_life_s)
                return float(every[2][i]) * f, float(every[3][i]) * f, int(every[4][i])
        h_pos = h_neg = 0.0
        caught = 0
        newest = -math.inf
        for reporter in self._about.get(peer, ()):
            op = self.reports[reporter].get(peer)
            w = self.weight(reporter, trust, op.witnesses) if op is not None else 0.0
            if op is None or w <= 0:
                continue
            newest = max(newest, op.t)
            f = 0.5 ** (max(0.0, now - op.t) / self.half_life_s)
            h_pos += self.hearsay * w * op.pos * f
            h_neg += self.hearsay * w * op.neg * f
            caught += w >= self.catch_weight and op.neg >= CHEAT_WEIGHT
        if newest <= now:  # a report from the future would still grow until its time
            if len(self._hearsay) >= 4 * self.max_peers:
                self._hearsay.clear()
            self._hearsay[peer] = (trust, now, h_pos, h_neg, caught)
        return h_pos, h_neg, caught

    def distrusted(self, peer: bytes, now: float) -> bool:
        """Too bad a record to be given work at all: a score below ``distrust_below``, cheating
        caught within the last half-life, however good the record before it, or ``catchers``
        reporters of full weight each holding a caught cheat's worth of evidence against it."""
        caught = self.last_cheat.get(peer)
        if caught is not None and now - caught < self.half_life_s:
            return True
        pos, neg = self.own[peer].at_time(now, self.half_life_s) if peer in self.own else (0.0, 0.0)
        if peer in self._about:
            h_pos, h_neg, catchers = self._hearsay_of(peer, self.trust(now), now)
            if catchers >= self.catchers:
                return True  # caught by others this node trusts
            pos, neg = pos + h_pos, neg + h_neg
        return (1.0 + pos) / (2.0 + pos + neg) < self.distrust_below  # as mean

    def mean(self, peer: bytes, now: float) -> float:
        """``score(peer, now).score``, without computing trust when nobody reported on ``peer``
        (every candidate of every job asks this; most have no reports)."""
        pos, neg = self.own[peer].at_time(now, self.half_life_s) if peer in self.own else (0.0, 0.0)
        if peer in self._about:
            h_pos, h_neg, _ = self._hearsay_of(peer, self.trust(now), now)
            pos, neg = pos + h_pos, neg + h_neg
        return (1.0 + pos) / (2.0 + pos + neg)

    def adjust(self, peer: bytes, now: float) -> float:
        """Multiplier for a bid's score (lower wins): 1.0 for an unknown peer, 0.55 for a peer with a
        long clean record, up to 1.5 for one with a bad record."""
        return 1.5 - self.mean(peer, now)

    def table(self, now: float) -> list[Score]:
        peers = set(self.own) | {s for rows in self.reports.values() for s in rows} | set(self.reports)
        peers.discard(self.me)
        return sorted((self.score(p, now) for p in peers), key=lambda s: (-s.score, s.peer))
