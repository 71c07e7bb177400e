"""A bad network, made on purpose, for scenario swarms on machines whose kernel cannot (no netem).

``impair = "delay_ms=80,jitter_ms=40,drop=0.02"`` makes this node's job and blob streams wait
``delay_ms`` ± ``jitter_ms`` before each message they send, and break (reset) a stream with
probability ``drop`` per message: what a slow, lossy path looks like to protocols over TCP, whose
retransmissions turn loss into delay and, past their patience, into broken connections. Gossip is not
affected (py-libp2p's own streams). It is a process-wide setting: one node per process in a swarm.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import trio

from p2pnode.errors import ConfigError

_current: Impairment | None = None


@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Impairment:
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            if not sep or key not in ("delay_ms", "jitter_ms", "drop"):
                raise ConfigError(f"impair: {part!r} is not delay_ms=, jitter_ms= or drop=")
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"impair: {raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0 or (key == "drop" and value > 1) or value > 60_000:
                raise ConfigError(f"impair: {key}={raw} is out of range")
            values[key] = value
        return cls(**values)

    async def before_send(self) -> bool:
        """Wait as the bad network would; True when this message breaks its stream."""
        delay = self.delay_ms + random.uniform(-self.jitter_ms, self.jitter_ms)
        if delay > 0:
            await trio.sleep(delay / 1000)
        return random.random() < self.drop


def set_current(impairment: Impairment | None) -> None:
    global _current
    _current = impairment


def current() -> Impairment | None:
    return _current
