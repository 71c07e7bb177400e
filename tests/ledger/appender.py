"""A process that appends ledger entries as fast as it can and acknowledges each one on stdout
(``seq hash``) only after :meth:`Ledger.append` returned: what it printed must survive SIGKILL."""

from __future__ import annotations

import sys
from pathlib import Path

from nacl.signing import SigningKey

from p2pnode.ledger.store import Ledger


def main() -> None:
    path, seed = Path(sys.argv[1]), bytes.fromhex(sys.argv[2])
    ledger = Ledger.open(path, SigningKey(seed))
    print(f"open {ledger.count} {ledger.repaired}", flush=True)
    i = 0
    while True:
        i += 1
        e = ledger.append("credit", {"job": i.to_bytes(16, "big"), "amount": i, "pad": b"x" * (i % 3000)},
                          peer=ledger.owner)
        sys.stdout.write(f"{e.seq} {e.hash.hex()}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
