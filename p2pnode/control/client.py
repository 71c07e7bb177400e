"""Blocking client for the control API (the CLI's commands use it).

**Ctrl-C** during a call (in the main thread) does not just drop the connection: the client closes
its sending side, which the node takes as "stop" (it cancels the job or map, telling its providers),
and then waits for the node's answer, which says what was stopped and what it paid: it is raised as
:class:`Interrupted`. A second Ctrl-C leaves at once.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Self

from p2pnode.errors import ControlError

STOP_WAIT_S = 60.0  # after a Ctrl-C, how long the node may take to stop the work and answer


class Interrupted(ControlError):
    """The call was stopped by Ctrl-C; the message is the node's account of what it stopped."""


def call(socket_path: Path, cmd: str, timeout: float = 10.0, on_event: Any = None, **args: Any) -> Any:
    if not socket_path.exists():
        raise ControlError(f"no node is running with data dir {socket_path.parent} (no {socket_path.name})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, _StopOnCtrlC(s) as stopper:
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
                    if on_event is not None and not stopper.stopped:
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
        if stopper.stopped:
            raise Interrupted("stopped; the node closed the connection without saying more")
        raise ControlError("the node closed the connection without answering")
    reply = json.loads(buf)
    if not reply.get("ok"):
        error = str(reply.get("error", "unknown error"))
        raise Interrupted(error) if stopper.stopped else ControlError(error)
    return reply.get("result")


class _StopOnCtrlC:
    """While a call waits (main thread only): the first SIGINT closes the sending side of the
    socket, so the node stops the work and answers; a second one raises KeyboardInterrupt."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stopped = False
        self._old: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.stopped:
            raise KeyboardInterrupt
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(STOP_WAIT_S)
        except OSError:
            raise KeyboardInterrupt from None  # not connected yet: nothing to stop
