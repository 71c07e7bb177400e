"""The guard's decisions, one refusal at a time, and its token file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pnode.errors import LocalError
from p2pnode.web.guard import (
    TOKEN_FILE,
    allowed_hosts,
    cookie_name,
    cookie_value,
    decide,
    load_or_create_token,
)

TOKEN = "t0ken-" + "x" * 40
PORT = 7464
HOSTS = allowed_hosts("127.0.0.1", PORT)
GOOD_HOST = {"host": f"127.0.0.1:{PORT}"}
COOKIE = {"cookie": f"other=1; {cookie_name(PORT)}={cookie_value(TOKEN)}"}


def _decide(method: str = "GET", path: str = "/api/status", headers: dict[str, str] | None = None, query: str = "",
            hosts: frozenset[str] | None = HOSTS) -> tuple[int, str]:
    d = decide(method, path, {**GOOD_HOST, **(headers or {})}, query, token=TOKEN, port=PORT, hosts=hosts)
    return d.status, d.why


def test_a_read_without_the_token_is_refused() -> None:
    assert _decide()[0] == 401
    assert _decide(path="/")[0] == 401
    assert _decide(path="/static/app.css")[0] == 401
    assert _decide(headers={"x-p2pnode-token": "wrong"})[0] == 401
    assert _decide(headers={"cookie": f"{cookie_name(PORT)}=wrong"})[0] == 401
    # the cookie of another node's dashboard (another port) is not this one's
    assert _decide(headers={"cookie": f"{cookie_name(PORT + 1)}={cookie_value(TOKEN)}"})[0] == 401


def test_a_read_with_the_token_or_the_session_cookie_passes() -> None:
    assert _decide(headers={"x-p2pnode-token": TOKEN})[0] == 0
    assert _decide(headers={"authorization": f"Bearer {TOKEN}"})[0] == 0
    assert _decide(headers=COOKIE)[0] == 0
    assert _decide(method="HEAD", headers=COOKIE)[0] == 0


def test_the_cookie_is_not_the_token() -> None:
    assert TOKEN not in cookie_value(TOKEN)
    assert cookie_value(TOKEN) != cookie_value(TOKEN + "y")


def test_login_sets_the_cookie_only_for_the_right_token() -> None:
    d = decide("GET", "/login", GOOD_HOST, f"token={TOKEN}", token=TOKEN, port=PORT, hosts=HOSTS)
    assert (d.status, d.cookie) == (303, True)
    assert _decide(path="/login", query="token=nope")[0] == 401
    assert _decide(path="/login")[0] == 401
    assert _decide(method="POST", path="/login", query=f"token={TOKEN}")[0] == 405


def test_a_change_needs_the_token_in_a_header_not_the_cookie() -> None:
    status, why = _decide(method="POST", path="/api/pause", headers=COOKIE)
    assert status == 403 and "X-P2PNode-Token" in why
    assert _decide(method="POST", path="/api/pause", headers={**COOKIE, "x-p2pnode-token": TOKEN})[0] == 0


def test_a_change_from_another_origin_is_refused() -> None:
    headers = {"x-p2pnode-token": TOKEN, "origin": "http://evil.example"}
    assert _decide(method="POST", path="/api/pause", headers=headers)[0] == 403
    headers["origin"] = f"http://127.0.0.1:{PORT}"
    assert _decide(method="POST", path="/api/pause", headers=headers)[0] == 0


def test_other_methods_are_refused() -> None:
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        assert _decide(method=method, headers={"x-p2pnode-token": TOKEN})[0] == 405


@pytest.mark.parametrize("host", ["evil.example:7464", "evil.example", "127.0.0.1:80", "127.0.0.1", "",
                                  "localhost.evil.example:7464", "0.0.0.0:7464"])
def test_a_foreign_host_header_is_refused_even_with_the_token(host: str) -> None:
    status, why = _decide(headers={"host": host, "x-p2pnode-token": TOKEN})
    assert status == 403 and "Host" in why


@pytest.mark.parametrize("host", ["127.0.0.1:7464", "localhost:7464", "LOCALHOST:7464", "[::1]:7464"])
def test_loopback_names_with_the_port_pass(host: str) -> None:
    assert _decide(headers={"host": host, "x-p2pnode-token": TOKEN})[0] == 0


def test_a_public_server_answers_any_host_but_still_needs_the_token() -> None:
    assert _decide(headers={"host": "node.example:7464"}, hosts=None)[0] == 401
    assert _decide(headers={"host": "node.example:7464", "x-p2pnode-token": TOKEN}, hosts=None)[0] == 0


def test_the_token_file_is_made_private_and_kept(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    path = tmp_path / TOKEN_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(token) >= 32
    assert load_or_create_token(tmp_path) == token


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    load_or_create_token(tmp_path)
    os.chmod(tmp_path / TOKEN_FILE, 0o644)
    with pytest.raises(LocalError, match="readable by other users"):
        load_or_create_token(tmp_path)


def test_a_token_file_that_is_a_symlink_or_too_short_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("x" * 40)
    os.chmod(tmp_path / "elsewhere", 0o600)
    os.symlink(tmp_path / "elsewhere", tmp_path / TOKEN_FILE)
    with pytest.raises(LocalError):
        load_or_create_token(tmp_path)
    os.unlink(tmp_path / TOKEN_FILE)
    (tmp_path / TOKEN_FILE).write_text("short")
    os.chmod(tmp_path / TOKEN_FILE, 0o600)
    with pytest.raises(LocalError, match="too short"):
        load_or_create_token(tmp_path)
