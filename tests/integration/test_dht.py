"""Finding the network from one peer: the market's DHT (Kademlia, py-libp2p) on loopback."""

from __future__ import annotations

from p2pnode.net import dht
from tests.integration.swarm import all_list_all, swarm


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
