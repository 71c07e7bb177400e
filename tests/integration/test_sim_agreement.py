"""The simulator reproduces a real swarm's outcome: one scenario, one seed, small enough for the
suite, run both as real nodes (in one process) and in the simulator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from p2pnode import scenario as sc
from p2pnode.sim import simulate
from p2pnode.swarm.runner import run_scenario

SCENARIO = {
    "name": "agreement", "seed": 11, "duration": 15,
    "nodes": {"providers": 4, "requesters": 1},
    "adversaries": [{"kind": "garbage", "count": 1, "rate": 1.0}, {"kind": "skip", "count": 1, "rate": 0.2}],
    "workloads": [{"kind": "matmul", "params": {"m": 64, "n": 64, "k": 256, "dtype": "int8"}, "rate": 1.5},
                  {"kind": "train_step", "params": {"steps": 20}, "rate": 0.3}],
    "expect": {"wrong_results_accepted": 0, "jobs_done": 0.85, "cheaters_caught": 1.0},
}


def _outcome(r: dict[str, Any]) -> dict[str, Any]:
    distrusted = set().union(*(set(map(int, s["distrusted"])) for s in r["reputation"])) if r["reputation"] else set()
    jobs = r["jobs"]
    return {
        "held": {e["expectation"]: e["held"] for e in r["expectations"]},
        "wrong_accepted": jobs["wrong_accepted"],
        "distrusted": distrusted,
        "done_fraction": jobs["done"] / max(1, jobs["submitted"]),
        "cheater_award_share": r["cheaters"]["award_share"] or 0.0,
    }


def test_the_simulator_reproduces_the_real_swarm(tmp_path: Path) -> None:
    s = sc.parse(SCENARIO)
    from rich.console import Console

    _, real = run_scenario(s, out=tmp_path / "real", console=Console(file=open(os.devnull, "w")), in_process=True,
                           plots=False)
    sim = simulate(s)
    a, b = _outcome(real), _outcome(sim)
    cheaters = {int(i) for i, role in real["roles_by_node"].items() if role in sc.CHEATER_KINDS}
    assert cheaters == {5, 6} and sim["roles_by_node"] == real["roles_by_node"]  # the same nodes, in order
    failed = [(j.get("state"), j.get("outcome")) for j in real["job_log"] if j.get("state") != "done"]
    assert a["held"] == b["held"] and all(a["held"].values()), (real["expectations"], sim["expectations"],
                                                                real["jobs"]["by_state"], failed)
    assert a["wrong_accepted"] == b["wrong_accepted"] == 0
    assert a["distrusted"] == b["distrusted"] == cheaters  # the same peers caught, no honest one blamed
    assert abs(a["done_fraction"] - b["done_fraction"]) <= 0.15
    # cheaters win an award or two only in the first seconds, while their first-contact checks run
    assert a["cheater_award_share"] <= 0.25 and b["cheater_award_share"] <= 0.25
