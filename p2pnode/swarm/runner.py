"""``p2pnode swarm run SCENARIO.toml``: a scenario on real node processes, judged by its expectations.

The runner builds the swarm the scenario describes (roles, adversaries, the network), waits for
the market to converge, submits work at the scenario's rates from its requesters (each job through
the requester's control API, exactly as a user would), applies the faults at their times, samples
every requester's view of every provider's reputation, and at the end checks every result it can
against a local computation, reads each node's ad-propagation histogram, and evaluates the
scenario's expectations. The outcome is a JSON summary and PNG plots in the output folder; the exit
status is 0 only when every expectation held.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pnode.errors import ControlError, LocalError
from p2pnode.market.capacity_table import TableLimits
from p2pnode.outcome import judge, plot, print_summary, quantile, summed
from p2pnode.scenario import CHEATER_KINDS, Scenario, pick
from p2pnode.swarm.launcher import Launcher, NodeSpec, Stopped, stop_on_signals
from p2pnode.swarm.network import SwarmNetwork, can_isolate

MAX_IN_FLIGHT = 32
MAX_PEERS = TableLimits().max_peers
CONVERGE_TIMEOUT_S = 90.0
SAMPLE_EVERY_S = 2.0


def address(i: int) -> str:
    return f"127.77.{i // 250}.{i % 250 + 2}"


def plan(s: Scenario) -> list[NodeSpec]:
    """The swarm's nodes: providers, checkers, requesters, then each adversary's."""
    specs: list[NodeSpec] = []

    def add(role: str, args: list[str], addr: str | None = None) -> None:
        i = len(specs)
        specs.append(NodeSpec(i, role, addr or address(i), args))

    for _ in range(s.providers):
        add("provider", [])
    for _ in range(s.checkers):
        add("checker", ["--checker"])
    for _ in range(s.requesters):
        add("requester", ["--no-provide"])
    for a in s.adversaries:
        for _ in range(a.count):
            if a.kind in CHEATER_KINDS:
                mode = "stall" if a.kind == "stall" else f"{a.kind}:{a.rate:g}"
                add(a.kind, ["--adversary", mode])
            elif a.kind == "flood":
                add("flood", ["--adversary", f"flood:{a.rate:g}"])
            elif a.kind == "sybil":  # one operator: many identities behind one address
                shared = address(len(specs))
                for _ in range(a.ids):
                    add("sybil", ["--adversary", f"flood:{a.rate:g}"], shared)
            elif a.kind == "poison":  # serves made-up providers in market syncs, dials everyone
                add("poison", ["--adversary", f"poison:{a.ids}", "--no-provide"])
            elif a.kind == "crash":
                add("crash", [])
    if s.network is not None:
        spec = _impair_spec(s.network.delay_ms, s.network.jitter_ms, s.network.loss)
        for n in specs:
            n.args += ["--impair", spec]
    return specs


def _impair_spec(delay_ms: float, jitter_ms: float, loss: float) -> str:
    return f"delay_ms={delay_ms:g},jitter_ms={jitter_ms:g},drop={loss / 100:g}"


@dataclass
class JobOutcome:
    index: int
    workload: str
    params: dict[str, Any]
    requester: int
    submitted: float
    ended: float = 0.0
    state: str = "pending"
    outcome: str = ""
    provider: str = ""
    checked: str = ""
    digest: str = ""
    declines: dict[str, int] = field(default_factory=dict)  # why providers did not bid
    correct: bool | None = None  # None: could not be judged

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Run:
    scenario: Scenario
    out: Path
    launcher: Launcher
    network: SwarmNetwork | None
    specs: list[NodeSpec]
    started: float = 0.0
    jobs: list[JobOutcome] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] | None = None  # the trained classifier and its data, for model workloads
    reputation: list[dict[str, Any]] = field(default_factory=list)  # samples over time
    notes: list[str] = field(default_factory=list)
    converged_s: float | None = None
    heal_converged_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def roles(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {"providers": [], "requesters": [], "checkers": [], "adversaries": []}
        for n in self.specs:
            key = {"provider": "providers", "requester": "requesters", "checker": "checkers"}.get(n.role, "adversaries")
            roles[key].append(n.index)
        return roles

    def t(self) -> float:
        return time.monotonic() - self.started

    def note(self, what: str, **data: Any) -> None:
        with self.lock:
            self.events.append({"t": round(self.t(), 3), "event": what, **data})


def run_scenario(s: Scenario, *, out: Path | None = None, as_json: bool = False, console: Any = None,
                 isolate: bool = True, keep_dirs: bool = False, in_process: bool = False,
                 ui: str = "", plots: bool = True) -> tuple[int, dict[str, Any]]:
    """``ui``: serve the swarm view there (HOST:PORT on loopback) while the scenario runs; ``plots``:
    draw the summary's PNG (about a second of CPU)."""
    from rich.console import Console

    console = console or Console(stderr=as_json)
    out = out or Path(f"scenario-{s.name}")
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="p2pscen-", dir="/tmp"))
    ok, why = can_isolate()
    network = SwarmNetwork() if ok and isolate else None
    notes = [] if network is not None else [why or "run on the host's loopback (asked not to isolate)"]
    specs = plan(s)
    if in_process:
        from p2pnode.swarm.inproc import InProcessLauncher

        launcher: Launcher = InProcessLauncher(base, wrap=network.wrap if network else (), seed=s.seed)
        notes.append("in-process: all nodes in one process; a kill stops a node at once, not by SIGKILL")
    else:
        launcher = Launcher(base, wrap=network.wrap if network else (), seed=s.seed)
    run = Run(s, out, launcher, network, specs, notes=notes)
    summary: dict[str, Any] = {}
    view = None
    try:
        with stop_on_signals():
            console.print(f"[bold]{s.name}[/]: {s.description or ''} — {len(specs)} nodes"
                          + ("" if network else f" [yellow]({notes[0]})[/]"))
            t0 = time.monotonic()
            if ui:
                view = _start_view(run, base, ui)
                console.print(f"  swarm view: {view.login}", highlight=False, soft_wrap=True)
            launcher.start(specs)
            run.started = time.monotonic()
            run.note("started", seconds=round(run.started - t0, 3))
            run.converged_s = _converge(run, CONVERGE_TIMEOUT_S)
            run.note("converged", seconds=run.converged_s)
            console.print(f"  started in {run.started - t0:.1f} s, market converged in "
                          f"{run.converged_s if run.converged_s is not None else 'never'} s")
            if any(w.kind == "model" for w in s.workloads):  # trained before the work's clock starts
                t_model = time.monotonic()
                run.model = _model_files(run)
                run.notes.append(f"the model was trained and packed in {time.monotonic() - t_model:.1f} s, "
                                 "before the work began")
            run.started = time.monotonic()  # work and faults are timed from here
            _drive(run, console)
            summary = _summarise(run)
    except Stopped as why:
        run.notes.append(f"stopped by {why}")
        summary = _summarise(run)
    finally:
        if view is not None:
            view.stop()
        clean = launcher.stop_all()
        if network is not None:
            network.close()
        if not keep_dirs:
            shutil.rmtree(base, ignore_errors=True)
    summary["clean_exit"] = clean
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["plots"] = plot(summary, out, run.notes) if plots else []
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(console, summary)
    held = all(e["held"] for e in summary.get("expectations", []))
    return (0 if held and summary.get("completed") else 1), summary


