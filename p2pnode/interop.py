"""Entry point in the shape of libp2p/test-plans' transport-interop matrix.

``python -m p2pnode.interop`` with the matrix's environment variables:

============================  =========================================================
``transport``                 ``tcp`` (the only transport p2pnode offers)
``security``                  ``noise``
``muxer``                     ``yamux``
``is_dialer``                 ``true`` or ``false``
``ip``                        listener bind address (default ``0.0.0.0``)
``redis_addr``                ``host:port`` of the coordinating Redis (default ``redis:6379``)
``test_timeout_seconds``      default 180
============================  =========================================================

The listener ``RPUSH``es its multiaddr to the Redis list ``listenerAddr`` and waits; the dialer
``BLPOP``s it, connects, pings once and prints one JSON line on stdout,
``{"handshakePlusOneRTTMillis": float, "pingRTTMilllis": float}`` (the spelling is the matrix's).
Diagnostics go to stderr. The host is the node's own: Noise only, Yamux only, tuned dialing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import trio

from p2pnode.errors import LocalError
from p2pnode.identity import Identity
from p2pnode.net.host import build_host, parse_multiaddr

log = logging.getLogger("p2pnode.interop")
LIST_KEY = "listenerAddr"
SUPPORTED = {"transport": "tcp", "security": "noise", "muxer": "yamux"}


def _redis(addr: str) -> Any:
    try:
        import redis
    except ImportError as exc:
        raise LocalError("the interop entry point needs redis-py: pip install 'p2pnode[interop]'") from exc
    host, _, port = addr.rpartition(":")
    return redis.Redis(host=host or "redis", port=int(port or 6379), socket_connect_timeout=10)


def _pick_addr(addrs: list[Any], ip: str) -> str:
    texts = [str(a) for a in addrs]
    if ip not in ("0.0.0.0", "::"):
        return next((t for t in texts if f"/{ip}/" in t), texts[0])
    return next((t for t in texts if "/127.0.0.1/" not in t and "/::1/" not in t), texts[0])


async def listen(ip: str, red: Any, timeout: float) -> int:
    listen_on = [parse_multiaddr(f"/ip4/{ip}/tcp/0" if ":" not in ip else f"/ip6/{ip}/tcp/0")]
    host = build_host(Identity.generate(), listen_on)
    async with host.run(listen_on):
        addr = _pick_addr(host.get_addrs(), ip)
        await trio.to_thread.run_sync(red.rpush, LIST_KEY, addr)
        log.info("listening on %s", addr)
        await trio.sleep(timeout)
    log.error("timed out waiting for the dialer")
    return 1


async def dial(red: Any, timeout: float) -> int:
    from libp2p.host.ping import ID as PING
    from libp2p.host.ping import perform_ping_roundtrip
    from libp2p.peer.peerinfo import info_from_p2p_addr

    listen_on = [parse_multiaddr("/ip4/0.0.0.0/tcp/0")]
    host = build_host(Identity.generate(), listen_on)
    item = await trio.to_thread.run_sync(lambda: red.blpop([LIST_KEY], timeout=int(timeout)))
    if item is None:
        log.error("no listener address in Redis within %s s", timeout)
        return 1
    target = info_from_p2p_addr(parse_multiaddr(item[1].decode()))
    async with host.run(listen_on):
        with trio.fail_after(timeout):
            start = time.perf_counter()
            await host.connect(target)
            stream = await host.new_stream(target.peer_id, [PING])
            ping_start = time.perf_counter()
            await perform_ping_roundtrip(stream)
            end = time.perf_counter()
    print(json.dumps({
        "handshakePlusOneRTTMillis": (end - start) * 1000,
        "pingRTTMilllis": (end - ping_start) * 1000,
    }), flush=True)
    return 0


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    for key, want in SUPPORTED.items():
        if env.get(key, want) != want:
            print(f"unsupported {key} {env.get(key)!r}: p2pnode speaks {want}", file=sys.stderr)
            return 1
    if env.get("is_dialer") not in ("true", "false"):
        print("is_dialer must be true or false", file=sys.stderr)
        return 1
    timeout = float(env.get("test_timeout_seconds", "180"))
    try:
        red = _redis(env.get("redis_addr", "redis:6379"))
        if env["is_dialer"] == "true":
            return trio.run(dial, red, timeout)
        return trio.run(listen, env.get("ip", "0.0.0.0"), red, timeout)
    except LocalError as exc:
        print(f"p2pnode-interop: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the matrix reads the exit code; say what failed on stderr
        print(f"p2pnode-interop: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
