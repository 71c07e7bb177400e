"""Start, watch and stop a swarm's node processes.

* **In parallel.** Node 0 starts first (everyone's bootstrap peer); the rest start in waves that
  double (1, 2, 4, ...), each node bootstrapping from node 0 and from a random node of an earlier
  wave, so the mesh is not a star and starting N nodes takes log2(N) waits, not N.
* **One calibration per machine.** The launcher measures the machine once and every node reads it
  (``calibration_file``) instead of each running the same benchmark on the same cores.
* **Nothing outlives the swarm.** Every node runs in its own process group with a parent-death
  signal (SIGKILL when the launcher's process is gone, however it went); :func:`stop_on_signals`
  turns SIGINT, SIGTERM and SIGHUP into an orderly stop, also where a shell started the launcher
  with SIGINT ignored (a background job).
* Each node's output goes to ``<base>/logs/node<i>.log``; the launcher keeps the last lines too.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pnode.control.client import call
from p2pnode.errors import ControlError, LocalError

PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 180.0  # from spawn to the node's address: Python's imports take long on a busy machine


class Stopped(BaseException):
    """The launcher was told to stop (a signal): unwinds through ``finally`` blocks to a clean stop."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Stopped` in the main thread for the block."""

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _child_setup(parent: int) -> Any:
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:  # runs in the child, between fork and exec
        os.setpgid(0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the prctl: die now
            os._exit(1)

    return setup


@dataclass
class NodeSpec:
    index: int
    role: str  # provider, requester, checker, or the adversary kind
    address: str  # its loopback address
    args: list[str] = field(default_factory=list)  # extra `p2pnode run` flags


@dataclass
class NodeProc:
    spec: NodeSpec
    data_dir: Path
    log: Path
    proc: subprocess.Popen[str] | None = None
    peer: str = ""
    addr: str = ""
    metrics: str = ""
    ui: str = ""  # its dashboard's host:port, when the launcher gave it one
    started_at: float = 0.0
    tail: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def socket(self) -> Path:
        return self.data_dir / "control.sock"

    def pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log, "a", encoding="utf-8") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                self.tail.append(line.rstrip())
                del self.tail[:-200]
                if line.startswith("p2pnode ") and " peer " in line:
                    self.peer = line.split()[-1]
                elif line.startswith("listening on ") and not self.addr:
                    self.addr = line.split()[-1]
                elif line.startswith("dashboard on http://"):
                    self.ui = line.split()[2].removeprefix("http://").rstrip("/")
                elif line.startswith("metrics on ") or line.startswith("ready"):
                    self.metrics = line.split()[-1]
                    self.ready.set()
        self.ready.set()


