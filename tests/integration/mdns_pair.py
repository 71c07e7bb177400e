"""Two nodes with mDNS and no bootstrap peer find each other. Run inside a private network
namespace (see test_mdns.py): multicast must never leave the machine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.swarm import all_list_all, node_config, start_node  # noqa: E402


async def main() -> None:
    result = {"found": False}
    async with trio.open_nursery() as nursery:
        nodes = [await start_node(nursery, node_config(mdns=True)) for _ in range(2)]
        t0 = time.perf_counter()
        try:
            await nodes[0].node.wait_until(lambda: all_list_all(nodes), timeout=30)
            result = {"found": True, "seconds": round(time.perf_counter() - t0, 3),
                      "peers": [len(r.node.host.get_connected_peers()) for r in nodes]}
        except trio.TooSlowError:
            result["peers"] = [len(r.node.host.get_connected_peers()) for r in nodes]
        nursery.cancel_scope.cancel()
    print(json.dumps(result))


if __name__ == "__main__":
    trio.run(main)
