"""Model-job benchmarks, each against a baseline measured in the same run:

* ``infer``: one model job through two nodes on loopback (auction, blobs, execution in a worker,
  row commitment, 90 sampled rows re-checked) against ONNX Runtime run directly on the same model
  and batch in this process, for a job of about ``--seconds`` of compute, on two models: a small
  CNN on 28×28 images (data-dense: 3 KB per row for ~40 µs of compute) and a wide CNN on 64×64
  images (compute-dense: 16 KB per row for ~milliseconds); the first (cold) run and warm ones;
* ``map``: a dataset over 1, 2 and 4 provider processes, rows/s against ONNX Runtime directly;
* checking: for shards of 100 to 20 000 rows, the measured cost of re-running 90 sampled rows against
  running the shard, and the catch rate of a provider faking 5 % of rows (real outputs, the real
  sampling and comparison) against the hypergeometric prediction.

Prints tables, writes a PNG (``--png``) or prints ``--json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pnode import models  # noqa: E402
from p2pnode.exec import backends, model_jobs  # noqa: E402
from p2pnode.exec.onnx_workload import row_mismatches, take_rows  # noqa: E402
from p2pnode.exec.workloads import Output  # noqa: E402
from p2pnode.verify import rows as row_maths  # noqa: E402


def _session(job: model_jobs.ModelJob) -> Any:
    """A warm ONNX Runtime session on ``job``'s model, in this process: the baseline."""
    sess, _ = backends.OrtOps("ort-cpu").session(job.blob)
    sess.run(None, {n: a[:8] for n, a in job.arrays.items()})
    return sess


def _time_direct(sess: Any, job: model_jobs.ModelJob) -> float:
    t0 = time.perf_counter()
    sess.run(None, dict(job.arrays))
    return time.perf_counter() - t0


def _direct(job: model_jobs.ModelJob, repeats: int = 3) -> float:
    """Seconds for ONNX Runtime alone on the whole batch (median of ``repeats``, warm session)."""
    sess = _session(job)
    return statistics.median(_time_direct(sess, job) for _ in range(repeats))


MODELS = {"cnn28": dict(size=28, channels=32), "cnn64": dict(size=64, channels=64)}


def _sized_job(seconds: float, name: str = "cnn28", seed: int = 1, rows: int = 0) -> model_jobs.ModelJob:
    """A CNN over enough images that ONNX Runtime alone takes about ``seconds`` here (or ``rows``)."""
    spec = MODELS[name]
    blob = models.cnn(**spec)
    if not rows:
        probe = model_jobs.prepare(blob, {"": models.images(64, size=spec["size"])})
        rows = max(64, int(seconds / (_direct(probe, 3) / 64)))
    return model_jobs.prepare(blob, {"": models.images(rows, size=spec["size"], seed=seed)})


async def bench_infer(job: model_jobs.ModelJob, repeats: int, name: str) -> dict[str, Any]:
    """Each network run is paired with a direct run just before it (this machine's speed drifts by
    2x and more within a minute): the figures are medians, the efficiency the median of the pairs'
    ratios. Runs: ``same`` rows again (the provider holds model and rows), ``fresh`` rows each time
    (the model held, the rows moved, as for a real dataset), and ``same`` without the row check."""
    from tests.integration.swarm import all_list_all, swarm

    sess = _session(job)
    fresh_jobs = [_sized_job(0, name, seed=100 + i, rows=job.rows) for i in range(repeats)]
    async with swarm(2, line=False, ad_interval=30.0, ad_ttl=120.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=60)
        req = nodes[0].node

        async def pair(j: model_jobs.ModelJob, verify: str) -> tuple[float, float, float]:
            direct = _time_direct(sess, j)
            params, inputs = j.shard(0, j.rows)
            t0 = time.perf_counter()
            rec = await req.jobs.submit("onnx", params, inputs=inputs, max_price=10**12, deadline_s=600, verify=verify)
            wall = time.perf_counter() - t0
            assert rec.state == "done", rec.outcome
            return direct, wall, rec.kernel_ms / 1000

        cold = await pair(job, job.verify)  # moves the model and the rows, starts the provider's session
        runs: dict[str, list[tuple[float, float, float]]] = {"same": [], "fresh": [], "unchecked": []}
        for i in range(repeats):
            runs["same"].append(await pair(job, job.verify))
            runs["fresh"].append(await pair(fresh_jobs[i], job.verify))
            runs["unchecked"].append(await pair(job, "none"))

    def med(kind: str, k: int) -> float:
        return statistics.median(r[k] for r in runs[kind])

    def eff(kind: str) -> float:
        return statistics.median(d / w for d, w, _ in runs[kind])

    mb = sum(a.nbytes for a in job.arrays.values()) / 1e6
    direct, wall = med("same", 0), med("same", 1)
    theory = row_maths.overhead(job.rows, row_maths.sample_size())
    return {"rows": job.rows, "input_MB": mb, "direct_s": direct, "node_s": wall, "kernel_s": med("same", 2),
            "efficiency": eff("same"), "fresh_s": med("fresh", 1), "fresh_efficiency": eff("fresh"),
            "cold_s": cold[1], "cold_efficiency": cold[0] / cold[1],
            "kernel_efficiency": statistics.median(d / k for d, _, k in runs["same"]),
            "overhead_ms_per_MB": 1000 * (wall - direct) / mb,
            "unchecked_s": med("unchecked", 1), "unchecked_efficiency": eff("unchecked"),
            "check_share": max(0.0, 1 - eff("same") / eff("unchecked")), "check_theory": theory,
            "ceiling": 1 / (1 + theory),  # the row check's own compute, on this node: no run does better
            "rows_per_s_direct": job.rows / direct, "rows_per_s_node": job.rows / wall}


