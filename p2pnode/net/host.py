"""Build the libp2p host with safe settings.

py-libp2p's defaults are unsafe or slow for us (see specs/libp2p.md):

* security: without ``sec_opt`` it also accepts plaintext and secio. We offer **Noise only**, its
  sessions reading and writing in batches (:mod:`p2pnode.net.noise_session`);
* muxer: mplex can deadlock on full-duplex streams. We offer **Yamux only**, with larger frames
  and writers woken by window updates (:mod:`p2pnode.net.yamux_speed`);
* connect latency: with ``max_connections_per_peer=3`` every dial waits out a 250 ms
  happy-eyeballs delay; ``1`` brings a connect to ~11 ms;
* the connection manager's watermarks (50/100/200) make it redial every known peer every 30 s;
  we keep 4/8/192, and its auto-connector, which aims at the midpoint of the watermarks (100), is
  aimed at the low one (:data:`TARGET_CONNECTIONS`, see
  :func:`~p2pnode.net.workarounds.aim_auto_connector_at_low_watermark`);
* mDNS and bootstrap are not started by the library: :mod:`p2pnode.net.discovery` runs them, so
  that a lost bootstrap peer is redialed with backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import multiaddr

from p2pnode.errors import NetworkSetupError
from p2pnode.identity import Identity
from p2pnode.net import workarounds

NOISE = "/noise"
YAMUX = "/yamux/1.0.0"
MIN_CONNECTIONS = 4  # below this, the library's auto-connector looks for peers every 10 s (else 30 s)
TARGET_CONNECTIONS = 8  # the connections it dials towards (the low watermark)


def parse_multiaddr(text: str, *, need_peer_id: bool = False) -> multiaddr.Multiaddr:
    """Parse ``text`` or raise ``NetworkSetupError`` with one clear line."""
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:  # the multiaddr package raises several unrelated types
        raise NetworkSetupError(f"bad multiaddr {text!r}: {exc}") from exc
    protocols = [p.name for p in addr.protocols()]
    if need_peer_id and "p2p" not in protocols:
        raise NetworkSetupError(f"multiaddr {text!r} needs a /p2p/<peer-id> part")
    if "tcp" not in protocols:
        raise NetworkSetupError(f"multiaddr {text!r}: only TCP is supported")
    return addr


UNSPECIFIED = ("/ip4/0.0.0.0/", "/ip6/::/")


def advertised(listening: Sequence[str], announce: Sequence[str], peer_id: str) -> list[str]:
    """The addresses to tell others: ``announce`` when set (with ``/p2p/<id>`` added), else what the
    host listens on, wildcards expanded to this machine's interface addresses (loopback last). An
    unspecified address (0.0.0.0, ::) means nothing to a dialer and is never returned."""
    suffix = f"/p2p/{peer_id}"
    if announce:
        return [a if "/p2p/" in a else a + suffix for a in announce]
    from multiaddr.utils import get_network_addrs

    out: list[str] = []
    for addr in listening:
        base = addr.split("/p2p/")[0]
        for prefix, version, loopback in (("/ip4/0.0.0.0/", 4, "127.0.0.1"), ("/ip6/::/", 6, "::1")):
            if base.startswith(prefix):
                rest = base[len(prefix):]
                try:
                    ips = [ip for ip in get_network_addrs(version) or [] if ip != loopback]
                except Exception:  # noqa: BLE001 - interface enumeration is best effort
                    ips = []
                out += [f"/ip{version}/{ip}/{rest}{suffix}" for ip in [*ips, loopback]]
                break
        else:
            out.append(base + suffix)
    return list(dict.fromkeys(a for a in out if not a.startswith(UNSPECIFIED)))


def build_host(identity: Identity, listen: Sequence[multiaddr.Multiaddr]) -> Any:
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.network.config import ConnectionConfig, RetryConfig
    from libp2p.stream_muxer.yamux.yamux import Yamux

    from p2pnode.net.noise_session import buffered_noise_transport
    from p2pnode.net.yamux_speed import speed_up_yamux

    workarounds.batch_yamux_window_updates()
    speed_up_yamux()
    key_pair = identity.libp2p_keypair()
    noise = buffered_noise_transport(key_pair, new_x25519().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE: noise},  # type: ignore[dict-item]
        muxer_opt={YAMUX: Yamux},  # type: ignore[dict-item]
        listen_addrs=list(listen),
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            # The library's connection manager auto-dials known peers while below
            # min_connections/low_watermark (50/100 by default: "initiating 200 new dials" every
            # 30 s on a small network). A market node needs a handful of well-kept links.
            min_connections=MIN_CONNECTIONS,
            low_watermark=TARGET_CONNECTIONS,
            high_watermark=192,
            max_connections=256,
            dial_timeout=5.0,
            inbound_upgrade_timeout=5.0,
            outbound_upgrade_timeout=5.0,
        ),
        enable_mDNS=False,
        bootstrap=None,
        peerstore_opt=workarounds.bounded_peerstore(),
    )
    # One attempt per dial (the library makes four by default, 0.1 to 0.4 s apart): whoever dials
    # decides whether to try again (bootstrap peers are redialed with back-off, a job asks other
    # providers), and an address a stranger names in an ad costs its owner one connection per dial.
    host.get_network().retry_config = RetryConfig(max_retries=0)  # type: ignore[attr-defined]
    workarounds.aim_auto_connector_at_low_watermark(host)
    return host


async def first_peer(host: Any, settle_s: float) -> None:
    """Return ``settle_s`` after this host has its first connection (checked every ``settle_s``):
    by then identify has told it which protocols the peer speaks."""
    import trio

    while not host.get_connected_peers():
        await trio.sleep(settle_s)
    await trio.sleep(settle_s)
