"""The audit layer around Flower's FedAvg (DESIGN §4).

``AuditedFedAvg`` keeps Flower's sampling and message construction, and replaces
aggregation with the audited round:

verify each reply → score accepted updates → store them → ``RecordRound`` (wait for the
commit) → the policy's deterministic aggregation rule → store the new model →
``CommitModel`` → release.

Any ledger failure raises :class:`RoundFailed` out of ``aggregate_train``: Flower's
strategy loop does not catch it, so the run stops without a new model (fail closed), and
a restarted coordinator resumes from the ledger (:mod:`fl.resume`).

Federated evaluation follows every commit: ``configure_evaluate`` sends the committed
model to the nodes the round was sent to, each institution evaluates it on its hold-out
and signs the metrics, and ``aggregate_evaluate`` verifies the replies and records all of
them with one ``RecordEvaluation`` (a round nobody answers records an empty evaluation).
A failed write raises :class:`RoundFailed` too. The round's summary (``on_round``, the
rounds log) is written once its evaluation is on the ledger, so it carries the metrics.
A coordinator stopped between ``CommitModel`` and ``RecordEvaluation`` resumes from the
committed model; that round keeps no evaluation (the contract refuses one once the next
round is recorded: evaluations are not back-filled) and has no line in the rounds log —
the ledger is the record of it.

Every rejected reply leaves its evidence like an accepted one: the signed manifest and
signature go into the round record, and its tensors, where they decode within a bound
(``max_evidence_bytes``), into the artifact store — a ``digest_mismatch`` entry names the
received tensors' digest in its ``detail`` — so an auditor can decide every rejection
again (:mod:`ledger.audit_rejections`). After ``RecordRound`` commits, each node whose
reply was decided gets a receipt signed by the coordinator's ledger identity
(:mod:`ledger.receipts`) with the next message it is sent: the evaluate message of the
same round, or the next round's train message when there is no evaluation.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl.deploy.binding import NodeDirectory, active_only
from fl.evaluation import EVAL_FRACTION_KEY
from fl.records import to_arrays, to_record
from fl.signing import AUDIT_KEY
from fl.verification import (
    EvaluationContext,
    KeyCache,
    NpyVersionError,
    RoundContext,
    entry_order,
    evaluation_order,
    npy_header,
    verify_evaluations,
    verify_round,
)
from ledger.admission import privacy_spent
from ledger.aggregate import AGGREGATORS
from ledger.artifacts import ArtifactError, ArtifactStore
from ledger.audit_rejections import mismatch_detail
from ledger.errors import LedgerError
from ledger.identity import Credentials
from ledger.protocol import Ledger
from ledger.formats import PPM, update_digest
from ledger.receipts import RECEIPT_RECORD, ReceiptError, SignedReceipt, round_receipts
from ledger.records import (
    EvaluationEntry,
    EvaluationRecord,
    FederationPolicy,
    ModelCommit,
    RoundEntry,
    RoundRecord,
    ScorerSpec,
)
from ledger.robustness import previous_base
from ledger.scoring import SCORERS, ScorerError, score_round
from ledger.utility import ValidationSet

__all__ = ["AuditedFedAvg", "RoundFailed", "RoundSummary", "RECEIPT_KEY"]

RECEIPT_KEY = RECEIPT_RECORD  # the ConfigRecord carrying a node's signed receipt

log = structlog.get_logger("fedledger.coordinator")


class RoundFailed(RuntimeError):
    """The ledger did not commit a round's record or model: nothing was released."""


@dataclass
class RoundSummary:
    """What the coordinator reports for one committed round."""

    round: int
    base_model: str
    model: str
    accepted: list[str]
    rejected: list[dict[str, str | None]]
    scores: dict[str, int]
    record_tx: str
    record_block: int
    commit_tx: str
    commit_block: int
    seconds: float  # from sending the global model to the commit of the new one
    ledger_seconds: float  # of which: waiting for RecordRound and CommitModel
    aggregate_seconds: float = 0.0  # of which: in aggregate_train (verify, score, record, commit)
    metrics: dict[str, float] = field(default_factory=dict)
    # Federated evaluation of ``model`` on each institution's hold-out (signed, on the ledger):
    # {participant: {accuracy, auc, log_loss, examples}}, and the examples-weighted mean.
    evaluation: dict[str, dict[str, float | int | None]] | None = None
    evaluation_mean: dict[str, float | int | None] | None = None
    evaluation_rejected: list[dict[str, str | None]] = field(default_factory=list)
    evaluation_tx: str | None = None
    evaluation_block: int | None = None
    evaluation_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return dict(self.__dict__)


