"""Logging set-up: one event per line, as text or as JSON objects for log collectors (journald,
Loki, Vector), with py-libp2p quiet unless asked."""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class JsonLines(logging.Formatter):
    """``{"t": ..., "level": ..., "logger": ..., "msg": ...}`` per record, a traceback (if any) in
    ``exc``: one line, whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "t": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class OneLine(logging.Formatter):
    """Text, with newlines in a message or traceback escaped, so every event is one line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if fmt == "json" else
                         OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # py-libp2p logs every failed dial at ERROR and much at DEBUG; we report what matters
    # (unreachable bootstrap peers, bans) ourselves, so its logs show only with debug.
    # Importing libp2p sets up its own logging (level WARNING, not propagated, so Python's
    # last-resort handler prints its errors as bare lines): import it first, then take over.
    import libp2p  # noqa: F401

    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.setLevel(logging.DEBUG if level.lower() == "debug" else logging.CRITICAL)
    libp2p_logger.propagate = True
    for noisy in ("multiaddr", "zeroconf", "async_service"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
