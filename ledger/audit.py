"""An auditor's independent check of a federation (``fedledger audit verify``).

From the ledger (read with the auditor's own identity) and the artifact store alone, it
re-checks every recorded signature against the registered certificate, every digest
against the stored tensors, recomputes every round's FedAvg and contribution scores and
compares them with what was committed, follows the chain of global models from the
federation's initial model, and asks the backend to prove its own integrity (the
embedded ledger's hash chain; block inclusion on Fabric). Needs no Flower and no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger.aggregate import AGGREGATORS, AggregationError, WeightedUpdate
from ledger.artifacts import ArtifactError, ArtifactStore
from ledger.errors import LedgerError
from ledger.formats import FormatError, Manifest, SignatureError, update_digest, verify
from ledger.incentives import compute_rewards
from ledger.protocol import Ledger
from ledger.records import Participant, RoundEntry, RoundView
from ledger.scoring import SCORERS

__all__ = ["AuditReport", "audit_federation"]


@dataclass
class AuditReport:
    """The outcome; ``ok`` only when ``problems`` is empty."""

    federation: str
    rounds: int = 0
    signatures_checked: int = 0
    aggregates_recomputed: int = 0
    scores_recomputed: int = 0
    rewards_recomputed: int = 0
    blocks_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form (issue 2's shape plus a few counters)."""
        return {
            "ok": self.ok,
            "federation": self.federation,
            "rounds": self.rounds,
            "signatures_checked": self.signatures_checked,
            "aggregates_recomputed": self.aggregates_recomputed,
            "scores_recomputed": self.scores_recomputed,
            "rewards_recomputed": self.rewards_recomputed,
            "blocks_checked": self.blocks_checked,
            "problems": self.problems,
        }


def _check_entry(
    entry: RoundEntry, view: RoundView, participants: dict[str, Participant], report: AuditReport
) -> Manifest | None:
    """Re-verify one accepted entry's manifest and signature; return the manifest."""
    where = f"round {view.round} {entry.participant}"
    if entry.manifest is None or entry.signature is None:
        report.problems.append(f"{where}: accepted without a manifest and signature")
        return None
    try:
        manifest = Manifest.parse(entry.manifest)
    except FormatError as exc:
        report.problems.append(f"{where}: recorded manifest is invalid: {exc}")
        return None
    if manifest.hash() != entry.manifest_hash:
        report.problems.append(f"{where}: manifest_hash does not match the manifest")
    expected = (view.federation, view.round, view.record.base_model, entry.participant)
    actual = (manifest.federation, manifest.round, manifest.base_model, manifest.participant)
    if actual != expected:
        report.problems.append(f"{where}: manifest names {actual}, the round is {expected}")
    if manifest.update != entry.update or manifest.num_examples != entry.num_examples:
        report.problems.append(f"{where}: entry fields differ from the signed manifest")
    participant = participants.get(entry.participant)
    if participant is None:
        report.problems.append(f"{where}: participant is not registered")
        return manifest
    try:
        verify(manifest.to_bytes(), entry.signature, participant.cert_pem)
        report.signatures_checked += 1
    except (SignatureError, FormatError) as exc:
        report.problems.append(f"{where}: signature does not verify: {exc}")
    return manifest


def _check_rejected_signature(
    entry: RoundEntry, view: RoundView, participants: dict[str, Participant], report: AuditReport
) -> None:
    """A rejection for a bad signature must be one: the signature must indeed fail."""
    participant = participants.get(entry.participant)
    if entry.manifest is None or entry.signature is None or participant is None:
        return
    try:
        verify(entry.manifest.encode("utf-8"), entry.signature, participant.cert_pem)
    except (SignatureError, FormatError):
        report.signatures_checked += 1
        return
    report.problems.append(
        f"round {view.round} {entry.participant}: rejected as {entry.reason} but the signature verifies"
    )