class AuditedFedAvg(FedAvg):
    """FedAvg that aggregates only what was verified and committed to the ledger first."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        artifacts: ArtifactStore,
        federation: str,
        train_settings: Mapping[str, Any],
        round_offset: int = 0,
        expected_nodes: int = 2,
        node_owner: Callable[[str], str | None] | None = None,
        node_directory: NodeDirectory | None = None,
        evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None,
        on_round: Callable[[RoundSummary], None] | None = None,
        max_norm_ratio: float = 10.0,
        scorer: ScorerSpec | None = None,
        aggregation: str | None = None,
        max_num_examples: int = 1_000_000,
        eval_fraction_ppm: int | None = None,
        receipts: Credentials | None = None,
        max_evidence_bytes: int | None = None,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=expected_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=expected_nodes,
        )
        self.ledger = ledger
        self.artifacts = artifacts
        self.federation = federation
        self.train_settings = dict(train_settings)
        self.round_offset = round_offset
        self.quorum = expected_nodes
        # Deployment: replies are bound to the participant owning the node's key, and
        # rounds go only to nodes of active participants (fl.deploy.binding).
        self.node_directory = node_directory
        self.node_owner = node_directory.owner if node_directory is not None else node_owner
        self.evaluate = evaluate
        self.on_round = on_round
        self.max_norm_ratio = max_norm_ratio
        # The scorer and the aggregation rule are the policy's (read from the ledger on first
        # use) unless given; given ones must be known.
        if scorer is not None and scorer.name not in SCORERS:
            raise ValueError(f"unknown scorer {scorer.name!r} (known: {', '.join(SCORERS)})")
        if aggregation is not None and aggregation not in AGGREGATORS:
            raise ValueError(f"unknown aggregation {aggregation!r} (known: {', '.join(AGGREGATORS)})")
        self._scorer, self._aggregation = scorer, aggregation
        self.max_num_examples = max_num_examples
        self.keys = KeyCache()
        self.summaries: list[RoundSummary] = []
        self._base: dict[int, tuple[str, dict[str, np.ndarray]]] = {}
        self._round_started = 0.0
        self._sent: set[str] = set()  # nodes the current round was sent to
        self._sent_ids: list[int] = []
        # The hold-out share, in millionths (None: the federation policy's, read once).
        self._eval_fraction_ppm = eval_fraction_ppm
        self._pending: RoundSummary | None = None  # committed, its evaluation not yet recorded
        self._policy: FederationPolicy | None = None
        self._validation_set: ValidationSet | None = None
        self._spent: dict[str, int] | None = None  # ε per participant (DP on), once read
        # Who signs receipts (the coordinator's ledger identity; None: no receipts), and
        # the receipts not yet delivered, by node id.
        self.receipts = receipts
        self._receipts: dict[str, SignedReceipt] = {}
        # A rejected reply's tensors are kept only up to this many bytes (None: four
        # times the global model's size, at least 1 MiB), so no reply can fill the store.
        self.max_evidence_bytes = max_evidence_bytes

    @property
    def scorer(self) -> ScorerSpec:
        """The contribution scorer: as given, else the federation policy's."""
        return self._scorer if self._scorer is not None else self.policy().scorer

    @property
    def aggregation(self) -> str:
        """The aggregation rule: as given, else the federation policy's."""
        return self._aggregation if self._aggregation is not None else self.policy().aggregation

    def ledger_round(self, server_round: int) -> int:
        """The federation's round number for Flower's ``server_round`` (after a resume)."""
        return self.round_offset + server_round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model with the federation, round and training settings.

        The quorum shrinks with revocations (a revoked institution's node is never
        waited for), and with node binding only active participants' nodes are asked.
        """
        config = ConfigRecord({**dict(config), **self.begin_round(server_round, to_arrays(arrays))})
        try:
            participants = self.ledger.participants(self.federation)
        except LedgerError as exc:
            raise RoundFailed(f"round {self.ledger_round(server_round)}: cannot read participants: {exc}") from exc
        active = sum(1 for p in participants if p.status == "active")
        if active == 0:
            raise RoundFailed(f"round {self.ledger_round(server_round)}: no participant is active")
        self.min_train_nodes = self.min_available_nodes = min(self.quorum, active)
        # Sampling first: it waits for nodes, and nodes that connect meanwhile must be known.
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.node_directory is None:
            self._sent = {str(m.metadata.dst_node_id) for m in messages}
            self._sent_ids = [m.metadata.dst_node_id for m in messages]
            return self._with_receipts(messages)
        self.node_directory.update(grid.get_nodes(), participants)
        chosen = active_only(messages, self.node_directory, participants)
        if not chosen:
            raise RoundFailed(f"round {self.ledger_round(server_round)}: no node of an active participant")
        log.info("round_sent", round=self.ledger_round(server_round), nodes=len(chosen),
                 skipped=len(messages) - len(chosen))
        self._sent = {str(m.metadata.dst_node_id) for m in chosen}
        self._sent_ids = [m.metadata.dst_node_id for m in chosen]
        return self._with_receipts(chosen)

    def begin_round(self, server_round: int, base_arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Remember the round's global model; return the config every participant gets."""
        self._round_started = time.perf_counter()
        self._sent = set()
        # Stored (content-addressed, idempotent) so an auditor can recompute from it.
        base_model = self.artifacts.put(base_arrays)
        self._base = {server_round: (base_model, base_arrays)}
        round_no = self.ledger_round(server_round)
        log.info("round_started", round=round_no, base_model=base_model)
        # Clients train only on what they do not hold out for evaluation.
        return {"federation": self.federation, "round": round_no, "base-model": base_model,
                **self.train_settings, EVAL_FRACTION_KEY: self.eval_fraction_ppm(round_no) / PPM}

    def policy(self, round_no: int = 0) -> FederationPolicy:
        """The federation's on-ledger policy (read once)."""
        if self._policy is None:
            try:
                self._policy = self.ledger.get_federation(self.federation).policy
            except LedgerError as exc:
                raise RoundFailed(f"round {round_no}: cannot read the federation policy: {exc}") from exc
        return self._policy

    def _previous_base(self, round_no: int) -> dict[str, np.ndarray] | None:
        """G_{r-1}, the model the previous round trained from (None in round 1), as the
        ledger and the artifact store hold it — where the auditor takes it from too."""
        try:
            return previous_base(self.ledger, self.federation, round_no, self.artifacts)
        except (LedgerError, ArtifactError) as exc:
            raise RoundFailed(f"round {round_no}: the previous global model cannot be read: {exc}") from exc

    def _privacy_spent(self, round_no: int) -> dict[str, int]:
        """Under DP, the ε each participant's accepted updates signed before this round:
        read from the ledger once, then carried forward with each round this run records."""
        if self.policy(round_no).training.dp is None:
            return {}
        if self._spent is None:
            try:
                self._spent = privacy_spent(self.ledger.list_rounds(self.federation), round_no)
            except LedgerError as exc:
                raise RoundFailed(f"round {round_no}: the privacy spent so far cannot be read: {exc}") from exc
        return dict(self._spent)

    def _spend(self, record: RoundRecord) -> None:
        """Carry a recorded round's accepted ε into the running totals."""
        if self._spent is None:
            return
        for entry in record.accepted():
            if entry.epsilon_ppm is not None:
                self._spent[entry.participant] = self._spent.get(entry.participant, 0) + entry.epsilon_ppm

    def _validation(self, round_no: int) -> ValidationSet | None:
        """The scorer's validation set, from the artifact store by its digest in the policy."""
        digest = self.scorer.validation_digest
        if digest is None:
            return None
        if self._validation_set is None:
            try:
                self._validation_set = ValidationSet.from_arrays(self.artifacts.get(digest))
            except (ArtifactError, ValueError) as exc:
                raise RoundFailed(f"round {round_no}: the scorer's validation set {digest[:16]}… "
                                  f"cannot be read: {exc}") from exc
        return self._validation_set

    def eval_fraction_ppm(self, round_no: int = 0) -> int:
        """The share of rows each institution holds out, in millionths (0: no federated evaluation)."""
        if self._eval_fraction_ppm is None:
            try:
                self._eval_fraction_ppm = self.ledger.get_federation(self.federation).policy.eval_fraction_ppm
            except LedgerError as exc:
                raise RoundFailed(f"round {round_no}: cannot read the federation policy: {exc}") from exc
        return self._eval_fraction_ppm

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the audited round; raise RoundFailed if the ledger does not commit."""
        aggregate_started = time.perf_counter()
        round_no = self.ledger_round(server_round)
        base_model, base_arrays = self._base[server_round]
        replies = list(replies)
        try:
            participants = {p.id: p for p in self.ledger.participants(self.federation)}
        except LedgerError as exc:
            raise RoundFailed(f"round {round_no}: cannot read participants: {exc}") from exc
        previous = self._previous_base(round_no)
        ctx = RoundContext(
            federation=self.federation,
            round=round_no,
            base_model=base_model,
            base_arrays=base_arrays,
            participants=participants,
            node_owner=self.node_owner,
            max_norm_ratio=self.max_norm_ratio,
            max_num_examples=self.max_num_examples,
            # The on-ledger policy, G_{r-1} and the ε spent so far: what the auditor recomputes with.
            policy=self.policy(round_no),
            previous=previous,
            privacy_spent=self._privacy_spent(round_no),
        )
        verdict = verify_round(replies, ctx, self.keys)
        # A node that was asked and never answered leaves evidence too.
        answered = {str(r.metadata.src_node_id) for r in replies}
        for node in sorted(self._sent - answered):
            owner = self.node_owner(node) if self.node_owner is not None else None
            verdict.entries.append(RoundEntry(participant=owner or f"(node {node})"[:128], status="rejected",
                                              reason="no_reply", detail="no reply before the round's timeout",
                                              node=node[:64]))
        verdict.entries.sort(key=entry_order)
        verdict.entries = self._keep_evidence(replies, verdict.entries, base_arrays)
        try:
            scores = score_round(self.scorer, base_arrays, verdict.accepted, previous, self._validation(round_no))
        except ScorerError as exc:
            raise RoundFailed(f"round {round_no}: the contribution scores cannot be computed: {exc}") from exc
        entries = [
            e.model_copy(update={"score_ppm": scores[e.participant]}) if e.status == "accepted" else e
            for e in verdict.entries
        ]
        # Updates are stored before they are recorded, so a coordinator that crashes
        # after RecordRound can still recompute and commit this round on restart.
        self.artifacts.put_many([verdict.sent[update.participant] for update in verdict.accepted])
        record = RoundRecord(round=round_no, base_model=base_model, scorer=self.scorer, entries=entries)
        ledger_started = time.perf_counter()
        try:
            record_rx = self.ledger.record_round(self.federation, round_no, record)
        except LedgerError as exc:
            log.error("round_record_failed", round=round_no, error=str(exc))
            raise RoundFailed(f"round {round_no}: RecordRound was not committed: {exc}") from exc
        ledger_seconds = time.perf_counter() - ledger_started
        log.info("round_recorded", round=round_no, tx_id=record_rx.tx_id, block=record_rx.block_number,
                 accepted=len(verdict.accepted), rejected=len(verdict.rejected()))
        self._sign_receipts(record, record_rx.tx_id)
        self._spend(record)
        new_arrays = (AGGREGATORS[self.aggregation](verdict.accepted, self.policy(round_no).aggregation_params)
                      if verdict.accepted else base_arrays)
        model = self.artifacts.put(new_arrays)
        commit = ModelCommit(
            round=round_no,
            base_model=base_model,
            model=model,
            accepted=[u.participant for u in verdict.accepted],
            weights={u.participant: u.weight for u in verdict.accepted},
            aggregation=self.aggregation,
        )
        ledger_started = time.perf_counter()
        try:
            commit_rx = self.ledger.commit_model(self.federation, round_no, commit)
        except LedgerError as exc:
            log.error("model_commit_failed", round=round_no, error=str(exc))
            raise RoundFailed(f"round {round_no}: CommitModel was not committed: {exc}") from exc
        ledger_seconds += time.perf_counter() - ledger_started
        log.info("model_committed", round=round_no, model=model, tx_id=commit_rx.tx_id)
        summary = RoundSummary(
            round=round_no,
            base_model=base_model,
            model=model,
            accepted=commit.accepted,
            rejected=[{"participant": e.participant, "reason": e.reason, "detail": e.detail}
                      for e in verdict.rejected()],
            scores=scores,
            record_tx=record_rx.tx_id,
            record_block=record_rx.block_number,
            commit_tx=commit_rx.tx_id,
            commit_block=commit_rx.block_number,
            seconds=0.0,
            ledger_seconds=ledger_seconds,
        )
        summary.seconds = time.perf_counter() - self._round_started
        summary.aggregate_seconds = time.perf_counter() - aggregate_started
        if self.evaluate is not None:
            summary.metrics = self.evaluate(new_arrays)
        # The summary object is filled in with its evaluation later; it is reported
        # (``on_round``, the rounds log) once that evaluation is on the ledger.
        self.summaries.append(summary)
        if self.eval_fraction_ppm(round_no) > 0:
            self._pending = summary
        else:
            self._finish(summary)
        total = sum(u.weight for u in verdict.accepted)
        return to_record(new_arrays), MetricRecord({"num-examples": total, **summary.metrics})


    def _finish(self, summary: RoundSummary) -> None:
        if self.on_round is not None:
            self.on_round(summary)

    def _keep_evidence(self, replies: list[Message], entries: list[RoundEntry],
                       base_arrays: Mapping[str, np.ndarray]) -> list[RoundEntry]:
        """Store every rejected reply's tensors (within the bound) in the artifact store;
        a ``digest_mismatch`` entry's detail names the received tensors in full."""
        limit = self.max_evidence_bytes
        if limit is None:
            limit = max(4 * sum(int(np.asarray(a).nbytes) for a in base_arrays.values()), 1 << 20)
        by_reply: dict[tuple[str, str], Message] = {}
        for reply in replies:
            text = _manifest_text(reply)
            if text is not None:
                by_reply.setdefault((str(reply.metadata.src_node_id)[:64], text), reply)
        kept: list[RoundEntry] = []
        evidence: list[dict[str, np.ndarray]] = []
        for entry in entries:
            reply = by_reply.get((entry.node or "", entry.manifest)) if entry.manifest is not None else None
            arrays = _bounded_arrays(reply, limit) if entry.status == "rejected" and reply is not None else None
            if arrays is not None:
                evidence.append(arrays)
                if entry.reason == "digest_mismatch" and entry.update is not None:
                    entry = entry.model_copy(update={"detail": mismatch_detail(update_digest(arrays), entry.update)})
            kept.append(entry)
        self.artifacts.put_many(evidence)
        return kept

    def _sign_receipts(self, record: RoundRecord, record_tx: str) -> None:
        """Sign a receipt for every node with a decided reply, to go out with its next message."""
        self._receipts = {}
        if self.receipts is None:
            return
        try:
            self._receipts = round_receipts(self.federation, record, record_tx, self.receipts)
        except ReceiptError as exc:
            # The round is on the ledger already; a receipt is the institution's extra proof.
            log.error("receipts_not_signed", round=record.round, error=str(exc))
            return
        log.info("receipts_signed", round=record.round, nodes=len(self._receipts))

    def _with_receipts(self, messages: list[Message]) -> list[Message]:
        """Give each message's node its pending receipt (each message gets its own content)."""
        if not self._receipts:
            return messages
        out = []
        for message in messages:
            signed = self._receipts.pop(str(message.metadata.dst_node_id), None)
            if signed is not None:
                content = RecordDict({**dict(message.content),
                                      RECEIPT_KEY: ConfigRecord(signed.model_dump(mode="json"))})
                message = Message(content=content, message_type=message.metadata.message_type,
                                  dst_node_id=message.metadata.dst_node_id)
            out.append(message)
        return out

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the model just committed to the nodes the round went to (node binding holds).

        The config names the federation, the round, the model's digest and how to split
        the hold-out (fraction and seed), so every institution evaluates on the part of its
        data it did not train on.
        """
        pending = self._pending
        if pending is None:
            return []
        content = ConfigRecord({
            **dict(config),
            "federation": self.federation,
            "round": pending.round,
            "model": pending.model,
            EVAL_FRACTION_KEY: self.eval_fraction_ppm(pending.round) / PPM,
            "seed": self.train_settings.get("seed", 0),
            "server-round": server_round,
            **({"data-schema": self.train_settings["data-schema"]} if "data-schema" in self.train_settings else {}),
        })
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: content})
        log.info("evaluation_sent", round=pending.round, model=pending.model, nodes=len(self._sent_ids))
        return self._with_receipts(list(self._construct_messages(record, list(self._sent_ids), MessageType.EVALUATE)))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Verify the signed evaluations, record all of them with one ``RecordEvaluation``,
        then write the round's summary; raise RoundFailed if the ledger does not commit."""
        summary, self._pending = self._pending, None
        if summary is None:
            return None
        replies = list(replies)
        round_no = summary.round
        try:
            participants = {p.id: p for p in self.ledger.participants(self.federation)}
        except LedgerError as exc:
            raise RoundFailed(f"round {round_no}: cannot read participants: {exc}") from exc
        ctx = EvaluationContext(federation=self.federation, round=round_no, model=summary.model,
                                participants=participants, node_owner=self.node_owner,
                                max_num_examples=self.max_num_examples)
        entries = verify_evaluations(replies, ctx, self.keys)
        answered = {str(r.metadata.src_node_id) for r in replies}
        for node in sorted(self._sent - answered):
            owner = self.node_owner(node) if self.node_owner is not None else None
            entries.append(EvaluationEntry(participant=owner or f"(node {node})"[:128], status="rejected",
                                           reason="no_reply", detail="no evaluation before the round's timeout",
                                           node=node[:64]))
        entries.sort(key=evaluation_order)
        record = EvaluationRecord(round=round_no, model=summary.model, entries=entries)
        started = time.perf_counter()
        try:
            receipt = self.ledger.record_evaluation(self.federation, round_no, record)
        except LedgerError as exc:
            log.error("evaluation_record_failed", round=round_no, error=str(exc))
            summary.evaluation_error = f"RecordEvaluation was not committed: {exc}"[:500]
            self._finish(summary)
            raise RoundFailed(f"round {round_no}: RecordEvaluation was not committed: {exc}") from exc
        summary.ledger_seconds += time.perf_counter() - started
        accepted = record.accepted()
        log.info("evaluation_recorded", round=round_no, tx_id=receipt.tx_id, block=receipt.block_number,
                 accepted=len(accepted), rejected=len(entries) - len(accepted))
        summary.evaluation = {e.participant: _metrics(e.accuracy_ppm, e.auc_ppm, e.log_loss_ppm, e.num_examples)
                              for e in accepted}
        mean = record.mean_ppm()
        summary.evaluation_mean = _metrics(mean["accuracy_ppm"], mean["auc_ppm"], mean["log_loss_ppm"],
                                           mean["examples"])
        summary.evaluation_rejected = [{"participant": e.participant, "reason": e.reason, "detail": e.detail}
                                       for e in entries if e.status == "rejected"]
        summary.evaluation_tx, summary.evaluation_block = receipt.tx_id, receipt.block_number
        self._finish(summary)
        return MetricRecord({k: v for k, v in summary.evaluation_mean.items() if v is not None})


