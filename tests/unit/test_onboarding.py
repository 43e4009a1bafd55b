"""Onboarding: an institution registers its own certificate; the coordinator admits or
revokes; the CLI prints one JSON document or one error line."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fl import onboarding
from fl.cli_participant import participant_app
from ledger import pki
from ledger.errors import AccessDenied, TransactionRejected
from ledger.factory import LedgerConfig
from ledger.records import FederationPolicy

FED = "fed-1"


@pytest.fixture()
def world(tmp_path: Path):
    """A ledger with a federation, a coordinator identity, and bank-a's org PKI on disk."""
    root = tmp_path / "pki"
    _, coord_cert, _ = pki.demo_identity(root, "coordinator", "CoordinatorMSP")
    coordinator = onboarding.identity_from_cert("CoordinatorMSP", root / "CoordinatorMSP" / "coordinator.crt")
    target = onboarding.LedgerTarget(LedgerConfig(path=tmp_path / "ledger.db"), FED)
    with onboarding.open_target(target, coordinator) as ledger:
        ledger.init_federation(FED, FederationPolicy())
    pki.demo_identity(root, "bank-a", "BankAMSP")
    bank_dir = root / "BankAMSP"
    bank = onboarding.identity_from_cert("BankAMSP", bank_dir / "bank-a.crt")
    return target, coordinator, bank, bank_dir


def _register(target, identity, bank_dir: Path, **overrides):  # type: ignore[no-untyped-def]
    """bank-a's registration with its key, its org CA and 35 declared examples, unless overridden."""
    args = {"examples": 35, "key_path": bank_dir / "bank-a.key", "ca_cert_path": bank_dir / "ca" / "ca.crt",
            **overrides}
    return onboarding.register(target, identity, "bank-a", bank_dir / "bank-a.crt", **args)


def _status(target, identity, participant: str) -> str:
    return {p.id: p.status for p in onboarding.list_participants(target, identity)}[participant]


def test_an_institution_registers_then_is_admitted_then_revoked(world) -> None:
    target, coordinator, bank, bank_dir = world

    reg = _register(target, bank, bank_dir)
    pending = _status(target, coordinator, "bank-a")
    adm = onboarding.admit(target, coordinator, "bank-a")
    active = _status(target, coordinator, "bank-a")
    rev = onboarding.revoke(target, coordinator, "bank-a", "left the consortium")

    assert (pending, active, _status(target, coordinator, "bank-a")) == ("pending", "active", "revoked")
    assert reg.block_number < adm.block_number < rev.block_number
    with onboarding.open_target(target, coordinator) as ledger:
        assert ledger.participant(FED, "bank-a").declared_examples == 35
        assert ledger.org_ca(FED, "BankAMSP").ca_cert_pem == (bank_dir / "ca" / "ca.crt").read_text()


def test_the_org_ca_is_registered_once_for_all_its_participants(world) -> None:
    target, coordinator, bank, bank_dir = world
    _register(target, bank, bank_dir)
    pki.demo_identity(bank_dir.parent, "bank-a2", "BankAMSP")

    # The org's CA is on the ledger now: the second registration needs no CA file.
    onboarding.register(target, bank, "bank-a2", bank_dir / "bank-a2.crt", examples=7,
                        key_path=bank_dir / "bank-a2.key")

    with onboarding.open_target(target, coordinator) as ledger:
        assert [c.msp_id for c in ledger.org_cas(FED)] == ["BankAMSP"]
        assert ledger.participant(FED, "bank-a2").declared_examples == 7


def test_registering_without_the_org_ca_on_the_ledger_or_at_hand_says_what_is_missing(world) -> None:
    target, _, bank, bank_dir = world

    with pytest.raises(pki.CertificateError, match=r"BankAMSP has registered no CA certificate in federation "
                                                   r"fed-1: give the org CA certificate \(--ca-cert\)"):
        _register(target, bank, bank_dir, ca_cert_path=None)


