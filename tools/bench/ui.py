"""The dashboard's cost on a running node: CPU idle without it, with it, and with a page's event
stream open; the latency of its API; and the time to start with and without it.

One real node process on loopback (no peers), measured from /proc. Prints a table or ``--json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

EXE = [sys.executable, "-m", "p2pnode"]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def start(data: Path, ui: bool) -> tuple[subprocess.Popen[str], float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}
    t0 = time.monotonic()
    proc = subprocess.Popen([*EXE, "run", "--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
                             "--no-dht", "--metrics", "", *(["--ui", "127.0.0.1:0"] if ui else ["--no-ui"])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    address = ""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("the node did not start")
        if line.startswith("dashboard on http://"):
            address = line.split()[2].removeprefix("http://").rstrip("/")
        if line.startswith("listening on") and not ui or address:
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return proc, time.monotonic() - t0, address


def idle_cpu(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / seconds


def latency(address: str, token: str, path: str, n: int) -> dict[str, float]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"X-P2PNode-Token": token})
        r = conn.getresponse()
        r.read()
        times.append(1000 * (time.perf_counter() - t0))
        assert r.status == 200
    conn.close()
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2)}


def stream(address: str, token: str, stop: threading.Event) -> None:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/api/events", headers={"X-P2PNode-Token": token})
    r = conn.getresponse()
    while not stop.is_set():
        if not r.read1(65536):
            break
    conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0, help="each CPU measurement (default 20)")
    ap.add_argument("--requests", type=int, default=200, help="requests per API path (default 200)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="p2pbench-", dir="/tmp") as d:
        plain, out["start_no_ui_s"], _ = start(Path(d) / "a", ui=False)
        time.sleep(3)
        out["idle_no_ui_pct"] = round(idle_cpu(plain.pid, args.seconds), 2)
        plain.terminate()
        plain.wait()
        node, out["start_ui_s"], address = start(Path(d) / "b", ui=True)
        token = (Path(d) / "b" / "ui.token").read_text().strip()
        time.sleep(3)
        out["idle_ui_pct"] = round(idle_cpu(node.pid, args.seconds), 2)
        stop = threading.Event()
        reader = threading.Thread(target=stream, args=(address, token, stop), daemon=True)
        reader.start()
        time.sleep(2)
        out["idle_ui_page_open_pct"] = round(idle_cpu(node.pid, args.seconds), 2)
        stop.set()
        for path in ("/api/status", "/api/market", "/api/jobs"):
            out[path] = latency(address, token, path, args.requests)
        node.terminate()
        node.wait()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"start to listening: {out['start_no_ui_s']:.2f} s without the dashboard, "
          f"{out['start_ui_s']:.2f} s with it")
    print(f"idle CPU (% of a core over {args.seconds:g} s): {out['idle_no_ui_pct']} without, {out['idle_ui_pct']} "
          f"with the dashboard, {out['idle_ui_page_open_pct']} with a page's event stream open")
    for path in ("/api/status", "/api/market", "/api/jobs"):
        print(f"GET {path}: p50 {out[path]['p50_ms']} ms, p99 {out[path]['p99_ms']} ms ({args.requests} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
