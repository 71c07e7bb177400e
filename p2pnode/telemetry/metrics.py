"""Prometheus metrics, one registry per node (so several nodes can share a process in tests)."""

from __future__ import annotations

import errno
import platform
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series: counters only, as scrapers expect

from p2pnode.errors import NetworkSetupError


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.peers = Gauge("p2pnode_peers", "Connected libp2p peers", registry=r)
        self.market_size = Gauge("p2pnode_market_providers", "Live entries in the capacity table", registry=r)
        self.ads_seen = Counter("p2pnode_ads_seen", "Capacity ads received from the network", registry=r)
        self.ads_accepted = Counter("p2pnode_ads_accepted", "Capacity ads accepted into the table", registry=r)
        self.ads_duplicate = Counter("p2pnode_ads_duplicate",
                                     "Capacity ads received by gossip that the table already held", registry=r)
        self.ads_rejected = Counter(
            "p2pnode_ads_rejected", "Capacity ads rejected, by reason", ["reason"], registry=r
        )
        self.ads_published = Counter("p2pnode_ads_published", "Capacity ads this node published", registry=r)
        self.penalties = Counter(
            "p2pnode_peer_penalties", "Offences counted against peers, by reason", ["reason"], registry=r
        )
        self.bans = Counter("p2pnode_peer_bans", "Peers banned for misbehaviour", registry=r)
        self.gossip_latency = Histogram(
            "p2pnode_ad_propagation_seconds",
            "Time from an ad's issue to its acceptance here (sender's clock vs ours)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.jobs = Counter("p2pnode_jobs", "Jobs ended, by this node's role and the end state",
                            ["role", "state"], registry=r)
        self.job_seconds = Histogram("p2pnode_job_seconds", "Wall time of ended jobs, by role", ["role"],
                                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
                                     registry=r)
        from p2pnode import __version__

        Info("p2pnode_build", "Version of the node and what it runs on", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._server: Any = None
        self.address: str = ""

    def job_ended(self, rec: Any) -> None:
        """Count a job that ended (a JobRecord, as provider or requester)."""
        self.jobs.labels(rec.role, rec.state).inc()
        if rec.ended and rec.started:
            self.job_seconds.labels(rec.role).observe(max(0.0, rec.ended - rec.started))

    def watch(self, credits: Callable[[], tuple[int, int]], gpus: Callable[[], Any]) -> None:
        """Read at each scrape: (given, received) credits, and the GPUs of the last probe."""
        self.registry.register(_Live(credits, gpus))

    def serve(self, listen: str, *, any_port_if_taken: bool = False) -> None:
        """Serve on ``listen`` (host:port); with ``any_port_if_taken``, a port another process holds
        (a second node on this machine, on the default port) falls back to a free one."""
        from prometheus_client import start_http_server

        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        try:
            try:
                server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
            except OSError as exc:
                if not any_port_if_taken or exc.errno != errno.EADDRINUSE:
                    raise
                server, _thread = start_http_server(0, addr=host, registry=self.registry)
        except OSError as exc:
            raise NetworkSetupError(f"cannot serve metrics on {listen}: {exc.strerror} "
                                    "(choose another with --metrics HOST:PORT, or '' for none)") from exc
        self._server = server
        self.address = f"{host}:{server.server_port}"

    def text(self) -> str:
        """The Prometheus exposition, as the HTTP endpoint serves it (for the control API)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Live:
    """Values read when scraped, not kept twice."""

    def __init__(self, credits: Callable[[], tuple[int, int]], gpus: Callable[[], Any]) -> None:
        self.credits, self.gpus = credits, gpus

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        given, received = self.credits()
        c = GaugeMetricFamily("p2pnode_credits", "Micro-credits of compute given to peers (they paid) and "
                              "received from them (we paid), by the signed receipts", labels=["direction"])
        c.add_metric(["given"], given)
        c.add_metric(["received"], received)
        yield c
        free = GaugeMetricFamily("p2pnode_gpu_memory_free_bytes", "Free GPU memory at the last probe",
                                 labels=["gpu"])
        util = GaugeMetricFamily("p2pnode_gpu_utilisation_ratio", "GPU busy share at the last probe",
                                 labels=["gpu"])
        for g in self.gpus() or ():
            free.add_metric([str(g.index)], g.memory_free)
            util.add_metric([str(g.index)], g.utilization / 100.0)
        yield free
        yield util
