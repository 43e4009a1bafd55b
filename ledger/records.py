"""Typed, frozen records exchanged with the ledger (the values of the ``fedaudit`` state).

Each record serialises through :func:`ledger.formats.canonical_json` via
:meth:`Record.canonical`, and parses strictly (unknown fields are refused), so the bytes a
backend writes are the bytes an auditor reads back and hashes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ledger.formats import ID_PATTERN, MAX_LOG_LOSS_PPM, MAX_MANIFEST_BYTES, MAX_SIGNATURE_B64, PPM, canonical_json

__all__ = [
    "REASONS",
    "Record",
    "Identity",
    "TxReceipt",
    "ScorerSpec",
    "PrivacyPolicy",
    "TrainingPolicy",
    "FederationPolicy",
    "Federation",
    "OrgCA",
    "Participant",
    "ParticipantStatus",
    "RoundEntry",
    "RoundRecord",
    "ModelCommit",
    "EVALUATION_REASONS",
    "EvaluationEntry",
    "EvaluationRecord",
    "RoundView",
    "HistoryEntry",
]

# Rejection reasons, in the order the coordinator checks them (DESIGN §4). Stable strings.
REASONS: tuple[str, ...] = (
    "no_reply",
    "reply_error",
    "malformed",
    "examples_over_declared",
    "wrong_federation",
    "wrong_round",
    "wrong_base_model",
    "unknown_participant",
    "not_admitted",
    "revoked",
    "cert_expired",
    "node_mismatch",
    "digest_mismatch",
    "bad_signature",
    "high_s",
    "duplicate",
    "training_mismatch",
    "bad_privacy_claim",
    "privacy_budget_exceeded",
    "bad_compression",
    "non_finite",
    "wrong_shape",
    "no_training",
    "copied_update",
    "outlier",
    "robust_discarded",
)

ParticipantStatus = Literal["pending", "active", "revoked"]
_HEX64 = r"^[0-9a-f]{64}$"


class Record(BaseModel):
    """Base of every ledger record: frozen, strict about fields, canonical on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def canonical(self) -> bytes:
        """Canonical JSON bytes of this record (what is stored and hashed)."""
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def parse(cls, data: str | bytes | dict[str, Any]):  # type: ignore[no-untyped-def]
        """Parse a record from canonical JSON (or an already decoded dict)."""
        if isinstance(data, dict):
            return cls.model_validate(data)
        return cls.model_validate_json(data)


def _check_id(value: str) -> str:
    if ID_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{value!r} must match [a-z0-9][a-z0-9-]{{0,63}}")
    return value


class Identity(Record):
    """Who calls the ledger: an MSP id and the caller's X.509 certificate (PEM)."""

    msp_id: str = Field(min_length=1)
    cert_pem: str = Field(min_length=1)


class TxReceipt(Record):
    """Proof of a committed write: transaction id and the block that holds it."""

    tx_id: str
    block_number: int = Field(ge=0)
    timestamp_ms: int = Field(ge=0)


class ScorerSpec(Record):
    """How contribution scores were computed, so an auditor can recompute them."""

    name: str = "cosine"
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    validation_digest: str | None = None


class PrivacyPolicy(Record):
    """Differential privacy every participant's local training must meet (DP-SGD).

    Each round a participant signs the ε its accountant computed for that round; the
    coordinator (and the contract, and the auditor) refuse a claim above
    ``epsilon_round_ppm`` or one that would take the participant's sum over its accepted
    rounds above ``epsilon_total_ppm`` (basic composition: a valid upper bound). The
    clipping norm and δ are fixed by the policy.
    """

    epsilon_round_ppm: int = Field(gt=0, le=10**12)
    epsilon_total_ppm: int = Field(gt=0, le=10**15)
    delta_ppb: int = Field(ge=1, le=10**9 - 1)
    max_grad_norm_ppm: int = Field(gt=0, le=10**12)


class TrainingPolicy(Record):
    """How every participant must train and send its update (its signed training claim,
    manifest version 2, must say exactly this). The default is what policies written
    before training claims meant: plain FedAvg, uncompressed, no DP."""

    algorithm: Literal["fedavg", "fedprox"] = "fedavg"
    # FedProx's proximal coefficient μ in millionths (0 with plain FedAvg).
    mu_ppm: int = Field(default=0, ge=0, le=10**12)
    compression: Literal["none", "int8"] = "none"
    dp: PrivacyPolicy | None = None


