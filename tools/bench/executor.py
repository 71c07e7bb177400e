"""Executor benchmark: the same job through the executor and called directly, in one run.

For each case it times the direct call (NumPy, or torch on a GPU: inputs already on the device,
kernel plus copy of the result back, best of repeats) and the executor (``Executor.run``: queueing, the worker
round trip, input generation from the seed and result transfer included) and reports the ratio.
With ``--check`` it also runs every workload on every available backend over many seeds and
checks they agree by the workload's own rule, which is what keeps honest GPUs from being taken
for cheaters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pnode.exec import backends, workloads  # noqa: E402
from p2pnode.exec.executor import Executor  # noqa: E402


def direct_time(name: str, params: dict[str, Any], backend: str, repeats: int) -> float:
    wl = workloads.get(name)
    p = wl.check(params)
    ops = backends.ops(backend)
    a, b = workloads.matmul_inputs(p, ops)  # on the device, as a direct user would
    ops.matmul(a, b, p["dtype"])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ops.matmul(a, b, p["dtype"])
        ops.sync()
        best = min(best, time.perf_counter() - t0)
    return best


async def executor_time(ex: Executor, name: str, params: dict[str, Any], backend: str, repeats: int) -> tuple[float, float]:
    await ex.run(name, params, backend=backend)  # warm-up: worker start, backend import, CUDA context
    wall = kern = float("inf")
    for _ in range(repeats):
        r = await ex.run(name, params, backend=backend)
        wall, kern = min(wall, r.wall_seconds), min(kern, r.seconds)
    return wall, kern


def agreement(seeds: int) -> list[dict[str, Any]]:
    avail = backends.for_workload("matmul", backends.available())
    rows = []
    cases = [("matmul", {"m": 256, "n": 192, "k": 320, "dtype": d}) for d in workloads.DTYPES]
    cases += [("infer", {"batch": 64, "d_in": 256, "d_hidden": 512, "d_out": 64, "layers": 4}),
              ("train_step", {"steps": 20})]
    ref_ops = backends.ops("numpy")
    gpu_ops = [(b, backends.ops(b)) for b in avail if b != "numpy"]
    for backend, ops in gpu_ops:
        same = 0
        for seed in range(seeds):
            for gen in ("uniform", "int8"):
                dev = getattr(ops, gen)(seed, 3, (257, 129))
                host = dev.cpu().numpy() if hasattr(dev, "cpu") else __import__("cupy").asnumpy(dev)
                same += np.array_equal(host, getattr(ref_ops, gen)(seed, 3, (257, 129)))
        rows.append({"workload": "seeded inputs (bit-exact)", "dtype": "fp32+int8", "backend": backend,
                     "agree": same, "seeds": 2 * seeds})
    for name, params in cases:
        wl = workloads.get(name)
        for backend, ops in gpu_ops:
            ok = 0
            for seed in range(seeds):
                p = wl.check(params | {"seed": seed})
                ok += wl.agree(p, wl.run(p, ops, lambda f: None), wl.run(p, ref_ops, lambda f: None))
            rows.append({"workload": name, "dtype": params.get("dtype", "fp32"), "backend": backend,
                         "agree": ok, "seeds": seeds})
    return rows


async def main(args: argparse.Namespace) -> dict[str, Any]:
    avail = backends.for_workload("matmul", backends.available())
    cases = [("numpy", {"m": 1024, "n": 1024, "k": 1024, "dtype": "fp32"})]
    if "cuda" in avail:
        cases += [("cuda", {"m": n, "n": n, "k": n, "dtype": d}) for n in (2048, 8192) for d in ("fp32", "bf16")]
    rows = []
    async with Executor() as ex:
        for backend, params in cases:
            d = direct_time("matmul", params, backend, args.repeats)
            wall, kern = await executor_time(ex, "matmul", params, backend, args.repeats)
            flops = workloads.get("matmul").flops(params)
            rows.append({"backend": backend, **params, "direct_s": d, "executor_wall_s": wall,
                         "executor_kernel_s": kern, "wall_over_direct": wall / d,
                         "direct_tflops": flops / d / 1e12})
    return {"backends": list(avail), "timing": rows, "agreement": agreement(args.seeds) if args.check else []}


def render(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Executor vs direct call, same job, same run (backends: {', '.join(r['backends'])})")
    for c in ("backend", "job", "direct ms", "executor ms", "× direct", "direct TFLOP/s"):
        t.add_column(c, justify="left" if c in ("backend", "job") else "right")
    for x in r["timing"]:
        t.add_row(x["backend"], f"matmul {x['m']}³ {x['dtype']}", f"{x['direct_s'] * 1e3:.2f}",
                  f"{x['executor_wall_s'] * 1e3:.2f}", f"{x['wall_over_direct']:.2f}", f"{x['direct_tflops']:.1f}")
    Console().print(t)
    if r["agreement"]:
        a = Table(title="Backends agree with NumPy by each workload's rule")
        for c in ("workload", "dtype", "backend", "agree / seeds"):
            a.add_column(c)
        for x in r["agreement"]:
            a.add_row(x["workload"], x["dtype"], x["backend"], f"{x['agree']} / {x['seeds']}")
        Console().print(a)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--check", action="store_true", help="also check cross-backend agreement")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    result = trio.run(main, a)
    print(json.dumps(result, indent=2)) if a.json else render(result)
