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
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from p2pnode.errors import LocalError
from p2pnode.swarm.launcher import Launcher, NodeSpec, Stopped, stop_on_signals
from p2pnode.swarm.runner import address

STATE = "swarm.json"


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "p2pnode-swarm"


def _state(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / STATE).read_text()))
    except (OSError, ValueError):
        raise LocalError(f"no swarm in {folder} (start one with `p2pnode swarm up`)") from None


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
                  in_process=args.in_process)
    if args.action == "status":
        return status(folder, console, as_json=args.json)
    if args.action == "down":
        return down(folder, console)
    return logs(folder, args.node, console)


def up(folder: Path, n: int, cheat: str, console: Any, *, timeout: float = 120.0, in_process: bool = False) -> int:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        old = _state(folder)
        if _alive(int(old["pid"])) and old.get("status") != "down":
            raise LocalError(f"a swarm is already up in {folder} (pid {old['pid']}): `p2pnode swarm down` first")
    except LocalError as exc:
        if "already up" in str(exc):
            raise
    (folder / STATE).unlink(missing_ok=True)
    log = open(folder / "supervisor.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "p2pnode.swarm.background", str(folder), str(n), cheat,
                             "in-process" if in_process else "processes"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalError(f"the swarm did not start:\n{(folder / 'supervisor.log').read_text()[-2000:]}")
        try:
            state = _state(folder)
            if state.get("status") == "up":
                console.print(f"swarm up: {len(state['nodes'])} nodes in {folder} (supervisor pid {state['pid']}); "
                              "`p2pnode swarm status`, `p2pnode swarm down`")
                for node in state["nodes"]:
                    console.print(f"  node {node['index']}: {node['addr']}  --data-dir {node['data_dir']}")
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
    if as_json:
        print(json.dumps({"up": up_, "pid": state["pid"], "nodes": rows}, indent=2))
        return 0 if up_ else 2
    t = Table(title=f"swarm in {folder}: {'up' if up_ else 'DOWN'} (supervisor {state['pid']})")
    for col in ("node", "peer", "address", "state", "peers", "market"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["index"]), r["peer"][-12:], r["addr"].split("/p2p/")[0], r["state"], str(r["peers"]),
                  str(r["market"]))
    console.print(t)
    return 0 if up_ else 2


def down(folder: Path, console: Any, timeout: float = 30.0) -> int:
    state = _state(folder)
    pid = int(state["pid"])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)  # its nodes die with it (parent-death signal)
    deadline = time.monotonic() + 10  # the nodes follow their supervisor (parent-death signal)
    while True:
        left = [n for n in state.get("nodes", []) if n.get("pid") and _alive(int(n["pid"]))]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    console.print(f"swarm down ({len(state.get('nodes', []))} nodes stopped)" if not left else
                  f"[red]{len(left)} node(s) still running[/]")
    return 0 if not left else 1


def logs(folder: Path, node: int | None, console: Any) -> int:
    state = _state(folder)
    for n in state.get("nodes", []):
        if node is not None and n["index"] != node:
            continue
        path = Path(n["log"])
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = text.splitlines() if node is not None else text.splitlines()[-10:]
        console.print(f"[bold]node {n['index']}[/] ({path})")
        for line in lines:
            console.print(f"  {line}", markup=False, highlight=False)
    return 0


def supervise(folder: Path, n: int, cheat: str, in_process: bool = False) -> int:
    """The supervisor: start the nodes, record them, hold them until a signal, stop them."""
    from p2pnode.swarm.inproc import InProcessLauncher

    launcher = InProcessLauncher(folder) if in_process else Launcher(folder)
    specs = [NodeSpec(i, "provider", address(i), ["--adversary", cheat] if cheat and i == 1 else [])
             for i in range(n)]
    state: dict[str, Any] = {"pid": os.getpid(), "status": "starting", "nodes": []}
    (folder / STATE).write_text(json.dumps(state))
    try:
        with stop_on_signals():
            launcher.start(specs)
            state["nodes"] = [{"index": p.index, "peer": p.peer, "addr": p.addr, "data_dir": str(p.data_dir),
                               "log": str(p.log), "pid": _pid(launcher, p)} for p in launcher.nodes.values()]
            state["status"] = "up"
            (folder / STATE).write_text(json.dumps(state))
            while True:
                time.sleep(3600)
    except Stopped:
        pass
    finally:
        launcher.stop_all()
        state["status"] = "down"
        (folder / STATE).write_text(json.dumps(state))
    return 0


def _pid(launcher: Launcher, node: Any) -> int:
    """The process that runs ``node``: its own, or its in-process host."""
    return getattr(node, "host_pid", 0) or (node.proc.pid if node.proc else 0)


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "",
                       len(sys.argv) > 4 and sys.argv[4] == "in-process"))
