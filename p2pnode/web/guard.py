"""Who may use a web page of the node: the token, and the checks every request passes first.

The rules (the same for the node's dashboard and the swarm view):

* **A token for everything.** A random token lives in a 0600 file (``<data-dir>/ui.token``), made
  at first start. Every request carries it, reads included: in the ``X-P2PNode-Token`` header (or
  ``Authorization: Bearer``), or as the session cookie a browser gets by opening
  ``/login?token=...`` once (the address ``p2pnode ui`` prints). The cookie is derived from the
  token (an HMAC), ``HttpOnly`` and ``SameSite=Strict``, and is named after the port, so two nodes on
  one machine keep theirs apart. This is how Jupyter guards its local server.
* **Changes need the header.** ``POST`` only, with the token in ``X-P2PNode-Token``: the cookie alone
  does not do, so another site open in the same browser cannot drive the node (it can send a
  form with the cookie, never a header), and an ``Origin`` that is not this page's is refused.
* **No DNS rebinding.** The ``Host`` header must name this server (its loopback address or
  ``localhost``, with its port): a page on a hostile name that resolves to 127.0.0.1 is refused
  before anything else. A server the operator opened to other hosts (``ui_public``) answers any
  name, the token still guarding every request.
* **Nothing leaves the machine.** Every answer carries a Content-Security-Policy that allows only
  this server's own scripts, styles and connections, and no framing.

Everything here is an ASGI middleware around the app; its decisions are plain functions of the
request's method, path, headers and query (:func:`decide`), tested one by one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from p2pnode.errors import LocalError
from p2pnode.files import read_small_file

TOKEN_FILE = "ui.token"
TOKEN_HEADER = "x-p2pnode-token"
MAX_TOKEN = 256
READ_METHODS = ("GET", "HEAD")
SECURITY_HEADERS = [
    (b"content-security-policy", (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                  b"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
                                  b"frame-ancestors 'none'")),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def load_or_create_token(folder: Path) -> str:
    """The token in ``folder/ui.token``, made (random, mode 0600) when absent. A token file that
    other users can read, or that is not a regular file, is refused with one line."""
    path = folder / TOKEN_FILE
    if not os.path.lexists(path):
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return load_or_create_token(folder)  # made by another process just now
        except OSError as exc:
            raise LocalError(f"cannot create the dashboard token {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    st = os.lstat(path)
    if st.st_mode & 0o077:
        raise LocalError(f"dashboard token {path} is readable by other users (mode {st.st_mode & 0o777:o}) -- fix: "
                         f"chmod 600 {path}, or delete it for a new one")
    token = read_small_file(path, limit=MAX_TOKEN, what="dashboard token", follow_symlinks=False).decode(
        "ascii", "replace").strip()
    if len(token) < 16:
        raise LocalError(f"dashboard token {path} is too short -- fix: delete it, and a new one is made at start")
    return token


def cookie_name(port: int) -> str:
    return f"p2pnode-{port}"


def cookie_value(token: str) -> str:
    """What the session cookie holds: derived from the token, so it never shows the token itself."""
    return hmac.new(token.encode(), b"p2pnode dashboard session", hashlib.sha256).hexdigest()


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` values a loopback server answers to."""
    names = {host, "127.0.0.1", "localhost", "[::1]"}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return frozenset(f"{n}:{port}" for n in names)


@dataclass(frozen=True)
class Decision:
    """``status`` 0: let the request through; otherwise answer it with ``status`` and ``why``
    (``cookie``: a login that sets the session cookie and goes to ``/``)."""

    status: int
    why: str = ""
    cookie: bool = False


PASS = Decision(0)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def decide(method: str, path: str, headers: dict[str, str], query: str, *, token: str, port: int,
           hosts: frozenset[str] | None) -> Decision:
    """The guard's decision for one request (``headers``: lower-case names, last value wins;
    ``hosts``: the Host values accepted, None for any)."""
    host = headers.get("host", "")
    if hosts is not None and host.lower() not in hosts:
        return Decision(403, f"this server does not answer to Host {host[:80]!r} (open it by the address "
                             "`p2pnode ui` prints)")
    given = headers.get(TOKEN_HEADER, "")
    auth = headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    header_ok = bool(given) and _same(given, token)
    if path == "/login":
        if method not in READ_METHODS:
            return Decision(405, "log in with GET /login?token=...")
        offered = parse_qs(query).get("token", [""])[0]
        if offered and _same(offered, token):
            return Decision(303, cookie=True)
        return Decision(401, "wrong or missing token: open the address `p2pnode ui` prints")
    if method in READ_METHODS:
        cookie = _cookies(headers.get("cookie", "")).get(cookie_name(port), "")
        if header_ok or (cookie and _same(cookie, cookie_value(token))):
            return PASS
        return Decision(401, "this page needs the node's token: open the address `p2pnode ui` prints")
    if method != "POST":
        return Decision(405, "only GET and POST")
    if not header_ok:
        return Decision(403, "a change needs the token in the X-P2PNode-Token header")
    origin = headers.get("origin")
    if origin is not None and origin != f"http://{host}":
        return Decision(403, f"a change from another origin ({origin[:80]!r}) is refused")
    return PASS


def _cookies(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";")[:64]:
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name] = value
    return out


class Guard:
    """ASGI middleware: :func:`decide` on every HTTP request, the security headers on every answer."""

    def __init__(self, app: ASGIApp, *, token: str, port: int = 0, public: bool = False, host: str = "127.0.0.1") -> None:
        self.app, self.token, self.public, self.host = app, token, public, host
        self.port = port
        self.refused = 0  # requests answered with a refusal (for tests and the log)

    def bind(self, host: str, port: int) -> None:
        """The address the server listens on, once known (a port chosen by the system)."""
        self.host, self.port = host, port

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        d = decide(method, scope.get("path", ""), headers, scope.get("query_string", b"").decode("latin-1"),
                   token=self.token, port=self.port,
                   hosts=None if self.public else allowed_hosts(self.host, self.port))
        if d.status:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self._answer(send, d)
            return

        async def secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), *SECURITY_HEADERS])
            await send(message)

        await self.app(scope, receive, secured)

    async def _answer(self, send: Callable[[Any], Awaitable[None]], d: Decision) -> None:
        headers = list(SECURITY_HEADERS)
        if d.cookie:
            headers += [(b"location", b"/"),
                        (b"set-cookie", f"{cookie_name(self.port)}={cookie_value(self.token)}; Path=/; HttpOnly; "
                                        "SameSite=Strict".encode())]
            body = b""
        else:
            self.refused += 1
            body = (d.why + "\n").encode()
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": d.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
