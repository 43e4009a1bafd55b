"""Judge a block log by the contract: re-execute every stored transaction and compare.

Re-hashing blocks and rebuilding state from their write sets (``ledger.embedded.verify``)
proves only that the file agrees with itself: anyone who can write the file can append a
hash-consistent block that writes whatever it likes. This module asks the question the
endorsing peers ask on Fabric — would the contract have written this? — for every
transaction of the log, in order:

* it runs the ``fedaudit`` contract as it is on disk now (through the same
  :class:`~ledger.embedded.runtime.ContractRuntime` the embedded ledger writes with) on a
  fresh in-memory state, as the recorded creator (MSP id and full certificate), with the
  recorded arguments, transaction id and block timestamp;
* the contract must accept it, and produce exactly the recorded writes and event;
* the recorded creator's MSP must be one allowed to call the function (:func:`msp_rule`),
  checked apart from the contract, so a weakened access check in a future contract
  version is still caught;
* per federation, every token balance the blocks leave must equal the rewards issued to
  the participant plus the transfers it received minus those it sent, and the total
  supply the rewards issued (:mod:`ledger.tokens`).

The state is advanced with the recorded writes, whatever the verdict: each transaction is
judged as one step from the state the ledger really holds before it, so a forged block is
reported once, at its own transaction, instead of again at every later one that read what
it wrote (the balances it moved stay wrong, and the token check reports them). A block body
records ``creator_cert`` (PEM) from this version on; an older one holds only
``creator_cert_sha256``, and its certificate is looked up among the certificates that
other transactions of the log carry. A transaction whose certificate cannot be found is
reported: it cannot be re-executed, and an unverifiable write is not a verified one.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chaincode.fedaudit import TRANSACTIONS
from ledger.embedded.runtime import ContractRuntime, serialize_identity
from ledger.embedded.storage import display_key
from ledger.tokens import TokenBook

__all__ = ["ReplayReport", "MemoryState", "msp_rule", "replay_blocks"]

# Functions only the federation's coordinator MSP may call.
COORDINATOR_ONLY = frozenset({
    "AdmitParticipant", "RevokeParticipant", "RecordRound", "CommitModel", "RecordEvaluation", "IssueRewards",
})
# Functions an institution calls for itself: never the coordinator's MSP.
ORGANISATION_ONLY = frozenset({"RegisterOrgCA", "RegisterParticipant"})


@dataclass
class ReplayReport:
    """What the replay re-executed and every problem it found (empty = every block holds)."""

    transactions: int = 0
    problems: list[str] = field(default_factory=list)
    # federation → tokens in circulation (the rewards issued), as the blocks account for them.
    supply: dict[str, int] = field(default_factory=dict)


class MemoryState:
    """World state and per-key history in memory: a :class:`~ledger.embedded.runtime.StateReader`."""

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}
        # Keys in UTF-8 byte order, as LevelDB and the embedded ledger's BLOB keys compare.
        self._order: list[bytes] = []
        self._history: dict[str, list[tuple[str, int, bytes, bool]]] = defaultdict(list)

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""
        return self._values.get(key)

    def range(self, start: str, end: str) -> list[tuple[str, bytes]]:
        """``(key, value)`` with ``start <= key < end`` in UTF-8 byte order (``end=""``: open)."""
        low = bisect_left(self._order, start.encode("utf-8"))
        high = bisect_left(self._order, end.encode("utf-8")) if end else len(self._order)
        keys = [k.decode("utf-8") for k in self._order[low:high]]
        return [(k, self._values[k]) for k in keys]

    def history(self, key: str) -> list[tuple[str, int, bytes, bool]]:
        """Every write of ``key``, newest first."""
        return list(reversed(self._history.get(key, [])))

    def apply(self, tx_id: str, timestamp_ms: int, writes: Mapping[str, bytes | None]) -> None:
        """Commit one transaction's write set (``None`` = delete)."""
        for key, value in writes.items():
            encoded = key.encode("utf-8")
            if value is None:
                if self._values.pop(key, None) is not None:
                    self._order.pop(bisect_left(self._order, encoded))
            else:
                if key not in self._values:
                    insort(self._order, encoded)
                self._values[key] = value
            self._history[key].append((tx_id, timestamp_ms, value or b"", value is None))


def _composite(kind: str, *attrs: str) -> str:
    return f"\x00{kind}\x00" + "".join(f"{a}\x00" for a in attrs)


def msp_rule(function: str, msp: str, federation: Mapping[str, Any] | None, args: list[str]) -> str | None:
    """Why ``msp`` may not call ``function`` on ``federation`` (its stored record), or ``None``.

    Coordinator-only functions need the coordinator's MSP; an organisation's own
    registrations never come from the coordinator's; auditor MSPs never write. For
    InitFederation the auditors are the ones its own policy argument names.
    """
    if function == "InitFederation":
        try:
            auditors = json.loads(args[1])["auditor_msps"] if len(args) > 1 else []
        except (ValueError, KeyError, TypeError):
            return None  # the contract refuses a policy it cannot read: reported as a refusal
        return f"InitFederation may not be called by the auditor MSP {msp}" if msp in auditors else None
    if federation is None:
        return None  # no such federation: the contract refuses it, reported as a refusal
    coordinator = federation.get("coordinator_msp")
    auditors = (federation.get("policy") or {}).get("auditor_msps") or []
    if function in COORDINATOR_ONLY and msp != coordinator:
        return f"{function} may only be called by the coordinator MSP {coordinator}, not {msp}"
    if function in ORGANISATION_ONLY and msp == coordinator:
        return f"{function} may not be called by the coordinator MSP {msp}"
    if msp in auditors:
        return f"{function} may not be called by the auditor MSP {msp}"
    return None


