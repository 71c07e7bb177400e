"""Scenario files: a swarm, its adversaries, its work and its faults over time, and what must hold.

One TOML file drives both ``p2pnode swarm run`` (real node processes) and ``p2pnode sim`` (the
simulator on the node's own core). Everything is checked when the file is loaded; an unknown key or
a value out of range is a :class:`~p2pnode.errors.ConfigError` naming it.

.. code-block:: toml

    name = "cheaters"
    description = "30 % of providers cheat on 10-30 % of their jobs"
    seed = 7
    duration = 60                      # seconds of work after the market converged
    scale_work = true                  # --nodes N: the work grows with the swarm too (default: false)

    [nodes]
    providers = 7                      # honest ones; adversaries come on top
    requesters = 2
    checkers = 1                       # providers that volunteer to check

    [[adversaries]]
    kind = "perturb"                   # a cheater kind (adversary.py), "flood", "sybil", "poison" or "crash"
    fraction = 0.3                     # of the providers (or: count = 2)
    rate = 0.2                         # the cheater's F, or a flood's ads per second
    ids = 10                           # sybil: identities of one operator; poison: made-up providers

    [[workloads]]
    kind = "matmul"                    # matmul, infer, train_step, or "model" (a trained classifier)
    params = { m = 64, n = 64, k = 64, dtype = "int8" }
    rate = 2.0                         # jobs per second, over all requesters

    [[faults]]
    at = 20                            # seconds into the work
    action = "kill"                    # kill | restart | partition | heal | netem | clear
    target = "providers:30%"           # role:count or role:percent, "all", "half"
    delay_ms = 100                     # netem: latency, loss %, duplicate %, delay jitter
    loss = 10

    [expect]
    wrong_results_accepted = 0         # at most
    jobs_done = 0.9                    # fraction of submitted jobs done, at least
    cheater_share = { after = 300, below = 0.02 }   # share of awards won by cheaters after N jobs
    converged_after_heal_s = 30        # every node lists every live provider within this
    honest_listed = 0.9                # share of the live honest providers (or of its table's places,
                                       # in a larger market) every honest requester lists at the end
    cheaters_caught = 1.0              # share of the cheaters that cheated (a wrong result of theirs
                                       # reached a requester) that some requester distrusts
    job_p99_s = 30                     # 99th percentile of job latency, at most
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pnode.errors import ConfigError

CHEATER_KINDS = ("garbage", "perturb", "replay", "lowprec", "skip", "overclaim", "stall", "collude")
ADVERSARY_KINDS = (*CHEATER_KINDS, "flood", "sybil", "poison", "crash")
WORKLOAD_KINDS = ("matmul", "infer", "train_step", "model")
FAULT_ACTIONS = ("kill", "restart", "partition", "heal", "netem", "clear")
ROLES = ("providers", "requesters", "checkers", "adversaries", "all", "half")
MAX_NODES = 10_000
EXPECTATIONS = {"wrong_results_accepted", "jobs_done", "cheater_share", "converged_after_heal_s", "job_p99_s",
                "cheaters_caught", "converged_s", "honest_listed"}


@dataclass(frozen=True)
class Adversary:
    kind: str
    count: int  # resolved from fraction at load
    rate: float = 1.0
    ids: int = 1  # sybil: identities per operator


@dataclass(frozen=True)
class WorkloadSpec:
    kind: str
    params: dict[str, Any]
    rate: float  # jobs per second over all requesters
    weight: float = 1.0


@dataclass(frozen=True)
class Fault:
    at: float
    action: str
    target: str = "all"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    duration: float
    providers: int
    requesters: int
    checkers: int
    adversaries: tuple[Adversary, ...]
    workloads: tuple[WorkloadSpec, ...]
    faults: tuple[Fault, ...]
    expect: dict[str, Any]
    network: Fault | None = None  # impairments from the start (a "terrible network")
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    scale_work: bool = False  # scaled, the work grows with the swarm (jobs per provider stay the same)

    @property
    def nodes(self) -> int:
        """Processes in all (a sybil operator runs ``ids`` of them)."""
        sybils = sum(a.count * a.ids for a in self.adversaries if a.kind == "sybil")
        others = sum(a.count for a in self.adversaries if a.kind != "sybil")
        return self.providers + self.checkers + self.requesters + others + sybils

    def shortened(self, duration: float) -> Scenario:
        """The same scenario over ``duration`` seconds of work, its faults at the same fractions."""
        f = duration / self.duration
        faults = tuple(Fault(x.at * f, x.action, x.target, x.delay_ms, x.jitter_ms, x.loss, x.duplicate)
                       for x in self.faults)
        return replace(self, duration=duration, faults=faults)

    def scaled(self, nodes: int) -> Scenario:
        """The same scenario with ``nodes`` nodes in all, every role and adversary in proportion."""
        if nodes < 3:
            raise ConfigError("a scenario needs at least 3 nodes")
        f = nodes / self.nodes

        def n(x: int, least: int = 0) -> int:
            return max(least, round(x * f)) if x else 0

        # a sybil operator's identities grow with the swarm, the operators do not (both growing made a
        # 300-node swarm of 2,116 sybils); a market poisoner is one operator whatever the size (its
        # made-up providers are already as many as a market sync carries)
        advs = tuple(Adversary(a.kind, a.count if a.kind in ("sybil", "poison") else n(a.count, 1), a.rate,
                               n(a.ids, 2) if a.kind == "sybil" else a.ids)
                     for a in self.adversaries)
        loads, expect = self.workloads, self.expect
        if self.scale_work:  # as many jobs per provider at any size, and the cheaters' share judged as late
            loads = tuple(replace(w, rate=min(1000.0, w.rate * f)) for w in loads)
            share = expect.get("cheater_share")
            if isinstance(share, dict) and "after" in share:
                expect = {**expect, "cheater_share": {**share, "after": int(round(share["after"] * f))}}
        return replace(self, providers=n(self.providers, 2), requesters=n(self.requesters, 1),
                       checkers=n(self.checkers), adversaries=advs, workloads=loads, expect=expect)


def _num(d: Mapping[str, Any], key: str, lo: float, hi: float, default: float | None = None, *,
         where: str, integer: bool = False) -> Any:
    value = d.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: missing {key}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: {key} must be {kind} in {lo:g}..{hi:g}, not {value!r}")
    return int(value) if integer else float(value)


def _only(d: Mapping[str, Any], keys: set[str], where: str) -> None:
    extra = set(d) - keys
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))} (known: {', '.join(sorted(keys))})")


def _fault(d: Mapping[str, Any], where: str, *, timed: bool = True) -> Fault:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a table")
    _only(d, {"at", "action", "target", "delay_ms", "jitter_ms", "loss", "duplicate"}, where)
    action = d.get("action", "netem")
    if action not in FAULT_ACTIONS:
        raise ConfigError(f"{where}: action {action!r} is not one of {', '.join(FAULT_ACTIONS)}")
    target = d.get("target", "all")
    if not isinstance(target, str) or target.split(":")[0] not in ROLES:
        raise ConfigError(f"{where}: target {target!r} must be a role ({', '.join(ROLES)}), "
                          "optionally :count or :percent%")
    return Fault(_num(d, "at", 0, 86400, 0 if not timed else None, where=where), action, target,
                 _num(d, "delay_ms", 0, 10_000, 0, where=where), _num(d, "jitter_ms", 0, 10_000, 0, where=where),
                 _num(d, "loss", 0, 100, 0, where=where), _num(d, "duplicate", 0, 100, 0, where=where))


def parse(data: Mapping[str, Any], path: str = "") -> Scenario:
    where = path or "scenario"
    _only(data, {"name", "description", "seed", "duration", "nodes", "adversaries", "workloads", "faults", "expect",
                 "network", "scale_work"}, where)
    scale_work = data.get("scale_work", False)
    if not isinstance(scale_work, bool):
        raise ConfigError(f"{where}: scale_work must be true or false")
    nodes = data.get("nodes", {})
    if not isinstance(nodes, Mapping):
        raise ConfigError(f"{where}: [nodes] must be a table")
    _only(nodes, {"providers", "requesters", "checkers"}, f"{where} [nodes]")
    providers = _num(nodes, "providers", 1, MAX_NODES, 3, where=f"{where} [nodes]", integer=True)
    advs = []
    for i, a in enumerate(data.get("adversaries", [])):
        w = f"{where} adversaries[{i}]"
        if not isinstance(a, Mapping):
            raise ConfigError(f"{w}: expected a table")
        _only(a, {"kind", "count", "fraction", "rate", "ids"}, w)
        kind = a.get("kind")
        if kind not in ADVERSARY_KINDS:
            raise ConfigError(f"{w}: kind {kind!r} is not one of {', '.join(ADVERSARY_KINDS)}")
        if "count" in a and "fraction" in a:
            raise ConfigError(f"{w}: give count or fraction, not both")
        count = _num(a, "count", 0, MAX_NODES, None, where=w, integer=True) if "count" in a else \
            max(1, round(_num(a, "fraction", 0, 1, 0.1, where=w) * providers))
        default_rate = {"flood": 20.0, "overclaim": 10.0}.get(kind, 1.0)
        rate = _num(a, "rate", 0, 10_000 if kind in ("flood", "overclaim", "sybil") else 1, default_rate, where=w)
        ids = _num(a, "ids", 1, 1023, {"sybil": 5, "poison": 1000}.get(kind, 1), where=w, integer=True)
        advs.append(Adversary(kind, count, rate, ids))
    loads = []
    for i, wdef in enumerate(data.get("workloads", [])):
        w = f"{where} workloads[{i}]"
        if not isinstance(wdef, Mapping):
            raise ConfigError(f"{w}: expected a table")
        _only(wdef, {"kind", "params", "rate", "weight"}, w)
        kind = wdef.get("kind")
        if kind not in WORKLOAD_KINDS:
            raise ConfigError(f"{w}: kind {kind!r} is not one of {', '.join(WORKLOAD_KINDS)}")
        params = dict(wdef.get("params", {}))
        if kind != "model":
            from p2pnode.errors import WorkloadError
            from p2pnode.exec import workloads

            try:
                workloads.get(kind).check(params)
            except WorkloadError as exc:
                raise ConfigError(f"{w}: {exc}") from None
        loads.append(WorkloadSpec(kind, params, _num(wdef, "rate", 0, 1000, 1.0, where=w),
                                  _num(wdef, "weight", 0, 1000, 1.0, where=w)))
    faults = tuple(sorted((_fault(f, f"{where} faults[{i}]") for i, f in enumerate(data.get("faults", []))),
                          key=lambda f: f.at))
    expect = dict(data.get("expect", {}))
    unknown = set(expect) - EXPECTATIONS
    if unknown:
        raise ConfigError(f"{where} [expect]: unknown expectation(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(EXPECTATIONS))})")
    network = _fault(data["network"], f"{where} [network]", timed=False) if "network" in data else None
    name = data.get("name", Path(path).stem if path else "scenario")
    return Scenario(
        name=str(name), description=str(data.get("description", "")),
        seed=_num(data, "seed", 0, 2**31, 1, where=where, integer=True),
        duration=_num(data, "duration", 1, 86400, 30, where=where), providers=providers,
        requesters=_num(nodes, "requesters", 0, MAX_NODES, 1, where=f"{where} [nodes]", integer=True),
        checkers=_num(nodes, "checkers", 0, MAX_NODES, 0, where=f"{where} [nodes]", integer=True),
        adversaries=tuple(advs), workloads=tuple(loads), faults=faults, expect=expect, network=network,
        path=path, scale_work=scale_work)


def load(path: Path) -> Scenario:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no scenario file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(data, str(path))


def pick(target: str, roles: Mapping[str, list[int]], rng: Any) -> list[int]:
    """Node indices a fault's ``target`` names: ``providers``, ``providers:3``, ``providers:30%``,
    ``all``, ``half`` (a random half of all nodes)."""
    role, _, amount = target.partition(":")
    if role == "half":
        everyone = sorted({i for ids in roles.values() for i in ids})
        return sorted(rng.sample(everyone, len(everyone) // 2))
    pool = sorted({i for ids in roles.values() for i in ids}) if role == "all" else sorted(roles.get(role, []))
    if not amount:
        return pool
    k = round(len(pool) * float(amount[:-1]) / 100) if amount.endswith("%") else int(amount)
    return sorted(rng.sample(pool, max(0, min(len(pool), k))))
