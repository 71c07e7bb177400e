"""Credits are a fold of the signed receipts in the ledger: given, received and balance per peer;
a forged, misdirected or replayed receipt earns nothing; reciprocity follows the balance."""

from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from p2pnode.ledger.credits import Credits
from p2pnode.ledger.entry import genesis, make_entry
from p2pnode.ledger.store import FILE_NAME, Ledger
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import peer_id_from_public_key, to_base58

KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 5)]
ME, A, B, C = (peer_id_from_public_key(bytes(k.verify_key)) for k in KEYS)


def receipt(job: int, signer: int, requester: bytes, provider: bytes, paid: int, accepted: bool = True) -> bytes:
    return m.make_receipt(bytes([job]) * 16, KEYS[signer], requester=requester, provider=provider,
                          nonce=b"n" * 16, accepted=accepted, outcome="ok", paid=paid).raw


def entry(role: str, peer: bytes, raw: bytes) -> dict:
    return {"role": role, "job": b"j" * 16, "receipt": raw, "workload": "matmul", "accepted": True, "paid": 0}


ITEMS = [
    ("provider", A, receipt(1, 1, A, ME, 300)),  # A paid us 300: we gave A compute
    ("provider", A, receipt(2, 1, A, ME, 200)),
    ("requester", A, receipt(3, 0, ME, A, 100)),  # we paid A 100: A gave us compute
    ("requester", B, receipt(4, 0, ME, B, 900)),
    ("requester", B, receipt(5, 0, ME, B, 50, accepted=False)),  # rejected: nothing paid
    # proves nothing:
    ("provider", A, receipt(1, 1, A, ME, 300)),  # replayed
    ("provider", C, receipt(6, 2, B, ME, 999)),  # signed by B's key, entered as from C
    ("provider", B, receipt(7, 3, C, ME, 999)),  # C's receipt, entered as from B
    ("provider", A, receipt(8, 1, A, C, 999)),  # A paid C, not us
    ("provider", A, b"\x00garbage"),
]


def fold() -> Credits:
    credits = Credits(ME)
    prev = genesis(KEYS[0], 0)
    for seq, (role, peer, raw) in enumerate(ITEMS, start=1):
        e = make_entry(KEYS[0], seq=seq, prev=prev.hash, t_ms=seq, kind="receipt", peer=peer,
                       data=entry(role, peer, raw))
        credits.apply(e)
        prev = e
    return credits


def test_balances_fold_from_receipts_and_bad_receipts_earn_nothing() -> None:
    c = fold()
    a, b = c.peers[A], c.peers[B]
    assert (a.given, a.received, a.balance, a.jobs_given, a.jobs_received) == (500, 100, 400, 2, 1)
    assert (b.given, b.received, b.balance, b.jobs_received) == (0, 900, -900, 2)
    assert C not in c.peers and c.refused == 5
    assert (c.earned, c.spent) == (500, 1000)
    view = c.to_json()
    assert view["total"] == {"given": 500, "received": 1000, "balance": -500}
    assert [r["peer"] for r in view["peers"]] == [to_base58(B), to_base58(A)]  # largest balance first


def test_reciprocity_favours_peers_that_gave_more_than_they_took() -> None:
    c = fold()
    assert c.discount(A, 0.2) == 0.0  # A took more than it gave
    assert c.discount(B, 0.2) == 0.2  # B only gave
    assert c.discount(C, 0.2) == 0.0 and c.discount(B, 0.0) == 0.0


def test_a_live_node_and_the_ledger_on_disk_agree(tmp_path: Path) -> None:
    from p2pnode.config import load
    from p2pnode.services.trust import offline_credits

    ledger = Ledger.open(tmp_path / FILE_NAME, KEYS[0])
    for role, peer, raw in ITEMS:
        ledger.append("receipt", entry(role, peer, raw), peer)
    ledger.close()
    assert offline_credits(load(tmp_path, env={})) == fold().to_json()


def test_the_credits_command_reads_the_ledger_of_a_stopped_node(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.integration.test_cli import ENV

    ledger = Ledger.open(tmp_path / FILE_NAME, KEYS[0])
    for role, peer, raw in ITEMS:
        ledger.append("receipt", entry(role, peer, raw), peer)
    ledger.close()
    out = subprocess.run([sys.executable, "-m", "p2pnode", "credits", "--json", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"]["balance"] == -500
    table = subprocess.run([sys.executable, "-m", "p2pnode", "credits", "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, env={**ENV, "COLUMNS": "100"}, timeout=60)
    assert table.returncode == 0 and "-500" in table.stdout and "proved nothing" in table.stdout
