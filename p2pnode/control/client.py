"""Blocking client for the control API (the CLI's read commands use it)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from p2pnode.errors import ControlError


def call(socket_path: Path, cmd: str, timeout: float = 10.0, on_event: Any = None, **args: Any) -> Any:
    if not socket_path.exists():
        raise ControlError(f"no node is running with data dir {socket_path.parent} (no {socket_path.name})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(socket_path))
            try:
                s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            except BrokenPipeError:
                pass  # the node answered (a refusal) and closed before reading all of it
            reader = s.makefile("rb")
            while True:
                buf = reader.readline()
                if not buf:
                    break
                try:
                    line = json.loads(buf)
                except ValueError as exc:
                    raise ControlError("the node sent an unreadable reply") from exc
                if "event" in line and "ok" not in line:
                    if on_event is not None:
                        on_event(line["event"])
                    continue
                break
        except ConnectionRefusedError as exc:
            raise ControlError(f"no node is running with data dir {socket_path.parent}") from exc
        except TimeoutError as exc:
            raise ControlError("the node did not answer in time") from exc
        except OSError as exc:
            raise ControlError(f"cannot reach the node: {exc.strerror or exc}") from exc
    if not buf:
        raise ControlError("the node closed the connection without answering")
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")
