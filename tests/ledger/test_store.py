from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from p2pnode import cli
from p2pnode.errors import ChainError, LedgerError
from p2pnode.ledger.entry import decode_record, verify_chain
from p2pnode.ledger.store import FILE_NAME, Ledger, verify_file

SEED = bytes(range(32))
KEY = SigningKey(SEED)
ROOT = Path(__file__).resolve().parents[2]


def fill(path: Path, n: int) -> Ledger:
    ledger = Ledger.open(path, KEY)
    for i in range(n):
        ledger.append("penalty", {"code": f"test-{i}"}, peer=ledger.owner)
    return ledger


def test_entries_survive_reopening_and_the_chain_verifies(tmp_path: Path) -> None:
    with fill(tmp_path / FILE_NAME, 20) as ledger:
        head = ledger.head
    with Ledger.open(tmp_path / FILE_NAME, KEY) as ledger:
        assert ledger.count == 21 and ledger.head == head and ledger.repaired == 0
        report = ledger.verify()
        assert report.entries == 21 and report.kinds == {"genesis": 1, "penalty": 20}
        assert [e.data["code"] for e in ledger.entries(kind="penalty", limit=3)] == ["test-0", "test-1", "test-2"]


def test_the_database_refuses_updates_and_deletes(tmp_path: Path) -> None:
    fill(tmp_path / FILE_NAME, 3).close()
    conn = sqlite3.connect(tmp_path / FILE_NAME)
    for sql in ("UPDATE entries SET record = x'00' WHERE seq = 1", "DELETE FROM entries WHERE seq = 3"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
    conn.close()


def test_another_nodes_ledger_is_refused(tmp_path: Path) -> None:
    fill(tmp_path / FILE_NAME, 1).close()
    with pytest.raises(LedgerError, match="belongs to"):
        Ledger.open(tmp_path / FILE_NAME, SigningKey(bytes(32)))


def test_journal_is_wal_and_sync_is_full(tmp_path: Path) -> None:
    with fill(tmp_path / FILE_NAME, 1) as ledger:
        assert ledger._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def _corrupt_record(path: Path, seq: int, mutate) -> None:
    """Rewrite one record behind the ledger's back, as a lying disk would."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER entries_no_update")
    (record,) = conn.execute("SELECT record FROM entries WHERE seq = ?", (seq,)).fetchone()
    conn.execute("UPDATE entries SET record = ? WHERE seq = ?", (mutate(record), seq))
    conn.commit()
    conn.close()


def test_a_torn_tail_is_quarantined_at_open_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with fill(path, 10) as ledger:
        good_head = decode_record(next(ledger.entries(since=8, limit=1)).raw).hash
    _corrupt_record(path, 9, lambda r: r[: len(r) // 2])  # torn in the middle
    with Ledger.open(path, KEY) as ledger:
        assert ledger.repaired == 2  # entries 9 and 10 moved aside
        assert ledger.count == 9 and ledger.head == good_head
        ledger.append("penalty", {"code": "after repair"})
        assert ledger.verify().entries == 10
        assert ledger.verify().quarantined == 2


def test_a_flipped_byte_in_the_database_file_is_detected_by_verify(tmp_path: Path, capsys) -> None:
    path = tmp_path / FILE_NAME
    with fill(path, 30) as ledger:
        target = next(ledger.entries(since=17, limit=1)).raw
        ledger._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    at = data.find(target[40:80])
    assert at > 0
    data[at + 7] ^= 0x20
    path.write_bytes(bytes(data))
    code = cli.main(["ledger", "verify", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "entry 17" in err


@pytest.mark.parametrize("fmt", ["jsonl", "cbor"])
def test_exports_verify_elsewhere_and_tampering_is_caught(tmp_path: Path, fmt: str) -> None:
    with fill(tmp_path / FILE_NAME, 12) as ledger:
        buf = io.BytesIO()
        assert ledger.export(buf, fmt) == 13
        head = ledger.head.hex()
    out = tmp_path / f"export.{fmt}"
    out.write_bytes(buf.getvalue())
    report = verify_file(out)
    assert report.entries == 13 and report.head == head
    if fmt == "jsonl":
        lines = buf.getvalue().splitlines()
        del lines[5]
        out.write_bytes(b"\n".join(lines) + b"\n")
        with pytest.raises(ChainError, match="entry 4"):
            verify_file(out)
    else:
        data = bytearray(buf.getvalue())
        data[len(data) // 2] ^= 0xFF
        out.write_bytes(bytes(data))
        with pytest.raises(ChainError):
            verify_file(out)


def _kill_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / FILE_NAME
    acked: dict[int, str] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(rounds):
        child = subprocess.Popen([sys.executable, str(ROOT / "tests/ledger/appender.py"), str(path), SEED.hex()],
                                 stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout is not None
        opened = child.stdout.readline().split()
        assert opened[0] == "open" and int(opened[1]) >= len(acked) + 1, opened  # nothing acknowledged lost
        for _ in range(rng.randint(0, 40)):
            seq, digest = child.stdout.readline().split()
            acked[int(seq)] = digest
        child.send_signal(signal.SIGKILL)  # usually in the middle of the next append
        child.wait()
        child.stdout.close()
    with Ledger.open(path, KEY) as ledger:
        stored = {e.seq: e.hash.hex() for e in ledger.entries()}
        assert all(stored.get(seq) == digest for seq, digest in acked.items())
        verify_chain(ledger.records(), owner=ledger.owner)
        assert ledger.verify().entries == ledger.count >= len(acked) + 1


def test_acknowledged_entries_survive_sigkill_fifty_times(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, 50, seed=1)


@pytest.mark.slow
def test_acknowledged_entries_survive_sigkill_five_hundred_times(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, 500, seed=2)


def test_export_lines_are_readable_json(tmp_path: Path) -> None:
    with fill(tmp_path / FILE_NAME, 2) as ledger:
        buf = io.BytesIO()
        ledger.export(buf, "jsonl")
    header, *lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert header["count"] == 3
    assert [x["entry"]["kind"] for x in lines] == ["genesis", "penalty", "penalty"]


def test_ledger_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "d" / FILE_NAME
    fill(path, 3).close()
    files = [p for p in path.parent.iterdir() if p.name.startswith(FILE_NAME)]
    assert path in files and all(p.stat().st_mode & 0o777 == 0o600 for p in files), \
        {p.name: oct(p.stat().st_mode) for p in files}
    path.chmod(0o644)  # left readable by an older version: tightened at the next open
    Ledger.open(path, KEY).close()
    assert path.stat().st_mode & 0o777 == 0o600
