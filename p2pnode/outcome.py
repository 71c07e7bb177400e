"""What a scenario run reports, real (``swarm run``) or simulated (``sim``): its expectations
judged, a terminal summary, and the plots, all from the run's JSON summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pnode.scenario import CHEATER_KINDS

FAULT_EVENTS = ("kill", "restart", "partition", "heal", "netem", "crash")


def quantile(xs: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted ``xs`` (None when empty)."""
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None


def judge(expect: dict[str, Any], r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each expectation of the scenario against the summary: held or not, the value, the bound."""
    out = []

    def check(name: str, held: bool, value: Any, want: str) -> None:
        out.append({"expectation": name, "held": bool(held), "value": value, "want": want})

    jobs = r["jobs"]
    for name, want in expect.items():
        if name == "wrong_results_accepted":
            check(name, jobs["wrong_accepted"] <= want, jobs["wrong_accepted"], f"<= {want}")
        elif name == "jobs_done":
            frac = jobs["done"] / jobs["submitted"] if jobs["submitted"] else 0.0
            check(name, frac >= want, round(frac, 3), f">= {want}")
        elif name == "job_p99_s":
            check(name, jobs["p99_s"] is not None and jobs["p99_s"] <= want, jobs["p99_s"], f"<= {want}")
        elif name == "cheater_share":
            v = r["cheaters"]["award_share_after"]
            below = want["below"] if isinstance(want, dict) else want
            check(name, v is not None and v <= below, v, f"<= {below} after {r['cheaters']['after_jobs']} jobs")
        elif name == "cheaters_caught":  # of those that cheated: one that never could is no miss
            c = r["cheaters"]
            frac = c["caught_of_cheated"] / c["cheated"] if c["cheated"] else 1.0
            check(name, frac >= want, round(frac, 3), f">= {want} of {c['cheated']} that cheated")
        elif name == "honest_listed":
            v = r.get("honest_listed")
            check(name, v is not None and v >= want, v, f">= {want}")
        elif name == "converged_s":
            v = r["converged_s"]
            check(name, v is not None and v <= want, v, f"<= {want}")
        elif name == "converged_after_heal_s":
            v = r["converged_after_heal_s"]
            skipped = not r["isolated"]
            check(name, skipped or (v is not None and v <= want), v if not skipped else "not partitioned",
                  f"<= {want}")
    return out


def print_summary(console: Any, r: dict[str, Any]) -> None:
    from rich.table import Table

    j = r["jobs"]
    console.print(f"[bold]{r['scenario']}[/]: {r['nodes']} nodes; jobs {j['done']}/{j['submitted']} done "
                  f"({j['by_state']}), p50 {j['p50_s']} s, p99 {j['p99_s']} s; wrong results accepted: "
                  f"{j['wrong_accepted']} of {j['judged']} judged; cheaters caught {r['cheaters']['caught']}/"
                  f"{r['cheaters']['count']} ({r['cheaters']['cheated']} cheated)")
    for note in r["notes"]:
        console.print(f"  [yellow]note:[/] {note}")
    t = Table(title="expectations")
    for col in ("expectation", "want", "value", "held"):
        t.add_column(col)
    for e in r["expectations"]:
        t.add_row(e["expectation"], e["want"], str(e["value"]), "[green]yes[/]" if e["held"] else "[red]NO[/]")
    console.print(t)
    if r.get("plots"):
        console.print(f"plots: {', '.join(r['plots'])}")


def plot(r: dict[str, Any], out: Path, notes: list[str]) -> list[str]:
    """Ad propagation CDF, job latency over time, each provider's reputation as each requester sees
    it, checks and catches; one PNG in ``out``. Without matplotlib: a note, no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        notes.append("no plots: install p2pnode[bench] (matplotlib)")
        return []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    cdf = [(b, f) for b, f in r["propagation"]["cdf"] if b is not None]
    if cdf:
        axes[0][0].step([b * 1000 for b, _ in cdf], [f * 100 for _, f in cdf], where="post")
        axes[0][0].set_xscale("log")
    axes[0][0].set_xlabel("ad propagation, ms")
    axes[0][0].set_ylabel("% of ads accepted within")
    axes[0][0].set_title("ad propagation CDF")
    jobs = r["job_log"]
    done = [j for j in jobs if j["state"] == "done"]
    bad = [j for j in jobs if j["state"] not in ("done", "pending")]
    for group, colour, label in ((done, "tab:blue", "done"), (bad, "tab:red", "not done")):
        if group:
            axes[0][1].scatter([j["submitted"] for j in group], [j["ended"] - j["submitted"] for j in group],
                               s=8, c=colour, label=label)
    for e in r["events"]:
        if e["event"] in FAULT_EVENTS:
            axes[0][1].axvline(e["t"], color="grey", ls=":", lw=0.8)
    axes[0][1].set_xlabel("submitted at, s")
    axes[0][1].set_ylabel("latency, s")
    axes[0][1].set_title("job latency (dotted: faults)")
    if done or bad:
        axes[0][1].legend(fontsize=7)
    roles = {int(i): role for i, role in r["roles_by_node"].items()}
    series: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for sample in r["reputation"]:  # one line per (requester, provider): each requester has its own view
        for i, score in sample["scores"].items():
            series.setdefault((sample["requester"], int(i)), []).append((sample["t"], score))
    for (_, i), pts in sorted(series.items())[:2000]:
        cheat = roles.get(i) in CHEATER_KINDS
        axes[1][0].plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red" if cheat else "tab:blue",
                        alpha=0.8 if cheat else 0.4, lw=1)
    axes[1][0].set_xlabel("s")
    axes[1][0].set_ylabel("score (red: cheaters)")
    axes[1][0].set_title("each provider's reputation, as requesters see it")
    ended = sorted((j["ended"], j["checked"], j["state"]) for j in done + bad if j["ended"])
    t_axis = [c[0] for c in ended]
    for label, fn in (("checked", lambda c: bool(c[1])), ("rejected (caught)", lambda c: c[2] == "rejected")):
        n, ys = 0, []
        for c in ended:
            n += fn(c)
            ys.append(n)
        axes[1][1].plot(t_axis, ys, label=label)
    axes[1][1].set_xlabel("s")
    axes[1][1].set_ylabel("jobs")
    axes[1][1].set_title("checks and catches")
    axes[1][1].legend(fontsize=7)
    fig.suptitle(f"{r['scenario']}: {r['nodes']} nodes" + (" (simulated)" if r.get("simulated") else ""))
    fig.tight_layout()
    path = out / f"{r['scenario']}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [str(path)]


def summed(maps: Any) -> dict[str, int]:
    """Counts by key, summed over ``maps`` (declines by code over a run's jobs)."""
    out: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0) + v
    return out
