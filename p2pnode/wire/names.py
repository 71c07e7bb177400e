"""Every libp2p protocol id and gossip topic a node speaks, in one place (``specs/README.md``).

Each ends in its version; a change that old nodes cannot read gets a new name.
"""

from __future__ import annotations

JOB_PROTOCOL = "/p2pnode/job/1"  # specs/job-protocol.md
BLOB_PROTOCOL = "/p2pnode/blob/1"  # specs/blobs.md
MARKET_PROTOCOL = "/p2pnode/market/1"  # specs/capacity-ad.md#market-sync
CAPACITY_TOPIC = "p2pnode/capacity/1"  # specs/capacity-ad.md
REPORTS_TOPIC = "p2pnode/reports/1"  # specs/reputation.md
