"""An auditor's independent check of a federation (``fedledger audit verify``).

From the ledger (read with the auditor's own identity) and the artifact store alone, it
re-checks every recorded signature against the registered certificate, every digest
against the stored tensors, recomputes every round's aggregate (the policy's rule, from
the updates as sent and signed) and contribution scores and compares them with what was
committed, re-decides every rejection and checks every acceptance against the same
admission rules as the coordinator (:mod:`ledger.admission`), follows the chain of global models from the
federation's initial model, re-verifies every signed evaluation (the institution's
certificate, the manifest hash, the metrics and the committed model it names), and asks
the backend to prove its own integrity (the embedded ledger's hash chain; block inclusion
on Fabric). Needs no Flower and no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.admission import dense_update, privacy_spent, signed_epsilon
from ledger.audit_chains import check_chains
from ledger.aggregate import AGGREGATORS, AggregationError, WeightedUpdate, capped
from ledger.artifacts import ArtifactError, ArtifactStore
from ledger.audit_rejections import audit_rejections
from ledger.errors import LedgerError
from ledger.formats import EvaluationManifest, FormatError, Manifest, SignatureError, update_digest, verify
from ledger.incentives import compute_rewards
from ledger.protocol import Ledger
from ledger.records import EvaluationEntry, FederationPolicy, Participant, RoundEntry, RoundView
from ledger.scoring import ScorerError, score_round
from ledger.utility import ValidationSet
from ledger.tokens import check_token_supply

__all__ = ["AuditReport", "audit_federation", "backend_integrity"]


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
    head: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    round_problems: dict[int, list[str]] = field(default_factory=dict)
    # Transactions holding the audited records, whose inclusion the integrity proof checks.
    tx_ids: list[str] = field(default_factory=list)
    transactions_proven: int = 0
    evaluations_checked: int = 0
    # Committed rounds with no recorded evaluation (older rounds, or a coordinator that
    # stopped between CommitModel and RecordEvaluation): noted, not a failure.
    unevaluated_rounds: list[int] = field(default_factory=list)
    # round → participant → whether its accepted evaluation's signature verified.
    evaluation_verified: dict[int, dict[str, bool]] = field(default_factory=dict)
    policy: FederationPolicy | None = None

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: the verdict, the counters, the head and the problems."""
        return {
            "ok": self.ok,
            "federation": self.federation,
            "rounds": self.rounds,
            "signatures_checked": self.signatures_checked,
            "aggregates_recomputed": self.aggregates_recomputed,
            "scores_recomputed": self.scores_recomputed,
            "rewards_recomputed": self.rewards_recomputed,
            "blocks_checked": self.blocks_checked,
            "transactions_proven": self.transactions_proven,
            "evaluations_checked": self.evaluations_checked,
            "unevaluated_rounds": self.unevaluated_rounds,
            "head": self.head,
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
    if (manifest.update, manifest.num_examples, signed_epsilon(manifest)) != (
            entry.update, entry.num_examples, entry.epsilon_ppm):
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


def _dense(sent: dict[str, Any], base: dict[str, Any], policy: FederationPolicy, where: str,
           report: AuditReport) -> dict[str, Any] | None:
    """An accepted update decoded from what was signed, which must pass the coordinator's
    content checks (:func:`ledger.admission.dense_update`)."""
    dense, rejection = dense_update(sent, base, policy)
    if rejection is not None:
        report.problems.append(f"{where}: accepted update fails the content checks: {rejection[0]} ({rejection[1]})")
    return dense


def _validation(artifacts: ArtifactStore, digest: str | None) -> ValidationSet | None:
    """The scorer's validation set from the artifact store (None when the scorer uses none)."""
    return None if digest is None else ValidationSet.from_arrays(artifacts.get(digest))


def _check_round(
    view: RoundView,
    previous_model: str,
    policy: FederationPolicy,
    participants: dict[str, Participant],
    artifacts: ArtifactStore,
    report: AuditReport,
    last_step_from: str | None = None,
) -> str:
    """Check one round; return the model the next round must start from.

    ``last_step_from`` is the previous round's base model: the scorer discounts the
    global step from it to this round's base, as the coordinator did."""
    record = view.record
    where = f"round {view.round}"
    if record.base_model != previous_model:
        report.problems.append(f"{where}: base model {record.base_model[:16]}… does not follow {previous_model[:16]}…")
    if record.scorer != policy.scorer:
        report.problems.append(f"{where}: scored with {record.scorer.name}, the policy says {policy.scorer.name}")
    try:
        base: dict[str, Any] | None = artifacts.get(record.base_model)
    except ArtifactError as exc:
        report.problems.append(f"{where}: base model unavailable: {exc}")
        base = None
    updates: list[WeightedUpdate] = []
    for entry in record.entries:
        if entry.status == "rejected":
            if entry.reason in ("bad_signature", "high_s"):
                _check_rejected_signature(entry, view, participants, report)
            continue
        manifest = _check_entry(entry, view, participants, report)
        if manifest is None:
            continue
        if not 1 <= manifest.num_examples <= policy.max_num_examples:
            report.problems.append(f"{where} {entry.participant}: num_examples {manifest.num_examples} out of policy range")
        try:
            arrays = artifacts.get(manifest.update)
        except ArtifactError as exc:
            report.problems.append(f"{where} {entry.participant}: update unavailable: {exc}")
            continue
        if base is None:
            continue
        dense = _dense(arrays, base, policy, f"{where} {entry.participant}", report)
        if dense is None:
            continue
        updates.append(WeightedUpdate(entry.participant, manifest.num_examples, dense))
    updates = capped(updates, policy.max_weight_share_ppm)  # the FedAvg weights the policy allows
    if view.commit is None:
        report.problems.append(f"{where}: recorded but no model committed")
        return previous_model
    commit = view.commit
    accepted = sorted(e.participant for e in record.entries if e.status == "accepted")
    if sorted(commit.accepted) != accepted:
        report.problems.append(f"{where}: committed participants {commit.accepted} differ from accepted {accepted}")
    if commit.weights != {u.participant: u.weight for u in updates} and len(updates) == len(accepted):
        report.problems.append(f"{where}: committed weights differ from the signed num_examples")
    if commit.aggregation != policy.aggregation:
        report.problems.append(f"{where}: aggregated with {commit.aggregation}, the policy says {policy.aggregation}")
    if view.rewards is not None:
        expected_rewards = compute_rewards(record, policy.reward_budget)
        if {p: n for p, n in view.rewards.items() if n} != {p: n for p, n in expected_rewards.items() if n}:
            report.problems.append(f"{where}: issued rewards {view.rewards} differ from the policy's {expected_rewards}")
        report.rewards_recomputed += 1
    if len(updates) != len(accepted) or base is None:
        return commit.model  # a problem was already reported; recomputing would mislead
    aggregate = AGGREGATORS.get(commit.aggregation)
    if aggregate is None:
        report.problems.append(f"{where}: unknown aggregation {commit.aggregation!r}")
        return commit.model
    try:
        recomputed = update_digest(aggregate(updates, policy.aggregation_params)) if updates else record.base_model
    except AggregationError as exc:
        report.problems.append(f"{where}: aggregate cannot be recomputed: {exc}")
        return commit.model
    report.aggregates_recomputed += 1
    if recomputed != commit.model:
        report.problems.append(f"{where}: recomputed model {recomputed[:16]}… differs from committed {commit.model[:16]}…")
    try:
        previous = artifacts.get(last_step_from) if last_step_from else None
        validation = _validation(artifacts, record.scorer.validation_digest)
    except (ArtifactError, ValueError) as exc:
        report.problems.append(f"{where}: the scorer's inputs are unavailable, scores cannot be recomputed: {exc}")
        return commit.model
    try:
        scores = score_round(record.scorer, base, updates, previous, validation)
    except ScorerError as exc:
        report.problems.append(f"{where}: scores cannot be recomputed: {exc}")
        return commit.model
    report.scores_recomputed += 1
    for entry in record.entries:
        recomputed_score = scores.get(entry.participant)
        # Scores use BLAS dot products, whose last bits may differ across machines:
        # ±1 ppm is the documented tolerance (rewards use the recorded scores, exactly).
        if entry.status == "accepted" and (
            recomputed_score is None or entry.score_ppm is None or abs(recomputed_score - entry.score_ppm) > 1
        ):
            report.problems.append(
                f"{where} {entry.participant}: recorded score {entry.score_ppm} ≠ recomputed {recomputed_score}"
            )
    return commit.model


def _check_evaluation_entry(
    entry: EvaluationEntry, view: RoundView, participants: dict[str, Participant], report: AuditReport
) -> bool:
    """Re-verify one accepted evaluation against the registered certificate; True if it holds."""
    where = f"round {view.round} evaluation of {entry.participant}"
    if entry.manifest is None or entry.signature is None:
        report.problems.append(f"{where}: accepted without a manifest and signature")
        return False
    try:
        manifest = EvaluationManifest.parse(entry.manifest)
    except FormatError as exc:
        report.problems.append(f"{where}: recorded evaluation manifest is invalid: {exc}")
        return False
    ok = True
    if manifest.hash() != entry.manifest_hash:
        report.problems.append(f"{where}: manifest_hash does not match the manifest")
        ok = False
    model = view.commit.model if view.commit is not None else None
    expected = (view.federation, view.round, model, entry.participant)
    actual = (manifest.federation, manifest.round, manifest.model, manifest.participant)
    if actual != expected:
        report.problems.append(f"{where}: manifest names {actual}, the round committed {expected}")
        ok = False
    recorded = (entry.num_examples, entry.accuracy_ppm, entry.auc_ppm, entry.log_loss_ppm)
    signed = (manifest.num_examples, manifest.accuracy_ppm, manifest.auc_ppm, manifest.log_loss_ppm)
    if recorded != signed:
        report.problems.append(f"{where}: recorded metrics {recorded} differ from the signed {signed}")
        ok = False
    participant = participants.get(entry.participant)
    if participant is None:
        report.problems.append(f"{where}: participant is not registered")
        return False
    try:
        verify(manifest.to_bytes(), entry.signature, participant.cert_pem)
        report.evaluations_checked += 1
    except (SignatureError, FormatError) as exc:
        report.problems.append(f"{where}: signature does not verify: {exc}")
        ok = False
    return ok


def _check_evaluation(view: RoundView, participants: dict[str, Participant], report: AuditReport) -> None:
    """A round's evaluation must be about its committed model and signed by who it names."""
    evaluation = view.evaluation
    if evaluation is None:
        if view.commit is not None:
            report.unevaluated_rounds.append(view.round)
        return
    where = f"round {view.round} evaluation"
    if view.commit is None:
        report.problems.append(f"{where}: recorded for a round with no committed model")
    elif evaluation.model != view.commit.model:
        report.problems.append(
            f"{where}: model {evaluation.model[:16]}… is not the committed {view.commit.model[:16]}…")
    if evaluation.round != view.round:
        report.problems.append(f"{where}: record names round {evaluation.round}")
    verified: dict[str, bool] = {}
    for entry in evaluation.entries:
        if entry.status == "accepted":
            if entry.participant in verified:
                report.problems.append(f"{where}: {entry.participant} has more than one accepted evaluation")
            verified[entry.participant] = _check_evaluation_entry(entry, view, participants, report)
        elif entry.reason in ("bad_signature", "high_s"):
            participant = participants.get(entry.participant)
            if entry.manifest is None or entry.signature is None or participant is None:
                continue
            try:
                verify(entry.manifest.encode("utf-8"), entry.signature, participant.cert_pem)
            except (SignatureError, FormatError):
                continue
            report.problems.append(f"{where}: {entry.participant} rejected as {entry.reason} but the signature verifies")
    report.evaluation_verified[view.round] = verified


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
    report.policy = fed.policy
    model = fed.policy.model
    for expected, view in enumerate(rounds, start=1):
        if view.round != expected:
            report.problems.append(f"round {expected} is missing (found {view.round})")
        before = len(report.problems)
        report.tx_ids += [r.tx_id for r in (view.record_tx, view.commit_tx, view.rewards_tx, view.evaluation_tx)
                          if r is not None]
        last_step_from = rounds[expected - 2].record.base_model if expected >= 2 else None
        model = _check_round(view, model, fed.policy, participants, artifacts, report, last_step_from)
        report.problems += audit_rejections(ledger, view, fed.policy, artifacts,
                                            privacy_spent(rounds, view.round))
        _check_evaluation(view, participants, report)
        report.round_problems[view.round] = report.problems[before:]
        report.rounds += 1
    report.problems.extend(check_token_supply(ledger, federation, rounds, participants))
    report.problems.extend(check_chains(ledger, federation, participants))
    if integrity is not None:
        integrity(report)
    return report


def backend_integrity(ledger: Ledger, pins: Sequence[str] = ()) -> Callable[[AuditReport], None]:
    """The backend's own proof (:meth:`Ledger.integrity`), as an ``integrity`` hook for
    :func:`audit_federation`: the embedded ledger replays its block log; Fabric blocks are
    checked for inclusion, hash chain and orderer signatures. ``pins`` (``BLOCK:HASH``
    from an earlier audit's head) catch a history rewritten from some block on."""

    def check(report: AuditReport) -> None:
        try:
            proof = ledger.integrity(pins, report.tx_ids)
        except LedgerError as exc:
            report.problems.append(f"ledger: its integrity cannot be checked: {exc}")
            return
        report.problems.extend(f"ledger: {p}" for p in proof.problems)
        report.blocks_checked = proof.blocks_checked
        report.transactions_proven = proof.transactions_proven
        if proof.head is not None:
            report.head = {"block": proof.head[0], "hash": proof.head[1]}

    return check
