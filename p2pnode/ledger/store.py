"""The ledger on disk: an append-only table of signed, hash-chained records in SQLite.

Durability choices (see ``specs/ledger.md``):

* **WAL journal, ``synchronous=FULL``.** :meth:`Ledger.append` returns only after its transaction
  is committed and the WAL is fsynced, so an entry the node acknowledged survives a killed process
  *and* a power cut. ``NORMAL`` would survive a killed process but may roll back the last commits on
  power loss; an acknowledged receipt must not vanish, so the fsync per entry (measured in
  ``tools/bench/run ledger``) is the price.
* **Append-only by construction**: triggers refuse ``UPDATE`` and ``DELETE`` on entries.
* **Torn writes**: SQLite checksums WAL frames and drops a torn tail on recovery. On top of that,
  :meth:`Ledger.open` re-verifies the chain from the last verified entry; a record that fails (a
  torn or garbled tail left by a lying disk) is moved, with everything after it, to ``quarantine``
  and the chain continues from the last good entry. Nothing is deleted without a copy.

Methods are synchronous and thread-safe; the node calls them through ``trio.to_thread``.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nacl.signing import SigningKey

from p2pnode.errors import ChainError, LedgerError
from p2pnode.ledger.entry import (
    MAX_RECORD,
    ChainVerifier,
    Entry,
    decode_record,
    genesis,
    make_entry,
)
from p2pnode.wire import codec
from p2pnode.wire.peer_id import from_base58, peer_id_from_public_key, to_base58

FILE_NAME = "ledger.sqlite"
SCHEMA_VERSION = 1
MAX_EXPORT_ENTRIES = 50_000_000
RECHECK_TAIL = 256  # entries re-verified at every open, whatever the watermark says

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER, record BLOB, reason TEXT, at REAL);
"""
_NO_UPDATE = """CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
  BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;"""
_NO_DELETE = """CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
  BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;"""
_GUARDS = _NO_UPDATE + "\n" + _NO_DELETE


