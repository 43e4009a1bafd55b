"""A participant's statement and the token books, read as the auditor from a real
embedded ledger (rounds recorded with signed stand-in entries)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fl.auditing import balance_sheet, participant_statement
from fl.cli import app
from fl.cli_output import ExitCode
from fl.config import write_config
from fl.demo import demo_config, prepare_federation
from ledger.errors import RecordNotFound
from ledger.incentives import compute_rewards
from tests.fixtures.ledgers import *  # noqa: F403  (pki, ledger_factory, world)
from tests.fixtures.ledgers import FED, World
from tests.fixtures.rounds import commit_for, rejected

runner = CliRunner()


@pytest.fixture
def history(world: World) -> World:
    """Round 1: all three accepted; round 2: bank-c sends nothing; round 3: bank-c's update
    is rejected (non_finite). Rewards issued for every round, bank-a gives bank-b 7
    tokens, then bank-c is revoked."""
    world.run_round(1)
    world.run_round(2, ["bank-a", "bank-b"])
    rec = world.record(3, ["bank-a", "bank-b"])
    rec = rec.model_copy(update={"entries": [*rec.entries, rejected("bank-c", "non_finite", "NaN in layer 0")]})
    world.coordinator.record_round(FED, 3, rec)
    world.coordinator.commit_model(FED, 3, commit_for(rec, world.model(3)))
    for view in world.coordinator.list_rounds(FED):
        world.coordinator.issue_rewards(FED, view.round, compute_rewards(view.record, 1000))
    world.banks["bank-a"].transfer(FED, "bank-b", 7)
    world.coordinator.revoke_participant(FED, "bank-c", "left the consortium")
    return world


def test_the_statement_lists_accepted_absent_and_rejected_rounds_with_tokens_and_totals(history: World) -> None:
    statement = participant_statement(history.auditor, FED, "bank-c")

    rounds = {r["round"]: r for r in statement["rounds"]}
    assert [rounds[n]["status"] for n in (1, 2, 3)] == ["accepted", "absent", "rejected"]
    assert rounds[1]["entries"][0]["score_ppm"] == 500_000 and rounds[1]["entries"][0]["score"] == 0.5
    assert rounds[1]["weight"] == 100 and rounds[1]["weight_share_ppm"] == 333_333
    assert rounds[1]["tokens"] == 333 and rounds[3]["tokens"] == 0
    assert rounds[3]["entries"] == [{"status": "rejected", "reason": "non_finite", "detail": "NaN in layer 0",
                                     "score_ppm": None, "score": None, "num_examples": None, "update": None,
                                     "epsilon_ppm": None}]
    assert rounds[3]["weight"] is None
    assert statement["totals"] == {"rounds_joined": 2, "accepted": 1, "rejected": 1,
                                   "rejected_by_reason": {"non_finite": 1}, "absent": 1,
                                   "tokens_earned": 333, "balance": 333, "transfers_net": 0}


def test_registration_admission_and_revocation_come_from_the_participants_history(history: World) -> None:
    statement = participant_statement(history.auditor, FED, "bank-c")

    assert statement["status"] == "revoked"
    assert statement["registration"]["msp_id"] == "BankCMSP"
    assert statement["registration"]["declared_examples"] == 1000
    assert [c["status"] for c in statement["changes"]] == ["pending", "active", "revoked"]
    assert statement["registration"]["tx_id"] == statement["changes"][0]["tx_id"]
    assert statement["admission"]["tx_id"] == statement["changes"][1]["tx_id"]
    assert statement["revocation"]["tx_id"] == statement["changes"][2]["tx_id"]
    assert "ParticipantRevoked event" in statement["revocation"]["reason_note"]


def test_a_balance_that_differs_from_the_rewards_earned_is_explained_by_transfers(history: World) -> None:
    a = participant_statement(history.auditor, FED, "bank-a")["totals"]
    sheet = balance_sheet(history.auditor, FED)

    assert a["tokens_earned"] == 334 + 500 + 500 and a["balance"] == a["tokens_earned"] - 7
    assert a["transfers_net"] == -7
    assert sheet["participants"]["bank-b"]["transfers_net"] == 7
    assert sheet["supply"] == sheet["issued"] == 3000 and sheet["rounds_rewarded"] == 3
    assert sheet["ok"] and sheet["problems"] == []


def test_an_unregistered_participant_has_no_statement(history: World) -> None:
    with pytest.raises(RecordNotFound):
        participant_statement(history.auditor, FED, "bank-z")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A federation file of two admitted banks and no round yet."""
    cfg = demo_config(tmp_path / "w", rounds=1, participants=2)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    write_config(cfg, cfg.workspace.config_file)
    return cfg.workspace.config_file


def test_the_cli_statement_is_json_and_an_unknown_participant_is_exit_4(config: Path) -> None:
    known = runner.invoke(app, ["audit", "history", "-p", "bank-a", "--config", str(config), "--json"])
    human = runner.invoke(app, ["audit", "history", "-p", "bank-a", "--config", str(config)])
    unknown = runner.invoke(app, ["audit", "history", "-p", "bank-z", "--config", str(config), "--json"])

    assert known.exit_code == ExitCode.OK, known.output
    statement = json.loads(known.stdout)
    assert statement["status"] == "active" and statement["rounds"] == [] and statement["totals"]["balance"] == 0
    assert human.exit_code == ExitCode.OK and "bank-a" in human.stdout and "transfers net +0" in human.stdout
    assert unknown.exit_code == ExitCode.NOT_FOUND
    assert json.loads(unknown.stdout)["exit_code"] == 4


def test_the_cli_balances_add_up_on_a_fresh_federation(config: Path) -> None:
    result = runner.invoke(app, ["audit", "balances", "--config", str(config), "--json"])

    assert result.exit_code == ExitCode.OK, result.output
    sheet = json.loads(result.stdout)
    assert sheet["participants"] == {"bank-a": {"balance": 0, "earned": 0, "transfers_net": 0},
                                     "bank-b": {"balance": 0, "earned": 0, "transfers_net": 0}}
    assert sheet["ok"] and sheet["supply"] == sheet["issued"] == 0