def test_registering_without_the_participants_key_is_refused_since_nothing_could_sign_the_size(world) -> None:
    target, _, bank, bank_dir = world

    with pytest.raises(pki.KeyFileError, match=r"registering bank-a needs its private key \(--key\)"):
        _register(target, bank, bank_dir, key_path=None)


def test_registering_a_certificate_for_another_participant_id_is_refused_locally(world) -> None:
    target, _, bank, bank_dir = world

    with pytest.raises(pki.CertificateError, match="CN is 'bank-a', not participant 'bank-b'"):
        onboarding.register(target, bank, "bank-b", bank_dir / "bank-a.crt", examples=35,
                            key_path=bank_dir / "bank-a.key")


def test_registering_with_a_key_that_is_not_the_certificates_is_refused(world, tmp_path: Path) -> None:
    target, _, bank, bank_dir = world
    other = pki.write_private_key(tmp_path / "other.key", pki.generate_key())

    with pytest.raises(pki.CertificateError, match="private key does not match"):
        _register(target, bank, bank_dir, key_path=other, ca_cert_path=None)


def test_registering_a_certificate_from_another_ca_is_refused_locally(world, tmp_path: Path) -> None:
    target, _, bank, bank_dir = world
    foreign = pki.init_ca("BankAMSP")  # same name, different key
    foreign.save(tmp_path / "foreign")

    with pytest.raises(pki.CertificateError, match="authority key identifier"):
        _register(target, bank, bank_dir, ca_cert_path=tmp_path / "foreign" / "ca.crt")


def test_registering_as_another_org_is_refused_by_the_contract(world) -> None:
    target, coordinator, _, bank_dir = world

    with pytest.raises(AccessDenied):
        _register(target, coordinator, bank_dir)


def test_only_the_coordinator_may_admit(world) -> None:
    target, _, bank, bank_dir = world
    _register(target, bank, bank_dir)

    with pytest.raises(AccessDenied):
        onboarding.admit(target, bank, "bank-a")


def test_admitting_an_unknown_participant_is_rejected(world) -> None:
    target, coordinator, _, _ = world

    with pytest.raises(TransactionRejected):
        onboarding.admit(target, coordinator, "bank-z")


def test_ca_init_refuses_to_replace_an_existing_ca(tmp_path: Path) -> None:
    onboarding.ca_init(tmp_path / "ca", "BankAMSP")
    before = (tmp_path / "ca" / "ca.crt").read_bytes()

    with pytest.raises(pki.KeyFileError, match="a CA exists already"):
        onboarding.ca_init(tmp_path / "ca", "BankAMSP")
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == before


def test_participant_summary_shows_status_org_and_key_fingerprint(world) -> None:
    target, coordinator, bank, bank_dir = world
    _register(target, bank, bank_dir)

    [summary] = [onboarding.participant_summary(p) for p in onboarding.list_participants(target, coordinator)]

    assert summary["id"] == "bank-a" and summary["status"] == "pending" and summary["msp_id"] == "BankAMSP"
    assert len(summary["key_sha256"]) == 64
    assert "cert_pem" not in summary


# --- CLI ------------------------------------------------------------------------------

runner = CliRunner()


