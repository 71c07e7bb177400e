"""Fakes of the services' collaborators: memory streams for libp2p, an in-process executor, a judge
that keeps its ledger in a list, and a virtual clock. With them a service runs in a test without a
host, a worker process or a database, under ``trio.testing.MockClock``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio
import trio.testing

from p2pnode.exec import backends, workloads
from p2pnode.exec.executor import ExecResult
from p2pnode.identity import Identity
from p2pnode.wire.capacity_ad import CapacityAd, CpuInfo, Offer

EPOCH = 1_800_000_000.0


def thread_aware_clock(monkeypatch: Any) -> trio.testing.MockClock:
    """Virtual time that jumps as soon as every task waits, but stands still while real work runs in
    a worker thread (sealing, opening and checking a result): a task waiting on a thread waits too,
    and a jump then would age the conversation by a minute while a slow moment of this machine
    lasts (deadlines passed, providers given up for dead)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    run_sync = trio.to_thread.run_sync
    busy = 0

    async def run_sync_standing_still(*args: Any, **kwargs: Any) -> Any:
        nonlocal busy
        busy += 1
        clock.autojump_threshold = float("inf")
        try:
            return await run_sync(*args, **kwargs)
        finally:
            busy -= 1
            if not busy:
                clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_standing_still)
    return clock


def virtual_now() -> float:
    """Unix time that follows trio's clock (a MockClock in these tests)."""
    return EPOCH + trio.current_time()


class Msg:
    """A gossip message as a validator sees it."""

    def __init__(self, data: bytes, origin: bytes) -> None:
        self.data, self.from_id = data, origin


class Peer:
    """The forwarder of a gossip message (its ``to_bytes`` is the peer id)."""

    def __init__(self, peer: bytes) -> None:
        self._p = peer

    def to_bytes(self) -> bytes:
        return self._p


class MemoryStream:
    """One end of a trio memory stream, with the libp2p stream methods FramedStream uses."""

    def __init__(self, stream: trio.abc.Stream, remote: bytes) -> None:
        self._s = stream

        class _Id:
            def to_bytes(self) -> bytes:
                return remote

        class _Conn:
            peer_id = _Id()

        self.muxed_conn = _Conn()

    async def read(self, n: int) -> bytes:
        return await self._s.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self._s.send_all(data)

    async def close(self) -> None:
        await self._s.aclose()

    async def reset(self) -> None:
        await self._s.aclose()


Handler = Callable[[Any, bytes], Awaitable[None]]


@dataclass
class MemoryNet:
    """Peers in one process: ``serve(peer, protocol, handler)``, then any peer's ``streams(me)``
    opens streams to it. Handlers run in the net's nursery, as a host runs them."""

    nursery: trio.Nursery
    handlers: dict[tuple[bytes, str], Handler] = field(default_factory=dict)
    down: set[bytes] = field(default_factory=set)

    def serve(self, peer: bytes, protocol: str, handler: Handler) -> None:
        self.handlers[(peer, protocol)] = handler

    def streams(self, me: bytes) -> MemoryStreams:
        return MemoryStreams(self, me)


@dataclass
class MemoryStreams:
    net: MemoryNet
    me: bytes

    async def open(self, peer: bytes, protocol: str, addrs: Sequence[str] = ()) -> Any:
        handler = self.net.handlers.get((peer, protocol))
        if handler is None or peer in self.net.down:
            raise ConnectionError(f"{peer.hex()[:8]} does not answer {protocol}")
        ours, theirs = trio.testing.memory_stream_pair()
        self.net.nursery.start_soon(handler, MemoryStream(theirs, self.me), self.me)
        return MemoryStream(ours, peer)


class InlineExecutor:
    """Runs workloads on NumPy in this process: the executor's interface, none of its isolation."""

    backends = ("numpy",)
    slots = 1
    load = 0.0

    def __init__(self) -> None:
        self.running = 0
        self.completed = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def run(self, workload: str, params: dict[str, Any], *, backend: str | None = None,
                  timeout: float | None = None, on_progress: Callable[[float], None] | None = None,
                  inputs: dict[str, Any] | None = None) -> ExecResult:
        wl = workloads.get(workload)
        p = wl.check(params)
        self.running += 1
        self.calls.append((workload, p))
        try:
            await trio.sleep(0.01)  # virtual time: the work takes a moment
            out = wl.run(p, backends.ops("numpy"), on_progress or (lambda f: None),
                         workloads.check_inputs(wl, p, inputs) or None)
        finally:
            self.running -= 1
        self.completed += 1
        return ExecResult(out, 0.01, 0.01, "numpy")

    def input_buffer(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, dtype)


@dataclass
class ListJudge:
    """The requester's judge with its ledger in a list and no opinions of anyone."""

    entries: list[tuple[str, dict[str, Any], bytes]] = field(default_factory=list)
    published: list[tuple[str, bytes]] = field(default_factory=list)
    method: str = "freivalds"

    async def record(self, kind: str, data: Mapping[str, Any], peer: bytes = b"") -> Any:
        self.entries.append((kind, dict(data), peer))

    def adjust(self, peer: bytes) -> float:
        return 1.0

    def distrusted(self, peer: bytes) -> bool:
        return False

    def known(self, peer: bytes) -> bool:
        return True

    def score(self, peer: bytes) -> float:
        return 0.5

    def check_probability(self, workload: str, peer: bytes) -> float:
        return 0.0

    def verify_method(self, workload: str) -> str:
        return self.method if workload == "matmul" else "rerun"

    @property
    def freivalds_rounds(self) -> int:
        return 20

    async def publish_opinion(self, subject: bytes) -> None:
        self.published.append(("opinion", subject))

    async def publish_cheat(self, subject: bytes, job: bytes, results: tuple[bytes, bytes, bytes]) -> None:
        self.published.append(("cheat", subject))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.entries]


@dataclass
class Offences:
    """``penalise`` and ``is_banned`` backed by a list."""

    got: list[tuple[bytes, str]] = field(default_factory=list)
    banned: set[bytes] = field(default_factory=set)

    def penalise(self, peer: bytes, code: str) -> None:
        self.got.append((peer, code))

    def is_banned(self, peer: bytes) -> bool:
        return peer in self.banned


def ad_for(identity: Identity, now: float, *, price: int = 100, gflops: float = 50.0,
           life: float = 300.0) -> CapacityAd:
    """A provider's capacity ad, as the requester's table would hold it, living ``life`` seconds."""
    return CapacityAd(peer_id=identity.peer_id, seq=1, issued_at_ms=int(now * 1000),
                      expires_at_ms=int((now + life) * 1000), cpu=CpuInfo("test", 2, 8 << 30, 4 << 30),
                      offers=tuple(Offer(w, "numpy", price, "gflop") for w in ("matmul", "infer", "train_step")),
                      addrs=(f"/ip4/127.0.0.1/tcp/{1 + int.from_bytes(identity.peer_id[-2:], 'big')}",),
                      speed=(("numpy-fp32", gflops),))