def _start_view(run: Run, base: Path, listen: str) -> Any:
    """The swarm view of this run: its nodes as they start, its events and faults on its clock."""
    from p2pnode.web.swarm_view import ViewThread, launcher_source

    def events() -> list[dict[str, Any]]:
        with run.lock:
            return list(run.events)

    source = launcher_source(run.scenario.name, run.launcher, {n.index: n.role for n in run.specs}, events,
                             lambda: run.t() if run.started else 0.0, run.scenario.duration)
    return ViewThread(source, base, listen).start()


# the run -----------------------------------------------------------------------------------

def _providers(run: Run) -> list[int]:
    return [n.index for n in run.specs if n.role != "requester" and run.launcher.nodes[n.index].alive]


HONEST = ("provider", "checker", "requester", "crash")


def _converged(run: Run) -> bool:
    """Every live honest node lists every live honest provider (flooders are rightly refused, and a
    banned node hears nothing, so neither counts)."""
    want = {run.launcher.nodes[i].peer for i in _providers(run) if run.specs[i].role in HONEST}
    for node in run.launcher.live():
        if run.specs[node.index].role not in HONEST:
            continue
        market = run.launcher.try_call(node.index, "market", timeout=5)
        if market is None or not want <= {e["peer"] for e in market}:
            return False
    return True


