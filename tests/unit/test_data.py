"""Unit tests for fl.data and fl.demo_data: the declared schema, the demo split, CSV loading."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fl.data import DataFileError, DataMismatchError, DataSchema, NumericFeature, load_csv
from fl.demo_data import (
    credit_schema,
    demo_data_table,
    load_credit_frame,
    load_partition,
    load_test,
    partition_credit,
    write_partitions_csv,
)

NAMES = ["bank-a", "bank-b", "bank-c"]


@pytest.fixture(scope="module")
def schema() -> DataSchema:
    return credit_schema()


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    frame = partition_credit(3, seed=1).partitions[0].head(50)
    path = tmp_path / "bank-a.csv"
    frame.to_csv(path, index=False)
    return path


def _rewrite(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """Apply ``change`` to the CSV's cells (read as text) and write it back."""
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    return path


def _set_cell(row: int, column: str, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return change


# --- schema -------------------------------------------------------------------------

TOML_TABLE = """
[federation.data]
target = "Status"
positive_label = "bad"
negative_label = "good"
ignored_columns = ["rownames"]

[[federation.data.features]]
name = "Income"
type = "numeric"
missing = "impute"
impute = 120.0
mean = 141.7
scale = 80.7

[[federation.data.features]]
name = "Home"
type = "categorical"
categories = ["ignore", "other", "owner", "parents", "priv", "rent"]
missing = "zeros"

[[federation.data.features]]
name = "selfemp"
type = "boolean"
true_values = ["yes"]
false_values = ["no"]
missing = "impute"
impute = false
"""


def _table() -> dict[str, Any]:
    return tomllib.loads(TOML_TABLE)["federation"]["data"]


def test_the_federation_data_table_validates_into_typed_features_in_declared_order() -> None:
    schema = DataSchema.model_validate(_table())

    assert [f.type for f in schema.features] == ["numeric", "categorical", "boolean"]
    assert schema.feature_columns == ("Income", "Home", "selfemp")
    assert schema.n_features == 1 + 6 + 1
    assert schema.feature_names == (
        "Income", "Home=ignore", "Home=other", "Home=owner", "Home=parents", "Home=priv",
        "Home=rent", "selfemp",
    )
    income = schema.features[0]
    assert isinstance(income, NumericFeature) and income.impute == 120.0


def test_transform_encodes_numeric_one_hot_and_boolean_columns_and_fills_gaps() -> None:
    schema = DataSchema.model_validate(_table())
    frame = pd.DataFrame(
        {"Status": ["bad", "good", "good"], "Income": [141.7 + 80.7, None, 141.7],
         "Home": ["rent", None, "owner"], "selfemp": ["yes", None, "no"]}
    )

    X, y = schema.transform(frame)

    np.testing.assert_allclose(
        X,
        [[1.0, 0, 0, 0, 0, 0, 1, 1],
         [(120.0 - 141.7) / 80.7, 0, 0, 0, 0, 0, 0, 0],
         [0.0, 0, 0, 1, 0, 0, 0, 0]],
        rtol=1e-6, atol=1e-6,
    )
    np.testing.assert_array_equal(y, [1, 0, 0])


def test_an_unknown_category_is_refused_not_silently_encoded_as_zeros() -> None:
    schema = DataSchema.model_validate(_table())
    frame = pd.DataFrame(
        {"Status": ["bad"], "Income": [100.0], "Home": ["houseboat"], "selfemp": ["no"]}
    )

    with pytest.raises(DataMismatchError, match="unknown category 'houseboat'") as err:
        schema.transform(frame)

    assert [(p.kind, p.column, p.rows) for p in err.value.problems] == [
        ("unknown_category", "Home", (1,))
    ]
    assert not isinstance(err.value, DataFileError)


def test_schema_digest_is_stable_across_dict_order_and_a_json_round_trip() -> None:
    table = _table()
    reordered = {k: table[k] for k in reversed(list(table))}
    reordered["features"] = [{k: f[k] for k in reversed(list(f))} for f in table["features"]]
    schema = DataSchema.model_validate(table)

    again = DataSchema.model_validate(reordered)
    via_json = DataSchema.model_validate(json.loads(json.dumps(schema.model_dump(mode="json"))))

    assert again == schema == via_json
    assert again.digest() == schema.digest() == via_json.digest()
    assert len(schema.digest()) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t["features"][0].update(mean=141.8),
        lambda t: t["features"][0].update(impute=121.0),
        lambda t: t["features"][1].update(categories=["other", "ignore", "owner", "parents", "priv", "rent"]),
        lambda t: t["features"][2].update(missing="refuse", impute=None),
        lambda t: t.update(positive_label="default"),
        lambda t: t["features"].reverse(),
    ],
    ids=["mean", "impute", "category-order", "missing-policy", "label", "feature-order"],
)
def test_schema_digest_changes_when_anything_that_changes_the_encoding_changes(
    change: Callable[[dict[str, Any]], object],
) -> None:
    table = _table()
    before = DataSchema.model_validate(table).digest()
    change(table)
    table["features"] = [{k: v for k, v in f.items() if v is not None} for f in table["features"]]

    assert DataSchema.model_validate(table).digest() != before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t["features"][1].update(name="Income"), "named more than once: 'Income'"),
        (lambda t: t["features"][1].update(name="Status"), "named more than once: 'Status'"),
        (lambda t: t.update(ignored_columns=["rownames", "Home"]), "named more than once: 'Home'"),
        (lambda t: t.update(negative_label="bad"), "labels? .*must differ"),
        (lambda t: t.update(features=[]), "at least 1 item"),
        (lambda t: t["features"][1].update(categories=["a", "b", "a"]), "categories must be unique"),
        (lambda t: t["features"][1].update(categories=["a", "NA"]), "read as a missing value"),
        (lambda t: t["features"][2].update(false_values=["no", "yes"]), "overlap: 'yes'"),
        (lambda t: t["features"][0].pop("impute"), "needs an impute value"),
        (lambda t: t["features"][2].pop("impute"), "needs an impute value"),
        (lambda t: t["features"][0].update(missing="refuse"), "impute is set but missing = 'refuse'"),
        (lambda t: t["features"][2].update(impute="yes"), "valid boolean"),
        (lambda t: t["features"][0].update(scale=0.0), "greater than 0"),
        (lambda t: t["features"][0].update(mean=float("nan")), "finite number"),
        (lambda t: t["features"][1].update(type="ordinal"), "does not match any of the expected tags"),
        (lambda t: t["features"][1].update(missing="impute"), "'zeros' or 'refuse'"),
        (lambda t: t.update(target_column="x"), "Extra inputs are not permitted"),
        (lambda t: t["features"][0].update(unit="EUR"), "Extra inputs are not permitted"),
    ],
    ids=[
        "duplicate-feature", "feature-is-target", "feature-is-ignored", "labels-equal",
        "no-features", "repeated-category", "category-is-a-missing-marker", "booleans-overlap",
        "numeric-impute-missing", "boolean-impute-missing", "impute-without-impute-policy",
        "boolean-impute-not-a-bool", "zero-scale", "nan-mean", "unknown-type",
        "categorical-cannot-impute", "unknown-key", "unknown-feature-key",
    ],
)
def test_an_inconsistent_schema_is_refused_saying_why(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    table = _table()
    change(table)

    with pytest.raises(ValidationError, match=message):
        DataSchema.model_validate(table)


def test_schema_is_frozen() -> None:
    schema = DataSchema.model_validate(_table())

    with pytest.raises(ValidationError):
        schema.target = "Other"  # type: ignore[misc]


# --- the bundled credit demo ----------------------------------------------------------


def test_credit_schema_encodes_the_bundled_data_to_its_declared_width(
    schema: DataSchema
) -> None:
    X, y = schema.transform(load_credit_frame())

    assert X.shape == (4454, schema.n_features) == (4454, len(schema.feature_names))
    assert X.dtype == np.float32 and X.flags.c_contiguous and np.isfinite(X).all()
    assert int(y.sum()) == 1254  # "bad" applicants are the positive class
    assert X[:, :9].mean(axis=0) == pytest.approx(np.zeros(9), abs=1e-3)  # standardised


def test_demo_data_table_survives_toml_and_gives_back_the_credit_schema(schema: DataSchema) -> None:
    import tomli_w

    text = tomli_w.dumps({"federation": {"data": demo_data_table()}})

    rebuilt = DataSchema.model_validate(tomllib.loads(text)["federation"]["data"])

    assert rebuilt == schema
    assert rebuilt.digest() == schema.digest() == credit_schema().digest()


def test_credit_schema_imputes_numeric_gaps_and_zeroes_categorical_gaps(
    schema: DataSchema
) -> None:
    row = load_credit_frame().head(1).copy()
    row["Income"] = np.nan
    row["Job"] = np.nan

    X, _ = schema.transform(row)

    income = next(f for f in schema.features if f.name == "Income")
    assert isinstance(income, NumericFeature) and income.impute is not None
    assert X[0, 4] == pytest.approx((income.impute - income.mean) / income.scale)
    job = [i for i, n in enumerate(schema.feature_names) if n.startswith("Job=")]
    assert not X[0, job].any()


# --- split --------------------------------------------------------------------------


def test_same_seed_gives_an_identical_split_and_another_seed_does_not() -> None:
    first, again = partition_credit(3, seed=5), partition_credit(3, seed=5)
    other = partition_credit(3, seed=6)

    for a, b in zip(first.partitions, again.partitions):
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(first.test, again.test)
    assert not first.partitions[0].equals(other.partitions[0])


def test_split_uses_every_row_once_and_holds_out_a_stratified_test_set() -> None:
    split = partition_credit(4, seed=0, test_fraction=0.2)

    total = sum(len(p) for p in split.partitions) + len(split.test)
    assert total == 4454
    assert len(split.test) == pytest.approx(0.2 * 4454, abs=1)
    assert (split.test["Status"] == "bad").mean() == pytest.approx(1254 / 4454, abs=0.005)
    every = pd.concat([*split.partitions, split.test])
    everything = load_credit_frame().drop(columns=["rownames"])
    by_all = list(everything.columns)
    # The same multiset of rows (the data holds duplicate rows, so a set would not do).
    pd.testing.assert_frame_equal(
        every.sort_values(by_all).reset_index(drop=True),
        everything.sort_values(by_all).reset_index(drop=True),
    )


def test_label_proportions_differ_across_partitions() -> None:
    split = partition_credit(3, seed=42, alpha=0.5)

    bad_share = [(p["Status"] == "bad").mean() for p in split.partitions]

    assert max(bad_share) - min(bad_share) > 0.3


@pytest.mark.parametrize("seed", range(10))
def test_every_partition_holds_both_classes_even_with_extreme_skew(seed: int) -> None:
    split = partition_credit(10, seed=seed, alpha=0.01, min_per_class=5)

    for part in split.partitions:
        assert part["Status"].value_counts().reindex(["bad", "good"]).min() >= 5


def test_too_many_partitions_for_the_data_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot give"):
        partition_credit(200, seed=0, min_per_class=10)


def test_load_partition_matches_transform_and_returns_a_private_copy(
    schema: DataSchema
) -> None:
    X, y = load_partition(1, 3, seed=9)
    X[:] = 0.0

    expected, expected_y = schema.transform(partition_credit(3, seed=9).partitions[1])

    np.testing.assert_array_equal(load_partition(1, 3, seed=9)[0], expected)
    np.testing.assert_array_equal(y, expected_y)
    assert load_test(3, seed=9)[0].shape[1] == schema.n_features


# --- CSV ----------------------------------------------------------------------------


def test_written_partitions_load_back_to_the_same_features(
    tmp_path: Path, schema: DataSchema
) -> None:
    split = partition_credit(3, seed=3)

    paths = write_partitions_csv(split, tmp_path, NAMES)

    assert sorted(paths) == sorted([*NAMES, "test"])
    assert paths["bank-b"].name == "bank-b.csv"
    for frame, name in [*zip(split.partitions, NAMES), (split.test, "test")]:
        X, y = load_csv(paths[name], schema)
        X_ref, y_ref = schema.transform(frame)
        np.testing.assert_array_equal(X, X_ref)
        np.testing.assert_array_equal(y, y_ref)


def test_partition_names_must_be_unique_ids_and_not_test(tmp_path: Path) -> None:
    split = partition_credit(3, seed=3)

    refused = (
        ["bank-a", "bank-a", "bank-c"],  # duplicate
        ["bank-a", "test", "bank-c"],  # would overwrite test.csv
        ["Bank A", "b", "c"],  # not a participant id
        ["a", "b"],  # too few
    )
    for names in refused:
        with pytest.raises(ValueError):
            write_partitions_csv(split, tmp_path, names)


def test_columns_in_another_order_and_an_ignored_rownames_column_are_accepted(
    good_csv: Path, schema: DataSchema
) -> None:
    X_ref, _ = load_csv(good_csv, schema)

    def shuffle(frame: pd.DataFrame) -> pd.DataFrame:
        frame.insert(0, "rownames", [str(i) for i in range(len(frame))])
        return frame[frame.columns[::-1]]

    X, _ = load_csv(_rewrite(good_csv, shuffle), schema)

    np.testing.assert_array_equal(X, X_ref)


def test_csv_with_missing_columns_is_refused_naming_the_file_and_each_column(
    good_csv: Path, schema: DataSchema
) -> None:
    _rewrite(good_csv, lambda f: f.drop(columns=["Income", "Job"]))

    with pytest.raises(DataFileError, match="column 'Income': missing") as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)
    assert err.value.path == good_csv
    assert [(p.kind, p.column) for p in err.value.problems] == [
        ("missing_column", "Income"), ("missing_column", "Job")
    ]


