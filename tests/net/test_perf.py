"""libp2p's perf protocol, served within bounds (p2pnode.net.perf), to py-libp2p's own client."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from p2pnode.net.perf import MAX_BYTES, PERF_PROTOCOL
from tests.integration.hostile import hostile_peer
from tests.integration.swarm import node_config, start_node


async def _client_download(host: Any, addr: str, up: int, down: int) -> dict[str, Any]:
    from libp2p.perf.perf_service import PerfService
    from multiaddr import Multiaddr

    final: dict[str, Any] = {}
    async for out in PerfService(host).measure_performance(Multiaddr(addr), up, down):
        if out["type"] == "final":
            final = dict(out)
    return final


async def test_py_libp2ps_perf_client_uploads_and_downloads_within_the_bounds() -> None:
    async with trio.open_nursery() as nursery:
        node = (await start_node(nursery, node_config(perf=True, provide=False))).node
        async with hostile_peer(node) as client:
            with trio.fail_after(60):
                final = await _client_download(client.host, node.addrs()[0], 3 << 20, (5 << 20) + 3)
            assert (final["upload_bytes"], final["download_bytes"]) == (3 << 20, (5 << 20) + 3)
            assert node.perf is not None and node.perf.served == (5 << 20) + 3
            stream = await client.stream(PERF_PROTOCOL)  # more than a stream may have: refused
            await stream.write((MAX_BYTES + 1).to_bytes(8, "big"))
            from libp2p.network.stream.exceptions import StreamError

            with pytest.raises(StreamError), trio.fail_after(10):
                await stream.read(1)
            assert node.penalties.score(client.peer_id, node._clock()) > 0
        nursery.cancel_scope.cancel()


async def test_a_node_serves_no_perf_unless_asked_to() -> None:
    async with trio.open_nursery() as nursery:
        node = (await start_node(nursery, node_config(provide=False))).node
        assert node.perf is None
        async with hostile_peer(node) as client:
            with pytest.raises(Exception, match="(?i)failed to open a stream|protocol"):
                await client.stream(PERF_PROTOCOL)
        nursery.cancel_scope.cancel()
