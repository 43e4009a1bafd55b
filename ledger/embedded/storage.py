"""One SQLite file (WAL) holding world state, per-key history, a hash-chained block log and events.

Tables::

    meta    (name, value)                                   format marker, channel
    blocks  (number, hash, body)                            body = canonical JSON of the block
    txs     (tx_id, block, idx)                             index: transaction → block
    state   (key, value, block, tx_id)                      world state with its version
    history (seq, key, block, tx_id, timestamp_ms, value, is_delete)
    events  (seq, block, tx_id, name, payload)

A block body is ``{"number", "prev_hash", "timestamp_ms", "transactions": [{"args",
"creator_cert", "creator_cert_sha256", "creator_msp", "event", "function", "tx_id", "writes"}]}``; its hash
is SHA-256 over those canonical bytes, and ``prev_hash`` links it to the block before.
Block 0 is a genesis block with no transactions. Each write set lists every key written
with its full value, so state, history and events can be rebuilt (and checked) from the
blocks alone. Keys are stored as UTF-8 BLOBs so ranges compare bytes, like LevelDB.

All access goes through :meth:`Store.read` (a snapshot) or :meth:`Store.write` (``BEGIN
IMMEDIATE``: one writer across threads *and* processes); both hold the store's lock, so
one connection is shared safely by every thread of a process.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.formats import canonical_json

__all__ = ["FORMAT", "GENESIS_PREV", "Head", "Reader", "Writer", "Store", "block_hash", "display_key"]

FORMAT = "fedledger-embedded/1"
GENESIS_PREV = "0" * 64
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, hash TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS txs (tx_id TEXT PRIMARY KEY, block INTEGER NOT NULL, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, block INTEGER NOT NULL, tx_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key BLOB NOT NULL, block INTEGER NOT NULL,
    tx_id TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, value BLOB, is_delete INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS history_by_key ON history (key, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, block INTEGER NOT NULL, tx_id TEXT NOT NULL,
    name TEXT NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_block ON events (block, seq);
"""


def block_hash(body: dict[str, Any]) -> str:
    """SHA-256 hex of a block body's canonical JSON."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


def display_key(key: str) -> str:
    """A composite key written ``kind~attr~attr`` (for problem reports and logs)."""
    if key.startswith("\x00"):
        return "~".join(key[1:].split("\x00")[:-1])
    return key


@dataclass(frozen=True)
class Head:
    """The newest block."""

    number: int
    hash: str
    timestamp_ms: int


class Reader:
    """Read access inside one SQLite transaction (a consistent snapshot)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # --- world state (the contract's StateReader) --------------------------------------
    def get(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key.encode("utf-8"),)).fetchone()
        return None if row is None else bytes(row[0])

    def range(self, start: str, end: str) -> list[tuple[str, bytes]]:
        sql, params = "SELECT key, value FROM state WHERE key >= ?", [start.encode("utf-8")]
        if end:
            sql += " AND key < ?"
            params.append(end.encode("utf-8"))
        rows = self._conn.execute(sql + " ORDER BY key", params).fetchall()
        return [(bytes(k).decode("utf-8"), bytes(v)) for k, v in rows]

    def history(self, key: str) -> list[tuple[str, int, bytes, bool]]:
        rows = self._conn.execute(
            "SELECT tx_id, timestamp_ms, value, is_delete FROM history WHERE key = ? ORDER BY seq DESC",
            (key.encode("utf-8"),),
        ).fetchall()
        return [(tx, ms, bytes(v or b""), bool(d)) for tx, ms, v, d in rows]

    # --- block log ---------------------------------------------------------------------
    def head(self) -> Head:
        row = self._conn.execute("SELECT number, hash, body FROM blocks ORDER BY number DESC LIMIT 1").fetchone()
        if row is None:
            return Head(-1, GENESIS_PREV, 0)
        return Head(row[0], row[1], json.loads(row[2])["timestamp_ms"])

    def block_rows(self, start: int = 0) -> Iterator[tuple[int, str, str]]:
        """``(number, hash, body text)`` of every block from ``start``, in order."""
        yield from self._conn.execute(
            "SELECT number, hash, body FROM blocks WHERE number >= ? ORDER BY number", (start,)
        )

    def block_row(self, number: int) -> tuple[int, str, str] | None:
        return self._conn.execute("SELECT number, hash, body FROM blocks WHERE number = ?", (number,)).fetchone()

    def tx_location(self, tx_id: str) -> tuple[int, int] | None:
        return self._conn.execute("SELECT block, idx FROM txs WHERE tx_id = ?", (tx_id,)).fetchone()

    def event_rows(self, since_block: int) -> list[tuple[int, str, str, bytes]]:
        return self._conn.execute(
            "SELECT block, tx_id, name, payload FROM events WHERE block >= ? ORDER BY seq", (since_block,)
        ).fetchall()

    # --- raw tables (for verification) -------------------------------------------------
    def all_state(self) -> list[tuple[str, bytes, int, str]]:
        rows = self._conn.execute("SELECT key, value, block, tx_id FROM state ORDER BY key").fetchall()
        return [(bytes(k).decode("utf-8", "replace"), bytes(v), b, t) for k, v, b, t in rows]

    def all_history(self) -> list[tuple[str, int, str, int, bytes | None, bool]]:
        rows = self._conn.execute(
            "SELECT key, block, tx_id, timestamp_ms, value, is_delete FROM history ORDER BY seq"
        ).fetchall()
        return [
            (bytes(k).decode("utf-8", "replace"), b, t, ms, None if v is None else bytes(v), bool(d))
            for k, b, t, ms, v, d in rows
        ]

    def all_txs(self) -> list[tuple[str, int, int]]:
        return self._conn.execute("SELECT tx_id, block, idx FROM txs ORDER BY block, idx").fetchall()

    def all_events(self) -> list[tuple[int, str, str, bytes]]:
        rows = self._conn.execute("SELECT block, tx_id, name, payload FROM events ORDER BY seq").fetchall()
        return [(b, t, n, bytes(p)) for b, t, n, p in rows]


