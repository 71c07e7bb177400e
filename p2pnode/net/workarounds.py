"""Workarounds for py-libp2p behaviour that is wrong for a node like ours.

Every workaround lives here, names the upstream behaviour it corrects, and has a test in
``tests/net/test_workarounds.py`` that fails without it. Those that make a stream fast are larger
and live beside this module, with their own tests: :mod:`p2pnode.net.noise_session` (Noise reads
and writes in batches) and :mod:`p2pnode.net.yamux_speed` (larger frames, woken writers).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import multiaddr

from p2pnode.errors import NetworkSetupError


def check_listen_port_free(addr: multiaddr.Multiaddr) -> None:
    """Refuse to listen on a TCP port that another socket already holds.

    Upstream: ``libp2p.transport.tcp.tcp`` (0.8.1) sets ``SO_REUSEPORT`` on every listening socket
    so that DCUtR hole punching can dial from the listen port. Two processes that both set it may
    bind the same port, and the kernel then splits incoming connections between them: a second
    node started on a port in use "starts" silently and steals half of the first one's peers.
    A plain bind without ``SO_REUSEPORT`` fails on such a port, so we try one first. (A race with a
    second node starting in the same instant remains; it is not worth a fork of the transport.)
    """
    protos = [p.name for p in addr.protocols()]
    if "tcp" not in protos:
        return
    port = int(addr.value_for_protocol("tcp"))
    if port == 0:
        return
    if "ip6" in protos:
        family, host = socket.AF_INET6, addr.value_for_protocol("ip6")
    elif "ip4" in protos:
        family, host = socket.AF_INET, addr.value_for_protocol("ip4")
    else:
        return  # dns names are resolved by the transport
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NetworkSetupError(f"cannot listen on {addr}: port {port} is in use") from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise NetworkSetupError(f"cannot listen on {addr}: no such local address") from exc
            raise NetworkSetupError(f"cannot listen on {addr}: {exc.strerror}") from exc


def allow_redial(host: Any, peer_id: Any) -> None:
    """Let the next dial to ``peer_id`` really try, whatever failed before.

    Upstream: ``libp2p.network.swarm.Swarm`` (0.8.1) keeps a "negative cache": for 60 s after every
    address of a peer failed, ``connect`` raises at once without dialing. Our bootstrap keeper has
    its own exponential backoff (1 s to 60 s), and a bootstrap peer that comes back after 2 s must
    be reached on the next attempt, not a minute later. ``unblock_peer`` is the swarm's public way
    to lift the entry.
    """
    host.get_network().unblock_peer(peer_id)


def safe_pubsub_class() -> type:
    """py-libp2p's ``Pubsub`` with two races closed (0.8.1; see the upstream issues on direct
    ``peers`` access in pubsub, e.g. libp2p/py-libp2p#1124, fixed elsewhere but not here).

    * ``_teardown_if_connected`` (run by ``add_to_blacklist``) awaits the peer's stream reset and
      then does ``del self.peers[peer_id]``; if the peer's disconnect was handled meanwhile (the
      usual case when we ban a peer: blacklist, then disconnect), that raises ``KeyError`` inside
      the pubsub service and stops the whole node. Here the entry is popped if still there.
    * ``stream_handler`` (a peer's inbound pubsub stream) runs outside our guard; a stream that
      arrives while the service stops raises "Nursery is closed to new arrivals" through the
      connection's nursery. Here whatever escapes a peer's pubsub stream is logged and ends that
      stream only (as :mod:`p2pnode.net.guard` does for our own protocols).
    """
    import logging

    import trio
    from libp2p.pubsub.pubsub import Pubsub

    log = logging.getLogger("p2pnode.net")

    class SafePubsub(Pubsub):
        async def _teardown_if_connected(self, peer_id: Any) -> None:
            stream = self.peers.get(peer_id)
            if stream is not None:
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001 - as upstream: a dead stream is fine
                    pass
                self.peers.pop(peer_id, None)
            self._forget_all_subscriptions(peer_id)

        async def stream_handler(self, stream: Any) -> None:
            try:
                await super().stream_handler(stream)
            except* trio.Cancelled:
                raise
            except* Exception as group:
                log.debug("pubsub stream from %s ended: %r", getattr(stream.muxed_conn, "peer_id", "?"), group)
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001
                    pass

    return SafePubsub


MARKET_DHT_PROTOCOL = "/p2pnode/kad/1.0.0"
_KAD_MODULES = ("common", "kad_dht", "peer_routing", "provider_store")


def market_dht_protocol() -> str:
    """Make py-libp2p's Kademlia speak the market's protocol id instead of the IPFS one.

    0.8.1 takes a ``protocol_prefix`` but only to skip the IPFS config checks: every module uses
    the constant ``PROTOCOL_ID`` (``/ipfs/kad/1.0.0``) for handlers and streams, imported by name
    (the routing table imports it at each use). So the constant is replaced where each module
    holds it; every DHT in this process then speaks ``/p2pnode/kad/1.0.0``, which is all a
    p2pnode process runs."""
    import importlib

    from libp2p.custom_types import TProtocol

    for name in _KAD_MODULES:
        module = importlib.import_module(f"libp2p.kad_dht.{name}")
        module.PROTOCOL_ID = TProtocol(MARKET_DHT_PROTOCOL)  # type: ignore[attr-defined]
    return MARKET_DHT_PROTOCOL


IDONTWANT_THRESHOLD = 1024  # bytes: go-libp2p's default IDontWantMessageThreshold


def threshold_gossipsub_class() -> type:
    """py-libp2p's ``GossipSub`` sending IDONTWANT only for messages of at least 1 KiB.

    GossipSub v1.2 has a node tell its mesh peers IDONTWANT for a message it just received, so they
    do not send it a copy; go-libp2p does so only for messages above a size threshold (1 KiB by
    default), since for a small message the notice costs about what the copy would. py-libp2p 0.8.1
    has no threshold: every message, however small, makes one more RPC to every v1.2 mesh peer. In
    an idle 10-node swarm those were 1.1 of the 1.9 RPCs each node sent a second, for ads of under
    1 KiB (measured with the RPCs counted at ``Pubsub.write_msg``).
    """
    from libp2p.pubsub.gossipsub import GossipSub

    class ThresholdGossipSub(GossipSub):
        async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Any) -> None:
            msg = self.mcache.get(msg_id)
            if msg is not None and len(msg.data) < IDONTWANT_THRESHOLD:
                return
            await super()._emit_idontwant_for_message(msg_id, topic_ids)

    return ThresholdGossipSub


def batch_yamux_window_updates() -> None:
    """Make py-libp2p's yamux send fewer receive-window updates.

    0.8.1 reads ``PY_YAMUX_RELEASE_ON_READ`` (on unless set) and, when on, sends a WINDOW_UPDATE
    frame after every read of a stream, however small: each gossip RPC cost its receiver about three
    frames back (the length prefix and the body are separate reads), 5.6 of the 7.7 frames an idle
    node sent a second in a 10-node swarm. Off, credit for a read that leaves the window full enough
    waits for a later update (go-yamux batches up to half the window; this version still updates on
    most reads that find the window short): one frame per gossip RPC instead of three, 51 instead of
    105 for a hundred 200-byte messages; 64 MiB blob fetches ran at 45-49 MB/s either way
    (``tools/bench/run jobs``). An operator's own setting is kept. This is upstream's read path;
    with the node's faster yamux (:mod:`p2pnode.net.yamux_speed`), small writes leave at once and are
    read one by one, so a hundred 200-byte messages return credit 105 times either way.
    """
    import os

    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


class _LowWatermarkView:
    """The swarm as the auto-connector sees it: the same, but with the high watermark at the low
    one, so that the midpoint it aims at is the low watermark."""

    def __init__(self, swarm: Any) -> None:
        from dataclasses import replace

        self._swarm = swarm
        config = swarm.connection_config
        self.connection_config = replace(config, high_watermark=config.low_watermark)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._swarm, name)


def aim_auto_connector_at_low_watermark(host: Any) -> None:
    """Make py-libp2p's auto-connector dial towards the node's low watermark, not past it.

    Upstream: ``libp2p.network.auto_connector.AutoConnector.maybe_connect`` (0.8.1) says it keeps
    the connection count above the low watermark, but aims at the midpoint of the low and high
    watermarks: with the node's 8 and 192 that is 100, so a node of a small network logged
    "initiating 100 new dials" every 10 s (every 30 s once it has ``min_connections``) and dialed
    up to 32 peers of its peerstore at a time, whatever it had learned of them. The high watermark
    must stay high (the pruner closes connections above it: a provider serves many requesters), so
    the auto-connector alone is shown a copy of the settings whose high watermark is the low one.
    """
    connector = host.get_network().auto_connector
    connector.swarm = _LowWatermarkView(host.get_network())


MAX_ADDRS_PER_PEER = 16  # addresses kept per peer, and in a signed peer record taken from one


def bounded_peerstore() -> Any:
    """py-libp2p's ``PeerStore`` keeping at most :data:`MAX_ADDRS_PER_PEER` addresses per peer.

    Upstream: ``libp2p.peer.peerstore.PeerStore`` (0.8.1) keeps every address it is told of
    (identify's listen addresses, DHT answers, signed peer records), deduplicating each against all
    the others (quadratic), and the DHT hands them on: to anyone whose lookup comes near the peer
    (FIND_NODE and GET_PROVIDERS list up to 20 closer peers with all their addresses) and, as the
    peer's signed record, in every GET_PROVIDERS answer naming it. A peer that signed a record of
    2,000 third-party addresses made each 21-byte GET_PROVIDERS for its key answer 89 KB. Here a
    peer's further addresses are dropped once it has 16, and a signed record naming more than 16
    is refused whole (it cannot be cut: its signature covers them all).
    """
    from libp2p.peer.peerstore import PeerStore

    class BoundedPeerStore(PeerStore):
        def add_addrs(self, peer_id: Any, addrs: Any, ttl: int = 0) -> None:
            data = self.peer_data_map.get(peer_id)
            known = list(data.get_addrs()) if data is not None else []
            fresh: list[Any] = []
            for addr in addrs:
                if len(known) + len(fresh) >= MAX_ADDRS_PER_PEER:
                    break
                if addr not in known and addr not in fresh:
                    fresh.append(addr)
            super().add_addrs(peer_id, fresh, ttl)  # with none: the known ones' TTL is renewed

        def consume_peer_record(self, envelope: Any, ttl: int) -> bool:
            try:
                named = len(envelope.record().addrs)
            except Exception:  # noqa: BLE001 - undecodable: as upstream, not taken
                return False
            return named <= MAX_ADDRS_PER_PEER and bool(super().consume_peer_record(envelope, ttl))

    return BoundedPeerStore()


MAX_DHT_REQUEST = 16 * 1024  # bytes: a DHT request names a key, or a provider and its addresses
MAX_PROVIDER_ADDRS = 4  # addresses kept in a provider record: those the provider was seen at
MAX_PROVIDERS_PER_KEY = 20  # the library's k
MAX_KEYS_PER_PROVIDER = 32  # keys one peer may provide here (a node offers one key per workload)
MAX_PROVIDER_RECORDS = 4096  # in all


def bounded_provider_store(host: Any, peer_routing: Any) -> Any:
    """py-libp2p's Kademlia ``ProviderStore`` with every record bounded, and addresses checked.

    Upstream: ``libp2p.kad_dht.provider_store.ProviderStore`` (0.8.1) and the ADD_PROVIDER handler
    of ``kad_dht.KadDHT`` keep, for 48 h, every address a provider names (a request may be 4 MiB),
    on any number of keys: 6 identities sending 10 ADD_PROVIDER of 20,000 addresses each grew a
    node by 21.7 MB per identity, and a 37-byte GET_PROVIDERS then returned 200 KB listing those
    20,000 third-party addresses (~5,400x). A key's 20 slots went to whoever came first. Here:

    * a request is at most :data:`MAX_DHT_REQUEST` (the handler parses every address it holds);
    * a record keeps at most :data:`MAX_PROVIDER_ADDRS` addresses, and only those on an IP the
      provider is connected to this node from (the ADD_PROVIDER sender is the provider: upstream
      checks that); a record learned of a provider this node is not connected to keeps none;
    * :data:`MAX_PROVIDERS_PER_KEY` providers per key, :data:`MAX_KEYS_PER_PROVIDER` keys per
      provider, :data:`MAX_PROVIDER_RECORDS` records in all; when a key or the store is full, the
      oldest record of a provider not connected now makes room, else the new one is refused.
    """
    import importlib

    from libp2p.kad_dht.provider_store import ProviderStore
    from libp2p.peer.peerinfo import PeerInfo

    importlib.import_module("libp2p.kad_dht.kad_dht").MAX_DHT_MESSAGE_SIZE = MAX_DHT_REQUEST  # type: ignore[attr-defined]

    class BoundedProviderStore(ProviderStore):
        refused = 0

        def add_provider(self, key: bytes, provider: Any) -> None:
            if not provider or not provider.peer_id:
                return
            if provider.peer_id != self.local_peer_id:
                provider = PeerInfo(provider.peer_id, seen_addrs(self.host, provider.peer_id, provider.addrs))
                if not self._room_for(key, str(provider.peer_id)):
                    self.refused += 1
                    return
            super().add_provider(key, provider)

        def _room_for(self, key: bytes, peer: str) -> bool:
            records = self.providers.get(key, {})
            if peer in records:
                return True
            if sum(peer in r for r in self.providers.values()) >= MAX_KEYS_PER_PROVIDER:
                return False
            if len(records) >= MAX_PROVIDERS_PER_KEY and not self._evict([(key, p) for p in records]):
                return False
            everything = [(k, p) for k, r in self.providers.items() for p in r]
            return len(everything) < MAX_PROVIDER_RECORDS or self._evict(everything)

        def _evict(self, candidates: list[tuple[bytes, str]]) -> bool:
            """Drop the oldest record among ``candidates`` whose provider is not connected now."""
            connected = {str(p) for p in self.host.get_connected_peers()} | {str(self.local_peer_id)}
            gone = [(self.providers[k][p].timestamp, k, p) for k, p in candidates if p not in connected]
            if not gone:
                return False
            _, key, peer = min(gone)
            del self.providers[key][peer]
            if not self.providers[key]:
                del self.providers[key]
            return True

    return BoundedProviderStore(host, peer_routing)


def seen_addrs(host: Any, peer: Any, addrs: Any) -> list[Any]:
    """Of ``addrs``, those on an IP ``peer`` is connected to ``host`` from: each once, at most
    :data:`MAX_PROVIDER_ADDRS`."""
    ips = set()
    conns = host.get_network().connections.get(peer)
    for conn in conns if isinstance(conns, list) else [conns] if conns else []:
        try:
            ips.add(_ip(conn.muxed_conn.secured_conn.get_remote_address()[0]))
        except Exception:  # noqa: BLE001 - not a TCP connection
            continue
    out: list[Any] = []
    for addr in addrs:
        if len(out) >= MAX_PROVIDER_ADDRS:
            break
        if addr not in out and _addr_ip(addr) in ips - {None}:
            out.append(addr)
    return out


def _ip(text: str) -> str | None:
    import ipaddress

    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _addr_ip(addr: Any) -> str | None:
    for proto in ("ip4", "ip6"):
        try:
            return _ip(addr.value_for_protocol(proto))
        except Exception:  # noqa: BLE001 - not in this address
            continue
    return None
