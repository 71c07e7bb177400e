"""One page for a whole swarm (``p2pnode swarm up`` and ``swarm run``), as Petals' health monitor
shows every server of its swarm: each node's health and reachability, whether its market lists
every honest provider (converged), its jobs, each requester's reputation of each provider, the
cheaters caught, and the scenario's faults on a timeline.

A :class:`Collector` asks every node's control socket in turn (a few at once) and keeps the last
:func:`snapshot`; the page gets it over server-sent events. The swarm is described by a
:class:`Source` (the launcher's nodes, the run's events and clock), so the view knows nothing of
how the swarm was started. :class:`ViewThread` serves it from its own trio loop beside a launcher,
which is plain threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from p2pnode.control import aclient
from p2pnode.errors import LocalError
from p2pnode.scenario import CHEATER_KINDS
from p2pnode.web.guard import TOKEN_FILE, Guard, load_or_create_token
from p2pnode.web.live import STATIC, event_stream, page, to_json, verified_how

log = logging.getLogger("p2pnode.web.swarm")
NOT_LISTED = ("flood", "sybil", "poison", "requester")  # nodes no honest market has to list
MAX_JOBS_SHOWN = 40
MAX_EVENTS = 500
CONCURRENT_CALLS = 6


@dataclass
class SwarmNode:
    index: int
    role: str
    peer: str
    socket: Path
    addr: str = ""
    ui: str = ""  # its own dashboard's address (host:port), when it serves one


@dataclass
class Source:
    """The swarm to show: ``nodes()`` its nodes now, ``events()`` what happened (``{"t": seconds
    since the start, "event": name, ...}``), ``elapsed()`` the seconds since its start, and its
    planned ``duration`` (None: it runs until stopped)."""

    name: str
    nodes: Callable[[], list[SwarmNode]]
    events: Callable[[], list[dict[str, Any]]]
    elapsed: Callable[[], float]
    duration: float | None = None


@dataclass
class _Seen:
    up: bool | None = None


@dataclass
class Collector:
    source: Source
    interval: float = 1.0
    state: dict[str, Any] = field(default_factory=dict)
    noticed: list[dict[str, Any]] = field(default_factory=list)  # nodes seen going down or coming back
    _seen: dict[int, _Seen] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            self.state = await self.collect()
            await trio.sleep(max(self.interval, len(self.state.get("nodes", [])) / 10))

    async def collect(self) -> dict[str, Any]:
        nodes = self.source.nodes()
        answers: dict[int, dict[str, Any]] = {}
        limiter = trio.CapacityLimiter(CONCURRENT_CALLS)
        requesters = {n.index for n in nodes if n.role == "requester"} or {n.index for n in nodes}

        async def ask(n: SwarmNode) -> None:
            async with limiter:
                out: dict[str, Any] = {}
                try:
                    out["status"] = await aclient.call(n.socket, "status")
                    out["market"] = await aclient.call(n.socket, "market")
                    out["jobs"] = await aclient.call(n.socket, "jobs")
                    if n.index in requesters:
                        out["reputation"] = await aclient.call(n.socket, "reputation")
                except LocalError as exc:
                    out["error"] = str(exc)
                answers[n.index] = out

        async with trio.open_nursery() as nursery:
            for n in nodes:
                nursery.start_soon(ask, n)
        self._notice(nodes, answers)
        return snapshot(self.source, nodes, answers, requesters, self.noticed)

    def _notice(self, nodes: list[SwarmNode], answers: dict[int, dict[str, Any]]) -> None:
        t = round(self.source.elapsed(), 1)
        for n in nodes:
            up = "status" in answers[n.index]
            seen = self._seen.setdefault(n.index, _Seen())
            if seen.up is not None and seen.up != up:
                self.noticed.append({"t": t, "event": "seen up" if up else "seen down", "nodes": [n.index]})
                del self.noticed[:-MAX_EVENTS]
            seen.up = up


def snapshot(source: Source, nodes: list[SwarmNode], answers: dict[int, dict[str, Any]], requesters: set[int],
             noticed: list[dict[str, Any]]) -> dict[str, Any]:
    """What the page shows, from each node's answers (pure: the tests feed it answers)."""
    index_of = {n.peer: n.index for n in nodes}
    role_of = {n.index: n.role for n in nodes}
    live = [n for n in nodes if "status" in answers.get(n.index, {})]
    want = {n.peer for n in live if n.role not in NOT_LISTED and answers[n.index]["status"].get("providing")}
    rows = []
    for n in nodes:
        a = answers.get(n.index, {})
        s = a.get("status")
        listed = {e["peer"] for e in a.get("market", [])}
        jobs = a.get("jobs", [])
        by_state: dict[str, int] = {}
        for j in jobs:
            if j.get("purpose", "job") != "job":  # calibrations and checks are counted with their job
                continue
            key = f"{j.get('role')}:{j.get('state')}"
            by_state[key] = by_state.get(key, 0) + 1
        rows.append({
            "index": n.index, "role": n.role, "peer": n.peer, "addr": n.addr, "ui": _login(n), "up": s is not None,
            "error": a.get("error", ""), "state": s["state"] if s else "down", "reasons": (s or {}).get("reasons", [])[:4],
            "reachability": ((s or {}).get("reachability") or {}).get("reachability", ""),
            "peers": (s or {}).get("peers", 0), "market": len(listed), "missing": len(want - listed) if s else None,
            "paused": bool((s or {}).get("paused")), "jobs": by_state,
            "running": ((s or {}).get("executor") or {}).get("running", 0),
        })
    converged = bool(live) and all(r["missing"] == 0 for r in rows if r["up"] and r["role"] not in NOT_LISTED[:3])
    providers = [n.index for n in nodes if n.role != "requester"]
    scores: dict[str, dict[str, Any]] = {}
    matrix = {"requesters": sorted(requesters), "providers": providers, "scores": scores}
    distrusted_by: dict[int, list[int]] = {}
    for r in sorted(requesters):
        table = answers.get(r, {}).get("reputation") or []
        cells = {}
        for e in table:
            i = index_of.get(e.get("peer", ""))
            if i is None:
                continue
            cells[str(i)] = {"score": e.get("score"), "distrusted": bool(e.get("distrusted")), "cheats": e.get("cheats", 0)}
            if e.get("distrusted"):
                distrusted_by.setdefault(i, []).append(r)
        scores[str(r)] = cells
    cheaters = [n.index for n in nodes if n.role in CHEATER_KINDS]
    recent: list[dict[str, Any]] = []
    for n in nodes:
        for j in answers.get(n.index, {}).get("jobs", [])[:MAX_JOBS_SHOWN]:
            if j.get("role") == "requester" and j.get("purpose", "job") == "job":
                recent.append({"requester": n.index, "provider": index_of.get(j.get("peer", "")), "job": j.get("job", ""),
                               "workload": j.get("workload"), "state": j.get("state"), "started": j.get("started"),
                               "ended": j.get("ended"), "checked": verified_how(j), "price": j.get("price"),
                               "cheater": role_of.get(index_of.get(j.get("peer", ""), -1), "") in CHEATER_KINDS})
    recent.sort(key=lambda j: -(j["started"] or 0))
    events = sorted([*source.events(), *noticed], key=lambda e: e.get("t", 0))[-MAX_EVENTS:]
    return {
        "name": source.name, "elapsed": round(source.elapsed(), 1), "duration": source.duration,
        "nodes": rows, "up": len(live), "converged": converged, "reputation": matrix,
        "cheaters": {"nodes": cheaters, "caught": sorted(i for i in cheaters if i in distrusted_by),
                     "by": {str(i): distrusted_by.get(i, []) for i in cheaters}},
        "jobs": recent[:MAX_JOBS_SHOWN],
        "job_totals": _totals(rows),
        "events": events,
    }


