"""What the control API answers: views over a running node, and the commands that act on it.

This is a view of the whole node (``status`` summarises everything), so it reads the node it is
given; it imports nothing of ``p2pnode.node`` (the node hands itself in).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2pnode import __version__
from p2pnode.control import panels, work
from p2pnode.control.requests import number
from p2pnode.errors import ControlError
from p2pnode.ledger.store import FILE_NAME

MAX_WAIT_S = 300.0
FALLING = ("busy", "trainings")  # what ``wait`` waits on to fall to its count, not to reach it


class ControlViews:
    def __init__(self, node: Any) -> None:
        self.node = node
        self._history = panels.CreditHistory()

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
        """State, and why: ``errors`` (the node cannot work), ``problems`` (it works badly; each
        says how to fix it) and ``notes`` (what the operator chose, or worth knowing: never a
        problem). ``reasons`` lists errors and problems, as one line each."""
        node = self.node
        cfg = node.config
        problems: list[str] = []
        errors: list[str] = []
        notes: list[str] = []
        addrs = node.addrs()
        direct = node.direct_addrs()
        if not direct:
            errors.append("not listening on any address -- fix: check --listen")
        elif all(_loopback(a) for a in direct):
            notes.append("reachable from this machine only (loopback); to serve others, listen on 0.0.0.0 "
                         "or set --announce to an address they can dial")
        if not node.host.get_connected_peers() and not (cfg.bootstrap or cfg.network):
            problems.append("no peers, and no network to join -- fix: set network = \"FILE|NAME|DOMAIN\" (the "
                            "bootstrap list or domain a network's operators publish; --network), or bootstrap = "
                            "[\"MULTIADDR\"] of a running node" + ("" if cfg.mdns else ", or enable mDNS on a LAN"))
        elif not node.host.get_connected_peers():
            problems.append("no peers connected -- fix: add --bootstrap MULTIADDR of a running node, or "
                            "enable mDNS on a LAN")
        if node.keeper is not None:
            for addr, err in sorted(node.keeper.unreachable.items()):
                problems.append(f"bootstrap peer unreachable: {addr} ({err}) -- fix: check the address "
                                "and that the peer runs")
        if node.market.own_refused:
            errors.append(f"this node's own capacity ad is refused ({node.market.own_refused}): no one lists it "
                          "-- fix: check price, workloads and announce against what an ad carries (specs/capacity-ad.md)")
        hardware = node.resources.hardware
        if not cfg.provide:
            notes.append("not providing (--no-provide): this node only requests and checks")
        elif not cfg.use_gpu:
            notes.append("CPU only (--no-gpu)")
        elif hardware is not None and not hardware.gpus:
            why = "; ".join(hardware.problems) or "no GPU found"
            problems.append(f"no GPU: {why} -- fix: install the NVIDIA driver (nvidia-smi must work), or "
                            "run with --no-gpu to offer the CPU on purpose")
        elif hardware is not None:  # GPUs there, but not all the configuration names
            problems.extend(f"{p} -- fix: name GPUs that nvidia-smi -L lists in gpus" for p in hardware.problems)
        relaying = node.relaying
        _reach(node, problems, notes)
        if node.market.operator_paused:
            notes.append("paused: no new jobs, running ones finish (p2pnode resume)")
        if node.market.off_schedule:
            nxt = node.schedule.next_change(node.local_time())
            notes.append("outside its schedule: no new jobs" + (f" until {nxt:%a %H:%M}" if nxt else "")
                         + f" ({', '.join(cfg.schedule)})")
        banned = node.peers.banned()
        if banned:
            notes.append(f"{len(banned)} peer(s) banned for misbehaviour")
        skewed = node.market.rejected.get("future", 0)
        if skewed:
            problems.append(f"{skewed} ad(s) refused as issued in the future: this clock or theirs is off "
                            "-- fix: run NTP (timedatectl set-ntp true)")
        problems.extend(_disk_problems(cfg.data_dir))
        state = "error" if errors else "issues" if problems else "healthy"
        ledger = node.trust.ledger
        ex = node.executor
        return {
            "state": state,
            "reasons": errors + problems,
            "notes": notes,
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
            "paused": node.market.paused,
            "reachability": relaying.status() if relaying is not None else None,
            "upnp": node.upnp.status() if node.upnp is not None else None,
            "slots": ({"total": ex.slots, "per_device": ex.slots_per_device,
                       "devices": [{"gpu": d, "busy": n} for d, n in ex.busy.items()]} if ex is not None else None),
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
        if cmd in ("pause", "resume"):
            return await node.pause(cmd == "pause")
        if cmd == "credits":
            return node.trust.credits.to_json()
        if cmd == "credit_history":
            return self._history.update(node.trust.ledger)
        if cmd == "ledger":
            return panels.ledger_tail(node.trust.ledger, number(request, "last", 30, lo=0, hi=panels.MAX_LEDGER_TAIL,
                                                                integer=True))
        if cmd == "gpus":
            cfg = node.config
            return panels.gpus(node.resources.hardware, node.executor, cfg.workloads if cfg.provide else (),
                               cfg.price, node.market.paused)
        if cmd == "sharing":
            changes = request.get("set")
            if changes is None:
                return node.sharing()
            if not isinstance(changes, dict):
                raise ControlError('sharing takes {"set": {SETTING: VALUE, ...}}')
            from p2pnode.errors import ConfigError

            try:
                return await node.share(changes)
            except ConfigError as exc:
                raise ControlError(str(exc)) from None
        if cmd == "ui":
            return {"address": node.ui_address}
        if cmd == "metrics":
            return node.metrics.text()
        if cmd == "impair":  # scenario faults: a bad network from now on ("" ends it)
            from p2pnode.errors import ConfigError
            from p2pnode.net import impair

            spec = str(request.get("spec", ""))
            try:
                impair.set_current(impair.Impairment.parse(spec) if spec else None)
            except ConfigError as exc:
                raise ControlError(str(exc)) from None
            return {"impair": spec}
        if cmd == "wait":
            return await self._wait(request)
        if cmd == "submit" and request.get("model"):
            return await work.run_map(node.maps, node.model_prep, dict(request, providers=1), emit, single=True)
        if cmd == "submit":
            return await work.submit_job(node.jobs, request, emit)
        if cmd == "generate":
            return await work.run_generate(node.maps, request, emit)
        if cmd == "map":
            return await work.run_map(node.maps, node.model_prep, request, emit)
        if cmd == "train":
            return await work.run_train(node.trainer, request, emit)
        if cmd == "cancel":
            return await work.cancel([node.maps.runs, node.jobs.runs, node.trainer.runs], request)
        raise ControlError(f"unknown command {cmd!r}")

    async def _wait(self, request: dict[str, Any]) -> Any:
        """Block until ``peers``, ``market``, ``offers`` (ads with offers and addresses), ``relays``
        (relay slots held), ``public`` (1 once peers' dial-backs found this node reachable),
        ``direct`` (peers connected other than through a relay), ``shards`` (dataset shards
        saved since start) or ``rounds`` (training rounds checkpointed since start) reaches ``count``, or until ``busy`` (jobs running plus
        job and blob streams open) or ``trainings`` (training runs under way) falls to ``count`` (0:
        drained, e.g. before a restart, or every training stopped). Scripts and
        tests wait on the node instead of polling it."""
        node = self.node
        what = request.get("what")
        views: dict[str, Callable[[], int]] = {"peers": lambda: len(node.host.get_connected_peers()),
                 "market": lambda: len(node.table.entries(node.now())),
                 # ads one can act on: something offered, somewhere to dial
                 "offers": lambda: sum(1 for e in node.table.entries(node.now()) if e.ad.offers and e.ad.addrs),
                 "relays": lambda: len(node.relaying.circuit_addrs()) if node.relaying is not None else 0,
                 "public": lambda: int(node.relaying is not None and node.relaying.reachability == "public"),
                 "shards": lambda: node.maps.shards_saved,
                 "rounds": lambda: node.trainer.rounds_saved,
                 "direct": lambda: sum(1 for p in self.peers() if any("/p2p-circuit" not in a for a in p["addrs"])),
                 "busy": lambda: ((node.executor.running if node.executor is not None else 0)
                                  + node.jobs.limits.open() + node.blobs.limits.open()),
                 "trainings": lambda: len(node.trainer.runs.live)}
        if what not in views:
            raise ControlError('wait needs {"what": "peers"|"market"|"offers"|"relays"|"public"|"direct"|"shards"|'
                               '"rounds"|"busy"|"trainings", "count": N, "timeout_s": S}')
        count: int = number(request, "count", lo=0, hi=2**31, integer=True)
        timeout: float = number(request, "timeout_s", 30, lo=0, hi=MAX_WAIT_S)

        def reached() -> bool:
            value = views[what]()
            return value <= count if what in FALLING else value >= count

        try:
            await node.market.wait_until(reached, timeout=timeout)
        except trio.TooSlowError:
            raise ControlError(f"{what} did not reach {count} in {timeout:g} s") from None
        return {what: views[what]()}

DISK_FREE_MIN = 1 << 30  # below this free on the data dir's file system: a problem
LEDGER_MAX = 4 << 30  # a ledger file past this: a problem (export and start a new data dir)


def _loopback(addr: str) -> bool:
    return addr.startswith(("/ip4/127.", "/ip6/::1/"))


def _reach(node: Any, problems: list[str], notes: list[str]) -> None:
    """Whether others can reach this node: behind NAT, through relays, a router's forwarding."""
    relaying = node.relaying
    if relaying is None:
        return
    via = relaying.circuit_addrs()
    if relaying.reachability == "private" and not via:
        problems.append("behind NAT with no relay slot: no one outside can reach this node -- fix: set relays "
                        "to a public node's multiaddr, or forward the TCP port on your router and set "
                        "reachability = \"public\" (and announce your public address)")
    elif relaying.reachability == "private":
        notes.append(f"behind NAT: reachable through {len(via)} relay(s)")
    upnp = node.upnp
    if upnp is not None and upnp.state == "mapped":
        notes.append(f"the router forwards this node's port (UPnP): {', '.join(upnp.addrs())}")
    elif upnp is not None and relaying.reachability == "private" and upnp.state == "no_gateway":
        notes.append("no UPnP gateway: enable UPnP on your router, or forward the TCP port by hand")
    if relaying.serving:
        notes.append("publicly reachable: relaying for nodes behind NAT (bounded)")


def _disk_problems(data_dir: Path) -> list[str]:
    out: list[str] = []
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return out
    free = st.f_bavail * st.f_frsize
    if free < DISK_FREE_MIN:
        out.append(f"disk nearly full: {free / 2**20:.0f} MiB free for {data_dir} -- fix: free space; the "
                   "ledger and blobs need room")
    ledger = data_dir / FILE_NAME
    with contextlib.suppress(OSError):
        size = ledger.stat().st_size
        if size > LEDGER_MAX:
            out.append(f"ledger is {size / 2**30:.1f} GiB -- fix: `p2pnode ledger export`, then start afresh "
                       "with a new --data-dir")
    return out
