"""Market poisoning against real nodes on loopback: one peer's market sync of a thousand made-up
providers (validly signed, the cheapest, the fastest, the longest-lived, all at a third party's
address) neither keeps honest providers out of the market nor stops honest work, and costs the
third party a bounded number of connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from p2pnode import adversary
from p2pnode.market.standing import Standing
from tests.integration.swarm import node_config, start_node

RICH = 10**9
MATMUL = {"m": 32, "n": 32, "k": 64, "dtype": "int8"}
THIRD_PARTY_IP = "127.0.0.9"


@dataclass
class ThirdParty:
    """A listener the test owns: every connection the market points at it is counted."""

    port: int = 0
    connections: int = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=THIRD_PARTY_IP)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._one, listeners)

    async def _one(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        await stream.aclose()  # not a libp2p peer: the dial fails at once


@asynccontextmanager
async def poisoned(monkeypatch: pytest.MonkeyPatch, n: int) -> AsyncIterator[tuple[ThirdParty, object]]:
    async with trio.open_nursery() as nursery:
        third = ThirdParty()
        await nursery.start(third.serve)
        monkeypatch.setattr(adversary, "POISON_ADDR", f"/ip4/{THIRD_PARTY_IP}/tcp/{third.port}")
        poisoner = await start_node(nursery, node_config(adversary=f"poison:{n}", provide=False))
        yield third, poisoner
        nursery.cancel_scope.cancel()


async def _victim_with_an_honest_provider(nursery: trio.Nursery, poisoner: Any) -> tuple[Any, Any]:
    """A requester that bootstraps from the poisoner (its poisoned sync taken), then an honest
    provider that joins it later."""
    victim = await start_node(nursery, node_config(bootstrap=[poisoner.node.addrs()[0]], provide=False))
    v = victim.node
    await v.wait_until(lambda: len(v.table) >= 50, timeout=30)  # the poisoned sync arrived
    # the poisoner's one connection, and the one host its made-up providers name, hold a bounded share
    assert len(v.table) <= min(v.table.limits.max_per_source, v.table.limits.max_per_host) + 1
    honest = await start_node(nursery, node_config(bootstrap=[v.addrs()[0]]))
    await v.wait_until(lambda: honest.node.identity.peer_id in v.table, timeout=30)
    return v, honest.node


async def test_one_poisoned_sync_neither_keeps_honest_providers_out_nor_stops_honest_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with poisoned(monkeypatch, 1023) as (third, poisoner), trio.open_nursery() as nursery:
        v, honest = await _victim_with_an_honest_provider(nursery, poisoner)
        h = honest.identity.peer_id
        assert v.table.standing_of(h) >= Standing.DIRECT
        for _ in range(4):
            rec = await v.jobs.submit("matmul", MATMUL, max_price=RICH, deadline_s=30)
            assert rec.state == "done" and rec.peer == honest.identity.peer_id_b58, rec.outcome
        assert v.table.standing_of(h) is Standing.ANSWERED
        # the made-up providers' address was dialed at most once: then it was set aside
        assert third.connections <= 1, third.connections
        nursery.cancel_scope.cancel()


async def test_the_poison_does_not_spread_through_honest_syncs_and_a_second_requester_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with poisoned(monkeypatch, 1023) as (third, poisoner), trio.open_nursery() as nursery:
        v, honest = await _victim_with_an_honest_provider(nursery, poisoner)
        # a newcomer that knows only the victim: what it takes from the victim's sync is bounded
        other = await start_node(nursery, node_config(bootstrap=[v.addrs()[0]], provide=False))
        o = other.node
        await o.wait_until(lambda: honest.identity.peer_id in o.table and len(o.table) >= 20, timeout=30)
        made_up = [e for e in o.table.entries(o.now()) if e.ad.peer_id not in (honest.identity.peer_id,
                                                                                   v.identity.peer_id)]
        assert len(made_up) <= o.table.limits.max_per_host
        for _ in range(3):
            rec = await o.jobs.submit("matmul", MATMUL, max_price=RICH, deadline_s=30)
            assert rec.state == "done" and rec.peer == honest.identity.peer_id_b58, rec.outcome
        assert third.connections <= 2, third.connections
        nursery.cancel_scope.cancel()
