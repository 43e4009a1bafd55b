"""The CLI convention: one way to name the federation, ``-p`` for participants, ``--json``
everywhere, and exit codes that mean one thing each."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from fl.cli import app
from fl.cli_output import ExitCode, exit_code_for, json_text
from fl.config import ConfigError
from ledger.errors import AccessDenied, LedgerUnavailable, RecordNotFound, TransactionRejected

runner = CliRunner()

FEDERATION = '[federation]\nid = "fed-1"\nworkdir = "w"\n\n[[federation.participants]]\nid = "bank-a"\nmsp_id = "BankAMSP"\n'

# Commands that work on local files or a Fabric network only, not on a federation.
NO_FEDERATION = {"demo", "network install", "network up", "network down", "network status", "network logs",
                 "network upgrade", "participant keygen", "participant ca init", "participant ca sign",
                 "data split", "data schema"}  # demo data; drafting a schema precedes a federation


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(_commands(command, path + " "))
        else:
            found[path] = command
    return found


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_the_command_tree_is_what_the_convention_covers() -> None:
    assert {"audit verify", "audit round", "audit participant", "audit mine", "report", "rewards issue",
            "rewards balances", "participant admit", "participant revoke", "coordinator start", "client start",
            "signer start", "data split", "data check"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_accepts_json(name: str) -> None:
    assert "--json" in _options(COMMANDS[name])


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - NO_FEDERATION))
def test_every_federation_command_is_pointed_at_it_by_config_alone(name: str) -> None:
    command = COMMANDS[name]
    config = next(p for p in command.params if "--config" in getattr(p, "opts", []))
    assert config.envvar == "FEDLEDGER_CONFIG" and config.default == Path("federation.toml")
    assert "--workdir" not in _options(command)


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if "participant" in _options(COMMANDS[n])
                                        or n.startswith(("participant admit", "participant revoke"))))
def test_a_participant_is_always_named_with_p(name: str) -> None:
    assert {"-p", "--participant"} <= _options(COMMANDS[name])


def test_admit_and_revoke_take_the_participant_as_p_not_as_an_argument() -> None:
    for name in ("participant admit", "participant revoke", "participant register", "audit participant"):
        command = COMMANDS[name]
        assert {"-p", "--participant"} <= _options(command)
        assert not [p for p in command.params if isinstance(p, click.Argument)]


def test_the_default_config_is_federation_toml_in_the_working_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "federation.toml").write_text(FEDERATION)
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, ["audit", "verify"])

    # The file was found and read: its workspace has no ledger yet, so: unavailable.
    assert result.exit_code == ExitCode.UNAVAILABLE, result.output
    assert result.stderr.startswith("error: ") and str(tmp_path / "w" / "ledger.db") in result.stderr


def test_fedledger_config_names_the_file_and_config_wins_over_it(tmp_path: Path) -> None:
    (tmp_path / "federation.toml").write_text(FEDERATION)
    env = {"FEDLEDGER_CONFIG": str(tmp_path / "federation.toml")}

    by_env = runner.invoke(app, ["rewards", "balances"], env=env)
    by_flag = runner.invoke(app, ["rewards", "balances", "--config", str(tmp_path / "other.toml")], env=env)

    assert by_env.exit_code == ExitCode.UNAVAILABLE and "w/ledger.db" in by_env.stderr
    assert by_flag.exit_code == ExitCode.USAGE and "other.toml: file not found" in by_flag.stderr


@pytest.mark.parametrize("args", [["audit", "verify"], ["report"], ["participant", "list"], ["coordinator", "status"],
                                  ["client", "status", "-p", "bank-a"], ["signer", "status", "-p", "bank-a"],
                                  ["rewards", "issue"], ["k8s", "render"]])
def test_a_malformed_config_is_exit_2_with_one_line_naming_file_and_key(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(FEDERATION.replace('id = "fed-1"', 'id = "Fed 1"'))

    result = runner.invoke(app, [*args, "--config", str(path), "--json"])

    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.count("\n") == 1 and f"{path}: federation.id:" in result.stderr
    assert json.loads(result.stdout) == {"error": result.stderr.removeprefix("error: ").strip(), "exit_code": 2}


def test_a_bad_flag_is_exit_2() -> None:
    result = runner.invoke(app, ["audit", "verify", "--no-such-flag"])
    assert result.exit_code == ExitCode.USAGE and "No such option" in result.output


@pytest.mark.parametrize("service", [["coordinator", "status"], ["client", "status", "-p", "bank-a"],
                                     ["signer", "status", "-p", "bank-a"]])
def test_a_service_that_is_not_running_is_exit_3_with_its_state_as_json(tmp_path: Path, service: list[str]) -> None:
    (tmp_path / "federation.toml").write_text(FEDERATION)

    result = runner.invoke(app, [*service, "--config", str(tmp_path / "federation.toml"), "--json"])

    assert result.exit_code == ExitCode.UNAVAILABLE
    assert json.loads(result.stdout)["status"] == "never started"


def test_stopping_a_service_that_is_not_running_is_fine(tmp_path: Path) -> None:
    (tmp_path / "federation.toml").write_text(FEDERATION)

    result = runner.invoke(app, ["client", "stop", "-p", "bank-a", "--config", str(tmp_path / "federation.toml")])

    assert result.exit_code == ExitCode.OK and result.stdout == "bank-a was not running\n"


def test_exceptions_map_to_exit_codes_in_one_place() -> None:
    from fl.identities import CredentialsError
    from ledger.pki import KeyFileError

    assert exit_code_for(ConfigError("x")) == ExitCode.USAGE
    assert exit_code_for(KeyFileError("x")) == ExitCode.USAGE
    assert exit_code_for(CredentialsError("x")) == ExitCode.USAGE
    assert exit_code_for(LedgerUnavailable("x")) == ExitCode.UNAVAILABLE
    assert exit_code_for(AccessDenied("x")) == ExitCode.FAILED
    assert exit_code_for(TransactionRejected("x")) == ExitCode.FAILED
    assert exit_code_for(RecordNotFound("x")) == ExitCode.NOT_FOUND
    assert exit_code_for(ConnectionRefusedError("x")) == ExitCode.UNAVAILABLE
    assert exit_code_for(RuntimeError("x")) == ExitCode.FAILED


def test_json_output_is_one_encoding_for_dates_paths_and_text() -> None:
    text = json_text({"b": Path("/w/ledger.db"), "a": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                      "c": "Zürich"})
    assert text == ('{\n  "a": "2025-01-02T03:04:05+00:00",\n  "b": "/w/ledger.db",\n  "c": "Zürich"\n}')
