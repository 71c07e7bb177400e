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


def say(text: str, fmt: str = "text") -> None:
    """One line for the operator on standard output (``listening on ...``): as is, or, with the
    JSON log format, as a log object too, so a collector that takes standard output and error
    together (journald) reads one JSON object per line."""
    if fmt == "json":
        record = logging.LogRecord("p2pnode", logging.INFO, __file__, 0, text, (), None)
        text = JsonLines().format(record)
    print(text, flush=True)


class OneLine(logging.Formatter):
    """Text, with newlines in a message or traceback escaped, so every event is one line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


# Libraries and the least level of theirs shown (below the node's own level, never lower).
# py-libp2p logs every failed dial at ERROR and much at DEBUG; we report what matters (unreachable
# bootstrap peers, bans) ourselves, so its logs show only with debug.
QUIET = {"libp2p": logging.CRITICAL, "multiaddr": logging.WARNING, "zeroconf": logging.WARNING,
         "async_service": logging.WARNING}


class LibraryLevels(logging.Filter):
    """Drops a library's records below its least level (``QUIET``), whatever level the library
    gave its own loggers: a logger's level decides what it emits, and some of py-libp2p's set
    theirs to INFO when imported (its auto-connector logs ``initiating N new dials`` every 10 s),
    which a parent's level cannot override. Applied at the node's handler, it holds for loggers
    made later too."""

    def __init__(self, least: dict[str, int]) -> None:
        super().__init__()
        self.least = least

    def filter(self, record: logging.LogRecord) -> bool:
        least = self.least.get(record.name.partition(".")[0])
        return least is None or record.levelno >= least


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if fmt == "json" else
                         OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    debug = level.lower() == "debug"
    least = {name: lvl for name, lvl in QUIET.items() if not (debug and name == "libp2p")}
    handler.addFilter(LibraryLevels(least))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    logging.captureWarnings(True)  # Python's warnings as log records too, not bare lines
    # Importing libp2p sets up its own logging (level WARNING, not propagated, so Python's
    # last-resort handler prints its errors as bare lines): import it first, then take over.
    import libp2p  # noqa: F401

    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.handlers.clear()
    libp2p_logger.setLevel(logging.DEBUG if debug else QUIET["libp2p"])
    libp2p_logger.propagate = True
    for noisy in ("multiaddr", "zeroconf", "async_service"):
        logging.getLogger(noisy).setLevel(QUIET[noisy])
