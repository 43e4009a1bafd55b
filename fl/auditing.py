"""The auditor's and the coordinator's read-and-check services behind ``fedledger audit``,
``report`` and ``rewards`` (the CLI only parses and prints).

Each opens the federation's ledger with the identity the federation file gives the role
(the first auditor organisation, or the coordinator), does one thing and closes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl.config import FederationConfig
from fl.identities import member_credentials
from ledger.errors import LedgerUnavailable
from ledger.factory import open_ledger
from ledger.identity import Credentials
from ledger.protocol import Ledger
from ledger.records import HistoryEntry, Participant, RoundView

if TYPE_CHECKING:
    from ledger.bundle import BundleVerification

__all__ = ["AuditRun", "open_as", "auditor_credentials", "run_audit", "round_view", "participant_view",
           "balances", "issue_rewards", "participant_statement", "balance_sheet", "audit_history", "audit_balances",
           "export_bundle", "verify_bundle_file"]


def auditor_credentials(cfg: FederationConfig) -> Credentials:
    """The auditor's ledger credentials (the file's first auditor organisation)."""
    return member_credentials(cfg, cfg.auditor_msp, "auditor")


@contextmanager
def open_as(cfg: FederationConfig, credentials: Callable[[FederationConfig], Credentials]) -> Iterator[Ledger]:
    """The federation's ledger opened as ``credentials(cfg)``; an embedded ledger that
    does not exist yet is unavailable (opening would create an empty one), whatever the
    state of the identities."""
    if cfg.ledger == "embedded" and not cfg.ledger_path.exists():
        raise LedgerUnavailable(f"{cfg.ledger_path}: no ledger here (has the federation run?)")
    ledger = open_ledger(cfg.ledger_config, credentials(cfg))
    try:
        yield ledger
    finally:
        ledger.close()


@dataclass
class AuditRun:
    """One audit: the federation, the report, the round views, and what the auditor's own
    federation file says about the recorded policy."""

    federation: str
    report: Any
    views: list[Any] = field(default_factory=list)

    def policy_summary(self) -> dict[str, Any]:
        """The recorded data schema, initial model and validation digests, hold-out share,
        scorer, aggregation rule and the training every participant had to sign."""
        policy = self.report.policy
        if policy is None:
            return {}
        return {"data_schema_digest": policy.data_schema_digest, "initial_model": policy.model,
                "validation_digest": policy.validation_digest, "eval_fraction_ppm": policy.eval_fraction_ppm,
                "scorer": policy.scorer.model_dump(mode="json"), "aggregation": policy.aggregation,
                "aggregation_params": policy.aggregation_params,
                "training": policy.training.model_dump(mode="json")}

    def evaluations(self) -> dict[int, dict[str, Any]]:
        """Per round: each institution's signed hold-out metrics, whether the auditor verified
        its signature, and the examples-weighted federated mean (all in millionths)."""
        table: dict[int, dict[str, Any]] = {}
        verified = self.report.evaluation_verified
        for view in self.views:
            if view.evaluation is None:
                continue
            per = {
                e.participant: {"accuracy_ppm": e.accuracy_ppm, "auc_ppm": e.auc_ppm,
                                "log_loss_ppm": e.log_loss_ppm, "examples": e.num_examples,
                                "signature_verified": verified.get(view.round, {}).get(e.participant, False)}
                for e in view.evaluation.accepted()
            }
            rejected = {e.participant: e.reason for e in view.evaluation.entries if e.status == "rejected"}
            table[view.round] = {"institutions": per, "rejected": rejected, "mean": view.evaluation.mean_ppm()}
        return table


def run_audit(cfg: FederationConfig, pins: Sequence[str] = (), *, with_views: bool = False) -> AuditRun:
    """Audit the federation as its auditor: signatures, digests, aggregates, scores,
    rewards and the ledger's integrity (``pins``: ``BLOCK:HASH`` of earlier heads).

    When the auditor's own federation file declares a data schema, the schema recorded in
    the policy must be that one: otherwise the rounds were trained on data read in a way
    this auditor never agreed to, and that is a problem of the audit.
    """
    from ledger.artifacts import ArtifactStore
    from ledger.audit import audit_federation, backend_integrity

    with open_as(cfg, auditor_credentials) as ledger:
        report = audit_federation(ledger, cfg.id, ArtifactStore(cfg.artifacts_path),
                                  backend_integrity(ledger, list(pins)))
        views = ledger.list_rounds(cfg.id) if with_views else []
    policy = report.policy
    if cfg.data is not None and policy is not None and policy.data_schema_digest != cfg.data.digest():
        report.problems.append(
            f"the ledger's data schema {policy.data_schema_digest} is not the one declared in this "
            f"federation file ({cfg.data.digest()})")
    return AuditRun(cfg.id, report, views)


def round_view(cfg: FederationConfig, number: int) -> dict[str, Any]:
    """One round as recorded on the ledger, read as the auditor."""
    with open_as(cfg, auditor_credentials) as ledger:
        return ledger.get_round(cfg.id, number).model_dump(mode="json")


def participant_view(cfg: FederationConfig, participant: str) -> dict[str, Any]:
    """A participant's registration (without its certificate), history and balance."""
    with open_as(cfg, auditor_credentials) as ledger:
        record = ledger.participant(cfg.id, participant)
        history = ledger.history(cfg.id, participant)
        balance = ledger.balance(cfg.id, participant)
    return {
        "participant": record.model_dump(mode="json", exclude={"cert_pem"}),
        "history": [{"tx_id": h.tx_id, "timestamp_ms": h.timestamp_ms,
                     "status": h.value.status if h.value else None} for h in history],
        "balance": balance,
    }