def test_csv_with_unexpected_and_missing_columns_names_both_in_one_error(
    good_csv: Path, schema: DataSchema
) -> None:
    _rewrite(good_csv, lambda f: f.rename(columns={"Age": "age", "Debt": "SSN"}))

    with pytest.raises(DataFileError) as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)
    assert {(p.kind, p.column) for p in err.value.problems} == {
        ("missing_column", "Age"), ("missing_column", "Debt"),
        ("unexpected_column", "age"), ("unexpected_column", "SSN"),
    }


def test_csv_with_an_unknown_target_label_is_refused_naming_row_and_column(
    good_csv: Path, schema: DataSchema
) -> None:
    _rewrite(good_csv, _set_cell(3, "Status", "default"))

    expected = "row 4 (1 row): column 'Status': unknown label 'default' (expected 'bad' or 'good')"
    with pytest.raises(DataFileError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)


def test_csv_with_a_missing_target_label_is_refused(
    good_csv: Path, schema: DataSchema
) -> None:
    _rewrite(good_csv, _set_cell(0, "Status", ""))

    with pytest.raises(DataFileError, match=r"row 1 \(1 row\): column 'Status': missing label"):
        load_csv(good_csv, schema)


def test_csv_with_text_in_a_numeric_column_is_refused_naming_row_and_value(
    good_csv: Path, schema: DataSchema
) -> None:
    _rewrite(good_csv, _set_cell(2, "Amount", "1,000"))

    expected = r"row 3 \(1 row\): column 'Amount': non-numeric value '1,000'"
    with pytest.raises(DataFileError, match=expected) as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)


def test_na_markers_in_a_csv_are_imputed_like_missing_values(
    good_csv: Path, schema: DataSchema
) -> None:
    _rewrite(good_csv, _set_cell(0, "Income", "NA"))

    X, _ = load_csv(good_csv, schema)

    income = next(f for f in schema.features if f.name == "Income")
    assert isinstance(income, NumericFeature) and income.impute is not None
    assert X[0, 4] == pytest.approx((income.impute - income.mean) / income.scale)


def test_transform_of_a_mismatched_frame_raises_a_mismatch_error_not_a_file_error(
    schema: DataSchema,
) -> None:
    frame = load_credit_frame().drop(columns=["Status"])

    with pytest.raises(DataMismatchError, match="column 'Status': missing") as err:
        schema.transform(frame)

    assert not isinstance(err.value, DataFileError)
