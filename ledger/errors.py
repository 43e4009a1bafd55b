"""The ledger's error tree, one place for every caller to catch from.

::

    LedgerError
    ├── LedgerUnavailable      retryable: the ledger could not be reached or timed out
    ├── TransactionRejected    the contract refused the call (bad arguments, wrong state)
    │   ├── AccessDenied       the caller's identity may not make this call
    │   ├── RecordNotFound     the record asked for does not exist
    │   └── DuplicateRecord    a once-only record (round, commit, rewards) exists already
    ├── CommitFailed           the transaction was ordered but not committed VALID
    └── LedgerCorrupted        the stored history does not verify (tamper evidence)

Messages are stable: tests and operators match on them.
"""

from __future__ import annotations

__all__ = [
    "LedgerError",
    "LedgerUnavailable",
    "TransactionRejected",
    "AccessDenied",
    "RecordNotFound",
    "DuplicateRecord",
    "CommitFailed",
    "LedgerCorrupted",
    "CONTRACT_CODES",
    "contract_refusal",
]


class LedgerError(Exception):
    """Base class of every ledger failure; ``tx_id`` names the transaction when known."""

    def __init__(self, message: str, *, tx_id: str | None = None) -> None:
        super().__init__(message)
        self.tx_id = tx_id


class LedgerUnavailable(LedgerError):
    """The ledger could not be reached; the operation may be retried."""


class TransactionRejected(LedgerError):
    """The contract refused the transaction; nothing was written."""


class AccessDenied(TransactionRejected):
    """The caller's identity is not allowed to make this call."""


class RecordNotFound(TransactionRejected):
    """The federation, participant or round asked for does not exist."""


class DuplicateRecord(TransactionRejected):
    """A record that may be written once per round exists already."""


class CommitFailed(LedgerError):
    """The transaction did not commit VALID; nothing was written."""


class LedgerCorrupted(LedgerError):
    """The stored ledger does not verify (hash chain or history broken)."""


# The ``fedaudit`` contract's stable refusal codes (the start of its messages).
CONTRACT_CODES: dict[str, type[TransactionRejected]] = {
    "ACCESS_DENIED": AccessDenied,
    "NOT_FOUND": RecordNotFound,
    "DUPLICATE": DuplicateRecord,
    "INVALID": TransactionRejected,
}


def contract_refusal(message: str, tx_id: str | None) -> TransactionRejected | None:
    """The ledger error for a contract refusal with a known code, or ``None`` (another cause)."""
    kind = CONTRACT_CODES.get(message.split(":", 1)[0].strip())
    return None if kind is None else kind(message, tx_id=tx_id)
