"""A dataset job's decisions, pure: how the rows are cut and priced, which provider takes the next
shard, and what a shard that did not end well changes (``services/mapper.py`` carries them out).

* **Shards and prices** (:func:`cut`, :func:`price_shares`): shards of ``shard_rows`` rows; each
  may pay its rows' share of the dataset's ``max_price``, rounded down where it ends, so the
  shares add up to ``max_price`` exactly (never more).
* **Whom** (:func:`choose`): up to ``providers`` providers at once, the best ranked first, each
  holding up to ``DEPTH`` shards (one computing, one moving its rows); a shard never goes to a
  provider passed over for it; none left ends the dataset job (:func:`exhausted`).
* **Setbacks** (:func:`setback`): an **overrun** (past its estimate with no progress, its
  executor's time limit, the deadline) is no one's fault: the shard is priced again at twice the
  estimate and that provider may take it again, ``MAX_OVERRUNS`` times at most; **busy** (the
  provider declined for now): the shard waits and goes back, and the provider is passed over for
  it after ``MAX_BUSY`` such answers; anything else (a failure, a rejected result, a decline for
  good) passes that provider over for the shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_OVERRUNS = 3  # one provider, one shard: each time priced at twice the estimate
MAX_BUSY = 5  # "busy" answers from one provider for one shard before it is passed over
DEPTH = 2  # shards in flight on one provider: one computing, one moving its rows


@dataclass
class Shard:
    index: int
    start: int
    stop: int
    attempts: int = 0
    excluded: set[bytes] = field(default_factory=set)
    scale: float = 1.0  # its estimate is this many times the measured one (doubled at each overrun)
    setbacks: dict[tuple[bytes, str], int] = field(default_factory=dict)  # (provider, overrun|busy) -> count
    last: str = ""  # what its last attempt said

    @property
    def rows(self) -> int:
        return self.stop - self.start


def cut(rows: int, shard_rows: int) -> list[Shard]:
    return [Shard(i, a, min(a + shard_rows, rows)) for i, a in enumerate(range(0, rows, shard_rows))]


def price_shares(max_price: int, rows: int, shards: Sequence[Shard]) -> list[int]:
    """Each shard's most price: its rows' share of ``max_price``, rounded down at the row where it
    ends, so that the shares add up to ``max_price`` exactly (never more)."""
    return [max_price * s.stop // rows - max_price * s.start // rows for s in shards]


def choose(ads: Sequence[Any], shard: Shard, busy: Mapping[bytes, int], providers: int) -> Any | None:
    """The provider for ``shard`` among ``ads`` (the market's, best first), given the shards in
    flight on each (``busy``): a new one while fewer than ``providers`` are in use, else the one in
    use with the fewest, else any; ``None`` when every one is passed over for this shard."""
    ads = [a for a in ads if a.peer_id not in shard.excluded]
    if not ads:
        return None
    in_use = {p for p, n in busy.items() if n}
    idle = [a for a in ads if a.peer_id not in in_use]
    room = sorted((a for a in ads if a.peer_id in in_use and busy[a.peer_id] < DEPTH), key=lambda a: busy[a.peer_id])
    return idle[0] if idle and len(in_use) < providers else (room or idle or ads)[0]


def exhausted(shard: Shard) -> str:
    """Why the dataset job ends: ``shard`` has no provider left."""
    return f"shard {shard.index}: no provider left that offers this model job" + \
        (f" (last: {shard.last})" if shard.last else "")


def setback(shard: Shard, peer: bytes, *, state: str, outcome: str, overran: bool, declined: str) -> str:
    """Why ``shard`` did not end on ``peer`` (``overrun``, ``busy`` or ``fault``), from the job's
    end (``state``, ``outcome``, whether ``peer`` only overran, the code it declined with), and
    what that changes: a larger estimate, a wait, or that provider passed over for this shard."""
    why = "overrun" if overran or state == "expired" else "busy" if declined == "busy" else "fault"
    shard.last = f"{state}: {outcome}"[:200]
    if why == "overrun":
        shard.scale *= 2
    if why == "fault":
        shard.excluded.add(peer)
    else:
        n = shard.setbacks[(peer, why)] = shard.setbacks.get((peer, why), 0) + 1
        if n >= (MAX_OVERRUNS if why == "overrun" else MAX_BUSY):
            shard.excluded.add(peer)
    return why


def checked_rows(events: Iterable[Mapping[str, Any]]) -> int:
    """The rows a shard's check re-ran (its ``sample`` event), 0 when none."""
    for e in events:
        if e.get("event") == "sample":
            return int(e.get("rows", 0))
    return 0
