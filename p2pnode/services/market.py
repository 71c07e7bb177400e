"""Capacity gossip on ``p2pnode/capacity/2``: this node's ads out, everyone's ads into the table.

* **In**: :meth:`MarketService.validate` is the topic's gossipsub validator. A signed ad is offered
  to the pure :class:`CapacityTable` (signature, sequence, expiry, size and rate rules); a refused
  one is not forwarded and counts against the peer to blame (the forwarder, or for ``rate_limited``
  the originator, since an honest forwarder validates before it forwards).
* **Out** (providers): :meth:`advertise` re-reads the hardware every second and publishes a signed ad
  at start, at every change of what it offers or where, and otherwise paced by the market's size
  (``market.pacing``): every ``ad_interval`` in a small market, less often in a large one, so the
  whole market publishes a bounded number of ads a second.
* **Version 1**: ads on the previous topic ``p2pnode/capacity/1`` are still read (:meth:`validate_v1`,
  with that version's 300 s TTL limit) and ``/p2pnode/market/1`` syncs are served with the ads that
  version accepts; nothing is published there.
* :meth:`expire` drops ads past their expiry and keeps the market metrics current;
  :meth:`wait_until` lets callers wait on table changes instead of polling.

Collaborators: this node's identity, ``now``, the table, the metrics, the peer policy's
``is_banned`` / ``penalise``, ``publish``, the resources (hardware and speed), the executor (what it
can run), an optional adversary (over-claims speed), and the node's addresses and peer count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from p2pnode.adversary import Adversary
from p2pnode.config import MIN_AD_INTERVAL_S
from p2pnode.errors import CodecError, PeerError
from p2pnode.exec.backends import for_workload
from p2pnode.exec.executor import Executor
from p2pnode.identity import Identity
from p2pnode.market import pacing
from p2pnode.market.bidding import Capacity
from p2pnode.market.capacity_table import CapacityTable, TableEntry
from p2pnode.market.standing import Standing
from p2pnode.net.framing import FramedStream
from p2pnode.protocol.limits import StreamLimits
from p2pnode.services.ports import IsBanned, Now, Penalise, Publish, Streams
from p2pnode.telemetry.metrics import NodeMetrics
from p2pnode.telemetry.probe import Hardware, HardwareProbe
from p2pnode.wire import codec
from p2pnode.wire.capacity_ad import MAX_AD_BYTES, CapacityAd, Offer, ad_peer, decode_ad, encode_ad
from p2pnode.wire.names import CAPACITY_TOPIC, MARKET_PROTOCOL

log = logging.getLogger("p2pnode.node")
# An ad on change waits at least this long after the previous one, so that with
# ad_interval >= MIN_AD_INTERVAL_S a node never publishes faster than peers accept (0.5/s).
MIN_CHANGE_INTERVAL_S = MIN_AD_INTERVAL_S
PROBE_INTERVAL_S = 1.0
MAX_SYNC_ADS = 1024  # ads in one market sync (the table's default size)
MAX_SYNC_BYTES = MAX_SYNC_ADS * (MAX_AD_BYTES + 8) + 16
MAX_NEW_PER_SYNC = 128  # providers one sync may add to the table (updates of listed ones: no limit)
SERVE_UNPROVEN = 256  # unproven providers a sync serves (after those this node has seen itself)
SYNC_TIMEOUT_S = 10.0
SYNC_POLL_S = 1.0  # how often new connections are looked for
SYNC_AGAIN_S = (0.0, 5.0, 20.0)  # delays of the syncs with a newly connected peer (each after the last)
# what an honest peer's table holds and we may refuse: no evidence against the peer that sent it
SYNC_BENIGN = frozenset({"stale", "expired", "future", "rate_limited", "table_full"})
EXPIRE_INTERVAL_S = 1.0
FIRST_PEER_GRACE_S = 1.0  # from a first connection to its gossip subscriptions being known
V1_MAX_TTL_S = 300.0  # the longest ad life version 1 of the market accepts


@dataclass
class Resources:
    """What this machine has to offer: the latest hardware reading and the speeds measured at start."""

    hardware: Hardware | None = None
    speed: dict[str, float] = field(default_factory=dict)

    def gpu_free(self, index: int) -> int | None:
        """Free memory offered on GPU ``index``, from the latest NVML read (refreshed every second)."""
        if self.hardware is None:
            return None
        return next((g.memory_free for g in self.hardware.gpus if g.index == index), None)


@dataclass(frozen=True)
class AdSettings:
    price: int
    workloads: tuple[str, ...]
    checker: bool
    ad_interval: float
    ad_ttl: float


def capacity_from(resources: Resources, executor: Executor | None, price: int, workloads: tuple[str, ...],
                  provide: bool, paused: bool = False) -> Capacity:
    """What this node can offer a request for bids right now (for ``market.bidding.decide``)."""
    speeds = resources.speed
    gflops = max(speeds.values()) if speeds else 1.0
    backends = executor.backends if executor else ()
    hw = resources.hardware
    gpu_backend = bool(backends) and backends[0] != "numpy"
    free = (max(g.memory_free for g in hw.gpus) if gpu_backend and hw.gpus else hw.cpu.memory_free) if hw else 0
    return Capacity(backends=backends, free_memory=int(free * 0.8), gflops=gflops, price_per_gflop=price,
                    busy=executor is None or executor.running >= 2 * executor.slots,
                    offered=workloads if provide else (), speeds=tuple(sorted(speeds.items())), paused=paused)


class MarketService:
    def __init__(self, *, identity: Identity, now: Now, table: CapacityTable, metrics: NodeMetrics,
                 is_banned: IsBanned, penalise: Penalise, publish: Publish, settings: AdSettings,
                 resources: Resources, probe: HardwareProbe, executor: Executor | None,
                 adversary: Adversary | None, addrs: Callable[[], list[str]], peers: Callable[[], int],
                 connected: Callable[[], list[bytes]] = list, streams: Streams | None = None) -> None:
        """``connected`` and ``streams``: for market sync with each newly connected peer (none
        without them)."""
        self.identity, self.now, self.table, self.metrics = identity, now, table, metrics
        self.operator_paused = False  # p2pnode pause
        self.off_schedule = False  # outside the operator's time-of-day schedule
        self.is_banned, self.penalise, self.publish = is_banned, penalise, publish
        self.settings, self.resources, self.probe = settings, resources, probe
        self.executor, self.adversary, self.addrs, self.peers = executor, adversary, addrs, peers
        self.connected, self.streams = connected, streams
        self.limits = StreamLimits(per_peer=2, total=64)
        self.synced = 0  # ads taken from market syncs
        self.rejected: dict[str, int] = {}
        self.own_refused = ""  # why this node's last own ad was refused ("": it was taken)
        self.ads_published = 0
        self.paced_for = 1  # the market size this node's last ad was paced for
        self._seq = 0
        self._changed = trio.Event()

    @property
    def paused(self) -> bool:
        """No new jobs: paused by the operator or outside the schedule (running jobs finish)."""
        return self.operator_paused or self.off_schedule

    # gossip in ---------------------------------------------------------------------------
    def validate_v1(self, forwarder: Any, msg: Any) -> bool:
        """Validator of the version-1 topic: the same rules, with that version's TTL limit."""
        return self.validate(forwarder, msg, max_ttl_s=V1_MAX_TTL_S)

    def validate(self, forwarder: Any, msg: Any, max_ttl_s: float | None = None) -> bool:
        """GossipSub validator: accept into the table or reject (not forwarded) and penalise."""
        now = self.now()
        fwd = forwarder.to_bytes()
        own = fwd == self.identity.peer_id
        if own and self.adversary is not None and self.adversary.flood_rate:
            return True  # a flooder does not hold itself to the rate it floods past
        if not own:
            self.metrics.ads_seen.inc()
            if self.is_banned(fwd):
                self._reject("banned", None)
                return False
        if self._held(msg.data, origin=bytes(msg.from_id)):
            # A copy of the ad held already, which market sync brought before gossip did (or gossip
            # asked for after a sync): dropped unforwarded, neither a refusal nor the forwarder's fault.
            self.metrics.ads_duplicate.inc()
            return False
        try:
            signed = decode_ad(msg.data)
            entry = self.table.offer(signed, now, origin=bytes(msg.from_id), via=fwd, max_ttl_s=max_ttl_s)
        except PeerError as exc:
            if own:  # no one lists this node: said in the log and, as an error, by status
                self.own_refused = f"{exc.code}: {exc}"
                log.error("own capacity ad refused (%s): %s", exc.code, exc)
                return False
            # Over-rate ads are the originator's doing; anything else is the forwarder's, since
            # an honest forwarder validates before forwarding.
            blame = bytes(msg.from_id) if exc.code == "rate_limited" else fwd
            self._reject(exc.code, blame)
            return False
        if not own:
            self.metrics.ads_accepted.inc()
            self.metrics.gossip_latency.observe(max(0.0, now - entry.ad.issued_at_ms / 1000.0))
        else:
            self.own_refused = ""
        self.touch()
        return True

    def _held(self, raw: object, origin: bytes | None = None) -> bool:
        """Whether ``raw`` is a byte-identical copy of an ad the table holds (verified when it came),
        published by its own provider where ``origin`` is given: skipped without a signature check."""
        if not isinstance(raw, bytes):
            return False
        try:
            peer = ad_peer(raw)
        except PeerError:
            return False  # malformed: decoding it again says how, and whose fault it is
        held = self.table.get(peer)
        return held is not None and held.raw == raw and origin in (None, peer)

    def _reject(self, code: str, blame: bytes | None) -> None:
        self.rejected[code] = self.rejected.get(code, 0) + 1
        self.metrics.ads_rejected.labels(code).inc()
        if blame is not None:
            self.penalise(blame, code)

    # market sync ---------------------------------------------------------------------------
    async def handle_sync_v1(self, stream: Any, peer: bytes) -> None:
        """Serve ``/p2pnode/market/1``: the ads version 1 accepts (TTL at most 300 s)."""
        await self.handle_sync(stream, peer, max_ttl_s=V1_MAX_TTL_S)

    async def handle_sync(self, stream: Any, peer: bytes, max_ttl_s: float | None = None) -> None:
        """Serve ``/p2pnode/market/2``: every live ad this node holds, as signed, in one frame."""
        fs = FramedStream(stream, max_frame=MAX_SYNC_BYTES)
        raws: list[bytes] = []
        size, unproven = 16, 0
        if self.adversary is not None and self.adversary.mode == "poison":  # a poisoner: made-up providers first
            raws = await trio.to_thread.run_sync(self.adversary.poison, self.now())
            size += sum(len(r) + 8 for r in raws)
        for e in self._served(self.now()):
            if max_ttl_s is not None and e.ad.expires_at_ms - e.ad.issued_at_ms > max_ttl_s * 1000:
                continue
            if self.table.standing_of(e.ad.peer_id) is Standing.UNPROVEN:
                unproven += 1
                if unproven > SERVE_UNPROVEN:
                    break
            if len(raws) >= MAX_SYNC_ADS or size + len(e.raw) + 8 > MAX_SYNC_BYTES:
                break
            raws.append(e.raw)
            size += len(e.raw) + 8
        await fs.send(codec.encode(raws))
        await fs.close()

    def _served(self, now: float) -> list[TableEntry]:
        """The table in the order a sync serves it: what this node has seen answer or connect
        first, newest first within each (unproven ones last, and only ``SERVE_UNPROVEN`` of them)."""
        return sorted(self.table.entries(now), key=lambda e: -int(self.table.standing_of(e.ad.peer_id)))

    async def sync_from(self, peer: bytes) -> int:
        """Take ``peer``'s market: each ad checked as if it came by gossip (signature, freshness,
        rate, table limits). Ads that prove ``peer`` dishonest (forged, malformed) cost it a
        penalty; stale, expired or over-rate ones are what honest tables hold and cost nothing.
        Returns the ads accepted."""
        assert self.streams is not None
        stream = await self.streams.open(peer, MARKET_PROTOCOL)
        fs = FramedStream(stream, max_frame=MAX_SYNC_BYTES, frame_timeout=SYNC_TIMEOUT_S)
        try:
            with trio.fail_after(SYNC_TIMEOUT_S):
                frame = await fs.receive()
        finally:
            await fs.close()
        items = codec.decode(frame, max_size=MAX_SYNC_BYTES)
        if not isinstance(items, list) or len(items) > MAX_SYNC_ADS:
            raise CodecError(f"market sync: expected a list of at most {MAX_SYNC_ADS} ads")
        now, taken, new = self.now(), 0, 0
        for raw in items:
            try:
                if self._held(raw):  # most of a sync: syncs repeat, and gossip got there first
                    continue
                signed = decode_ad(raw)
                if signed.ad.peer_id == self.identity.peer_id:
                    continue
                fresh = signed.ad.peer_id not in self.table
                if fresh and new >= MAX_NEW_PER_SYNC:
                    self._reject("sync_new_cap", None)
                    continue
                self.table.offer(signed, now, origin=signed.ad.peer_id, via=peer)
                taken += 1
                new += fresh
            except PeerError as exc:
                if exc.code != "stale":  # already held, newer or the same: the normal case, not a refusal
                    self._reject(exc.code, None if exc.code in SYNC_BENIGN else peer)
        if taken:
            self.synced += taken
            self.touch()
        return taken

    async def sync_new_peers(self) -> None:
        """Sync once with every peer this node connects to (again after a reconnection), so a
        newcomer holds the market at once instead of waiting an ad interval for each provider."""
        done: set[bytes] = set()
        async with trio.open_nursery() as nursery:
            while True:
                now_connected = set(self.connected())
                for peer in now_connected - done:
                    if not self.is_banned(peer):
                        done.add(peer)
                        nursery.start_soon(self._sync_one, peer)
                done &= now_connected
                await trio.sleep(SYNC_POLL_S)

    async def _sync_one(self, peer: bytes) -> None:
        """Sync at the connection, and again a little later: nodes that start together connect
        before their tables fill, and the ads they missed would otherwise wait an ad interval."""
        for delay in SYNC_AGAIN_S:
            await trio.sleep(delay)
            if peer not in self.connected():
                return
            try:
                await self.sync_from(peer)
            except PeerError as exc:
                self.penalise(peer, exc.code)
                return
            except Exception as exc:  # noqa: BLE001 - a timeout, a reset, an old node without the protocol
                # Not the end of this peer's syncs: the first one meets a node that is busiest
                # (starting, syncing with every other newcomer), and the later ones are for that.
                log.debug("market sync with %s failed: %r", peer.hex()[:12], exc)

    async def drain(self, subscription: Any) -> None:
        """Empty a subscription's queue: ads are applied in the validator, which sees every message."""
        while True:
            await subscription.get()

    async def expire(self) -> None:
        while True:
            await trio.sleep(EXPIRE_INTERVAL_S)
            if self.table.expire(self.now()):
                self.touch()
            self.metrics.market_size.set(len(self.table.entries(self.now())))
            self.metrics.peers.set(self.peers())

    def touch(self) -> None:
        """Wake whoever waits on this node (``wait_until``): the table, or something it shows, changed."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait for ``predicate()`` to hold, re-checking at every table change; TooSlowError if not."""
        with trio.fail_after(timeout):
            while not predicate():
                with trio.move_on_after(0.5):  # also re-check on time-driven changes
                    await self._changed.wait()

    def view(self) -> list[dict[str, Any]]:
        now = self.now()
        return [_entry_json(e, now) for e in self.table.entries(now)]

    # gossip out --------------------------------------------------------------------------
    def build_ad(self, hardware: Hardware, now: float) -> CapacityAd:
        s = self.settings
        self._seq = max(self._seq + 1, int(now * 1000))  # survives restarts: wall-clock based
        # Offer what the executor can run, not what NVML sees: a GPU without torch or CuPy is NumPy,
        # and model jobs only where ONNX Runtime is.
        ex = self.executor
        available = ex.backends if ex is not None and ex.backends else ("numpy",)
        factor = self.adversary.speed_factor if self.adversary is not None else 1.0
        offers = []
        for w in s.workloads[:8] if not self.paused else ():  # paused: an ad that offers nothing
            usable = for_workload(w, available)
            if usable:
                offers.append(Offer(w, usable[0], s.price, "gflop"))
        if s.checker:  # re-runs for others' checks, preferred by requesters that check
            offers += [Offer(o.workload, o.backend, s.price, "check") for o in list(offers)]
        return CapacityAd(
            peer_id=self.identity.peer_id,
            seq=self._seq,
            issued_at_ms=int(now * 1000),
            expires_at_ms=int((now + pacing.ttl(self.paced_for, s.ad_interval, s.ad_ttl)) * 1000),
            cpu=hardware.cpu,
            gpus=tuple(replace(g, slots=ex.slots_per_device, busy=ex.busy.get(g.index, 0))
                       if ex is not None and g.index in ex.busy else g for g in hardware.gpus),
            offers=tuple(offers),
            addrs=tuple(a for a in self.addrs() if len(a) <= 128)[:8],
            speed=tuple(sorted((k, v * factor) for k, v in self.resources.speed.items()))[:16],
            load=min(1.0, ex.load) if ex is not None else 0.0,
        )

    def market_size(self) -> int:
        """Providers with a live ad, this one included: what paces the ads."""
        return max(1, self.table.market_size(self.now()))

    async def publish_ad(self) -> None:
        assert self.resources.hardware is not None
        self.paced_for = self.market_size()
        data = encode_ad(self.build_ad(self.resources.hardware, self.now()), self.identity.signing_key)
        await self.publish(CAPACITY_TOPIC, data)
        self.ads_published += 1
        self.metrics.ads_published.inc()

    async def advertise(self) -> None:
        if self.adversary is not None and self.adversary.flood_rate:
            await self._flood(self.adversary.flood_rate)
        last_publish = -math.inf
        last_shape: tuple[Any, ...] | None = None
        last_hw: Hardware | None = None
        connected_at: float | None = None  # since when this node has had a peer
        unheard = False  # the last ad went out before any peer could take it
        while True:
            now = trio.current_time()
            if self.peers() == 0:
                connected_at = None
            elif connected_at is None:
                connected_at = now
            settled = connected_at is not None and now - connected_at >= FIRST_PEER_GRACE_S
            # A new peer is not a change: it takes the market, this ad included, by market sync. (It
            # was one before sync existed; with the DHT's connections coming and going, every
            # node then republished every few seconds.) But an ad published before the node had
            # a peer reached nobody, and only direct neighbours sync it: it goes out once more.
            # What it offers and where: at once. Load and free memory: paced like the periodic ads,
            # since a requester learns them fresh from the bid.
            hw = self.resources.hardware
            shape = (tuple(self.addrs()), self.paused)
            market, since, base = self.market_size(), now - last_publish, self.settings.ad_interval
            due = since >= pacing.gap(market, self.paced_for, base)
            changed = (shape != last_shape and since >= MIN_CHANGE_INTERVAL_S) or \
                (_moved(hw, last_hw) and since >= pacing.change_gap(market))
            heard = unheard and settled and since >= MIN_CHANGE_INTERVAL_S
            if due or changed or heard:
                await self.publish_ad()
                last_publish, last_shape, last_hw, unheard = now, shape, hw, not settled
            await trio.sleep(PROBE_INTERVAL_S)
            self.resources.hardware = await self.read_hardware()

    async def read_hardware(self) -> Hardware:
        """A fresh hardware reading: off the trio thread where it calls NVML (which can block); the
        CPU's is a read of /proc, cheaper than a thread's hand-over."""
        if self.probe.uses_nvml:
            return await trio.to_thread.run_sync(self.probe.read)
        return self.probe.read()


    async def _flood(self, rate: float) -> None:
        """Publish at ``rate`` ads per second, for ever (adversary ``flood``)."""
        while True:
            try:
                await self.publish_ad()
            except Exception as exc:  # noqa: BLE001 - banned peers refuse us; keep trying, as a flooder would
                log.debug("flood: %s", exc)
            await trio.sleep(1.0 / rate)


def _moved(hw: Hardware | None, last: Hardware | None) -> bool:
    """A change worth an immediate ad: free GPU memory by a GiB, utilisation by 10 points, free RAM
    by 4 GiB, each against the last ad (so a value hovering at a boundary does not spam the topic)."""
    if hw is None or last is None:
        return hw is not last
    gib = 1 << 30
    if abs(hw.cpu.memory_free - last.cpu.memory_free) >= 4 * gib:
        return True
    before = {g.index: g for g in last.gpus}
    if set(before) != {g.index for g in hw.gpus}:
        return True
    return any(abs(g.memory_free - before[g.index].memory_free) >= gib
               or abs(g.utilization - before[g.index].utilization) >= 10 for g in hw.gpus)


def _entry_json(entry: TableEntry, now: float) -> dict[str, Any]:
    out = entry.ad.to_json()
    out["age_s"] = round(now - entry.ad.issued_at_ms / 1000.0, 3)
    out["expires_in_s"] = round(entry.expires_at - now, 3)
    return out
