"""Finding the network from one peer: the market's DHT (Kademlia, py-libp2p) on loopback."""

from __future__ import annotations

import pytest
import trio

from p2pnode.net import dht
from tests.integration.hostile import hostile_peer
from tests.integration.swarm import all_list_all, node_config, start_node, swarm


async def test_a_node_that_knows_one_peer_finds_the_rest(monkeypatch: object) -> None:
    monkeypatch.setattr(dht, "WALK_INTERVAL_S", 1.0)  # type: ignore[attr-defined]
    monkeypatch.setattr(dht, "FIRST_WALK_S", 0.2)  # type: ignore[attr-defined]
    # a line: each node was told only of the one before it
    async with swarm(5, line=True, dht=True) as nodes:
        first, last = nodes[0].node, nodes[-1].node
        assert first.discovery is not None
        # the market's own DHT protocol, not the IPFS one
        handlers = first.host.get_mux().handlers
        assert "/p2pnode/kad/1.0.0" in handlers and "/ipfs/kad/1.0.0" not in handlers
        await first.wait_until(lambda: len(first.host.get_connected_peers()) == 4, timeout=30)
        assert last.host.get_id() in first.host.get_connected_peers()
        await first.wait_until(lambda: all_list_all(nodes), timeout=30)
        # providers beyond one's connections, each once
        await first.wait_until(lambda: all("matmul" in r.node.discovery.announced for r in nodes), timeout=30)  # type: ignore[union-attr]
        found = await first.discovery.providers("matmul")
        ids = [info.peer_id for info in found]
        assert len(ids) == len(set(ids)) and len(ids) >= 4
        assert {n.node.host.get_id() for n in nodes[1:]} <= set(ids) | {first.host.get_id()}


async def test_without_the_dht_a_line_stays_a_line() -> None:
    """The control: what the DHT adds (no other mechanism connects the ends of a line)."""
    async with swarm(4, line=True, dht=False) as nodes:
        first = nodes[0].node
        assert first.discovery is None
        # gossip still crosses the line; by the time it has (longer than the DHT took above to
        # connect the ends), the first node still knows only its neighbour
        await first.wait_until(lambda: all_list_all(nodes), timeout=30)
        assert first.host.get_connected_peers() == [nodes[1].node.host.get_id()]


async def test_provider_records_keep_a_few_seen_addresses_and_answers_stay_small() -> None:
    """The attack: ADD_PROVIDER naming thousands of addresses (third parties' among them), then a
    GET_PROVIDERS that would hand them all to whoever asks."""
    from libp2p.peer.id import ID

    from p2pnode.net import workarounds

    key = b"p2pnode/offers/matmul"
    third_party = [f"/ip4/127.0.0.77/tcp/{port}" for port in range(1, 1001)]  # nobody listens there
    own = [f"/ip4/127.0.0.1/tcp/{port}" for port in range(20001, 20401)]  # the asker's own IP
    async with trio.open_nursery() as nursery:
        victim = (await start_node(nursery, node_config(provide=False, dht=True))).node
        assert victim.discovery is not None
        store = victim.discovery.dht.provider_store
        async with hostile_peer(victim) as attacker, hostile_peer(victim) as asker:
            echo, _ = await attacker.dht_request(attacker.provider_record(key, third_party + own))
            assert echo.key == key  # taken
            kept = store.get_providers(key)
            assert [p.peer_id for p in kept] == [ID(attacker.peer_id)]
            assert [str(a) for a in kept[0].addrs] == own[:workarounds.MAX_PROVIDER_ADDRS]
            # a signed record of 500 third-party addresses is not taken whole into the peerstore
            record = attacker.signed_record(third_party[:500])
            await attacker.dht_request(attacker.provider_record(key, own[:1], signed_record=record))
            assert len(victim.host.get_peerstore().addrs(ID(attacker.peer_id))) <= workarounds.MAX_ADDRS_PER_PEER
            # a request too large to parse is refused whole
            with pytest.raises(Exception):  # noqa: B017 - the stream is reset under the reader
                await attacker.dht_request(attacker.provider_record(b"p2pnode/offers/big", own * 5))
            assert not store.get_providers(b"p2pnode/offers/big")
            answer, size = await asker.get_providers(key)
            assert len(answer.providerPeers) == 1
            assert all(a.startswith(b"\x04\x7f\x00\x00\x01") for p in answer.providerPeers for a in p.addrs)
            assert size < 2048, size  # the attacker's record, its signed record, the closer peers
        nursery.cancel_scope.cancel()