def _recorded_writes(tx: Mapping[str, Any]) -> dict[str, bytes | None]:
    writes: dict[str, bytes | None] = {}
    for write in tx["writes"]:
        writes[write["key"]] = None if write["is_delete"] else write["value"].encode("utf-8")
    return writes


def _known_certificates(blocks: list[Mapping[str, Any]], report: ReplayReport) -> dict[str, str]:
    """Certificate PEM by SHA-256, from every transaction that carries its certificate."""
    known: dict[str, str] = {}
    for block in blocks:
        for tx in block.get("transactions") or []:
            pem = tx.get("creator_cert") if isinstance(tx, Mapping) else None
            if not isinstance(pem, str):
                continue
            digest = hashlib.sha256(pem.encode("utf-8")).hexdigest()
            if tx.get("creator_cert_sha256", digest) != digest:
                report.problems.append(
                    f"block {block.get('number')} tx {tx.get('tx_id')}: creator_cert does not hash to "
                    "creator_cert_sha256")
            known.setdefault(digest, pem)
    return known


class _Replayer:
    def __init__(self, runtime: ContractRuntime, certificates: dict[str, str], report: ReplayReport) -> None:
        self.runtime = runtime
        self.certificates = certificates
        self.report = report
        self.state = MemoryState()
        self.seen: dict[str, int] = {}
        self.tokens = TokenBook()

    def problem(self, where: str, text: str) -> None:
        self.report.problems.append(f"{where}: {text}")

    def creator_cert(self, tx: Mapping[str, Any]) -> str | None:
        pem = tx.get("creator_cert")
        if isinstance(pem, str):
            return pem
        return self.certificates.get(str(tx.get("creator_cert_sha256")))

    def run(self, number: int, timestamp_ms: int, tx: Mapping[str, Any]) -> None:
        tx_id, function, args, msp = tx["tx_id"], tx["function"], list(tx["args"]), tx["creator_msp"]
        where = f"block {number} tx {tx_id}"
        self.report.transactions += 1
        if tx_id in self.seen:
            self.problem(where, f"the transaction id is already in block {self.seen[tx_id]}")
        self.seen.setdefault(tx_id, number)
        recorded = _recorded_writes(tx)
        self.tokens.balances_written(where, recorded)
        if function not in TRANSACTIONS:
            self.problem(where, f"{function!r} is not a transaction function of the contract")
            self.state.apply(tx_id, timestamp_ms, recorded)
            return
        stored_fed = self.state.get(_composite("fed", args[0])) if args and isinstance(args[0], str) else None
        federation = json.loads(stored_fed) if stored_fed else None
        denied = msp_rule(function, msp, federation, args)
        if denied is not None:
            self.problem(where, f"recorded as called by {msp}, but {denied}")
        cert = self.creator_cert(tx)
        if cert is None:
            self.problem(where, f"its creator certificate {tx.get('creator_cert_sha256')} is not stored in "
                                "the block nor known from another transaction: it cannot be re-executed")
            self.state.apply(tx_id, timestamp_ms, recorded)
            return
        outcome = self.runtime.execute(
            self.state, function, args, creator=serialize_identity(msp, cert), nonce=b"", tx_id=tx_id,
            timestamp_ms=timestamp_ms, read_only=False,
        )
        if outcome.ok:
            self.compare(where, function, recorded, tx, outcome.writes, outcome.event)
            self.tokens.accepted(where, function, tx.get("event"))
        else:
            self.problem(where, f"{function} as recorded, the contract refuses it: {outcome.message}")
        self.state.apply(tx_id, timestamp_ms, recorded)

    def compare(
        self,
        where: str,
        function: str,
        recorded: dict[str, bytes | None],
        tx: Mapping[str, Any],
        writes: dict[str, bytes | None],
        event: tuple[str, bytes] | None,
    ) -> None:
        keys = [w["key"] for w in tx["writes"]]
        if keys != sorted(set(keys), key=lambda k: k.encode("utf-8")):
            self.problem(where, "its write set is not one write per key in key order")
        for key in sorted(set(recorded) | set(writes), key=lambda k: k.encode("utf-8")):
            shown = display_key(key)
            if key not in writes:
                self.problem(where, f"{function} writes key {shown}, but the contract does not write it")
            elif key not in recorded:
                self.problem(where, f"{function} does not write key {shown}, but the contract writes it")
            elif recorded[key] != writes[key]:
                self.problem(where, f"{function} key {shown}: the recorded value is not the one the contract "
                                    "writes")
        raw = tx.get("event")
        stored = None if raw is None else (raw["name"], raw["payload"].encode("utf-8"))
        if stored != event:
            self.problem(where, f"{function}: the recorded event is not the one the contract emits")


def replay_blocks(
    blocks: Iterable[Mapping[str, Any]], runtime: ContractRuntime | None = None
) -> ReplayReport:
    """Re-execute every transaction of ``blocks`` (block bodies in order, as the embedded
    ledger stores them) through the contract and check tokens and callers (module docstring)."""
    report = ReplayReport()
    bodies = list(blocks)
    replayer = _Replayer(runtime or ContractRuntime.shared(), _known_certificates(bodies, report), report)
    for block in bodies:
        number, timestamp = block.get("number"), block.get("timestamp_ms")
        for idx, tx in enumerate(block.get("transactions") or []):
            try:
                replayer.run(int(number), int(timestamp), tx)  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, UnicodeError) as exc:
                report.problems.append(
                    f"block {number}: transaction {idx} cannot be re-executed, it is malformed ({exc!r})")
    report.problems.extend(replayer.tokens.problems())
    report.supply = replayer.tokens.supply()
    return report