class FederationPolicy(Record):
    """The rules a federation is created with (``InitFederation``'s ``policy``)."""

    auditor_msps: list[str] = Field(default_factory=list)
    reward_budget: int = Field(default=1000, ge=0)
    # Upper bound on a participant's self-reported num_examples (its FedAvg weight).
    max_num_examples: int = Field(default=1_000_000, ge=1)
    scorer: ScorerSpec = Field(default_factory=ScorerSpec)
    aggregation: str = "fedavg"
    # The aggregation rule's integer parameters (ledger.aggregate.check_params).
    aggregation_params: dict[str, int] = Field(default_factory=dict)
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
    data_schema_digest: str | None = None
    model: str = ""
    # SHA-256 of the coordinator's optional validation file (None: it has none).
    validation_digest: str | None = None
    # The share of each institution's rows held out for federated evaluation, in
    # millionths; 0 turns federated evaluation off. Part of the policy so that every
    # institution and the auditor derive the same split.
    eval_fraction_ppm: int = Field(default=200_000, ge=0, le=900_000)
    # The most of a round's FedAvg weight one participant may carry, in millionths; the
    # largest signed counts are lowered to fit (ledger.aggregate.capped_weights). The
    # default, no cap, is what policies written before the cap meant.
    max_weight_share_ppm: int = Field(default=PPM, ge=1, le=PPM)
    # The outlier test (ledger.robustness): an update is rejected when its change is more
    # than this many millionths of the reference change (the median of the others'), …
    outlier_norm_ratio_ppm: int = Field(default=10 * PPM, gt=PPM, le=1_000 * PPM)
    # … or when it claims more than this many millionths of the others' median examples.
    outlier_weight_ratio_ppm: int = Field(default=10 * PPM, gt=PPM, le=1_000_000 * PPM)
    # Free riding (ledger.copies): an update whose change is at most this many millionths
    # of the base model's norm is ``no_training``; one whose change has a cosine of at
    # least this many millionths with another's change, or with the previous round's
    # global change, is ``copied_update``. None: the check is off (older policies).
    no_training_ppm: int | None = Field(default=None, ge=0, le=PPM)
    copy_cosine_ppm: int | None = Field(default=None, gt=0, le=PPM)


class Federation(Record):
    """A federation as stored by ``InitFederation``."""

    id: str
    coordinator_msp: str
    policy: FederationPolicy
    created_ms: int
    created_tx: str

    _id = field_validator("id")(_check_id)


class Participant(Record):
    """An institution's registration: its signing certificate, admission status and the
    dataset size it declared in a statement signed with the certificate's key
    (``declared_examples``; ``None`` only on records written before declarations)."""

    federation: str
    id: str
    msp_id: str
    cert_pem: str
    status: ParticipantStatus
    meta: dict[str, Any] = Field(default_factory=dict)
    registered_ms: int
    updated_ms: int
    updated_tx: str
    declared_examples: int | None = Field(default=None, ge=1)
    declaration: str | None = None
    declaration_signature: str | None = None

    _id = field_validator("id")(_check_id)


class OrgCA(Record):
    """The CA certificate an organisation registered in a federation: it must have signed
    every participant certificate the organisation registers."""

    federation: str
    msp_id: str
    ca_cert_pem: str
    registered_ms: int
    registered_tx: str


class RoundEntry(Record):
    """One reply in a round: accepted with its score, or rejected with its reason.

    ``participant`` is the id the reply claimed (evidence, even when it is unknown);
    ``node`` names the transport-level sender (Flower node id or name) when known.
    """

    participant: str = Field(max_length=128)
    status: Literal["accepted", "rejected"]
    reason: str | None = None
    detail: str | None = Field(default=None, max_length=512)
    node: str | None = Field(default=None, max_length=64)
    manifest: str | None = Field(default=None, max_length=MAX_MANIFEST_BYTES)
    manifest_hash: str | None = Field(default=None, pattern=_HEX64)
    signature: str | None = Field(default=None, max_length=MAX_SIGNATURE_B64)
    update: str | None = Field(default=None, pattern=_HEX64)
    num_examples: int | None = Field(default=None, ge=0)
    score_ppm: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    # The ε of this round the participant signed (DP on), in millionths.
    epsilon_ppm: int | None = None

    @field_validator("reason")
    @classmethod
    def _known_reason(cls, value: str | None) -> str | None:
        if value is not None and value not in REASONS:
            raise ValueError(f"unknown rejection reason {value!r}")
        return value


