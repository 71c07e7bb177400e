"""Finding the network from one peer: py-libp2p's Kademlia DHT, on a protocol of our own.

* The market's DHT speaks ``/p2pnode/kad/1.0.0`` (not the IPFS one: a market node has no business
  in the IPFS routing table, and IPFS peers none in ours; py-libp2p needs a workaround for that,
  :func:`p2pnode.net.workarounds.market_dht_protocol`). Public and local nodes serve it; a node
  behind NAT is a client (others could not dial it back).
* **Peers.** Every :data:`WALK_INTERVAL_S` (ten times less often once it has enough peers) a node
  looks itself and a random id up (a random walk), which fills its routing table, and connects to
  peers from the table until it has :data:`TARGET_PEERS`: a node that knows one peer finds the rest
  of the network.
* **Providers.** A provider announces itself under one key per workload it offers
  (``p2pnode/offers/<workload>``); :meth:`Discovery.providers` finds those beyond one's direct
  connections. The library can return one provider several times; the result is deduplicated.

The library logs a closed or reset stream of every lookup at error level; those records are
dropped at the ``libp2p.kad_dht`` loggers (:func:`quiet`), where they come from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import trio

from p2pnode.net.host import TARGET_CONNECTIONS, first_peer

log = logging.getLogger("p2pnode.net")

PROTOCOL_PREFIX = "/p2pnode"
WALK_INTERVAL_S = 30.0
FIRST_WALK_S = 2.0
TARGET_PEERS = TARGET_CONNECTIONS  # the library's auto-connector aims at the same number
SETTLED_FACTOR = 10  # with TARGET_PEERS connected, walk this many times less often
LOOKUP_TIMEOUT_S = 10.0
MAX_PROVIDERS = 20


def offers_key(workload: str) -> str:
    return f"p2pnode/offers/{workload}"


class _ClosedStreams(logging.Filter):
    """Drops the library's error records about streams a peer closed or reset mid-lookup."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage().lower()
        return not ("stream" in text and any(w in text for w in ("closed", "reset", "eof")))


def quiet() -> None:
    for name in ("libp2p.kad_dht", "libp2p.kad_dht.kad_dht", "libp2p.kad_dht.peer_routing",
                 "libp2p.kad_dht.provider_store", "libp2p.kad_dht.value_store"):
        logging.getLogger(name).addFilter(_ClosedStreams())


class Discovery:
    """The DHT of one node, and what it does with it."""

    def __init__(self, host: Any, *, server: Callable[[], bool], offered: Callable[[], Sequence[str]]) -> None:
        """``server``: whether others can dial this node (public or local: serve the DHT);
        ``offered``: the workloads this node provides now (announced as a provider of each)."""
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        from p2pnode.net.workarounds import bounded_provider_store, market_dht_protocol

        self.protocol = market_dht_protocol()
        quiet()
        self.host = host
        self.server, self.offered = server, offered
        self.dht = KadDHT(host, DHTMode.SERVER if server() else DHTMode.CLIENT,
                          protocol_prefix=PROTOCOL_PREFIX, enable_values=False)  # type: ignore[arg-type]
        self.dht.provider_store = bounded_provider_store(host, self.dht.peer_routing)
        self.walks = 0
        self.dialed = 0
        self.announced: set[str] = set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        async with background_trio_service(self.dht):
            task_status.started()
            await first_peer(self.host, FIRST_WALK_S)  # the table takes peers that speak the DHT
            while True:
                try:
                    await self.step()
                except Exception as exc:  # noqa: BLE001 - discovery must never take the node down
                    log.info("DHT discovery: %s", exc)
                # walk often while short of peers, seldom once there (lookups cost every peer asked)
                short = len(self.host.get_connected_peers()) < TARGET_PEERS
                await trio.sleep(WALK_INTERVAL_S if short else WALK_INTERVAL_S * SETTLED_FACTOR)

    async def step(self) -> None:
        """One round: mode, table, a random walk, new connections, provider records."""
        from libp2p.kad_dht.kad_dht import DHTMode
        from libp2p.peer.id import ID

        want = DHTMode.SERVER if self.server() else DHTMode.CLIENT
        if self.dht.mode != want:
            await self.dht.switch_mode(want)
        for peer in self.host.get_connected_peers():
            await self.dht.add_peer(peer)
        with trio.move_on_after(LOOKUP_TIMEOUT_S):
            await self.dht.find_peer(self.host.get_id())
            await self.dht.find_peer(ID(b"\x00\x24\x08\x01\x12\x20" + os.urandom(32)))
        self.walks += 1
        await self.connect_more()
        for workload in set(self.offered()) - self.announced:  # the library republishes them
            with trio.move_on_after(LOOKUP_TIMEOUT_S):
                if await self.dht.provide(offers_key(workload)):
                    self.announced.add(workload)

    async def connect_more(self) -> None:
        """Connect to peers from the routing table until this node has :data:`TARGET_PEERS`."""
        connected = set(self.host.get_connected_peers())
        for peer in self.dht.routing_table.get_peer_ids():
            if len(connected) >= TARGET_PEERS:
                return
            if peer in connected or peer == self.host.get_id():
                continue
            addrs = self.host.get_peerstore().addrs(peer)
            if not addrs:
                continue
            from libp2p.peer.peerinfo import PeerInfo

            try:
                with trio.fail_after(LOOKUP_TIMEOUT_S / 2):
                    await self.host.connect(PeerInfo(peer, addrs))
                connected.add(peer)
                self.dialed += 1
            except Exception as exc:  # noqa: BLE001 - gone, or behind NAT: the next one
                log.debug("DHT peer %s: %s", peer, exc)

    async def providers(self, workload: str) -> list[Any]:
        """Peers that announced ``workload``, each once (PeerInfo)."""
        with trio.move_on_after(LOOKUP_TIMEOUT_S):
            found = await self.dht.find_providers(offers_key(workload), MAX_PROVIDERS)
            seen: dict[Any, Any] = {}
            for info in found:
                seen.setdefault(info.peer_id, info)
            return list(seen.values())
        return []
