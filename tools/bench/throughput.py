"""Data-plane throughput between two processes on loopback, beside raw TCP measured in the same run.

Also ``tools/bench/run net --throughput``. Each measure moves ``--mib`` MiB from a child process
(the writer, or the blob's holder) to this one (the reader):

* ``tcp``: raw TCP (trio), 1 MiB writes: the wire's ceiling on this machine;
* ``tcp+aead``: raw TCP carrying the bulk channel's records (AES-256-GCM, one chunk a record);
* ``stream``: one libp2p stream between hosts built as a node builds them, 1 MiB writes;
* ``stream, upstream``: the same with py-libp2p's own Noise session and yamux as shipped (before
  :mod:`p2pnode.net.noise_session` and :mod:`p2pnode.net.yamux_speed`): the figure of before;
* ``streams xN``: N streams at once on one connection, the same bytes in all;
* ``blob, stream`` / ``blob, bulk``: :meth:`BlobService.fetch` of one blob, every chunk checked,
  over the libp2p stream (bulk off) and over the bulk channel;
* ``perf``: libp2p's perf protocol (``/perf/1.0.0``): py-libp2p's perf client downloading from a
  node's perf service, and from js-libp2p's when ``@libp2p/perf`` is installed (``--js``);
* ``map``: a data-dense ``map`` of fresh rows (``models.py``'s small CNN, 3 KB a row) through a
  provider process, against ONNX Runtime run directly on the same rows just before it: in shards
  of ``--map-shard`` rows (bulk off, then on), in the shards ``submit map`` makes unasked, and with
  ONNX Runtime (directly and in the provider) on one thread on a core of its own, the nodes on the
  others: as a GPU provider's kernel runs beside its node, what the map loses then is what the
  data plane fails to hide.

Each figure is the median of ``--runs`` interleaved runs, shown beside the best (the machine is
shared: the best run is the least disturbed one), with the CPU seconds per GB of each end (of the
best run) and, with ``--profile``, the functions that took each end's time in one more run. Prints
a table, writes a PNG, or ``--json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MiB = 1 << 20
WRITE = MiB
STREAM_PROTO = "/p2pnode-bench/stream/1"
UPSTREAM = "upstream"


# both ends ---------------------------------------------------------------------------------------

class Meter:
    """Process CPU time (and, when asked, a profile) between :meth:`start` and :meth:`stop`."""

    def __init__(self, profile: bool) -> None:
        self.profiler = cProfile.Profile() if profile else None
        self.cpu = 0.0

    def start(self) -> None:
        self.cpu = time.process_time()
        if self.profiler:
            self.profiler.enable()

    def stop(self) -> dict[str, Any]:
        if self.profiler:
            self.profiler.disable()
        out: dict[str, Any] = {"cpu_s": time.process_time() - self.cpu}
        if self.profiler:
            out["profile"] = top_functions(self.profiler)
        return out


def top_functions(profiler: cProfile.Profile, n: int = 10) -> list[list[Any]]:
    """The ``n`` functions with the most time of their own: [name, seconds, share of all]."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = stats.stats  # type: ignore[attr-defined]
    total = sum(r[2] for r in rows.values()) or 1.0
    ranked = sorted(rows.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [[f"{Path(f).name}:{line}({name})", round(r[2], 4), round(r[2] / total, 3)]
            for (f, line, name), r in ranked]


def make_host(upstream: bool) -> Any:
    """A host as a node builds it, or with py-libp2p's Noise session and yamux as shipped."""
    from p2pnode.identity import Identity
    from p2pnode.net.host import build_host, parse_multiaddr

    listen = [parse_multiaddr("/ip4/127.0.0.1/tcp/0")]
    if not upstream:
        return build_host(Identity.generate(), listen)
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import Yamux

    kp = Identity.generate().libp2p_keypair()
    return new_host(key_pair=kp, sec_opt={"/noise": NoiseTransport(kp, new_x25519().private_key)},  # type: ignore[dict-item]
                    muxer_opt={"/yamux/1.0.0": Yamux}, listen_addrs=listen)  # type: ignore[dict-item]


# the child: the writer / holder -----------------------------------------------------------------

async def child(mode: str, mib: int, streams: int, profile: bool) -> None:
    """Serve one measure, tell the parent where (one JSON line), and report its CPU when told to
    stop (a second JSON line). ``start`` and ``stop`` come on stdin."""
    meter = Meter(profile)
    info: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        if mode in ("tcp", "tcp+aead"):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            info["port"] = listeners[0].socket.getsockname()[1]
            nursery.start_soon(_serve_tcp, listeners[0], mode, mib)
        else:
            host = make_host(mode.endswith(UPSTREAM))
            await nursery.start(_run_host, host, mode, mib, info)
        print(json.dumps(info), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        lines = b""
        while b"stop" not in lines:
            more = await stdin.receive_some(64)
            if not more:
                break
            lines += more
            if b"start" in lines and meter.cpu == 0.0:
                meter.start()
        print(json.dumps(meter.stop()), flush=True)
        nursery.cancel_scope.cancel()


async def _serve_tcp(listener: trio.SocketListener, mode: str, mib: int) -> None:
    from p2pnode.wire import bulk as wbulk

    stream = await listener.accept()
    data = os.urandom(WRITE)
    sealer = wbulk.Sealer(b"k" * 32)
    out = bytearray(wbulk.record_size(WRITE))
    for _ in range(mib * MiB // WRITE):
        await stream.send_all(data if mode == "tcp" else sealer.seal_into(data, out))
    await stream.aclose()


async def _run_host(host: Any, mode: str, mib: int, info: dict[str, Any], *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from p2pnode.net.host import parse_multiaddr

    listen = [parse_multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with host.run(listen), trio.open_nursery() as nursery:
        info["addr"] = str(host.get_addrs()[0])
        if mode.startswith("blob"):
            info["blob"] = await _hold_blob(host, mode, mib, nursery)
        elif mode == "perf":
            from p2pnode.net.guard import PeerGate, guard_stream_handler
            from p2pnode.net.perf import PERF_PROTOCOL, PerfServer

            perf = PerfServer()
            host.set_stream_handler(PERF_PROTOCOL, guard_stream_handler(
                "perf", perf.handle_stream, PeerGate(lambda peer: False, lambda peer, code: None), perf.limits))
        else:
            data = os.urandom(WRITE)

            async def write(stream: Any) -> None:
                n = int.from_bytes(await stream.read(8), "big")
                for _ in range(n // WRITE):
                    await stream.write(data)
                await stream.close()

            host.set_stream_handler(STREAM_PROTO, write)
        task_status.started()
        await trio.sleep_forever()


async def _hold_blob(host: Any, mode: str, mib: int, nursery: trio.Nursery) -> str:
    from p2pnode.net.bulk import BulkServer
    from p2pnode.services.blobs import BlobService
    from p2pnode.wire.names import BLOB_PROTOCOL

    bulk = BulkServer(host.get_id().to_bytes(), now=time.time) if mode == "blob, bulk" else None
    blobs = BlobService(None, lambda peer, code: None, bulk_server=bulk)  # type: ignore[arg-type]
    if bulk is not None:
        await nursery.start(bulk.run, ["127.0.0.1"], 0)
    host.set_stream_handler(BLOB_PROTOCOL, lambda s: blobs.handle_stream(s, s.muxed_conn.peer_id.to_bytes()))
    return blobs.store.put(os.urandom(mib * MiB)).hex()


# the parent: the reader -------------------------------------------------------------------------

@dataclass
class Run:
    mode: str
    seconds: float
    bytes: int
    reader: dict[str, Any]
    writer: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def spawn(mode: str, args: argparse.Namespace, profile: bool) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    cmd = [sys.executable, __file__, "--child", mode, "--mib", str(args.mib), "--streams", str(args.streams)]
    proc = subprocess.Popen(cmd + (["--profile"] if profile else []), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


async def measure(mode: str, args: argparse.Namespace, profile: bool = False) -> Run:
    """One run of ``mode``: the child writes, this process reads."""
    proc, info = spawn(mode, args, profile)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        meter = Meter(profile)
        reader = READERS[mode.removesuffix(", " + UPSTREAM)]
        async with reader(info, mode, args) as transfer:
            proc.stdin.write("start\n")
            proc.stdin.flush()
            meter.start()
            t0 = time.perf_counter()
            moved = await transfer()
            seconds = time.perf_counter() - t0
            mine = meter.stop()
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        theirs = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    return Run(mode, seconds, moved, mine, theirs)


Transfer = Callable[[], Awaitable[int]]


class _Tcp:
    def __init__(self, info: dict[str, Any], mode: str, args: argparse.Namespace) -> None:
        self.port, self.mode, self.total = info["port"], mode, args.mib * MiB

    async def __aenter__(self) -> Transfer:
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        return self.read

    async def read(self) -> int:
        from p2pnode.wire import bulk as wbulk

        opener = wbulk.Opener(b"k" * 32)
        sock = self.stream.socket
        size = wbulk.record_size(WRITE) if self.mode == "tcp+aead" else WRITE
        buf = bytearray(size)
        view, plain = memoryview(buf), memoryview(bytearray(WRITE))
        got = 0
        for _ in range(self.total // WRITE):
            pos = 0
            while pos < size:
                pos += await sock.recv_into(view[pos:])
            if self.mode == "tcp+aead":
                opener.open_into(bytes(view[:wbulk.HEADER]), view[wbulk.HEADER:], plain)
            got += WRITE
        return got

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()


class _Host:
    """A host connected to the child's (for the stream, blob and perf measures)."""

    def __init__(self, info: dict[str, Any], mode: str, args: argparse.Namespace) -> None:
        self.info, self.mode, self.args = info, mode, args

    async def __aenter__(self) -> Transfer:
        from libp2p.peer.peerinfo import info_from_p2p_addr

        from p2pnode.net.host import parse_multiaddr

        self.host = make_host(self.mode.endswith(UPSTREAM))
        self._cm = self.host.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")])
        await self._cm.__aenter__()
        self.peer = info_from_p2p_addr(parse_multiaddr(self.info["addr"]))
        await self.host.connect(self.peer)
        return self.read

    async def read(self) -> int:
        base = self.mode.removesuffix(", " + UPSTREAM)
        if base == "stream":
            return await self._streams(1)
        if base == "streams":
            return await self._streams(self.args.streams)
        if base == "perf":
            return await _perf_download(self.host, self.info["addr"], self.args.mib * MiB)
        return await self._blob()

    async def _streams(self, n: int) -> int:
        per = self.args.mib * MiB // n // WRITE * WRITE
        got = [0] * n

        async def one(k: int) -> None:
            from libp2p.network.stream.exceptions import StreamEOF

            stream = await self.host.new_stream(self.peer.peer_id, [STREAM_PROTO])
            await stream.write(per.to_bytes(8, "big"))
            try:
                while True:
                    got[k] += len(await stream.read(WRITE))
            except StreamEOF:
                pass

        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(one, k)
        return sum(got)

    async def _blob(self) -> int:
        from p2pnode.net.adapters import HostStreams
        from p2pnode.net.bulk import BulkServer
        from p2pnode.services.blobs import BlobService

        me = self.host.get_id().to_bytes()
        bulk = BulkServer(me, now=time.time) if self.mode == "blob, bulk" else None
        blobs = BlobService(HostStreams(self.host), lambda peer, code: None, bulk_server=bulk)
        data = await blobs.fetch(self.peer.peer_id.to_bytes(), bytes.fromhex(self.info["blob"]))
        if bulk is not None and blobs.bulk_bytes != len(data):
            raise RuntimeError("the blob did not come over the bulk channel")
        return len(data)

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(None, None, None)


async def _perf_download(host: Any, addr: str, n: int) -> int:
    """py-libp2p's perf client: ask for ``n`` bytes, upload none."""
    from libp2p.perf.perf_service import PerfService
    from multiaddr import Multiaddr

    got = 0
    async for out in PerfService(host).measure_performance(Multiaddr(addr), 0, n):
        if out["type"] == "final":
            got = out["download_bytes"]
    return got


READERS: dict[str, Callable[[dict[str, Any], str, argparse.Namespace], Any]] = {
    "tcp": _Tcp, "tcp+aead": _Tcp, "stream": _Host, "streams": _Host, "blob, stream": _Host,
    "blob, bulk": _Host, "perf": _Host,
}
MODES = ["tcp", "tcp+aead", "stream, upstream", "stream", "streams", "blob, stream", "blob, bulk", "perf"]


# js-libp2p's perf server ----------------------------------------------------------------------------

def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def js_available() -> bool:
    import shutil

    return shutil.which("node") is not None and (ROOT / "tests/interop/js/node_modules/libp2p").is_dir()


async def measure_js_perf(args: argparse.Namespace) -> Run:
    """py-libp2p's perf client, on a host built as a node builds it, downloading from the js-libp2p
    peer's perf server (``tests/interop/js/peer.mjs`` with ``P2P_PERF=1``): js-libp2p's Noise and
    yamux writing, ours reading."""
    from tests.interop.jspeer import js_peer

    async with js_peer(env={"P2P_PERF": "1"}) as js:
        host = make_host(False)
        from p2pnode.net.host import parse_multiaddr

        async with host.run([parse_multiaddr("/ip4/127.0.0.1/tcp/0")]):
            addr = next(a for a in js.addrs if "/ip4/127.0.0.1/" in a)
            addr = addr if "/p2p/" in addr else f"{addr}/p2p/{js.peer}"
            meter, their0 = Meter(False), _proc_cpu(js.proc.pid)
            meter.start()
            t0 = time.perf_counter()
            got = await _perf_download(host, addr, args.mib * MiB)
            seconds = time.perf_counter() - t0
            mine = meter.stop()
            theirs = {"cpu_s": _proc_cpu(js.proc.pid) - their0}
    return Run("perf, js-libp2p writes", seconds, got, mine, theirs)


# the run ------------------------------------------------------------------------------------------

def label(mode: str, args: argparse.Namespace) -> str:
    return f"streams x{args.streams}" if mode == "streams" else mode


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    modes = [m for m in MODES if not args.only or m in args.only.split("/")]
    runs: dict[str, list[Run]] = {m: [] for m in modes}
    for _ in range(args.runs):  # interleaved: a disturbed minute touches every measure alike
        for mode in modes:
            runs[mode].append(await measure(mode, args))
    if args.js and js_available():
        js_runs = []
        for _ in range(args.runs):
            try:
                js_runs.append(await measure_js_perf(args))
            except Exception as exc:  # noqa: BLE001 - said in the report; the other figures stand
                print(f"perf from js-libp2p failed: {exc!r}", file=sys.stderr)
        if js_runs:
            runs["perf, js-libp2p writes"] = js_runs
    best = {m: max(rs, key=lambda r: r.mb_s) for m, rs in runs.items()}
    median = {m: statistics.median(r.mb_s for r in rs) for m, rs in runs.items()}
    tcp = median.get("tcp")
    before = median.get("stream, upstream")
    report: dict[str, Any] = {"mib": args.mib, "runs": args.runs, "measures": {}}
    for mode, r in best.items():
        report["measures"][label(mode, args)] = {
            "MB_s": round(median[mode], 1), "best_MB_s": round(r.mb_s, 1),
            "all_MB_s": [round(x.mb_s, 1) for x in runs[mode]],
            "reader_cpu_s_per_GB": round(r.reader["cpu_s"] / r.bytes * 1e9, 3),
            "writer_cpu_s_per_GB": round(r.writer["cpu_s"] / r.bytes * 1e9, 3),
            "of_tcp": round(median[mode] / tcp, 3) if tcp else None,
            "x_upstream_stream": round(median[mode] / before, 2) if before else None,
        }
    if args.profile:
        for mode in modes:
            r = await measure(mode, args, profile=True)
            report["measures"][label(mode, args)]["profile"] = {"reader": r.reader.get("profile"),
                                                                "writer": r.writer.get("profile")}
    if args.map:
        from _fresh_map import measure_map

        report["map"] = []
        for bulk, default, pinned in ((False, False, False), (True, False, False), (True, True, False),
                                      (True, False, True)):
            try:
                report["map"].append(measure_map(args, bulk, args.runs, default_shards=default, pinned=pinned))
            except RuntimeError as exc:  # a map that did not finish (a busy machine): said, not fatal
                report["map"].append({"bulk": bulk, "default_shards": default, "pinned": pinned,
                                      "error": str(exc).strip().splitlines()[-1]})
    return report


def render(r: dict[str, Any], png: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Throughput between two processes on loopback, {r['mib']} MiB, median of {r['runs']}")
    for col in ("measure", "MB/s", "best", "of raw TCP", "× upstream stream", "reader s/GB", "writer s/GB", "runs MB/s"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for name, m in r["measures"].items():
        t.add_row(name, f"{m['MB_s']:.0f}", f"{m['best_MB_s']:.0f}", f"{100 * m['of_tcp']:.0f} %" if m["of_tcp"] else "",
                  f"{m['x_upstream_stream']:.1f}" if m["x_upstream_stream"] else "",
                  f"{m['reader_cpu_s_per_GB']:.2f}", f"{m['writer_cpu_s_per_GB']:.2f}",
                  " ".join(f"{x:.0f}" for x in m["all_MB_s"]))
    c = Console()
    c.print(t)
    for m in r.get("map", []):
        how = f"bulk {'on' if m['bulk'] else 'off'}" + (", shards as submit map makes them" if m.get("default_shards")
                                                         else f", shards of {m.get('shard', '?')} rows") \
            + (", the kernel on a core of its own" if m.get("pinned") else "")
        if "error" in m:
            c.print(f"map of fresh rows, {how}: did not finish: {m['error']}")
            continue
        each = ", ".join(f"{100 * x['ratio']:.0f} %" for x in m["runs"])
        c.print(f"map of fresh rows ({m['rows']} rows, {m['MB']:.0f} MB), {how}: "
                f"{100 * m['median_ratio']:.0f} % of ONNX Runtime directly (median of {len(m['runs'])}: {each})")
        cpu = m["runs"][-1].get("cpu_s")
        if cpu:
            c.print("  CPU seconds of its last run: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in cpu.items()))
    for name, m in r["measures"].items():
        for end in ("reader", "writer"):
            prof = (m.get("profile") or {}).get(end)
            if prof:
                c.print(f"[bold]{name}, {end}[/bold]: " + "; ".join(f"{f} {100 * share:.0f} %" for f, _, share in prof[:6]))
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["measures"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.barh(names, [r["measures"][n]["MB_s"] for n in names], color="tab:blue")
    ax1.set_xlabel("MB/s (median run)")
    ax1.invert_yaxis()
    ax1.set_title("Throughput, two processes, loopback")
    ys = range(len(names))
    ax2.barh([y - 0.2 for y in ys], [r["measures"][n]["reader_cpu_s_per_GB"] for n in names], 0.4, label="reader")
    ax2.barh([y + 0.2 for y in ys], [r["measures"][n]["writer_cpu_s_per_GB"] for n in names], 0.4, label="writer")
    ax2.set_yticks(list(ys), names)
    ax2.invert_yaxis()
    ax2.set_xlabel("CPU seconds per GB moved")
    ax2.legend()
    ax2.set_title("CPU per GB, each end")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    c.print(f"wrote {png}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256, help="MiB moved by each measure")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs of each measure (the median is shown, and the best)")
    p.add_argument("--streams", type=int, default=4, help="streams at once in the 'streams' measure")
    p.add_argument("--only", default="", help="these measures only, separated by '/' (e.g. 'tcp/blob, bulk')")
    p.add_argument("--profile", action="store_true", help="one more run of each measure, profiled at both ends")
    p.add_argument("--js", action=argparse.BooleanOptionalAction, default=True,
                   help="also download from js-libp2p's perf server (needs Node.js and the js peer)")
    p.add_argument("--map", action=argparse.BooleanOptionalAction, default=True,
                   help="also a map of fresh rows against ONNX Runtime directly: bulk off and on in shards of "
                        "--map-shard rows, bulk on in the shards submit map makes unasked, and with the kernel "
                        "on a core of its own")
    p.add_argument("--map-rows", type=int, default=32768, help="rows of each map (3 KB each)")
    p.add_argument("--map-shard", type=int, default=4096, help="rows of each shard of the map")
    p.add_argument("--png", type=Path, default=Path("bench-throughput.png"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.child:
        trio.run(child, args.child, args.mib, args.streams, args.profile)
        return
    report = trio.run(run_all, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report, args.png)


if __name__ == "__main__":
    main()