def balances(cfg: FederationConfig) -> dict[str, int]:
    """Every participant's token balance, read as the auditor."""
    with open_as(cfg, auditor_credentials) as ledger:
        return {p.id: ledger.balance(cfg.id, p.id) for p in ledger.participants(cfg.id)}


def issue_rewards(cfg: FederationConfig) -> list[dict[str, Any]]:
    """Coordinator: issue rewards for every committed round that has none (idempotent)."""
    from fl.onboarding import coordinator_credentials
    from ledger.incentives import issue_pending_rewards

    with open_as(cfg, coordinator_credentials) as ledger:
        issued = issue_pending_rewards(ledger, cfg.id)
    return [{"round": i.round, "rewards": i.rewards, "tx_id": i.receipt.tx_id} for i in issued]


# --- an institution's statement, the token books, evidence bundles -----------------------

TRANSFERS_NOTE = ("tokens move between participants by Transfer, which the round records do not show: "
                  "a balance differs from the rewards earned by the transfers in and out")


def _state_at(history: Sequence[HistoryEntry], moment_ms: int) -> Participant | None:
    """A participant's record as it stood at ``moment_ms`` (None: not registered yet)."""
    state = None
    for change in history:
        if change.timestamp_ms <= moment_ms:
            state = change.value
    return state


def _first(history: Sequence[HistoryEntry], status: str) -> dict[str, Any] | None:
    change = next((h for h in history if h.value is not None and h.value.status == status), None)
    return None if change is None else {"timestamp_ms": change.timestamp_ms, "tx_id": change.tx_id}


def _round_line(view: RoundView, participant: str) -> dict[str, Any]:
    """One round of a participant's statement: its entries, weight, tokens, evaluation."""
    entries = [e for e in view.record.entries if e.participant == participant]
    weights = view.commit.weights if view.commit is not None else {}
    total = sum(weights.values())
    weight = weights.get(participant)
    evaluation = None
    if view.evaluation is not None:
        mine = [e for e in view.evaluation.entries if e.participant == participant]
        evaluation = [{"status": e.status, "reason": e.reason, "detail": e.detail, "examples": e.num_examples,
                       "accuracy_ppm": e.accuracy_ppm, "auc_ppm": e.auc_ppm, "log_loss_ppm": e.log_loss_ppm}
                      for e in mine] or None
    return {
        "round": view.round,
        "status": "accepted" if any(e.status == "accepted" for e in entries) else "rejected",
        "entries": [{"status": e.status, "reason": e.reason, "detail": e.detail, "score_ppm": e.score_ppm,
                     "score": None if e.score_ppm is None else e.score_ppm / 1e6, "num_examples": e.num_examples,
                     "update": e.update, "epsilon_ppm": e.epsilon_ppm} for e in entries],
        "weight": weight,
        "weight_share_ppm": None if weight is None or total <= 0 else weight * 1_000_000 // total,
        "tokens": None if view.rewards is None else view.rewards.get(participant, 0),
        "evaluation": evaluation,
        "record_tx": view.record_tx.tx_id,
        "commit_tx": view.commit_tx.tx_id if view.commit_tx is not None else None,
        "rewards_tx": view.rewards_tx.tx_id if view.rewards_tx is not None else None,
    }


