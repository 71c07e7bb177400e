"""Job benchmarks, each next to a baseline measured in the same run (loopback, one process):

* submit -> verified result, against running the same job on an executor directly, with where the
  time went (award, provider, download, check: the requester's own job events);
* time to award with 10 bidders, against one raw stream round trip (open a stream, one ping);
* blob fetch throughput, against one raw libp2p stream and one raw TCP socket moving the same bytes.

Prints a table, writes a PNG (``--png``) or prints ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pnode.exec.executor import Executor  # noqa: E402
from tests.integration.swarm import all_list_all, swarm  # noqa: E402

JOBS = [("matmul", {"m": 64, "n": 64, "k": 64, "dtype": "int8"}),
        ("matmul", {"m": 512, "n": 512, "k": 512, "dtype": "fp32"}),
        ("matmul", {"m": 2048, "n": 2048, "k": 2048, "dtype": "fp32"}),
        ("train_step", {"steps": 100}),
        ("train_step", {"steps": 2000})]
BLOB_MB = 64


async def submit_vs_executor(nodes: list[Any], repeats: int) -> list[dict[str, Any]]:
    rows = []
    req = nodes[0].node
    async with Executor() as ex:
        for workload, params in JOBS:
            await ex.run(workload, params)  # warm-up
            direct, total, kernel = [], [], []
            phases: dict[str, list[float]] = {k: [] for k in PHASES}
            for i in range(repeats):
                p = dict(params, seed=i)
                t0 = time.perf_counter()
                await ex.run(workload, p)
                direct.append(time.perf_counter() - t0)
                rec = await req.jobs.submit(workload, p, max_price=10**12, deadline_s=60, bid_window_s=2.0)
                assert rec.state == "done", rec.outcome
                total.append(rec.ended - rec.started)
                kernel.append(rec.kernel_ms / 1000)
                for k, v in _phases(rec.events).items():
                    phases[k].append(v)
            rows.append({"job": f"{workload} {params}", "executor_ms": 1000 * statistics.median(direct),
                         "submit_ms": 1000 * statistics.median(total),
                         "ratio": statistics.median(total) / statistics.median(direct),
                         "phases_ms": {k: 1000 * statistics.median(v) for k, v in phases.items()}})
    return rows


PHASES = ("award", "provider", "download", "check")


def _phases(events: list[dict[str, Any]]) -> dict[str, float]:
    """Where a job's time went, from the requester's own events: request -> award (bids), award ->
    result (the provider: inputs, run, sealing), result -> downloaded (a blob output), -> done
    (opening and checking the result)."""
    t = {e["event"]: e["t"] for e in events}
    got = t.get("download", t["result"])
    return {"award": t["award"], "provider": t["result"] - t["award"], "download": got - t["result"],
            "check": t["done"] - got}


async def award_time(nodes: list[Any], repeats: int) -> dict[str, float]:
    """Time to award against one raw stream round trip (open a stream, one ping), and the job
    messages the award waited for: counted, so the figure does not hang on a noisy RTT."""
    from libp2p.host.ping import ID as PING
    from libp2p.host.ping import perform_ping_roundtrip

    req = nodes[0].node
    awards, rtts, opens, messages = [], [], [], []
    for i in range(repeats):
        rec = await req.jobs.submit("matmul", {"m": 8, "n": 8, "k": 8, "seed": i}, max_price=10**12,
                                    deadline_s=60, k=10, bid_window_s=5.0)
        award = next(e["t"] for e in rec.events if e["event"] == "award")
        before = rec.events[:next(j for j, e in enumerate(rec.events) if e["event"] == "award")]
        bids = sum(1 for e in before if e["event"] == "bid")
        assert bids == 10
        sent = len(next(e for e in before if e["event"] == "request")["candidates"])
        messages.append(sent + bids + sum(1 for e in before if e["event"] == "decline"))
        awards.append(award)
        other = nodes[1 + i % 10].node.host.get_id()
        t0 = time.perf_counter()
        stream = await req.host.new_stream(other, [PING])
        opened = time.perf_counter()
        await perform_ping_roundtrip(stream)
        rtts.append(time.perf_counter() - t0)
        opens.append(opened - t0)
        await stream.close()
    return {"award_ms": 1000 * statistics.median(awards), "stream_rtt_ms": 1000 * statistics.median(rtts),
            "stream_open_ms": 1000 * statistics.median(opens),
            "ratio": statistics.median(awards) / statistics.median(rtts),
            "messages_before_award": statistics.median(messages),
            # every request for bids goes out at once, each bid comes back on its own stream: the
            # award waits for one stream negotiation and one request -> bid exchange
            "round_trips_on_critical_path": 2}


async def throughput(nodes: list[Any], repeats: int = 3) -> dict[str, float]:
    """Blob fetch, one raw libp2p stream and one raw TCP socket moving the same bytes, each
    repeated (alternating) and the median taken."""
    data = os.urandom(BLOB_MB << 20)
    holder, reader = nodes[1].node, nodes[0].node
    holder.host.set_stream_handler("/bench/sink/1", _sink(len(data)))
    blob, raw, tcp = [], [], []
    for rep in range(repeats):
        d = data[:-1] + bytes([rep])
        blob_id = holder.blobs.store.put(d)
        t0 = time.perf_counter()
        assert await reader.blobs.fetch(holder.identity.peer_id, blob_id) == d
        blob.append(time.perf_counter() - t0)
        stream = await reader.host.new_stream(holder.host.get_id(), ["/bench/sink/1"])
        t0 = time.perf_counter()
        for i in range(0, len(d), 1 << 20):
            await stream.write(d[i:i + (1 << 20)])
        await stream.read(1)
        raw.append(time.perf_counter() - t0)
        await stream.close()
        tcp.append(await _tcp_seconds(d))
    mb = len(data) / 1e6
    b, r = statistics.median(blob), statistics.median(raw)
    return {"blob_MBps": mb / b, "libp2p_stream_MBps": mb / r, "tcp_MBps": mb / statistics.median(tcp),
            "blob_vs_stream": r / b}


def _sink(size: int) -> Any:
    async def sink(stream: Any) -> None:
        n = 0
        while n < size:
            n += len(await stream.read(1 << 20))
        await stream.write(b"k")

    return sink


async def _tcp_seconds(data: bytes) -> float:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def serve() -> None:
        conn = await listener.accept()
        n = 0
        while n < len(data):
            n += len(await conn.receive_some(1 << 20))
        await conn.send_all(b"k")
        await conn.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(serve)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        t0 = time.perf_counter()
        await client.send_all(data)
        await client.receive_some(1)
        seconds = time.perf_counter() - t0
        await client.aclose()
    await listener.aclose()
    return seconds


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with swarm(11, line=False, ad_interval=30.0, ad_ttl=120.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=60)
        return {"submit": await submit_vs_executor(nodes, args.repeats),
                "award": await award_time(nodes, args.repeats),
                "throughput": await throughput(nodes)}


def render(r: dict[str, Any], png: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title="Submit → verified result vs the executor alone (same job, same run)")
    for col in ("job", "executor ms", "submit ms", "× executor", *(f"{k} ms" for k in PHASES)):
        t.add_column(col, justify="left" if col == "job" else "right")
    for row in r["submit"]:
        t.add_row(row["job"], f"{row['executor_ms']:.1f}", f"{row['submit_ms']:.1f}", f"{row['ratio']:.2f}",
                  *(f"{row['phases_ms'][k]:.1f}" for k in PHASES))
    c.print(t)
    a = r["award"]
    c.print(f"award with 10 bidders: {a['award_ms']:.1f} ms, one raw stream round trip {a['stream_rtt_ms']:.2f} ms "
            f"(of which opening the stream {a['stream_open_ms']:.2f} ms) (× {a['ratio']:.1f}); the award waited for "
            f"{a['messages_before_award']:.0f} messages, {a['round_trips_on_critical_path']} round trips deep")
    th = r["throughput"]
    c.print(f"{BLOB_MB} MiB: blob fetch {th['blob_MBps']:.0f} MB/s, raw libp2p stream {th['libp2p_stream_MBps']:.0f} MB/s, "
            f"raw TCP {th['tcp_MBps']:.0f} MB/s (blob {th['blob_vs_stream']:.0%} of the raw stream)")
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    labels = [row["job"].split(" {")[0] + "\n" + row["job"].split(" {")[1][:22] for row in r["submit"]]
    x = range(len(labels))
    axes[0].bar([i - 0.2 for i in x], [row["executor_ms"] for row in r["submit"]], 0.4, label="executor")
    axes[0].bar([i + 0.2 for i in x], [row["submit_ms"] for row in r["submit"]], 0.4, label="submit → result")
    axes[0].set_xticks(list(x), labels, fontsize=7)
    axes[0].set_ylabel("ms")
    axes[0].legend()
    axes[0].set_title("Job latency")
    axes[1].bar(["stream RTT", "award (10 bids)"], [a["stream_rtt_ms"], a["award_ms"]], color=["grey", "tab:blue"])
    axes[1].set_ylabel("ms")
    axes[1].set_title("Time to award")
    axes[2].bar(["TCP", "libp2p stream", "blob"], [th["tcp_MBps"], th["libp2p_stream_MBps"], th["blob_MBps"]],
                color=["grey", "tab:orange", "tab:blue"])
    axes[2].set_ylabel("MB/s")
    axes[2].set_title(f"{BLOB_MB} MiB transfer")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--png", type=Path, default=Path("bench-jobs.png"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = trio.run(main, args)
    print(json.dumps(result, indent=2)) if args.json else render(result, args.png)
