"""Serve an ASGI app (Starlette) on the caller's trio loop with Hypercorn's trio worker.

The node runs on trio (py-libp2p needs it); Hypercorn serves ASGI on trio itself, and Starlette
runs on trio through AnyIO, so the pages live in the node's own nursery: no second event loop, no
thread, and cancelling the node's nursery stops the server. The socket is bound here first, so a
port in use falls back to a free one (as the metrics endpoint does) and the caller learns the port
before the first request.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from typing import Any

import trio

from p2pnode.errors import ConfigError, NetworkSetupError

log = logging.getLogger("p2pnode.web")
_http_log = logging.getLogger("p2pnode.web.http")
_http_log.setLevel(logging.WARNING)  # not Hypercorn's "Running on ..." line: the node says where
MAX_HEADERS_BYTES = 16 * 1024


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); one line for anything else."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{listen!r} is not HOST:PORT (port 0..65535)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(listen: str, *, any_port_if_taken: bool, what: str = "the dashboard", flag: str = "--ui") -> socket.socket:
    """A listening TCP socket on ``listen``; with ``any_port_if_taken``, a port another process
    holds falls back to one the system picks."""
    host, port = split_listen(listen)
    if host == "localhost":
        host = "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def attempt(p: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, p))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    try:
        try:
            return attempt(port)
        except OSError as exc:
            if not any_port_if_taken or exc.errno != errno.EADDRINUSE:
                raise
            return attempt(0)
    except OSError as exc:
        raise NetworkSetupError(f"cannot serve {what} on {listen}: {exc.strerror} (choose another with "
                                f"{flag} HOST:PORT, or turn it off)") from None


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(app: Any, sock: socket.socket, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on the bound ``sock`` until cancelled; ``task_status.started()`` once it
    accepts connections."""
    from hypercorn.config import Config, Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    config = Config()
    config.accesslog = None
    config.errorlog = _http_log
    config.graceful_timeout = 1.0  # an open event stream must not hold up the node's stop
    config.h11_max_incomplete_size = MAX_HEADERS_BYTES
    config.keep_alive_timeout = 30.0
    try:
        await worker_serve(wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                           sockets=Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]),
                           task_status=task_status)
    finally:
        sock.close()
