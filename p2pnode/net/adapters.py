"""What services need of the libp2p host, as small objects: open a stream, drop or blacklist a peer.

Services depend on the protocols in :mod:`p2pnode.services.ports`; these are the libp2p versions.
Tests use memory streams and plain lists instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from p2pnode.net.host import parse_multiaddr

log = logging.getLogger("p2pnode.net")
OPEN_TIMEOUT_S = 5.0


class HostStreams:
    """:class:`~p2pnode.services.ports.Streams` over a libp2p host (attached once it exists)."""

    def __init__(self, host: Any = None, *, timeout: float = OPEN_TIMEOUT_S) -> None:
        self.host = host
        self.timeout = timeout
        self.relaying: Any = None  # p2pnode.net.relay.Relaying: dials circuit addresses

    async def open(self, peer: bytes, protocol: str, addrs: Sequence[str] = ()) -> Any:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        if self.host is None:
            raise RuntimeError("the node is not running")
        pid = ID(peer)
        if addrs and pid not in self.host.get_network().connections:
            relayed = [a for a in addrs if "/p2p-circuit" in a]
            direct = [a for a in addrs if "/p2p-circuit" not in a]
            try:
                if not direct:
                    raise ConnectionError("no direct address")
                with trio.fail_after(self.timeout):
                    await self.host.connect(PeerInfo(pid, [parse_multiaddr(a.split("/p2p/")[0]) for a in direct]))
            except Exception:
                if not relayed or self.relaying is None:
                    raise
                with trio.fail_after(self.timeout):  # behind NAT: through a relay it reserved on
                    await self.relaying.dial(pid, relayed)
        with trio.fail_after(self.timeout):
            return await self.host.new_stream(pid, [protocol])


class HostPeers:
    """:class:`~p2pnode.services.ports.PeerNetwork` over a libp2p host and its gossipsub."""

    def __init__(self, host: Any = None, pubsub: Any = None) -> None:
        self.host, self.pubsub = host, pubsub

    def connected(self) -> list[bytes]:
        return [pid.to_bytes() for pid in self.host.get_connected_peers()] if self.host is not None else []

    def blacklisted(self) -> list[bytes]:
        return [pid.to_bytes() for pid in self.pubsub.blacklisted_peers] if self.pubsub is not None else []

    def blacklist(self, peer: bytes) -> None:
        from libp2p.peer.id import ID

        if self.pubsub is not None:
            self.pubsub.add_to_blacklist(ID(peer))

    def unblacklist(self, peer: bytes) -> None:
        from libp2p.peer.id import ID

        if self.pubsub is not None:
            self.pubsub.remove_from_blacklist(ID(peer))

    async def disconnect(self, peer: bytes) -> None:
        from libp2p.peer.id import ID

        if self.host is None:
            return
        try:
            await self.host.disconnect(ID(peer))
        except Exception as exc:  # noqa: BLE001 - already gone is fine
            log.debug("disconnect %s: %s", peer.hex()[:12], exc)
