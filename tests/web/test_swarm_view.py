"""The swarm view's snapshot from nodes' answers, its collector over real control sockets, and the
page behind the guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from p2pnode.control import aclient
from p2pnode.errors import ControlError
from p2pnode.web.swarm_view import Collector, Source, SwarmNode, serve, snapshot
from tests.integration.swarm import node_config, start_node
from tests.web.http import request

PEERS = {i: f"12D3KooWpeer{i}" for i in range(4)}


def _nodes() -> list[SwarmNode]:
    roles = ["provider", "garbage", "provider", "requester"]
    return [SwarmNode(i, r, PEERS[i], Path(f"/nonexistent/{i}/control.sock")) for i, r in enumerate(roles)]


def _answers(listed: dict[int, list[int]], reputation: list[dict[str, Any]] | None = None) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for i, peers in listed.items():
        out[i] = {"status": {"state": "healthy", "providing": i != 3, "peers": 3, "reachability": {"reachability": "public"},
                             "executor": {"running": 0}},
                  "market": [{"peer": PEERS[p]} for p in peers],
                  "jobs": [{"role": "requester", "state": "done", "purpose": "job", "peer": PEERS[1], "job": "ab",
                            "started": 5.0, "ended": 6.0, "checked": "freivalds"},
                           {"role": "requester", "state": "done", "purpose": "calibration", "peer": PEERS[1]}]}
    if reputation is not None:
        out[3]["reputation"] = reputation
    return out


def _source(events: list[dict[str, Any]] | None = None) -> Source:
    return Source("test", _nodes, lambda: list(events or []), lambda: 12.0, 30.0)


def test_a_swarm_is_converged_when_every_node_lists_every_honest_provider() -> None:
    everyone = [0, 1, 2]
    s = snapshot(_source(), _nodes(), _answers({i: everyone for i in range(4)}), {3}, [])
    assert s["converged"] and s["up"] == 4
    assert [r["missing"] for r in s["nodes"]] == [0, 0, 0, 0]
    lagging = _answers({0: everyone, 1: everyone, 2: everyone, 3: [0, 1]})  # the requester misses provider 2
    s = snapshot(_source(), _nodes(), lagging, {3}, [])
    assert not s["converged"] and s["nodes"][3]["missing"] == 1


def test_a_node_that_does_not_answer_is_down_and_does_not_count() -> None:
    answers = _answers({0: [0, 2], 2: [0, 2], 3: [0, 2]})
    answers[1] = {"error": "no node answers"}
    s = snapshot(_source(), _nodes(), answers, {3}, [])
    assert s["nodes"][1]["state"] == "down" and s["nodes"][1]["error"] == "no node answers"
    assert s["up"] == 3 and s["converged"]  # the cheater being down, nobody has to list it


def test_cheaters_caught_and_the_reputation_matrix() -> None:
    rep = [{"peer": PEERS[0], "score": 0.8, "distrusted": False}, {"peer": PEERS[1], "score": 0.1, "distrusted": True,
                                                                   "cheats": 2},
           {"peer": "12D3KooWstranger", "score": 0.5, "distrusted": True}]
    s = snapshot(_source(), _nodes(), _answers({i: [0, 1, 2] for i in range(4)}, rep), {3}, [])
    assert s["cheaters"] == {"nodes": [1], "caught": [1], "by": {"1": [3]}}
    assert s["reputation"]["requesters"] == [3] and s["reputation"]["providers"] == [0, 1, 2]
    assert s["reputation"]["scores"]["3"] == {"0": {"score": 0.8, "distrusted": False, "cheats": 0},
                                              "1": {"score": 0.1, "distrusted": True, "cheats": 2}}
    # jobs: calibrations are not counted; a job awarded to the cheater is marked
    assert s["job_totals"] == {"done": 4}
    assert all(j["cheater"] and j["provider"] == 1 for j in s["jobs"])


def test_events_and_what_the_collector_noticed_are_one_timeline() -> None:
    events = [{"t": 9.0, "event": "kill", "nodes": [1]}, {"t": 1.0, "event": "started"}]
    noticed = [{"t": 9.5, "event": "seen down", "nodes": [1]}]
    s = snapshot(_source(events), _nodes(), _answers({0: [0]}), {3}, noticed)
    assert [e["event"] for e in s["events"]] == ["started", "kill", "seen down"]
    assert (s["elapsed"], s["duration"], s["name"]) == (12.0, 30.0, "test")


async def test_the_collector_asks_real_nodes_and_notices_one_going_down(data_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_config())
        b = await start_node(nursery, node_config(bootstrap=[a.node.addrs()[0]]))
        with trio.fail_after(30):
            while len(a.node.table.entries(a.node.now())) < 2 or len(b.node.table.entries(b.node.now())) < 2:
                await trio.sleep(0.05)
        nodes = [SwarmNode(0, "provider", a.node.peer_id, a.node.config.control_socket),
                 SwarmNode(1, "requester", b.node.peer_id, b.node.config.control_socket)]
        collector = Collector(Source("two", lambda: nodes, list, lambda: 3.0))
        s = await collector.collect()
        assert s["up"] == 2 and s["converged"] and s["reputation"]["requesters"] == [1]
        assert s["nodes"][0]["market"] == 2
        b.stop()
        await b.stopped.wait()
        s = await collector.collect()
        assert s["up"] == 1 and s["nodes"][1]["state"] == "down"
        assert s["events"][-1] == {"t": 3.0, "event": "seen down", "nodes": [1]}
        a.stop()


async def test_the_async_client_says_when_no_node_answers(data_dir: Path) -> None:
    try:
        await aclient.call(data_dir / "control.sock", "status", timeout=2)
    except ControlError as exc:
        assert "no node answers" in str(exc)
    else:
        raise AssertionError("no error")


async def test_the_swarm_page_needs_its_token(tmp_path: Path) -> None:
    source = Source("empty", list, list, lambda: 0.0)
    async with trio.open_nursery() as nursery:
        address, token = await nursery.start(serve, source, tmp_path, "127.0.0.1:0")
        assert (tmp_path / "ui.token").stat().st_mode & 0o777 == 0o600
        assert (await request(address, "GET", "/")).status == 401
        assert (await request(address, "GET", "/api/swarm")).status == 401
        page = await request(address, "GET", "/", {"X-P2PNode-Token": token})
        assert page.status == 200 and b"/static/swarm.js" in page.body
        swarm = await request(address, "GET", "/api/swarm", {"X-P2PNode-Token": token})
        assert swarm.status == 200
        with trio.fail_after(10):
            while not (await request(address, "GET", "/api/swarm", {"X-P2PNode-Token": token})).json():
                await trio.sleep(0.1)
        assert (await request(address, "GET", "/api/swarm", {"X-P2PNode-Token": token})).json()["name"] == "empty"
        nursery.cancel_scope.cancel()
