"""The signer's append-only, hash-chained journal: everything it signed or refused.

One JSON line per decision. Each entry carries ``seq`` (0, 1, 2 …), ``prev`` (the
``hash`` of the entry before it; 64 zeros for the first) and ``hash`` = SHA-256 of the
entry's canonical JSON without ``hash``. Editing a line changes its hash; deleting or
reordering lines breaks the ``seq``/``prev`` links. Cutting lines off the *end* leaves a
consistent shorter chain: :func:`verify_journal` catches that only against a ``pin``
(``SEQ:HASH``) kept from an earlier verification, and the ledger comparison
(:mod:`fl.signer.reconcile`) catches a signed reply the journal no longer holds.

The file is opened in append mode for every entry and fsynced: a crash loses at most
the entry being written, and a half-written last line is reported, never repaired.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.formats import canonical_json, sha256_hex

__all__ = ["GENESIS", "JournalError", "JournalReport", "Journal", "entry_hash", "read_entries", "verify_journal"]

GENESIS = "0" * 64


class JournalError(ValueError):
    """The journal cannot be trusted (broken chain, unreadable line): the signer stops."""


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the entry's canonical JSON, its own ``hash`` field left out."""
    return sha256_hex(canonical_json({k: v for k, v in entry.items() if k != "hash"}))


@dataclass
class JournalReport:
    """What :func:`verify_journal` found: entries checked, the head to pin, problems."""

    entries: int = 0
    head: tuple[int, str] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``--json``."""
        head = None if self.head is None else {"seq": self.head[0], "hash": self.head[1]}
        return {"ok": self.ok, "entries": self.entries, "head": head, "problems": self.problems}


def read_entries(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """``(line number, parsed entry or None, raw line)`` for every non-empty line."""
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\n")
            if not text:
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                yield number, None, text
                continue
            yield number, value if isinstance(value, dict) else None, text


def verify_journal(path: Path, pin: tuple[int, str] | None = None) -> JournalReport:
    """Re-check every entry's hash and its link to the one before; optionally a pin.

    ``pin`` is ``(seq, hash)`` of an entry an earlier verification reported as head:
    the journal must still hold that very entry.
    """
    report = JournalReport()
    prev, expected_seq = GENESIS, 0
    pinned = False
    for number, entry, _ in read_entries(Path(path)):
        if entry is None:
            report.problems.append(f"line {number}: not a JSON object")
            break
        if entry.get("seq") != expected_seq:
            report.problems.append(f"line {number}: seq {entry.get('seq')!r}, expected {expected_seq} "
                                   "(a line was deleted, inserted or moved)")
            break
        if entry.get("prev") != prev:
            report.problems.append(f"line {number}: prev does not match the hash of the entry before it")
            break
        if entry.get("hash") != entry_hash(entry):
            report.problems.append(f"line {number}: hash does not match the entry (edited)")
            break
        if pin is not None and pin[0] == expected_seq:
            pinned = entry["hash"] == pin[1]
            if not pinned:
                report.problems.append(f"line {number}: entry {pin[0]} is not the pinned one")
        prev, expected_seq = entry["hash"], expected_seq + 1
        report.entries += 1
        report.head = (entry["seq"], entry["hash"])
    if pin is not None and not pinned and not report.problems:
        report.problems.append(f"pinned entry {pin[0]} is missing (the journal was cut short)")
    return report


class Journal:
    """Appends entries to a verified journal file (mode 0600), one fsynced line each."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        report = verify_journal(self.path)
        if not report.ok:
            raise JournalError(f"{self.path}: {report.problems[0]}")
        self._seq, self._prev = (report.head[0] + 1, report.head[1]) if report.head else (0, GENESIS)
        self._lock = threading.Lock()

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, oldest first (the file was verified when opened)."""
        for _, entry, _ in read_entries(self.path):
            if entry is not None:
                yield entry

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Append ``fields`` as the next entry; the entry as written (with seq/prev/hash)."""
        with self._lock:
            entry = {**fields, "seq": self._seq, "prev": self._prev}
            entry["hash"] = entry_hash(entry)
            line = canonical_json(entry) + b"\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seq, self._prev = self._seq + 1, entry["hash"]
            return entry
