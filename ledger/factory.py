"""Open a :class:`~ledger.protocol.Ledger` by backend name — the one place that knows them all."""

from __future__ import annotations

from pathlib import Path

from ledger.errors import LedgerError
from ledger.protocol import Ledger
from ledger.records import Identity

__all__ = ["BACKENDS", "open_ledger"]

BACKENDS = ("embedded", "fabric")


def open_ledger(kind: str, location: Path | str, identity: Identity) -> Ledger:
    """Open the ``kind`` ledger at ``location`` (a file for ``embedded``), called as ``identity``."""
    if kind == "embedded":
        from ledger.embedded import EmbeddedLedger

        return EmbeddedLedger(Path(location), identity)
    if kind == "fabric":
        raise LedgerError(
            "the fabric backend is not available: the Fabric Gateway client has not been built yet; "
            "use the embedded backend"
        )
    raise ValueError(f"unknown ledger backend {kind!r}; expected one of {list(BACKENDS)}")
