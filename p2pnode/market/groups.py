"""Members grouped by a key (pure): each group in the order its members joined, and the largest
group found at once however many groups there are. The capacity table keeps its unproven providers
so, by introducer and by host, to find whom a newcomer displaces without scanning the table."""

from __future__ import annotations

from collections.abc import Hashable


class Groups:
    def __init__(self) -> None:
        self._members: dict[Hashable, dict[bytes, None]] = {}
        self._by_size: dict[int, dict[Hashable, None]] = {}  # size -> the groups of that size
        self._top = 0

    def add(self, key: Hashable, member: bytes) -> None:
        group = self._members.setdefault(key, {})
        if member in group:
            return
        self._resize(key, len(group), len(group) + 1)
        group[member] = None

    def discard(self, key: Hashable, member: bytes) -> None:
        group = self._members.get(key)
        if group is None or member not in group:
            return
        del group[member]
        self._resize(key, len(group) + 1, len(group))
        if not group:
            del self._members[key]

    def size(self, key: Hashable) -> int:
        return len(self._members.get(key, ()))

    def largest(self) -> Hashable | None:
        """A group of the largest size (None when there is none)."""
        while self._top > 0 and not self._by_size.get(self._top):
            self._top -= 1
        return next(iter(self._by_size[self._top])) if self._top > 0 else None

    def members(self, key: Hashable) -> list[bytes]:
        """The members of ``key``'s group, the earliest first."""
        return list(self._members.get(key, ()))

    def _resize(self, key: Hashable, old: int, new: int) -> None:
        if old:
            sized = self._by_size[old]
            del sized[key]
            if not sized:
                del self._by_size[old]
        if new:
            self._by_size.setdefault(new, {})[key] = None
            self._top = max(self._top, new)
