"""The simulator's clock, network and gossip mesh: virtual time and a modelled network.

* :class:`Engine` -- a discrete-event loop: a heap of (time, order, callback); time jumps from
  event to event, so a simulated hour costs what its events cost.
* :class:`Network` -- point-to-point messages (the job protocol's streams) between nodes with a
  latency per hop (a base, plus each end's impairment: delay, uniform jitter), a bandwidth, loss
  that breaks a stream (as ``impair``'s loss does on a real node: the shell sees the stream end),
  partitions and dead nodes. Messages on one stream stay in order, as on TCP. Every message is
  counted per node and class (bytes and messages, in and out).
* :class:`Mesh` -- the gossipsub mesh (degree D = 6, as ``net/gossip.py`` configures it): who is
  linked to whom among the live nodes, the connected components a partition leaves, and hop
  distances from observing nodes. A published message reaches every node of its publisher's
  component; it arrives at a node after one hop's latency plus one validation per hop on the
  shortest path (the first copy wins a flood), and it costs each node of the component about
  ``degree − 1`` copies sent and received (each forwards to its mesh except the peer it came from).
  Gossip's own recovery (IHAVE/IWANT) is modelled as traffic only: a heartbeat each second sends
  IHAVE to D_lazy = 6 peers naming the message ids of the last ``gossip_window`` heartbeats.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CLASSES = ("ads", "reports", "control", "jobs")
DEGREE, D_LAZY, GOSSIP_WINDOW, HEARTBEAT_S = 6, 6, 3, 1.0
MSG_ID_BYTES = 46  # py-libp2p's message id: origin peer id + 8-byte sequence number
RPC_OVERHEAD = 64  # protobuf RPC around a gossip message, Yamux and Noise framing
FRAME_OVERHEAD = 30  # a job frame's length prefix, Yamux and Noise


class Engine:
    def __init__(self, seed: int) -> None:
        self.t = 0.0
        self._q: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._n = 0
        self.rng = random.Random(seed)
        self.events = 0

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._q, (max(t, self.t), self._n, fn, args))
        self._n += 1

    def after(self, dt: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.t + dt, fn, *args)

    def run(self, until: float) -> None:
        q = self._q
        while q and q[0][0] <= until:
            t, _, fn, args = heapq.heappop(q)
            self.t = t
            fn(*args)
            self.events += 1
        self.t = max(self.t, until)


@dataclass
class Impair:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # percent of messages that break their stream


@dataclass
class Traffic:
    """Messages and bytes per node and class, in and out."""

    n: int
    msgs_in: np.ndarray = field(init=False)
    msgs_out: np.ndarray = field(init=False)
    bytes_in: np.ndarray = field(init=False)
    bytes_out: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.n, len(CLASSES))
        self.msgs_in, self.msgs_out = np.zeros(shape), np.zeros(shape)
        self.bytes_in, self.bytes_out = np.zeros(shape), np.zeros(shape)

    def copy(self) -> Traffic:
        return self.since(Traffic(self.n))

    def since(self, before: Traffic) -> Traffic:
        """What was counted after ``before`` (a copy taken earlier)."""
        out = Traffic(self.n)
        out.msgs_in, out.msgs_out = self.msgs_in - before.msgs_in, self.msgs_out - before.msgs_out
        out.bytes_in, out.bytes_out = self.bytes_in - before.bytes_in, self.bytes_out - before.bytes_out
        return out

    def count(self, src: int, dst: int, cls: int, nbytes: int) -> None:
        self.msgs_out[src, cls] += 1
        self.bytes_out[src, cls] += nbytes
        self.msgs_in[dst, cls] += 1
        self.bytes_in[dst, cls] += nbytes


class Network:
    def __init__(self, engine: Engine, n: int, *, base_ms: float, bandwidth_bps: float) -> None:
        self.engine, self.n = engine, n
        self.base_s = base_ms / 1000.0
        self.bandwidth = bandwidth_bps
        self.impair: dict[int, Impair] = {}
        self.alive = np.ones(n, dtype=bool)
        self.side = np.zeros(n, dtype=np.int32)  # partition side; 0 everywhere when whole
        self.traffic = Traffic(n)
        self._last: dict[tuple[int, int], float] = {}  # in-order delivery per direction

    def reachable(self, a: int, b: int) -> bool:
        return bool(self.alive[a] and self.alive[b] and self.side[a] == self.side[b])

    def hop_s(self, a: int, b: int, rng: random.Random) -> float:
        s = self.base_s
        for i in (a, b):
            imp = self.impair.get(i)
            if imp is not None:
                s += max(0.0, imp.delay_ms + rng.uniform(-imp.jitter_ms, imp.jitter_ms)) / 1000.0
        return s

    def lost(self, a: int, b: int, rng: random.Random) -> bool:
        for i in (a, b):
            imp = self.impair.get(i)
            if imp is not None and imp.loss and rng.random() * 100 < imp.loss:
                return True
        return False

    def send(self, a: int, b: int, nbytes: int, deliver: Callable[..., None], *args: Any,
             cls: int = 3) -> bool:
        """Send on the stream a -> b; False when the stream broke (dead, cut off, or lost)."""
        self.traffic.msgs_out[a, cls] += 1
        self.traffic.bytes_out[a, cls] += nbytes + FRAME_OVERHEAD
        rng = self.engine.rng
        if not self.reachable(a, b) or self.lost(a, b, rng):
            return False
        self.traffic.msgs_in[b, cls] += 1
        self.traffic.bytes_in[b, cls] += nbytes + FRAME_OVERHEAD
        t = self.engine.t + self.hop_s(a, b, rng) + (nbytes + FRAME_OVERHEAD) * 8 / self.bandwidth
        t = max(t, self._last.get((a, b), 0.0))
        self._last[(a, b)] = t
        if len(self._last) > 200_000:
            self._last.clear()
        self.engine.at(t, deliver, *args)
        return True


class Mesh:
    """The gossip mesh over the live nodes, rebuilt when the network changes shape."""

    def __init__(self, net: Network, rng: random.Random, degree: int = DEGREE) -> None:
        self.net, self.rng, self.degree = net, rng, degree
        self.adj: list[set[int]] = [set() for _ in range(net.n)]
        self.banned: set[tuple[int, int]] = set()  # (who, whom): who refuses whom
        self.component = np.zeros(net.n, dtype=np.int64)
        self.deg = np.zeros(net.n)
        self._observers: list[int] = []
        self._obs_arr = np.zeros(0, dtype=np.int64)
        self._dist: np.ndarray | None = None  # [observer, node] -> hops (-1: unreachable)
        # per component: messages and bytes published since the last flush
        self._pending: dict[tuple[int, int], list[float]] = {}

    def build(self, members: Iterable[int]) -> None:
        """Each node links to random others until every one has about ``degree`` mesh peers."""
        nodes = list(members)
        for v in nodes:
            want = self.degree - len(self.adj[v])
            tries = 0
            while want > 0 and tries < 4 * self.degree and len(nodes) > 1:
                u = nodes[self.rng.randrange(len(nodes))]
                tries += 1
                if u == v or u in self.adj[v] or len(self.adj[u]) >= self.degree + 2 or self._refused(u, v):
                    continue
                self.adj[v].add(u)
                self.adj[u].add(v)
                want -= 1

    def _refused(self, u: int, v: int) -> bool:
        return (u, v) in self.banned or (v, u) in self.banned

    def cut(self, who: int, whom: int) -> None:
        """``who`` banned ``whom``: their link goes, and is not re-made."""
        self.banned.add((who, whom))
        self.adj[who].discard(whom)
        self.adj[whom].discard(who)

    def refresh(self, observers: list[int]) -> None:
        """After a change (a kill, a restart, a partition, a heal): flush the traffic counted so far,
        repair the mesh among the reachable, and recompute components and distances."""
        self.flush()
        net = self.net
        for v in range(net.n):
            for u in list(self.adj[v]):
                if not net.reachable(u, v):
                    self.adj[v].discard(u)
        for side in set(net.side[net.alive].tolist()):
            self.build([v for v in range(net.n) if net.alive[v] and net.side[v] == side])
        self.deg = np.array([len(a) for a in self.adj], dtype=float)
        self.component[:] = -1
        c = 0
        for v in range(net.n):
            if net.alive[v] and self.component[v] < 0:
                for u in self._bfs(v):
                    self.component[u] = c
                c += 1
        self._observers = observers
        self._obs_arr = np.asarray(observers, dtype=np.int64)
        self._dist = np.stack([self._hops(o) if net.alive[o] else np.full(net.n, -1, dtype=np.int32)
                               for o in observers]) if observers else None

    def _bfs(self, start: int) -> list[int]:
        seen, q, out = {start}, deque([start]), [start]
        while q:
            v = q.popleft()
            for u in self.adj[v]:
                if u not in seen:
                    seen.add(u)
                    q.append(u)
                    out.append(u)
        return out

    def _hops(self, start: int) -> np.ndarray:
        d = np.full(self.net.n, -1, dtype=np.int32)
        d[start] = 0
        q = deque([start])
        while q:
            v = q.popleft()
            for u in self.adj[v]:
                if d[u] < 0:
                    d[u] = d[v] + 1
                    q.append(u)
        return d

    def publish(self, origin: int, nbytes: int, cls: int) -> None:
        """Count one message flooded over ``origin``'s component (applied at the next flush)."""
        key = (int(self.component[origin]), cls)
        acc = self._pending.setdefault(key, [0.0, 0.0])
        acc[0] += 1
        acc[1] += nbytes + RPC_OVERHEAD

    def flush(self) -> None:
        """Apply the counted messages: each node of a component sends and receives about
        ``degree - 1`` copies of each (at least one)."""
        if not self._pending:
            return
        tr = self.net.traffic
        copies = np.maximum(self.deg - 1, 1.0)
        for (comp, cls), (msgs, nbytes) in self._pending.items():
            members = self.component == comp
            if comp < 0 or not members.any():
                continue
            for arr, value in ((tr.msgs_in, msgs), (tr.msgs_out, msgs), (tr.bytes_in, nbytes), (tr.bytes_out, nbytes)):
                arr[members, cls] += copies[members] * value
        self._pending.clear()

    def heartbeat_traffic(self, seconds: float, ids_per_s: float, tr: Traffic | None = None) -> None:
        """IHAVE gossip over ``seconds``: each live node sends D_lazy messages a heartbeat naming
        the ids of the last ``GOSSIP_WINDOW`` heartbeats (``ids_per_s`` messages a second network-wide);
        counted into ``tr`` (the network's own by default)."""
        tr = tr if tr is not None else self.net.traffic
        alive = self.net.alive
        beats = seconds / HEARTBEAT_S
        ids = ids_per_s * HEARTBEAT_S * GOSSIP_WINDOW
        per = beats * D_LAZY
        nbytes = per * (RPC_OVERHEAD + ids * MSG_ID_BYTES)
        cls = CLASSES.index("control")
        for arr, value in ((tr.msgs_in, per), (tr.msgs_out, per), (tr.bytes_in, nbytes), (tr.bytes_out, nbytes)):
            arr[alive, cls] += value

    def arrivals(self, origin: int, hop_s: float, rng: np.random.Generator) -> list[tuple[int, float]]:
        """(observer, seconds) for each observer a message from ``origin`` reaches: ``h`` hops take
        ``h`` times ``hop_s``, each hop uniform in [0.5, 1.5] of it (summed as a normal)."""
        if self._dist is None or not len(self._observers):
            return []
        h = self._dist[:, origin].astype(float)
        reach = h > 0
        if not reach.any():
            return []
        hh = h[reach]
        secs = hop_s * np.maximum(0.5 * hh, hh + np.sqrt(hh / 12.0) * rng.standard_normal(len(hh)))
        obs = self._obs_arr[reach]
        return list(zip(obs.tolist(), secs.tolist(), strict=True))