def _honest_listed(run: Run) -> float | None:
    """The least share, over the live requesters, of the live honest providers each lists."""
    want = {run.launcher.nodes[i].peer for i in _providers(run) if run.specs[i].role in HONEST}
    shares = []
    for r in run.roles["requesters"]:
        if not run.launcher.nodes[r].alive:
            continue
        market = run.launcher.try_call(r, "market", timeout=5)
        if market is not None:
            shares.append(len(want & {e["peer"] for e in market}) / max(1, min(len(want), MAX_PEERS)))
    return round(min(shares), 4) if shares else None


def _converge(run: Run, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _converged(run):
            return round(time.monotonic() - t0, 3)
        time.sleep(0.25)
    return None


def _drive(run: Run, console: Any) -> None:
    s = run.scenario
    rng = random.Random(s.seed)
    rate = sum(w.rate for w in s.workloads)
    requesters = run.roles["requesters"]
    faults = list(s.faults)
    crash_plan = sorted((rng.uniform(0.2, 0.7) * s.duration, n.index) for n in run.specs if n.role == "crash")
    killed: set[int] = set()
    model = run.model
    pool = ThreadPoolExecutor(MAX_IN_FLIGHT)
    pending: list[Any] = []
    next_job = rng.expovariate(rate) if rate and requesters else math.inf
    next_sample = 0.0
    t_end = s.duration
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        console=console, transient=True)
    with progress:
        task = progress.add_task(s.name, total=s.duration, info="")
        while (t := run.t()) < t_end:
            while faults and faults[0].at <= t:
                _fault(run, faults.pop(0), rng, killed)
            while crash_plan and crash_plan[0][0] <= t:
                _, i = crash_plan.pop(0)
                run.launcher.kill(i)
                run.note("crash", node=i)
            if t >= next_sample:
                _sample(run)
                next_sample = t + SAMPLE_EVERY_S
            while t >= next_job and len(pending) < 10_000:
                spec = rng.choices(s.workloads, weights=[w.rate * w.weight for w in s.workloads])[0]
                req = requesters[len(run.jobs) % len(requesters)]
                params = dict(spec.params)
                if spec.kind in ("matmul", "infer", "train_step") and "seed" not in params:
                    params["seed"] = rng.randrange(1 << 30)
                job = JobOutcome(len(run.jobs), spec.kind, params, req, round(t, 3))
                run.jobs.append(job)
                pending.append(pool.submit(_submit, run, job, model))
                next_job = t + rng.expovariate(rate)
            done = sum(1 for j in run.jobs if j.state != "pending")
            progress.update(task, completed=t, info=f"{len(run.jobs)} jobs, {done} ended, {len(killed)} down")
            time.sleep(0.05)
        run.note("work_ends")
        for f in faults:  # late faults (a heal scheduled at the end) still apply
            _fault(run, f, rng, killed)
        deadline = time.monotonic() + 120
        for fut in pending:
            fut.result(timeout=max(0.1, deadline - time.monotonic()))
        pool.shutdown(wait=True)
    _sample(run)
    if any(f.action == "heal" for f in s.faults):
        t0 = time.monotonic()
        run.heal_converged_s = _converge(run, CONVERGE_TIMEOUT_S)
        if run.heal_converged_s is not None:
            run.heal_converged_s = round(time.monotonic() - t0 + _since_heal(run), 3)


def _since_heal(run: Run) -> float:
    heals = [e["t"] for e in run.events if e["event"] == "heal"]
    return max(0.0, run.t() - heals[-1]) if heals else 0.0


def _fault(run: Run, f: Any, rng: random.Random, killed: set[int]) -> None:
    launcher, roles = run.launcher, run.roles
    if f.action == "kill":
        targets = [i for i in pick(f.target, roles, rng) if launcher.nodes[i].alive]
        for i in targets:
            launcher.kill(i)
            killed.add(i)
        run.note("kill", nodes=targets)
    elif f.action == "restart":
        targets = sorted(killed) if f.target == "all" else [i for i in pick(f.target, roles, rng) if i in killed]
        for i in targets:
            launcher.restart(i)
            killed.discard(i)
        run.note("restart", nodes=targets)
    elif f.action == "partition":
        everyone = sorted(launcher.nodes)
        side = set(pick(f.target if f.target != "all" else "half", roles, rng))
        groups = [[run.specs[i].address for i in everyone if i in side],
                  [run.specs[i].address for i in everyone if i not in side]]
        if run.network is None:
            run.notes.append(f"partition at {f.at:g} s not applied (no network namespace)")
            run.note("partition", applied=False)
        else:
            rules = run.network.partition(groups)
            run.note("partition", applied=True, sides=[len(g) for g in groups], rules=rules)
    elif f.action == "heal":
        if run.network is not None:
            run.network.heal()
        run.note("heal")
    elif f.action in ("netem", "clear"):
        spec = "" if f.action == "clear" else _impair_spec(f.delay_ms, f.jitter_ms, f.loss)
        targets = pick(f.target, roles, rng)
        for i in targets:
            launcher.try_call(i, "impair", spec=spec)
        run.note(f.action, nodes=targets, spec=spec)


