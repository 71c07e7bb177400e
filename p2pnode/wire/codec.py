"""Strict, bounded CBOR.

Every decoder in p2pnode goes through :func:`decode`, which promises: for any input bytes it either
returns a value built only from ``int``, ``float``, ``bool``, ``None``, ``str``, ``bytes``, ``list``
and ``dict`` (with ``str`` or ``int`` keys), or raises :class:`~p2pnode.errors.CodecError`. Sizes
are checked before parsing, nesting is bounded, indefinite lengths, duplicate keys and trailing
bytes are refused, and semantic tags (dates, decimals, ...) are refused because no message of ours
uses them.

:class:`Fields` then reads a decoded map with typed, bounded getters so that schema code never
indexes a peer's data directly.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import cbor2

from p2pnode.errors import CodecError, OversizedError

MAX_DEPTH = 8
_PLAIN_SCALARS = (int, float, bool, str, bytes, type(None))


def encode(value: Any) -> bytes:
    """Encode ``value`` as canonical (deterministic) CBOR."""
    return cbor2.dumps(value, canonical=True)


def decode(data: object, *, max_size: int, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one CBOR item from ``data``, refusing anything outside the plain data model."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_size:
        raise OversizedError(f"{len(raw)} bytes exceeds the limit of {max_size}")
    if not raw:
        raise CodecError("empty input")
    stream = io.BytesIO(raw)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            tag_hook=_refuse_tag,
        )
        value = decoder.decode()
    except CodecError:
        raise
    except RecursionError as exc:
        raise CodecError("nesting too deep") from exc
    except Exception as exc:  # cbor2 raises a zoo of types on garbage; all mean "malformed"
        raise CodecError(f"invalid CBOR: {exc}") from exc
    if stream.tell() != len(raw):
        raise CodecError(f"{len(raw) - stream.tell()} trailing bytes after the CBOR item")
    _check_plain(value, 0, max_depth)
    return value


def check_plain(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``CodecError`` unless ``value`` lies in the plain data model that :func:`decode` accepts."""
    _check_plain(value, 0, max_depth)


def _refuse_tag(_decoder: object, tag: Any) -> Any:
    raise CodecError(f"CBOR tag {getattr(tag, 'tag', '?')} is not allowed")


def _check_plain(value: Any, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise CodecError("nesting too deep")
    if isinstance(value, _PLAIN_SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise CodecError("non-finite float")
        return
    if isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1, max_depth)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise CodecError(f"map key of type {type(key).__name__} is not allowed")
            _check_plain(item, depth + 1, max_depth)
        return
    # Semantic tags that cbor2 decodes natively (datetime, Decimal, UUID, ...) end up here.
    raise CodecError(f"value of type {type(value).__name__} is not allowed")


class Fields:
    """Typed, bounded reads from one decoded CBOR map; every failure is a ``CodecError``.

    ``where`` names the map in error messages (``"ad.gpus[1]"``), so a peer's operator can tell
    exactly which field was wrong.
    """

    __slots__ = ("_map", "_where")

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected a map, got {type(value).__name__}")
        self._map: Mapping[Any, Any] = value
        self._where = where

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self._map:
            if optional:
                return None
            raise CodecError(f"{self._where}.{key}: missing")
        return self._map[key]

    def has(self, key: str) -> bool:
        return key in self._map

    def uint(self, key: str, *, maximum: int = 2**64 - 1, optional: bool = False) -> int:
        value = self._get(key, optional)
        if value is None and optional:
            return 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise CodecError(f"{self._where}.{key}: expected an unsigned integer")
        if value < 0 or value > maximum:
            raise CodecError(f"{self._where}.{key}: {value} is outside 0..{maximum}")
        return value

    def number(self, key: str, *, minimum: float, maximum: float, optional: bool = False) -> float:
        value = self._get(key, optional)
        if value is None and optional:
            return minimum
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CodecError(f"{self._where}.{key}: expected a number")
        if not minimum <= value <= maximum:
            raise CodecError(f"{self._where}.{key}: {value} is outside {minimum}..{maximum}")
        return float(value)

    def text(self, key: str, *, max_len: int, optional: bool = False) -> str:
        value = self._get(key, optional)
        if value is None and optional:
            return ""
        if not isinstance(value, str):
            raise CodecError(f"{self._where}.{key}: expected text")
        if len(value.encode("utf-8", "surrogatepass")) > max_len:
            raise CodecError(f"{self._where}.{key}: longer than {max_len} bytes")
        return value

    def blob(self, key: str, *, max_len: int, exact: bool = False) -> bytes:
        value = self._get(key, False)
        if not isinstance(value, bytes):
            raise CodecError(f"{self._where}.{key}: expected a byte string")
        if exact and len(value) != max_len:
            raise CodecError(f"{self._where}.{key}: expected exactly {max_len} bytes")
        if len(value) > max_len:
            raise CodecError(f"{self._where}.{key}: longer than {max_len} bytes")
        return value

    def array(self, key: str, *, max_items: int, optional: bool = False) -> list[Any]:
        value = self._get(key, optional)
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise CodecError(f"{self._where}.{key}: expected an array")
        if len(value) > max_items:
            raise CodecError(f"{self._where}.{key}: more than {max_items} items")
        return value

    def sub(self, key: str, *, optional: bool = False) -> Fields | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        return Fields(value, f"{self._where}.{key}")

    def require_sub(self, key: str) -> Fields:
        return Fields(self._get(key, False), f"{self._where}.{key}")

    def keys(self) -> list[Any]:
        return list(self._map)

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._map.items())

    def boolean(self, key: str) -> bool:
        value = self._get(key, False)
        if not isinstance(value, bool):
            raise CodecError(f"{self._where}.{key}: expected a boolean")
        return value

    def where(self, suffix: str) -> str:
        return f"{self._where}{suffix}"
