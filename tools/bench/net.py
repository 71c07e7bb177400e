"""Network benchmarks: connect time and ad propagation, each next to a baseline from the same run.

* connect: our host (one connection per peer) against py-libp2p's default ConnectionConfig
  (three per peer, which waits out a happy-eyeballs delay), Noise + Yamux both; n connects each.
* ping: libp2p ping round trip on an open connection, the floor for any request/response.
* propagation: a line of nodes in one process; the time from publishing an ad to its acceptance
  at each hop (one clock, so no skew), against the ping round trip.

With ``--throughput``, the data plane instead (``throughput.py``: raw TCP, TCP with the bulk
channel's records, libp2p streams, blob fetches, perf and a map of fresh rows, between two
processes); the options after it are that benchmark's (``--throughput --help``).

Prints a table, writes a PNG (``--png``), or one JSON object (``--json``). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pnode.identity import Identity  # noqa: E402
from p2pnode.net.host import build_host, parse_multiaddr  # noqa: E402

LISTEN = [parse_multiaddr("/ip4/127.0.0.1/tcp/0")]


def default_host(identity: Identity) -> Any:
    """Same security and muxer, the library's default connection settings."""
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import Yamux

    kp = identity.libp2p_keypair()
    return new_host(key_pair=kp, sec_opt={"/noise": NoiseTransport(kp, new_x25519().private_key)},  # type: ignore[dict-item]
                    muxer_opt={"/yamux/1.0.0": Yamux}, listen_addrs=LISTEN)  # type: ignore[dict-item]


async def connect_times(make: Any, n: int) -> list[float]:
    from libp2p.peer.peerinfo import info_from_p2p_addr

    server = make(Identity.generate())
    out = []
    async with server.run(LISTEN):
        target = info_from_p2p_addr(server.get_addrs()[0])
        for _ in range(n):
            client = make(Identity.generate())
            async with client.run(LISTEN):
                t0 = time.perf_counter()
                await client.connect(target)
                out.append((time.perf_counter() - t0) * 1000)
    return out


async def ping_times(n: int) -> list[float]:
    from libp2p.host.ping import ID as PING
    from libp2p.host.ping import perform_ping_roundtrip
    from libp2p.peer.peerinfo import info_from_p2p_addr

    a, b = build_host(Identity.generate(), LISTEN), build_host(Identity.generate(), LISTEN)
    out = []
    async with a.run(LISTEN), b.run(LISTEN):
        await b.connect(info_from_p2p_addr(a.get_addrs()[0]))
        stream = await b.new_stream(a.get_id(), [PING])
        for _ in range(n):
            t0 = time.perf_counter()
            await perform_ping_roundtrip(stream)
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def propagation(hops: int, rounds: int) -> dict[int, list[float]]:
    """ms from publish at node 0 to acceptance at node k, for k = 1..hops."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.integration.swarm import all_list_all, swarm

    per_hop: dict[int, list[float]] = {k: [] for k in range(1, hops + 1)}
    async with swarm(hops + 1, line=True, ad_interval=60.0, ad_ttl=120.0) as nodes:
        await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=60)
        src = nodes[0].node
        pid = src.identity.peer_id
        for _ in range(rounds):
            before = {k: nodes[k].node.table.get(pid).ad.seq for k in per_hop}  # type: ignore[union-attr]
            t0 = time.perf_counter()

            async def arrival(k: int, seq_before: int, t0: float) -> None:
                table = nodes[k].node.table
                await nodes[k].node.wait_until(
                    lambda: table.get(pid).ad.seq > seq_before, timeout=10)  # type: ignore[union-attr]
                per_hop[k].append((time.perf_counter() - t0) * 1000)

            async with trio.open_nursery() as n:
                for k in per_hop:
                    n.start_soon(arrival, k, before[k], t0)
                await src.publish_ad()
            # stay within the network's ad rate per peer (burst 10, then 0.5/s)
            await trio.sleep(1.0)
    return per_hop


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"n": len(xs), "median_ms": statistics.median(xs), "p90_ms": xs[int(0.9 * (len(xs) - 1))],
            "min_ms": xs[0]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tuned = await connect_times(lambda i: build_host(i, LISTEN), args.n)
    default = await connect_times(default_host, args.n)
    ping = await ping_times(200)
    prop = await propagation(args.hops, args.rounds)
    return {
        "connect_tuned": summary(tuned),
        "connect_library_default": summary(default),
        "connect_speedup": statistics.median(default) / statistics.median(tuned),
        "ping_rtt": summary(ping),
        "propagation_by_hop": {str(k): summary(v) for k, v in prop.items()},
        "propagation_per_hop_over_ping": statistics.median(prop[1]) / statistics.median(ping),
    }


def render(r: dict[str, Any], png: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Network benchmarks (loopback, one process)")
    for c in ("measure", "n", "median ms", "p90 ms", "vs baseline"):
        t.add_column(c, justify="right" if c != "measure" else "left")
    base = r["connect_library_default"]["median_ms"]
    ping = r["ping_rtt"]["median_ms"]
    t.add_row("connect, library default (baseline)", str(r["connect_library_default"]["n"]),
              f"{base:.2f}", f"{r['connect_library_default']['p90_ms']:.2f}", "1.00×")
    t.add_row("connect, p2pnode host", str(r["connect_tuned"]["n"]), f"{r['connect_tuned']['median_ms']:.2f}",
              f"{r['connect_tuned']['p90_ms']:.2f}", f"{r['connect_tuned']['median_ms'] / base:.3f}×")
    t.add_row("ping RTT (baseline for gossip)", str(r["ping_rtt"]["n"]), f"{ping:.2f}",
              f"{r['ping_rtt']['p90_ms']:.2f}", "1.00×")
    for k, s in r["propagation_by_hop"].items():
        t.add_row(f"ad accepted {k} hop(s) away", str(s["n"]), f"{s['median_ms']:.2f}", f"{s['p90_ms']:.2f}",
                  f"{s['median_ms'] / ping:.1f}× ping")
    Console().print(t)
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(["library default", "p2pnode"], [base, r["connect_tuned"]["median_ms"]], color=["grey", "tab:blue"])
    ax1.set_ylabel("median connect time (ms)")
    ax1.set_title("Connect, Noise + Yamux, loopback")
    hops = [int(k) for k in r["propagation_by_hop"]]
    ax2.plot(hops, [r["propagation_by_hop"][str(k)]["median_ms"] for k in hops], "o-", label="ad propagation (median)")
    ax2.plot(hops, [r["propagation_by_hop"][str(k)]["p90_ms"] for k in hops], "o--", label="ad propagation (p90)")
    ax2.axhline(ping, color="grey", linestyle=":", label="ping RTT")
    ax2.set_xlabel("hops from the publisher")
    ax2.set_ylabel("ms")
    ax2.set_title("Capacity ad propagation")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    if "--throughput" in sys.argv[1:]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import throughput

        throughput.main([a for a in sys.argv[1:] if a != "--throughput"])
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="connects per configuration")
    p.add_argument("--hops", type=int, default=4)
    p.add_argument("--rounds", type=int, default=16, help="ads published (at most ~16: the ad rate limit)")
    p.add_argument("--png", type=Path, default=Path("bench-net.png"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    result = trio.run(main, a)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        render(result, a.png)
