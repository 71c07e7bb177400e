"""What each configuration key accepts: a range, a set of words or a format, checked at load.

A rule checks one key's value (already of the key's type) and raises a one-line
:class:`~p2pnode.errors.ConfigError` naming the key; ``str(rule)`` is what the README's table shows
in its "accepts" column. Every key has one (a test tries a bad value for each), so no setting is
taken as given: a heartbeat of a nanosecond, a price the ad cannot carry, an empty address.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2pnode.errors import ConfigError, NetworkSetupError

MAX_LIST = 256  # entries of any list setting
MAX_TEXT = 4096  # characters of any text setting or list entry


class Rule:
    """A key's accepted values; subclasses implement :meth:`check` and ``__str__``."""

    def check(self, name: str, value: Any) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Flag(Rule):
    """true or false: the type says it all."""

    def check(self, name: str, value: Any) -> None:
        pass

    def __str__(self) -> str:
        return "true, false"


def _num(x: float) -> str:
    if isinstance(x, int) and abs(x) >= 10**6 and str(x).rstrip("0") == "1":
        return f"10^{len(str(x)) - 1}"
    if isinstance(x, int) and x == 2**63 - 1:
        return "2^63-1"
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Between(Rule):
    """A number in ``[lo, hi]`` (``(lo, ...`` when ``lo_open``, ``..., hi)`` when ``hi_open``)."""

    lo: float
    hi: float
    unit: str = ""
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # said with the error

    def check(self, name: str, value: Any) -> None:
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        high_ok = value < self.hi if self.hi_open else value <= self.hi
        if not (low_ok and high_ok):
            raise ConfigError(f"{name}: {value!r} is outside {self}" + (f" ({self.why})" if self.why else ""))

    def __str__(self) -> str:
        text = f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        return f"{text} {self.unit}" if self.unit else text


@dataclass(frozen=True)
class OneOf(Rule):
    choices: tuple[str, ...]
    fold_case: bool = False

    def check(self, name: str, value: Any) -> None:
        if (value.lower() if self.fold_case else value) not in self.choices:
            raise ConfigError(f"{name}: {value!r} is not {self}")

    def __str__(self) -> str:
        return ", ".join(self.choices[:-1]) + " or " + self.choices[-1]


@dataclass(frozen=True)
class Multiaddrs(Rule):
    """TCP multiaddrs: at most ``most`` of them (at least ``least``), each with a ``/p2p/`` id where
    ``peer_id``; ``dialable``: no unspecified address (0.0.0.0, ::), and short enough for an ad."""

    most: int
    least: int = 0
    peer_id: bool = False
    dialable: bool = False
    dnsaddr: bool = False  # /dnsaddr/DOMAIN entries too (resolved at start)

    def check(self, name: str, value: Any) -> None:
        from p2pnode.net.host import UNSPECIFIED, parse_multiaddr
        from p2pnode.wire.capacity_ad import MAX_ADDR

        if not self.least <= len(value) <= self.most:
            raise ConfigError(f"{name}: {len(value)} address(es); {self}")
        for text in value:
            if self.dnsaddr and text.startswith("/dnsaddr/"):
                from p2pnode.net.network import check_dnsaddr

                try:
                    check_dnsaddr(text)
                except NetworkSetupError as exc:
                    raise ConfigError(f"{name}: {exc}") from None
                continue
            try:
                parse_multiaddr(text, need_peer_id=self.peer_id)
            except NetworkSetupError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            if self.dialable and text.startswith(UNSPECIFIED):
                raise ConfigError(f"{name}: {text!r}: an unspecified address cannot be dialed")
            # an ad names the node's addresses with its /p2p/ id (52 characters for an Ed25519 key)
            if self.dialable and len(text if "/p2p/" in text else text + "/p2p/" + "x" * 52) > MAX_ADDR:
                raise ConfigError(f"{name}: {text!r} is too long for a capacity ad ({MAX_ADDR} characters "
                                  "with its /p2p/ id)")

    def __str__(self) -> str:
        count = f"{self.least}-{self.most}" if self.least else f"up to {self.most}"
        return f"{count} TCP multiaddrs" + (" with /p2p/ id" if self.peer_id else "") + \
            (", or /dnsaddr/DOMAIN" if self.dnsaddr else "")


@dataclass(frozen=True)
class Format(Rule):
    """Anything ``parse`` takes (it raises ``ConfigError``): a size, a schedule, a mode."""

    text: str
    parse: Callable[[str, Any], None]

    def check(self, name: str, value: Any) -> None:
        self.parse(name, value)

    def __str__(self) -> str:
        return self.text


def fmt(text: str) -> Callable[[Callable[[str, Any], None]], Format]:
    """Decorate a parse function into a :class:`Format` rule described by ``text``."""
    return lambda parse: Format(text, parse)


def distinct(name: str, items: Sequence[str]) -> None:
    if len(set(items)) != len(items):
        raise ConfigError(f"{name}: an entry is named twice")