def _check_round(
    view: RoundView,
    previous_model: str,
    reward_budget: int,
    participants: dict[str, Participant],
    artifacts: ArtifactStore,
    report: AuditReport,
) -> str:
    """Check one round; return the model the next round must start from."""
    record = view.record
    where = f"round {view.round}"
    if record.base_model != previous_model:
        report.problems.append(f"{where}: base model {record.base_model[:16]}… does not follow {previous_model[:16]}…")
    updates: list[WeightedUpdate] = []
    for entry in record.entries:
        if entry.status == "rejected":
            if entry.reason in ("bad_signature", "high_s"):
                _check_rejected_signature(entry, view, participants, report)
            continue
        manifest = _check_entry(entry, view, participants, report)
        if manifest is None:
            continue
        try:
            arrays = artifacts.get(manifest.update)
        except ArtifactError as exc:
            report.problems.append(f"{where} {entry.participant}: update unavailable: {exc}")
            continue
        updates.append(WeightedUpdate(entry.participant, manifest.num_examples, arrays))
    if view.commit is None:
        report.problems.append(f"{where}: recorded but no model committed")
        return previous_model
    commit = view.commit
    accepted = sorted(e.participant for e in record.entries if e.status == "accepted")
    if sorted(commit.accepted) != accepted:
        report.problems.append(f"{where}: committed participants {commit.accepted} differ from accepted {accepted}")
    if len(updates) != len(accepted):
        return commit.model  # a problem was already reported; recomputing would mislead
    try:
        base = artifacts.get(record.base_model)
    except ArtifactError as exc:
        report.problems.append(f"{where}: base model unavailable: {exc}")
        return commit.model
    aggregate = AGGREGATORS.get(commit.aggregation)
    if aggregate is None:
        report.problems.append(f"{where}: unknown aggregation {commit.aggregation!r}")
        return commit.model
    try:
        recomputed = update_digest(aggregate(updates)) if updates else record.base_model
    except AggregationError as exc:
        report.problems.append(f"{where}: aggregate cannot be recomputed: {exc}")
        return commit.model
    report.aggregates_recomputed += 1
    if recomputed != commit.model:
        report.problems.append(f"{where}: recomputed model {recomputed[:16]}… differs from committed {commit.model[:16]}…")
    if view.rewards is not None:
        expected_rewards = compute_rewards(record, reward_budget)
        if {p: n for p, n in view.rewards.items() if n} != {p: n for p, n in expected_rewards.items() if n}:
            report.problems.append(f"{where}: issued rewards {view.rewards} differ from the policy's {expected_rewards}")
        report.rewards_recomputed += 1
    scorer = SCORERS.get(record.scorer.name)
    if scorer is not None:
        scores = scorer(base, updates)
        report.scores_recomputed += 1
        for entry in record.entries:
            if entry.status == "accepted" and scores.get(entry.participant) != entry.score_ppm:
                report.problems.append(
                    f"{where} {entry.participant}: recorded score {entry.score_ppm} ≠ recomputed {scores.get(entry.participant)}"
                )
    return commit.model


def audit_federation(
    ledger: Ledger,
    federation: str,
    artifacts: ArtifactStore,
    integrity: Callable[[AuditReport], None] | None = None,
) -> AuditReport:
    """Audit every round of ``federation``; ``integrity`` adds the backend's own proof."""
    report = AuditReport(federation=federation)
    try:
        fed = ledger.get_federation(federation)
        participants = {p.id: p for p in ledger.participants(federation)}
        rounds = ledger.list_rounds(federation)
    except LedgerError as exc:
        report.problems.append(f"ledger cannot be read: {exc}")
        return report
    model = fed.policy.model
    for expected, view in enumerate(rounds, start=1):
        if view.round != expected:
            report.problems.append(f"round {expected} is missing (found {view.round})")
        model = _check_round(view, model, fed.policy.reward_budget, participants, artifacts, report)
        report.rounds += 1
    if integrity is not None:
        integrity(report)
    return report
