"""``p2pnode swarm up|status|down|logs``: a swarm that keeps running after the command returns.

``up`` starts a supervisor process (detached, its own session) that starts the nodes with the
launcher, writes ``swarm.json`` into the swarm's folder, and holds them until it is told to stop;
the nodes die with it whatever happens to it (parent-death signal). ``status`` reads that file and
asks every node; ``down`` sends the supervisor SIGTERM and waits until every node is gone; ``logs``
shows the nodes' logs. The swarm lives on the host's loopback (127.77.x.y), so other nodes and tools
on this machine can join it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from p2pnode.errors import LocalError
from p2pnode.swarm.launcher import Launcher, NodeSpec, Stopped, stop_on_signals
from p2pnode.swarm.runner import address

STATE = "swarm.json"
DEFAULT_VIEW = "127.0.0.1:7465"  # the swarm view's address (a free port where another holds it)


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "p2pnode-swarm"


def _state(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / STATE).read_text()))
    except (OSError, ValueError):
        raise LocalError(f"no swarm in {folder} (start one with `p2pnode swarm up{_dir_option(folder)}`)") from None


def _alive(pid: int) -> bool:
    """Running, not merely a zombie that nobody reaped yet (a killed supervisor's nodes are
    reparented, and their new parent may be slow to reap them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the signal
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    folder = (args.dir or default_dir()).expanduser()
    if args.action == "up":
        return up(folder, args.nodes or 5, args.cheat, console, timeout=max(args.timeout, 120.0),
                  in_process=args.in_process, ui=args.ui)
    if args.action == "status":
        return status(folder, console, as_json=args.json)
    if args.action == "down":
        return down(folder, console)
    return logs(folder, args.node, tail=args.tail, follow=args.follow)


def up(folder: Path, n: int, cheat: str, console: Any, *, timeout: float = 120.0, in_process: bool = False,
       ui: str = DEFAULT_VIEW) -> int:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        old = _state(folder)
        if _alive(int(old["pid"])) and old.get("status") != "down":
            raise LocalError(f"a swarm is already up in {folder} (pid {old['pid']}): "
                             f"`p2pnode swarm down{_dir_option(folder)}` first")
    except LocalError as exc:
        if "already up" in str(exc):
            raise
    (folder / STATE).unlink(missing_ok=True)
    log = open(folder / "supervisor.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "p2pnode.swarm.background", str(folder), str(n), cheat,
                             "in-process" if in_process else "processes", ui],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalError(f"the swarm did not start:\n{(folder / 'supervisor.log').read_text()[-2000:]}")
        try:
            state = _state(folder)
            if state.get("status") == "up":  # plain lines: a path or an address is never wrapped
                print(f"swarm up: {len(state['nodes'])} nodes in {folder} (supervisor pid {state['pid']}); "
                      f"{next_steps(folder)}", flush=True)
                for node in state["nodes"]:
                    print(f"  node {node['index']}: {node['addr']}  --data-dir {node['data_dir']}", flush=True)
                if state.get("ui"):
                    print(f"swarm view: {view_login(folder, state)}", flush=True)
                return 0
        except LocalError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise LocalError("the swarm did not come up in time")


def status(folder: Path, console: Any, *, as_json: bool = False) -> int:
    from rich.table import Table

    from p2pnode.control.client import call
    from p2pnode.errors import ControlError

    state = _state(folder)
    up_ = _alive(int(state["pid"])) and state.get("status") == "up"
    rows = []
    for node in state.get("nodes", []):
        try:
            s = call(Path(node["data_dir"]) / "control.sock", "status", timeout=5)
            rows.append({**node, "state": s["state"], "peers": s["peers"], "market": s["market"]})
        except ControlError as exc:
            rows.append({**node, "state": f"down ({exc})", "peers": 0, "market": 0})
    view = view_login(folder, state) if up_ and state.get("ui") else ""
    if as_json:
        print(json.dumps({"up": up_, "pid": state["pid"], "nodes": rows, "view": view}, indent=2))
        return 0 if up_ else 2
    t = Table(title=f"swarm in {folder}: {'up' if up_ else 'DOWN'} (supervisor {state['pid']})")
    for col in ("node", "peer", "address", "state", "peers", "market"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["index"]), r["peer"][-12:], r["addr"].split("/p2p/")[0], r["state"], str(r["peers"]),
                  str(r["market"]))
    console.print(t)
    if view:
        print(f"swarm view: {view}", flush=True)
    return 0 if up_ else 2


