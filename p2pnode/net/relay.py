"""Reachability behind NAT, with what py-libp2p ships: AutoNAT v1 and circuit relay v2.

* **Reachability.** Every node answers AutoNAT dial-back requests. Each node (but one that listens
  on loopback only: ``local``) asks up to
  :data:`AUTONAT_SERVERS` connected peers to dial it back and calls itself ``public`` or
  ``private`` when they agree (``reachability`` in the config overrides: an operator who forwarded a
  port knows). The server, :class:`p2pnode.net.autonat.DialBackServer`, dials back on a new
  connection, within bounds per request, per peer and in all. A server's "busy" answer
  (``E_INTERNAL_ERROR``), or one that did not understand, is no verdict.
* **Relay service.** A public node (or one told ``relay_service = "on"``) relays for others within
  :data:`RELAY_LIMITS`: reservations, circuits, bytes and seconds per circuit are bounded.
* **Reservations.** A private node reserves a slot on relays (``relays`` in the config, else the
  connected peers that serve as relays), renews it, and advertises ``<relay>/p2p-circuit``
  addresses: in its capacity ad, so requesters dial it through the relay.
* **Dialing.** Every node accepts relayed connections and dials circuit addresses
  (:meth:`Relaying.dial`).

What was measured: relayed dial and a first stream on loopback take ~50 ms; the library logs every
closed hop stream as an error, which :mod:`p2pnode.telemetry.logs` keeps below warning.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import multiaddr
import trio

from p2pnode.net.autonat import DIAL_BACK_TIMEOUT_S, DialBackServer
from p2pnode.net.host import first_peer

log = logging.getLogger("p2pnode.net")

HOP = "/libp2p/circuit/relay/0.2.0/hop"
AUTONAT = "/libp2p/autonat/1.0.0"
AUTONAT_SERVERS = 4  # peers asked to dial back at a time
CHECK_INTERVAL_S = 60.0  # reachability and reservations are looked at this often
FIRST_CHECK_S = 1.0  # the first look, once a peer is connected
MAX_RELAYS = 2  # reservations a private node keeps
RETRY_S = 60.0  # a peer that refused a reservation is asked again after this
REACHABILITY = ("auto", "public", "private")
RELAY_SERVICE = ("auto", "on", "off")


def relay_limits() -> Any:
    from libp2p.relay.circuit_v2.resources import RelayLimits

    return RelayLimits(duration=600, data=256 << 20, max_circuit_conns=16, max_reservations=32,
                       reservation_ttl=1800)


def is_circuit(addr: str) -> bool:
    return "/p2p-circuit" in addr


def _loopback(addr: str) -> bool:
    return addr.startswith(("/ip4/127.", "/ip6/::1/"))


class Relaying:
    """A node's side of NAT traversal: its reachability, its relay service, its reservations."""

    def __init__(self, host: Any, *, reachability: str = "auto", relay_service: str = "auto",
                 relays: Sequence[str] = (), addrs: Callable[[], list[str]] | None = None,
                 penalise: Callable[[bytes, str], None] = lambda peer, code: None) -> None:
        """``addrs``: this node's direct addresses as it advertises them (what AutoNAT tries);
        ``penalise``: counts an offence against a peer (a dial-back asker over its limits)."""
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport

        self.host = host
        self.addrs = addrs or (lambda: [str(a) for a in host.get_addrs()])
        self.configured = reachability
        self.reachability = reachability if reachability != "auto" else "unknown"
        self.relay_service = relay_service
        self.relays = [multiaddr.Multiaddr(a) for a in relays]
        limits = relay_limits()
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=False)
        config = RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT, limits=limits)
        self.transport = CircuitV2Transport(host, self.protocol, config)
        self.dial_back = DialBackServer(host, penalise=penalise)
        self.autonat = self.dial_back.client
        from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

        self.dcutr = DCUtRProtocol(host)
        self.serving = False
        self.relayed_dials = 0  # connections this node opened through a relay
        self.reserved: dict[Any, tuple[str, float]] = {}  # relay id -> (its address, renew at)
        self._refused: dict[Any, float] = {}  # peer -> when to ask it again
        self.last_check = 0.0
        self._wake = trio.Event()

    def recheck(self) -> None:
        """Check reachability again now: this node's addresses changed (a router forwards a port)."""
        self._wake.set()

    # reachability ------------------------------------------------------------------------
    def loopback_only(self) -> bool:
        """Left to find its reachability (``auto``) and listening on loopback only: a node of a
        swarm on one machine, which every peer reaches directly."""
        own = self.addrs()
        return self.configured == "auto" and (not own or all(_loopback(a) for a in own))

    async def check_reachability(self) -> str:
        """Ask connected peers that speak AutoNAT to dial back; ``public``/``private``/``unknown``."""
        if self.configured != "auto":
            return self.reachability
        own = self.addrs()
        if self.loopback_only():
            self.reachability = "local"  # reachable from this machine only: nothing to ask anyone
            return self.reachability
        servers = [p for p in self.host.get_connected_peers() if self._speaks(p, AUTONAT)][:AUTONAT_SERVERS]
        if not servers:
            return self.reachability
        self.autonat.dial_results.clear()
        self.autonat.confirmations = min(3, len(servers))
        addrs = [multiaddr.Multiaddr(a.split("/p2p/")[0]).to_bytes() for a in own]
        from libp2p.host.autonat.pb.autonat_pb2 import Message

        for server in servers:
            try:
                status, _ = await self.autonat.query_server(server, addrs, timeout=2 * DIAL_BACK_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a server that fails to answer gives no verdict
                log.debug("AutoNAT query to %s failed: %s", server, exc)
                continue
            if status not in (Message.OK, Message.E_DIAL_ERROR, Message.E_DIAL_REFUSED):
                self.autonat.dial_results.pop(server, None)  # busy, or did not understand: no verdict
        self.autonat.update_status()
        from libp2p.host.autonat.autonat import AutoNATStatus

        status = self.autonat.get_status()
        self.reachability = {AutoNATStatus.PUBLIC: "public", AutoNATStatus.PRIVATE: "private"}.get(
            status, self.reachability)
        self.last_check = time.time()
        return self.reachability

    def _speaks(self, peer: Any, protocol: str) -> bool:
        try:
            return protocol in self.host.get_peerstore().get_protocols(peer)
        except Exception:  # noqa: BLE001 - unknown peer
            return False

    # relay service -----------------------------------------------------------------------
    def update_service(self) -> None:
        """Relay for others when public (``auto``) or always (``on``); never with ``off``."""
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

        want = self.relay_service == "on" or (self.relay_service == "auto" and self.reachability == "public")
        if want == self.serving:
            return
        self.protocol.allow_hop = self.serving = want
        if want:
            self.host.set_stream_handler(PROTOCOL_ID, self.protocol._handle_hop_stream)
            log.info("serving as a relay (reservations and circuits bounded)")
        else:
            self.host.remove_stream_handler(PROTOCOL_ID)

    # reservations ------------------------------------------------------------------------
    async def reserve(self) -> None:
        """Keep up to :data:`MAX_RELAYS` reservations while private; renew them before they lapse."""
        if self.reachability != "private":
            return
        from libp2p.peer.peerinfo import info_from_p2p_addr

        for addr in self.relays:
            try:
                info = info_from_p2p_addr(addr)
                if info.peer_id not in self.host.get_network().connections:
                    with trio.fail_after(DIAL_BACK_TIMEOUT_S):
                        await self.host.connect(info)
            except Exception as exc:  # noqa: BLE001 - a relay that is down: try the others
                log.info("relay %s unreachable: %s", addr, exc)
        now = time.time()
        # Peers that said they relay first; then any other connected peer, since a node that found
        # out it is public starts relaying after identify told its peers what it speaks. A peer that
        # refuses is asked again only after RETRY_S.
        peers = self.host.get_connected_peers()
        candidates = sorted(peers, key=lambda p: not self._speaks(p, HOP))
        for relay in candidates:
            held = self.reserved.get(relay)
            if held is not None and held[1] > now:
                continue
            if held is None and (len(self.reserved) >= MAX_RELAYS or self._refused.get(relay, 0.0) > now):
                continue
            if await self._reserve_on(relay):
                address = self._dialable_addr(relay)
                if address:
                    ttl = relay_limits().reservation_ttl
                    self.reserved[relay] = (address, now + ttl / 2)
                    log.info("reserved a relay slot on %s", address)
            else:
                self.reserved.pop(relay, None)
                self._refused[relay] = now + RETRY_S

    async def _reserve_on(self, relay: Any) -> bool:
        discovery = self.transport.discovery
        if relay not in discovery._discovered_relays:
            from libp2p.relay.circuit_v2.discovery import RelayInfo

            now = time.time()
            discovery._discovered_relays[relay] = RelayInfo(peer_id=relay, discovered_at=now, last_seen=now)
        return bool(await discovery.make_reservation(relay))

    def _dialable_addr(self, relay: Any) -> str:
        """The relay's address as this node reached it (the one others can dial too)."""
        conns = self.host.get_network().connections.get(relay)
        for conn in conns if isinstance(conns, list) else [conns] if conns else []:
            try:
                ip, port = conn.muxed_conn.secured_conn.get_remote_address()
                return f"/ip4/{ip}/tcp/{port}/p2p/{relay}"
            except Exception:  # noqa: BLE001 - not a TCP connection
                continue
        for a in self.host.get_peerstore().addrs(relay):
            if not is_circuit(str(a)):
                return f"{a}/p2p/{relay}"
        return ""

    def circuit_addrs(self) -> list[str]:
        """Where others reach this node through its relays (without its own /p2p/ suffix)."""
        connected = set(self.host.get_connected_peers())
        return [f"{addr}/p2p-circuit" for relay, (addr, _) in self.reserved.items() if relay in connected]

    # dialing -----------------------------------------------------------------------------
    async def dial(self, peer: Any, addrs: Sequence[str]) -> None:
        """Connect to ``peer`` through the first circuit address that works."""
        last: Exception | None = None
        for a in addrs:
            target = a if a.rstrip("/").endswith(f"/p2p/{peer}") else f"{a}/p2p/{peer}"
            try:
                await self.transport.dial(multiaddr.Multiaddr(target))
                self.relayed_dials += 1
                return
            except Exception as exc:  # noqa: BLE001 - try the next relay
                last = exc
        raise ConnectionError(f"no relay reached {peer}: {last}")

    # the loop ----------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        async with background_trio_service(self.protocol), contextlib.AsyncExitStack() as stack:
            if not self.loopback_only():  # no NAT between loopback addresses: nothing to punch
                await stack.enter_async_context(background_trio_service(self.dcutr))
            self.update_service()
            task_status.started()
            await first_peer(self.host, FIRST_CHECK_S)  # identify tells us who speaks what
            next_check = 0.0  # servers are asked once a minute (they serve 3 a minute), or on a change
            while True:
                try:
                    if self._wake.is_set() or self.reachability == "unknown" or trio.current_time() >= next_check:
                        self._wake = trio.Event()
                        next_check = trio.current_time() + CHECK_INTERVAL_S
                        await self.check_reachability()
                        self.update_service()
                    await self.reserve()
                except Exception as exc:  # noqa: BLE001 - never take the node down over reachability
                    log.warning("reachability check failed: %s", exc)
                # a private node without a relay slot looks for one every few seconds
                with trio.move_on_after(CHECK_INTERVAL_S if self.reachability != "private" or self.reserved
                                        else FIRST_CHECK_S * 5):
                    await self._wake.wait()

    def status(self) -> dict[str, Any]:
        return {"reachability": self.reachability, "relay_service": self.serving,
                "relayed_via": [a for a, _ in self.reserved.values()]}
