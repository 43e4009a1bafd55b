"""The workspace layout: one owner, every path once, no path tricks through participant ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl.workspace import Workspace
from ledger.formats import FormatError


def test_every_file_of_a_federation_has_one_place_under_the_root(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    places = {
        "key": ws.key("BankAMSP", "bank-a"), "cert": ws.cert("BankAMSP", "bank-a"),
        "ca": ws.ca_cert("BankAMSP"), "ledger": ws.ledger_db, "artifacts": ws.artifacts,
        "rounds": ws.rounds_log, "reports": ws.reports, "logs": ws.logs, "config": ws.config_file,
        "coordinator pid": ws.coordinator.pid_file, "tls": ws.coordinator.tls_ca,
        "client pid": ws.client("bank-a").pid_file, "client log": ws.client("bank-a").supernode_log,
        "signer socket": ws.signer("bank-a").socket, "signer journal": ws.signer("bank-a").journal,
        "signer pid": ws.signer("bank-a").pid_file,
    }
    assert len(set(places.values())) == len(places)  # no two things share a file
    assert all(path.is_relative_to(tmp_path) for path in places.values())
    assert ws.cert("BankAMSP", "bank-a") == tmp_path / "pki" / "BankAMSP" / "bank-a.crt"
    assert ws.ca_dir("BankAMSP") == tmp_path / "pki" / "BankAMSP" / "ca"
    assert ws.ledger_db == tmp_path / "ledger.db"
    assert ws.rounds_log == tmp_path / "coordinator" / "rounds.jsonl"
    assert ws.client("bank-a").root == tmp_path / "clients" / "bank-a"
    assert ws.signer("bank-a").socket == tmp_path / "signers" / "bank-a" / "run" / "signer.sock"


def test_a_relative_root_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Workspace(Path("work")).root == tmp_path / "work"


@pytest.mark.parametrize("participant", ["../etc", "Bank-A", "a/b", ""])
def test_a_participant_id_cannot_escape_the_workspace(tmp_path: Path, participant: str) -> None:
    with pytest.raises(FormatError):
        Workspace(tmp_path).client(participant)
    with pytest.raises(FormatError):
        Workspace(tmp_path).signer(participant)


def test_the_configs_paths_are_the_workspaces(tmp_path: Path) -> None:
    from fl.demo import demo_config

    cfg = demo_config(tmp_path, rounds=1, participants=2)
    assert cfg.workspace == Workspace(tmp_path)
    assert (cfg.ledger_path, cfg.artifacts_path, cfg.rounds_log) == (
        cfg.workspace.ledger_db, cfg.workspace.artifacts, cfg.workspace.rounds_log)