def view_login(folder: Path, state: dict[str, Any]) -> str:
    """The swarm view's login address (its token is in the swarm's folder, 0600)."""
    from p2pnode.web.guard import load_or_create_token

    return f"http://{state['ui']}/login?token={load_or_create_token(folder)}"


def next_steps(folder: Path) -> str:
    """The commands that reach this swarm, with ``--dir`` where it is not the default folder."""
    return ", ".join(f"`p2pnode swarm {action}{_dir_option(folder)}`" for action in ("status", "logs", "down"))


def _dir_option(folder: Path) -> str:
    """`` --dir FOLDER``, or nothing for the default folder: what a command needs to find this swarm."""
    return "" if folder == default_dir().expanduser() else f" --dir {shlex.quote(str(folder))}"


def down(folder: Path, console: Any, timeout: float = 30.0) -> int:
    state = _state(folder)
    pid = int(state["pid"])
    nodes = state.get("nodes", [])
    running = [n for n in nodes if n.get("pid") and _alive(int(n["pid"]))]
    if state.get("status") == "down" or (not _alive(pid) and not running):
        # stopped already (a pid alive now may be another process's: it is left alone)
        print(f"no swarm is running in {folder}: nothing to stop", flush=True)
        return 0
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)  # its nodes die with it (parent-death signal)
    deadline = time.monotonic() + 10  # the nodes follow their supervisor (parent-death signal)
    while True:
        left = [n for n in nodes if n.get("pid") and _alive(int(n["pid"]))]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    console.print(f"swarm down ({len(nodes)} nodes stopped)" if not left else
                  f"[red]{len(left)} node(s) still running[/]")
    return 0 if not left else 1


def logs(folder: Path, node: int | None, *, tail: int | None = None, follow: bool = False,
         out: TextIO | None = None, poll_s: float = 0.2) -> int:
    """Print the swarm's logs, each file once (an in-process host's holds all its nodes): its last
    ``tail`` lines (default 10; with ``node``, all of it) under a header, lines whole and unwrapped;
    with ``follow``, then every new line as it comes, until Ctrl-C."""
    out = out or sys.stdout
    if tail is not None and tail < 0:
        raise LocalError("--tail must not be negative")
    sources = log_sources(_state(folder), node)
    if node is not None and not sources:
        raise LocalError(f"no node {node} in the swarm in {folder}")
    follower = LogFollower(sources, out)
    follower.print_tails(tail if tail is not None else None if node is not None else 10)
    if not follow:
        return 0
    try:  # Ctrl-C stops it, also where it was started with SIGINT ignored (a script's background job)
        with stop_on_signals():
            while True:
                time.sleep(poll_s)
                follower.print_new()
    except (KeyboardInterrupt, Stopped):
        return 0


def log_sources(state: dict[str, Any], node: int | None) -> list[tuple[str, Path]]:
    """``(label, path)`` for each log file of ``node`` (or of every node), in node order."""
    by_path: dict[Path, list[int]] = {}
    for n in state.get("nodes", []):
        if node is None or n["index"] == node:
            by_path.setdefault(Path(n["log"]), []).append(int(n["index"]))
    return [(("node " if len(ix) == 1 else "nodes ") + ", ".join(map(str, ix)), path)
            for path, ix in by_path.items()]


