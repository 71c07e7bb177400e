"""Serve the control API on a Unix socket (see :mod:`p2pnode.control`)."""

from __future__ import annotations

import json
import logging
import os
import socket as stdsocket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pnode.errors import ControlError, ExecFailure, LocalError, WorkloadError

log = logging.getLogger("p2pnode.control")
MAX_REQUEST = 64 * 1024
MAX_UNIX_PATH = 107

# A handler gets the request and an ``emit`` coroutine for progress lines sent before the reply.
Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[Any]]


def _peer_uid(sock: trio.socket.SocketType) -> int | None:
    try:
        creds = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    except (OSError, AttributeError):
        return None


async def bind_control_socket(path: Path) -> trio.SocketListener:
    """Bind ``path``; replace a stale socket, refuse if a live node already serves it."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ControlError(f"control socket path {path} is too long for a Unix socket")
    if path.exists() or path.is_symlink():
        probe = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        try:
            await probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: the node that made it is gone
        else:
            raise ControlError(f"another node is already running with data dir {path.parent}")
        finally:
            probe.close()
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot create control socket {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    sock.listen(16)
    return trio.SocketListener(sock)


async def serve(listener: trio.SocketListener, handler: Handler) -> None:
    my_uid = os.getuid()

    async def on_connection(stream: trio.SocketStream) -> None:
        async with stream:
            uid = _peer_uid(stream.socket)
            if uid != my_uid:  # another user, or a caller whose uid cannot be read: refused
                # Its request is read (and dropped) first, so its write does not meet our close.
                with trio.move_on_after(2):
                    try:
                        await _read_line(stream)
                    except (ControlError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                await _reply(stream, {"ok": False, "error": "permission denied"})
                return
            async def emit(event: dict[str, Any]) -> None:
                await _reply(stream, {"event": event})

            try:
                with trio.fail_after(10):
                    request = await _read_line(stream)
                result = await handler(request, emit)
                await _reply(stream, {"ok": True, "result": result})
            except (LocalError, WorkloadError, ExecFailure) as exc:
                await _reply(stream, {"ok": False, "error": str(exc)})
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass
            except Exception as exc:  # a bug in a handler must not kill the node
                log.exception("control request failed")
                await _reply(stream, {"ok": False, "error": f"internal error: {exc}"})

    await trio.serve_listeners(on_connection, [listener])


async def _read_line(stream: trio.SocketStream) -> dict[str, Any]:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ControlError("request too large")
    try:
        request = json.loads(bytes(buf).split(b"\n", 1)[0], parse_constant=_non_finite)
    except ValueError as exc:
        raise ControlError("request is not JSON") from exc
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ControlError('request must be {"cmd": NAME}')
    return request


def _non_finite(name: str) -> Any:
    raise ControlError(f"request holds {name}: numbers must be finite")


async def _reply(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    try:
        await stream.send_all(json.dumps(obj).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
