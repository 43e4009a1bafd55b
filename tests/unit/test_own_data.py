"""A federation's own data: the schema and model it declares, checked at every edge.

The federation file declares the data (``[federation.data]``) and the model
(``[federation.model]``); the coordinator records their digests in the policy and refuses
to run when its file drifted from the ledger; an institution's node refuses a data file
that does not fit, and its ClientApp refuses work under another schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fl.cli import app
from fl.client_app import ClientRuntime, SchemaMismatch
from fl.config import ConfigError, load_config, write_config
from fl.data import DataFileError, check_csv
from fl.deploy.client import ClientService, ClientSpec
from fl.model_spec import ModelSpec
from fl.server_app import check_policy, federation_policy, initial_model
from tests.fixtures.datasets import TINY_SCHEMA, tiny_federation

runner = CliRunner()


def test_a_declared_schema_and_model_survive_a_write_and_a_read(tmp_path: Path) -> None:
    config, _ = tiny_federation(tmp_path)
    cfg = load_config(config).model_copy(update={"model": ModelSpec(kind="logistic", seed=7)})
    write_config(cfg, tmp_path / "again.toml")

    again = load_config(tmp_path / "again.toml")

    assert again.schema.digest() == TINY_SCHEMA.digest()
    assert again.model == ModelSpec(kind="logistic", hidden=(), seed=7)


def test_a_bad_feature_is_named_by_file_and_key_path(tmp_path: Path) -> None:
    config, _ = tiny_federation(tmp_path)
    text = config.read_text().replace("scale = 1.0", "scale = -1.0")
    config.write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_config(config)

    message = str(caught.value)
    assert message.startswith(f"{config}: federation.data.features.0")
    assert "scale" in message


def test_a_federation_without_a_schema_cannot_train(tmp_path: Path) -> None:
    config, _ = tiny_federation(tmp_path)
    cfg = load_config(config).model_copy(update={"data": None})

    with pytest.raises(ConfigError, match=r"declares no data schema.*\[federation.data\]"):
        initial_model(cfg)


def test_the_policy_carries_the_schema_and_the_model_it_implies(tmp_path: Path) -> None:
    config, data = tiny_federation(tmp_path)
    data.unlink()  # the coordinator never needs an institution's file
    cfg = load_config(config)

    policy = federation_policy(cfg)
    wider = federation_policy(cfg.model_copy(update={"model": ModelSpec(hidden=(64,))}))

    assert policy.data_schema_digest == TINY_SCHEMA.digest()
    assert initial_model(cfg)["hidden.0.weight"].shape == (32, TINY_SCHEMA.n_features)
    assert wider.model != policy.model
    assert policy.validation_digest is None and policy.eval_fraction_ppm == 200_000


def test_a_coordinator_whose_schema_drifted_from_the_ledger_refuses_to_run(tmp_path: Path) -> None:
    config, _ = tiny_federation(tmp_path)
    cfg = load_config(config)
    recorded = federation_policy(cfg)
    drifted = TINY_SCHEMA.model_copy(update={"positive_label": "y", "negative_label": "n"})

    check_policy(cfg, recorded)  # the same file: fine
    with pytest.raises(ConfigError, match=r"\[federation.data\] has digest"):
        check_policy(cfg.model_copy(update={"data": drifted}), recorded)


def test_a_changed_validation_file_is_refused(tmp_path: Path) -> None:
    config, data = tiny_federation(tmp_path)
    validation = tmp_path / "valid.csv"
    validation.write_bytes(data.read_bytes())
    cfg = load_config(config).model_copy(update={"validation": validation})
    recorded = federation_policy(cfg)
    validation.write_text(validation.read_text() + "9,a,yes\n")

    with pytest.raises(ConfigError, match="validation file"):
        check_policy(cfg, recorded)


def test_a_coordinator_whose_round_rules_drifted_from_the_ledger_refuses_to_run(tmp_path: Path) -> None:
    from fl.config import override

    config, _ = tiny_federation(tmp_path)
    cfg = load_config(config)
    recorded = federation_policy(cfg)

    with pytest.raises(ConfigError, match="aggregation of the file is not the ledger's policy"):
        check_policy(override(cfg, aggregation="median"), recorded)
    dp = cfg.training.model_copy(update={"dp_epsilon": 1.0})
    with pytest.raises(ConfigError, match=r"\[federation.training\] of the file is not the ledger's policy"):
        check_policy(cfg.model_copy(update={"training": dp}), recorded)
    with pytest.raises(ConfigError, match="copy_cosine of the file"):
        check_policy(override(cfg, copy_cosine=0.99), recorded)


def test_data_check_passes_a_fitting_file_and_prints_one_json_document(tmp_path: Path) -> None:
    config, data = tiny_federation(tmp_path, rows=12)

    result = runner.invoke(app, ["data", "check", str(data), "--config", str(config), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["rows"], report["features"]) == (True, 12, TINY_SCHEMA.n_features)
    assert report["schema_digest"] == TINY_SCHEMA.digest()


def test_data_check_names_every_problem_by_row_and_column_and_exits_1(tmp_path: Path) -> None:
    config, data = tiny_federation(tmp_path, rows=4)
    data.write_text("x,kind,y\n1,a,yes\nabc,a,no\n2,c,no\n3,b,maybe\n")

    result = runner.invoke(app, ["data", "check", str(data), "--config", str(config)])

    assert result.exit_code == 1
    assert "row 2" in result.output and "'x'" in result.output and "'abc'" in result.output
    assert "row 3" in result.output and "'kind'" in result.output and "'c'" in result.output
    assert "row 4" in result.output and "'maybe'" in result.output


def test_data_check_without_a_declared_schema_is_a_configuration_error(tmp_path: Path) -> None:
    config, data = tiny_federation(tmp_path)
    cfg = load_config(config).model_copy(update={"data": None})
    write_config(cfg, config)

    result = runner.invoke(app, ["data", "check", str(data), "--config", str(config)])

    assert result.exit_code == 2
    assert "declares no data schema" in result.output


def test_a_node_refuses_a_data_file_that_does_not_fit_before_anything_starts(tmp_path: Path) -> None:
    config, data = tiny_federation(tmp_path)
    data.write_text("x,kind,y\n1,a,yes\n2,zzz,no\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    spec = ClientSpec(participant="bank-a", data=data, key=None, superlink="127.0.0.1:1", root_certificates=ca,
                      workdir=tmp_path, signer=tmp_path / "no-such.sock", config=config, trainer=False)

    with pytest.raises(DataFileError) as caught:
        ClientService(spec).prepare()

    assert "row 2" in str(caught.value) and "'kind'" in str(caught.value)
    assert not (tmp_path / "clients" / "bank-a" / "node-config.toml").exists()


def test_the_clientapp_refuses_work_under_another_schema() -> None:
    runtime = ClientRuntime(participant="bank-a", key=None, load_data=lambda: pytest.fail("data was read"),
                            schema_digest=TINY_SCHEMA.digest())

    runtime.check_schema({"data-schema": TINY_SCHEMA.digest()})
    with pytest.raises(SchemaMismatch, match="nothing was trained"):
        runtime.check_schema({"data-schema": "0" * 64})


def test_a_drafted_schema_types_every_column_and_fits_its_sample(tmp_path: Path) -> None:
    from fl.schema_draft import draft_schema
    from tests.fixtures.datasets import hmda_federation

    sample = hmda_federation(tmp_path, parts=2, seed=1).paths["bank-a"]

    draft = draft_schema(sample, "deny", "yes")

    kinds = {f.name: f.type for f in draft.schema.features}
    assert draft.schema.negative_label == "no"
    assert kinds["selfemp"] == "boolean" and kinds["pirat"] == "numeric"
    assert "rownames" in draft.schema.ignored_columns and "rownames" not in kinds
    assert "codes of a category" in draft.notes["chist"]
    missing = {f.name: f.missing for f in draft.schema.features}
    assert missing["pirat"] == "impute" and missing["insurance"] == "refuse"  # gaps seen / none seen
    assert check_csv(sample, draft.schema).ok


def test_data_schema_prints_a_table_the_federation_file_accepts(tmp_path: Path) -> None:
    config, data = tiny_federation(tmp_path)

    result = runner.invoke(app, ["data", "schema", str(data), "--target", "y", "--positive", "yes"])

    assert result.exit_code == 0, result.output
    text = config.read_text().split("[federation.data]")[0] + result.stdout.split("\n\n", 1)[1]
    config.write_text(text + '\n[[federation.participants]]\nid = "bank-a"\nmsp_id = "BankAMSP"\n')
    declared = load_config(config).schema
    assert [f.name for f in declared.features] == ["x", "kind"]
    assert declared.digest() == json.loads(runner.invoke(
        app, ["data", "schema", str(data), "--target", "y", "--positive", "yes", "--json"]).stdout)["digest"]


def test_data_schema_refuses_a_target_that_is_not_there(tmp_path: Path) -> None:
    _, data = tiny_federation(tmp_path)

    result = runner.invoke(app, ["data", "schema", str(data), "--target", "deny", "--positive", "yes"])

    assert result.exit_code == 1
    assert "no column 'deny'" in result.output
