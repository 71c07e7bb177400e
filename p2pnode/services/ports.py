"""The narrow collaborators services are built from: each service names exactly the ones it uses.

They are plain callables or small protocols, so a test builds a service from fakes (a list that
collects penalties, a dict standing in for the ledger, memory streams standing in for libp2p) and a
virtual clock, without a node, a host or a database.

**One clock.** ``Now`` is the shell's only clock: Unix seconds, what deadlines on the wire are
measured in. The node passes ``time.time``; tests pass ``lambda: EPOCH + trio.current_time()`` with
``trio.testing.MockClock``. Waiting for a Unix-time deadline is :func:`trio_deadline`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import trio

Now = Callable[[], float]
"""Unix time in seconds."""

Penalise = Callable[[bytes, str], None]
"""Count an offence (a ``PeerError`` code) against a peer; the node bans past a threshold."""

IsBanned = Callable[[bytes], bool]

Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish bytes on a gossip topic (best effort)."""


class Streams(Protocol):
    """Opens streams to peers (``net/streams.py`` over a libp2p host; memory streams in tests)."""

    async def open(self, peer: bytes, protocol: str, addrs: Sequence[str] = ()) -> Any:
        """A new stream to ``peer`` for ``protocol``, dialing ``addrs`` first when not connected.
        Raises on any failure (unreachable, refused, timed out)."""


class Recorder(Protocol):
    """Appends to the ledger; returns once the entry is durable."""

    async def record(self, kind: str, data: Mapping[str, Any], peer: bytes = b"") -> Any: ...


class Judge(Recorder, Protocol):
    """What the requester side asks of the node's trust: reputation, the check policy, the ledger,
    and gossiping what it learned (``services/trust.py`` is the real one)."""

    def adjust(self, peer: bytes) -> float: ...
    def distrusted(self, peer: bytes) -> bool: ...
    def known(self, peer: bytes) -> bool: ...
    def score(self, peer: bytes) -> float: ...
    def check_probability(self, workload: str, peer: bytes) -> float: ...
    def verify_method(self, workload: str) -> str: ...
    @property
    def freivalds_rounds(self) -> int: ...
    async def publish_opinion(self, subject: bytes) -> None: ...
    async def publish_cheat(self, subject: bytes, job: bytes, results: tuple[bytes, bytes, bytes]) -> None: ...


class Runner(Protocol):
    """What the provider asks of the executor (``exec/executor.py``): run one job, typed failures."""

    backends: tuple[str, ...]

    async def run(self, workload: str, params: dict[str, Any], *, backend: str | None = None,
                  timeout: float | None = None, on_progress: Callable[[float], None] | None = None,
                  inputs: dict[str, Any] | None = None) -> Any: ...

    def input_buffer(self, dtype: Any, shape: tuple[int, ...]) -> Any:
        """A writable array for a job's input, handed to the job's worker without a copy where
        the runner can (a spool file it maps)."""
        ...


class Prober(Protocol):
    """What the requester's model preparation asks of an executor: a model tried on a few rows in
    a worker (``Executor.probe_model``)."""

    async def probe_model(self, blob: bytes, rows: dict[str, Any], spread: int, *,
                          timeout: float) -> dict[str, Any]: ...


def trio_deadline(now: Now, unix: float) -> float:
    """The trio clock reading at which Unix time ``unix`` comes (for ``trio.move_on_at``)."""
    return trio.current_time() + (unix - now())


class PeerNetwork(Protocol):
    """What bans need of the network: who is connected, gossip's blacklist, and hanging up."""

    def connected(self) -> list[bytes]: ...
    def blacklisted(self) -> list[bytes]: ...
    def blacklist(self, peer: bytes) -> None: ...
    def unblacklist(self, peer: bytes) -> None: ...
    async def disconnect(self, peer: bytes) -> None: ...
