"""The fields of a control request, checked before anything acts on them.

A control request comes from this node's own user, but through a socket any of their programs can
write to: every number must be a finite number of the right kind, in the range the command can
use, or the request is refused with one line naming the field (never a traceback in the log).
"""

from __future__ import annotations

import math
from typing import Any

from p2pnode.errors import ControlError

MAX_PRICE = 2**63 - 1  # the wire's bound on a price (an unsigned 63-bit integer)
MAX_DEADLINE_S = 86400.0  # providers decline a deadline further away (market/bidding.py)


def number(request: dict[str, Any], key: str, default: float | None = None, *, lo: float, hi: float,
           integer: bool = False) -> Any:
    """``request[key]`` (or ``default`` when absent): a finite int (``integer``) or number within
    ``[lo, hi]``; else :class:`ControlError` naming ``key``."""
    value = request.get(key, default)
    if value is None:
        raise ControlError(f"{key} is missing")
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ControlError(f"{key} must be {kind}, not {_show(value)}")
    if not math.isfinite(value):
        raise ControlError(f"{key} must be a finite number, not {value}")
    if not lo <= value <= hi:
        raise ControlError(f"{key} must be between {lo:g} and {hi:g}, not {value:g}")
    return int(value) if integer else float(value)


def text(request: dict[str, Any], key: str, default: str = "", *, max_len: int = 4096) -> str:
    value = request.get(key, default)
    if not isinstance(value, str):
        raise ControlError(f"{key} must be a string, not {_show(value)}")
    if len(value) > max_len:
        raise ControlError(f"{key} is longer than {max_len} characters")
    return value


def flag(request: dict[str, Any], key: str, default: bool = False) -> bool:
    value = request.get(key, default)
    if not isinstance(value, bool):
        raise ControlError(f"{key} must be true or false, not {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
