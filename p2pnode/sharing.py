"""What a volunteer shares: memory sizes and the time-of-day schedule, as pure functions.

A schedule is a list of windows in the machine's local time, each ``[DAYS] HH:MM-HH:MM``:

* ``18:00-08:00`` -- every day from 18:00 until 08:00 the next morning (a window whose end is not
  after its start runs past midnight);
* ``mon-fri 19:00-07:00`` -- nights starting Monday to Friday (the days name where a window starts);
* ``sat,sun 00:00-24:00`` or ``sat+sun 00:00-24:00`` -- whole weekend days (``+`` where the
  windows themselves are given as one comma-separated string, as in ``P2PNODE_SCHEDULE``).

The node takes jobs while any window is open and is paused otherwise (running jobs finish). An
empty schedule means always. Nothing here reads the clock: callers pass the local time in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from p2pnode.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 32
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_WINDOW = re.compile(r"^\s*(?:([a-z,+\-]+)\s+)?(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$", re.IGNORECASE)


def parse_size(text: str, *, what: str = "size") -> int:
    """Bytes from ``"20G"``, ``"512MiB"``, ``"1.5g"`` or a plain number of bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{what}: {text!r} is not a size such as 20G, 512M or a number of bytes")
    number, unit = float(m.group(1)), m.group(2).lower()
    size = int(number * 1024 ** ("kmgt".index(unit) + 1 if unit else 0))
    if size <= 0:
        raise ConfigError(f"{what}: {text!r} must be more than zero bytes")
    return size


def _days(text: str | None, window: str) -> frozenset[int]:
    if not text:
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.lower().replace("+", ",").split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ConfigError(f"schedule: {window!r}: days are mon..sun, as mon-fri or sat,sun")
        a, b = DAYS.index(first), DAYS.index(last or first)
        out.update(d % 7 for d in range(a, b + 1 if b >= a else b + 8))
    return frozenset(out)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # weekday numbers (Monday 0) on which the window starts
    start: int  # minutes after midnight
    end: int  # minutes after midnight; <= start: the window ends the next day

    def contains(self, t: datetime) -> bool:
        minute = t.hour * 60 + t.minute
        length = (self.end - self.start) % (24 * 60) or 24 * 60
        for day_back in (0, 1):  # a window that started today, or yesterday and runs past midnight
            if (t.weekday() - day_back) % 7 in self.days:
                since = minute + day_back * 24 * 60 - self.start
                if 0 <= since < length:
                    return True
        return False


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...] = ()

    @classmethod
    def parse(cls, entries: tuple[str, ...] | list[str]) -> Schedule:
        if len(entries) > MAX_WINDOWS:
            raise ConfigError(f"schedule: at most {MAX_WINDOWS} windows")
        windows = []
        for entry in entries:
            m = _WINDOW.match(entry)
            if not m:
                raise ConfigError(f"schedule: {entry!r} is not a window such as 18:00-08:00 or mon-fri 09:00-17:00")
            h1, m1, h2, m2 = (int(g) for g in m.group(2, 3, 4, 5))
            if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
                raise ConfigError(f"schedule: {entry!r}: times run from 00:00 to 24:00")
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if start == end:
                raise ConfigError(f"schedule: {entry!r} is empty (use 00:00-24:00 for a whole day)")
            windows.append(Window(_days(m.group(1), entry), start, end % (24 * 60)))
        return cls(tuple(windows))

    @property
    def always(self) -> bool:
        return not self.windows

    def is_open(self, t: datetime) -> bool:
        return self.always or any(w.contains(t) for w in self.windows)

    def next_change(self, t: datetime) -> datetime | None:
        """The first minute after ``t`` at which :meth:`is_open` changes (None: it never does)."""
        if self.always:
            return None
        now_open = self.is_open(t)
        base = t.replace(second=0, microsecond=0)
        edges = sorted({(day, m) for w in self.windows for m in (w.start, w.end) for day in range(8)})
        midnight = base.replace(hour=0, minute=0)
        for day, minute in edges:
            at = midnight + timedelta(days=day, minutes=minute)
            if at > t and self.is_open(at) != now_open:
                return at
        return None
