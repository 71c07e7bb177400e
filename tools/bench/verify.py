"""Verification overhead against catch probability: our policy against 2x replication.

Overhead is checking compute as a share of the jobs' own compute, from kernels timed in this run
(NumPy on this machine, or ``--backend`` on a GPU):

* **Freivalds** (matmul): the check's time over the product's, per size; a wrong result is caught
  with probability 1 − 2^-20 per check, and every result is checked.
* **re-run at a fixed rate p** (other workloads): one more run per check (timed: the re-run plus
  the comparison), caught with probability p per wrong result.
* **adaptive re-run** (our policy for non-matmul work): simulated with the node's own
  ``SamplingPolicy`` and ``Reputation`` over ``--jobs`` jobs, for an honest provider, a naive
  cheater (cheats on f of its jobs from the start) and a patient one (honest for 50 jobs first).
* **2x replication**: every job runs twice, overhead 100 %, every wrong result caught.

Prints a table, writes a PNG (``--png``) or prints ``--json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode.exec import backends, workloads
from p2pnode.market.reputation import Reputation
from p2pnode.verify import freivalds
from p2pnode.verify.check import compare, freivalds_check
from p2pnode.verify.sampling import SamplingPolicy

INFER = {"batch": 512, "d_in": 512, "d_hidden": 1024, "d_out": 256, "layers": 4}


def _best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def freivalds_row(n: int, backend: str, repeat: int) -> dict[str, Any]:
    ops = backends.ops(backend)
    wl = workloads.get("matmul")
    p = wl.check({"m": n, "n": n, "k": n, "dtype": "fp32", "seed": 1})
    a, b = workloads.matmul_inputs(p)
    da, db = ops.asarray(a), ops.asarray(b)
    job = _best(lambda: (ops.matmul(da, db, "fp32"), ops.sync()), repeat)
    out = wl.run(p, ops, lambda f: None)
    rng = np.random.default_rng(0)
    c = out.arrays["c"]
    check = _best(lambda: freivalds.check(a, b, c, dtype="fp32", rounds=20, rng=rng), repeat)
    regen = _best(lambda: freivalds_check(p, out, rounds=20, rng=rng), 1)
    return {"policy": "Freivalds (ours, matmul)", "size": n, "job_s": job, "check_s": check,
            "overhead": check / job, "with_inputs_s": regen, "catch": 1 - 2.0 ** -20}


def rerun_cost(repeat: int) -> dict[str, float]:
    ops = backends.ops("numpy")
    wl = workloads.get("infer")
    p = wl.check({**INFER, "seed": 1})
    out = wl.run(p, ops, lambda f: None)
    job = _best(lambda: wl.run(p, ops, lambda f: None), repeat)
    cmp = _best(lambda: compare("infer", p, out, out), repeat)
    return {"job_s": job, "compare_s": cmp, "ratio": (job + cmp) / job}


def simulate(policy: SamplingPolicy, jobs: int, f: float, patience: int, seed: int,
             trials: int = 1) -> dict[str, float]:
    """Run the node's policy and reputation over up to ``jobs`` jobs of one provider per trial; a
    provider caught cheating is distrusted and gets no more work, which ends the trial."""
    rng = random.Random(seed)
    checks = ran = cheats = caught = 0
    for _ in range(trials):
        rep = Reputation(b"me")
        peer = b"provider"
        for i in range(jobs):
            if rep.distrusted(peer, float(i)):
                break
            ran += 1
            s = rep.score(peer, float(i))
            cheat = i >= patience and rng.random() < f
            cheats += cheat
            if policy.should_check("infer", streak=s.streak, score=s.score, u=rng.random()):
                checks += 1
                caught += cheat
                rep.observe(peer, "cheat" if cheat else "checked_ok", float(i))
            else:
                rep.observe(peer, "accepted", float(i))
    return {"check_rate": checks / max(ran, 1), "catch": caught / cheats if cheats else float("nan"),
            "wrong_accepted": (cheats - caught) / trials, "jobs": ran / trials}


def main(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [freivalds_row(n, args.backend, args.repeat) for n in args.sizes]
    rc = rerun_cost(args.repeat)
    for p in (0.05, 0.1, 0.2, 0.5):
        rows.append({"policy": f"re-run at p = {p}", "size": 0, "overhead": p * rc["ratio"], "catch": p})
    policy = SamplingPolicy()
    honest = simulate(policy, args.jobs, 0.0, 0, seed=1)
    naive = simulate(policy, args.jobs, args.f, 0, seed=2, trials=2000)
    patient = simulate(policy, args.jobs, args.f, 50, seed=3, trials=2000)
    rows.append({"policy": f"adaptive re-run (ours): honest, {args.jobs} jobs", "size": 0,
                 "overhead": honest["check_rate"] * rc["ratio"], "catch": float("nan")})
    rows.append({"policy": f"adaptive: cheater, f = {args.f}", "size": 0,
                 "overhead": naive["check_rate"] * rc["ratio"], "catch": naive["catch"],
                 "wrong_accepted": naive["wrong_accepted"]})
    rows.append({"policy": f"adaptive: patient cheater (50 honest first), f = {args.f}", "size": 0,
                 "overhead": patient["check_rate"] * rc["ratio"], "catch": patient["catch"],
                 "wrong_accepted": patient["wrong_accepted"]})
    rows.append({"policy": "2x replication", "size": 0, "overhead": 1.0 * rc["ratio"], "catch": 1.0})
    return {"backend": args.backend, "rerun": rc, "rows": rows, "jobs": args.jobs, "f": args.f}


def render(r: dict[str, Any], png: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Verification overhead vs catch probability ({r['backend']})", title_justify="left")
    for col in ("policy", "n", "job ms", "check ms", "overhead", "catch per wrong result"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for row in r["rows"]:
        catch = "-" if row["catch"] != row["catch"] else f"{row['catch']:.4g}"
        ms = [f"{1000 * row[k]:.1f}" if k in row else "" for k in ("job_s", "check_s")]
        t.add_row(row["policy"], str(row["size"] or ""), *ms, f"{100 * row['overhead']:.2f} %", catch)
    Console().print(t)
    for row in r["rows"]:
        if "wrong_accepted" in row:
            print(f"{row['policy']}: {row['wrong_accepted']:.2f} wrong results accepted on average before "
                  "it is caught and excluded (2000 trials)")
        if "with_inputs_s" in row:
            print(f"Freivalds n={row['size']}: {1000 * row['with_inputs_s']:.1f} ms including regenerating A and B "
                  "from the seed")
    print(f"re-run cost: {r['rerun']['ratio']:.3f}x one job (infer {INFER}); "
          f"comparison {1000 * r['rerun']['compare_s']:.2f} ms of {1000 * r['rerun']['job_s']:.1f} ms")
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    fixed = [x for x in r["rows"] if x["policy"].startswith("re-run at")]
    ax.plot([100 * x["overhead"] for x in fixed], [x["catch"] for x in fixed], "o-", label="re-run at a fixed rate p")
    ps = np.linspace(0.01, 1, 50)
    ax.plot(100 * ps * r["rerun"]["ratio"], ps, ":", color="grey", label="re-run: catch = p (theory)")
    fre = [x for x in r["rows"] if x["policy"].startswith("Freivalds")]
    ax.scatter([100 * x["overhead"] for x in fre], [x["catch"] for x in fre], marker="s", color="green",
               label="Freivalds, 20 rounds (matmul, n = " + ", ".join(str(x["size"]) for x in fre) + ")")
    ada = [x for x in r["rows"] if x["policy"].startswith("adaptive") and x["catch"] == x["catch"]]
    ax.scatter([100 * x["overhead"] for x in ada], [x["catch"] for x in ada], marker="^", color="purple",
               label="adaptive re-run (ours): cheaters")
    rep = [x for x in r["rows"] if x["policy"] == "2x replication"]
    ax.scatter([100 * rep[0]["overhead"]], [1.0], marker="*", s=150, color="red", label="2x replication")
    ax.set_xscale("log")
    ax.set_xlabel("checking compute, % of the jobs' compute (log)")
    ax.set_ylabel("probability a wrong result is caught")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--backend", default="numpy")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--f", type=float, default=0.3)
    p.add_argument("--png", type=Path, default=Path("bench-verify.png"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = main(args)
    print(json.dumps(result, indent=2)) if args.json else render(result, args.png)
