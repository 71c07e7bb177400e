"""The shipped scenarios on real node processes: small and short in the suite (each still real: a
swarm of processes, its own network namespace when root, faults, checks of every answer), full size
under ``-m slow``; and a swarm never outlives its launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from p2pnode import scenario as sc
from p2pnode.swarm.runner import run_scenario
from tests.integration.test_cli import ENV

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tools" / "scenarios"
SMALL = {  # name: (nodes, seconds of work)
    "baseline": (5, 6), "cheaters": (8, 9), "churn": (6, 9), "partition": (6, 10), "sybil-flood": (8, 6),
    "terrible-network": (5, 8), "models": (4, 8), "market-poison": (8, 8),
}
# one in-process host; the rest as node processes: kill -9, a network namespace each where root
# allows, and a flooder that does not share its victims' process
IN_PROCESS = {"baseline", "cheaters", "models"}
PLOTTED = "cheaters"


def _run(name: str, tmp_path: Path, *, nodes: int | None = None, seconds: float | None = None,
         in_process: bool = False, plots: bool = False) -> dict[str, Any]:
    s = sc.load(SCENARIOS / f"{name}.toml")
    if nodes is not None:
        s = s.scaled(nodes)
    if seconds is not None:
        s = s.shortened(seconds)
    from rich.console import Console

    _, summary = run_scenario(s, out=tmp_path / name, console=Console(file=open(os.devnull, "w")),
                              in_process=in_process, plots=plots)
    assert summary["completed"] and summary["clean_exit"], summary["notes"]
    assert (tmp_path / name / "summary.json").exists()
    return summary


def _expect(summary: dict[str, Any], name: str) -> Any:
    return next(e for e in summary["expectations"] if e["expectation"] == name)


# by default, the scenarios whose faults no other test of real processes covers; the rest (their
# faults are covered in-process by tests/sim and tests/protocol) with the slow ones
BY_DEFAULT = {"baseline", "cheaters", "churn", "market-poison"}


@pytest.mark.parametrize("name", [n if n in BY_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(SMALL)])
def test_each_shipped_scenario_holds_its_safety_expectations_small(name: str, tmp_path: Path) -> None:
    nodes, seconds = SMALL[name]
    r = _run(name, tmp_path, nodes=nodes, seconds=seconds, in_process=name in IN_PROCESS, plots=name == PLOTTED)
    jobs = r["jobs"]
    assert jobs["submitted"] >= 2 and jobs["judged"] >= 1, jobs
    assert jobs["wrong_accepted"] == 0  # never: at any size, under any fault
    assert jobs["done"] >= 0.6 * jobs["submitted"], jobs
    if name == "cheaters":
        assert r["cheaters"]["count"] >= 2
    if name == "churn":
        assert any(e["event"] == "kill" and e["nodes"] for e in r["events"])
        assert any(e["event"] == "restart" for e in r["events"])
    if name == "partition" and r["isolated"]:
        assert any(e["event"] == "partition" and e["applied"] for e in r["events"])
        assert r["converged_after_heal_s"] is not None  # the market was whole again after the heal
    if name == "sybil-flood":
        assert r["converged_s"] is not None  # the honest market formed despite the flood
    if name == "market-poison":  # a thousand made-up providers in every sync: the honest market holds
        assert r["converged_s"] is not None and r["honest_listed"] == 1.0, r["honest_listed"]
    if name == PLOTTED:  # drawn for one of them (each costs a second of CPU)
        assert r["plots"] and all(Path(p).stat().st_size > 10_000 for p in r["plots"])
    if name in IN_PROCESS:
        assert any("in-process" in n for n in r["notes"]), r["notes"]
        assert len(set(r["peers"].values())) == len(r["peers"]) >= nodes  # each node its own identity


SIMULATOR_SIZED = {"market-poison"}  # hundreds of nodes: as processes, small only (as `market`)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(SMALL) - SIMULATOR_SIZED))
def test_each_shipped_scenario_holds_every_expectation_at_full_size(name: str, tmp_path: Path) -> None:
    r = _run(name, tmp_path, plots=True)
    failed = [e for e in r["expectations"] if not e["held"]]
    assert not failed, failed


def _nodes_under(folder: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"p2pnode run --data-dir {folder}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_swarm_stopped_with_sigterm_leaves_no_node(tmp_path: Path) -> None:
    folder = tmp_path / "swarm"
    proc = subprocess.Popen([sys.executable, "-m", "p2pnode", "swarm", "--nodes", "3", "--keep", "--dir", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until the swarm is up and held
        if "Ctrl-C stops it" in line:
            break
        assert time.monotonic() < deadline
    assert len(_nodes_under(folder)) == 3
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert _nodes_under(folder) == []


def test_nodes_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    folder = tmp_path / "bg"
    up = subprocess.run([sys.executable, "-m", "p2pnode", "swarm", "up", "--nodes", "3", "--dir", str(folder)],
                        capture_output=True, text=True, env=ENV, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    status = subprocess.run([sys.executable, "-m", "p2pnode", "swarm", "status", "--json", "--dir", str(folder)],
                            capture_output=True, text=True, env=ENV, timeout=60)
    assert status.returncode == 0 and '"up": true' in status.stdout
    import json

    pid = json.loads((folder / "swarm.json").read_text())["pid"]
    assert len(_nodes_under(folder)) == 3
    nodes = _nodes_under(folder)
    os.kill(pid, signal.SIGKILL)  # no chance to stop them: the parent-death signal does
    _wait_gone(nodes, timeout=20)
    assert _nodes_under(folder) == []
    down = subprocess.run([sys.executable, "-m", "p2pnode", "swarm", "down", "--dir", str(folder)],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert down.returncode == 0


def test_an_in_process_swarm_dies_with_its_killed_supervisor(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "bg"
    up = subprocess.run([sys.executable, "-m", "p2pnode", "swarm", "up", "--in-process", "--nodes", "3",
                         "--dir", str(folder)], capture_output=True, text=True, env=ENV, timeout=150)
    assert up.returncode == 0, up.stdout + up.stderr
    status = subprocess.run([sys.executable, "-m", "p2pnode", "swarm", "status", "--json", "--dir", str(folder)],
                            capture_output=True, text=True, env=ENV, timeout=60)
    assert status.returncode == 0 and '"up": true' in status.stdout
    state = json.loads((folder / "swarm.json").read_text())
    hosts = {n["pid"] for n in state["nodes"]}
    # nodes share hosts, one per core at most
    assert len(state["nodes"]) == 3 and 1 <= len(hosts) <= min(3, os.cpu_count() or 1)
    assert state["pid"] not in hosts and 0 not in hosts
    os.kill(state["pid"], signal.SIGKILL)
    _wait_gone(hosts, timeout=20)
    assert not any(_alive(h) for h in hosts)
    down = subprocess.run([sys.executable, "-m", "p2pnode", "swarm", "down", "--dir", str(folder)],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert down.returncode == 0


def _wait_gone(pids: Any, timeout: float) -> None:
    """Wait until the processes ``pids`` (not our children) have ended, on their pidfds: the
    kernel says when, no polling."""
    import select

    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    left, deadline = set(fds), time.monotonic() + timeout
    try:
        while left and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(remaining * 1000):
                left.discard(fd)
                poller.unregister(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
