"""The node's dashboard: one page over the control API's views, live, with pause/resume and the
sharing settings that change at run time.

It computes nothing of its own: every panel is a control view (:mod:`p2pnode.control.views`),
asked through the same ``handle`` the control socket uses, so the terminal and the page never
disagree. Its collaborators are that ``call``, a :class:`~p2pnode.web.live.LogRing` and the token;
:class:`~p2pnode.web.guard.Guard` stands before every route.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from p2pnode.errors import LocalError
from p2pnode.web.guard import Guard
from p2pnode.web.live import STATIC, LogRing, event_stream, page, read_body, to_json, verified_how

log = logging.getLogger("p2pnode.web")
Call = Callable[[dict[str, Any]], Awaitable[Any]]

# section -> (control request, every how many rounds of the event stream it is read)
SECTIONS: dict[str, tuple[dict[str, Any], int]] = {
    "status": ({"cmd": "status"}, 1),
    "gpus": ({"cmd": "gpus"}, 1),
    "jobs": ({"cmd": "jobs"}, 1),
    "sharing": ({"cmd": "sharing"}, 2),
    "peers": ({"cmd": "peers"}, 2),
    "market": ({"cmd": "market"}, 2),
    "credits": ({"cmd": "credits"}, 3),
    "history": ({"cmd": "credit_history"}, 3),
    "reputation": ({"cmd": "reputation"}, 3),
    "ledger": ({"cmd": "ledger", "last": 30}, 3),
}
COMMANDS = ("pause", "resume", "sharing")
JOBS_SHOWN = 100
JOB_FIELDS = ("job", "role", "workload", "peer", "state", "price", "started", "ended", "outcome", "checked",
              "purpose", "backend", "kernel_ms", "paid")


def jobs_panel(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs table: live ones and the latest past ones, each with its progress (the last
    fraction its events reported), without their params and event logs."""
    out = []
    for r in records[:JOBS_SHOWN]:
        row = {k: r.get(k) for k in JOB_FIELDS}
        fractions = [e["fraction"] for e in r.get("events", []) if isinstance(e.get("fraction"), (int, float))]
        done = r.get("state") in ("done", "failed", "rejected", "cancelled", "error") or bool(r.get("ended"))
        row["progress"] = 1.0 if done and r.get("state") == "done" else (fractions[-1] if fractions else 0.0)
        row["verified"] = verified_how(r)
        award = next((e for e in reversed(r.get("events", [])) if e.get("event") == "award"), None)
        if award is not None and not done:  # a live job's provider and price, as awarded
            row["peer"] = row["peer"] or award.get("provider", "")
            row["price"] = row["price"] or award.get("price", 0)
            row["state"] = "running" if row["state"] == "starting" else row["state"]
        out.append(row)
    return out


class Dashboard:
    def __init__(self, call: Call, logs: LogRing, token: str, *, public: bool = False) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        self.call, self.logs, self.token = call, logs, token
        routes = [
            Route("/", self.index),
            Route("/api/events", self.events),
            Route("/api/{section}", self.section),
            Route("/api/{command}", self.command, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        self.guard = Guard(Starlette(routes=routes), token=token, public=public)

    async def read(self, name: str) -> Any:
        request, _ = SECTIONS[name]
        value = await self.call(dict(request))
        if name == "market":  # without the ages that change every second: sent again only when an ad does
            return [{k: v for k, v in e.items() if k not in ("age_s", "expires_in_s")} for e in value]
        return jobs_panel(value) if name == "jobs" else value

    async def snapshot(self, rounds: int, log_seq: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (_, every) in SECTIONS.items():
            if rounds % every == 0:
                try:
                    out[name] = await self.read(name)
                except LocalError as exc:
                    out[name] = {"error": str(exc)}
        lines = self.logs.since(log_seq[0])
        if lines:
            log_seq[0] = lines[-1]["seq"]
        out["logs"] = lines
        return out

    # routes ---------------------------------------------------------------------------------
    async def index(self, request: Any) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(page("dashboard.html", self.token))

    async def section(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        name = request.path_params["section"]
        if name == "logs":
            return Response(to_json(list(self.logs.lines)), media_type="application/json")
        if name not in SECTIONS:
            return JSONResponse({"error": f"no such view {name!r}"}, status_code=404)
        try:
            return Response(to_json(await self.read(name)), media_type="application/json")
        except LocalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def events(self, request: Any) -> Any:
        from starlette.responses import StreamingResponse

        log_seq = [0]
        return StreamingResponse(event_stream(lambda rounds: self.snapshot(rounds, log_seq)),
                                 media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def command(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        name = request.path_params["command"]
        if name not in COMMANDS:
            return JSONResponse({"error": f"no such command {name!r}"}, status_code=404)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "a change is sent as application/json"}, status_code=415)
        try:
            body = json.loads(await read_body(request.receive) or b"{}")
        except ValueError as exc:
            return JSONResponse({"error": f"not a JSON object: {exc}"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "not a JSON object"}, status_code=400)
        req: dict[str, Any] = {"cmd": name}
        if name == "sharing":
            req["set"] = body
        try:
            result = await self.call(req)
        except LocalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        log.info("dashboard: %s%s", name, f" {to_json(body)}" if body else "")
        return Response(to_json(result), media_type="application/json")
