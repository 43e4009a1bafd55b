"""``EmbeddedLedger``: the :class:`~ledger.protocol.Ledger` over one SQLite file, no setup.

Writes run the ``fedaudit`` contract in-process inside ``BEGIN IMMEDIATE``; if the contract
refuses, nothing is written and the refusal is raised as a :mod:`ledger.errors` error
(``ACCESS_DENIED`` → AccessDenied, ``NOT_FOUND`` → RecordNotFound, ``DUPLICATE`` →
DuplicateRecord, anything else → TransactionRejected). If it succeeds, its write set, the
event and the transaction go into a new block, all in one SQLite commit. Queries run the
contract's query functions on a read-only snapshot.

Tamper-evident and durable, not distributed: one file, many threads (one lock), many
processes (SQLite locking).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ledger.embedded.runtime import ContractRuntime, Outcome, StateReader, new_tx_id, serialize_identity
from ledger.embedded.storage import Reader, Store
from ledger.embedded.verify import verify_chain
from ledger.errors import (
    LedgerCorrupted,
    LedgerUnavailable,
    RecordNotFound,
    TransactionRejected,
    contract_refusal,
)
from ledger.contract_calls import ContractCalls
from ledger.identity import Credentials
from ledger.protocol import IntegrityReport
from ledger.records import (
    Identity,
    RoundView,
    TxReceipt,
)

__all__ = ["EmbeddedLedger"]

def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _rejection(message: str, tx_id: str) -> TransactionRejected:
    """The ledger error for a contract refusal, chosen by its stable code prefix."""
    return contract_refusal(message, tx_id) or TransactionRejected(message, tx_id=tx_id)


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    """Map SQLite failures at this one boundary."""
    try:
        yield
    except sqlite3.ProgrammingError as exc:
        raise LedgerUnavailable(f"the embedded ledger is not usable: {exc}") from exc
    except sqlite3.OperationalError as exc:
        raise LedgerUnavailable(f"the embedded ledger file is busy or unreadable: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise LedgerCorrupted(f"the embedded ledger file is damaged: {exc}") from exc


class EmbeddedLedger(ContractCalls):
    """The ``fedaudit`` contract over SQLite, called as one identity (see module docstring)."""

    def __init__(
        self, path: Path | str, identity: Identity, *, clock: Callable[[], int] = _wall_clock_ms
    ) -> None:
        self._path = Path(path)
        self._identity = identity
        self._clock = clock
        self._runtime = ContractRuntime.shared()
        self._closed = False
        with _sqlite_errors():
            self._store = Store(self._path, genesis_ms=clock())

    @classmethod
    def _view(cls, base: EmbeddedLedger, identity: Identity) -> EmbeddedLedger:
        view = cls.__new__(cls)
        view._path, view._identity, view._clock = base._path, identity, base._clock
        view._runtime, view._closed = base._runtime, False
        view._store = base._store.retain()
        return view

    # --- Ledger protocol: identity -----------------------------------------------------

    @property
    def identity(self) -> Identity:
        """The caller identity every call is made as."""
        return self._identity

    @property
    def backend(self) -> str:
        """``embedded:<path>``."""
        return f"embedded:{self._path}"

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    def with_identity(self, who: Credentials | Identity) -> EmbeddedLedger:
        """The same ledger (same file, connection and lock), called as ``who``.

        Only the identity is used: the embedded ledger cannot check who holds its key.
        """
        self._check_open()
        return EmbeddedLedger._view(self, who.identity if isinstance(who, Credentials) else who)

    def close(self) -> None:
        """Release this view; the file closes when the last view of it is closed."""
        if not self._closed:
            self._closed = True
            self._store.release()

    def __enter__(self) -> EmbeddedLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Ledger protocol: queries ------------------------------------------------------

    def get_round(self, federation: str, round: int) -> RoundView:
        """One round's record, commit and rewards with their receipts (block numbers filled in)."""
        return self._evaluate("GetRound", [federation, str(round)], self._round_views)[0]

    def list_rounds(self, federation: str) -> list[RoundView]:
        """Every recorded round, in round order."""
        return self._evaluate("ListRounds", [federation], self._round_views)

    # --- the block log -----------------------------------------------------------------

    def integrity(self, pins: Sequence[str] = (), tx_ids: Sequence[str] = ()) -> IntegrityReport:
        """Re-hash the block log, replay it against state and history, find each of
        ``tx_ids`` in a block, and check the pins."""
        report = IntegrityReport(problems=self.verify_chain())
        report.blocks_checked = self.height()
        report.head = self.head()
        for tx_id in dict.fromkeys(tx_ids):
            try:
                self.tx(tx_id)
            except RecordNotFound:
                report.problems.append(f"transaction {tx_id} is in no block")
                continue
            report.transactions_proven += 1
        for spec in pins:
            number, _, expected = spec.partition(":")
            try:
                actual = self.block(int(number))["hash"]
            except (ValueError, RecordNotFound) as exc:
                report.problems.append(f"pinned block {number} cannot be read: {exc}")
                continue
            if actual != expected:
                report.problems.append(f"block {number} hashes to {actual}, pinned as {expected}")
        return report

    def verify_chain(self) -> list[str]:
        """Re-hash every block and rebuild state/history/txs/events from them; [] = verified."""
        with self._reading() as reader:
            return verify_chain(reader)

    def height(self) -> int:
        """Number of blocks, genesis included (Fabric's chain height)."""
        return self.head()[0] + 1

    def head(self) -> tuple[int, str]:
        """``(number, hash)`` of the newest block (anchor it elsewhere to pin the whole log)."""
        with self._reading() as reader:
            head = reader.head()
            return head.number, head.hash

    def blocks(self) -> Iterator[dict[str, Any]]:
        """Every block, in order, as ``{"hash", "number", "prev_hash", "timestamp_ms", "transactions"}``."""
        with self._reading() as reader:
            rows = list(reader.block_rows())
        for _, digest, body in rows:
            yield {"hash": digest, **json.loads(body)}

    def block(self, number: int) -> dict[str, Any]:
        """One block (as in :meth:`blocks`); RecordNotFound if there is no such block."""
        with self._reading() as reader:
            row = reader.block_row(number)
        if row is None:
            raise RecordNotFound(f"NOT_FOUND: block {number} does not exist")
        return {"hash": row[1], **json.loads(row[2])}

    def tx(self, tx_id: str) -> tuple[int, dict[str, Any]]:
        """``(block number, transaction)`` of a committed transaction."""
        with self._reading() as reader:
            location = reader.tx_location(tx_id)
            row = None if location is None else reader.block_row(location[0])
        if location is None or row is None:
            raise RecordNotFound(f"NOT_FOUND: transaction {tx_id} is not in the ledger", tx_id=tx_id)
        return location[0], json.loads(row[2])["transactions"][location[1]]

    def events(self, since_block: int = 0) -> list[dict[str, Any]]:
        """Chaincode events of blocks ``>= since_block``, in commit order."""
        with self._reading() as reader:
            rows = reader.event_rows(since_block)
        return [
            {"block": block, "tx_id": tx_id, "name": name, "payload": bytes(payload).decode("utf-8")}
            for block, tx_id, name, payload in rows
        ]

    # --- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._store.closed:
            raise LedgerUnavailable(f"the embedded ledger {self._path} is closed")

    @contextmanager
    def _reading(self) -> Iterator[Reader]:
        self._check_open()
        with _sqlite_errors(), self._store.read() as reader:
            yield reader

    def _creator(self) -> bytes:
        return serialize_identity(self._identity.msp_id, self._identity.cert_pem)

    def _run(
        self, reader: StateReader, function: str, args: list[str], *, read_only: bool, now: int
    ) -> tuple[str, Outcome]:
        """Execute as this identity with a fresh Fabric-style tx id; raise a refusal as its error."""
        creator, nonce = self._creator(), os.urandom(24)
        tx_id = new_tx_id(nonce, creator)
        outcome = self._runtime.execute(
            reader, function, args, creator=creator, nonce=nonce, tx_id=tx_id, timestamp_ms=now, read_only=read_only
        )
        if not outcome.ok:
            raise _rejection(outcome.message, tx_id)
        return tx_id, outcome

    def _submit(self, function: str, args: list[str]) -> TxReceipt:
        self._check_open()
        with _sqlite_errors(), self._store.write() as writer:
            # Strictly increasing block timestamps, even if the wall clock steps back.
            now = max(self._clock(), writer.head().timestamp_ms + 1)
            tx_id, outcome = self._run(writer, function, args, read_only=False, now=now)
            number, _ = writer.append_block(now, [self._transaction(tx_id, function, args, outcome)])
        return TxReceipt(tx_id=tx_id, block_number=number, timestamp_ms=now)

    def _transaction(self, tx_id: str, function: str, args: list[str], outcome: Outcome) -> dict[str, Any]:
        try:
            writes = [
                {"is_delete": value is None, "key": key, "value": None if value is None else value.decode("utf-8")}
                for key, value in sorted(outcome.writes.items(), key=lambda kv: kv[0].encode("utf-8"))
            ]
            event = None
            if outcome.event is not None:
                event = {"name": outcome.event[0], "payload": outcome.event[1].decode("utf-8")}
        except UnicodeDecodeError as exc:
            raise TransactionRejected(f"INVALID: {function} wrote a value that is not UTF-8", tx_id=tx_id) from exc
        return {
            "args": list(args),
            # The whole certificate, so an audit can re-execute the call as its caller.
            "creator_cert": self._identity.cert_pem,
            "creator_cert_sha256": hashlib.sha256(self._identity.cert_pem.encode("utf-8")).hexdigest(),
            "creator_msp": self._identity.msp_id,
            "event": event,
            "function": function,
            "tx_id": tx_id,
            "writes": writes,
        }

    def _query(self, function: str, args: list[str]) -> bytes:
        return self._evaluate(function, args)  # type: ignore[no-any-return]

    def _evaluate(
        self, function: str, args: list[str], finish: Callable[[Reader, bytes], Any] | None = None
    ) -> Any:
        with self._reading() as reader:
            _, outcome = self._run(reader, function, args, read_only=True, now=self._clock())
            return outcome.payload if finish is None else finish(reader, outcome.payload)

    @staticmethod
    def _round_views(reader: Reader, payload: bytes) -> list[RoundView]:
        raw = json.loads(payload)
        views = raw if isinstance(raw, list) else [raw]
        result = []
        for view in views:
            for field in ("record_tx", "commit_tx", "rewards_tx", "evaluation_tx"):
                stamp = view.get(field)
                if stamp is not None:
                    location = reader.tx_location(stamp["tx_id"])
                    if location is None:
                        raise LedgerCorrupted(f"{field} {stamp['tx_id']} of round {view['round']} is in no block")
                    view[field] = {**stamp, "block_number": location[0]}
            result.append(RoundView.parse(view))
        return result
