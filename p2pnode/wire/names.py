"""Every libp2p protocol id and gossip topic a node speaks, in one place (``specs/README.md``).

Each ends in its version; a change that old nodes cannot read gets a new name.
"""

from __future__ import annotations

JOB_PROTOCOL = "/p2pnode/job/1"  # specs/job-protocol.md
BLOB_PROTOCOL = "/p2pnode/blob/1"  # specs/blobs.md
MARKET_PROTOCOL = "/p2pnode/market/2"  # specs/capacity-ad.md#market-sync
CAPACITY_TOPIC = "p2pnode/capacity/2"  # specs/capacity-ad.md: paced ads, TTL up to 3 h
# version 1 (TTL up to 300 s, ads every interval whatever the market's size): still read and served
MARKET_PROTOCOL_V1 = "/p2pnode/market/1"
CAPACITY_TOPIC_V1 = "p2pnode/capacity/1"
REPORTS_TOPIC = "p2pnode/reports/1"  # specs/reputation.md
