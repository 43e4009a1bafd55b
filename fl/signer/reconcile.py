"""Does the ledger say what this institution signed — no more, no less?

:func:`reconcile` compares the signer's journal with the rounds on the ledger, for one
participant:

* every manifest the signer **signed** must be on the ledger in its round, with that
  signature; the report gives the decision recorded for it (accepted, or rejected with
  which reason). A signed reply missing from a round the ledger already holds is a
  problem (the coordinator dropped it, or recorded it as not received);
* every ledger entry in the participant's name that carries a manifest must be one the
  signer signed. One the coordinator **accepted** without it is a problem (a reply the
  institution never authorised counted in its name); a rejected one is listed as a
  forgery attempt that was stopped;
* the same two rules for evaluations: every evaluation the signer signed must be in its
  round's recorded evaluation with that signature (a round recorded without it is a
  problem; a round with no recorded evaluation at all is listed as unrecorded), and an
  evaluation *accepted* in the participant's name that the signer never signed is a
  problem;
* every **receipt** the signer journalled (the coordinator's signed word on how a reply
  was recorded, :mod:`ledger.receipts`) must agree with the ledger: its round recorded
  by the transaction it names, an entry for its manifest with its decision and reason,
  and — for a round the signer signed — about the manifest the signer signed. A receipt
  the ledger contradicts, or one the signer refused (bad signature, another coordinator
  key, another participant), is a problem; a signed round without a receipt is listed;
* with ``check_rejection`` (the auditor's recomputation, :mod:`ledger.audit_rejections`),
  each rejection of a reply the signer signed must be supported by its evidence;
* the journal's own hash chain must verify.

Each signed reply's line in the report reads: signed by me; the ledger says (status,
reason); the receipt says (decision, reason) or none.

Rounds after the last one on the ledger are reported as pending, not as problems.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl.signer.journal import read_entries, verify_journal
from ledger.records import RoundEntry, RoundView

RejectionCheck = Callable[[RoundView, RoundEntry], "str | None"]

__all__ = ["ReconcileReport", "RejectionCheck", "reconcile"]


@dataclass
class ReconcileReport:
    """The comparison's outcome: per signed reply, its ledger decision; problems."""

    participant: str
    federation: str
    journal_entries: int = 0
    signed: list[dict[str, Any]] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    refused: int = 0
    stopped_forgeries: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    unrecorded_evaluations: list[int] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    without_receipt: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Journal and ledger agree."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``--json``."""
        return {"ok": self.ok, "participant": self.participant, "federation": self.federation,
                "journal_entries": self.journal_entries, "signed": self.signed, "pending": self.pending,
                "refused": self.refused, "stopped_forgeries": self.stopped_forgeries,
                "evaluations": self.evaluations, "unrecorded_evaluations": self.unrecorded_evaluations,
                "receipts": self.receipts, "without_receipt": self.without_receipt, "problems": self.problems}


def reconcile(journal: Path, rounds: list[RoundView], participant: str, federation: str,
              pin: tuple[int, str] | None = None, check_rejection: RejectionCheck | None = None) -> ReconcileReport:
    """Compare ``journal`` with the ledger's ``rounds`` for ``participant``.

    ``check_rejection(view, entry)`` says why a recorded rejection is not supported by its
    evidence (None: it is); without it rejections are taken as recorded.
    """
    report = ReconcileReport(participant, federation)
    check = verify_journal(journal, pin)
    report.journal_entries = check.entries
    report.problems += [f"journal: {p}" for p in check.problems]
    signed: dict[int, dict[str, Any]] = {}
    evaluated: dict[int, dict[str, Any]] = {}
    receipts: list[dict[str, Any]] = []
    for _, entry, _ in read_entries(journal):
        if entry is None or entry.get("participant") != participant or entry.get("federation") != federation:
            continue
        if entry.get("kind") == "receipt":
            receipts.append(entry)
        elif entry.get("decision") == "signed":
            (evaluated if entry.get("kind") == "evaluation" else signed)[int(entry["round"])] = entry
        elif entry.get("decision") == "refused":
            report.refused += 1
    by_round = {view.round: view for view in rounds}
    last_on_ledger = max(by_round, default=0)
    for number, entry in sorted(signed.items()):
        view = by_round.get(number)
        if view is None:
            if number > last_on_ledger:
                report.pending.append(number)
            else:
                report.problems.append(f"round {number}: signed manifest {entry['manifest_hash'][:16]}… but "
                                       "the ledger has no such round")
            continue
        mine = [e for e in view.record.entries if e.participant == participant]
        match = next((e for e in mine if e.manifest_hash == entry["manifest_hash"]), None)
        if match is None:
            recorded = ", ".join(f"{e.status}:{e.reason}" for e in mine) or "nothing"
            report.problems.append(f"round {number}: signed manifest {entry['manifest_hash'][:16]}… is not on "
                                   f"the ledger (it records {recorded} for {participant})")
            continue
        if match.signature != entry["signature"]:
            report.problems.append(f"round {number}: the ledger holds another signature for the signed manifest")
        if match.status == "rejected" and check_rejection is not None:
            why = check_rejection(view, match)
            if why is not None:
                report.problems.append(f"round {number}: rejected as {match.reason}, which the evidence does "
                                       f"not support: {why}")
        report.signed.append({"round": number, "manifest_hash": entry["manifest_hash"], "status": match.status,
                              "reason": match.reason, "receipt": None})
    for view in rounds:
        for e in view.record.entries:
            if e.participant != participant or e.manifest_hash is None:
                continue
            mine_entry = signed.get(view.round)
            if mine_entry is not None and mine_entry["manifest_hash"] == e.manifest_hash:
                continue
            item = {"round": view.round, "manifest_hash": e.manifest_hash, "status": e.status, "reason": e.reason}
            if e.status == "accepted":
                report.problems.append(f"round {view.round}: the ledger accepted manifest {e.manifest_hash[:16]}… "
                                       f"in {participant}'s name that its signer never signed")
            else:
                report.stopped_forgeries.append(item)
    _reconcile_evaluations(report, evaluated, by_round, last_on_ledger)
    _reconcile_receipts(report, receipts, signed, by_round)
    return report


