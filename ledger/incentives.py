"""Token incentives (DESIGN §7): the ledger's round records turned into integer rewards.

Reads each committed round's ``RecordRound`` entries, splits the federation's per-round
budget among the *accepted* participants in proportion to their positive contribution
scores (largest-remainder rounding, ties broken by participant id, so the whole budget
is paid and the result is exact), pays rejected participants nothing, and submits
``IssueRewards``. Running it again issues nothing new: rounds already rewarded on the
ledger are skipped. An auditor recomputes the same amounts with :func:`compute_rewards`.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from ledger.protocol import Ledger
from ledger.records import RoundRecord, TxReceipt

__all__ = ["compute_rewards", "IssuedRewards", "issue_pending_rewards"]

log = structlog.get_logger("fedledger.incentives")


def compute_rewards(record: RoundRecord, budget: int) -> dict[str, int]:
    """Integer rewards for one round: the budget split by positive score, summing to it.

    If no accepted update has a positive score, the budget is split equally among the
    accepted participants; a round with nothing accepted pays nobody.
    """
    accepted = sorted(e.participant for e in record.entries if e.status == "accepted")
    if not accepted or budget <= 0:
        return {p: 0 for p in accepted}
    scores = {e.participant: max(int(e.score_ppm or 0), 0) for e in record.entries if e.status == "accepted"}
    weights = scores if sum(scores.values()) > 0 else {p: 1 for p in accepted}
    total = sum(weights.values())
    shares = {p: budget * weights[p] // total for p in accepted}
    remainders = sorted(accepted, key=lambda p: (-(budget * weights[p] % total), p))
    for p in remainders[: budget - sum(shares.values())]:
        shares[p] += 1
    return shares


@dataclass(frozen=True)
class IssuedRewards:
    """Rewards submitted for one round by this run."""

    round: int
    rewards: dict[str, int]
    receipt: TxReceipt


def issue_pending_rewards(ledger: Ledger, federation: str) -> list[IssuedRewards]:
    """Issue rewards for every committed round that has none yet (idempotent)."""
    budget = ledger.get_federation(federation).policy.reward_budget
    issued: list[IssuedRewards] = []
    for view in ledger.list_rounds(federation):
        if view.commit is None or view.rewards is not None:
            continue
        rewards = compute_rewards(view.record, budget)
        receipt = ledger.issue_rewards(federation, view.round, rewards)
        log.info("rewards_issued", round=view.round, total=sum(rewards.values()), tx_id=receipt.tx_id)
        issued.append(IssuedRewards(view.round, rewards, receipt))
    return issued
