"""The dashboard of a real node on loopback: what it serves, and each request it refuses."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from p2pnode.config import DEFAULT_UI
from p2pnode.errors import ConfigError, NetworkSetupError
from p2pnode.web import server as web_server
from p2pnode.web.guard import TOKEN_FILE, cookie_name
from p2pnode.web.live import STATIC
from tests.integration.swarm import node_config, start_node
from tests.web.http import post_json, request, request_sync

EXE = [sys.executable, "-m", "p2pnode"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}


async def _node(nursery: trio.Nursery, **flags: object):  # type: ignore[no-untyped-def]
    r = await start_node(nursery, node_config(ui="127.0.0.1:0", **flags))
    token = (r.node.config.data_dir / TOKEN_FILE).read_text().strip()
    return r, r.node.ui_address, token


async def test_every_request_needs_the_token() -> None:
    async with trio.open_nursery() as nursery:
        r, address, token = await _node(nursery)
        for path in ("/", "/api/status", "/api/jobs", "/api/logs", "/api/events", "/static/dashboard.js",
                     "/static/vendor/uPlot.iife.min.js", "/nothing"):
            answer = await request(address, "GET", path)
            assert answer.status == 401, path
            assert token.encode() not in answer.body
        answer = await request(address, "GET", "/api/status", {"X-P2PNode-Token": token})
        assert answer.status == 200 and answer.json()["peer"] == r.node.peer_id
        r.stop()


async def test_login_gives_a_cookie_that_reads_but_cannot_change() -> None:
    async with trio.open_nursery() as nursery:
        r, address, token = await _node(nursery)
        assert (await request(address, "GET", "/login?token=wrong")).status == 401
        login = await request(address, "GET", f"/login?token={token}")
        assert login.status == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"].split(";")[0]
        assert cookie.startswith(cookie_name(int(address.rpartition(":")[2])) + "=")
        assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=Strict" in login.headers["set-cookie"]
        page = await request(address, "GET", "/", {"Cookie": cookie})
        assert page.status == 200 and b"p2pnode-token" in page.body
        # a form another site posts carries the cookie, never the header: refused, and nothing changes
        headers, body = post_json({})
        refused = await request(address, "POST", "/api/pause", {**headers, "Cookie": cookie}, body)
        assert refused.status == 403
        assert not r.node.market.operator_paused
        done = await request(address, "POST", "/api/pause", {**headers, "X-P2PNode-Token": token}, body)
        assert done.status == 200 and done.json()["paused"] is True
        assert r.node.market.operator_paused
        done = await request(address, "POST", "/api/resume", {**headers, "X-P2PNode-Token": token}, body)
        assert done.json()["paused"] is False and not r.node.market.operator_paused
        r.stop()


async def test_dns_rebinding_and_cross_origin_changes_are_refused() -> None:
    async with trio.open_nursery() as nursery:
        r, address, token = await _node(nursery)
        port = address.rpartition(":")[2]
        rebound = await request(address, "GET", "/api/status", {"Host": f"attacker.example:{port}",
                                                                "X-P2PNode-Token": token})
        assert rebound.status == 403 and b"Host" in rebound.body
        headers, body = post_json({})
        cross = await request(address, "POST", "/api/pause", {**headers, "X-P2PNode-Token": token,
                                                              "Origin": "http://attacker.example"}, body)
        assert cross.status == 403 and not r.node.market.operator_paused
        plain = await request(address, "POST", "/api/pause", {"X-P2PNode-Token": token,
                                                              "Content-Type": "text/plain"}, b"{}")
        assert plain.status == 415 and not r.node.market.operator_paused
        big = await request(address, "POST", "/api/sharing", {**headers, "X-P2PNode-Token": token},
                            b'{"price": 1, "x": "' + b"a" * 20_000 + b'"}')
        assert big.status == 400 and r.node.config.price != 1
        r.stop()


async def test_sharing_changes_at_run_time_and_the_ad_says_so() -> None:
    async with trio.open_nursery() as nursery:
        r, address, token = await _node(nursery, price=100)
        auth = {"X-P2PNode-Token": token}
        headers, body = post_json({"price": 250, "workloads": ["matmul", "infer"], "schedule": []})
        answer = await request(address, "POST", "/api/sharing", {**headers, **auth}, body)
        assert answer.status == 200, answer.body
        assert answer.json()["price"] == 250 and answer.json()["workloads"] == ["matmul", "infer"]
        own = next(e for e in r.node.market.view() if e["peer"] == r.node.peer_id)
        assert {o["wl"] for o in own["offers"]} == {"matmul", "infer"}
        assert {o["price"] for o in own["offers"]} == {250}
        # a bad value is one line, and nothing changes
        headers, body = post_json({"price": -5})
        bad = await request(address, "POST", "/api/sharing", {**headers, **auth}, body)
        assert bad.status == 400 and "price" in bad.json()["error"]
        headers, body = post_json({"listen": ["/ip4/0.0.0.0/tcp/1"]})
        bad = await request(address, "POST", "/api/sharing", {**headers, **auth}, body)
        assert bad.status == 400 and "cannot change while the node runs" in bad.json()["error"]
        assert r.node.config.price == 250
        r.stop()


async def test_the_event_stream_sends_the_sections() -> None:
    async with trio.open_nursery() as nursery:
        r, address, token = await _node(nursery)
        answer = await request(address, "GET", "/api/events", {"X-P2PNode-Token": token}, read=4096)
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/event-stream")
        names = set(re.findall(rb"^event: (\w+)$", answer.body, re.MULTILINE))
        assert {b"status", b"gpus", b"jobs"} <= names
        r.stop()


def test_every_asset_is_served_by_the_node() -> None:
    """No page loads anything from elsewhere: every src and href is a path of this server."""
    for page in STATIC.glob("*.html"):
        text = page.read_text()
        for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
            assert ref.startswith(("/static/", "#")) or ref == "data:,", f"{page.name}: {ref}"
    for script in STATIC.glob("*.js"):
        assert not re.search(r"https?://", script.read_text()), script.name


async def test_answers_forbid_framing_and_foreign_scripts() -> None:
    async with trio.open_nursery() as nursery:
        r, address, token = await _node(nursery)
        answer = await request(address, "GET", "/", {"X-P2PNode-Token": token})
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["x-frame-options"] == "DENY"
        r.stop()


def test_a_dashboard_on_another_host_needs_ui_public(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="ui_public"):
        node_config(data_dir, ui="0.0.0.0:7464")
    assert node_config(data_dir, ui="0.0.0.0:7464", ui_public=True).ui == "0.0.0.0:7464"


def test_the_default_port_falls_back_when_taken_and_another_does_not() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = f"127.0.0.1:{holder.getsockname()[1]}"
    try:
        sock = web_server.bind(taken, any_port_if_taken=True)
        assert web_server.address_of(sock) != taken
        sock.close()
        with pytest.raises(NetworkSetupError, match="cannot serve the dashboard"):
            web_server.bind(taken, any_port_if_taken=False)
    finally:
        holder.close()
    assert DEFAULT_UI.startswith("127.0.0.1:")


def _run_node(data_dir: Path, *flags: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([*EXE, "run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
                             "--no-dht", "--metrics", "", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    assert proc.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("listening on") for line in lines):
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    return proc, lines


def test_p2pnode_ui_prints_the_login_address(data_dir: Path) -> None:
    proc, lines = _run_node(data_dir, "--ui", "127.0.0.1:0")
    try:
        assert proc.stdout is not None
        lines.append(proc.stdout.readline())
        said = next(line for line in lines if line.startswith("dashboard on http://127.0.0.1:"))
        ui = subprocess.run([*EXE, "ui", "--data-dir", str(data_dir)], capture_output=True, text=True, env=ENV,
                            timeout=60, check=False)
        assert ui.returncode == 0, ui.stderr
        login = ui.stdout.strip()
        token = (data_dir / TOKEN_FILE).read_text().strip()
        assert login == f"{said.split()[2]}login?token={token}"
        address = login.split("//")[1].split("/")[0]
        answer = request_sync(address, "GET", "/login?token=" + token)
        assert answer.status == 303 and "set-cookie" in answer.headers
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_p2pnode_ui_says_when_there_is_no_dashboard(data_dir: Path) -> None:
    ui = subprocess.run([*EXE, "ui", "--data-dir", str(data_dir)], capture_output=True, text=True, env=ENV,
                        timeout=60, check=False)
    assert ui.returncode == 1 and ui.stderr.startswith("p2pnode: error: no node is running")
    proc, lines = _run_node(data_dir, "--no-ui")
    try:
        assert not any("dashboard" in line for line in lines)
        ui = subprocess.run([*EXE, "ui", "--data-dir", str(data_dir)], capture_output=True, text=True, env=ENV,
                            timeout=60, check=False)
        assert ui.returncode == 1 and "runs without its dashboard" in ui.stderr and ui.stderr.count("\n") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