def _private_files(path: Path) -> None:
    """The ledger is this node's private record (who it dealt with, what it paid): mode 0600, like
    the key. The database file is created 0600 before SQLite opens it; SQLite gives its ``-wal`` and
    ``-shm`` files the database's mode. Files left readable by an older version are tightened."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class VerifyReport:
    owner: str
    entries: int
    head: str
    kinds: dict[str, int]
    quarantined: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Ledger:
    """One node's ledger. Use :meth:`open`; close with :meth:`close` (or ``with``)."""

    def __init__(self, conn: sqlite3.Connection, key: SigningKey | None, path: Path,
                 clock: Callable[[], float], owner: bytes = b"") -> None:
        self._conn = conn
        self._key = key
        self.path = path
        self.owner = peer_id_from_public_key(bytes(key.verify_key)) if key is not None else owner
        self._clock = clock
        self._lock = threading.Lock()
        self.repaired = 0  # records quarantined at open
        self._seq, self._head, self._last_t = -1, b"", 0
        self.listeners: list[Callable[[Entry], None]] = []

    # opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, key: SigningKey, *, clock: Callable[[], float] = time.time) -> Ledger:
        """Open (creating with a genesis entry when new), verify the unverified tail, repair."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _private_files(path)
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA + _GUARDS)
        except sqlite3.Error as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {exc}") from exc
        ledger = cls(conn, key, path, clock)
        try:
            ledger._start()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{path}: the ledger database is damaged ({exc}); "
                              "run `p2pnode ledger verify` and restore from an export") from exc
        except BaseException:
            conn.close()
            raise
        return ledger

    @classmethod
    def inspect(cls, path: Path) -> Ledger:
        """Open an existing ledger to read and verify it, without the owner's key: nothing is written
        or repaired (``p2pnode ledger verify|show|export``, also while the node runs)."""
        path = Path(path)
        if not path.exists():
            raise LedgerError(f"{path}: no ledger here")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
            row = conn.execute("SELECT v FROM meta WHERE k = 'owner'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: not a readable ledger: {exc}") from exc
        if row is None:
            conn.close()
            raise LedgerError(f"{path}: not a p2pnode ledger (no owner)")
        ledger = cls(conn, None, path, time.time, owner=row[0])
        last = conn.execute("SELECT MAX(seq), (SELECT hash FROM entries ORDER BY seq DESC LIMIT 1) FROM entries").fetchone()
        ledger._seq, ledger._head = (last[0] if last[0] is not None else -1), (last[1] or b"")
        return ledger

    def _start(self) -> None:
        owner = self._meta("owner")
        if owner is None:
            with self._tx():
                if self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]:
                    raise LedgerError(f"{self.path}: entries without an owner: not a p2pnode ledger")
                assert self._key is not None
                g = genesis(self._key, self._now_ms())
                self._conn.execute("INSERT INTO meta VALUES ('owner', ?), ('schema', ?)",
                                   (self.owner, SCHEMA_VERSION))
                self._conn.execute("INSERT INTO entries VALUES (0, ?, ?)", (g.hash, g.raw))
                self._set_meta("verified_seq", 0)
            self._seq, self._head, self._last_t = 0, g.hash, g.t_ms
            return
        if owner != self.owner:
            raise LedgerError(f"{self.path}: this ledger belongs to {to_base58(owner)}, "
                              f"not to this node ({to_base58(self.owner)})")
        self._recover()

    def _recover(self) -> None:
        """Verify from the last verified entry (and at least the last ``RECHECK_TAIL`` entries) to
        the end; quarantine a bad tail."""
        last = self._conn.execute("SELECT MAX(seq) FROM entries").fetchone()[0] or 0
        start = max(0, min(int(self._meta("verified_seq") or 0), last - RECHECK_TAIL))
        v = ChainVerifier(self.owner)
        if start > 0:  # resume the verifier at the last verified entry
            row = self._conn.execute("SELECT record FROM entries WHERE seq = ?", (start,)).fetchone()
            if row is None:
                start = 0
            else:
                e = decode_record(row[0])
                v.count, v.head, v.last_t = e.seq + 1, e.hash, e.t_ms
        bad: tuple[int, str] | None = None
        cursor = self._conn.execute("SELECT seq, record FROM entries WHERE seq >= ? ORDER BY seq",
                                    (start + 1 if start > 0 else 0,))
        for seq, record in cursor:
            try:
                if seq != v.count:
                    raise ChainError(f"missing entry {v.count}", seq=v.count)
                v.feed(record)
            except ChainError as exc:
                bad = (seq, str(exc))
                break
        cursor.close()
        if bad is not None:
            self._quarantine_from(bad[0], bad[1])
        if v.count == 0:
            raise LedgerError(f"{self.path}: the genesis entry is damaged; the ledger cannot be trusted")
        self._seq, self._head, self._last_t = v.count - 1, v.head, v.last_t
        with self._tx():
            self._set_meta("verified_seq", self._seq)

    def _quarantine_from(self, seq: int, reason: str) -> None:
        with self._tx():
            rows = self._conn.execute("SELECT seq, record FROM entries WHERE seq >= ?", (seq,)).fetchall()
            self._conn.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?)",
                                   [(s, r, reason, self._clock()) for s, r in rows])
            self._conn.execute("DROP TRIGGER entries_no_delete")
            self._conn.execute("DELETE FROM entries WHERE seq >= ?", (seq,))
            self._conn.execute(_NO_DELETE)
        self.repaired += len(rows)

    # writing ------------------------------------------------------------------------------
    def append(self, kind: str, data: Mapping[str, Any], peer: bytes = b"") -> Entry:
        """Sign, chain and durably store an entry. When this returns, the entry is on disk."""
        return self.append_many([(kind, data, peer)])[0]

    def append_many(self, items: Sequence[tuple[str, Mapping[str, Any], bytes]]) -> list[Entry]:
        """Sign and chain each of ``items`` (kind, data, peer) and store them in one transaction:
        one fsync for all (group commit). When this returns, every one is on disk; if it raises,
        none is."""
        if self._key is None:
            raise LedgerError(f"{self.path}: opened read-only")
        with self._lock:
            seq, head, last_t = self._seq, self._head, self._last_t
            entries = []
            for kind, data, peer in items:
                t = max(self._now_ms(), last_t)
                entry = make_entry(self._key, seq=seq + 1, prev=head, t_ms=t, kind=kind, peer=peer, data=data)
                entries.append(entry)
                seq, head, last_t = entry.seq, entry.hash, entry.t_ms
            try:
                with self._tx():
                    self._conn.executemany("INSERT INTO entries VALUES (?, ?, ?)",
                                           [(e.seq, e.hash, e.raw) for e in entries])
            except sqlite3.Error as exc:
                raise LedgerError(f"{self.path}: cannot append: {exc}") from exc
            self._seq, self._head, self._last_t = seq, head, last_t
        for entry in entries:
            for listener in self.listeners:
                listener(entry)
        return entries

    # reading ------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._seq + 1

    @property
    def head(self) -> bytes:
        return self._head

    def entries(self, *, since: int = 0, kind: str | None = None, peer: bytes | None = None,
                limit: int | None = None) -> Iterator[Entry]:
        n = 0
        for (record,) in self._iter("SELECT record FROM entries WHERE seq >= ? ORDER BY seq", [since]):
            e = decode_record(record)
            if (kind is None or e.kind == kind) and (peer is None or e.peer == peer):
                yield e
                n += 1
                if limit is not None and n >= limit:
                    return

    def _iter(self, sql: str, args: list[Any]) -> Iterator[tuple[bytes]]:
        cursor = self._conn.execute(sql, args)
        try:
            while rows := cursor.fetchmany(512):
                yield from rows
        finally:
            cursor.close()

    def records(self) -> Iterator[bytes]:
        for (record,) in self._iter("SELECT record FROM entries ORDER BY seq", []):
            yield record

    def verify(self) -> VerifyReport:
        """Check the database's integrity, then the whole chain and every signature."""
        try:
            problems = [r[0] for r in self._conn.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise ChainError(f"database damaged: {exc}") from exc
        if problems != ["ok"]:
            raise ChainError("database damaged: " + "; ".join(problems[:5]))
        kinds: dict[str, int] = {}
        v = ChainVerifier(self.owner)
        try:
            for record in self.records():
                e = v.feed(record)
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
        except sqlite3.DatabaseError as exc:
            raise ChainError(f"database damaged: {exc}", seq=v.count) from exc
        if v.count == 0:
            raise ChainError("empty ledger: no genesis entry")
        quarantined = self._conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        return VerifyReport(to_base58(self.owner), v.count, v.head.hex(), kinds, quarantined)

    # export -------------------------------------------------------------------------------
    def export(self, out: BinaryIO, fmt: str) -> int:
        """Write the ledger as JSON lines (``jsonl``) or a CBOR sequence (``cbor``); returns entries."""
        header = {"ledger": SCHEMA_VERSION, "owner": to_base58(self.owner), "count": self.count,
                  "head": self._head.hex()}
        n = 0
        if fmt == "jsonl":
            out.write(json.dumps(header, sort_keys=True).encode() + b"\n")
            for record in self.records():
                e = decode_record(record)
                line = {"seq": e.seq, "record": base64.b64encode(record).decode(), "entry": e.to_json()}
                out.write(json.dumps(line, sort_keys=True).encode() + b"\n")
                n += 1
        elif fmt == "cbor":
            out.write(codec.encode(codec.encode({**header, "owner": self.owner})))
            for record in self.records():
                out.write(codec.encode(record))
                n += 1
        else:
            raise LedgerError(f"unknown export format {fmt!r} (jsonl or cbor)")
        return n

    # internals ----------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _meta(self, k: str) -> Any:
        row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, k: str, v: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn)

    def close(self) -> None:
        with self._lock:
            if self._key is None:
                self._conn.close()
                return
            try:
                with self._tx():
                    self._set_meta("verified_seq", self._seq)
            except sqlite3.Error:
                pass
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


