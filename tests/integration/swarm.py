"""Helpers that start real nodes on loopback inside the test's trio run."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

from p2pnode.config import Config, load
from p2pnode.node import Node

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def node_config(data_dir: Path | None = None, **flags: Any) -> Config:
    """A loopback node's config, quick timings. The DHT is off unless asked for (``dht=True``), as in
    a swarm on one machine (:class:`p2pnode.swarm.launcher.Launcher`): every node is told of the others,
    and eleven nodes starting together spend about 13 CPU-seconds on lookups and provider records in
    their first 20 s, which slows whatever the test measures."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="p2pn-", dir="/tmp"))
    base: dict[str, Any] = dict(
        listen=[LOOPBACK], mdns=False, metrics="", ui="", ad_interval=2.0, ad_ttl=6.0,
        calibrate_seconds=0.02, heartbeat=0.5, calibrate_providers=False, dht=False,
    )
    base.update(flags)
    return load(data_dir, env={}, flags=base)


@dataclass
class Running:
    node: Node
    scope: trio.CancelScope
    stopped: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.scope.cancel()


async def _run(node: Node, scope: trio.CancelScope, stopped: trio.Event,
               task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await node.run(task_status=task_status)
    stopped.set()


async def start_node(nursery: trio.Nursery, config: Config, *, nvml: ModuleType | None = None) -> Running:
    node = Node(config, nvml=nvml)
    r = Running(node, trio.CancelScope())
    await nursery.start(_run, node, r.scope, r.stopped)
    return r


@asynccontextmanager
async def swarm(n: int, *, line: bool = True, **flags: Any) -> AsyncIterator[list[Running]]:
    """``n`` nodes; each bootstraps from its predecessor (a line) or from the first (a star)."""
    async with trio.open_nursery() as nursery:
        nodes: list[Running] = []
        for _ in range(n):
            boot: Sequence[str] = []
            if nodes:
                boot = [(nodes[-1] if line else nodes[0]).node.addrs()[0]]
            nodes.append(await start_node(nursery, node_config(bootstrap=list(boot), **flags)))
        yield nodes
        nursery.cancel_scope.cancel()


def all_list_all(nodes: Sequence[Running]) -> bool:
    ids = {r.node.identity.peer_id for r in nodes}
    return all({e.ad.peer_id for e in r.node.table.entries(r.node._clock())} >= ids for r in nodes)


async def wait_connected(node: Node, peer: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while peer not in node.host.get_network().connections:
            await trio.sleep(0.05)
