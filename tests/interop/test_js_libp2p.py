"""A js-libp2p peer joins the network, in both dial directions, and reads and writes its gossip."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from p2pnode.node import Node
from tests.integration.swarm import all_list_all, node_config, start_node, swarm
from tests.interop.jspeer import JsPeer, js_peer

EXPECTED_PROTOCOLS = {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/meshsub/1.1.0", "/meshsub/1.0.0"}


def _base(addr: str) -> str:
    return addr.split("/p2p/")[0]


async def _check_js_sees_node(js: JsPeer, node: Node) -> None:
    ident = await js.wait_event(lambda e: e.get("event") == "identify" and e["peer"] == node.peer_id)
    assert EXPECTED_PROTOCOLS <= set(ident["protocols"])
    assert {_base(a) for a in node.addrs()} <= set(ident["addrs"])
    ping = await js.command("ping", peer=node.peer_id, count=3)
    assert len(ping["rtts"]) == 3 and all(r >= 0 for r in ping["rtts"])
    ad = await js.wait_event(lambda e: e.get("event") == "ad" and e.get("peer") == node.peer_id)
    assert ad["verified"] is True, ad
    assert ad["from"] == node.peer_id
    assert ad["cores"] == node.hardware.cpu.cores  # type: ignore[union-attr]
    assert ad["offers"] == list(node.config.workloads)


async def test_js_peer_dials_the_node() -> None:
    async with trio.open_nursery() as nursery:
        node = (await start_node(nursery, node_config())).node
        async with js_peer(dial=[node.addrs()[0]]) as js:
            await _check_js_sees_node(js, node)
            assert js.peer in {p["peer"] for p in node.peers_view()}
        nursery.cancel_scope.cancel()


async def test_node_dials_the_js_peer() -> None:
    async with js_peer() as js, trio.open_nursery() as nursery:
        node = (await start_node(nursery, node_config(bootstrap=[js.addrs[0]]))).node
        await _check_js_sees_node(js, node)
        # the node identified the js peer too
        from libp2p.peer.id import ID

        with trio.fail_after(10):
            while "/meshsub/1.1.0" not in node.host.get_peerstore().get_protocols(ID.from_base58(js.peer)):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def _wait_js_sees_subscriber(js: JsPeer, node: Node) -> None:
    with trio.fail_after(20):
        while node.peer_id not in (await js.command("mesh"))["topic_peers"]:
            await trio.sleep(0.1)


@pytest.mark.parametrize("direction", ["js dials node", "node dials js"])
async def test_js_ads_reach_the_network_and_its_malformed_ads_do_not(direction: str) -> None:
    async with trio.open_nursery() as nursery:
        async with AsyncExitStack() as stack:
            if direction == "js dials node":
                b = (await start_node(nursery, node_config())).node
                js = await stack.enter_async_context(js_peer(dial=[b.addrs()[0]]))
            else:
                js = await stack.enter_async_context(js_peer())
                b = (await start_node(nursery, node_config(bootstrap=[js.addrs[0]]))).node
            c = (await start_node(nursery, node_config(bootstrap=[b.addrs()[0]]))).node
            await _wait_js_sees_subscriber(js, b)
            from p2pnode.wire.peer_id import from_base58

            js_id = from_base58(js.peer)
            await js.command("publish_ad", seq=1)
            await c.wait_until(lambda: js_id in c.table, timeout=20)  # via B: valid, so forwarded
            assert b.table.get(js_id).ad.cpu.model == "js-libp2p peer"  # type: ignore[union-attr]
            await js.command("publish", hex=b"not an ad".hex())
            await js.command("publish", hex=(b"\xa1" * 5000).hex())
            await js.command("publish_ad", seq=2)  # sentinel, sent last
            await c.wait_until(lambda: c.table.get(js_id).ad.seq == 2, timeout=20)  # type: ignore[union-attr]
            assert b.rejected == {"malformed": 1, "oversized": 1}
            assert c.rejected == {}
            assert js.peer not in {p["peer"] for p in c.peers_view()}  # C heard it only through B
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("js_count", [2])
async def test_mixed_swarm_every_ad_reaches_every_js_peer_and_survives_a_leave(js_count: int) -> None:
    async with swarm(3, line=True, ad_interval=2.0, ad_ttl=6.0) as running:
        nodes = [r.node for r in running]
        await nodes[0].wait_until(lambda: all_list_all(running), timeout=30)
        async with js_peer(dial=[nodes[0].addrs()[0]]) as js1, js_peer(dial=[nodes[2].addrs()[0]]) as js2:
            for js in (js1, js2):
                for n in nodes:
                    ad = await js.wait_event(lambda e, n=n: e.get("event") == "ad" and e.get("peer") == n.peer_id)
                    assert ad["verified"]
            assert all(a["verified"] for a in js1.ads(verified=None) + js2.ads(verified=None))
            # js1 leaves; the mesh holds: js2 keeps receiving fresh ads from every node
            await js1.command("stop")
            mark = len(js2.events)
            for n in nodes:
                await js2.wait_event(lambda e, n=n: e.get("event") == "ad" and e.get("peer") == n.peer_id
                                     and js2.events.index(e) >= mark)
            await nodes[0].wait_until(lambda: all_list_all(running), timeout=10)


async def test_js_libp2p_takes_a_perf_download_from_a_node_that_serves_perf_and_none_from_others() -> None:
    """libp2p's perf protocol, js-libp2p's Noise and yamux reading what ours write (with the
    node's larger yamux frames)."""
    async with trio.open_nursery() as nursery:
        on = (await start_node(nursery, node_config(perf=True, provide=False))).node
        off = (await start_node(nursery, node_config(provide=False))).node
        async with js_peer(dial=[on.addrs()[0], off.addrs()[0]]) as js:
            for node in (on, off):
                await js.wait_event(lambda e, node=node: e.get("event") == "identify" and e["peer"] == node.peer_id)
            reply = await js.command("perf", peer=on.peer_id, bytes=(8 << 20) + 5)
            assert reply["bytes"] == (8 << 20) + 5
            assert on.perf is not None and on.perf.served == (8 << 20) + 5
            with pytest.raises(AssertionError, match="perf failed"):
                await js.command("perf", peer=off.peer_id, bytes=1024)
        nursery.cancel_scope.cancel()


async def test_a_node_takes_large_transfers_from_js_libp2p_whole() -> None:
    """js-libp2p's yamux sends frames as large as its window: a node must never grant it more than
    it accepts in one frame (it once granted 17-21 MB, refused the frame and dropped the connection
    about one 256 MiB transfer in two)."""
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2pnode.net.host import parse_multiaddr
    from p2pnode.net.perf import PERF_PROTOCOL

    async with trio.open_nursery() as nursery:
        node = (await start_node(nursery, node_config(provide=False))).node
        async with js_peer(env={"P2P_PERF": "1"}) as js:
            addr = next(a for a in js.addrs if "/ip4/127.0.0.1/" in a)
            info = info_from_p2p_addr(parse_multiaddr(addr if "/p2p/" in addr else f"{addr}/p2p/{js.peer}"))
            await node.host.connect(info)
            for _ in range(3):
                stream = await node.host.new_stream(info.peer_id, [PERF_PROTOCOL])
                await stream.write((256 << 20).to_bytes(8, "big"))
                await stream.close_write()
                got = 0
                with trio.fail_after(60):
                    try:
                        while True:
                            got += len(await stream.read(1 << 20))
                    except StreamEOF:
                        pass
                assert got == 256 << 20
                assert info.peer_id in node.host.get_network().connections
        nursery.cancel_scope.cancel()
