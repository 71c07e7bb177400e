"""The throughput benchmark's map of fresh rows (``throughput.py --map``), against ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def measure_map(args: argparse.Namespace, bulk: bool, runs: int, default_shards: bool = False,
                pinned: bool = False) -> dict[str, Any]:
    """A data-dense map (the small CNN, 3 KB a row) of fresh rows through one provider process, in
    shards of ``--map-shard`` rows (``default_shards``: as many as ``submit map`` makes unasked), each run against ONNX Runtime in this process on the same rows
    in batches of the same size, just before it (a shard is one ONNX Runtime call at the provider).

    With each run, the CPU seconds each process spent on it (Linux): the provider's workers (ONNX
    Runtime itself), the provider node, the requester node and its workers, against ONNX Runtime's
    own CPU seconds directly: on a machine whose cores ONNX Runtime fills, what the nodes spend
    beside it is what the map loses.

    ``pinned``: the kernel has a core of its own, as a GPU provider's kernel has its GPU: ONNX
    Runtime on one thread on the last core, both directly and in the provider's worker, and both
    nodes on the other cores. What the map loses then is what the data plane fails to hide: the
    first shard's way in, the last one's way out, and any wait for inputs between shards."""
    import tempfile

    import numpy as np

    sys.path.insert(0, str(ROOT / "tools" / "bench"))
    import models as model_bench  # tools/bench/models.py

    import tests.integration.test_cli as cli
    from p2pnode import models
    from p2pnode.control.client import call
    from p2pnode.exec import backends, onnx_model
    from tests.integration.test_cli import ENV, EXE, NodeProcess

    cores = sorted(os.sched_getaffinity(0))
    if pinned and (len(cores) < 2 or not shutil.which("taskset")):
        raise RuntimeError("a pinned map needs two cores and taskset")
    kernel_core, node_cores = cores[-1:], cores[:-1]

    # default_shards: no --shard-rows, as a user would run it (two shards for its one provider)
    rows = args.map_rows
    shard = -(-rows // 2) if default_shards else args.map_shard
    job = model_bench._sized_job(0, "cnn28", rows=shard)
    sess = backends.OrtOps("ort-cpu", threads=1).session(job.blob)[0] if pinned else model_bench._session(job)
    flag = [] if bulk else ["--no-bulk"]
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="p2pbench-", dir="/tmp") as tmp:
        base = Path(tmp)
        raw, _ = onnx_model.unpack(job.blob)
        (base / "m.onnx").write_bytes(raw)
        if pinned:  # the nodes (and what they start) on the other cores; the provider's jobs on one thread
            (base / "p").mkdir()
            (base / "p" / "config.toml").write_text("cpu_threads = 1\n")
            cli.EXE = ["taskset", "-c", ",".join(map(str, node_cores)), *EXE]
        try:
            prov = NodeProcess(base / "p", "--listen", "/ip4/127.0.0.10/tcp/0", *flag)
            req = NodeProcess(base / "r", "--no-provide", "--listen", "/ip4/127.0.0.9/tcp/0", "--bootstrap",
                              prov.addrs[0], *flag)
        finally:
            cli.EXE = EXE
        try:
            call(base / "r" / "control.sock", "wait", timeout=60, what="market", count=1, timeout_s=50)
            for i in range(runs + 1):  # the first moves the model and warms the provider: not counted
                data = models.images(rows, size=28, seed=1000 + i)
                np.save(base / f"x{i}.npy", data)
                if pinned:  # the provider's workers (started by now, and kept) on the kernel's core
                    for worker in _children(prov.proc.pid):
                        os.sched_setaffinity(worker, kernel_core)
                    os.sched_setaffinity(0, kernel_core)
                cpu0 = time.process_time()
                direct = min(_direct_batches(sess, job, data, shard) for _ in range(2))
                direct_cpu = (time.process_time() - cpu0) / 2
                os.sched_setaffinity(0, cores)
                before = _cpu(prov.proc.pid, req.proc.pid)
                r = subprocess.run([*EXE, "submit", "map", "--model", str(base / "m.onnx"), "--input",
                                    str(base / f"x{i}.npy"), "--providers", "1",
                                    *([] if default_shards else ["--shard-rows", str(shard)]),
                                    # a price and deadline no busy moment of this machine can reach:
                                    # work is priced by its measured time
                                    "--max-price", str(10**9), "--deadline", "600",
                                    "--json", "--data-dir", str(base / "r")],
                                   check=False, capture_output=True, text=True, env=ENV, timeout=900)
                if r.returncode != 0:
                    if os.environ.get("P2PBENCH_LOGS"):
                        print("".join(prov.output[-60:]), "".join(req.output[-60:]), file=sys.stderr)
                    raise RuntimeError(r.stderr)
                seconds = json.loads(r.stdout)["seconds"]
                after = _cpu(prov.proc.pid, req.proc.pid)
                if i:
                    out.append({"direct_s": direct, "map_s": seconds, "ratio": direct / seconds,
                                "cpu_s": {"direct": round(direct_cpu, 3),
                                          **{k: round(after[k] - before[k], 3) for k in after}}})
        finally:
            for p in (prov, req):
                p.proc.terminate()
                p.proc.wait(timeout=30)
    best = max(out, key=lambda m: m["ratio"])
    return {"rows": rows, "shard": shard, "default_shards": default_shards, "pinned": pinned, "MB": data.nbytes / 1e6,
            "bulk": bulk,
            "runs": out, **best,
            "median_ratio": statistics.median(m["ratio"] for m in out)}


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]


def _cpu(provider: int, requester: int) -> dict[str, float]:
    """CPU seconds so far of each node process and of its children (its workers), by role."""
    from throughput import _proc_cpu

    def children(pid: int) -> float:
        total = 0.0
        for child in _children(pid):
            try:
                total += _proc_cpu(child)
            except (OSError, ValueError):  # ended meanwhile
                continue
        return total

    return {"provider_workers": children(provider), "provider_node": _proc_cpu(provider),
            "requester_node": _proc_cpu(requester), "requester_workers": children(requester)}


def _direct_batches(sess: Any, job: Any, data: Any, shard: int) -> float:
    """Seconds ONNX Runtime takes here over ``data`` in batches of ``shard`` rows."""
    name = next(iter(job.arrays))
    t0 = time.perf_counter()
    for i in range(0, len(data), shard):
        sess.run(None, {name: data[i:i + shard]})
    return time.perf_counter() - t0