class Writer(Reader):
    """A :class:`Reader` that can also append a block (inside ``BEGIN IMMEDIATE``)."""

    def append_block(self, timestamp_ms: int, transactions: list[dict[str, Any]]) -> tuple[int, str]:
        """Append one block holding ``transactions`` and apply their write sets and events."""
        head = self.head()
        number = head.number + 1
        body = {
            "number": number,
            "prev_hash": head.hash,
            "timestamp_ms": timestamp_ms,
            "transactions": transactions,
        }
        digest = block_hash(body)
        self._conn.execute(
            "INSERT INTO blocks (number, hash, body) VALUES (?, ?, ?)",
            (number, digest, canonical_json(body).decode("utf-8")),
        )
        for idx, tx in enumerate(transactions):
            self._apply(number, idx, timestamp_ms, tx)
        return number, digest

    def _apply(self, number: int, idx: int, timestamp_ms: int, tx: dict[str, Any]) -> None:
        tx_id = tx["tx_id"]
        self._conn.execute("INSERT INTO txs (tx_id, block, idx) VALUES (?, ?, ?)", (tx_id, number, idx))
        for write in tx["writes"]:
            key = write["key"].encode("utf-8")
            value = None if write["is_delete"] else write["value"].encode("utf-8")
            if value is None:
                self._conn.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                self._conn.execute(
                    "INSERT OR REPLACE INTO state (key, value, block, tx_id) VALUES (?, ?, ?, ?)",
                    (key, value, number, tx_id),
                )
            self._conn.execute(
                "INSERT INTO history (key, block, tx_id, timestamp_ms, value, is_delete) VALUES (?, ?, ?, ?, ?, ?)",
                (key, number, tx_id, timestamp_ms, value, int(write["is_delete"])),
            )
        if tx["event"] is not None:
            self._conn.execute(
                "INSERT INTO events (block, tx_id, name, payload) VALUES (?, ?, ?, ?)",
                (number, tx_id, tx["event"]["name"], tx["event"]["payload"].encode("utf-8")),
            )


class Store:
    """The SQLite file, its one connection, and the lock every access takes."""

    def __init__(self, path: Path, genesis_ms: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._refs = 1
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        # A committed write must survive a power cut: sync the WAL on every commit.
        self._conn.execute("PRAGMA synchronous = FULL")
        with self.write() as w:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._conn.execute(statement)
            found = self._conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if found is None:
                self._conn.execute("INSERT INTO meta (name, value) VALUES ('format', ?)", (FORMAT,))
            elif found[0] != FORMAT:
                raise sqlite3.DatabaseError(f"{self.path} holds {found[0]!r}, not {FORMAT!r}")
            if w.head().number < 0:
                w.append_block(genesis_ms, [])

    @property
    def closed(self) -> bool:
        return self._conn is None

    def retain(self) -> Store:
        """Count one more user of this store (a ledger view)."""
        with self._lock:
            self._refs += 1
            return self

    def release(self) -> None:
        """Drop one user; the connection closes with the last."""
        with self._lock:
            self._refs -= 1
            if self._refs == 0 and self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the embedded ledger is closed")
        return self._conn

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """A consistent snapshot for the duration of the block."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield Reader(conn)
            finally:
                conn.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """The single writer: commits on normal exit, rolls everything back on an exception."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield Writer(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
