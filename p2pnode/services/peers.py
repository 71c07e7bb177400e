"""Offences and bans: the one place every protocol reports a misbehaving peer.

:meth:`PeerPolicy.penalise` counts an offence in the pure :class:`PeerPenalties`, in the metrics and
(rate-limited) in the ledger; an offence that crosses the ban threshold schedules the peer to be
dropped: blacklisted in gossip and disconnected. :meth:`run` carries out those drops, lifts bans
whose time is up, and drops any banned peer that dialed back in. Handlers ask :meth:`is_banned`
before serving a stream, and a network notifee drops a banned peer at the handshake
(:func:`p2pnode.net.guard.ban_gate`), so a ban holds.

Collaborators: the penalty book, ``now``, the metrics, ``remember`` (the ledger's penalty record)
and the network (``connected``, ``blacklist``, ``disconnect``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from p2pnode.protocol.penalties import PeerPenalties
from p2pnode.services.ports import Now, PeerNetwork
from p2pnode.telemetry.metrics import NodeMetrics
from p2pnode.wire.peer_id import to_base58

log = logging.getLogger("p2pnode.node")
ENFORCE_INTERVAL_S = 0.5


class PeerPolicy:
    def __init__(self, *, penalties: PeerPenalties, now: Now, metrics: NodeMetrics,
                 remember: Callable[[bytes, str, float], None], network: PeerNetwork) -> None:
        self.penalties, self.now, self.metrics = penalties, now, metrics
        self.remember, self.network = remember, network
        self._drop_send, self._drop_recv = trio.open_memory_channel[bytes](256)

    def is_banned(self, peer: bytes) -> bool:
        return self.penalties.is_banned(peer, self.now())

    def penalise(self, peer: bytes, code: str, now: float | None = None) -> None:
        """Count an offence against a peer; ban and drop it past the threshold."""
        now = self.now() if now is None else now
        self.metrics.penalties.labels(code).inc()
        self.remember(peer, code, now)
        if self.penalties.record(peer, code, now):
            self.metrics.bans.inc()
            log.warning("banning peer %s for misbehaviour", to_base58(peer))
            self.drop_soon(peer)

    def drop_soon(self, peer: bytes) -> None:
        try:
            self._drop_send.send_nowait(peer)
        except trio.WouldBlock:
            pass  # the enforcement pass below drops it anyway

    async def drop(self, peer: bytes) -> None:
        self.network.blacklist(peer)
        await self.network.disconnect(peer)

    async def run(self) -> None:
        """Drop newly banned peers at once; every ``ENFORCE_INTERVAL_S`` lift bans whose time is up
        and drop any banned peer that is connected again."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drops)
            while True:
                await trio.sleep(ENFORCE_INTERVAL_S)
                await self.enforce()

    async def _drops(self) -> None:
        async for peer in self._drop_recv:
            await self.drop(peer)

    async def enforce(self) -> None:
        for peer in self.network.blacklisted():
            if not self.is_banned(peer):
                self.network.unblacklist(peer)
        for peer in self.network.connected():
            if self.is_banned(peer):
                await self.drop(peer)

    def banned(self) -> list[bytes]:
        return self.penalties.banned(self.now())