def participant_statement(ledger: Ledger, federation: str, participant: str) -> dict[str, Any]:
    """A participant's statement from ``ledger`` (a live one or an evidence bundle's):
    registration, admission and revocation; every round it sent something in (accepted
    or rejected: status, reason, score, FedAvg weight, tokens, signed evaluation) and the
    rounds it was active in but absent from; totals and its balance.

    RecordNotFound when ``participant`` is not registered."""
    record = ledger.participant(federation, participant)
    history = ledger.history(federation, participant)
    revoked = _first(history, "revoked")
    if revoked is not None:
        # The contract puts the reason in the ParticipantRevoked event, not in the record.
        revoked["reason"] = None
        revoked["reason_note"] = ("the reason is in the ParticipantRevoked event, which the ledger's "
                                  "queries do not return")
    rounds: list[dict[str, Any]] = []
    for view in ledger.list_rounds(federation):
        if any(e.participant == participant for e in view.record.entries):
            rounds.append(_round_line(view, participant))
            continue
        state = _state_at(history, view.record_tx.timestamp_ms)
        if state is not None and state.status == "active":
            rounds.append({"round": view.round, "status": "absent", "entries": [], "weight": None,
                           "weight_share_ppm": None, "tokens": None if view.rewards is None else 0,
                           "evaluation": None, "record_tx": view.record_tx.tx_id})
    rejected = Counter(e["reason"] for r in rounds for e in r["entries"] if e["status"] == "rejected")
    earned = sum(r["tokens"] or 0 for r in rounds)
    balance = ledger.balance(federation, participant)
    return {
        "federation": federation,
        "participant": participant,
        "msp_id": record.msp_id,
        "status": record.status,
        "registration": {"msp_id": record.msp_id, "declared_examples": record.declared_examples,
                         "registered_ms": record.registered_ms,
                         "tx_id": history[0].tx_id if history else None, "meta": record.meta},
        "admission": _first(history, "active"),
        "revocation": revoked,
        "changes": [{"timestamp_ms": h.timestamp_ms, "tx_id": h.tx_id,
                     "status": h.value.status if h.value is not None else None} for h in history],
        "rounds": rounds,
        "totals": {
            "rounds_joined": sum(1 for r in rounds if r["status"] != "absent"),
            "accepted": sum(1 for r in rounds if r["status"] == "accepted"),
            "rejected": sum(1 for r in rounds if r["status"] == "rejected"),
            "rejected_by_reason": dict(sorted(rejected.items())),
            "absent": sum(1 for r in rounds if r["status"] == "absent"),
            "tokens_earned": earned,
            "balance": balance,
            "transfers_net": balance - earned,
        },
        "note": TRANSFERS_NOTE,
    }


def balance_sheet(ledger: Ledger, federation: str) -> dict[str, Any]:
    """Every participant's balance against the rewards its rounds issued it (the
    difference is transfers), and the total supply against the rewards ever issued
    (:func:`ledger.tokens.check_token_supply`)."""
    from ledger.tokens import check_token_supply

    participants = [p.id for p in ledger.participants(federation)]
    rounds = ledger.list_rounds(federation)
    earned: Counter[str] = Counter()
    for view in rounds:
        for pid, units in (view.rewards or {}).items():
            if units > 0:
                earned[pid] += units
    rows = {}
    for pid in participants:
        balance = ledger.balance(federation, pid)
        rows[pid] = {"balance": balance, "earned": earned.get(pid, 0), "transfers_net": balance - earned.get(pid, 0)}
    problems = check_token_supply(ledger, federation, rounds, participants)
    return {
        "federation": federation,
        "participants": rows,
        "supply": sum(r["balance"] for r in rows.values()),
        "issued": sum(earned.values()),
        "rounds_rewarded": sum(1 for v in rounds if v.rewards is not None),
        "ok": not problems,
        "problems": problems,
        "note": TRANSFERS_NOTE,
    }


def audit_history(cfg: FederationConfig, participant: str) -> dict[str, Any]:
    """:func:`participant_statement`, read as the auditor."""
    with open_as(cfg, auditor_credentials) as ledger:
        return participant_statement(ledger, cfg.id, participant)


def audit_balances(cfg: FederationConfig) -> dict[str, Any]:
    """:func:`balance_sheet`, read as the auditor."""
    with open_as(cfg, auditor_credentials) as ledger:
        return balance_sheet(ledger, cfg.id)


def export_bundle(cfg: FederationConfig, out: Path, rounds: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the full audit as the auditor, then write the evidence bundle of ``rounds``
    (default: all) to ``out`` with the audit's result, head and proven transactions
    (:func:`ledger.bundle.write_bundle`). The bundle is written even when the audit
    finds problems: they are evidence too, and ``audit`` says so."""
    from ledger.artifacts import ArtifactStore
    from ledger.audit import audit_federation, backend_integrity
    from ledger.bundle import write_bundle

    with open_as(cfg, auditor_credentials) as ledger:
        store = ArtifactStore(cfg.artifacts_path)
        report = audit_federation(ledger, cfg.id, store, backend_integrity(ledger))
        policy = report.policy
        if cfg.data is not None and policy is not None and policy.data_schema_digest != cfg.data.digest():
            report.problems.append(
                f"the ledger's data schema {policy.data_schema_digest} is not the one declared in this "
                f"federation file ({cfg.data.digest()})")
        result = write_bundle(ledger, cfg.id, store, Path(out), report, rounds=rounds)
    return {**result.to_json(), "audit": report.to_json()}


def verify_bundle_file(path: Path) -> tuple[AuditRun, BundleVerification]:
    """The offline audit of an evidence bundle (:func:`ledger.bundle.verify_bundle`):
    no federation file, no ledger, no network."""
    from ledger.bundle import verify_bundle

    check = verify_bundle(Path(path))
    return AuditRun(str(check.manifest["federation"]), check.report, list(check.views)), check