def _reconcile_receipts(report: ReconcileReport, receipts: list[dict[str, Any]],
                        signed: dict[int, dict[str, Any]], by_round: dict[int, RoundView]) -> None:
    """Each journalled receipt against the ledger and against what the signer signed."""
    lines = {item["round"]: item for item in report.signed}
    received: set[int] = set()
    for receipt in receipts:
        if receipt.get("decision") != "received":
            report.problems.append(f"journal entry {receipt.get('seq')}: a receipt was refused "
                                   f"({receipt.get('reason')}: {str(receipt.get('detail', ''))[:200]})")
            continue
        number = int(receipt["round"])
        said = {"round": number, "manifest_hash": receipt.get("manifest_hash"), "status": receipt.get("status"),
                "reason": receipt.get("status_reason"), "record_tx": receipt.get("record_tx")}
        report.receipts.append(said)
        received.add(number)
        mine = signed.get(number)
        if mine is not None and receipt.get("manifest_hash") != mine["manifest_hash"]:
            report.problems.append(f"round {number}: the coordinator's receipt is about manifest "
                                   f"{str(receipt.get('manifest_hash'))[:16]}…, not the one signed "
                                   f"({mine['manifest_hash'][:16]}…)")
        view = by_round.get(number)
        if view is None:
            report.problems.append(f"round {number}: the coordinator gave a receipt for a round the ledger "
                                   "does not hold")
            continue
        if receipt.get("record_tx") != view.record_tx.tx_id:
            report.problems.append(f"round {number}: the receipt names record transaction "
                                   f"{str(receipt.get('record_tx'))[:16]}…, the ledger recorded the round in "
                                   f"{view.record_tx.tx_id[:16]}…")
        match = next((e for e in view.record.entries if e.participant == report.participant
                      and e.manifest_hash == receipt.get("manifest_hash")), None)
        if match is None:
            report.problems.append(f"round {number}: the receipt says {said['status']}:{said['reason']}, the "
                                   "ledger has no such entry for this participant")
            continue
        if (match.status, match.reason) != (said["status"], said["reason"]):
            report.problems.append(f"round {number}: the receipt says {said['status']}:{said['reason']}, the "
                                   f"ledger says {match.status}:{match.reason}")
        line = lines.get(number)
        if line is not None and line["manifest_hash"] == said["manifest_hash"]:
            line["receipt"] = {"status": said["status"], "reason": said["reason"]}
    report.without_receipt = sorted(n for n in lines if n not in received)


def _reconcile_evaluations(report: ReconcileReport, evaluated: dict[int, dict[str, Any]],
                           by_round: dict[int, RoundView], last_on_ledger: int) -> None:
    """Signed evaluations against the recorded ones, both ways."""
    participant = report.participant
    for number, entry in sorted(evaluated.items()):
        view = by_round.get(number)
        if view is None:
            report.problems.append(f"round {number}: signed evaluation {entry['manifest_hash'][:16]}… of a "
                                   "round the ledger does not hold")
            continue
        if view.evaluation is None:
            # The last round's evaluation may still be on its way; an older one was never
            # recorded (a coordinator stopped before RecordEvaluation): listed, for the
            # institution to take up with the coordinator.
            if number == last_on_ledger:
                report.pending.append(number)
            else:
                report.unrecorded_evaluations.append(number)
            continue
        mine = [e for e in view.evaluation.entries if e.participant == participant]
        match = next((e for e in mine if e.manifest_hash == entry["manifest_hash"]), None)
        if match is None:
            recorded = ", ".join(f"{e.status}:{e.reason}" for e in mine) or "nothing"
            report.problems.append(f"round {number}: signed evaluation {entry['manifest_hash'][:16]}… is not in "
                                   f"the recorded evaluation (it records {recorded} for {participant})")
            continue
        if match.signature != entry["signature"]:
            report.problems.append(f"round {number}: the ledger holds another signature for the signed evaluation")
        report.evaluations.append({"round": number, "manifest_hash": entry["manifest_hash"],
                                   "status": match.status, "reason": match.reason})
    for view in by_round.values():
        if view.evaluation is None:
            continue
        for e in view.evaluation.entries:
            if e.participant != participant or e.manifest_hash is None:
                continue
            mine_entry = evaluated.get(view.round)
            if mine_entry is not None and mine_entry["manifest_hash"] == e.manifest_hash:
                continue
            item = {"round": view.round, "manifest_hash": e.manifest_hash, "status": e.status,
                    "reason": e.reason, "kind": "evaluation"}
            if e.status == "accepted":
                report.problems.append(f"round {view.round}: the ledger accepted evaluation {e.manifest_hash[:16]}… "
                                       f"in {participant}'s name that its signer never signed")
            else:
                report.stopped_forgeries.append(item)
