"""What the control API answers: views over a running node, and the commands that act on it.

This is a view of the whole node (``status`` summarises everything), so it reads the node it is
given; it imports nothing of ``p2pnode.node`` (the node hands itself in).
"""

from __future__ import annotations

from typing import Any

import trio

from p2pnode import __version__
from p2pnode.errors import ControlError, unwrap_group


class ControlViews:
    def __init__(self, node: Any) -> None:
        self.node = node

    # views -------------------------------------------------------------------------------
    def peers(self) -> list[dict[str, Any]]:
        node = self.node
        now = node.now()
        out = []
        connections = node.host.get_network().connections
        for pid in node.host.get_connected_peers():
            addrs: list[str] = []
            conns = connections.get(pid)
            for conn in conns if isinstance(conns, list) else [conns] if conns else []:
                try:
                    addrs += [str(a) for a in conn.get_transport_addresses()]
                except Exception:  # noqa: BLE001 - a connection closing under us
                    pass
            out.append({
                "peer": pid.to_base58(),
                "addrs": addrs,
                "provider": pid.to_bytes() in node.table,
                "penalty": round(node.penalties.score(pid.to_bytes(), now), 2),
            })
        return sorted(out, key=lambda p: p["peer"])

    def status(self) -> dict[str, Any]:
        node = self.node
        problems: list[str] = []
        errors: list[str] = []
        addrs = node.addrs()
        if not addrs:
            errors.append("not listening on any address")
        if not node.host.get_connected_peers():
            problems.append("no peers connected")
        if node.keeper is not None:
            for addr, err in sorted(node.keeper.unreachable.items()):
                problems.append(f"bootstrap peer unreachable: {addr} ({err})")
        hardware = node.resources.hardware
        if hardware is not None and not hardware.gpus:
            problems.extend(hardware.problems or ("no GPU",))
        banned = node.peers.banned()
        if banned:
            problems.append(f"{len(banned)} peer(s) banned for misbehaviour")
        state = "error" if errors else "issues" if problems else "healthy"
        ledger = node.trust.ledger
        ex = node.executor
        return {
            "state": state,
            "reasons": errors + problems,
            "peer": node.peer_id,
            "version": __version__,
            "uptime_s": round(node.now() - node.started_at, 1),
            "addrs": addrs,
            "peers": len(node.host.get_connected_peers()),
            "market": len(node.table.entries(node.now())),
            "providing": node.config.provide,
            "ads_published": node.market.ads_published,
            "ads_rejected": dict(node.market.rejected),
            "gpus": [g.name for g in hardware.gpus] if hardware else [],
            "speed": node.resources.speed,
            "metrics": node.metrics.address,
            "data_dir": str(node.config.data_dir),
            "ledger": {"entries": ledger.count if ledger else 0, "repaired": ledger.repaired if ledger else 0},
            "checker": node.config.checker,
            "executor": ({"running": ex.running, "completed": ex.completed, "failed": dict(ex.failed)}
                         if ex is not None else None),
            "streams": {"job": node.jobs.limits.open(), "blob": node.blobs.limits.open()},
        }

    # commands ----------------------------------------------------------------------------
    async def handle(self, request: dict[str, Any], emit: Any = None) -> Any:
        node = self.node
        cmd = request["cmd"]
        if cmd == "id":
            return {"peer": node.peer_id, "addrs": node.addrs()}
        if cmd == "peers":
            return self.peers()
        if cmd == "market":
            return node.market.view()
        if cmd == "status":
            return self.status()
        if cmd == "jobs":
            return [r.to_json() for r in reversed(node.jobs.records)]
        if cmd == "reputation":
            return node.trust.table()
        if cmd == "wait":
            return await self._wait(request)
        if cmd == "submit":
            return await self._submit(request, emit)
        raise ControlError(f"unknown command {cmd!r}")

    async def _wait(self, request: dict[str, Any]) -> Any:
        """Block until ``peers`` or ``market`` reaches ``count`` (scripts and tests wait on the node's
        own change events instead of polling it)."""
        node = self.node
        what, count = request.get("what"), request.get("count")
        timeout = request.get("timeout_s", 30)
        views = {"peers": lambda: len(node.host.get_connected_peers()),
                 "market": lambda: len(node.table.entries(node.now()))}
        if what not in views or not isinstance(count, int) or not isinstance(timeout, (int, float)):
            raise ControlError('wait needs {"what": "peers"|"market", "count": N, "timeout": S}')
        try:
            await node.market.wait_until(lambda: views[what]() >= count, timeout=min(float(timeout), 300.0))
        except trio.TooSlowError:
            raise ControlError(f"{what} stayed below {count} for {timeout} s") from None
        return {what: views[what]()}

    async def _submit(self, request: dict[str, Any], emit: Any) -> Any:
        send, recv = trio.open_memory_channel[dict[str, Any]](256)

        async def forward() -> None:
            async for item in recv:
                await emit(item)

        try:
            params = dict(request.get("params") or {})
            inputs = _load_inputs(request.get("input_files") or {})
            args: dict[str, Any] = dict(max_price=int(request["max_price"]),
                                        deadline_s=float(request.get("deadline", 60)),
                                        k=int(request.get("k", 3)), backend=str(request.get("backend", "")),
                                        verify=str(request.get("verify", "auto")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(f"bad submit request: {exc}") from exc
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                try:
                    rec = await self.node.jobs.submit(str(request.get("workload")), params, inputs=inputs,
                                                      on_event=lambda e: _send_nowait(send, e), **args)
                finally:
                    send.close()
        except BaseExceptionGroup as group:
            raise unwrap_group(group) from None
        return rec.to_json()


def _send_nowait(send: trio.MemorySendChannel[dict[str, Any]], item: dict[str, Any]) -> None:
    try:
        send.send_nowait(item)
    except (trio.WouldBlock, trio.ClosedResourceError):
        pass  # a slow CLI misses a progress line, never the result


def _load_inputs(files: dict[str, str]) -> dict[str, Any] | None:
    """Input arrays named on the command line: .npy files (no pickles) readable by this node."""
    if not files:
        return None
    import numpy as np

    out = {}
    for name, path in files.items():
        try:
            out[str(name)] = np.load(str(path), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ControlError(f"input {name}: cannot read {path}: {exc}") from exc
    return out
