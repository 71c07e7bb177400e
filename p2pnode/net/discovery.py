"""Finding and keeping peers: bootstrap peers redialed with backoff, and mDNS on the LAN.

py-libp2p's own bootstrap dials once; its mDNS only fills the peerstore and calls a handler from
zeroconf's thread. :class:`PeerKeeper` owns both: it keeps every bootstrap peer connected (a lost
or unreachable one is redialed with exponential backoff, 1 s doubling to 60 s, with jitter, and
reported as a warning) and dials every peer mDNS announces. A ``/dnsaddr`` bootstrap entry is
resolved (:mod:`p2pnode.net.network`) with the same backoff until it names peers, then every
:data:`RESOLVE_INTERVAL_S`; each peer it names is kept like any bootstrap peer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import multiaddr
import trio

from p2pnode.errors import NetworkSetupError
from p2pnode.net import network, workarounds

log = logging.getLogger("p2pnode.discovery")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
DIAL_TIMEOUT_S = 5.0
RESOLVE_INTERVAL_S = 3600.0


class PeerKeeper:
    def __init__(self, host: Any, bootstrap: Sequence[multiaddr.Multiaddr], *, dnsaddrs: Sequence[str] = (),
                 lookup: network.TxtLookup = network.dns_txt) -> None:
        """``dnsaddrs``: ``/dnsaddr/`` entries, resolved with ``lookup`` (a name's TXT records)."""
        from libp2p.peer.peerinfo import info_from_p2p_addr

        self.host = host
        self._infos = [(str(a), info_from_p2p_addr(a)) for a in bootstrap]
        self._dnsaddrs, self._lookup = list(dnsaddrs), lookup
        self._kept = {info.peer_id for _, info in self._infos}
        self.unreachable: dict[str, str] = {}  # bootstrap addr -> last error
        self.connected_once: set[str] = set()
        self._mdns: Any = None
        self._mdns_send, self._mdns_recv = trio.open_memory_channel[Any](64)

    def is_connected(self, peer_id: Any) -> bool:
        return peer_id in self.host.get_network().connections

    async def run(self, mdns: bool) -> None:
        async with trio.open_nursery() as nursery:
            for text, info in self._infos:
                if info.peer_id == self.host.get_id():
                    continue
                nursery.start_soon(self._keep, text, info)
            for entry in self._dnsaddrs:
                nursery.start_soon(self._keep_dnsaddr, entry, nursery)
            if mdns:
                self._start_mdns()
                try:
                    await self._dial_mdns_peers()
                finally:
                    self._stop_mdns()

    async def _keep(self, text: str, info: Any) -> None:
        backoff = BACKOFF_START_S
        while True:
            if self.is_connected(info.peer_id):
                backoff = BACKOFF_START_S
                await trio.sleep(1.0)
                continue
            error = await self._dial(info)
            if error is None:
                self.unreachable.pop(text, None)
                self.connected_once.add(text)
                log.info("connected to bootstrap peer %s", text)
                backoff = BACKOFF_START_S
                continue
            self.unreachable[text] = error
            log.warning("bootstrap peer %s unreachable (%s); retrying in %.0f s", text, error, backoff)
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _keep_dnsaddr(self, entry: str, nursery: trio.Nursery) -> None:
        """Resolve ``entry`` until it names peers (with backoff), then now and then; keep each."""
        backoff = BACKOFF_START_S
        while True:
            try:
                infos = _peer_infos(await network.resolve(entry, self._lookup))
                if not infos:
                    raise NetworkSetupError("names no /tcp/.../p2p/ address")
            except NetworkSetupError as exc:
                self.unreachable[entry] = str(exc)
                log.warning("bootstrap %s not resolved (%s); retrying in %.0f s", entry, exc, backoff)
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            self.unreachable.pop(entry, None)
            backoff = BACKOFF_START_S
            for info in infos:
                if info.peer_id not in self._kept and info.peer_id != self.host.get_id():
                    self._kept.add(info.peer_id)
                    nursery.start_soon(self._keep, f"{info.addrs[0]}/p2p/{info.peer_id}", info)
            await trio.sleep(RESOLVE_INTERVAL_S)

    async def _dial(self, info: Any) -> str | None:
        workarounds.allow_redial(self.host, info.peer_id)
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await self.host.connect(info)
            return None
        except trio.TooSlowError:
            return "timed out"
        except Exception as exc:  # noqa: BLE001 - every dial failure is reported, none is fatal
            return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

    # mDNS ----------------------------------------------------------------------------------
    def _start_mdns(self) -> None:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery
        from libp2p.discovery.mdns.mdns import MDNSDiscovery

        token = trio.lowlevel.current_trio_token()
        send = self._mdns_send

        def on_found(info: Any) -> None:  # runs on zeroconf's thread
            try:
                token.run_sync_soon(lambda: _send_nowait(send, info))
            except trio.RunFinishedError:
                pass

        self._on_found = on_found
        addrs = [a for a in self.host.get_addrs()]
        port = int(addrs[0].value_for_protocol("tcp")) if addrs else 4001
        peerDiscovery.register_peer_discovered_handler(on_found)
        self._mdns = MDNSDiscovery(
            self.host.get_network(), port=port, listen_addrs=[str(a) for a in addrs], host=self.host
        )
        self._mdns.start()

    def _stop_mdns(self) -> None:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery

        peerDiscovery.unregister_peer_discovered_handler(self._on_found)
        if self._mdns is not None:
            try:
                self._mdns.stop()
            except Exception as exc:  # noqa: BLE001
                log.warning("stopping mDNS: %s", exc)
            self._mdns = None

    async def _dial_mdns_peers(self) -> None:
        async for info in self._mdns_recv:
            if info.peer_id == self.host.get_id() or self.is_connected(info.peer_id):
                continue
            error = await self._dial(info)
            if error is not None:
                log.info("mDNS peer %s not reachable: %s", info.peer_id, error)


def _peer_infos(addrs: Sequence[str]) -> list[Any]:
    """The peers ``addrs`` name (``/tcp/.../p2p/<id>`` ones; others are skipped), each with all its
    addresses, in order."""
    from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

    from p2pnode.net.host import parse_multiaddr

    by_peer: dict[Any, list[Any]] = {}
    for text in addrs:
        try:
            info = info_from_p2p_addr(parse_multiaddr(text, need_peer_id=True))
        except Exception as exc:  # noqa: BLE001 - not a TCP address with a peer id: skipped
            log.debug("bootstrap address %s skipped: %s", text, exc)
            continue
        by_peer.setdefault(info.peer_id, []).extend(info.addrs)
    return [PeerInfo(peer, list(dict.fromkeys(a))) for peer, a in by_peer.items()]


def _send_nowait(send: trio.MemorySendChannel[Any], item: Any) -> None:
    try:
        send.send_nowait(item)
    except trio.WouldBlock:
        pass  # a burst of announcements; the peers will be announced again
