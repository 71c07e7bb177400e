from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from p2pnode.errors import NetworkSetupError
from p2pnode.identity import KEY_FILE
from p2pnode.market.capacity_table import CapacityTable
from p2pnode.node import Node
from tests.integration.swarm import all_list_all, node_config, start_node, swarm
from tests.telemetry.test_probe import H100, fake_nvml


async def test_five_node_swarm_converges() -> None:
    async with swarm(5, line=True) as nodes:  # a line: ads must be forwarded up to 4 hops
        t0 = time.perf_counter()
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        elapsed = time.perf_counter() - t0
        for r in nodes:
            entries = r.node.market_view()
            assert len(entries) == 5
            assert all(e["offers"][0]["wl"] == "matmul" for e in entries)
            assert all(e["speed"]["matmul_f32_numpy"] > 0 for e in entries)
            assert r.node.rejected == {}
        print(f"5-node line converged {elapsed * 1000:.0f} ms after the last start")


async def test_a_stopped_nodes_ad_expires() -> None:
    async with swarm(3, line=False, ad_interval=2.0, ad_ttl=3.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        gone = nodes[2]
        gone.stop()
        await gone.stopped.wait()
        pid = gone.node.identity.peer_id
        for r in nodes[:2]:
            await r.node.wait_until(lambda r=r: pid not in r.node.table, timeout=10)
        # the others keep refreshing each other
        assert nodes[1].node.identity.peer_id in nodes[0].node.table


async def test_identity_persists_across_restarts(data_dir: trio.Path) -> None:
    config = node_config(data_dir)
    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, config)
        peer = first.node.peer_id
        first.stop()
        await first.stopped.wait()
        key = (data_dir / KEY_FILE).read_bytes()
        second = await start_node(nursery, config)
        assert second.node.peer_id == peer
        assert second.node.addrs()[0].endswith(peer)
        assert (data_dir / KEY_FILE).read_bytes() == key
        second.stop()


async def test_gpu_fields_from_nvml_reach_other_nodes() -> None:
    nv = fake_nvml([H100, dict(H100, name="NVIDIA H100 PCIe", util=5)])
    async with trio.open_nursery() as nursery:
        gpu = await start_node(nursery, node_config(), nvml=nv)
        cpu = await start_node(nursery, node_config(bootstrap=[gpu.node.addrs()[0]]))
        pid = gpu.node.identity.peer_id
        await cpu.node.wait_until(lambda: pid in cpu.node.table, timeout=15)
        ad = cpu.node.table.get(pid).ad  # type: ignore[union-attr]
        assert [g.name for g in ad.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]
        assert ad.gpus[0].memory_total == H100["total"] and ad.gpus[1].utilization == 5
        assert ad.gpus[0].compute_capability == "9.0" and ad.gpus[0].driver == "580.159.04"
        # the GPU is advertised, but the offer names what can really run here: without torch or
        # CuPy (as in CI, where only the NVML library is faked) that is NumPy
        from p2pnode.exec.backends import available

        assert ad.offers[0].backend == available()[0]
        if "cuda" not in available() and "cupy" not in available():
            assert ad.offers[0].backend == "numpy"
        # and the CPU-only node fell back to its CPU
        mine = cpu.node.table.get(cpu.node.identity.peer_id).ad  # type: ignore[union-attr]
        assert mine.gpus == () and mine.cpu.cores >= 1 and mine.offers[0].backend == "numpy"
        assert gpu.node.status_view()["gpus"] == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]
        nursery.cancel_scope.cancel()


async def test_port_in_use_is_a_clear_error() -> None:
    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, node_config())
        port = first.node.addrs()[0].split("/")[4]
        with pytest.raises(NetworkSetupError, match=f"port {port} is in use"):
            await Node(node_config(listen=[f"/ip4/127.0.0.1/tcp/{port}"])).run()
        nursery.cancel_scope.cancel()


