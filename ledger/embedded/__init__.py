"""The embedded ledger backend: the ``fedaudit`` contract in-process over one SQLite file."""

from ledger.embedded.backend import EmbeddedLedger

__all__ = ["EmbeddedLedger"]
