"""Drive the js-libp2p peer (tests/interop/js/peer.mjs) from trio: JSON lines both ways."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

JS_DIR = Path(__file__).with_name("js")
PEER = JS_DIR / "peer.mjs"


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the js-libp2p interop checks need it")
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        pytest.fail(f"js-libp2p is not installed: run tools/test (or `npm ci` in {JS_DIR})")
    return node


class JsPeer:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.peer = ""
        self.addrs: list[str] = []
        self._changed = trio.Event()
        self._ids = itertools.count(1)
        self.stderr = b""

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.append(event)
                self._changed.set()
                self._changed = trio.Event()

    async def _read_err(self) -> None:
        assert self.proc.stderr is not None
        async for chunk in self.proc.stderr:
            self.stderr = (self.stderr + chunk)[-20000:]

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                await self._changed.wait()

    async def command(self, cmd: str, timeout: float = 20.0, **args: Any) -> dict[str, Any]:
        ident = next(self._ids)
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(json.dumps({"cmd": cmd, "id": ident, **args}).encode() + b"\n")
        reply = await self.wait_event(lambda e: e.get("id") == ident, timeout)
        if reply.get("event") == "error":
            raise AssertionError(f"js peer: {cmd} failed: {reply['error']}")
        return reply

    def ads(self, peer: str | None = None, verified: bool | None = True) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "ad"
                and (peer is None or e.get("peer") == peer or e.get("from") == peer)
                and (verified is None or e.get("verified") is verified)]


@asynccontextmanager
async def js_peer(dial: Sequence[str] = (), env: dict[str, str] | None = None) -> AsyncIterator[JsPeer]:
    """The js peer; ``env``: more of its settings (``P2P_PERF=1``: serve ``/perf/1.0.0``)."""
    node = require_node()
    env = dict(os.environ, P2P_DIAL=",".join(dial), **(env or {}))
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            [node, str(PEER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=str(JS_DIR),
        )
        peer = JsPeer(proc)
        nursery.start_soon(peer._read)
        nursery.start_soon(peer._read_err)
        try:
            try:
                ready = await peer.wait_event(lambda e: e.get("event") == "ready", timeout=60)
            except trio.TooSlowError:
                raise AssertionError(f"js peer did not start:\n{peer.stderr.decode(errors='replace')}") from None
            peer.peer, peer.addrs = ready["peer"], ready["addrs"]
            yield peer
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    try:
                        await peer.command("stop", timeout=5)
                    except (AssertionError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    with trio.move_on_after(5):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            nursery.cancel_scope.cancel()