class RoundRecord(Record):
    """``RecordRound``'s record: every reply of the round, before aggregation."""

    round: int = Field(ge=1)
    base_model: str = Field(pattern=_HEX64)
    scorer: ScorerSpec
    entries: list[RoundEntry]

    def accepted(self) -> list[RoundEntry]:
        """Accepted entries, sorted by participant id (the aggregation order)."""
        return sorted(
            (e for e in self.entries if e.status == "accepted"), key=lambda e: e.participant
        )


class ModelCommit(Record):
    """``CommitModel``'s record: the new global model and how it was made."""

    round: int = Field(ge=1)
    base_model: str = Field(pattern=_HEX64)
    model: str = Field(pattern=_HEX64)
    accepted: list[str]
    weights: dict[str, int]
    aggregation: str = "fedavg"


# Why an evaluation reply was not counted, in the order the coordinator checks (stable strings).
EVALUATION_REASONS: tuple[str, ...] = (
    "no_reply",
    "reply_error",
    "malformed",
    "wrong_federation",
    "wrong_round",
    "wrong_model",
    "unknown_participant",
    "not_admitted",
    "revoked",
    "cert_expired",
    "node_mismatch",
    "bad_signature",
    "high_s",
    "duplicate",
)


class EvaluationEntry(Record):
    """One institution's evaluation of a round's committed model, or why it was not counted.

    Metrics are integers in millionths, exactly as signed in ``manifest``
    (:class:`~ledger.formats.EvaluationManifest`); ``auc_ppm`` is None when the hold-out
    held a single class.
    """

    participant: str = Field(max_length=128)
    status: Literal["accepted", "rejected"]
    reason: str | None = None
    detail: str | None = Field(default=None, max_length=512)
    node: str | None = Field(default=None, max_length=64)
    manifest: str | None = Field(default=None, max_length=MAX_MANIFEST_BYTES)
    manifest_hash: str | None = Field(default=None, pattern=_HEX64)
    signature: str | None = Field(default=None, max_length=MAX_SIGNATURE_B64)
    num_examples: int | None = Field(default=None, ge=0)
    accuracy_ppm: int | None = Field(default=None, ge=0, le=PPM)
    auc_ppm: int | None = Field(default=None, ge=0, le=PPM)
    log_loss_ppm: int | None = Field(default=None, ge=0, le=MAX_LOG_LOSS_PPM)

    @field_validator("reason")
    @classmethod
    def _known_reason(cls, value: str | None) -> str | None:
        if value is not None and value not in EVALUATION_REASONS:
            raise ValueError(f"unknown evaluation rejection reason {value!r}")
        return value


class EvaluationRecord(Record):
    """``RecordEvaluation``'s record: every evaluation reply about one round's committed model."""

    round: int = Field(ge=1)
    model: str = Field(pattern=_HEX64)
    entries: list[EvaluationEntry]

    def accepted(self) -> list[EvaluationEntry]:
        """Accepted entries, sorted by participant id."""
        return sorted((e for e in self.entries if e.status == "accepted"), key=lambda e: e.participant)

    def mean_ppm(self) -> dict[str, int | None]:
        """The examples-weighted federated mean of the accepted entries, in millionths.

        Integer arithmetic (rounded half up), so every auditor gets the same numbers;
        AUC is averaged over the entries that have one. ``examples`` is the total.
        """
        chosen = self.accepted()
        result: dict[str, int | None] = {"examples": sum(e.num_examples or 0 for e in chosen)}
        for name in ("accuracy_ppm", "auc_ppm", "log_loss_ppm"):
            pairs = [(getattr(e, name), e.num_examples or 0) for e in chosen if getattr(e, name) is not None]
            total = sum(n for _, n in pairs)
            result[name] = None if total == 0 else (2 * sum(v * n for v, n in pairs) + total) // (2 * total)
        return result


class RoundView(Record):
    """A round as an auditor sees it: record, commit, evaluation and rewards with their receipts.

    ``evaluation`` is None for a round whose committed model was never evaluated (rounds
    before federated evaluation existed, or a coordinator that stopped before recording it).
    """

    federation: str
    round: int
    record: RoundRecord
    record_tx: TxReceipt
    commit: ModelCommit | None = None
    commit_tx: TxReceipt | None = None
    rewards: dict[str, int] | None = None
    rewards_tx: TxReceipt | None = None
    evaluation: EvaluationRecord | None = None
    evaluation_tx: TxReceipt | None = None


class HistoryEntry(Record):
    """One change of a participant's state (``ParticipantHistory``)."""

    tx_id: str
    timestamp_ms: int
    value: Participant | None