async def test_unreachable_bootstrap_is_retried_until_it_comes_up() -> None:
    import socket

    from p2pnode.identity import Identity

    with socket.socket() as s:  # a free port for the late peer
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late = Identity.generate()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{late.peer_id_b58}"
    async with trio.open_nursery() as nursery:
        waiting = await start_node(nursery, node_config(bootstrap=[boot]))
        await waiting.node.wait_until(lambda: boot in waiting.node.keeper.unreachable, timeout=10)  # type: ignore[union-attr]
        status = waiting.node.status_view()
        assert status["state"] == "issues"
        assert any("bootstrap peer unreachable" in r for r in status["reasons"])
        late_node = Node(node_config(listen=[f"/ip4/127.0.0.1/tcp/{port}"]), identity=late)
        await nursery.start(late_node.run)
        await waiting.node.wait_until(
            lambda: late_node.identity.peer_id in waiting.node.table, timeout=20)
        assert boot not in waiting.node.keeper.unreachable  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_lost_bootstrap_peer_is_redialed() -> None:
    async with trio.open_nursery() as nursery:
        hub = await start_node(nursery, node_config())
        spoke = await start_node(nursery, node_config(bootstrap=[hub.node.addrs()[0]]))
        hub_id = hub.node.host.get_id()
        with trio.fail_after(10):
            while hub_id not in spoke.node.host.get_network().connections:
                await trio.sleep(0.05)
        await spoke.node.host.disconnect(hub_id)
        with trio.fail_after(15):
            while hub_id not in spoke.node.host.get_network().connections:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_no_valid_ad_is_dropped_at_the_highest_rate_allowed() -> None:
    """A provider's whole burst budget, published back to back, reaches two hops away intact."""
    async with swarm(3, line=True, ad_interval=60.0, ad_ttl=120.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        src, far = nodes[0].node, nodes[2].node
        burst = int(src.table.limits.rate_burst) - 2  # the start-up ads spent part of it
        accepted_before = far.metrics.ads_accepted._value.get()
        first = far.table.get(src.identity.peer_id).ad.seq  # type: ignore[union-attr]
        for _ in range(burst):
            await src.publish_ad()
        await far.wait_until(
            lambda: far.metrics.ads_accepted._value.get() - accepted_before >= burst, timeout=15)
        assert far.table.get(src.identity.peer_id).ad.seq > first  # type: ignore[union-attr]
        # none refused; an older ad that gossip offers after a sync brought a newer one is stale, and
        # superseded, not lost
        assert set(far.rejected) <= {"stale"} and set(nodes[1].node.rejected) <= {"stale"}


async def test_market_sync_hands_over_the_whole_table_in_one_exchange() -> None:
    # ads every 120 s: within this test, a table refills only through market sync
    async with swarm(4, line=False, ad_interval=120.0, ad_ttl=300.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
        x, y = nodes[3].node, nodes[0].node
        fresh = CapacityTable(x.table.limits)  # as a newcomer's: empty, no history of anyone's ads
        x.table._entries, x.table._high_water, x.table._rates = fresh._entries, fresh._high_water, fresh._rates
        taken = await x.market.sync_from(y.identity.peer_id)
        # every other provider's ad, y's own among them, never x's own (an ad that gossip brought
        # in the meantime is already held, and not taken twice)
        others = {r.node.identity.peer_id for r in nodes[:3]}
        assert {e.ad.peer_id for e in x.table.entries(x._clock())} == others
        assert 1 <= taken <= 3 and x.market.synced >= taken


async def test_a_market_sync_with_forged_ads_costs_its_sender() -> None:
    from p2pnode.net.framing import FramedStream
    from p2pnode.wire import codec
    from p2pnode.wire.names import MARKET_PROTOCOL

    async with swarm(2, line=False, ad_interval=120.0, ad_ttl=300.0) as nodes:
        a, b = (r.node for r in nodes)
        await a.wait_until(lambda: b.identity.peer_id in a.table, timeout=15)
        good = next(e.raw for e in b.table.entries(b._clock()) if e.ad.peer_id == b.identity.peer_id)
        forged = bytearray(good)
        forged[-5] ^= 0xFF  # a flipped bit in the signed body

        async def liar(stream: Any) -> None:
            fs = FramedStream(stream, max_frame=1 << 20)
            await fs.send(codec.encode([bytes(forged), good]))
            await fs.close()

        b.host.set_stream_handler(MARKET_PROTOCOL, liar)
        before = a.penalties.score(b.identity.peer_id, a._clock())
        taken = await a.market.sync_from(b.identity.peer_id)
        assert taken == 0  # the forged ad is refused; the good one is already held (stale, no offence)
        assert a.penalties.score(b.identity.peer_id, a._clock()) > before
        assert sum(a.market.rejected.values()) >= 1  # the forged one, counted
