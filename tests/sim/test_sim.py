"""The simulator: the shipped scenarios hold in it, it is deterministic, its judgement can fail,
its ledgers verify, flooders are cut off, and what flooding costs a node grows with the market."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2pnode import scenario as sc
from p2pnode.errors import ConfigError
from p2pnode.ledger.entry import verify_chain
from p2pnode.market import pacing
from p2pnode.sim import simulate
from p2pnode.sim.run import SimRun, build
from p2pnode.verify.sampling import SamplingPolicy
from tests.integration.test_cli import ENV

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tools" / "scenarios"
SIMULATED = sorted(p.stem for p in SCENARIOS.glob("*.toml") if p.stem != "models")


def _held(r: dict[str, Any]) -> dict[str, bool]:
    return {e["expectation"]: e["held"] for e in r["expectations"]}


@pytest.mark.parametrize("name", SIMULATED)
def test_every_shipped_scenario_holds_its_expectations_in_the_simulator(name: str) -> None:
    s = sc.load(SCENARIOS / f"{name}.toml")
    if name == "market":
        s = s.scaled(300)  # full size (10,000 nodes) is for the tools
    r = simulate(s)
    assert r["jobs"]["submitted"] >= 10
    assert r["jobs"]["wrong_accepted"] == 0
    assert all(_held(r).values()), r["expectations"]
    assert r["sim"]["protocol_violations"] == 0


def test_the_cheaters_scenario_scaled_up_still_starves_its_cheaters() -> None:
    """At four times its size each requester meets four times the cheaters with the same number of
    jobs: only what requesters learn from each other (through the providers that vouch for them)
    keeps the cheaters' share of late work under its bound."""
    s = sc.load(SCENARIOS / "cheaters.toml")
    r = simulate(s, nodes=50)
    assert r["cheaters"]["count"] >= 10
    assert all(_held(r).values()), r["expectations"]
    assert r["cheaters"]["award_share_after"] < r["cheaters"]["award_share"]


def test_the_same_seed_gives_the_same_run() -> None:
    s = sc.load(SCENARIOS / "churn.toml").shortened(15)
    a, b = simulate(s), simulate(s)
    assert [(j["state"], j["provider"], j["digest"], j["ended"]) for j in a["job_log"]] == \
        [(j["state"], j["provider"], j["digest"], j["ended"]) for j in b["job_log"]]
    c = simulate(s, seed=s.seed + 1)
    assert [j["ended"] for j in c["job_log"]] != [j["ended"] for j in a["job_log"]]


def _cheating_on_reruns(rate: float | None) -> dict[str, Any]:
    s = sc.parse({"name": "reruns", "seed": 3, "duration": 60, "nodes": {"providers": 4, "requesters": 1},
                  "adversaries": [{"kind": "garbage", "count": 1, "rate": 0.5}],
                  "workloads": [{"kind": "train_step", "params": {"steps": 10}, "rate": 1.0}]})
    return simulate(s, policy=SamplingPolicy(fixed_rate=rate) if rate is not None else None)


def test_the_simulator_can_see_wrong_results_accepted_when_nothing_is_checked() -> None:
    unchecked = _cheating_on_reruns(0.0)  # re-runs switched off: the cheater's answers get through
    assert unchecked["jobs"]["wrong_accepted"] > 0
    assert unchecked["cheaters"]["caught"] == 0
    checked = _cheating_on_reruns(None)  # the node's policy: new providers are always re-run
    assert checked["jobs"]["wrong_accepted"] == 0
    assert checked["cheaters"]["caught"] == 1
    assert checked["jobs"]["checked"].get("rerun", 0) > 0


def test_every_requester_ledger_is_a_verifying_chain_with_the_jobs_in_it() -> None:
    s = sc.load(SCENARIOS / "cheaters.toml").shortened(30)
    world = build(s, base_ms=0.5, bandwidth_bps=1e9, ad_interval=10.0, ad_ttl=30.0)
    SimRun(s, world).run()
    requesters = [n for n in world.nodes if n.ledger is not None]
    assert requesters
    for node in requesters:
        assert node.ledger is not None
        v = verify_chain([e.raw for e in node.ledger.entries], owner=node.peer_id)
        kinds = {e.kind for e in node.ledger.entries}
        assert v.count == len(node.ledger.entries) > 10
        assert {"receipt", "verification", "credit"} <= kinds


def test_flooders_are_cut_off_by_their_mesh_peers() -> None:
    s = sc.load(SCENARIOS / "sybil-flood.toml").shortened(15)
    world = build(s, base_ms=0.5, bandwidth_bps=1e9, ad_interval=10.0, ad_ttl=30.0)
    run = SimRun(s, world)
    run.run()
    sybils = [n.index for n in world.nodes if n.role == "sybil"]
    assert sybils and all(not world.mesh.adj[i] for i in sybils)  # every mesh peer banned them
    assert all(any(peer.penalties.is_banned(world.nodes[i].peer_id, world.now()) for peer in world.nodes)
               for i in sybils)
    assert run.converged_s is not None


def _ads_per_node(r: dict[str, Any]) -> float:
    return float(r["traffic"]["steady"]["per_node"]["ads"]["msgs_per_s"])


def test_per_node_gossip_grows_with_the_market_under_flooding_and_stays_flat_when_paced() -> None:
    s = sc.load(SCENARIOS / "market.toml").shortened(10)
    small, large = simulate(s, nodes=50, paced=False), simulate(s, nodes=400, paced=False)
    # every ad reaches every node: 8 times the providers is about 8 times each node's ad traffic
    assert 5 < _ads_per_node(large) / _ads_per_node(small) < 12
    assert large["traffic"]["steady"]["validate_cpu_share"] > small["traffic"]["steady"]["validate_cpu_share"]
    # paced, the market publishes about 2 ads a second at either size (each node sees each ad
    # once, plus its mesh's duplicates); a minute holds about 120 of them
    s = s.shortened(60)
    paced_small, paced_large = simulate(s, nodes=50), simulate(s, nodes=400)
    assert 0.6 < _ads_per_node(paced_large) / _ads_per_node(paced_small) < 1.6
    assert _ads_per_node(paced_large) < _ads_per_node(large) / 5
    for r in (paced_small, paced_large):  # and the market is still whole: every requester lists every provider
        assert r["converged_s"] is not None and r["jobs"]["done"] == r["jobs"]["submitted"] > 0
    assert paced_large["traffic"]["ad_interval_s"] == pytest.approx(pacing.interval(390, 10.0), rel=0.05)


def test_models_are_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="swarm run"):
        simulate(sc.load(SCENARIOS / "models.toml"))


def test_the_cli_writes_a_summary_and_a_plot_and_exits_by_the_expectations(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    ok = subprocess.run([sys.executable, "-m", "p2pnode", "sim", str(SCENARIOS / "baseline.toml"), "--duration", "10",
                         "--out", str(out), "--json"], capture_output=True, text=True, env=ENV, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (out / "summary.json").exists()
    assert (out / "baseline.png").stat().st_size > 10_000
    bad = tmp_path / "impossible.toml"
    bad.write_text((SCENARIOS / "baseline.toml").read_text().replace("job_p99_s = 15", "job_p99_s = 0.001"))
    fail = subprocess.run([sys.executable, "-m", "p2pnode", "sim", str(bad), "--duration", "10"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert fail.returncode == 1
    assert "job_p99_s" in fail.stdout