class LogFollower:
    """Prints log files' lines as they grow, each line whole (a partial last line waits for its
    end), under a ``==> label (path) <==`` header whenever the file printed from changes."""

    def __init__(self, sources: list[tuple[str, Path]], out: TextIO) -> None:
        self.sources, self.out = sources, out
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, bytes] = {}
        self.last: Path | None = None

    def print_tails(self, count: int | None) -> None:
        """The last ``count`` complete lines of each file (None: all)."""
        for label, path in self.sources:
            data = _read_from(path, 0)
            self.offsets[path] = len(data)
            lines = self._complete_lines(path, data)
            self._header(label, path)
            for line in lines if count is None else lines[max(0, len(lines) - count):]:
                self.out.write(line + "\n")
        self.out.flush()

    def print_new(self) -> None:
        """Whatever complete lines were added to each file since it was last read."""
        for label, path in self.sources:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < self.offsets.get(path, 0):  # truncated or replaced: from its start again
                self.offsets[path], self.partial[path] = 0, b""
            data = _read_from(path, self.offsets.get(path, 0))
            self.offsets[path] = self.offsets.get(path, 0) + len(data)
            lines = self._complete_lines(path, data)
            if lines:
                self._header(label, path)
                self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def _complete_lines(self, path: Path, data: bytes) -> list[str]:
        text = self.partial.pop(path, b"") + data
        complete, newline, rest = text.rpartition(b"\n")
        self.partial[path] = rest
        return complete.decode("utf-8", "replace").split("\n") if newline else []

    def _header(self, label: str, path: Path) -> None:
        if self.last != path:
            self.out.write(f"==> {label} ({path}) <==\n")
            self.last = path


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def supervise(folder: Path, n: int, cheat: str, in_process: bool = False, ui: str = DEFAULT_VIEW) -> int:
    """The supervisor: start the nodes, record them, serve the swarm view (``ui``: its HOST:PORT,
    empty for none), hold them until a signal, stop them."""
    from p2pnode.swarm.inproc import InProcessLauncher
    from p2pnode.web.swarm_view import ViewThread, launcher_source

    launcher = InProcessLauncher(folder) if in_process else Launcher(folder, ui=bool(ui))
    kind = cheat.partition(":")[0]
    specs = [NodeSpec(i, kind if cheat and i == 1 else "provider", address(i),
                      ["--adversary", cheat] if cheat and i == 1 else []) for i in range(n)]
    state: dict[str, Any] = {"pid": os.getpid(), "status": "starting", "nodes": []}
    (folder / STATE).write_text(json.dumps(state))
    view: ViewThread | None = None
    t0 = time.monotonic()
    events: list[dict[str, Any]] = []
    try:
        with stop_on_signals():
            launcher.start(specs)
            events.append({"t": round(time.monotonic() - t0, 1), "event": "started", "nodes": sorted(launcher.nodes)})
            if ui:
                source = launcher_source(f"{n} nodes in {folder}", launcher, {s.index: s.role for s in specs},
                                         lambda: list(events), lambda: time.monotonic() - t0)
                view = ViewThread(source, folder, ui).start()
                state["ui"] = view.address
            state["nodes"] = [{"index": p.index, "peer": p.peer, "addr": p.addr, "data_dir": str(p.data_dir),
                               "log": str(p.log), "pid": _pid(launcher, p), "role": specs[p.index].role,
                               "ui": getattr(p, "ui", "")} for p in launcher.nodes.values()]
            state["status"] = "up"
            (folder / STATE).write_text(json.dumps(state))
            while True:
                time.sleep(3600)
    except Stopped:
        pass
    finally:
        if view is not None:
            view.stop()
        launcher.stop_all()
        state["status"] = "down"
        (folder / STATE).write_text(json.dumps(state))
    return 0


def _pid(launcher: Launcher, node: Any) -> int:
    """The process that runs ``node``: its own, or its in-process host."""
    return getattr(node, "host_pid", 0) or (node.proc.pid if node.proc else 0)


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "",
                       len(sys.argv) > 4 and sys.argv[4] == "in-process", sys.argv[5] if len(sys.argv) > 5 else ""))