# another node's export -------------------------------------------------------------------

def verify_file(path: Path) -> VerifyReport:
    """Verify an export (JSON lines or CBOR, told apart by the first byte) from any node.

    Everything in the file is untrusted: sizes and counts are bounded and any defect raises
    :class:`ChainError` naming the first bad entry.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read: {exc}") from exc
    with f:
        first = f.read(1)
        f.seek(0)
        records = _jsonl_records(f) if first == b"{" else _cbor_records(f)
        header = next(records)[0]
        owner = header.get("owner")
        if not isinstance(owner, bytes):
            raise ChainError("export header names no owner")
        kinds: dict[str, int] = {}
        v = ChainVerifier(owner)
        for record, readable in records:
            if v.count >= MAX_EXPORT_ENTRIES:
                raise ChainError("too many entries")
            e = v.feed(record)
            if readable is not None:
                _check_readable(e, readable)
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        if v.count == 0:
            raise ChainError("the export holds no entries")
        if header.get("count") not in (None, v.count):
            raise ChainError(f"the header promises {header.get('count')} entries, the file holds {v.count}")
        return VerifyReport(to_base58(owner), v.count, v.head.hex(), kinds)


_MAX_LINE = MAX_RECORD * 2 + 4096


def _check_readable(entry: Entry, readable: Any) -> None:
    """A JSON line's readable fields (``seq``, ``entry``) must say what its signed record says: a
    reader who trusts the readable part must not be told another story than the signature covers."""
    signed = {"seq": entry.seq, "entry": entry.to_json()}
    for name, value in readable.items():
        where = _first_difference(value, signed[name], name)
        if where is not None:
            path, said, truth = where
            raise ChainError(f"the readable field {path} says {_short(said)}, the signed record says {_short(truth)}",
                             seq=entry.seq)


def _first_difference(said: Any, truth: Any, path: str) -> tuple[str, Any, Any] | None:
    """(path, said, truth) of the first place ``said`` differs from ``truth``, or None."""
    if isinstance(said, dict) and isinstance(truth, dict):
        for key in sorted(set(said) | set(truth), key=str):
            if key not in said or key not in truth:
                return (f"{path}.{key}", said.get(key, _MISSING), truth.get(key, _MISSING))
            found = _first_difference(said[key], truth[key], f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(said, list) and isinstance(truth, list) and len(said) == len(truth):
        for i, (a, b) in enumerate(zip(said, truth, strict=True)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    same = said == truth and type(said) is type(truth)  # 1 is not true, nor 1.0
    return None if same else (path, said, truth)


_MISSING = object()


def _short(value: Any) -> str:
    text = "nothing" if value is _MISSING else json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonl_records(f: BinaryIO) -> Iterator[tuple[Any, dict[str, Any] | None]]:
    """(header, None), then (record, its readable fields) for each line."""
    first = True
    for n, line in enumerate(iter(lambda: f.readline(_MAX_LINE + 1), b"")):
        if len(line) > _MAX_LINE:
            raise ChainError(f"line {n + 1} is too long")
        try:
            obj = json.loads(line)
            if first:
                first = False
                yield {"owner": from_base58(obj["owner"]), "count": obj.get("count")}, None
                continue
            record = base64.b64decode(obj["record"], validate=True)
            readable = {k: obj[k] for k in ("seq", "entry") if k in obj}
            yield record, readable
        except ChainError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything unreadable in a foreign file
            raise ChainError(f"line {n + 1}: not a ledger export line ({type(exc).__name__})") from exc
    if first:
        raise ChainError("empty export")


def _cbor_records(f: BinaryIO) -> Iterator[tuple[Any, None]]:
    """A CBOR sequence of byte strings: the encoded header map, then the records."""
    first = True
    while True:
        item = _read_bstr(f)
        if item is None:
            break
        if first:
            first = False
            header = codec.decode(item, max_size=4096)
            if not isinstance(header, dict):
                raise ChainError("export header is not a map")
            yield header, None
        else:
            yield item, None
    if first:
        raise ChainError("empty export")


def _read_bstr(f: BinaryIO) -> bytes | None:
    head = f.read(1)
    if not head:
        return None
    major, info = head[0] >> 5, head[0] & 0x1F
    if major != 2 or info > 27:
        raise ChainError("export: expected a CBOR byte string")
    if info < 24:
        length = info
    else:
        width = 1 << (info - 24)
        raw = f.read(width)
        if len(raw) != width:
            raise ChainError("export: truncated length")
        length = int.from_bytes(raw, "big")
    if length > MAX_RECORD:
        raise ChainError(f"export: a {length}-byte item exceeds the record limit")
    data = f.read(length)
    if len(data) != length:
        raise ChainError("export: truncated record")
    return data
