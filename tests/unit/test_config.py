"""Federation configuration: one TOML file, one model; every error names file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl.config import (
    ConfigError,
    DeploymentConfig,
    default_participants,
    load_config,
    msp_for,
    override,
    project_root,
    write_config,
)
from fl.demo import demo_config

GOOD = """
[federation]
id = "credit-eu"
rounds = 4
workdir = "state"

[[federation.participants]]
id = "bank-a"
msp_id = "BankAMSP"
data = "data/bank-a.csv"

[[federation.participants]]
id = "bank-b"
msp_id = "BankBMSP"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def test_a_federation_file_loads_with_paths_relative_to_the_file(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.id == "credit-eu" and cfg.rounds == 4 and cfg.participant_ids() == ["bank-a", "bank-b"]
    assert cfg.workdir == tmp_path / "state" and cfg.quorum == 2
    assert cfg.participants[0].data == tmp_path / "data" / "bank-a.csv"
    assert cfg.workspace.root == tmp_path / "state"


def test_a_file_loaded_from_a_relative_path_still_gets_absolute_paths(tmp_path, monkeypatch):
    write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("federation.toml"))
    assert cfg.workdir == tmp_path / "state" and cfg.workdir.is_absolute()


def test_the_deployment_table_is_part_of_the_one_model_with_its_app_relative_to_the_file(tmp_path):
    cfg = load_config(write(tmp_path, GOOD + '\n[deployment]\nport = 19100\napp = "app"\n'))
    assert cfg.deployment.superlink_address == "127.0.0.1:19100"
    assert cfg.deployment.app_dir == tmp_path / "app"
    assert load_config(write(tmp_path, GOOD)).deployment == DeploymentConfig()
    assert DeploymentConfig().app_dir == project_root() and (project_root() / "pyproject.toml").exists()


def test_the_environment_does_not_change_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLEDGER_ROUNDS", "9")
    monkeypatch.setenv("FEDLEDGER_SUPERLINK_PORT", "19101")
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.rounds == 4 and cfg.deployment.port == 9092


@pytest.mark.parametrize("text, fragment", [
    ("[federation\n", "not valid TOML"),
    (GOOD.replace('rounds = 4', 'rounds = "many"'), "federation.rounds: Input should be a valid integer"),
    (GOOD.replace('id = "credit-eu"', 'id = "Credit EU"'), "federation.id: Value error, federation id 'Credit EU'"),
    (GOOD.replace('msp_id = "BankBMSP"', 'msp_id = "Bank B MSP!"'),
     "federation.participants.1.msp_id: String should match pattern"),
    (GOOD.replace('id = "bank-b"', 'id = "bank-a"'), "federation.participants: Value error, participant ids must be unique"),
    ("[federation]\nid = \"x\"\n", "federation.participants: Field required"),
    (GOOD + "\ncolour = \"blue\"\n", "federation.participants.1.colour: Extra inputs are not permitted"),
    (GOOD.replace('rounds = 4', 'colour = "blue"'), "federation.colour: Extra inputs are not permitted"),
    (GOOD + "\n[deployment]\nport = 70000\n", "deployment.port: Input should be less than or equal to 65535"),
    (GOOD + "\n[deployment]\nhots = \"x\"\n", "deployment.hots: Extra inputs are not permitted"),
    ("rounds = 3\n", "unknown table [rounds]"),
    ("[fedration]\nid = \"x\"\n", "unknown table [fedration] (known: [federation], [deployment])"),
    ("[deployment]\nport = 1\n", "federation: missing [federation] table"),
    (GOOD.replace('rounds = 4', 'rounds = 4\nscorer_params = {metric = "auc"}'),
     "federation: Value error, scorer_params: scorer 'cosine' has no param 'metric'"),
    (GOOD.replace('rounds = 4', 'rounds = 4\nscorer = "shapley"'), "measures contributions on the coordinator's "
     "validation file"),
    (GOOD.replace('rounds = 4', 'rounds = 4\naggregation = "trimmed-mean"\naggregation_params = {trim_ppm = 500000}'),
     "aggregation_params: aggregation_params.trim_ppm of trimmed-mean must be from 0 to 499999"),
    (GOOD.replace('rounds = 4', 'rounds = 4\naggregation = "mean"'), "federation.aggregation: Input should be"),
    (GOOD + "\n[federation.training]\ndp_epsilon = 2.0\ndp_epsilon_total = 1.0\n",
     "dp_epsilon_total 1.0 is below dp_epsilon 2.0"),
    (GOOD + "\n[federation.training]\ncompression = \"zip\"\n", "federation.training.compression: Input should be"),
])
def test_bad_files_give_one_line_errors_naming_file_key_and_problem(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


def test_every_validation_error_is_reported_not_just_the_first(tmp_path):
    text = GOOD.replace('rounds = 4', 'rounds = 0').replace('msp_id = "BankBMSP"', 'msp_id = "!"')
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text + "\n[deployment]\nport = 0\n"))
    message = str(err.value)
    assert "federation.rounds:" in message and "federation.participants.1.msp_id:" in message
    assert "deployment.port:" in message and message.count("; ") == 2


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: file not found"):
        load_config(tmp_path / "missing.toml")


def test_a_flag_override_is_validated_again_and_names_the_flag(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    changed = override(cfg, "--port", rounds=7, deployment={"port": 19200, "host": None})
    assert changed.rounds == 7 and changed.deployment.port == 19200 and changed.deployment.host == "127.0.0.1"
    assert override(cfg, "nothing", rounds=None, deployment={"port": None}) is cfg
    with pytest.raises(ConfigError, match=r"^--port: deployment\.port: Input should be less than or equal to 65535"):
        override(cfg, "--port", deployment={"port": 70000})
    with pytest.raises(ConfigError, match=r"^--rounds: federation\.rounds: Input should be greater than or equal to 1"):
        override(cfg, "--rounds", rounds=0)


def test_written_config_reads_back_identically_with_its_deployment(tmp_path):
    cfg = demo_config(tmp_path / "w", rounds=5, participants=4)
    write_config(cfg, tmp_path / "federation.toml")
    assert load_config(tmp_path / "federation.toml") == cfg
    deployed = cfg.model_copy(update={"deployment": DeploymentConfig(port=19300, tls_hosts=["h"], app=tmp_path)})
    write_config(deployed, tmp_path / "federation.toml")
    assert load_config(tmp_path / "federation.toml") == deployed


def test_the_default_deployment_is_not_written(tmp_path):
    write_config(demo_config(tmp_path / "w", rounds=1, participants=2), tmp_path / "federation.toml")
    assert "[deployment]" not in (tmp_path / "federation.toml").read_text()


def test_a_participant_the_file_does_not_name_is_a_config_error_listing_those_it_does(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.participant("bank-b").msp_id == "BankBMSP"
    with pytest.raises(ConfigError, match="participant 'bank-z' is not in federation credit-eu .*bank-a, bank-b"):
        cfg.participant("bank-z")


def test_demo_ids_and_msps():
    assert default_participants(3) == ["bank-a", "bank-b", "bank-c"]
    assert msp_for("bank-c") == "BankCMSP"