class Launcher:
    def __init__(self, base: Path, *, ad_interval: float = 3.0, ad_ttl: float = 10.0, wrap: Sequence[str] = (),
                 share_calibration: bool = True, seed: int = 1, dht: bool = False, ui: bool = False) -> None:
        """``ui``: each node serves its dashboard on a free loopback port (the swarm view links to
        them); off, a node starts without (the web stack's imports cost each about 0.4 s of CPU).
        ``dht``: run the nodes' DHT. Off by default: every node of a swarm on one machine is told
        of others already, and the DHT's lookups would connect each to all (py-libp2p's gossip
        costs per connection: a 20-node swarm idled at 4.1-5.9 % of a core per node with it, 0.66 %
        without; tools/bench/scale.py --dht)."""
        self.base = base
        self.dht = dht
        self.ui = ui
        (base / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ad_interval, self.ad_ttl = ad_interval, ad_ttl
        self.wrap = list(wrap)  # e.g. ["ip", "netns", "exec", NAME]
        self.rnd = random.Random(seed)
        self.nodes: dict[int, NodeProc] = {}
        self.calibration = base / "calibration.json" if share_calibration else None
        if self.calibration is not None and not self.calibration.exists():
            from p2pnode.telemetry.calibrate import calibrate

            self.calibration.write_text(json.dumps(calibrate(0.3, use_gpu=True)))

    # starting --------------------------------------------------------------------------------
    def _args(self, node: NodeProc, bootstrap: Sequence[str]) -> list[str]:
        return [*self.wrap, sys.executable, "-m", "p2pnode", "run",
                *self._run_flags(node, bootstrap, metrics="127.0.0.1:0")]

    def _run_flags(self, node: NodeProc, bootstrap: Sequence[str], *, metrics: str) -> list[str]:
        """``p2pnode run``'s flags for ``node``: its data dir and address, the swarm's ad timing and
        shared calibration, its role's flags, and whom to bootstrap from."""
        args = ["--data-dir", str(node.data_dir), "--listen", f"/ip4/{node.spec.address}/tcp/0", "--no-mdns",
                "--metrics", metrics, "--ad-interval", str(self.ad_interval), "--ad-ttl", str(self.ad_ttl),
                *([] if self.dht else ["--no-dht"]), *(["--ui", "127.0.0.1:0"] if self.ui else ["--no-ui"]),
                *node.spec.args]
        if self.calibration is not None:
            args += ["--calibration-file", str(self.calibration)]
        for b in bootstrap:
            args += ["--bootstrap", b]
        return args

    def _spawn(self, spec: NodeSpec, bootstrap: Sequence[str]) -> NodeProc:
        data_dir = self.base / f"node{spec.index}"
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        node = self.nodes.get(spec.index) or NodeProc(spec, data_dir, self.base / "logs" / f"node{spec.index}.log")
        node.ready = threading.Event()
        node.addr = ""
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        node.proc = subprocess.Popen(self._args(node, bootstrap), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, preexec_fn=_child_setup(os.getpid()))
        node.started_at = time.monotonic()
        threading.Thread(target=node.pump, daemon=True).start()
        self.nodes[spec.index] = node
        return node

    def _await_ready(self, nodes: Sequence[NodeProc]) -> None:
        for node in nodes:
            if not node.ready.wait(READY_TIMEOUT_S) or not node.addr:
                code = node.proc.poll() if node.proc is not None else None
                why = f"it exited with status {code}" if code is not None else \
                    f"it printed no address in {READY_TIMEOUT_S:g} s (a machine this busy starts nodes slowly)"
                tail = "\n".join(node.tail[-20:]) or "(it printed nothing)"
                raise LocalError(f"node {node.index} did not start: {why}; its last lines:\n{tail}")

    def start(self, specs: Sequence[NodeSpec], on_wave: Any = None) -> None:
        """Start ``specs`` in doubling waves (the first alone: everyone's bootstrap peer)."""
        todo = list(specs)
        wave = 1
        while todo:
            batch, todo = todo[:wave], todo[wave:]
            ready = [n for n in self.nodes.values() if n.addr and n.alive]
            started = []
            for spec in batch:  # forked from this thread: the parent-death signal follows it
                boot = []
                if spec.role == "poison":  # a market poisoner connects to every node it can
                    boot = [n.addr for n in ready]
                elif ready:
                    boot.append(ready[0].addr)
                    if len(ready) > 1:
                        boot.append(self.rnd.choice(ready[1:]).addr)
                started.append(self._spawn(spec, boot))
            self._await_ready(started)
            if on_wave is not None:
                on_wave(self)
            wave *= 2

    # faults ---------------------------------------------------------------------------------
    def kill(self, index: int) -> None:
        """SIGKILL, as a crash or a pulled plug would."""
        node = self.nodes[index]
        if node.alive:
            assert node.proc is not None
            node.proc.kill()
            node.proc.wait()

    def restart(self, index: int) -> None:
        """Start a stopped node again: same data dir (identity, ledger) and address."""
        node = self.nodes[index]
        if node.alive:
            return
        with contextlib.suppress(FileNotFoundError):
            node.socket.unlink()
        live = [n.addr for n in self.nodes.values() if n.alive and n.addr and n.index != index]
        boot = live[:1] + ([self.rnd.choice(live[1:])] if len(live) > 1 else [])
        self._spawn(node.spec, boot)
        self._await_ready([node])

    # reading --------------------------------------------------------------------------------
    def call(self, index: int, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        return call(self.nodes[index].socket, cmd, timeout=timeout, **args)

    def try_call(self, index: int, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        try:
            return self.call(index, cmd, timeout=timeout, **args)
        except ControlError:
            return None

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes.values() if n.alive]

    # stopping -------------------------------------------------------------------------------
    def stop_all(self, timeout: float = 20.0) -> bool:
        """SIGTERM to every node, SIGKILL to any still there after ``timeout``; True if all exited 0."""
        for node in self.nodes.values():
            if node.alive:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                code = node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                clean &= code == 0 or code == -signal.SIGKILL  # killed on purpose by a fault
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
                clean = False
        return clean
