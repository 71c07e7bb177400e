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

from p2pnode.errors import ControlError, ExecFailure, LocalError, WorkloadError, unwrap_group
from p2pnode.services.operations import Hangup

log = logging.getLogger("p2pnode.control")
MAX_REQUEST = 64 * 1024
MAX_UNIX_PATH = 107

class Call:
    """What a handler gets besides the request: ``await call(event)`` sends a progress line before
    the reply, and ``hangup`` is set when the client goes away (it closes the connection, or only
    its sending side, as the CLI does on Ctrl-C to hear what was stopped). A handler that stops its
    own work on ``hangup`` and answers for it says so with ``call.answers_hangup = True``; any other
    handler is cancelled when its client goes away."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.hangup = Hangup()
        self.answers_hangup = False

    async def __call__(self, event: dict[str, Any]) -> None:
        await _reply(self.stream, {"event": event})


Handler = Callable[[dict[str, Any], Call], Awaitable[Any]]


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
            call = Call(stream)
            try:
                with trio.fail_after(10):
                    request = await _read_line(stream)
                async with trio.open_nursery() as nursery:
                    with trio.CancelScope() as handling:
                        nursery.start_soon(_watch_hangup, stream, call, handling)
                        result = await handler(request, call)
                    nursery.cancel_scope.cancel()
                if handling.cancelled_caught:
                    return  # its client went away: nobody to answer
                await _reply(stream, {"ok": True, "result": result})
            except (LocalError, WorkloadError, ExecFailure) as exc:
                await _reply(stream, {"ok": False, "error": str(exc)})
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass
            except BaseExceptionGroup as group:  # from the nursery around the handler
                inner = unwrap_group(group)
                if not isinstance(inner, Exception):
                    raise
                await _answer_error(stream, inner)
            except Exception as exc:  # noqa: BLE001 - answered; a bug is logged, the node goes on
                await _answer_error(stream, exc)

    await trio.serve_listeners(on_connection, [listener])


async def _answer_error(stream: trio.SocketStream, exc: Exception) -> None:
    if isinstance(exc, (LocalError, WorkloadError, ExecFailure)):
        await _reply(stream, {"ok": False, "error": str(exc)})
    elif isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)):
        pass
    else:  # a bug in a handler must not kill the node
        log.error("control request failed", exc_info=exc)
        await _reply(stream, {"ok": False, "error": f"internal error: {exc}"})


async def _watch_hangup(stream: trio.SocketStream, call: Call, handling: trio.CancelScope) -> None:
    """Read what the client sends after its request (nothing, as a rule) until it hangs up."""
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    call.hangup.set()
    if not call.answers_hangup:
        handling.cancel()


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
