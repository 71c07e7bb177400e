"""Many nodes in one process: one trio loop, one executor, each node still a whole node.

Started as ``python -m p2pnode.swarm.inproc`` by :class:`InProcessLauncher` (one host per core:
a trio loop runs on one), a *host* runs nodes as trio tasks: each is the same :class:`~p2pnode.node.Node` a process runs (its own identity, data
dir, ledger, control socket, libp2p host on its own loopback address), built from the same ``run``
flags, but they share the interpreter, the libraries and one executor (workers for the machine's
cores, not one per node). What a node costs is then its state and its traffic, not a Python
process: this is how an operator runs 100 nodes on a laptop (as js-libp2p test swarms do).

The launcher talks to the host over its stdin and stdout, one JSON object a line:

* in: ``{"op": "start", "index": i, "args": [...]}``, ``{"op": "stop", "index": i}``, ``{"op": "quit"}``;
* out: ``{"ready": i, "peer": ..., "addr": ...}``, ``{"stopped": i, "error": ...}``.

A stopped node is cancelled at once: its connections close, as when a process dies. Everything
else (bans, gossip, jobs) is what separate processes would do. The host dies with its launcher
(parent-death signal, like every node process) and when its stdin closes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pnode.errors import LocalError
from p2pnode.swarm.launcher import READY_TIMEOUT_S, Launcher, NodeProc, NodeSpec, _child_setup

log = logging.getLogger("p2pnode.inproc")


# the host (child process) ----------------------------------------------------------------------
async def _host() -> None:
    import trio

    from p2pnode.exec.executor import Executor
    from p2pnode.node import Node
    from p2pnode.run_flags import config_from_run_flags

    out_lock = trio.Lock()

    async def say(**msg: Any) -> None:
        async with out_lock:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()

    scopes: dict[int, trio.CancelScope] = {}
    executor = Executor(slots=int(os.environ.get("P2PNODE_HOST_SLOTS", "1")))

    async def run_one(index: int, args: list[str]) -> None:
        error = ""
        try:
            with trio.CancelScope() as scope:
                scopes[index] = scope
                node = Node(config_from_run_flags(args), executor=executor)
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    addrs = node.addrs()
                    await say(ready=index, peer=node.peer_id, addr=addrs[0] if addrs else "")
                    await trio.sleep_forever()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("node %d failed", index, exc_info=exc)
        finally:
            if scopes.get(index) is scope:
                del scopes[index]
            with trio.CancelScope(shield=True):
                await say(stopped=index, error=error)

    async with executor, trio.open_nursery() as nursery:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                break  # the launcher is gone
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                if cmd["op"] == "start" and cmd["index"] not in scopes:
                    nursery.start_soon(run_one, cmd["index"], cmd["args"])
                elif cmd["op"] == "stop" and cmd["index"] in scopes:
                    scopes[cmd["index"]].cancel()
                elif cmd["op"] == "quit":
                    nursery.cancel_scope.cancel()
            if nursery.cancel_scope.cancel_called:
                break
        nursery.cancel_scope.cancel()


def main() -> None:
    import trio

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_host)


# the launcher's side -----------------------------------------------------------------------------
@dataclass
class InProcNode(NodeProc):
    running: bool = False
    host_pid: int = 0

    @property
    def alive(self) -> bool:
        return self.running


class InProcessLauncher(Launcher):
    """A :class:`Launcher` whose nodes live in host processes, one per core by default (a trio
    loop uses one core), node ``i`` on host ``i mod hosts`` (see the module's docstring)."""

    def __init__(self, base: Path, *, hosts: int = 0, **kw: Any) -> None:
        super().__init__(base, **kw)
        cores = os.cpu_count() or 1
        self.n_hosts = hosts or cores
        self.slots = max(1, (cores - 1) // self.n_hosts)  # executor workers per host
        self.hosts: dict[int, subprocess.Popen[str]] = {}
        self._lock = threading.Lock()

    def host_log(self, h: int) -> Path:
        """Where host ``h`` writes its output, the log of every node it runs."""
        return self.base / "logs" / f"host{h}.log"

    def _start_host(self, h: int) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["P2PNODE_HOST_SLOTS"] = str(self.slots)
        log_file = open(self.host_log(h), "a", encoding="utf-8")  # noqa: SIM115 - the host's lifetime
        proc = subprocess.Popen([*self.wrap, sys.executable, "-m", "p2pnode.swarm.inproc"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log_file, text=True, env=env,
                                preexec_fn=_child_setup(os.getpid()))
        self.hosts[h] = proc
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()
        return proc

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            index = msg.get("ready", msg.get("stopped"))
            node = self.nodes.get(index)
            if not isinstance(node, InProcNode):
                continue
            if "ready" in msg:
                node.peer, node.addr, node.running, node.host_pid = msg["peer"], msg["addr"], True, proc.pid
            else:
                node.running = False
                if msg.get("error"):
                    node.tail.append(msg["error"])
            node.ready.set()
        for node in self.nodes.values():  # the host is gone, and every node on it
            if isinstance(node, InProcNode) and node.host_pid == proc.pid:
                node.running = False
                node.ready.set()

    def _send(self, index: int, **cmd: Any) -> None:
        h = index % self.n_hosts
        with self._lock:
            proc = self.hosts.get(h) or self._start_host(h)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({**cmd, "index": index}) + "\n")
            proc.stdin.flush()

    def _args(self, node: NodeProc, bootstrap: Sequence[str]) -> list[str]:
        return self._run_flags(node, bootstrap, metrics="")  # metrics through the control socket

    def _spawn(self, spec: NodeSpec, bootstrap: Sequence[str]) -> NodeProc:
        data_dir = self.base / f"node{spec.index}"
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        node = self.nodes.get(spec.index)
        if not isinstance(node, InProcNode):
            node = InProcNode(spec, data_dir, self.host_log(spec.index % self.n_hosts))
        node.ready = threading.Event()
        node.addr, node.running = "", False
        node.started_at = time.monotonic()
        self.nodes[spec.index] = node
        self._send(spec.index, op="start", args=self._args(node, bootstrap))
        return node

    def _await_ready(self, nodes: Sequence[NodeProc]) -> None:
        for node in nodes:
            if not node.ready.wait(READY_TIMEOUT_S) or not node.addr:
                raise LocalError(f"node {node.index} did not start: " + "; ".join(node.tail[-3:]))

    def kill(self, index: int) -> None:
        node = self.nodes[index]
        if node.alive:
            node.ready = threading.Event()
            self._send(index, op="stop")
            node.ready.wait(30)

    def stop_all(self, timeout: float = 20.0) -> bool:
        clean = True
        for proc in self.hosts.values():
            with contextlib.suppress(BrokenPipeError, OSError):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                proc.stdin.close()
        deadline = time.monotonic() + timeout
        for proc in self.hosts.values():
            try:
                clean = proc.wait(timeout=max(0.1, deadline - time.monotonic())) == 0 and clean
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                clean = False
        return clean


if __name__ == "__main__":
    main()
