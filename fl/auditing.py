"""The auditor's and the coordinator's read-and-check services behind ``fedledger audit``,
``report`` and ``rewards`` (the CLI only parses and prints).

Each opens the federation's ledger with the identity the federation file gives the role
(the first auditor organisation, or the coordinator), does one thing and closes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fl.config import FederationConfig
from fl.identities import member_credentials
from ledger.errors import LedgerUnavailable
from ledger.factory import open_ledger
from ledger.identity import Credentials
from ledger.protocol import Ledger

__all__ = ["AuditRun", "open_as", "auditor_credentials", "run_audit", "round_view", "participant_view",
           "balances", "issue_rewards"]


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
        """The recorded data schema, initial model and validation digests, and hold-out share."""
        policy = self.report.policy
        if policy is None:
            return {}
        return {"data_schema_digest": policy.data_schema_digest, "initial_model": policy.model,
                "validation_digest": policy.validation_digest, "eval_fraction_ppm": policy.eval_fraction_ppm}

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
