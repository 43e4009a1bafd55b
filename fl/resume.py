"""Where a (re)started coordinator continues: the ledger, not local files, decides.

The last round whose ``CommitModel`` is on the ledger is done. A round recorded but not
committed (the coordinator stopped between the two writes) is completed from the stored
updates, exactly as the auditor would recompute it (decoded from what was sent, weights
capped by the policy, the policy's aggregation rule), and committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import structlog

from ledger.aggregate import AGGREGATORS, WeightedUpdate, capped
from ledger.compression import decompress
from ledger.artifacts import ArtifactStore
from ledger.protocol import Ledger
from ledger.records import ModelCommit

__all__ = ["ResumeError", "ResumeState", "resume"]

log = structlog.get_logger("fedledger.coordinator")


class ResumeError(RuntimeError):
    """The coordinator cannot continue this federation as configured."""


@dataclass(frozen=True)
class ResumeState:
    """Rounds already committed and the global model to continue from."""

    completed: int
    model: str
    arrays: Mapping[str, np.ndarray]


def resume(
    ledger: Ledger, federation: str, artifacts: ArtifactStore, initial: Mapping[str, np.ndarray]
) -> ResumeState:
    """Find the last committed round (completing a recorded-only round first).

    Before round 1, ``initial`` must be the model the federation was created with
    (``policy.model``): a changed seed or architecture is refused here, not discovered
    by an auditor after a whole run.
    """
    rounds = ledger.list_rounds(federation)
    if not rounds:
        model = artifacts.put(initial)
        declared = ledger.get_federation(federation).policy.model
        if declared and declared != model:
            raise ResumeError(
                f"the initial model {model[:16]}… is not the one federation {federation} "
                f"was created with ({declared[:16]}…): check the training seed and model"
            )
        return ResumeState(0, model, initial)
    last = rounds[-1]
    if last.commit is not None:
        return ResumeState(last.round, last.commit.model, artifacts.get(last.commit.model))
    record = last.record
    policy = ledger.get_federation(federation).policy
    base = artifacts.get(record.base_model)
    updates = capped([
        WeightedUpdate(e.participant, int(e.num_examples or 0),
                       decompress(artifacts.get(str(e.update)), base, policy.training.compression))
        for e in record.accepted()
    ], policy.max_weight_share_ppm)
    aggregation = policy.aggregation
    arrays = AGGREGATORS[aggregation](updates, policy.aggregation_params) if updates else base
    model = artifacts.put(arrays)
    commit = ModelCommit(
        round=last.round,
        base_model=record.base_model,
        model=model,
        accepted=[u.participant for u in updates],
        weights={u.participant: u.weight for u in updates},
        aggregation=aggregation,
    )
    receipt = ledger.commit_model(federation, last.round, commit)
    log.info("round_completed_on_resume", round=last.round, model=model, tx_id=receipt.tx_id)
    return ResumeState(last.round, model, arrays)
