"""Interop benchmark: p2pnode next to js-libp2p on the same machine, in the same run.

For each pair (py→py, py→js, js→py, js→js) it measures
* stream round trip: libp2p ping on an open connection (``/ipfs/ping/1.0.0``), 20 each;
* gossip delivery: time from a capacity ad's issue (``iat``, same machine clock) to its arrival
  at the other side (accepted into a node's table, or decoded and verified by the js peer).

The py↔py figures are the baseline. Prints a table, writes a PNG, or ``--json``. Needs Node.js and
the js peer (``tools/test`` installs it). Loopback only.
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

from tests.integration.swarm import node_config, start_node  # noqa: E402
from tests.interop.jspeer import JsPeer, js_peer  # noqa: E402

ROUNDS = 8  # two pairs per publisher at 1 ad/s stay within the ad rate (burst 10, 0.5/s)
PINGS = 20


async def py_ping(src: Any, dst_id: Any) -> list[float]:
    from libp2p.host.ping import ID as PING
    from libp2p.host.ping import perform_ping_roundtrip

    stream = await src.host.new_stream(dst_id, [PING])
    out = []
    for _ in range(PINGS):
        t0 = time.perf_counter()
        await perform_ping_roundtrip(stream)
        out.append((time.perf_counter() - t0) * 1000)
    await stream.close()
    return out


async def js_ping(js: JsPeer, peer: str) -> list[float]:
    # js-libp2p reports whole milliseconds; time the command round trip too and keep the smaller
    t0 = time.perf_counter()
    reply = await js.command("ping", peer=peer, count=PINGS)
    per = (time.perf_counter() - t0) * 1000 / PINGS
    return [min(float(r), per) if r == 0 else float(r) for r in reply["rtts"]]


async def node_to(js: JsPeer | None, src: Any, dst: Any | None) -> list[float]:
    """ms from issue to arrival of ``ROUNDS`` ads published by node ``src``."""
    out = []
    for _ in range(ROUNDS):
        mark = len(js.events) if js else 0
        before = dst.table.get(src.identity.peer_id).ad.seq if dst else 0  # type: ignore[union-attr]
        await src.publish_ad()
        seq = src._seq
        if js is not None:
            ev = await js.wait_event(lambda e, seq=seq, mark=mark: e.get("event") == "ad"
                                     and e.get("peer") == src.peer_id and e.get("seq") == str(seq)
                                     and js.events.index(e) >= mark)
            out.append(ev["recv_ms"] - ev["iat"])
        else:
            await dst.wait_until(lambda before=before: dst.table.get(src.identity.peer_id).ad.seq > before,
                                 timeout=10)  # type: ignore[union-attr]
            e = dst.table.get(src.identity.peer_id)
            out.append(e.received_at * 1000 - e.ad.issued_at_ms)  # type: ignore[union-attr]
        await trio.sleep(1.0)
    return out


async def js_to(js: JsPeer, node: Any | None, other: JsPeer | None) -> list[float]:
    from p2pnode.wire.peer_id import from_base58

    pid = from_base58(js.peer)
    out = []
    for i in range(ROUNDS):
        seq = int(time.time() * 1000) + i
        mark = len(other.events) if other else 0
        await js.command("publish_ad", seq=seq)
        if node is not None:
            await node.wait_until(lambda seq=seq: (e := node.table.get(pid)) is not None and e.ad.seq == seq,
                                  timeout=10)
            e = node.table.get(pid)
            out.append(e.received_at * 1000 - e.ad.issued_at_ms)
        else:
            assert other is not None
            ev = await other.wait_event(lambda e, seq=seq, mark=mark: e.get("event") == "ad"
                                        and e.get("seq") == str(seq) and other.events.index(e) >= mark)
            out.append(ev["recv_ms"] - ev["iat"])
        await trio.sleep(1.0)
    return out


async def main() -> dict[str, Any]:
    from libp2p.peer.id import ID

    res: dict[str, dict[str, list[float]]] = {}
    async with trio.open_nursery() as nursery:
        a = (await start_node(nursery, node_config(ad_interval=60.0, ad_ttl=120.0))).node
        b = (await start_node(nursery, node_config(bootstrap=[a.addrs()[0]], ad_interval=60.0, ad_ttl=120.0))).node
        async with js_peer(dial=[a.addrs()[0]]) as js1:
            async with js_peer(dial=[js1.addrs[0]]) as js2:
                await b.wait_until(lambda: a.identity.peer_id in b.table, timeout=20)
                for js in (js1, js2):
                    with trio.fail_after(20):
                        while not (await js.command("mesh"))["topic_peers"]:
                            await trio.sleep(0.1)
                await a.wait_until(lambda: ID.from_base58(js1.peer) in a.pubsub.peer_topics.get("p2pnode/capacity/1", ()), 20)
                res["py→py"] = {"rtt": await py_ping(b, a.host.get_id()), "gossip": await node_to(None, a, b)}
                res["py→js"] = {"rtt": await py_ping(a, ID.from_base58(js1.peer)), "gossip": await node_to(js1, a, None)}
                res["js→py"] = {"rtt": await js_ping(js1, a.peer_id), "gossip": await js_to(js1, a, None)}
                res["js→js"] = {"rtt": await js_ping(js2, js1.peer), "gossip": await js_to(js1, None, js2)}
        nursery.cancel_scope.cancel()
    base_rtt = statistics.median(res["py→py"]["rtt"])
    base_gossip = statistics.median(res["py→py"]["gossip"])
    return {pair: {
        "rtt_median_ms": statistics.median(v["rtt"]), "rtt_p90_ms": sorted(v["rtt"])[int(0.9 * (len(v["rtt"]) - 1))],
        "gossip_median_ms": statistics.median(v["gossip"]), "gossip_max_ms": max(v["gossip"]),
        "rtt_vs_py_py": statistics.median(v["rtt"]) / base_rtt,
        "gossip_vs_py_py": statistics.median(v["gossip"]) / base_gossip,
        "samples": {"rtt": len(v["rtt"]), "gossip": len(v["gossip"])},
    } for pair, v in res.items()}


def render(r: dict[str, Any], png: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="p2pnode and js-libp2p, loopback, same run (py→py is the baseline)")
    for c in ("pair", "ping RTT median ms", "p90", "× py→py", "gossip median ms", "max", "× py→py"):
        t.add_column(c, justify="left" if c == "pair" else "right")
    for pair, v in r.items():
        t.add_row(pair, f"{v['rtt_median_ms']:.2f}", f"{v['rtt_p90_ms']:.2f}", f"{v['rtt_vs_py_py']:.2f}",
                  f"{v['gossip_median_ms']:.1f}", f"{v['gossip_max_ms']:.1f}", f"{v['gossip_vs_py_py']:.2f}")
    Console().print(t)
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(pairs, [r[p]["rtt_median_ms"] for p in pairs], color="tab:blue")
    ax1.set_title("libp2p ping round trip (median)")
    ax1.set_ylabel("ms")
    ax2.bar(pairs, [r[p]["gossip_median_ms"] for p in pairs], color="tab:orange")
    ax2.set_title("capacity ad delivery, issue → arrival (median)")
    ax2.set_ylabel("ms")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--png", type=Path, default=Path("bench-interop.png"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    result = trio.run(main)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        render(result, a.png)
