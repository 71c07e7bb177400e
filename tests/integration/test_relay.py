"""Nodes behind NAT: reachability, a bounded relay service, reservations, and jobs through a relay.

On loopback every node can dial every other, so the private node is told it is private
(``reachability = "private"``): it then advertises only its relayed address, and a requester that
was never connected to it reaches it through the relay. The NAT itself (namespaces and
masquerading, with AutoNAT finding out) is in ``test_nat.py``.
"""

from __future__ import annotations

import trio

from p2pnode.net.relay import is_circuit
from tests.integration.swarm import node_config, start_node

RICH = 10**9


async def test_a_private_provider_serves_a_job_through_a_relay() -> None:
    async with trio.open_nursery() as nursery:
        # no DHT: on loopback its walks would dial the private node's own (here reachable) address
        relay = await start_node(nursery, node_config(reachability="public", provide=False, dht=False))
        raddr = relay.node.addrs()[0]
        private = await start_node(nursery, node_config(reachability="private", bootstrap=[raddr], relays=[raddr],
                                                        dht=False))
        requester = await start_node(nursery, node_config(provide=False, bootstrap=[raddr], dht=False))
        pid = private.node.identity.peer_id
        assert relay.node.relaying is not None and relay.node.relaying.serving
        # the private node reserves a slot and advertises the relayed address, and only that
        await private.node.wait_until(lambda: bool(private.node.relaying.circuit_addrs()), timeout=20)  # type: ignore[union-attr]
        addrs = private.node.addrs()
        assert addrs and all(is_circuit(a) for a in addrs) and relay.node.peer_id in addrs[0]
        status = private.node.status_view()
        assert status["reachability"]["reachability"] == "private"
        assert any("reachable through 1 relay" in n for n in status["notes"])
        await requester.node.wait_until(
            lambda: pid in requester.node.table and requester.node.table.get(pid).ad.addrs != ()
            and all(is_circuit(a) for a in requester.node.table.get(pid).ad.addrs),
            timeout=30)
        assert pid not in {p.to_bytes() for p in requester.node.host.get_connected_peers()}
        rec = await requester.node.jobs.submit("matmul", {"m": 32, "n": 32, "k": 32, "dtype": "int8", "seed": 9},
                                               max_price=RICH, deadline_s=30, k=1)
        assert rec.state == "done" and rec.peer == private.node.peer_id, rec.outcome
        assert rec.outcome.startswith("verified")
        # the job's connection was opened through the relay (on loopback, hole punching may then
        # replace it with a direct one at once)
        assert requester.node.relaying is not None and requester.node.relaying.relayed_dials == 1
        nursery.cancel_scope.cancel()


async def test_a_private_node_without_a_relay_says_how_to_fix_it() -> None:
    async with trio.open_nursery() as nursery:
        other = await start_node(nursery, node_config(relay_service="off", provide=False))
        lonely = await start_node(nursery, node_config(reachability="private", bootstrap=[other.node.addrs()[0]]))
        await lonely.node.wait_until(lambda: bool(lonely.node.host.get_connected_peers()), timeout=10)
        assert lonely.node.addrs() == []  # nothing unroutable in its ad
        status = lonely.node.status_view()
        assert any("behind NAT with no relay slot" in r and "fix:" in r for r in status["reasons"])
        nursery.cancel_scope.cancel()
