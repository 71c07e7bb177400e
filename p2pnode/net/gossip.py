"""GossipSub set up for capacity gossip.

Changes from py-libp2p 0.8.1's defaults, each measured (specs/libp2p.md):

* ``heartbeat_interval`` 120 s -> ``heartbeat`` (1 s): meshes form and repair in seconds;
* spam protection limits every forwarder to 10 messages/s per topic, *own publishes included*;
  a market of a few hundred providers publishing every 10 s would exceed that, so the limit is
  raised to 200/s and our own per-originator budget (the capacity table's token buckets) is what
  really bounds ad rates;
* all of /meshsub/1.2.0, 1.1.0 and 1.0.0 are offered so go, js and rust peers can join;
* two races in py-libp2p's ``Pubsub`` that stop a node are closed (``net/workarounds.py``);
* IDONTWANT only for messages of 1 KiB or more, as go-libp2p (``net/workarounds.py``).
"""

from __future__ import annotations

from typing import Any

GOSSIP_PROTOCOLS = ("/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0")
MAX_RPC_BYTES = 1 << 20


def build_pubsub(host: Any, *, heartbeat: float) -> tuple[Any, Any]:
    from libp2p.custom_types import TProtocol

    from p2pnode.net.workarounds import safe_pubsub_class, threshold_gossipsub_class

    router = threshold_gossipsub_class()(
        protocols=[TProtocol(p) for p in GOSSIP_PROTOCOLS],
        degree=6,
        degree_low=4,
        degree_high=12,
        time_to_live=60,
        gossip_window=3,
        gossip_history=5,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=heartbeat,  # a float works: it is slept on
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=200.0,
    )
    pubsub = safe_pubsub_class()(host, router, strict_signing=True, max_inbound_rpc_size=MAX_RPC_BYTES)
    return pubsub, router
