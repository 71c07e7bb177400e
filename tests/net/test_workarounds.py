"""Each workaround: the upstream behaviour it corrects, and that it corrects it."""

from __future__ import annotations

import socket

import pytest

from p2pnode.errors import NetworkSetupError
from p2pnode.identity import Identity
from p2pnode.net import workarounds
from p2pnode.net.host import build_host, parse_multiaddr


async def test_library_alone_binds_a_port_already_in_use() -> None:
    """Upstream: two py-libp2p hosts can listen on one port (SO_REUSEPORT). If this ever fails,
    the library changed and the workaround may go."""
    first = build_host(Identity.generate(), [parse_multiaddr("/ip4/127.0.0.1/tcp/0")])
    async with first.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")]):
        port = first.get_addrs()[0].value_for_protocol("tcp")
        addr = parse_multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
        second = build_host(Identity.generate(), [addr])
        async with second.run([addr]):
            assert second.get_addrs(), "the library refused the duplicate bind itself"
        with pytest.raises(NetworkSetupError, match="in use"):
            workarounds.check_listen_port_free(addr)


def test_port_check_passes_free_ports_and_port_zero() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workarounds.check_listen_port_free(parse_multiaddr(f"/ip4/127.0.0.1/tcp/{port}"))
    workarounds.check_listen_port_free(parse_multiaddr("/ip4/127.0.0.1/tcp/0"))


def test_port_check_catches_a_plain_listener_and_a_missing_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(NetworkSetupError, match="in use"):
            workarounds.check_listen_port_free(parse_multiaddr(f"/ip4/127.0.0.1/tcp/{port}"))
    with pytest.raises(NetworkSetupError, match="no such local address"):
        workarounds.check_listen_port_free(parse_multiaddr("/ip4/192.0.2.1/tcp/4001"))


async def test_negative_dial_cache_is_lifted_before_a_redial() -> None:
    """Upstream: after a failed dial the swarm refuses the peer for 60 s without trying;
    PeerKeeper unblocks it so its own backoff decides."""
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2pnode.net.discovery import PeerKeeper

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = Identity.generate()
    addr = parse_multiaddr(f"/ip4/127.0.0.1/tcp/{port}/p2p/{target.peer_id_b58}")
    host = build_host(Identity.generate(), [parse_multiaddr("/ip4/127.0.0.1/tcp/0")])
    async with host.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")]):
        keeper = PeerKeeper(host, [addr])
        info = info_from_p2p_addr(addr)
        assert await keeper._dial(info) is not None  # nothing listens yet
        with pytest.raises(Exception, match="negative cache"):
            await host.connect(info)  # the library on its own refuses to try again
        server = build_host(target, [parse_multiaddr(f"/ip4/127.0.0.1/tcp/{port}")])
        async with server.run([parse_multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]):
            with pytest.raises(Exception, match="negative cache"):
                await host.connect(info)  # even with the peer back up
            assert await keeper._dial(info) is None  # the keeper lifts the block: it goes through
            assert keeper.is_connected(info.peer_id)


async def test_banning_a_peer_that_is_already_gone_does_not_stop_pubsub() -> None:
    """Upstream's teardown deletes the peer after awaiting its stream's reset; when the peer's own
    disconnect removed it meanwhile, that is a KeyError inside the pubsub service (the node stops)."""
    from libp2p.peer.id import ID
    from libp2p.pubsub.pubsub import Pubsub

    from p2pnode.identity import Identity
    from p2pnode.net.gossip import build_pubsub
    from p2pnode.net.host import build_host, parse_multiaddr

    pubsub, _ = build_pubsub(build_host(Identity.generate(), [parse_multiaddr("/ip4/127.0.0.1/tcp/0")]), heartbeat=1.0)
    pid = ID(Identity.generate().peer_id)

    class GoesAwayOnReset:
        async def reset(self) -> None:
            pubsub.peers.pop(pid, None)  # the disconnect handler ran while we awaited

    pubsub.peers[pid] = GoesAwayOnReset()
    await pubsub._teardown_if_connected(pid)  # the workaround: no KeyError
    assert pid not in pubsub.peers
    pubsub.peers[pid] = GoesAwayOnReset()
    with pytest.raises(KeyError):  # upstream's version, for the record
        await Pubsub._teardown_if_connected(pubsub, pid)


def test_the_dht_speaks_the_markets_protocol_only_with_the_workaround() -> None:
    import importlib

    from libp2p.kad_dht import common
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

    modules = [importlib.import_module(f"libp2p.kad_dht.{m}") for m in workarounds._KAD_MODULES]
    saved = [m.PROTOCOL_ID for m in modules]
    try:
        for m in modules:  # the library as shipped: the prefix is taken, and ignored on the wire
            m.PROTOCOL_ID = common.TProtocol("/ipfs/kad/1.0.0")
        host = build_host(Identity.generate(), [parse_multiaddr("/ip4/127.0.0.1/tcp/0")])
        KadDHT(host, DHTMode.SERVER, protocol_prefix="/p2pnode")  # type: ignore[arg-type]
        assert "/ipfs/kad/1.0.0" in host.get_mux().handlers
        assert workarounds.market_dht_protocol() == "/p2pnode/kad/1.0.0"
        host = build_host(Identity.generate(), [parse_multiaddr("/ip4/127.0.0.1/tcp/0")])
        KadDHT(host, DHTMode.SERVER, protocol_prefix="/p2pnode")  # type: ignore[arg-type]
        handlers = host.get_mux().handlers
        assert "/p2pnode/kad/1.0.0" in handlers and "/ipfs/kad/1.0.0" not in handlers
        from libp2p.kad_dht import peer_routing, provider_store

        assert peer_routing.PROTOCOL_ID == provider_store.PROTOCOL_ID == common.PROTOCOL_ID == "/p2pnode/kad/1.0.0"
    finally:
        for m, value in zip(modules, saved):
            m.PROTOCOL_ID = value
