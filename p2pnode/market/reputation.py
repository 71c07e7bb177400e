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
good its record was (:meth:`Reputation.distrusted`). Trust only enters through p, so a clique that praises itself but
that no trusted peer vouches for keeps zero trust, and its reports weigh nothing. A reporter's
weight is min(1, t_i / t_self), and second-hand evidence counts ``hearsay`` (one half) of own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Opinion:
    """A reporter's (decayed) evidence about a subject, as carried by a report."""

    pos: float
    neg: float
    t: float


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
    # subject -> the reporters with an opinion of it: a score reads those, not every reporter's rows
    _about: dict[bytes, dict[bytes, None]] = field(default_factory=dict)
    _trust_cache: tuple[int, float, dict[bytes, float]] | None = None
    _version: int = 0
    # subject -> (the trust it was weighed with, t0, hearsay pos and neg at t0): every report of it
    # is older than t0, so at a later time both sums have only decayed (one factor, not a loop)
    _hearsay: dict[bytes, tuple[dict[bytes, float], float, float, float]] = field(default_factory=dict)

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
        self._about.setdefault(subject, {})[reporter] = None
        self._hearsay.pop(subject, None)
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
        """EigenTrust global trust of every known peer, normalised so this node has 1.0."""
        cache = self._trust_cache
        if cache is not None and abs(cache[1] - now) < 60 and \
                (cache[0] == self._version or 0 <= now - cache[1] < self.trust_refresh_s):
            return cache[2]
        rows: dict[bytes, dict[bytes, float]] = {self.me: {}}
        for peer, d in self.own.items():
            pos, neg = d.at_time(now, self.half_life_s)
            if pos > neg:
                rows[self.me][peer] = pos - neg
        for reporter, subjects in self.reports.items():
            row = rows.setdefault(reporter, {})
            for subject, op in subjects.items():
                f = 0.5 ** (max(0.0, now - op.t) / self.half_life_s)
                if op.pos > op.neg and subject != reporter:
                    row[subject] = (op.pos - op.neg) * f
        peers = set(rows)
        for row in rows.values():
            peers.update(row)
        anchors = ({self.me} | set(self.pretrusted))
        pre = {p: 1.0 / len(anchors) for p in anchors}
        norm = {i: (sum(r.values()), r) for i, r in rows.items()}
        t = dict(pre)
        for _ in range(40):
            nxt = {p: self.teleport * w for p, w in pre.items()}
            for i, ti in t.items():
                total, row = norm.get(i, (0.0, {}))
                if ti <= 0:
                    continue
                if total <= 0:  # no opinion: its trust flows back to the anchors
                    for p, w in pre.items():
                        nxt[p] = nxt.get(p, 0.0) + (1 - self.teleport) * ti * w
                    continue
                for j, c in row.items():
                    nxt[j] = nxt.get(j, 0.0) + (1 - self.teleport) * ti * c / total
            delta = sum(abs(nxt.get(p, 0.0) - t.get(p, 0.0)) for p in set(nxt) | set(t))
            t = nxt
            if delta < 1e-9:
                break
        top = t.get(self.me, 1.0) or 1.0
        out = {p: min(1.0, v / top) for p, v in t.items()}
        out[self.me] = 1.0
        self._trust_cache = (self._version, now, out)
        return out

    # scores -------------------------------------------------------------------------------
    def score(self, peer: bytes, now: float) -> Score:
        trust = self.trust(now)
        own_pos, own_neg = self.own[peer].at_time(now, self.half_life_s) if peer in self.own else (0.0, 0.0)
        h_pos, h_neg = self._hearsay_of(peer, trust, now)
        a, b = 1.0 + own_pos + h_pos, 1.0 + own_neg + h_neg
        mean = a / (a + b)
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        return Score(peer, mean, sd, own_pos, own_neg, h_pos, h_neg, trust.get(peer, 0.0),
                     self.streak.get(peer, 0), self.cheats.get(peer, 0))

    def _hearsay_of(self, peer: bytes, trust: dict[bytes, float], now: float) -> tuple[float, float]:
        """What the reporters say of ``peer``, each weighted by its trust and decayed by its age."""
        cached = self._hearsay.get(peer)
        if cached is not None and cached[0] is trust and cached[1] <= now:
            f = 0.5 ** ((now - cached[1]) / self.half_life_s)
            return cached[2] * f, cached[3] * f
        h_pos = h_neg = 0.0
        newest = -math.inf
        for reporter in self._about.get(peer, ()):
            op = self.reports[reporter].get(peer)
            w = trust.get(reporter, 0.0)
            if op is None or w <= 0:
                continue
            newest = max(newest, op.t)
            f = 0.5 ** (max(0.0, now - op.t) / self.half_life_s)
            h_pos += self.hearsay * w * op.pos * f
            h_neg += self.hearsay * w * op.neg * f
        if newest <= now:  # a report from the future would still grow until its time
            if len(self._hearsay) >= 4 * self.max_peers:
                self._hearsay.clear()
            self._hearsay[peer] = (trust, now, h_pos, h_neg)
        return h_pos, h_neg

    def distrusted(self, peer: bytes, now: float) -> bool:
        """Too bad a record to be given work at all: a score below ``distrust_below``, or cheating
        caught within the last half-life, however good the record before it."""
        caught = self.last_cheat.get(peer)
        if caught is not None and now - caught < self.half_life_s:
            return True
        return self._mean(peer, now) < self.distrust_below

    def _mean(self, peer: bytes, now: float) -> float:
        """``score(peer, now).score``, without computing trust when nobody reported on ``peer``
        (every candidate of every job asks this; most have no reports)."""
        if peer not in self._about:
            pos, neg = self.own[peer].at_time(now, self.half_life_s) if peer in self.own else (0.0, 0.0)
            return (1.0 + pos) / (2.0 + pos + neg)
        return self.score(peer, now).score

    def adjust(self, peer: bytes, now: float) -> float:
        """Multiplier for a bid's score (lower wins): 1.0 for an unknown peer, 0.55 for a peer with a
        long clean record, up to 1.5 for one with a bad record."""
        return 1.5 - self._mean(peer, now)

    def table(self, now: float) -> list[Score]:
        peers = set(self.own) | {s for rows in self.reports.values() for s in rows} | set(self.reports)
        peers.discard(self.me)
        return sorted((self.score(p, now) for p in peers), key=lambda s: (-s.score, s.peer))
