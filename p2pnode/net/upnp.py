"""A port forwarded by the home router (UPnP IGD), with what py-libp2p ships (``UpnpManager``, on
miniupnpc).

A node behind a home router that offers UPnP asks it to forward the node's TCP port, and then
advertises the router's external address: AutoNAT's dial-back reaches it there, the node is
public, and nobody needs a relay to reach it. The library's own switch (``enable_upnp`` on the
host) is not used: it holds up the host's start for the gateway search (two seconds and more where
there is no gateway), and it maps the port without advertising the address it gets. Here the
search runs beside the node, the mapped address joins the node's direct addresses, and the mapping
is removed when the node stops.

Kept from the library: a gateway whose own external address is private or reserved is refused
(double NAT: a forwarded port there reaches no one outside), and so is a router that is not an
Internet gateway. A node that only listens on loopback never searches (SSDP is multicast on every
interface).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import multiaddr
import trio

log = logging.getLogger(__name__)

REMOVE_TIMEOUT_S = 3.0


class PortMapping:
    """This node's TCP ports forwarded by the router, and the external addresses that gives."""

    def __init__(self, ports: Callable[[], list[int]], manager: Callable[[], Any] | None = None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        """``ports``: the TCP ports this node listens on (read once the host listens);
        ``manager``: makes the UPnP client (py-libp2p's ``UpnpManager``; a test may pass another);
        ``on_change``: called when the forwarded addresses come or go."""
        self.ports, self.on_change = ports, on_change
        self._manager = manager
        self.state = "searching"  # then: mapped, no_gateway (none, or not usable), failed
        self.external_ip = ""
        self.mapped: list[int] = []

    def addrs(self) -> list[str]:
        """The router's external address for each forwarded port."""
        if not self.external_ip:
            return []
        proto = "ip6" if ipaddress.ip_address(self.external_ip).version == 6 else "ip4"
        return [f"/{proto}/{self.external_ip}/tcp/{p}" for p in self.mapped]

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "external": self.addrs()}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Search, map, hold until cancelled, then remove the mappings."""
        task_status.started()
        mgr = self._make()
        if mgr is None or not await mgr.discover():  # the library logs why, at debug or warning
            self.state = "no_gateway"
            log.info("UPnP: no usable Internet gateway on this network")
            return
        external = mgr.get_external_ip() or ""
        try:
            for port in self.ports():
                if await mgr.add_port_mapping(port, "TCP"):
                    self.mapped.append(port)
            self.external_ip = external if self.mapped else ""
            self.state = "mapped" if self.mapped else "failed"
            if self.mapped:
                log.info("UPnP: the router forwards %s", ", ".join(self.addrs()))
                self.on_change()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(REMOVE_TIMEOUT_S):
                for port in self.mapped:
                    await mgr.remove_port_mapping(port, "TCP")
            self.mapped, self.external_ip = [], ""

    def _make(self) -> Any:
        if self._manager is not None:
            return self._manager()
        try:
            from libp2p.discovery.upnp.upnp import UpnpManager
        except ImportError as exc:  # miniupnpc is missing: no UPnP, said once
            log.warning("UPnP unavailable: %s", exc)
            return None
        return UpnpManager()


def tcp_ports(addrs: list[multiaddr.Multiaddr]) -> list[int]:
    """The distinct TCP ports of the host's (non-loopback) listen addresses."""
    ports: list[int] = []
    for a in addrs:
        text = str(a)
        if "/p2p-circuit" in text or text.startswith(("/ip4/127.", "/ip6/::1/")):
            continue
        try:
            port = int(a.value_for_protocol("tcp"))
        except Exception:  # noqa: BLE001 - not a TCP address
            continue
        if port not in ports:
            ports.append(port)
    return ports
