"""``status`` separates what the operator chose (notes) from what is wrong (problems, each with
its fix), on real nodes on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.control import views
from tests.integration.swarm import node_config, start_node


async def test_deliberate_choices_are_notes_and_a_lone_node_is_told_what_to_do() -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_config(provide=False, use_gpu=False))
        s = a.node.status_view()
        assert any("--no-provide" in n for n in s["notes"]) and any("loopback" in n for n in s["notes"])
        assert not any("GPU" in r or "provid" in r for r in s["reasons"])
        (lonely,) = [r for r in s["reasons"] if r.startswith("no peers")]
        assert lonely.startswith("no peers, and no network to join -- fix: set network = ")
        assert "bootstrap = " in lonely and "\n" not in lonely
        b = await start_node(nursery, node_config(use_gpu=False, bootstrap=[a.node.addrs()[0]]))
        await b.node.wait_until(lambda: bool(b.node.host.get_connected_peers()), timeout=10)
        s = b.node.status_view()
        assert s["state"] == "healthy", s["reasons"]
        assert "CPU only (--no-gpu)" in s["notes"]
        nursery.cancel_scope.cancel()


def test_a_full_disk_and_a_huge_ledger_are_problems_with_fixes(tmp_path: Path, monkeypatch: Any) -> None:
    assert views._disk_problems(tmp_path) == []
    (tmp_path / "ledger.sqlite").write_bytes(b"x" * 2048)
    monkeypatch.setattr(views, "DISK_FREE_MIN", 1 << 62)
    monkeypatch.setattr(views, "LEDGER_MAX", 1024)
    disk, ledger = views._disk_problems(tmp_path)
    assert disk.startswith("disk nearly full") and "fix:" in disk
    assert ledger.startswith("ledger is") and "ledger export" in ledger


@pytest.mark.parametrize("addr,loop", [("/ip4/127.0.0.3/tcp/1", True), ("/ip6/::1/tcp/1", True),
                                       ("/ip4/192.0.2.1/tcp/1", False)])
def test_loopback_addresses_are_recognised(addr: str, loop: bool) -> None:
    assert views._loopback(addr) is loop


async def test_a_paused_provider_takes_no_new_jobs_and_says_so_until_resumed() -> None:
    from p2pnode.services.requester import JobError
    from tests.integration.swarm import swarm

    params = {"m": 8, "n": 8, "k": 8, "dtype": "int8", "seed": 1}
    async with swarm(2, workloads=["matmul"], use_gpu=False) as nodes:
        requester, provider = (r.node for r in nodes)
        me = provider.identity.peer_id

        def offers() -> int:
            e = next((e for e in requester.table.entries(requester._clock()) if e.ad.peer_id == me), None)
            return -1 if e is None else len(e.ad.offers)

        await requester.wait_until(lambda: offers() > 0, timeout=20)
        old_ad = next(e.ad for e in requester.table.entries(requester._clock()) if e.ad.peer_id == me)
        answer = await provider.views.handle({"cmd": "pause"})
        assert answer["paused"] and answer["operator"] and not answer["off_schedule"] and answer["running"] == 0
        assert any(n.startswith("paused") for n in provider.status_view()["notes"])
        await requester.wait_until(lambda: offers() == 0, timeout=20)  # the new ad offers nothing
        with pytest.raises(JobError, match="no provider in the market offers matmul"):
            await requester.jobs.submit("matmul", params, max_price=10**6, deadline_s=20)
        # a requester that asks anyway (it kept the old ad) is declined
        rec = await requester.jobs.submit("matmul", params, max_price=10**6, deadline_s=20, only=[old_ad])
        declined = next(e for e in rec.events if e["event"] == "no_provider")["declines"]
        assert rec.state == "no_provider" and declined == {provider.peer_id: "busy"}
        assert provider.executor is not None and provider.executor.running == 0  # busy only by the pause
        assert (await provider.views.handle({"cmd": "resume"}))["paused"] is False
        await requester.wait_until(lambda: offers() > 0, timeout=20)
        rec = await requester.jobs.submit("matmul", {**params, "seed": 2}, max_price=10**6, deadline_s=20)
        assert rec.state == "done" and rec.peer == provider.peer_id


async def test_a_node_whose_own_ad_is_refused_says_so_as_an_error() -> None:
    """A price the ad cannot carry (past the config's check, as a bug elsewhere could make it) is
    not a silent absence from every table: status says the node's own ad is refused."""
    config = node_config(workloads=["matmul"], use_gpu=False).with_(price=10**40)
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, config)
        await a.node.wait_until(lambda: bool(a.node.market.own_refused), timeout=10)
        s = a.node.status_view()
        assert s["state"] == "error"
        (refused,) = [r for r in s["reasons"] if "own capacity ad is refused" in r]
        assert "ad.offers[0].price" in refused and "fix:" in refused
        assert a.node.identity.peer_id not in a.node.table
        nursery.cancel_scope.cancel()
