"""Federation configuration: one TOML file, env overrides, errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl.config import ConfigError, default_participants, load_config, msp_for, write_config
from fl.demo import demo_config

GOOD = """
[federation]
id = "credit-eu"
rounds = 4
workdir = "state"

[[federation.participants]]
id = "bank-a"
msp_id = "BankAMSP"

[[federation.participants]]
id = "bank-b"
msp_id = "BankBMSP"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def test_a_federation_file_loads_with_workdir_relative_to_the_file(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), environ={})
    assert cfg.id == "credit-eu" and cfg.rounds == 4 and cfg.participant_ids() == ["bank-a", "bank-b"]
    assert cfg.workdir == tmp_path / "state" and cfg.quorum == 2


def test_environment_overrides_top_level_fields(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), environ={"FEDLEDGER_ROUNDS": "9", "FEDLEDGER_WORKDIR": "/srv/x"})
    assert cfg.rounds == 9 and cfg.workdir == Path("/srv/x")


@pytest.mark.parametrize("text, fragment", [
    ("[federation\n", "not valid TOML"),
    (GOOD.replace('rounds = 4', 'rounds = "many"'), "rounds"),
    (GOOD.replace('id = "credit-eu"', 'id = "Credit EU"'), "id"),
    (GOOD.replace('msp_id = "BankBMSP"', 'msp_id = "Bank B MSP!"'), "participants.1.msp_id"),
    (GOOD.replace('id = "bank-b"', 'id = "bank-a"'), "unique"),
    ("[federation]\nid = \"x\"\n", "participants"),
    (GOOD + "\ncolour = \"blue\"\n", "colour"),
])
def test_bad_files_give_one_line_errors_naming_file_and_field(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    message = str(err.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: file not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_written_config_reads_back_identically(tmp_path):
    cfg = demo_config(tmp_path / "w", rounds=5, participants=4)
    write_config(cfg, tmp_path / "federation.toml")
    assert load_config(tmp_path / "federation.toml", environ={}) == cfg


def test_demo_ids_and_msps():
    assert default_participants(3) == ["bank-a", "bank-b", "bank-c"]
    assert msp_for("bank-c") == "BankCMSP"
