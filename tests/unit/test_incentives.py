"""Rewards: exact integer split of the budget, nothing for rejections, idempotent issue."""

from __future__ import annotations

from ledger.incentives import compute_rewards, issue_pending_rewards
from ledger.records import RoundEntry, RoundRecord, ScorerSpec
from tests.fixtures.ledgers import *  # noqa: F403
from tests.fixtures.ledgers import FED
from tests.fixtures.rounds import commit_for, record, rejected


def entry(pid: str, ppm: int | None, status: str = "accepted") -> RoundEntry:
    return RoundEntry(participant=pid, status=status, score_ppm=ppm,
                      reason=None if status == "accepted" else "digest_mismatch")


def rec(*entries: RoundEntry) -> RoundRecord:
    return RoundRecord(round=1, base_model="0" * 64, scorer=ScorerSpec(), entries=list(entries))


def test_budget_is_split_by_positive_score_and_sums_exactly():
    rewards = compute_rewards(rec(entry("bank-a", 600_000), entry("bank-b", 300_000), entry("bank-c", -200_000),
                                  entry("bank-d", None, "rejected")), 1000)
    assert rewards == {"bank-a": 667, "bank-b": 333, "bank-c": 0}
    assert sum(rewards.values()) == 1000


def test_remainders_go_to_the_largest_fractions_then_by_id():
    assert compute_rewards(rec(entry("bank-c", 1), entry("bank-a", 1), entry("bank-b", 1)), 100) == {
        "bank-a": 34, "bank-b": 33, "bank-c": 33}


def test_no_positive_score_splits_equally_and_no_acceptance_pays_nobody():
    assert compute_rewards(rec(entry("bank-a", 0), entry("bank-b", -5)), 11) == {"bank-a": 6, "bank-b": 5}
    assert compute_rewards(rec(entry("bank-a", None, "rejected")), 10) == {}


def test_issuing_twice_changes_nothing_and_rejected_participants_get_nothing(world):
    base = world.model(0)
    accepted = world.record(1, ["bank-a", "bank-b"]).entries
    scored = [accepted[0].model_copy(update={"score_ppm": 750_000}),
              accepted[1].model_copy(update={"score_ppm": 250_000}),
              rejected("bank-c", "wrong_round")]
    round_record = record(1, base, scored)
    world.coordinator.record_round(FED, 1, round_record)
    world.coordinator.commit_model(FED, 1, commit_for(round_record, world.model(1)))
    first = issue_pending_rewards(world.coordinator, FED)
    assert [(i.round, i.rewards) for i in first] == [(1, {"bank-a": 750, "bank-b": 250})]
    assert world.auditor.balance(FED, "bank-a") == 750
    assert world.auditor.balance(FED, "bank-c") == 0
    assert issue_pending_rewards(world.coordinator, FED) == []
    assert world.auditor.balance(FED, "bank-a") == 750