def _json(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _federation_file(tmp_path: Path) -> Path:
    """The world's federation file: its workspace is ``tmp_path`` (ledger.db, pki/)."""
    path = tmp_path / "federation.toml"
    path.write_text(f'[federation]\nid = "{FED}"\nworkdir = "."\n\n'
                    '[[federation.participants]]\nid = "bank-a"\nmsp_id = "BankAMSP"\n')
    return path


def test_cli_onboards_an_institution_end_to_end_with_json_output(world, tmp_path: Path) -> None:
    config = ["--config", str(_federation_file(tmp_path))]

    ca = _json(runner.invoke(participant_app, ["ca", "init", "--org", "BankBMSP", "--dir", str(tmp_path / "ca"), "--json"]))
    keys = _json(runner.invoke(participant_app, ["keygen", "-p", "bank-b", "--org", "BankBMSP",
                                                 "--out", str(tmp_path / "keys"), "--json"]))
    cert = _json(runner.invoke(participant_app, ["ca", "sign", "--csr", keys["csr"], "--ca-dir",
                                                 str(tmp_path / "ca"), "--json"]))
    reg = _json(runner.invoke(participant_app, ["register", "-p", "bank-b", "--cert", cert["cert"],
                                                "--key", keys["key"], "--ca-cert", ca["cert"], "--examples", "120",
                                                "--msp-id", "BankBMSP", *config, "--json"]))
    # The coordinator's identity comes from the workspace the file names.
    adm = _json(runner.invoke(participant_app, ["admit", "-p", "bank-b", *config, "--json"]))
    listed = _json(runner.invoke(participant_app, ["list", *config, "--json"]))

    assert stat.S_IMODE(Path(keys["key"]).stat().st_mode) == 0o600
    assert cert["subject"] == "CN=bank-b,O=BankBMSP"
    assert reg["status"] == "pending" and adm["status"] == "active"
    assert [(p["id"], p["status"]) for p in listed["participants"]] == [("bank-b", "active")]


def test_cli_registration_defaults_to_the_workspace_certificate_of_the_files_participant(world, tmp_path: Path) -> None:
    reg = _json(runner.invoke(participant_app, ["register", "-p", "bank-a", "--examples", "35", "--config",
                                                str(_federation_file(tmp_path)), "--json"]))

    assert reg["msp_id"] == "BankAMSP" and reg["status"] == "pending" and reg["declared_examples"] == 35


def test_cli_registration_declares_the_rows_of_the_participants_data_file_by_default(world, tmp_path: Path) -> None:
    target, coordinator, _, _ = world
    (tmp_path / "bank-a.csv").write_text("age,income,default\n" + "".join(f"{i},{i * 10},no\n" for i in range(35)))
    config = _federation_file(tmp_path)
    config.write_text(config.read_text() + 'data = "bank-a.csv"\n')

    reg = _json(runner.invoke(participant_app, ["register", "-p", "bank-a", "--config", str(config), "--json"]))

    assert reg["declared_examples"] == 35
    with onboarding.open_target(target, coordinator) as ledger:
        assert ledger.participant(FED, "bank-a").declared_examples == 35


def test_cli_registration_without_examples_or_a_data_file_says_which_option_is_missing(world, tmp_path: Path) -> None:
    result = runner.invoke(participant_app, ["register", "-p", "bank-a", "--config", str(_federation_file(tmp_path))])

    assert result.exit_code == 2
    assert "--examples is required: the federation file names no data file of bank-a" in result.stderr


def test_cli_a_key_file_open_to_others_is_one_error_line_and_exit_2(world, tmp_path: Path) -> None:
    _, _, _, bank_dir = world
    (bank_dir / "bank-a.key").chmod(0o644)

    result = runner.invoke(participant_app, ["register", "-p", "bank-a", "--key", str(bank_dir / "bank-a.key"),
                                             "--examples", "35", "--config", str(_federation_file(tmp_path))])

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "too open" in result.stderr


def test_cli_revoking_an_unknown_participant_is_refused_with_exit_4_and_a_json_error(world, tmp_path: Path) -> None:
    result = runner.invoke(participant_app, ["revoke", "-p", "bank-z", "--config", str(_federation_file(tmp_path)),
                                             "--json"])

    assert result.exit_code == 4
    assert json.loads(result.stdout) == {"error": result.stderr.removeprefix("error: ").strip(), "exit_code": 4}


def test_cli_ledger_commands_without_a_federation_file_say_what_is_missing(tmp_path: Path) -> None:
    result = runner.invoke(participant_app, ["list", "--config", str(tmp_path / "nope.toml")])

    assert result.exit_code == 2
    assert "nope.toml: file not found" in result.stderr
