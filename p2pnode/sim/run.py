"""``p2pnode sim SCENARIO.toml``: a scenario on the simulated market, judged like a real swarm.

The run follows ``swarm run`` step by step, in virtual time: the nodes start, the market converges
(every live honest observing node lists every live honest provider), work arrives at the
scenario's rates (Poisson, round robin over the requesters, a fresh seed per job), the faults and
crashes strike at the same offsets and on the same role picks, the requesters' reputation tables
are sampled, and the same summary is judged against the same expectations. On top it reports what
only a simulator can afford at scale: messages and bytes per node per second by class, the CPU that
validating gossip costs each node, and how fast the simulation ran.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode.adversary import poisoned_ads
from p2pnode.errors import ConfigError
from p2pnode.market import pacing
from p2pnode.market.capacity_table import TableLimits
from p2pnode.outcome import judge, plot, print_summary, quantile, summed
from p2pnode.scenario import CHEATER_KINDS, Scenario, pick
from p2pnode.services.market import SYNC_AGAIN_S
from p2pnode.sim.ask import Ask
from p2pnode.sim.engine import CLASSES, Impair, Traffic
from p2pnode.sim.world import EPOCH, HONEST, Node, World, roles_of
from p2pnode.verify.sampling import SamplingPolicy
from p2pnode.wire.capacity_ad import decode_ad

CONVERGE_TIMEOUT_S = 90.0
DRAIN_S = 120.0
SAMPLE_EVERY_S = 2.0
MAX_OBSERVERS = 32  # nodes besides the requesters whose tables are kept, to judge convergence
SPEED_GFLOPS = 20.0  # providers' true speed: the median of a lognormal


def host(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def build(s: Scenario, *, base_ms: float, bandwidth_bps: float, ad_interval: float, ad_ttl: float,
          speed_spread: float = 0.0, policy: SamplingPolicy | None = None, paced: bool = True) -> World:
    """The scenario's nodes. ``speed_spread`` is the sigma of the providers' lognormal speeds: 0 by
    default, as in a swarm on one machine that shares one calibration."""
    if any(w.kind == "model" for w in s.workloads):
        raise ConfigError(f"{s.name}: the simulator runs seeded workloads (matmul, infer, train_step); "
                          "model jobs need real models and data: run this scenario with `p2pnode swarm run`")
    n = s.nodes
    world = World(seed=s.seed, n=n, base_ms=base_ms, bandwidth_bps=bandwidth_bps, ad_interval=ad_interval,
                  ad_ttl=ad_ttl, policy=policy, paced=paced)
    rng = random.Random(s.seed)

    def speed() -> float:
        return float(SPEED_GFLOPS * math.exp(rng.gauss(0, speed_spread))) if speed_spread else SPEED_GFLOPS

    for _ in range(s.providers):
        world.add("provider", host(len(world.nodes)), rng, speed=speed())
    for _ in range(s.checkers):
        world.add("checker", host(len(world.nodes)), rng, speed=speed(), checker=True)
    for _ in range(s.requesters):
        world.add("requester", host(len(world.nodes)), rng, provides=False)
    for a in s.adversaries:
        for _ in range(a.count):
            if a.kind in CHEATER_KINDS:
                kw: dict[str, Any] = {"cheat": a.kind, "cheat_rate": a.rate}
                if a.kind == "overclaim":
                    kw = {"cheat": a.kind, "claim": a.rate}
                world.add(a.kind, host(len(world.nodes)), rng, speed=speed(), **kw)
            elif a.kind == "flood":
                world.add("flood", host(len(world.nodes)), rng, speed=speed(), flood=a.rate)
            elif a.kind == "sybil":
                shared = host(len(world.nodes))
                for _ in range(a.ids):
                    world.add("sybil", shared, rng, speed=speed(), flood=a.rate)
            elif a.kind == "poison":
                world.add("poison", host(len(world.nodes)), rng, provides=False, poison=a.ids)
            elif a.kind == "crash":
                world.add("crash", host(len(world.nodes)), rng, speed=speed())
    requesters = [x for x in world.nodes if x.role == "requester"]
    others = [x for x in world.nodes if x.role != "requester" and x.role in HONEST]
    for node in requesters + rng.sample(others, min(MAX_OBSERVERS, len(others))):
        world.make_observer(node)
    for node in requesters:
        world.make_requester(node)
    if s.network is not None:
        for i in range(n):
            world.net.impair[i] = Impair(s.network.delay_ms, s.network.jitter_ms, s.network.loss)
    # the measured cost of validating one ad (decode and verify), for the CPU estimate
    raw = world.build_ad(world.nodes[0])
    rounds = []
    for _ in range(5):  # the best of five rounds: what the work costs, not this machine's hiccups
        t0 = time.perf_counter()
        for _ in range(20):
            decode_ad(raw)
        rounds.append((time.perf_counter() - t0) / 20)
    world.validate_s = min(rounds)
    world.nodes[0].seq = 0
    return world


class SimRun:
    def __init__(self, s: Scenario, world: World) -> None:
        self.s, self.w = s, world
        self.rng = random.Random(s.seed)
        self.jobs: list[dict[str, Any]] = []
        self.asks: list[Ask] = []
        self.events: list[dict[str, Any]] = []
        self.reputation: list[dict[str, Any]] = []
        self.converged_s: float | None = None
        self.heal_converged_s: float | None = None
        self.work_start = 0.0
        self.killed: set[int] = set()
        self.notes: list[str] = []
        self.partitioned = False
        self.steady_from: tuple[float, Traffic, int] | None = None  # after convergence: the steady state
        self.listed: float | None = None

    def note(self, what: str, **data: Any) -> None:
        self.events.append({"t": round(self.w.t - self.work_start, 3), "event": what, **data})

    # the market --------------------------------------------------------------------------
    def _ads(self, node: Node) -> None:
        w = self.w
        if not node.alive:
            return
        if node.flood and not w.mesh.adj[node.index]:
            # banned by every mesh peer: its floods reach nobody (a mesh refresh may link it again)
            w.engine.after(10.0, self._ads, node)
            return
        w.publish_ad(node)
        w.engine.after(w.ad_period(node), self._ads, node)

    def _join(self, node: Node) -> None:
        """A provider's first ad, then its periodic ones at a random phase, as in a market whose
        providers joined at different times."""
        w = self.w
        if not node.alive:
            return
        w.publish_ad(node)
        w.engine.after(w.ad_period(node) * (1.0 if node.flood else node.rng.random()), self._ads, node)

    def providers(self) -> set[int]:
        return {n.index for n in self.w.nodes if n.provides and n.alive and n.role in HONEST}

    def converged(self) -> bool:
        """Every live honest observer lists every live honest provider, or, in a market larger
        than its table, has its table full."""
        w = self.w
        want = {w.nodes[i].peer_id for i in self.providers()}
        for o in w.observers:
            node = w.nodes[o]
            if not node.alive or node.role not in HONEST:
                continue
            w.drain(node)
            assert node.table is not None
            if len(node.table) >= node.table.limits.max_peers:
                continue
            listed = {e.ad.peer_id for e in node.table.entries(w.now())} | {node.peer_id}
            if not want <= listed:
                return False
        return True

    def honest_listed(self) -> float | None:
        """The least share, over the live honest requesters, of the live honest providers each lists
        (of its table's places, in a market larger than its table)."""
        w = self.w
        want = {w.nodes[i].peer_id for i in self.providers()}
        shares = []
        for r in roles_of(w.nodes)["requesters"]:
            node = w.nodes[r]
            if not node.alive or node.table is None:
                continue
            w.drain(node)
            listed = {e.ad.peer_id for e in node.table.entries(w.now())} & want
            shares.append(len(listed) / max(1, min(len(want), node.table.limits.max_peers)))
        return round(min(shares), 4) if shares else None

    def _poison(self, node: Node) -> None:
        """A poisoner's market sync to every observer (it dials them all, as one does), again 5 and
        20 s later as nodes sync with a new connection: ``node.poison`` made-up providers each time."""
        w = self.w
        if not node.alive:
            return
        ads = [decode_ad(raw) for raw in poisoned_ads(node.poison, w.now(), seed=node.index,
                                                        addr=f"/ip4/{node.host}/tcp/9")]
        for o in w.observers:
            if w.nodes[o].role in HONEST:
                w.sync(w.nodes[o], node, ads)

    def wait_converged(self, timeout: float) -> float | None:
        t0 = self.w.t
        step = 0.25 if self.w.net.n <= 1000 else 1.0
        while self.w.t - t0 < timeout:
            self.w.engine.run(self.w.t + step)
            if self.converged():
                return round(self.w.t - t0, 3)
        return None

    # work and faults ---------------------------------------------------------------------
    def _submit(self) -> None:
        s, w = self.s, self.w
        t = w.t - self.work_start
        if t >= s.duration:
            return
        spec = self.rng.choices(s.workloads, weights=[x.rate * x.weight for x in s.workloads])[0]
        requesters = roles_of(w.nodes)["requesters"]
        req = w.nodes[requesters[len(self.jobs) % len(requesters)]]
        params = dict(spec.params)
        if "seed" not in params:
            params["seed"] = self.rng.randrange(1 << 30)
        job = {"index": len(self.jobs), "workload": spec.kind, "params": params, "requester": req.index,
               "submitted": round(t, 3), "ended": 0.0, "state": "pending", "outcome": "", "provider": "",
               "checked": "", "digest": "", "declines": {}, "correct": None}
        self.jobs.append(job)
        if req.alive:
            ask = Ask(w, req, spec.kind, params, on_end=partial(self._ended, job=job))
            self.asks.append(ask)
            ask.start()
        else:
            job.update(state="error", outcome="requester down", ended=round(t, 3))
        rate = sum(x.rate for x in s.workloads)
        w.engine.after(self.rng.expovariate(rate), self._submit)

    def _ended(self, ask: Ask, *, job: dict[str, Any]) -> None:
        w = self.w
        awarded = next((t for t, what, _ in ask.events if what == "award"), None)
        if awarded is not None:
            job["award_s"] = round(awarded - ask.submitted, 4)
        job.update(state=ask.state, outcome=ask.outcome[:200], ended=round(w.t - self.work_start, 3),
                   checked=ask.checked, digest=ask.digest.hex(), declines=dict(ask.declines),
                   provider=str(w.by_id[ask.provider]) if ask.provider else "")
        if ask.state == "done":
            job["correct"] = ask.digest == w.honest_digest(ask.workload, ask.params)

    def _fault(self, f: Any) -> None:
        w = self.w
        roles = roles_of(w.nodes)
        if f.action == "kill":
            targets = [i for i in pick(f.target, roles, self.rng) if w.nodes[i].alive]
            for i in targets:
                w.kill(i)
                self.killed.add(i)
            self.note("kill", nodes=targets)
        elif f.action == "restart":
            targets = sorted(self.killed) if f.target == "all" else \
                [i for i in pick(f.target, roles, self.rng) if i in self.killed]
            for i in targets:
                w.restart(i)
                self.killed.discard(i)
                self._ads_later(w.nodes[i])
            self.note("restart", nodes=targets)
        elif f.action == "partition":
            side = set(pick(f.target if f.target != "all" else "half", roles, self.rng))
            w.net.side[:] = [1 if i in side else 0 for i in range(w.net.n)]
            w.mesh.refresh(w.observers)
            self.partitioned = True
            self.note("partition", applied=True, sides=[len(side), w.net.n - len(side)])
        elif f.action == "heal":
            w.net.side[:] = 0
            w.mesh.refresh(w.observers)
            self.note("heal")
        elif f.action in ("netem", "clear"):
            targets = pick(f.target, roles, self.rng)
            for i in targets:
                if f.action == "clear":
                    w.net.impair.pop(i, None)
                else:
                    w.net.impair[i] = Impair(f.delay_ms, f.jitter_ms, f.loss)
            self.note(f.action, nodes=targets)

    def _ads_later(self, node: Node) -> None:
        if node.provides:
            self.w.engine.after(node.rng.uniform(0.5, 1.5), self._ads, node)

    def _crash(self, i: int) -> None:
        self.w.kill(i)
        self.note("crash", node=i)

    def _sample(self) -> None:
        w = self.w
        now = w.now()
        for r in roles_of(w.nodes)["requesters"]:
            node = w.nodes[r]
            if not node.alive or node.trust is None:
                continue
            rep = node.trust.rep
            scores, distrusted = {}, []
            for peer in rep.own:
                i = w.by_id.get(peer)
                if i is None:
                    continue
                scores[str(i)] = round(rep.mean(peer, now), 4)
                if rep.distrusted(peer, now):
                    distrusted.append(i)
            self.reputation.append({"t": round(w.t - self.work_start, 3), "requester": r, "scores": scores,
                                    "distrusted": distrusted})
        if w.t - self.work_start < self.s.duration + DRAIN_S:
            w.engine.after(SAMPLE_EVERY_S, self._sample)

    # the run -----------------------------------------------------------------------------
    def run(self) -> None:
        s, w = self.s, self.w
        w.mesh.build(range(w.net.n))
        w.mesh.refresh(w.observers)
        w.market_hint = len(self.providers())
        for node in w.nodes:
            if node.provides:
                w.engine.after(node.rng.uniform(0.1, 1.0), self._join, node)
            if node.poison:
                for delay in SYNC_AGAIN_S:
                    w.engine.after(node.rng.uniform(0.1, 1.0) + delay, self._poison, node)
        limit = TableLimits().max_peers
        if len(self.providers()) > limit:
            self.notes.append(f"{len(self.providers())} providers, and a market table holds {limit}: converged "
                              "means every table full (each requester holds its own share of the market)")
        self.converged_s = self.wait_converged(CONVERGE_TIMEOUT_S)
        self.work_start = w.t
        w.mesh.flush()
        self.steady_from = (w.t, w.net.traffic.copy(), w.ads_published + w.reports_published)
        self.note("converged", seconds=self.converged_s)
        rate = sum(x.rate for x in s.workloads)
        if rate and roles_of(w.nodes)["requesters"]:
            w.engine.after(self.rng.expovariate(rate), self._submit)
        for f in s.faults:
            w.engine.at(self.work_start + f.at, self._fault, f)
        for n in w.nodes:
            if n.role == "crash":
                w.engine.at(self.work_start + self.rng.uniform(0.2, 0.7) * s.duration, self._crash, n.index)
        w.engine.after(0.0, self._sample)
        w.engine.run(self.work_start + s.duration)
        self.note("work_ends")
        end = self.work_start + s.duration + DRAIN_S
        while any(j["state"] == "pending" for j in self.jobs) and w.t < end:
            w.engine.run(w.t + 1.0)
        for j in self.jobs:
            if j["state"] == "pending":
                j.update(state="error", outcome="still running when the run ended")
        self.listed = self.honest_listed()
        heals = [e["t"] for e in self.events if e["event"] == "heal"]
        if heals:
            since = w.t - (self.work_start + heals[-1])
            took = self.wait_converged(CONVERGE_TIMEOUT_S)
            self.heal_converged_s = round(took + since, 3) if took is not None else None


def summarise(r: SimRun, wall_s: float) -> dict[str, Any]:
    s, w = r.s, r.w
    elapsed = max(w.t, 1e-9)
    w.mesh.flush()
    cheaters = {str(n.index) for n in w.nodes if n.role in CHEATER_KINDS}
    jobs = r.jobs
    ended = [j for j in jobs if j["state"] != "pending"]
    done = [j for j in ended if j["state"] == "done"]
    wrong = [j for j in done if j["correct"] is False]
    latencies = sorted(j["ended"] - j["submitted"] for j in done)
    awards = [j for j in ended if j["provider"]]
    award_s = sorted(j["award_s"] for j in ended if "award_s" in j)
    share = s.expect.get("cheater_share")
    after = int(share.get("after", 0)) if isinstance(share, dict) else 0
    late = awards[after:] if after < len(awards) else []
    caught: set[str] = set()
    for sample in r.reputation:
        caught |= {str(i) for i in sample["distrusted"]}
    cheated = {j["provider"] for j in ended if j["provider"] in cheaters
               and (j["state"] == "rejected" or j["correct"] is False)}
    steady = None
    if r.steady_from is not None and elapsed - r.steady_from[0] > 1.0:
        t0, before, published = r.steady_from
        window = w.net.traffic.since(before)
        seconds = elapsed - t0
        w.mesh.heartbeat_traffic(seconds, (w.ads_published + w.reports_published - published) / seconds, window)
        steady = _traffic(window, seconds, w.validate_s)
    w.mesh.heartbeat_traffic(elapsed, (w.ads_published + w.reports_published) / elapsed)
    market = w.market_size()
    samples = sorted(w.propagation)
    rejected: dict[str, int] = {}
    for o in w.observers:
        for k, v in w.nodes[o].rejected.items():
            rejected[k] = rejected.get(k, 0) + v
    result: dict[str, Any] = {
        "scenario": s.name, "description": s.description, "nodes": w.net.n, "completed": True,
        "simulated": True, "isolated": True, "notes": r.notes,
        "roles": {k: len(v) for k, v in roles_of(w.nodes).items()},
        "converged_s": r.converged_s, "converged_after_heal_s": r.heal_converged_s,
        "jobs": {"submitted": len(jobs), "ended": len(ended), "done": len(done),
                 "by_state": {st: sum(1 for j in ended if j["state"] == st) for st in sorted({j["state"] for j in ended})},
                 "wrong_accepted": len(wrong), "judged": len(done),
                 "p50_s": quantile(latencies, 0.5), "p99_s": quantile(latencies, 0.99),
                 "award_p50_s": quantile(award_s, 0.5), "award_p99_s": quantile(award_s, 0.99),
                 "declines": summed(j["declines"] for j in ended),
                 "checked": {c: sum(1 for j in done if j["checked"] == c) for c in sorted({j["checked"] for j in done})}},
        "honest_listed": r.listed, "third_party_dials": w.third_party_dials,
        "cheaters": {"count": len(cheaters), "caught": len(cheaters & caught), "cheated": len(cheated),
                     "caught_of_cheated": len(cheated & caught),
                     "award_share": (sum(1 for j in awards if j["provider"] in cheaters) / len(awards)) if awards else None,
                     "award_share_after": (sum(1 for j in late if j["provider"] in cheaters) / len(late)) if late else None,
                     "after_jobs": after},
        "propagation": _propagation(samples),
        "traffic": {**_traffic(w.net.traffic, elapsed, w.validate_s), "seconds": round(elapsed, 3),
                    "validate_s_per_ad": round(w.validate_s, 7),
                    "ads_published": w.ads_published, "reports_published": w.reports_published,
                    "table_rejections": rejected, "live_nodes": int(w.net.alive.sum()),
                    "paced": w.paced, "market_size": market,
                    "ad_interval_s": round(pacing.interval(market, w.ad_interval) if w.paced else w.ad_interval, 3),
                    "steady": steady},
        "sim": {"wall_s": round(wall_s, 3), "simulated_s": round(elapsed, 3), "events": w.engine.events,
                "node_seconds_per_s": round(w.net.n * elapsed / max(wall_s, 1e-9), 1),
                "protocol_violations": w.violations,
                "ledger_entries": sum(len(n.ledger) for n in w.nodes if n.ledger is not None)},
        "events": r.events,
        "reputation": r.reputation[-200:] if w.net.n > 200 else r.reputation,
        "job_log": jobs,
        "roles_by_node": {str(n.index): n.role for n in w.nodes} if w.net.n <= 2000 else {},
    }
    result["expectations"] = judge(s.expect, result)
    return result


def _traffic(tr: Traffic, seconds: float, validate_s: float) -> dict[str, Any]:
    """Messages and bytes per node per second, by class and in all, and the CPU share that
    validating the gossiped ads and reports costs a node, over ``seconds`` of counts in ``tr``."""
    per_node = {}
    for c, name in enumerate(CLASSES):
        msgs = (tr.msgs_in[:, c] + tr.msgs_out[:, c]) / seconds
        nbytes = (tr.bytes_in[:, c] + tr.bytes_out[:, c]) / seconds
        per_node[name] = {"msgs_per_s": round(float(msgs.mean()), 3), "bytes_per_s": round(float(nbytes.mean()), 1),
                          "msgs_per_s_p99": round(float(np.quantile(msgs, 0.99)), 3)}
    total_msgs = (tr.msgs_in + tr.msgs_out).sum(axis=1) / seconds
    total_bytes = (tr.bytes_in + tr.bytes_out).sum(axis=1) / seconds
    ads_in = tr.msgs_in[:, CLASSES.index("ads")] + tr.msgs_in[:, CLASSES.index("reports")]
    return {"per_node": per_node, "msgs_per_node_s": round(float(total_msgs.mean()), 3),
            "bytes_per_node_s": round(float(total_bytes.mean()), 1),
            "msgs_per_node_s_p99": round(float(np.quantile(total_msgs, 0.99)), 3),
            "validate_cpu_share": round(float((ads_in * validate_s).mean() / seconds), 6)}


def _propagation(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"ads": 0, "mean_s": None, "cdf": [], "p50_le_s": None, "p99_le_s": None}
    bounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    arr = np.asarray(samples)
    cdf = [[b, round(float((arr <= b).mean()), 4)] for b in bounds] + [[None, 1.0]]
    return {"ads": len(samples), "mean_s": round(float(arr.mean()), 5), "cdf": cdf,
            "p50_le_s": round(float(np.quantile(arr, 0.5)), 5), "p99_le_s": round(float(np.quantile(arr, 0.99)), 5)}


def simulate(s: Scenario, *, nodes: int | None = None, duration: float | None = None, seed: int | None = None,
             base_ms: float = 0.5, bandwidth_mbps: float = 1000.0, ad_interval: float = 10.0,
             ad_ttl: float = 30.0, speed_spread: float = 0.0, policy: SamplingPolicy | None = None,
             paced: bool = True) -> dict[str, Any]:
    """Run ``s`` (scaled to ``nodes``, shortened to ``duration``) on the simulator; its summary.
    ``policy`` replaces the requesters' check policy (experiments: what a lower check rate costs);
    ``paced=False`` floods every ad every ``ad_interval`` (the version-1 market, as a baseline)."""
    if nodes is not None and nodes != s.nodes:
        s = s.scaled(nodes)
    if duration is not None:
        s = s.shortened(duration)
    if seed is not None:
        s = replace(s, seed=seed)
    t0 = time.perf_counter()
    world = build(s, base_ms=base_ms, bandwidth_bps=bandwidth_mbps * 1e6, ad_interval=ad_interval, ad_ttl=ad_ttl,
                  speed_spread=speed_spread, policy=policy, paced=paced)
    r = SimRun(s, world)
    r.run()
    return summarise(r, time.perf_counter() - t0)


def run_sim(s: Scenario, *, out: Path | None, as_json: bool, console: Any = None, **kw: Any) -> tuple[int, dict[str, Any]]:
    """The CLI's ``sim``: simulate, write ``summary.json`` and the plot, print; exit status."""
    from rich.console import Console

    console = console or Console(stderr=as_json)
    summary = simulate(s, **kw)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        summary["plots"] = plot(summary, out, summary["notes"])
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(console, summary)
        t, sim = summary["traffic"], summary["sim"]
        st = t["steady"] or t
        console.print(f"traffic per node after convergence: {st['msgs_per_node_s']} msgs/s, "
                      f"{st['bytes_per_node_s'] / 1000:.1f} kB/s (ads {st['per_node']['ads']['msgs_per_s']}/s), "
                      f"ad validation ~{st['validate_cpu_share']:.2%} of a core; "
                      f"{'paced' if t['paced'] else 'flooded'} ads every {t['ad_interval_s']:g} s in a market of "
                      f"{t['market_size']:,}; simulated {sim['simulated_s']:.0f} s of {summary['nodes']} nodes in "
                      f"{sim['wall_s']:.1f} s ({sim['node_seconds_per_s']:,.0f} node-s/s)")
    held = all(e["held"] for e in summary["expectations"])
    return (0 if held else 1), summary


__all__ = ["EPOCH", "simulate", "run_sim"]