def _login(n: SwarmNode) -> str:
    """The node's dashboard login address (its token, from its data dir: this page is guarded by
    the swarm's own token, and the swarm's nodes are the same user's)."""
    if not n.ui:
        return ""
    try:
        token = (n.socket.parent / TOKEN_FILE).read_text().strip()
    except OSError:
        return ""
    return f"http://{n.ui}/login?token={token}"


def _totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        for key, n in r["jobs"].items():
            role, _, state = key.partition(":")
            if role == "requester":
                out[state] = out.get(state, 0) + n
    return out


class SwarmApp:
    """The page and its stream, behind the guard."""

    def __init__(self, collector: Collector, token: str) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        self.collector, self.token = collector, token
        app = Starlette(routes=[Route("/", self.index), Route("/api/events", self.events),
                                Route("/api/swarm", self.swarm),
                                Mount("/static", StaticFiles(directory=STATIC), name="static")])
        self.guard = Guard(app, token=token)

    async def index(self, request: Any) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(page("swarm.html", self.token))

    async def swarm(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response(to_json(self.collector.state), media_type="application/json")

    async def events(self, request: Any) -> Any:
        from starlette.responses import StreamingResponse

        async def snap(rounds: int) -> dict[str, Any]:
            return {"swarm": self.collector.state} if self.collector.state else {}

        return StreamingResponse(event_stream(snap), media_type="text/event-stream")


async def serve(source: Source, folder: Path, listen: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Collect and serve until cancelled; ``task_status.started((address, token))``."""
    from p2pnode.web import server

    token = load_or_create_token(folder)
    sock = server.bind(listen, any_port_if_taken=True, what="the swarm view", flag="--ui")
    address = server.address_of(sock)
    collector = Collector(source)
    app = SwarmApp(collector, token)
    host, port = sock.getsockname()[:2]
    app.guard.bind(f"[{host}]" if ":" in host else host, port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run)
        await nursery.start(server.serve, app.guard, sock)
        task_status.started((address, token))


class ViewThread:
    """The swarm view in a thread of its own (its own trio loop), beside a launcher."""

    def __init__(self, source: Source, folder: Path, listen: str) -> None:
        self.source, self.folder, self.listen = source, folder, listen
        self.address = ""
        self.token = ""
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._trio_token: Any = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="swarm-view", daemon=True)

    @property
    def login(self) -> str:
        return f"http://{self.address}/login?token={self.token}"

    def start(self, timeout: float = 30.0) -> ViewThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise LocalError("the swarm view did not start in time")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        async def main() -> None:
            self._trio_token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self.address, self.token = await nursery.start(serve, self.source, self.folder, self.listen)
                    self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:
            from p2pnode.errors import unwrap_group

            self.error = unwrap_group(exc) if isinstance(exc, BaseExceptionGroup) else exc
            log.debug("swarm view stopped", exc_info=exc)
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self._scope is not None and self._trio_token is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._trio_token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout=5)


def launcher_source(name: str, launcher: Any, roles: dict[int, str], events: Callable[[], list[dict[str, Any]]],
                    elapsed: Callable[[], float], duration: float | None = None) -> Source:
    """The swarm of a :class:`~p2pnode.swarm.launcher.Launcher` (its nodes as they are now)."""

    def nodes() -> list[SwarmNode]:
        return [SwarmNode(n.index, roles.get(n.index, "provider"), n.peer, n.socket, n.addr, getattr(n, "ui", ""))
                for n in list(launcher.nodes.values())]

    return Source(name, nodes, events, elapsed, duration)