def _manifest_text(reply: Message) -> str | None:
    """The audit manifest a reply carries, if it carries one as a string."""
    if reply.has_error():
        return None
    try:
        audit = reply.content[AUDIT_KEY]
        text = audit["manifest"] if isinstance(audit, ConfigRecord) else None
    except (KeyError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _bounded_arrays(reply: Message, limit: int) -> dict[str, np.ndarray] | None:
    """A reply's tensors when they decode and their bytes stay within ``limit``; else None."""
    try:
        records = reply.content.array_records
        if len(records) != 1:
            return None
        record = next(iter(records.values()))
        if sum(len(array.data) for array in record.values()) > limit:
            return None
        arrays = {name: _npy_tensor(array.data) for name, array in record.items()}
    except (KeyError, TypeError, ValueError, AttributeError, EOFError, SyntaxError, UnicodeError):
        return None
    return None if any(a is None for a in arrays.values()) else arrays  # type: ignore[return-value]


def _npy_tensor(data: bytes) -> np.ndarray | None:
    """One ``.npy`` payload whose header's shape matches its data bytes exactly; else None.

    The header is read first: ``np.load`` would allocate whatever shape a header claims.
    """
    try:
        shape, fortran, dtype, offset = npy_header(data)
    except NpyVersionError:
        return None
    if dtype.hasobject or dtype.kind not in "biufc":
        return None
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        return None
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="C")


def _metrics(accuracy: int | None, auc: int | None, log_loss: int | None,
             examples: int | None) -> dict[str, float | int | None]:
    """Signed millionths as the rounds log's floats."""
    def value(ppm: int | None) -> float | None:
        return None if ppm is None else ppm / PPM

    return {"accuracy": value(accuracy), "auc": value(auc), "log_loss": value(log_loss), "examples": examples or 0}


def append_jsonl(path: Path) -> Callable[[RoundSummary], None]:
    """An ``on_round`` callback appending each summary to a JSON-lines file."""

    def write(summary: RoundSummary) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(summary.to_json(), sort_keys=True) + "\n")

    return write