def _sample(run: Run) -> None:
    names = {run.launcher.nodes[i].peer: i for i in run.launcher.nodes}
    for r in run.roles["requesters"]:
        table = run.launcher.try_call(r, "reputation", timeout=5)
        if table is None:
            continue
        run.reputation.append({"t": round(run.t(), 3), "requester": r,
                               "scores": {names[e["peer"]]: round(e["score"], 4) for e in table if e["peer"] in names},
                               "distrusted": [names[e["peer"]] for e in table if e["peer"] in names and e["distrusted"]]})


def _model_files(run: Run) -> dict[str, Any] | None:
    try:

        from p2pnode import models
        from p2pnode.exec import onnx_model

        data = models.digits(run.scenario.seed)
    except LocalError as exc:
        run.notes.append(f"model workloads skipped: {exc}")
        return None
    from p2pnode.exec import backends

    folder = run.launcher.base / "model"
    folder.mkdir(exist_ok=True)
    raw, _ = onnx_model.unpack(data.model)
    (folder / "digits.onnx").write_bytes(raw)
    # everything the judging threads read, made here once (made lazily, two threads raced on it)
    return {"model": str(folder / "digits.onnx"), "x": data.x, "labels": data.y, "accuracy": data.accuracy,
            "folder": folder, "ops": backends.ops("ort-cpu"), "blob": onnx_model.pack_file(folder / "digits.onnx")}


def _submit(run: Run, job: JobOutcome, model: dict[str, Any] | None) -> None:
    try:
        if job.workload == "model":
            if model is None:
                job.state, job.outcome = "skipped", "no model"
                return
            import numpy as np

            # each job classifies its own random subset (the same data twice would be resumed, not run)
            rng = np.random.default_rng(job.index + 1000 * run.scenario.seed)
            rows = np.sort(rng.choice(len(model["x"]), size=int(rng.integers(100, len(model["x"]))), replace=False))
            data, out = model["folder"] / f"x{job.index}.npy", model["folder"] / f"out{job.index}.npy"
            np.save(data, model["x"][rows])
            r = run.launcher.call(job.requester, "submit", timeout=300, model=model["model"], input=str(data),
                                  output=str(out), max_price=10**9, deadline=120, backend="")
            local = _local_labels(model, rows)
            job.state, job.outcome = "done", f"{r['rows']} rows" + (f", {r['retries']} redone" if r["retries"] else "")
            job.provider = next(iter(r["by_provider"]), "")
            job.checked = r["verify"]
            job.correct = bool(np.array_equal(np.load(out), local))
        else:
            r = run.launcher.call(job.requester, "submit", timeout=120, workload=job.workload, params=job.params,
                                  max_price=10**9, deadline=60, k=3)
            job.state, job.outcome, job.provider = r["state"], r["outcome"], r["peer"]
            job.checked, job.digest = r.get("checked", ""), r.get("digest", "")
            for e in r.get("events", []):
                if e.get("event") == "decline":
                    job.declines[e["code"]] = job.declines.get(e["code"], 0) + 1
    except ControlError as exc:
        job.state, job.outcome = "error", str(exc)[:200]
    finally:
        job.ended = round(run.t(), 3)


def _local_labels(model: dict[str, Any], rows: Any) -> Any:
    """The model's own answers for these rows, here (what an honest swarm must return)."""
    from p2pnode.exec import model_jobs

    sess, _ = model["ops"].session(model["blob"])
    job = model_jobs.prepare(model["blob"], {"": model["x"][rows]})
    return sess.run(None, job.arrays)[0]


# judging ----------------------------------------------------------------------------------

_EXPECTED: dict[str, str] = {}


def _expected_digest(workload: str, params: dict[str, Any]) -> str | None:
    """The honest digest of a seeded job, computed here (NumPy, as every provider of this swarm)."""
    from p2pnode.exec import backends, workloads

    key = hashlib.sha256(json.dumps([workload, params], sort_keys=True).encode()).hexdigest()
    if key not in _EXPECTED:
        wl = workloads.get(workload)
        _EXPECTED[key] = wl.run(wl.check(params), backends.ops("numpy"), lambda f: None).digest.hex()
    return _EXPECTED[key]


