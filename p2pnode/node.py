"""A running p2pnode: the I/O shell around the pure core.

:class:`Node` composes the identity, the libp2p host (Noise, Yamux, TCP), gossipsub with the
capacity-ad validator, discovery, the capacity table, the advertiser, the control API and
metrics, all inside one trio nursery whose lifetime is :meth:`Node.run`. Cancelling that call stops
everything; nothing outlives it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import trio

from p2pnode import __version__
from p2pnode.adversary import Adversary
from p2pnode.blobs import BLOB_PROTOCOL, BlobService
from p2pnode.config import MIN_AD_INTERVAL_S, Config
from p2pnode.control import server as control_server
from p2pnode.errors import ControlError, PeerError, unwrap_group
from p2pnode.exec.executor import Executor
from p2pnode.identity import Identity, load_or_create
from p2pnode.jobs import JOB_PROTOCOL, JobService
from p2pnode.market.capacity_table import CapacityTable, TableEntry, TableLimits
from p2pnode.net import workarounds
from p2pnode.net.discovery import PeerKeeper
from p2pnode.net.gossip import CAPACITY_TOPIC, build_pubsub
from p2pnode.net.guard import PeerGate, ban_gate, guard_stream_handler, guard_validator
from p2pnode.net.host import build_host, parse_multiaddr
from p2pnode.protocol.penalties import PeerPenalties
from p2pnode.telemetry.calibrate import calibrate
from p2pnode.telemetry.metrics import NodeMetrics
from p2pnode.telemetry.probe import Hardware, HardwareProbe
from p2pnode.trust import REPORTS_TOPIC, TrustService
from p2pnode.wire.capacity_ad import CapacityAd, Offer, decode_ad, encode_ad
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.node")


# An ad on change waits at least this long after the previous one, so that with
# ad_interval >= MIN_AD_INTERVAL_S a node never publishes faster than peers accept (0.5/s).
MIN_CHANGE_INTERVAL_S = MIN_AD_INTERVAL_S
PROBE_INTERVAL_S = 1.0


class Node:
    def __init__(
        self,
        config: Config,
        *,
        identity: Identity | None = None,
        nvml: ModuleType | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._identity = identity
        self._clock = clock
        self.probe = HardwareProbe(nvml, use_gpu=config.use_gpu)
        self.table = CapacityTable(TableLimits(max_peers=config.max_peers))
        self.penalties = PeerPenalties()
        self.metrics = NodeMetrics()
        self.hardware: Hardware | None = None
        self.speed: dict[str, float] = {}
        self.started_at = 0.0
        self.host: Any = None
        self.pubsub: Any = None
        self.keeper: PeerKeeper | None = None
        self.rejected: dict[str, int] = {}
        self.ads_published = 0
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._seq = 0
        self.ready = trio.Event()
        self.executor: Executor | None = None
        self.jobs = JobService(self)
        self.blobs = BlobService(self)
        self.trust = TrustService(self)
        self.adversary: Adversary | None = None

    # identity ----------------------------------------------------------------------------
    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity, created = load_or_create(self.config.data_dir)
            if created:
                log.warning("created new identity %s", self._identity.peer_id_b58)
        return self._identity

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id_b58

    def addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()] if self.host is not None else []

    # lifecycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started(self)`` once listening and subscribed."""
        cfg = self.config
        listen = [parse_multiaddr(a) for a in cfg.listen]
        bootstrap = [parse_multiaddr(a, need_peer_id=True) for a in cfg.bootstrap]
        for addr in listen:
            workarounds.check_listen_port_free(addr)
        identity = self.identity
        if cfg.adversary:
            self.adversary = Adversary.parse(cfg.adversary, seed=int.from_bytes(identity.peer_id[-8:], "big"))
            log.warning("running as an adversary: %s", cfg.adversary)
        listener = await control_server.bind_control_socket(cfg.control_socket)
        try:
            await trio.to_thread.run_sync(self.trust.open)
            if cfg.metrics:
                self.metrics.serve(cfg.metrics)
            self.hardware = await trio.to_thread.run_sync(self.probe.read)
            if cfg.provide:
                self.speed = await trio.to_thread.run_sync(
                    lambda: calibrate(cfg.calibrate_seconds, use_gpu=cfg.use_gpu)
                )
            if cfg.provide:
                async with Executor(slots=cfg.slots, gpu_memory=self._gpu_free) as self.executor:
                    await self._run_network(identity, listen, bootstrap, listener, task_status)
            else:
                await self._run_network(identity, listen, bootstrap, listener, task_status)
        finally:
            self.trust.close()
            self.metrics.close()
            self.probe.close()
            with trio.CancelScope(shield=True):
                await listener.aclose()
            try:
                cfg.control_socket.unlink()
            except FileNotFoundError:
                pass

    async def _run_network(
        self, identity: Identity, listen: list[Any], bootstrap: list[Any],
        listener: trio.SocketListener, task_status: Any,
    ) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        self.host = build_host(identity, listen)
        self.pubsub, router = build_pubsub(self.host, heartbeat=self.config.heartbeat)
        self.keeper = PeerKeeper(self.host, bootstrap)
        async with self.host.run(listen), trio.open_nursery() as nursery:
            self._nursery = nursery
            async with background_trio_service(self.pubsub), background_trio_service(router):
                await self.pubsub.wait_until_ready()
                gate = PeerGate(is_banned=lambda peer: self.penalties.is_banned(peer, self._clock()),
                                penalise=self.penalise)
                self.host.get_network().register_notifee(
                    ban_gate(gate.is_banned, lambda peer: nursery.start_soon(self._ban, peer)))
                self.pubsub.set_topic_validator(CAPACITY_TOPIC, guard_validator("capacity", self._validate), False)
                self.pubsub.set_topic_validator(REPORTS_TOPIC, guard_validator("reports", self.trust.validate_report),
                                                False)
                self.host.set_stream_handler(JOB_PROTOCOL, guard_stream_handler(
                    "job", self.jobs.handle_stream, gate, self.jobs.limits))
                self.host.set_stream_handler(BLOB_PROTOCOL, guard_stream_handler(
                    "blob", self.blobs.handle_stream, gate, self.blobs.limits))
                subscription = await self.pubsub.subscribe(CAPACITY_TOPIC)
                reports = await self.pubsub.subscribe(REPORTS_TOPIC)
                self.started_at = self._clock()
                nursery.start_soon(self._drain, reports)
                nursery.start_soon(self.trust.run)
                nursery.start_soon(control_server.serve, listener, self._control)
                nursery.start_soon(self._drain, subscription)
                nursery.start_soon(self._expire_loop)
                nursery.start_soon(self.keeper.run, self.config.mdns)
                if self.config.provide:
                    nursery.start_soon(self._advertise_loop)
                self.ready.set()
                task_status.started(self)
                await trio.sleep_forever()

    # gossip in ---------------------------------------------------------------------------
    def _validate(self, forwarder: Any, msg: Any) -> bool:
        """GossipSub validator: accept into the table or reject (not forwarded) and penalise."""
        now = self._clock()
        fwd = forwarder.to_bytes()
        own = fwd == self.identity.peer_id
        if not own:
            self.metrics.ads_seen.inc()
            if self.penalties.is_banned(fwd, now):
                self._reject("banned", None, now)
                return False
        try:
            signed = decode_ad(msg.data)
            entry = self.table.offer(signed, now, origin=bytes(msg.from_id))
        except PeerError as exc:
            if own:
                log.error("own capacity ad refused (%s): %s", exc.code, exc)
                return False
            # Over-rate ads are the originator's doing; anything else is the forwarder's, since
            # an honest forwarder validates before forwarding.
            blame = bytes(msg.from_id) if exc.code == "rate_limited" else fwd
            self._reject(exc.code, blame, now)
            return False
        if not own:
            self.metrics.ads_accepted.inc()
            self.metrics.gossip_latency.observe(max(0.0, now - entry.ad.issued_at_ms / 1000.0))
        self._touch()
        return True

    def _reject(self, code: str, blame: bytes | None, now: float) -> None:
        self.rejected[code] = self.rejected.get(code, 0) + 1
        self.metrics.ads_rejected.labels(code).inc()
        if blame is not None:
            self.penalise(blame, code, now)

    def penalise(self, blame: bytes, code: str, now: float | None = None) -> None:
        """Count an offence against a peer; ban and disconnect it past the threshold."""
        now = self._clock() if now is None else now
        self.metrics.penalties.labels(code).inc()
        self.trust.penalty(blame, code, now)
        if self.penalties.record(blame, code, now):
            self.metrics.bans.inc()
            log.warning("banning peer %s for misbehaviour", to_base58(blame))
            if self._nursery is not None:
                self._nursery.start_soon(self._ban, blame)

    async def _ban(self, peer: bytes) -> None:
        from libp2p.peer.id import ID

        pid = ID(peer)
        self.pubsub.add_to_blacklist(pid)
        try:
            await self.host.disconnect(pid)
        except Exception as exc:  # noqa: BLE001 - already gone is fine
            log.debug("disconnect %s: %s", pid, exc)

    async def _drain(self, subscription: Any) -> None:
        # Ads are applied in the validator (which sees every message); the subscription queue
        # only needs emptying.
        while True:
            await subscription.get()

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(0.5)
            now = self._clock()
            if self.table.expire(now):
                self._touch()
            self.metrics.market_size.set(len(self.table.entries(now)))
            self.metrics.peers.set(len(self.host.get_connected_peers()))
            await self._enforce_bans(now)

    async def _enforce_bans(self, now: float) -> None:
        """Lift bans whose time is up; drop any banned peer that dialed back in."""
        for pid in list(self.pubsub.blacklisted_peers):
            if not self.penalties.is_banned(pid.to_bytes(), now):
                self.pubsub.remove_from_blacklist(pid)
        for pid in self.host.get_connected_peers():
            if self.penalties.is_banned(pid.to_bytes(), now):
                await self._ban(pid.to_bytes())

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait for ``predicate()`` to hold, re-checking at every table change; TooSlowError if not."""
        with trio.fail_after(timeout):
            while not predicate():
                with trio.move_on_after(0.5):  # also re-check on time-driven changes
                    await self._changed.wait()

    # gossip out --------------------------------------------------------------------------
    def build_ad(self, hardware: Hardware, now: float) -> CapacityAd:
        cfg = self.config
        self._seq = max(self._seq + 1, int(now * 1000))  # survives restarts: wall-clock based
        # Offer what the executor can run, not what NVML sees: a GPU without torch or CuPy is NumPy.
        backend = self.executor.backends[0] if self.executor is not None and self.executor.backends else "numpy"
        factor = self.adversary.speed_factor if self.adversary is not None else 1.0
        offers = [Offer(w, backend, cfg.price, "gflop") for w in cfg.workloads[:8]]
        if cfg.checker:  # re-runs for others' checks, preferred by requesters that check
            offers += [Offer(w, backend, cfg.price, "check") for w in cfg.workloads[:8]]
        return CapacityAd(
            peer_id=self.identity.peer_id,
            seq=self._seq,
            issued_at_ms=int(now * 1000),
            expires_at_ms=int((now + cfg.ad_ttl) * 1000),
            cpu=hardware.cpu,
            gpus=hardware.gpus,
            offers=tuple(offers),
            addrs=tuple(a for a in self.addrs() if len(a) <= 128)[:8],
            speed=tuple(sorted((k, v * factor) for k, v in self.speed.items()))[:16],
            load=min(1.0, self.executor.load) if self.executor is not None else 0.0,
        )

    async def publish_ad(self) -> None:
        assert self.hardware is not None
        data = encode_ad(self.build_ad(self.hardware, self._clock()), self.identity.signing_key)
        await self.pubsub.publish(CAPACITY_TOPIC, data)
        self.ads_published += 1
        self.metrics.ads_published.inc()

    async def _advertise_loop(self) -> None:
        last_publish = -math.inf
        last_shape = None
        while True:
            now = trio.current_time()
            # a new peer is a change too: it learns the market from the ads that follow
            shape = (_shape(self.hardware) if self.hardware else None, len(self.host.get_connected_peers()))
            due = now - last_publish >= self.config.ad_interval
            changed = shape != last_shape and now - last_publish >= MIN_CHANGE_INTERVAL_S
            if due or changed:
                await self.publish_ad()
                last_publish, last_shape = now, shape
            await trio.sleep(PROBE_INTERVAL_S)
            self.hardware = await trio.to_thread.run_sync(self.probe.read)

    def _gpu_free(self) -> int | None:
        """Free memory of the first GPU, from the latest NVML read (refreshed every second)."""
        if self.hardware is None or not self.hardware.gpus:
            return None
        return self.hardware.gpus[0].memory_free

    # views (control API, CLI) ------------------------------------------------------------
    def market_view(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [_entry_json(e, now) for e in self.table.entries(now)]

    def peers_view(self) -> list[dict[str, Any]]:
        now = self._clock()
        out = []
        connections = self.host.get_network().connections
        for pid in self.host.get_connected_peers():
            addrs: list[str] = []
            conns = connections.get(pid)
            for conn in conns if isinstance(conns, list) else [conns] if conns else []:
                try:
                    addrs += [str(a) for a in conn.get_transport_addresses()]
                except Exception:  # noqa: BLE001
                    pass
            out.append({
                "peer": pid.to_base58(),
                "addrs": addrs,
                "provider": pid.to_bytes() in self.table,
                "penalty": round(self.penalties.score(pid.to_bytes(), now), 2),
            })
        return sorted(out, key=lambda p: p["peer"])

    def status_view(self) -> dict[str, Any]:
        problems: list[str] = []
        errors: list[str] = []
        if not self.addrs():
            errors.append("not listening on any address")
        if not self.host.get_connected_peers():
            problems.append("no peers connected")
        if self.keeper is not None:
            for addr, err in sorted(self.keeper.unreachable.items()):
                problems.append(f"bootstrap peer unreachable: {addr} ({err})")
        if self.hardware is not None and not self.hardware.gpus:
            problems.extend(self.hardware.problems or ("no GPU",))
        banned = self.penalties.banned(self._clock())
        if banned:
            problems.append(f"{len(banned)} peer(s) banned for misbehaviour")
        state = "error" if errors else "issues" if problems else "healthy"
        return {
            "state": state,
            "reasons": errors + problems,
            "peer": self.peer_id,
            "version": __version__,
            "uptime_s": round(self._clock() - self.started_at, 1),
            "addrs": self.addrs(),
            "peers": len(self.host.get_connected_peers()),
            "market": len(self.table.entries(self._clock())),
            "providing": self.config.provide,
            "ads_published": self.ads_published,
            "ads_rejected": dict(self.rejected),
            "gpus": [g.name for g in self.hardware.gpus] if self.hardware else [],
            "speed": self.speed,
            "metrics": self.metrics.address,
            "data_dir": str(self.config.data_dir),
            "ledger": {"entries": self.trust.ledger.count if self.trust.ledger else 0,
                       "repaired": self.trust.ledger.repaired if self.trust.ledger else 0},
            "checker": self.config.checker,
            "executor": ({"running": self.executor.running, "completed": self.executor.completed,
                          "failed": dict(self.executor.failed)} if self.executor is not None else None),
            "streams": {"job": self.jobs.limits.open(), "blob": self.blobs.limits.open()},
        }

    async def _control(self, request: dict[str, Any], emit: Any = None) -> Any:
        cmd = request["cmd"]
        if cmd == "id":
            return {"peer": self.peer_id, "addrs": self.addrs()}
        if cmd == "peers":
            return self.peers_view()
        if cmd == "market":
            return self.market_view()
        if cmd == "status":
            return self.status_view()
        if cmd == "jobs":
            return [r.to_json() for r in reversed(self.jobs.records)]
        if cmd == "reputation":
            return self.trust.table()
        if cmd == "wait":
            return await self._wait(request)
        if cmd == "submit":
            return await self._submit(request, emit)
        raise ControlError(f"unknown command {cmd!r}")

    async def _wait(self, request: dict[str, Any]) -> Any:
        """Block until ``peers`` or ``market`` reaches ``count`` (scripts and tests wait on the node's
        own change events instead of polling it)."""
        what, count = request.get("what"), request.get("count")
        timeout = request.get("timeout_s", 30)
        views = {"peers": lambda: len(self.host.get_connected_peers()),
                 "market": lambda: len(self.table.entries(self._clock()))}
        if what not in views or not isinstance(count, int) or not isinstance(timeout, (int, float)):
            raise ControlError('wait needs {"what": "peers"|"market", "count": N, "timeout": S}')
        try:
            await self.wait_until(lambda: views[what]() >= count, timeout=min(float(timeout), 300.0))
        except trio.TooSlowError:
            raise ControlError(f"{what} stayed below {count} for {timeout} s") from None
        return {what: views[what]()}

    async def _submit(self, request: dict[str, Any], emit: Any) -> Any:
        send, recv = trio.open_memory_channel[dict[str, Any]](256)

        async def forward() -> None:
            async for item in recv:
                await emit(item)

        try:
            params = dict(request.get("params") or {})
            inputs = _load_inputs(request.get("input_files") or {})
            args: dict[str, Any] = dict(max_price=int(request["max_price"]), deadline_s=float(request.get("deadline", 60)),
                        k=int(request.get("k", 3)), backend=str(request.get("backend", "")),
                        verify=str(request.get("verify", "auto")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(f"bad submit request: {exc}") from exc
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                try:
                    rec = await self.jobs.submit(str(request.get("workload")), params, inputs=inputs,
                                                 on_event=lambda e: _send_nowait(send, e), **args)
                finally:
                    send.close()
        except BaseExceptionGroup as group:
            raise unwrap_group(group) from None
        return rec.to_json()


def _shape(hw: Hardware) -> tuple[Any, ...]:
    """What counts as a change worth an immediate ad: coarse, so noise does not spam the topic."""
    gib = 1 << 30
    return (
        tuple((g.index, g.memory_free // gib, g.utilization // 10) for g in hw.gpus),
        hw.cpu.memory_free // (4 * gib),
    )


def _entry_json(entry: TableEntry, now: float) -> dict[str, Any]:
    out = entry.ad.to_json()
    out["age_s"] = round(now - entry.ad.issued_at_ms / 1000.0, 3)
    out["expires_in_s"] = round(entry.expires_at - now, 3)
    return out


def _send_nowait(send: trio.MemorySendChannel[dict[str, Any]], item: dict[str, Any]) -> None:
    try:
        send.send_nowait(item)
    except (trio.WouldBlock, trio.ClosedResourceError):
        pass  # a slow CLI misses a progress line, never the result


def _load_inputs(files: dict[str, str]) -> dict[str, Any] | None:
    """Input arrays named on the command line: .npy files (no pickles) readable by this node."""
    if not files:
        return None
    import numpy as np

    out = {}
    for name, path in files.items():
        try:
            out[str(name)] = np.load(str(path), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ControlError(f"input {name}: cannot read {path}: {exc}") from exc
    return out
