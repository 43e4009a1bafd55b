"""The audit layer around Flower's FedAvg (DESIGN §4).

``AuditedFedAvg`` keeps Flower's sampling and message construction, and replaces
aggregation with the audited round:

verify each reply → score accepted updates → store them → ``RecordRound`` (wait for the
commit) → deterministic FedAvg → store the new model → ``CommitModel`` → release.

Any ledger failure raises :class:`RoundFailed` out of ``aggregate_train``: Flower's
strategy loop does not catch it, so the run stops without a new model (fail closed), and
a restarted coordinator resumes from the ledger (:mod:`fl.resume`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl.deploy.binding import NodeDirectory, active_only
from fl.records import to_arrays, to_record
from fl.verification import KeyCache, RoundContext, entry_order, verify_round
from ledger.aggregate import AGGREGATORS
from ledger.artifacts import ArtifactStore
from ledger.errors import LedgerError
from ledger.protocol import Ledger
from ledger.records import ModelCommit, RoundEntry, RoundRecord, ScorerSpec
from ledger.scoring import SCORERS

__all__ = ["AuditedFedAvg", "RoundFailed", "RoundSummary"]

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
        aggregation: str = "fedavg",
        max_num_examples: int = 1_000_000,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=expected_nodes,
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
        self.scorer = scorer or ScorerSpec(name="cosine")
        if self.scorer.name not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer.name!r} (known: {', '.join(SCORERS)})")
        if aggregation not in AGGREGATORS:
            raise ValueError(f"unknown aggregation {aggregation!r} (known: {', '.join(AGGREGATORS)})")
        self.aggregation = aggregation
        self.max_num_examples = max_num_examples
        self.keys = KeyCache()
        self.summaries: list[RoundSummary] = []
        self._base: dict[int, tuple[str, dict[str, np.ndarray]]] = {}
        self._round_started = 0.0
        self._sent: set[str] = set()  # nodes the current round was sent to

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
            return messages
        self.node_directory.update(grid.get_nodes(), participants)
        chosen = active_only(messages, self.node_directory, participants)
        if not chosen:
            raise RoundFailed(f"round {self.ledger_round(server_round)}: no node of an active participant")
        log.info("round_sent", round=self.ledger_round(server_round), nodes=len(chosen),
                 skipped=len(messages) - len(chosen))
        self._sent = {str(m.metadata.dst_node_id) for m in chosen}
        return chosen

    def begin_round(self, server_round: int, base_arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Remember the round's global model; return the config every participant gets."""
        self._round_started = time.perf_counter()
        self._sent = set()
        # Stored (content-addressed, idempotent) so an auditor can recompute from it.
        base_model = self.artifacts.put(base_arrays)
        self._base = {server_round: (base_model, base_arrays)}
        round_no = self.ledger_round(server_round)
        log.info("round_started", round=round_no, base_model=base_model)
        return {"federation": self.federation, "round": round_no, "base-model": base_model,
                **self.train_settings}

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
        ctx = RoundContext(
            federation=self.federation,
            round=round_no,
            base_model=base_model,
            base_arrays=base_arrays,
            participants=participants,
            node_owner=self.node_owner,
            max_norm_ratio=self.max_norm_ratio,
            max_num_examples=self.max_num_examples,
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
        scores = SCORERS[self.scorer.name](base_arrays, verdict.accepted)
        entries = [
            e.model_copy(update={"score_ppm": scores[e.participant]}) if e.status == "accepted" else e
            for e in verdict.entries
        ]
        # Updates are stored before they are recorded, so a coordinator that crashes
        # after RecordRound can still recompute and commit this round on restart.
        self.artifacts.put_many([update.arrays for update in verdict.accepted])
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
        new_arrays = AGGREGATORS[self.aggregation](verdict.accepted) if verdict.accepted else base_arrays
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
        self.summaries.append(summary)
        if self.on_round is not None:
            self.on_round(summary)
        total = sum(u.weight for u in verdict.accepted)
        return to_record(new_arrays), MetricRecord({"num-examples": total, **summary.metrics})


def append_jsonl(path: Path) -> Callable[[RoundSummary], None]:
    """An ``on_round`` callback appending each summary to a JSON-lines file."""

    def write(summary: RoundSummary) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(summary.to_json(), sort_keys=True) + "\n")

    return write
