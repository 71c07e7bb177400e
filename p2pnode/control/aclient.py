"""The control API's client on trio (the swarm view asks many nodes at once from its own loop;
:mod:`p2pnode.control.client` is the blocking one the CLI uses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from p2pnode.errors import ControlError

MAX_REPLY = 8 << 20  # a market or jobs view of a large swarm stays far below this


async def call(socket_path: Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """One request, its reply (progress events are skipped); :class:`ControlError` for a node
    that is not there, does not answer in time, or answers an error."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(socket_path))
            async with stream:
                await stream.send_all(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                buf = bytearray()
                while True:
                    line, sep, rest = bytes(buf).partition(b"\n")
                    if sep:
                        reply = json.loads(line)
                        if "event" in reply and "ok" not in reply:
                            buf = bytearray(rest)
                            continue
                        break
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise ControlError("the node closed the connection without answering")
                    buf += chunk
                    if len(buf) > MAX_REPLY:
                        raise ControlError("the node's answer is too large")
    except trio.TooSlowError:
        raise ControlError("the node did not answer in time") from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ControlError(f"no node answers at {socket_path}: {getattr(exc, 'strerror', None) or exc}") from None
    except ValueError:
        raise ControlError("the node sent an unreadable reply") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")
