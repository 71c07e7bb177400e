"""How wire values look in JSON (the CLI's ``--json``, the control API, ledger exports' views)."""

from __future__ import annotations

from typing import Any

from p2pnode.errors import PeerError
from p2pnode.wire.peer_id import PEER_ID_LEN, public_key_from_peer_id, to_base58


def jsonable(value: Any) -> Any:
    """``value`` with bytes made readable: a peer id in base58, up to 64 bytes in hex, longer ones
    as ``"<n bytes>"``; maps, lists and tuples converted throughout."""
    if isinstance(value, bytes):
        if len(value) == PEER_ID_LEN:
            try:
                public_key_from_peer_id(value)
                return to_base58(value)
            except PeerError:
                pass
        return value.hex() if len(value) <= 64 else f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {(jsonable(k) if isinstance(k, bytes) else str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
