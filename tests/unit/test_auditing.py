"""The audit, report and rewards services behind the CLI, on a real embedded ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl.auditing import balances, issue_rewards, participant_view, round_view, run_audit
from fl.demo import demo_config, prepare_federation
from ledger.errors import LedgerUnavailable, RecordNotFound


@pytest.fixture()
def federation(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two admitted banks, no round yet; identities in the workspace."""
    cfg = demo_config(tmp_path / "w", rounds=1, participants=2)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    return cfg


def test_a_federation_without_rounds_audits_clean_as_its_auditor(federation) -> None:  # type: ignore[no-untyped-def]
    audit = run_audit(federation, with_views=True)

    assert audit.federation == federation.id and audit.report.ok and audit.report.rounds == 0
    assert audit.views == []


def test_participants_balances_and_rewards_are_read_from_the_ledger(federation) -> None:  # type: ignore[no-untyped-def]
    view = participant_view(federation, "bank-a")

    assert view["participant"]["status"] == "active" and "cert_pem" not in view["participant"]
    assert [h["status"] for h in view["history"]] == ["pending", "active"]
    assert balances(federation) == {"bank-a": 0, "bank-b": 0}
    assert issue_rewards(federation) == []  # no committed round to reward


def test_an_absent_round_or_participant_is_not_found(federation) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordNotFound):
        round_view(federation, 1)
    with pytest.raises(RecordNotFound):
        participant_view(federation, "bank-z")


def test_a_workspace_without_a_ledger_is_unavailable_and_none_is_created(tmp_path: Path) -> None:
    cfg = demo_config(tmp_path / "empty", rounds=1, participants=2)

    with pytest.raises(LedgerUnavailable, match="no ledger here"):
        run_audit(cfg)
    assert not cfg.ledger_path.exists()
