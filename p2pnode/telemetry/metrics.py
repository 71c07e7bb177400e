"""Prometheus metrics, one registry per node (so several nodes can share a process in tests)."""

from __future__ import annotations

import errno
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from p2pnode.errors import NetworkSetupError


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.peers = Gauge("p2pnode_peers", "Connected libp2p peers", registry=r)
        self.market_size = Gauge("p2pnode_market_providers", "Live entries in the capacity table", registry=r)
        self.ads_seen = Counter("p2pnode_ads_seen", "Capacity ads received from the network", registry=r)
        self.ads_accepted = Counter("p2pnode_ads_accepted", "Capacity ads accepted into the table", registry=r)
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
        self._server: Any = None
        self.address: str = ""

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
