"""A provider's decision on a request for bids: bid (price, estimate, backend) or decline (code).

Pure: the shell passes in what it knows (available backends, free memory, measured speed, load).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from p2pnode.errors import WorkloadError
from p2pnode.exec import workloads
from p2pnode.exec.backends import for_workload
from p2pnode.telemetry.calibrate import speed_for
from p2pnode.wire import job as m
from p2pnode.wire.blob import MAX_BLOB

MAX_OUTPUT = MAX_BLOB - 4096  # room for the sealing and CBOR around the arrays
OVERHEAD_MS = 300  # worker round trip, result transfer: measured on loopback, rounded up
MAX_HORIZON_S = 86400.0  # a request whose deadline is further away than this is declined


@dataclass(frozen=True)
class Capacity:
    backends: tuple[str, ...]
    free_memory: int
    gflops: float  # measured speed of the default backend
    price_per_gflop: int
    busy: bool
    offered: tuple[str, ...]
    speeds: tuple[tuple[str, float], ...] = ()  # measured speed per kernel and backend (the ad's)
    paused: bool = False  # the operator paused this node: running jobs finish, no new bids


@dataclass(frozen=True)
class Decision:
    bid: bool
    code: str = ""
    reason: str = ""
    price: int = 0
    estimate_ms: int = 0
    backend: str = ""


def decide(rfb: m.RequestForBids, cap: Capacity, now: float) -> Decision:
    def no(code: str, reason: str) -> Decision:
        return Decision(False, code, reason)

    if rfb.deadline_ms / 1000.0 > now + MAX_HORIZON_S:
        return no("deadline", f"the deadline is more than {MAX_HORIZON_S:g} s away")
    if rfb.workload not in cap.offered:
        try:
            workloads.get(rfb.workload)
        except WorkloadError as exc:
            return no("unknown_workload", str(exc))
        return no("unknown_workload", f"this provider does not offer {rfb.workload}")
    try:
        wl = workloads.get(rfb.workload)
        p = wl.check(rfb.params)
    except WorkloadError as exc:
        return no(exc.code, str(exc))
    if wl.output_bytes(p) > MAX_OUTPUT:
        return no("bad_params", f"output of {wl.output_bytes(p)} bytes is over the limit of {MAX_OUTPUT}")
    usable = for_workload(rfb.workload, cap.backends)
    if not usable:
        return no("backend_unavailable", f"no backend here runs {rfb.workload}")
    backend = rfb.backend or usable[0]
    if backend not in usable:
        return no("backend_unavailable", f"no {backend} backend for {rfb.workload} here")
    need = max(wl.memory(p), rfb.min_memory)
    if need > cap.free_memory:
        return no("no_capacity", f"needs {need} bytes, {cap.free_memory} free")
    if cap.paused:
        return no("busy", "paused by its operator")
    if cap.busy:
        return no("busy", "executor queue is full")
    price = max(1, math.ceil(wl.flops(p) / 1e9 * cap.price_per_gflop))
    if price > rfb.max_price:
        return no("price", f"price {price} exceeds the maximum {rfb.max_price}")
    gflops = speed_for(dict(cap.speeds), backend) or cap.gflops
    estimate_ms = int(wl.flops(p) / max(gflops, 0.001) / 1e6) + OVERHEAD_MS
    if now + estimate_ms / 1000.0 > rfb.deadline_ms / 1000.0:
        return no("deadline", f"needs about {estimate_ms} ms; the deadline is too near")
    return Decision(True, price=price, estimate_ms=estimate_ms, backend=backend)
