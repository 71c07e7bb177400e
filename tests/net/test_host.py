"""The node's host speaks Noise + Yamux only, and standard identify and ping."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.host.ping import ID as PING
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2pnode.identity import Identity
from p2pnode.net.host import NOISE, YAMUX, parse_multiaddr
from tests.integration.swarm import node_config, start_node

LISTEN = [parse_multiaddr("/ip4/127.0.0.1/tcp/0")]


def foreign_host(security: str, muxer: str) -> Any:
    kp = Identity.generate().libp2p_keypair()
    sec = (
        {PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)}
        if security == "plaintext"
        else {NOISE: NoiseTransport(libp2p_keypair=kp, noise_privkey=new_x25519().private_key)}
    )
    mux = {MPLEX_PROTOCOL_ID: Mplex} if muxer == "mplex" else {YAMUX: Yamux}
    return new_host(key_pair=kp, sec_opt=sec, muxer_opt=mux)  # type: ignore[arg-type]


@pytest.mark.parametrize(("security", "muxer"), [("plaintext", "yamux"), ("noise", "mplex")])
async def test_peers_without_noise_and_yamux_are_refused(security: str, muxer: str) -> None:
    async with trio.open_nursery() as nursery:
        node = (await start_node(nursery, node_config())).node
        other = foreign_host(security, muxer)
        async with other.run(LISTEN):
            with pytest.raises(Exception):  # noqa: B017 - the library's dial errors vary
                with trio.fail_after(10):
                    await other.connect(info_from_p2p_addr(parse_multiaddr(node.addrs()[0])))
            assert other.get_id() not in node.host.get_network().connections
        nursery.cancel_scope.cancel()


async def test_a_standard_peer_connects_identifies_and_pings() -> None:
    async with trio.open_nursery() as nursery:
        node = (await start_node(nursery, node_config())).node
        other = foreign_host("noise", "yamux")
        async with other.run(LISTEN):
            await other.connect(info_from_p2p_addr(parse_multiaddr(node.addrs()[0])))
            stream = await other.new_stream(node.host.get_id(), [PING])
            rtt_ms = await perform_ping_roundtrip(stream)
            assert rtt_ms >= 0
            await stream.close()
            with trio.fail_after(10):  # identify runs after connect
                while True:
                    protocols = set(other.get_peerstore().get_protocols(node.host.get_id()))
                    if "/meshsub/1.2.0" in protocols:
                        break
                    await trio.sleep(0.05)
            assert {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/meshsub/1.1.0", "/meshsub/1.0.0"} <= protocols
            addrs = {str(a) for a in other.get_peerstore().addrs(node.host.get_id())}
            assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)
        nursery.cancel_scope.cancel()


def test_advertised_addresses_expand_wildcards_and_never_name_an_unspecified_one() -> None:
    from p2pnode.net.host import advertised

    me = Identity.generate().peer_id_b58
    got = advertised(["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001", "/ip4/127.0.0.5/tcp/9"], [], me)
    assert got and all(a.endswith(f"/p2p/{me}") for a in got)
    assert not any(a.startswith(("/ip4/0.0.0.0/", "/ip6/::/")) for a in got)
    assert f"/ip4/127.0.0.1/tcp/4001/p2p/{me}" in got and f"/ip4/127.0.0.5/tcp/9/p2p/{me}" == got[-1]
    assert len(got) == len(set(got))
    public = "/ip4/203.0.113.7/tcp/4001"
    assert advertised(["/ip4/0.0.0.0/tcp/4001"], [public], me) == [f"{public}/p2p/{me}"]


async def test_a_node_announces_what_it_is_told_in_id_and_in_its_ad() -> None:
    from p2pnode.errors import ConfigError
    from p2pnode.node import Node

    announce = "/ip4/127.0.0.9/tcp/4999"
    async with trio.open_nursery() as nursery:
        r = await start_node(nursery, node_config(listen=["/ip4/127.0.0.1/tcp/0"], announce=[announce]))
        assert r.node.addrs() == [f"{announce}/p2p/{r.node.peer_id}"]
        assert r.node.hardware is not None
        ad = r.node.market.build_ad(r.node.hardware, r.node._clock())
        assert ad.addrs == (f"{announce}/p2p/{r.node.peer_id}",)
        nursery.cancel_scope.cancel()
    with pytest.raises(ConfigError, match="unspecified"):
        Node(node_config(listen=["/ip4/127.0.0.1/tcp/0"], announce=["/ip4/0.0.0.0/tcp/1"]))