def bench_map(job: model_jobs.ModelJob, counts: list[int]) -> list[dict[str, Any]]:
    """Real provider processes; the requester a process too; ``submit map --json``, against ONNX
    Runtime here on the whole dataset just before each run."""
    import subprocess

    from p2pnode.control.client import call
    from p2pnode.exec import onnx_model
    from tests.integration.test_cli import ENV, EXE, NodeProcess

    out = []
    sess = _session(job)
    with tempfile.TemporaryDirectory(prefix="p2pbench-", dir="/tmp") as tmp:
        base = Path(tmp)
        raw, _ = onnx_model.unpack(job.blob)
        (base / "m.onnx").write_bytes(raw)
        np.save(base / "x.npy", next(iter(job.arrays.values())))
        for k in counts:
            procs = [NodeProcess(base / f"p{k}-{i}", "--listen", f"/ip4/127.0.0.{10 + i}/tcp/0") for i in range(k)]
            req_dir = base / f"req{k}"
            req = NodeProcess(req_dir, "--no-provide", "--listen", "/ip4/127.0.0.9/tcp/0",
                              *[a for p in procs for a in ("--bootstrap", p.addrs[0])])
            try:
                call(req_dir / "control.sock", "wait", timeout=60, what="market", count=k, timeout_s=50)
                # this machine's speed drifts: the baseline is taken just before each run, nodes idle
                direct = statistics.median(_time_direct(sess, job) for _ in range(3))
                t0 = time.perf_counter()
                r = subprocess.run([*EXE, "submit", "map", "--model", str(base / "m.onnx"), "--input",
                                    str(base / "x.npy"), "--providers", str(k), "--shard-rows",
                                    str(-(-job.rows // (2 * k))), "--json", "--data-dir", str(req_dir)],
                                   capture_output=True, text=True, env=ENV, timeout=900)
                wall = time.perf_counter() - t0
                assert r.returncode == 0, r.stderr
                summary = json.loads(r.stdout)
                out.append({"providers": k, "rows": job.rows, "seconds": summary["seconds"], "cli_s": wall,
                            "rows_per_s": job.rows / summary["seconds"], "direct_rows_per_s": job.rows / direct,
                            "ratio": direct / summary["seconds"], "by_provider": len(summary["by_provider"])})
            finally:
                for p in [*procs, req]:
                    p.proc.terminate()
                    p.proc.wait(timeout=30)
    return out


def bench_checks(trials: int) -> list[dict[str, Any]]:
    blob = models.cnn(channels=16)
    sess, _ = backends.OrtOps("ort-cpu").session(blob)
    out = []
    rng = random.Random(7)
    s = row_maths.sample_size()
    for n in (100, 1000, 9000, 20000):
        job = model_jobs.prepare(blob, {"": models.images(n, seed=n)})
        x = job.arrays["image"]
        t0 = time.perf_counter()
        full = sess.run(None, {"image": x})[0]
        shard_s = time.perf_counter() - t0
        idx = row_maths.sample(n, s, rng)
        t0 = time.perf_counter()
        again = sess.run(None, {"image": x[idx]})[0]
        check_s = time.perf_counter() - t0
        assert row_mismatches(again, full[idx]).size == 0
        # a provider faking 5 % of the rows: caught when a sampled row disagrees
        honest = Output({"probabilities": full}, {})
        faked = max(1, round(0.05 * n))
        caught = 0
        params, inputs = job.shard(0, n)
        for _ in range(trials):
            bad = full.copy()
            bad[rng.sample(range(n), faked)] = np.random.default_rng(rng.getrandbits(32)).random((faked, 10))
            pick = row_maths.sample(n, s, rng)
            _, _, claimed = take_rows(params, inputs, Output({"probabilities": bad}, {}), pick)
            caught += row_mismatches(claimed.arrays["probabilities"], full[pick]).size > 0
        del honest
        out.append({"rows": n, "sampled": min(s, n), "shard_s": shard_s, "check_s": check_s,
                    "overhead": check_s / shard_s, "overhead_theory": row_maths.overhead(n, s),
                    "catch": caught / trials, "catch_theory": row_maths.catch_probability(n, faked, s),
                    "trials": trials})
    return out


def render(r: dict[str, Any], png: Path | None, tables: bool = True) -> None:
    """Tables on the terminal (on stderr with ``tables`` off, for ``--json``), and the PNG."""
    from rich.console import Console
    from rich.table import Table

    c = Console(stderr=not tables)
    if not c.is_terminal:
        c.width = 140  # a log or a pipe: no wrapped columns
    t = Table(title="infer: one model job through the network vs ONNX Runtime directly (same model, "
                    "same rows; each run paired with a direct one; medians)")
    for col in ("model", "rows", "MB in", "direct s", "net s", "net %", "ceiling", "unchecked", "fresh rows",
                "kernel", "cold"):
        t.add_column(col, justify="right")
    for name, i in r["infer"].items():
        t.add_row(name, str(i["rows"]), f"{i['input_MB']:.1f}", f"{i['direct_s']:.3f}", f"{i['node_s']:.3f}",
                  f"{100 * i['efficiency']:.0f} %", f"{100 * i['ceiling']:.0f} %",
                  f"{100 * i['unchecked_efficiency']:.0f} %", f"{100 * i['fresh_efficiency']:.0f} %",
                  f"{100 * i['kernel_efficiency']:.0f} %", f"{100 * i['cold_efficiency']:.0f} %")
    c.print(t)
    if r.get("map"):
        t = Table(title="map: a dataset over provider processes (same run)")
        for col in ("providers", "rows", "s", "rows/s", "direct rows/s", "× direct", "providers used"):
            t.add_column(col, justify="right")
        for m in r["map"]:
            t.add_row(str(m["providers"]), str(m["rows"]), f"{m['seconds']:.2f}", f"{m['rows_per_s']:.0f}",
                      f"{m['direct_rows_per_s']:.0f}", f"{m['ratio']:.2f}", str(m["by_provider"]))
        c.print(t)
    t = Table(title="Row checks: cost and catch rate (90 sampled rows, a provider faking 5 %)")
    for col in ("rows", "shard s", "check s", "overhead", "theory", "caught", "theory"):
        t.add_column(col, justify="right")
    for k in r["checks"]:
        t.add_row(str(k["rows"]), f"{k['shard_s']:.3f}", f"{k['check_s']:.4f}", f"{100 * k['overhead']:.2f} %",
                  f"{100 * k['overhead_theory']:.2f} %", f"{100 * k['catch']:.1f} %", f"{100 * k['catch_theory']:.1f} %")
    c.print(t)
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = list(r["infer"])
    bars = [("ceiling", "grey", "ceiling (the row check's compute)"), ("unchecked_efficiency", "tab:green",
            "unchecked"), ("efficiency", "tab:blue", "checked, same rows"), ("fresh_efficiency", "tab:orange",
                                                                            "checked, fresh rows")]
    for j, (key, colour, label) in enumerate(bars):
        axes[0].bar([k + 0.2 * (j - 1.5) for k in range(len(names))], [100 * r["infer"][n][key] for n in names],
                    0.2, color=colour, label=label)
    axes[0].set_xticks(range(len(names)), names)
    axes[0].axhline(90, color="tab:red", ls=":", label="goal 90 %")
    axes[0].set_ylabel("% of direct ONNX Runtime speed")
    axes[0].set_ylim(0, 135)
    axes[0].legend(fontsize=7, loc="upper center", ncol=2)
    axes[0].set_title("infer")
    if r.get("map"):
        ks = [m["providers"] for m in r["map"]]
        axes[1].plot(ks, [m["ratio"] for m in r["map"]], "o-", label="map, all processes on this machine")
        axes[1].axhline(1.0, color="grey", ls="--", label="ONNX Runtime here, measured before each run")
        axes[1].set_xticks(ks)
        axes[1].set_xlabel("provider processes")
        axes[1].set_ylabel("× direct rows/s")
        axes[1].legend(fontsize=7)
        axes[1].set_title("map, wide CNN, over provider processes")
    ks = r["checks"]
    axes[2].plot([k["overhead"] * 100 for k in ks], [k["catch"] * 100 for k in ks], "o", label="measured")
    axes[2].plot([k["overhead_theory"] * 100 for k in ks], [k["catch_theory"] * 100 for k in ks], "x",
                 label="theory")
    for k in ks:
        axes[2].annotate(f"{k['rows']} rows", (k["overhead"] * 100, k["catch"] * 100), fontsize=7)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("checking compute, % of the shard")
    axes[2].set_ylabel("% of 5 %-faking shards caught")
    axes[2].legend()
    axes[2].set_title("Row checks")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    c.print(f"wrote {png}")


async def _infer(args: argparse.Namespace) -> dict[str, Any]:
    return {name: await bench_infer(_sized_job(args.seconds, name), args.repeats, name) for name in MODELS}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="compute per infer job (default 1 s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--providers", default="1,2,4", help="map over these provider counts")
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--png", type=Path, default=Path("bench-models.png"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result: dict[str, Any] = {"infer": trio.run(_infer, args)}
    counts = [int(k) for k in args.providers.split(",") if k]
    if counts:
        result["map"] = bench_map(_sized_job(args.seconds * 4, "cnn64"), counts)
    result["checks"] = bench_checks(args.trials)
    render(result, args.png, tables=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