def _summarise(run: Run) -> dict[str, Any]:
    s = run.scenario
    names = {n.peer: n.index for n in run.launcher.nodes.values()}
    cheaters = {run.launcher.nodes[n.index].peer for n in run.specs if n.role in CHEATER_KINDS}
    for j in run.jobs:
        if j.state == "done" and j.workload != "model" and j.correct is None:
            expected = _expected_digest(j.workload, j.params)
            exact = j.workload == "matmul" and j.params.get("dtype") == "int8" or j.workload == "train_step"
            if expected == j.digest:
                j.correct = True
            elif exact or j.provider in cheaters:
                j.correct = False  # an exact workload, or a float one from a known cheater, that differs
    ended = [j for j in run.jobs if j.state not in ("pending",)]
    done = [j for j in ended if j.state == "done"]
    wrong = [j for j in done if j.correct is False]
    latencies = sorted(j.ended - j.submitted for j in done)
    awards = [j for j in ended if j.provider]
    after = int(s.expect.get("cheater_share", {}).get("after", 0)) if isinstance(s.expect.get("cheater_share"), dict) else 0
    late = awards[after:] if after < len(awards) else []
    share_late = (sum(1 for j in late if j.provider in cheaters) / len(late)) if late else None
    caught = set()
    for sample in run.reputation:
        caught |= {run.launcher.nodes[i].peer for i in sample["distrusted"]}
    cheated = {j.provider for j in ended if j.provider in cheaters and (j.state == "rejected" or j.correct is False)}
    result = {
        "scenario": s.name, "description": s.description, "nodes": len(run.specs), "completed": bool(run.started),
        "isolated": run.network is not None, "notes": run.notes,
        "roles": {k: len(v) for k, v in run.roles.items()},
        "converged_s": run.converged_s, "converged_after_heal_s": run.heal_converged_s,
        "jobs": {"submitted": len(run.jobs), "ended": len(ended), "done": len(done),
                 "by_state": {st: sum(1 for j in ended if j.state == st) for st in sorted({j.state for j in ended})},
                 "wrong_accepted": len(wrong), "judged": sum(1 for j in done if j.correct is not None),
                 "p50_s": quantile(latencies, 0.5), "p99_s": quantile(latencies, 0.99),
                 "declines": summed(j.declines for j in ended),
                 "checked": {c: sum(1 for j in done if j.checked == c) for c in sorted({j.checked for j in done})}},
        "honest_listed": _honest_listed(run),
        "cheaters": {"count": len(cheaters), "caught": len(cheaters & caught), "cheated": len(cheated),
                     "caught_of_cheated": len(cheated & caught),
                     "award_share": (sum(1 for j in awards if j.provider in cheaters) / len(awards)) if awards else None,
                     "award_share_after": share_late, "after_jobs": after},
        "propagation": _propagation(run),
        "events": run.events,
        "reputation": run.reputation,
        "job_log": [j.to_json() for j in run.jobs],
        "peers": {str(i): n.peer for i, n in run.launcher.nodes.items()},
        "roles_by_node": {str(n.index): n.role for n in run.specs},
    }
    result["expectations"] = judge(s.expect, result)
    del names
    return result


def _propagation(run: Run) -> dict[str, Any]:
    return propagation(run.launcher.try_call(node.index, "metrics", timeout=5) or "" for node in run.launcher.live())


def propagation(metrics_texts: Iterable[str]) -> dict[str, Any]:
    """Ad propagation summed over nodes' Prometheus histograms: count, mean, CDF, p50 and p99
    (the bucket bounds they fall under)."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for text in metrics_texts:
        for line in text.splitlines():
            if line.startswith("p2pnode_ad_propagation_seconds_bucket"):
                le = line.split('le="')[1].split('"')[0]
                bound = math.inf if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + float(line.split()[-1])
            elif line.startswith("p2pnode_ad_propagation_seconds_sum"):
                total += float(line.split()[-1])
            elif line.startswith("p2pnode_ad_propagation_seconds_count"):
                count += float(line.split()[-1])
    cdf = [(b, buckets[b] / count) for b in sorted(buckets)] if count else []
    p = {f"p{int(q * 100)}_le_s": next((b for b, f in cdf if f >= q), None) for q in (0.5, 0.99)}
    return {"ads": count, "mean_s": total / count if count else None,
            "cdf": [[b if math.isfinite(b) else None, round(f, 4)] for b, f in cdf], **p}


Callback = Callable[..., Any]
