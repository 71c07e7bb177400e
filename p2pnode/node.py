"""A running p2pnode: composes the services around the libp2p host, and runs them.

:class:`Node` builds every service from the narrow collaborators it needs (see
:mod:`p2pnode.services`), then :meth:`Node.run` starts the host (Noise, Yamux, TCP), gossipsub with
the validators, discovery, the stream handlers behind the guard, the control API and metrics, all
inside one trio nursery whose lifetime is that call. Cancelling it stops everything; nothing
outlives it. No logic lives here beyond wiring: it is in the services and the pure core.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from types import ModuleType
from typing import Any

import trio

from p2pnode.adversary import Adversary
from p2pnode.config import DEFAULT_METRICS, DEFAULT_UI, Config
from p2pnode.config import change as change_config
from p2pnode.control import server as control_server
from p2pnode.control.views import ControlViews
from p2pnode.errors import ConfigError
from p2pnode.exec.executor import Executor
from p2pnode.files import check_data_dir
from p2pnode.identity import Identity, load_or_create
from p2pnode.ledger.store import FILE_NAME
from p2pnode.market.bidding import Capacity
from p2pnode.market.capacity_table import CapacityTable, TableLimits
from p2pnode.net import impair, workarounds
from p2pnode.net.adapters import HostPeers, HostStreams
from p2pnode.net.bulk import BulkServer
from p2pnode.net.dht import Discovery
from p2pnode.net.discovery import PeerKeeper
from p2pnode.net.gossip import build_pubsub
from p2pnode.net.guard import PeerGate, ban_gate, guard_stream_handler, guard_validator
from p2pnode.net.host import advertised, build_host, parse_multiaddr
from p2pnode.net.network import check_dnsaddr, is_dnsaddr, network_entries
from p2pnode.net.perf import PERF_PROTOCOL, PerfServer
from p2pnode.net.relay import Relaying, is_circuit
from p2pnode.net.upnp import PortMapping, tcp_ports
from p2pnode.protocol.penalties import PeerPenalties
from p2pnode.services.blobs import BlobService
from p2pnode.services.jobs import JobService
from p2pnode.services.mapper import MapService
from p2pnode.services.market import AdSettings, MarketService, Resources, capacity_from
from p2pnode.services.model_prep import ModelPrep
from p2pnode.services.peers import PeerPolicy
from p2pnode.services.provider import JobProvider
from p2pnode.services.records import JobRecords
from p2pnode.services.requester import JobRequester
from p2pnode.services.trainer import TrainService
from p2pnode.services.trust import TrustService, reputation_for
from p2pnode.sharing import Schedule
from p2pnode.telemetry.calibrate import calibrate, read_calibration_file
from p2pnode.telemetry.metrics import NodeMetrics
from p2pnode.telemetry.probe import Hardware, HardwareProbe
from p2pnode.verify.sampling import SamplingPolicy
from p2pnode.wire.names import (
    BLOB_PROTOCOL,
    CAPACITY_TOPIC,
    CAPACITY_TOPIC_V1,
    JOB_PROTOCOL,
    MARKET_PROTOCOL,
    MARKET_PROTOCOL_V1,
    REPORTS_TOPIC,
)

log = logging.getLogger("p2pnode.node")
SCHEDULE_CHECK_S = 20.0  # how often the schedule is looked at (a window starts on a minute)
ADDRS_FRESH_S = 5.0  # how long a reading of this node's own direct addresses is kept


class Node:
    def __init__(self, config: Config, *, identity: Identity | None = None, nvml: ModuleType | None = None,
                 clock: Callable[[], float] = time.time, executor: Executor | None = None) -> None:
        """Check the addresses (and that the listen ports are free) and the data dir's entries before
        touching it, then load or create the identity and build every service. ``executor``: one shared with
        other nodes of this process (its owner starts and stops it), instead of the node's own."""
        self.config = config
        self._direct: tuple[float, list[str]] = (0.0, [])  # (when read, this node's direct addresses)
        self._listen = [parse_multiaddr(a) for a in config.listen]
        entries = list(dict.fromkeys([*config.bootstrap, *(network_entries(config.network, config.data_dir)
                                                            if config.network else [])]))
        self._bootstrap = [parse_multiaddr(a, need_peer_id=True) for a in entries if not is_dnsaddr(a)]
        self._dnsaddrs = [check_dnsaddr(a) for a in entries if is_dnsaddr(a)]
        for a in config.announce:
            if parse_multiaddr(a) and a.startswith(("/ip4/0.0.0.0/", "/ip6/::/")):
                raise ConfigError(f"announce {a!r}: an unspecified address cannot be dialed")
        for addr in self._listen:
            workarounds.check_listen_port_free(addr)
        check_data_dir(config.data_dir)  # a directory named ledger.sqlite, a FIFO, ...: one clear line
        self.identity = identity or _load_identity(config)
        self._clock = clock
        cfg, me = config, self.identity.peer_id
        self.schedule = Schedule.parse(cfg.schedule)
        self.probe = HardwareProbe(nvml, use_gpu=cfg.use_gpu, gpus=cfg.gpu_indexes, max_gpu_mem=cfg.gpu_memory_cap,
                                   cpu_threads=cfg.cpu_threads)
        self.resources = Resources()
        self.penalties = PeerPenalties()
        self.metrics = NodeMetrics()
        self.adversary = Adversary.parse(cfg.adversary, seed=int.from_bytes(me[-8:], "big"))
        self._own_executor = executor is None
        self.executor = (executor or self._own_executor_for(cfg)) if cfg.provide else None
        self.host: Any = None
        self.relaying: Relaying | None = None
        self.upnp: PortMapping | None = None  # the router's forwarded port, where it offers UPnP
        self.discovery: Discovery | None = None
        self.pubsub: Any = None
        self.keeper: PeerKeeper | None = None
        self.started_at = 0.0
        self.ready = trio.Event()
        self._streams = HostStreams()
        self._network = HostPeers()

        self.trust = TrustService(
            me=me, key=self.identity.signing_key, ledger_path=cfg.data_dir / FILE_NAME,
            reputation=reputation_for(cfg, me), policy=SamplingPolicy(p_min=cfg.check_rate_min),
            now=self.now, penalise=self.penalise, is_banned=self.is_banned, publish=self._publish)
        # a provider this node has a ledger history with has a place in its market before strangers
        self.table = CapacityTable(TableLimits(max_peers=cfg.max_peers), known=self.trust.worked_with)
        self.metrics.watch(credits=lambda: (self.trust.credits.earned, self.trust.credits.spent),
                           gpus=lambda: self.resources.hardware.gpus if self.resources.hardware else ())
        self.peers = PeerPolicy(penalties=self.penalties, now=self.now, metrics=self.metrics,
                                remember=self.trust.penalty, network=self._network)
        self.bulk = BulkServer(me, now=self.now) if cfg.bulk else None
        self.perf = PerfServer() if cfg.perf else None
        self.blobs = BlobService(self._streams, self.penalise, is_banned=self.is_banned, bulk_server=self.bulk)
        self.market = MarketService(
            identity=self.identity, now=self.now, table=self.table, metrics=self.metrics,
            is_banned=self.is_banned, penalise=self.penalise, publish=self._publish,
            settings=AdSettings(cfg.price, cfg.workloads, cfg.checker, cfg.ad_interval, cfg.ad_ttl),
            resources=self.resources, probe=self.probe, executor=self.executor, adversary=self.adversary,
            addrs=self.addrs, peers=lambda: len(self._network.connected()),
            connected=self._network.connected, streams=self._streams)
        records = JobRecords()
        self.jobs = JobService(
            JobProvider(identity=self.identity, now=self.now, executor=self.executor, capacity=self._capacity,
                        blobs=self.blobs, recorder=self.trust, penalise=self.penalise, records=records,
                        adversary=self.adversary,
                        discount=lambda peer: self.trust.credits.discount(peer, cfg.reciprocity),
                        on_end=self.metrics.job_ended),
            JobRequester(identity=self.identity, now=self.now, table=self.table, is_banned=self.is_banned,
                         judge=self.trust, blobs=self.blobs, streams=self._streams, penalise=self.penalise,
                         records=records, calibrate_providers=cfg.calibrate_providers,
                         spent=lambda: self.trust.credits.spent, budget=cfg.budget, on_end=self.metrics.job_ended),
            records)
        self.model_prep = ModelPrep(self.executor, lambda: Executor(slots=1, cpu_threads=cfg.cpu_threads))
        self.maps = MapService(submit=self.jobs.submit, candidates=self.jobs.candidates, now=self.now,
                               state_dir=cfg.data_dir / "maps", on_saved=self.market.touch, records=records)
        self.trainer = TrainService(submit=self.jobs.submit, candidates=self.jobs.candidates, now=self.now,
                                    state_dir=cfg.data_dir / "train", records=records,
                                    on_saved=self.market.touch)
        self.views = ControlViews(self)
        self.ui_address = ""  # host:port of the dashboard, once it listens
        self._ui_token = ""
        if self.adversary is not None:
            log.warning("running as an adversary: %s", cfg.adversary)

    def _own_executor_for(self, cfg: Config) -> Executor:
        """Job slots on each GPU offered (the probe reads which are there), or on the CPU."""
        self.resources.hardware = self.probe.read()  # the first reading, kept for the start
        devices = tuple(g.index for g in self.resources.hardware.gpus) if cfg.use_gpu else ()
        return Executor(slots=cfg.slots, gpu_memory=self.resources.gpu_free, devices=devices,
                        max_jobs=cfg.max_jobs, cpu_threads=cfg.cpu_threads)

    # the node's own small surface ----------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id_b58

    def addrs(self) -> list[str]:
        """Where others can dial this node: through its relays when it is private, then
        ``announce``, or the listen addresses with wildcards expanded (never 0.0.0.0 or ::)."""
        if self.host is None:
            return []
        relaying = self.relaying
        if relaying is not None and relaying.reachability == "private":  # its own addresses mean nothing outside
            return relaying.circuit_addrs() + (self.direct_addrs() if self.config.announce else [])
        return self.direct_addrs()

    def direct_addrs(self) -> list[str]:
        """``announce``, or the listen addresses with wildcards expanded; never a relayed one.
        Kept for ``ADDRS_FRESH_S``: the advertiser looks every second, and reading the listeners'
        sockets and the interfaces is most of what an idle node does."""
        if self.host is None:
            return []
        at, addrs = self._direct
        now = time.monotonic()
        if not addrs or now - at >= ADDRS_FRESH_S:
            forwarded = self.upnp.addrs() if self.upnp is not None and not self.config.announce else []
            addrs = advertised(forwarded + [str(a) for a in self.host.get_addrs() if not is_circuit(str(a))],
                               self.config.announce, self.peer_id)
            self._direct = (now, addrs)
        return list(addrs)

    def _addrs_changed(self) -> None:
        self._direct = (0.0, [])
        if self.relaying is not None:
            self.relaying.recheck()

    def penalise(self, peer: bytes, code: str, now: float | None = None) -> None:
        self.peers.penalise(peer, code, now)

    def is_banned(self, peer: bytes) -> bool:
        return self.peers.is_banned(peer)

    @property
    def hardware(self) -> Hardware | None:
        return self.resources.hardware

    @property
    def speed(self) -> dict[str, float]:
        return self.resources.speed

    @property
    def rejected(self) -> dict[str, int]:
        return self.market.rejected

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        await self.market.wait_until(predicate, timeout)

    async def publish_ad(self) -> None:
        await self.market.publish_ad()

    def market_view(self) -> list[dict[str, Any]]:
        return self.market.view()

    def peers_view(self) -> list[dict[str, Any]]:
        return self.views.peers()

    def status_view(self) -> dict[str, Any]:
        return self.views.status()

    def _capacity(self) -> Capacity:
        cfg = self.config
        return capacity_from(self.resources, self.executor, cfg.price, cfg.workloads, cfg.provide,
                             paused=self.market.paused)

    async def share(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change what this node shares while it runs (``config.RUNTIME_KEYS``: price, workloads,
        schedule, max_gpu_mem, checker), checked as at load; the next ad, sent now, says it. The
        change lasts until the node stops: ``config.toml`` keeps settings across restarts."""
        cfg = change_config(self.config, changes)
        self.config = cfg
        self.schedule = Schedule.parse(cfg.schedule)
        self.probe.max_gpu_mem = cfg.gpu_memory_cap
        self.market.settings = AdSettings(cfg.price, cfg.workloads, cfg.checker, cfg.ad_interval, cfg.ad_ttl)
        before = self.market.paused
        self.market.off_schedule = not self.schedule.is_open(self.local_time())
        if changes:
            log.info("sharing changed: %s", ", ".join(f"{k}={v!r}" for k, v in sorted(changes.items())))
        if self.config.provide and self.resources.hardware is not None and self.pubsub is not None:
            self.resources.hardware = await self.market.read_hardware()
            await self.market.publish_ad()
        elif self.market.paused != before:
            await self._announce_pause(before)
        return self.sharing()

    def sharing(self) -> dict[str, Any]:
        cfg = self.config
        return {"price": cfg.price, "workloads": list(cfg.workloads), "schedule": list(cfg.schedule),
                "max_gpu_mem": cfg.max_gpu_mem, "checker": cfg.checker, "paused": self.market.paused,
                "operator_paused": self.market.operator_paused, "off_schedule": self.market.off_schedule,
                "providing": cfg.provide}

    async def pause(self, paused: bool) -> dict[str, Any]:
        """Stop (or resume) bidding: running jobs finish; the next ad offers nothing (or all again).
        Resuming outside the schedule leaves the node paused until its next window."""
        before = self.market.paused
        self.market.operator_paused = paused
        await self._announce_pause(before)
        return {"paused": self.market.paused, "operator": paused, "off_schedule": self.market.off_schedule,
                "running": self.executor.running if self.executor is not None else 0}

    def local_time(self) -> datetime:
        """The node's clock in the machine's local time zone (the schedule's time)."""
        return datetime.fromtimestamp(self.now())

    async def follow_schedule(self) -> None:
        """Pause outside the operator's time-of-day windows, resume inside them."""
        while True:
            before = self.market.paused
            self.market.off_schedule = not self.schedule.is_open(self.local_time())
            await self._announce_pause(before)
            await trio.sleep(SCHEDULE_CHECK_S)

    async def _announce_pause(self, before: bool) -> None:
        if self.market.paused != before and self.config.provide and self.resources.hardware is not None:
            log.info("%s", "paused: no new jobs" if self.market.paused else "taking jobs again")
            await self.market.publish_ad()

    async def _publish(self, topic: str, data: bytes) -> None:
        if self.pubsub is None:
            raise RuntimeError("the node is not running")
        await self.pubsub.publish(topic, data)

    # lifecycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started(self)`` once listening and subscribed."""
        cfg = self.config
        listen, bootstrap = self._listen, self._bootstrap
        for addr in listen:  # again: time may have passed since __init__
            workarounds.check_listen_port_free(addr)
        listener = await control_server.bind_control_socket(cfg.control_socket)
        ui_sock = None
        try:
            await trio.to_thread.run_sync(self.trust.open)
            if cfg.metrics:
                self.metrics.serve(cfg.metrics, any_port_if_taken=cfg.metrics == DEFAULT_METRICS)
            if cfg.ui:
                from p2pnode.web import server as web_server
                from p2pnode.web.guard import load_or_create_token

                self._ui_token = load_or_create_token(cfg.data_dir)  # a bad token file: one line, before the network
                ui_sock = web_server.bind(cfg.ui, any_port_if_taken=cfg.ui == DEFAULT_UI)
                self.ui_address = web_server.address_of(ui_sock)
            if self.resources.hardware is None:  # not read yet (a node of a shared executor)
                self.resources.hardware = await trio.to_thread.run_sync(self.probe.read)
            if cfg.impair:
                impair.set_current(impair.Impairment.parse(cfg.impair))
            if cfg.provide and cfg.calibration_file:
                self.resources.speed = read_calibration_file(cfg.calibration_file)
            async with self.executor if self.executor is not None and self._own_executor \
                    else contextlib.nullcontext():
                if cfg.provide and not cfg.calibration_file:
                    # measured where jobs run: in a worker, under the same GPU and thread limits
                    self.resources.speed = await self.executor.calibrate(cfg.calibrate_seconds, cfg.use_gpu) \
                        if self.executor is not None else await trio.to_thread.run_sync(
                            lambda: calibrate(cfg.calibrate_seconds, use_gpu=cfg.use_gpu))
                await self._run_network(listen, bootstrap, listener, task_status, ui_sock)
        finally:
            if ui_sock is not None:
                ui_sock.close()
            self.trust.close()
            self.metrics.close()
            self.probe.close()
            with trio.CancelScope(shield=True):
                await self.model_prep.aclose()
                await listener.aclose()
            try:
                cfg.control_socket.unlink()
            except FileNotFoundError:
                pass

    async def _serve_dashboard(self, sock: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The web dashboard (:mod:`p2pnode.web.dashboard`) on ``sock``, with this node's log lines."""
        from p2pnode.telemetry.logs import QUIET, LibraryLevels
        from p2pnode.web import server as web_server
        from p2pnode.web.dashboard import Dashboard
        from p2pnode.web.live import LogRing

        ring = LogRing()
        ring.addFilter(LibraryLevels(QUIET))  # the same lines the node's own log shows
        dashboard = Dashboard(self.views.handle, ring, self._ui_token, public=self.config.ui_public)
        host, port = sock.getsockname()[:2]
        dashboard.guard.bind(f"[{host}]" if ":" in host else host, port)
        logging.getLogger().addHandler(ring)
        try:
            await web_server.serve(dashboard.guard, sock, task_status=task_status)
        finally:
            logging.getLogger().removeHandler(ring)

    async def _run_network(self, listen: list[Any], bootstrap: list[Any], listener: trio.SocketListener,
                           task_status: Any, ui_sock: Any = None) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        self.host = build_host(self.identity, listen)
        self.pubsub, router = build_pubsub(self.host, heartbeat=self.config.heartbeat)
        self.keeper = PeerKeeper(self.host, bootstrap, dnsaddrs=self._dnsaddrs)
        self._streams.host = self.host
        self.relaying = Relaying(self.host, reachability=self.config.reachability,
                                 relay_service=self.config.relay_service, relays=self.config.relays,
                                 addrs=self.direct_addrs, penalise=self.penalise)
        self._streams.relaying = self.relaying
        relaying = self.relaying
        self.discovery = Discovery(self.host, server=lambda: relaying.reachability != "private",
                                   offered=lambda: self.config.workloads if self.config.provide and
                                   not self.market.paused else ()) if self.config.dht else None
        self._network.host, self._network.pubsub = self.host, self.pubsub
        gate = PeerGate(is_banned=self.is_banned, penalise=self.penalise)
        async with self.host.run(listen), trio.open_nursery() as nursery:
            async with background_trio_service(self.pubsub), background_trio_service(router):
                await self.pubsub.wait_until_ready()
                self.host.get_network().register_notifee(ban_gate(self.is_banned, self.peers.drop_soon))
                self.pubsub.set_topic_validator(CAPACITY_TOPIC, guard_validator("capacity", self.market.validate),
                                                False)
                if self.config.market_v1:
                    self.pubsub.set_topic_validator(CAPACITY_TOPIC_V1, guard_validator(
                        "capacity", self.market.validate_v1), False)
                self.pubsub.set_topic_validator(REPORTS_TOPIC, guard_validator("reports", self.trust.validate_report),
                                                False)
                self.host.set_stream_handler(JOB_PROTOCOL, guard_stream_handler(
                    "job", self.jobs.handle_stream, gate, self.jobs.limits))
                self.host.set_stream_handler(BLOB_PROTOCOL, guard_stream_handler(
                    "blob", self.blobs.handle_stream, gate, self.blobs.limits))
                self.host.set_stream_handler(MARKET_PROTOCOL, guard_stream_handler(
                    "market", self.market.handle_sync, gate, self.market.limits))
                if self.config.market_v1:
                    self.host.set_stream_handler(MARKET_PROTOCOL_V1, guard_stream_handler(
                        "market", self.market.handle_sync_v1, gate, self.market.limits))
                if self.perf is not None:
                    self.host.set_stream_handler(PERF_PROTOCOL, guard_stream_handler(
                        "perf", self.perf.handle_stream, gate, self.perf.limits))
                ads = await self.pubsub.subscribe(CAPACITY_TOPIC)
                reports = await self.pubsub.subscribe(REPORTS_TOPIC)
                self.started_at = self.now()
                self.market.off_schedule = not self.schedule.is_open(self.local_time())  # before the first ad
                if self.config.provide:  # also when empty: one can be set while the node runs
                    nursery.start_soon(self.follow_schedule)
                if self.config.upnp and not self.relaying.loopback_only():
                    host = self.host
                    self.upnp = PortMapping(lambda: tcp_ports(host.get_addrs()), on_change=self._addrs_changed)
                    await nursery.start(self.upnp.run)
                await nursery.start(self.relaying.run)
                if self.bulk is not None:
                    await nursery.start(self.bulk.run, bulk_hosts(self._listen), self.config.bulk_port)
                if self.discovery is not None:
                    await nursery.start(self.discovery.run)
                nursery.start_soon(self.market.drain, reports)
                nursery.start_soon(self.market.drain, ads)
                if self.config.market_v1:
                    nursery.start_soon(self.market.drain, await self.pubsub.subscribe(CAPACITY_TOPIC_V1))
                nursery.start_soon(self.trust.run)
                nursery.start_soon(self.peers.run)
                nursery.start_soon(control_server.serve, listener, self.views.handle)
                if ui_sock is not None:
                    await nursery.start(self._serve_dashboard, ui_sock)
                nursery.start_soon(self.market.expire)
                nursery.start_soon(self.market.sync_new_peers)
                nursery.start_soon(self.keeper.run, self.config.mdns)
                if self.config.provide:
                    nursery.start_soon(self.market.advertise)
                self.ready.set()
                task_status.started(self)
                await trio.sleep_forever()


def bulk_hosts(listen: list[Any]) -> list[str]:
    """The IPs the bulk channel listens on: those of the libp2p listen addresses, each once."""
    hosts = []
    for addr in listen:
        for proto in ("ip4", "ip6"):
            try:
                hosts.append(addr.value_for_protocol(proto))
            except Exception:  # noqa: BLE001 - not in this address
                continue
    return list(dict.fromkeys(hosts))


def _load_identity(config: Config) -> Identity:
    identity, created = load_or_create(config.data_dir)
    if created:
        log.warning("created new identity %s", identity.peer_id_b58)
    return identity
