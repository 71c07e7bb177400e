"""What the pages share: a ring of recent log lines, server-sent events of changing sections, and
the JSON answers and bounded bodies of the API."""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

STATIC = Path(__file__).parent / "static"
MAX_BODY = 16 * 1024  # a change is a few settings
LOG_LINES = 500


class LogRing(logging.Handler):
    """The last ``LOG_LINES`` log records, numbered, for the logs panel."""

    def __init__(self, size: int = LOG_LINES) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[dict[str, Any]] = deque(maxlen=size)
        self.seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            msg = str(record.msg)
        self.seq += 1
        self.lines.append({"seq": self.seq, "t": round(record.created, 3), "level": record.levelname.lower(),
                           "logger": record.name, "msg": msg[:2000]})

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["seq"] > seq]


def to_json(obj: Any) -> str:
    """JSON with non-finite numbers as null (a browser's JSON.parse refuses NaN)."""
    return json.dumps(_finite(obj), separators=(",", ":"), sort_keys=True)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    return obj


Snapshot = Callable[[int], Awaitable[dict[str, Any]]]


async def event_stream(snapshot: Snapshot, *, every: float = 1.0, heartbeat: float = 15.0) -> AsyncIterator[bytes]:
    """Server-sent events: each round, ``snapshot(round)``'s sections that changed since the last
    one sent, as ``event: NAME`` with the section's JSON; a comment line now and then keeps the
    connection open through idle times. Runs until the client goes away (the server cancels it)."""
    sent: dict[str, str] = {}
    rounds = 0
    quiet = 0.0
    yield b"retry: 2000\n\n"
    while True:
        sections = await snapshot(rounds)
        out = []
        for name, value in sections.items():
            text = to_json(value)
            if name == "logs" or sent.get(name) != text:
                if name == "logs" and not value:
                    continue
                sent[name] = text
                out.append(f"event: {name}\ndata: {text}\n\n")
        if out:
            quiet = 0.0
            yield "".join(out).encode()
        elif quiet >= heartbeat:
            quiet = 0.0
            yield b": idle\n\n"
        rounds += 1
        await trio.sleep(every)
        quiet += every


async def read_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    """The request body, refused past ``MAX_BODY`` (raises ValueError)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValueError("the client went away")
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise ValueError(f"the request is larger than {MAX_BODY} bytes")
        if not message.get("more_body"):
            return bytes(body)


def verified_how(job: dict[str, Any]) -> str:
    """How a job's result was checked, in words (a job record as the control API shows it)."""
    if job.get("checked"):
        return str(job["checked"])
    if job.get("role") == "provider":
        return "by its requester"
    if job.get("state") == "done":
        return "not re-run (not sampled)"
    return ""


def page(name: str, token: str) -> str:
    """A page of ``static/`` with the token where the page's script reads it (a meta tag): only
    a request that already carried the token gets it."""
    from html import escape

    text = (STATIC / name).read_text(encoding="utf-8")
    return text.replace("{{token}}", escape(token, quote=True))
